//! Many pools at once: per-pool spares against a shared standby pool with scale to zero, and
//! Knative- and HPA-style baselines, over a fleet of mostly idle pools.
//!
//! ```text
//!  pool traces ──► one single-pool model per pool (queries, queue, pods; super::model)
//!                      │ a pool asks for n more pods
//!                      ▼
//!         supply: shared standby pool ──claims (ready in ~0.3 s)──► the pool
//!                      │ n − claims                 ▲ refill to target (cold starts)
//!                      ▼                            │
//!                 cold starts (8–10 s)        StandbyPolicy (scaling::standby)
//! ```
//!
//! Each pool is the single-pool [`Simulation`] with its own trace and policy; the fleet steps
//! them together, lends them the standby pool as their [`Supply`], and adds up what the whole
//! fleet pays and what its queries wait. Pure code: no clock, no I/O, no threads.

use std::time::Duration;

use crate::scaling::ScalingConfig;
use crate::scaling::standby::StandbyConfig;

use super::hpa::Hpa;
use super::knative::Kpa;
use super::model::{ColdStartsOnly, Simulation, Supply};
use super::policy::{Autoscaler, Quiver};
use super::rng::Rng;
use super::{Setup, Trace};

mod report;
mod standby;
pub mod trace;

#[cfg(test)]
mod tests;

pub use report::FleetReport;
pub use standby::StandbyPool;

/// Stream of the standby pool's cold starts (the pools use 1 + 16 × pool and 2 + 16 × pool).
const STANDBY_STARTS: u64 = 3;

/// How the fleet is set up: the single-pool setup (seed, tick, cold start, poll, pool bounds)
/// plus what only the serverless policy has.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSetup {
    /// Seed, tick, cold start, demand poll and the per-pool policy of today.
    pub base: Setup,
    /// A pool with no query for this long goes to zero (shared standby policy).
    pub scale_to_zero_after: Duration,
    /// The standby pool's size policy.
    pub standby: StandbyConfig,
    /// From claiming a standby worker to it serving the pool (loading the pool's catalog).
    pub claim_time: Duration,
}

impl Default for FleetSetup {
    /// The report's setup. The idle time is short because a wake-up costs one claim (0.3 s),
    /// not a cold start; the standby pool's refill time is the cold start's upper end.
    fn default() -> Self {
        let base = Setup::default();
        Self {
            standby: StandbyConfig {
                // One above the default: ten pools' bursts then find warm workers often enough
                // that the p99 wait stays below per-pool spares' on every seed tried (1-10).
                min: 3,
                refill_time: base.cold_start.1,
                ..StandbyConfig::default()
            },
            base,
            scale_to_zero_after: Duration::from_secs(30),
            claim_time: Duration::from_millis(300),
        }
    }
}

/// The policies of the fleet report, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetPolicy {
    /// Today: every pool at least one worker plus its own warm spare, new pods cold-start.
    PerPoolSpares,
    /// Pools at zero when idle; new workers claimed from one standby pool shared by all pools.
    SharedStandby,
    /// Knative's KPA with scale to zero; its activator holds requests while a pod cold-starts.
    KnativeToZero,
    /// The HPA, at least one pod per pool.
    Hpa,
}

impl FleetPolicy {
    /// All policies, today's first.
    pub const ALL: [FleetPolicy; 4] = [
        FleetPolicy::PerPoolSpares,
        FleetPolicy::SharedStandby,
        FleetPolicy::KnativeToZero,
        FleetPolicy::Hpa,
    ];

    /// Short name for the report.
    pub fn name(self) -> &'static str {
        match self {
            FleetPolicy::PerPoolSpares => "per-pool spares",
            FleetPolicy::SharedStandby => "shared standby",
            FleetPolicy::KnativeToZero => "knative to zero",
            FleetPolicy::Hpa => "hpa min 1",
        }
    }

    /// The pool configuration this policy runs every pool with.
    pub fn pool_config(self, setup: &FleetSetup) -> ScalingConfig {
        let base = setup.base.pool.clone();
        match self {
            FleetPolicy::PerPoolSpares => base,
            // The standby pool is the spare: none per pool.
            FleetPolicy::SharedStandby => ScalingConfig {
                min_replicas: 0,
                warm_replicas: 0,
                ..base
            },
            FleetPolicy::KnativeToZero => ScalingConfig {
                min_replicas: 0,
                ..base
            },
            FleetPolicy::Hpa => ScalingConfig {
                min_replicas: base.min_replicas.max(1),
                ..base
            },
        }
    }

    fn autoscaler(self, setup: &FleetSetup) -> Box<dyn Autoscaler> {
        let cfg = self.pool_config(setup);
        let every = setup.base.sample_every;
        match self {
            FleetPolicy::PerPoolSpares => Box::new(Quiver::new(cfg, every)),
            FleetPolicy::SharedStandby => {
                Box::new(Quiver::new(cfg, every).scale_to_zero(setup.scale_to_zero_after))
            }
            FleetPolicy::KnativeToZero => Box::new(Kpa::new(&cfg)),
            FleetPolicy::Hpa => Box::new(Hpa::new(&cfg)),
        }
    }
}

