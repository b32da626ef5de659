//! The fleet report: every policy over the same fleet, then the shared standby policy against
//! today's per-pool spares and Knative with scale to zero.

use std::fmt;
use std::time::Duration;

use super::super::Trace;
use super::{FleetOutcome, FleetPolicy, FleetSetup, run, trace};

/// Every policy of [`FleetPolicy::ALL`] over the fleet's pools, from one setup.
#[derive(Debug, Clone)]
pub struct FleetReport {
    /// The setup every row shares.
    pub setup: FleetSetup,
    /// The pools.
    pub pools: Vec<Trace>,
    /// One row per policy, in [`FleetPolicy::ALL`] order.
    pub rows: Vec<(FleetPolicy, FleetOutcome)>,
}

impl FleetReport {
    /// Runs the fleet under every policy.
    pub fn run(setup: &FleetSetup) -> Self {
        let pools = trace::pools();
        let rows = FleetPolicy::ALL
            .iter()
            .map(|p| (*p, run(&pools, *p, setup)))
            .collect();
        Self {
            setup: setup.clone(),
            pools,
            rows,
        }
    }

    /// The outcome of `policy`.
    pub fn get(&self, policy: FleetPolicy) -> Option<&FleetOutcome> {
        self.rows.iter().find(|(p, _)| *p == policy).map(|(_, o)| o)
    }
}

/// What the columns mean, printed under the table so the output stands on its own.
const LEGEND: [&str; 4] = [
    "idle pod-s: ready pods serving no query, standby pods included; pod-s: every pod that exists",
    "waited: queries that found no free slot on arrival (a pool at zero has none); waits are for a slot",
    "wakes: first queries after 60 s without one on their pool; wake p50/max: arrival to result",
    "claims: standby workers claimed into pools; standby pod-s: the standby pool's share of pod-s",
];

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.1}", d.as_secs_f64()))
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}", ours / theirs)
    } else {
        "-".into()
    }
}

impl fmt::Display for FleetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.setup;
        let b = &s.base;
        let sb = &s.standby;
        writeln!(
            f,
            "Fleet simulation, seed {}: {} pools, {} s, {} ms ticks, cold start {:.1}-{:.1} s, \
             {} queries per pod, at most {} pods per pool",
            b.seed,
            self.pools.len(),
            self.pools.first().map_or(0, |p| p.length.as_secs()),
            b.tick.as_millis(),
            b.cold_start.0.as_secs_f64(),
            b.cold_start.1.as_secs_f64(),
            b.pool.target_concurrency,
            b.pool.max_replicas,
        )?;
        writeln!(
            f,
            "  per-pool spares  today's policy per pool: min {}, {} warm spare, new pods cold-start",
            b.pool.min_replicas.max(1),
            b.pool.warm_replicas,
        )?;
        writeln!(
            f,
            "  shared standby   min 0, no spare per pool, to zero after {} s idle; standby pool \
             {}-{} (claims over {} s x {} s refill), a claim serves in {:.1} s",
            s.scale_to_zero_after.as_secs(),
            sb.min,
            sb.max,
            sb.claim_window.as_secs(),
            sb.refill_time.as_secs(),
            s.claim_time.as_secs_f64(),
        )?;
        writeln!(
            f,
            "  knative to zero  KPA, min 0: to zero when the 60 s mean is 0; the activator holds \
             requests through a cold start"
        )?;
        writeln!(
            f,
            "  hpa min 1        HPA as in the single-pool report, min 1 per pool"
        )?;
        writeln!(f)?;
        for p in &self.pools {
            writeln!(f, "  {:<10}{}", p.name, p.about)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<16} {:>10} {:>7} {:>9} {:>7} {:>6} {:>7} {:>10} {:>5} {:>10} {:>10} {:>6}",
            "policy",
            "idle pod-s",
            "pod-s",
            "standby",
            "queries",
            "waited",
            "waited%",
            "p99 wait s",
            "wakes",
            "wake p50 s",
            "wake max s",
            "claims"
        )?;
        for (policy, o) in &self.rows {
            writeln!(
                f,
                "{:<16} {:>10.0} {:>7.0} {:>9.0} {:>7} {:>6} {:>6.1}% {:>10} {:>5} {:>10} {:>10} {:>6}",
                policy.name(),
                o.idle_pod_secs,
                o.pod_secs,
                o.standby_pod_secs,
                o.queries,
                o.waited,
                100.0 * o.waited as f64 / o.queries.max(1) as f64,
                secs(Some(o.p99_wait)),
                o.wakes,
                secs(o.wake_p50),
                secs(o.wake_max),
                o.claims,
            )?;
        }
        for line in LEGEND {
            writeln!(f, "  {line}")?;
        }
        let Some(ours) = self.get(FleetPolicy::SharedStandby) else {
            return Ok(());
        };
        writeln!(f)?;
        writeln!(
            f,
            "Shared standby / baseline (below 1 favours shared standby):"
        )?;
        writeln!(
            f,
            "{:<16} {:>10} {:>7} {:>6} {:>10} {:>10}",
            "baseline", "idle pod-s", "pod-s", "waited", "p99 wait", "wake p50"
        )?;
        for (policy, theirs) in &self.rows {
            if *policy == FleetPolicy::SharedStandby {
                continue;
            }
            let wake = |o: &FleetOutcome| o.wake_p50.map_or(0.0, |d| d.as_secs_f64());
            writeln!(
                f,
                "{:<16} {:>10} {:>7} {:>6} {:>10} {:>10}",
                policy.name(),
                ratio(ours.idle_pod_secs, theirs.idle_pod_secs),
                ratio(ours.pod_secs, theirs.pod_secs),
                ratio(ours.waited as f64, theirs.waited as f64),
                ratio(ours.p99_wait.as_secs_f64(), theirs.p99_wait.as_secs_f64()),
                ratio(wake(ours), wake(theirs)),
            )?;
        }
        Ok(())
    }
}
