//! The autoscalers under comparison, behind one interface the model drives every tick.
//!
//! Each policy sees the same pool but on its own schedule and through its own signal, as it
//! would in production: Quiver polls the gateway's demand report, Knative averages the
//! concurrency its queue proxies report each second, the HPA reads a lagging metrics pipeline.

use std::time::Duration;

use crate::scaling::{DemandSample, ScalingConfig, ScalingPolicy};

use super::hpa::Hpa;
use super::knative::Kpa;

/// What the pool looks like at the end of one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Time since the start of the run.
    pub now: Duration,
    /// Queries running on workers.
    pub in_flight: u32,
    /// Queries waiting for a worker slot.
    pub queued: u32,
    /// Queries that arrived over the last second.
    pub arrivals_last_sec: u32,
    /// Pods ready and taking queries.
    pub ready: u32,
    /// Pods asked for and not being removed (starting or ready): the Deployment's replicas.
    pub replicas: u32,
}

/// One autoscaling policy.
pub trait Autoscaler {
    /// Replicas the pool starts with when `concurrency` queries are offered steadily, so every
    /// policy begins from its own steady state instead of a cold start.
    fn initial(&self, concurrency: f64) -> u32;

    /// Sees one tick; returns the replicas wanted when the policy decides on this tick.
    fn tick(&mut self, seen: &Observation) -> Option<u32>;
}

/// The policies of the report, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Quiver's [`ScalingPolicy`].
    Quiver,
    /// Knative's KPA (see [`Kpa`]).
    Knative,
    /// Kubernetes' HorizontalPodAutoscaler (see [`Hpa`]).
    Hpa,
}

impl PolicyKind {
    /// All policies, Quiver first and then the baselines.
    pub const ALL: [PolicyKind; 3] = [PolicyKind::Quiver, PolicyKind::Knative, PolicyKind::Hpa];

    /// Short name for the report.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Quiver => "quiver",
            PolicyKind::Knative => "knative",
            PolicyKind::Hpa => "hpa",
        }
    }

    /// A fresh policy for a pool sized by `config`. The baselines take its bounds and target
    /// only, so all three aim at the same load per pod and differ in timing and spares.
    pub fn build(self, config: &ScalingConfig, sample_every: Duration) -> Box<dyn Autoscaler> {
        match self {
            PolicyKind::Quiver => Box::new(Quiver::new(config.clone(), sample_every)),
            PolicyKind::Knative => Box::new(Kpa::new(config)),
            PolicyKind::Hpa => Box::new(Hpa::new(config)),
        }
    }
}

/// Quiver's policy, sampled the way the operator polls the gateway.
#[derive(Debug)]
pub struct Quiver {
    policy: ScalingPolicy,
    sample_every: Duration,
    next_sample: Duration,
}

impl Quiver {
    /// Samples every `sample_every` (the operator polls at most 1 s apart, the local
    /// supervisor every 250 ms).
    ///
    /// # Panics
    /// If `config` is invalid: the report only uses known-good configurations.
    pub fn new(config: ScalingConfig, sample_every: Duration) -> Self {
        Self {
            policy: ScalingPolicy::new(config).expect("a valid scaling config"),
            sample_every,
            next_sample: Duration::ZERO,
        }
    }

    /// The same, with scale to zero after `after` idle (for a `min_replicas` 0 config).
    pub fn scale_to_zero(mut self, after: Duration) -> Self {
        self.policy.set_scale_to_zero_after(Some(after));
        self
    }
}

impl Autoscaler for Quiver {
    fn initial(&self, concurrency: f64) -> u32 {
        self.policy.config().replicas_for(concurrency)
    }

    fn tick(&mut self, seen: &Observation) -> Option<u32> {
        if self.policy.desired().is_none() {
            // The operator restarting next to a running pool: adopt its size.
            self.policy.resume(seen.now, seen.replicas);
        }
        // A query held at the gateway for a pool at zero makes the gateway call the scaler at
        // once (as Knative's activator pokes its autoscaler) instead of waiting for the poll.
        let waking = seen.replicas == 0 && (seen.queued > 0 || seen.arrivals_last_sec > 0);
        if seen.now < self.next_sample && !waking {
            return None;
        }
        self.next_sample = seen.now + self.sample_every;
        let sample = DemandSample {
            in_flight: seen.in_flight,
            queued: seen.queued,
            arrivals_per_sec: f64::from(seen.arrivals_last_sec),
        };
        Some(self.policy.observe(seen.now, sample).desired)
    }
}