/// What one policy did over the whole fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetOutcome {
    /// Queries served, all pools.
    pub queries: u64,
    /// Of those, queries that found no free slot on arrival.
    pub waited: u64,
    /// 99th-percentile wait for a slot, all queries of all pools.
    pub p99_wait: Duration,
    /// Ready pods serving no query, standby pods included, in pod-seconds.
    pub idle_pod_secs: f64,
    /// Every pod that exists (starting, ready, draining, standby), in pod-seconds.
    pub pod_secs: f64,
    /// Of `pod_secs`, the standby pool's.
    pub standby_pod_secs: f64,
    /// First queries after an idle spell (see [`IDLE_GAP`](super::model::IDLE_GAP)).
    pub wakes: usize,
    /// Median time from such a query's arrival to its result.
    pub wake_p50: Option<Duration>,
    /// Slowest such time.
    pub wake_max: Option<Duration>,
    /// Workers claimed from the standby pool.
    pub claims: u64,
}

/// Runs every pool of `pools` under `policy`, stepped together.
pub fn run(pools: &[Trace], policy: FleetPolicy, setup: &FleetSetup) -> FleetOutcome {
    // The model holds each pool within its setup's bounds: the policy's, not today's.
    let base = &Setup {
        pool: policy.pool_config(setup),
        ..setup.base.clone()
    };
    let mut sims: Vec<Simulation<'_>> = pools
        .iter()
        .enumerate()
        .map(|(i, trace)| Simulation::for_pool(trace, base, policy.autoscaler(setup), i as u64))
        .collect();
    let mut standby = (policy == FleetPolicy::SharedStandby).then(|| {
        StandbyPool::new(
            setup.standby.clone(),
            base,
            setup.claim_time,
            Rng::new(base.seed, STANDBY_STARTS),
        )
    });
    let dt = base.tick.as_secs_f64();
    let (mut idle, mut pods, mut standing) = (0.0, 0.0, 0.0);
    let mut tick = 0;
    while sims.iter().any(|s| !s.done()) {
        if let Some(standby) = standby.as_mut() {
            standby.before_tick(tick);
        }
        for sim in &mut sims {
            match standby.as_mut() {
                Some(standby) => sim.step_with(standby as &mut dyn Supply),
                None => sim.step_with(&mut ColdStartsOnly),
            }
        }
        let (standby_ready, standby_pods) = match standby.as_mut() {
            Some(standby) => {
                standby.after_tick(tick);
                (standby.ready(), standby.pods())
            }
            None => (0, 0),
        };
        let pool_idle: u32 = sims.iter().map(Simulation::idle_pods).sum();
        let pool_pods: u32 = sims.iter().map(Simulation::pods).sum();
        idle += f64::from(pool_idle + standby_ready) * dt;
        pods += f64::from(pool_pods + standby_pods) * dt;
        standing += f64::from(standby_pods) * dt;
        tick += 1;
    }
    outcome(&sims, base.tick, idle, pods, standing, standby.as_ref())
}

fn outcome(
    sims: &[Simulation<'_>],
    tick: Duration,
    idle_pod_secs: f64,
    pod_secs: f64,
    standby_pod_secs: f64,
    standby: Option<&StandbyPool>,
) -> FleetOutcome {
    let mut waits: Vec<u64> = Vec::new();
    for sim in sims {
        let h = sim.wait_histogram();
        if waits.len() < h.len() {
            waits.resize(h.len(), 0);
        }
        for (total, n) in waits.iter_mut().zip(h) {
            *total += n;
        }
    }
    let queries: u64 = waits.iter().sum();
    let mut wakes: Vec<u64> = sims
        .iter()
        .flat_map(|s| s.wake_latencies().iter().copied())
        .collect();
    wakes.sort_unstable();
    let at = |ticks: u64| tick * ticks as u32;
    FleetOutcome {
        queries,
        waited: queries - waits.first().copied().unwrap_or(0),
        p99_wait: at(percentile(&waits, 0.99)),
        idle_pod_secs,
        pod_secs,
        standby_pod_secs,
        wakes: wakes.len(),
        wake_p50: (!wakes.is_empty()).then(|| at(wakes[(wakes.len() - 1) / 2])),
        wake_max: wakes.last().map(|t| at(*t)),
        claims: standby.map_or(0, StandbyPool::claims),
    }
}

/// Nearest-rank percentile of a histogram (index = value).
fn percentile(histogram: &[u64], q: f64) -> u64 {
    let total: u64 = histogram.iter().sum();
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (value, n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return value as u64;
        }
    }
    0
}

/// The fleet report of the default setup, as plain text.
pub fn report() -> String {
    FleetReport::run(&FleetSetup::default()).to_string()
}
