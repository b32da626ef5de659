//! The report: every trace under every policy in one run, then Quiver against each baseline.

use std::fmt;
use std::time::Duration;

use super::measure::Outcome;
use super::policy::PolicyKind;
use super::trace::{self, Trace};
use super::{Setup, run};

/// One trace under one policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The trace's name.
    pub trace: &'static str,
    /// The policy.
    pub policy: PolicyKind,
    /// What it did.
    pub outcome: Outcome,
}

/// All traces under all policies, from one setup.
#[derive(Debug, Clone)]
pub struct Report {
    /// The setup every row shares.
    pub setup: Setup,
    /// The traces, in row order.
    pub traces: Vec<Trace>,
    /// Trace by trace, each under every policy of [`PolicyKind::ALL`] in order.
    pub rows: Vec<Row>,
}

impl Report {
    /// Runs every trace under every policy.
    pub fn run(setup: &Setup) -> Self {
        let traces = trace::all();
        let rows = traces
            .iter()
            .flat_map(|t| {
                PolicyKind::ALL.map(|policy| Row {
                    trace: t.name,
                    policy,
                    outcome: run(t, policy, setup),
                })
            })
            .collect();
        Self {
            setup: setup.clone(),
            traces,
            rows,
        }
    }

    /// The outcome of `policy` over the trace named `trace`.
    pub fn get(&self, trace: &str, policy: PolicyKind) -> Option<&Outcome> {
        self.rows
            .iter()
            .find(|r| r.trace == trace && r.policy == policy)
            .map(|r| &r.outcome)
    }
}

/// What the columns mean, printed under the table so the output stands on its own.
const LEGEND: [&str; 5] = [
    "decide s: from a jump to pods asked for covering its load; ready s: to ready pods covering it",
    "short s: time with ready capacity below the offered load (rate x mean query time)",
    "waited: queries that found no free slot on arrival; waits are for a slot",
    "idle pod-s: free slots of ready pods / target, integrated; pod-s: every pod that exists",
    "events: changes of the desired size; never: not reached by the end of the trace",
];

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

/// A reaction time: `-` for a trace without jumps, `never` when a jump never got one.
fn reaction(r: Option<Option<Duration>>) -> String {
    match r {
        None => "-".into(),
        Some(None) => "never".into(),
        Some(Some(d)) => secs(d),
    }
}

/// `ours / theirs`, or `-` when the baseline is zero.
fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}", ours / theirs)
    } else if ours > 0.0 {
        "inf".into()
    } else {
        "-".into()
    }
}

fn ready_secs(o: &Outcome) -> Option<f64> {
    o.ready.flatten().map(|d| d.as_secs_f64())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.setup;
        let cfg = &s.pool;
        writeln!(
            f,
            "Scaling simulation, seed {}: {} ms ticks, cold start {}-{} s, {} queries per pod, \
             {}-{} pods",
            s.seed,
            s.tick.as_millis(),
            secs(s.cold_start.0),
            secs(s.cold_start.1),
            cfg.target_concurrency,
            cfg.min_replicas,
            cfg.max_replicas,
        )?;
        writeln!(
            f,
            "  quiver   demand polled every {} s, {} warm spare, {} s stable / {} s panic window, \
             {} s scale-down delay",
            secs(s.sample_every),
            cfg.warm_replicas,
            cfg.stable_window.as_secs(),
            cfg.panic_window.as_secs(),
            cfg.scale_down_delay.as_secs(),
        )?;
        writeln!(
            f,
            "  knative  KPA every 2 s, 60 s stable / 6 s panic window, panic at 2x ready, \
             no spares"
        )?;
        writeln!(
            f,
            "  hpa      sync every 15 s, metric 10-25 s behind, 10% tolerance, \
             300 s scale-down stabilisation"
        )?;
        writeln!(f)?;
        for t in &self.traces {
            writeln!(
                f,
                "  {:<9}{}, {} ms mean query",
                t.name,
                t.about,
                t.mean_service.as_millis()
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<9} {:<8} {:>8} {:>7} {:>7} {:>7} {:>6} {:>7} {:>11} {:>10} {:>10} {:>7} {:>6}",
            "trace",
            "policy",
            "decide s",
            "ready s",
            "short s",
            "queries",
            "waited",
            "waited%",
            "mean wait s",
            "p99 wait s",
            "idle pod-s",
            "pod-s",
            "events"
        )?;
        for (i, row) in self.rows.iter().enumerate() {
            let o = &row.outcome;
            let first = i == 0 || self.rows[i - 1].trace != row.trace;
            writeln!(
                f,
                "{:<9} {:<8} {:>8} {:>7} {:>7.1} {:>7} {:>6} {:>6.1}% {:>11} {:>10} {:>10.0} {:>7.0} {:>6}",
                if first { row.trace } else { "" },
                row.policy.name(),
                reaction(o.decide),
                reaction(o.ready),
                o.short_secs,
                o.queries,
                o.waited,
                100.0 * o.waited_share(),
                format!("{:.2}", o.mean_wait.as_secs_f64()),
                secs(o.p99_wait),
                o.idle_pod_secs,
                o.pod_secs,
                o.scale_events,
            )?;
        }
        for line in LEGEND {
            writeln!(f, "  {line}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "Quiver / baseline in the same run (below 1 favours quiver):"
        )?;
        writeln!(
            f,
            "{:<9} {:<8} {:>7} {:>7} {:>6} {:>9} {:>8} {:>10} {:>7}",
            "trace",
            "baseline",
            "ready",
            "short",
            "waited",
            "mean wait",
            "p99 wait",
            "idle pod-s",
            "pod-s"
        )?;
        for t in &self.traces {
            let Some(ours) = self.get(t.name, PolicyKind::Quiver) else {
                continue;
            };
            for (j, base) in [PolicyKind::Knative, PolicyKind::Hpa]
                .into_iter()
                .enumerate()
            {
                let Some(theirs) = self.get(t.name, base) else {
                    continue;
                };
                let ready = match (ready_secs(ours), ready_secs(theirs)) {
                    (Some(a), Some(b)) => ratio(a, b),
                    _ => "-".into(),
                };
                writeln!(
                    f,
                    "{:<9} {:<8} {:>7} {:>7} {:>6} {:>9} {:>8} {:>10} {:>7}",
                    if j == 0 { t.name } else { "" },
                    base.name(),
                    ready,
                    ratio(ours.short_secs, theirs.short_secs),
                    ratio(ours.waited as f64, theirs.waited as f64),
                    ratio(ours.mean_wait.as_secs_f64(), theirs.mean_wait.as_secs_f64()),
                    ratio(ours.p99_wait.as_secs_f64(), theirs.p99_wait.as_secs_f64()),
                    ratio(ours.idle_pod_secs, theirs.idle_pod_secs),
                    ratio(ours.pod_secs, theirs.pod_secs),
                )?;
            }
        }
        Ok(())
    }
}
