//! The scaling policy against Knative- and HPA-style autoscalers, over demand traces.
//!
//! A deterministic discrete-time model of one pool: queries arrive per a [trace](trace), wait
//! for a slot, run on pods that take a cold start to become ready and drain when removed. Each
//! policy drives the same pool, with the same queries, on its own schedule and signal; the
//! [`Report`] sets what each did side by side.
//!
//! ```text
//!  trace (rate over time) ──► arrivals ──► queue ──► pods (target slots each) ──► done
//!                                            │            ▲
//!                           in_flight, queued, arrivals   │ start (cold start) / drain
//!                                            ▼            │
//!                                  policy under test: quiver | knative | hpa
//! ```
//!
//! Pure code like the policy itself: no clock, no I/O, no threads. `quiver-operator simulate`
//! prints [`report()`]; `docs/scaling.md` explains the figures.

use std::time::Duration;

use crate::scaling::ScalingConfig;

pub mod fleet;
mod hpa;
mod knative;
mod measure;
mod model;
mod policy;
mod report;
mod rng;
pub mod trace;

#[cfg(test)]
mod tests;

pub use hpa::Hpa;
pub use knative::Kpa;
pub use measure::Outcome;
pub use model::{ColdStartsOnly, IDLE_GAP, Simulation, Supply};
pub use policy::{Autoscaler, Observation, PolicyKind, Quiver};
pub use report::{Report, Row};
pub use trace::Trace;

/// How the pool and the run are set up; shared by every policy of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// Seed of the query and pod start-up draws.
    pub seed: u64,
    /// Length of one model step.
    pub tick: Duration,
    /// A pod's cold start, from being requested to ready, drawn uniformly in this range.
    pub cold_start: (Duration, Duration),
    /// How often Quiver's policy samples the gateway.
    pub sample_every: Duration,
    /// Quiver's policy; the baselines take its bounds and target per pod.
    pub pool: ScalingConfig,
}

impl Default for Setup {
    /// The report's setup: the default policy, 8–10 s cold starts (image present, catalog and
    /// cache warm-up), and a 1 s demand poll — the slowest the operator polls; the local
    /// supervisor samples every 250 ms.
    fn default() -> Self {
        Self {
            seed: 1,
            tick: Duration::from_millis(100),
            cold_start: (Duration::from_secs(8), Duration::from_secs(10)),
            sample_every: Duration::from_secs(1),
            pool: ScalingConfig::default(),
        }
    }
}

/// Runs `policy` over `trace`.
pub fn run(trace: &Trace, policy: PolicyKind, setup: &Setup) -> Outcome {
    let autoscaler = policy.build(&setup.pool, setup.sample_every);
    Simulation::new(trace, setup, autoscaler).run()
}

/// The report of the default setup over all traces, as plain text.
pub fn report() -> String {
    Report::run(&Setup::default()).to_string()
}
