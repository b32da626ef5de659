//! The scaling state of every pool, shared by the reconciler (which applies the size) and the
//! demand loop (which feeds the policy the gateway's figures every poll).
//!
//! ```text
//!  demand loop ──observe(sample)──► Scalers{pool → ScalingPolicy, figures} ◄──desired()── reconcile
//!       │ size changed                                                            │
//!       └───────────── mark idle pods, then reconcile(pool) ──────────────────────┘
//! ```
//!
//! The policy is in memory; after a restart (or a leader change) it resumes from the
//! Deployment's replicas, so a new leader neither resets a pool to its minimum nor jumps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::crd::PoolSettings;
use quiver_core::scaling::standby::{StandbyConfig, StandbyPolicy};
use quiver_core::scaling::{Decision, DemandSample, ScalingPolicy};

/// A pool: (namespace, name).
pub type PoolKey = (String, String);

/// What the gateways last reported about a pool, for status.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Queries running.
    pub in_flight: u32,
    /// Queries waiting for a worker.
    pub queued: u32,
    /// Ready workers with no query running.
    pub warm: u32,
}

/// One pool's state.
#[derive(Debug)]
struct PoolScale {
    /// Present while autoscaling is on.
    policy: Option<ScalingPolicy>,
    /// Size last decided, and why.
    desired: u32,
    reason: String,
    /// Last gateway figures, if any gateway reported the pool.
    figures: Option<Figures>,
}

/// Every pool's scaling state.
#[derive(Debug, Clone, Default)]
pub struct Scalers {
    pools: Arc<Mutex<HashMap<PoolKey, PoolScale>>>,
    /// Why the last demand poll failed, if it did (every pool is held at its size then).
    demand_error: Arc<Mutex<Option<String>>>,
    /// Each standby pool's size policy, fed the claims pools make from it.
    standby: Arc<Mutex<HashMap<PoolKey, StandbyPolicy>>>,
}

impl Scalers {
    fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, PoolScale>> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The size a pool should have now, and why. `current` is the Deployment's replicas, if it
    /// exists, so a restarted operator resumes from what runs.
    pub fn desired(
        &self,
        key: &PoolKey,
        settings: &PoolSettings,
        current: Option<u32>,
        now: Duration,
    ) -> (u32, String) {
        let mut pools = self.lock();
        let cfg = &settings.scaling;
        if !settings.autoscaling {
            let desired = settings.pinned;
            let reason = format!("pinned: spec.replicas {desired} (autoscaling off)");
            let entry = pools.entry(key.clone()).or_insert_with(|| PoolScale {
                policy: None,
                desired,
                reason: reason.clone(),
                figures: None,
            });
            entry.policy = None;
            entry.desired = desired;
            entry.reason = reason.clone();
            return (desired, reason);
        }
        let entry = pools.entry(key.clone()).or_insert_with(|| PoolScale {
            policy: None,
            desired: 0,
            reason: String::new(),
            figures: None,
        });
        match &mut entry.policy {
            Some(policy) => {
                if policy.config() != cfg {
                    // Validated by the caller; a failure keeps the old bounds.
                    let _ = policy.set_config(cfg.clone());
                }
                policy.set_scale_to_zero_after(settings.scale_to_zero_after);
            }
            None => {
                let mut policy = ScalingPolicy::new(cfg.clone()).expect("validated settings");
                policy.set_scale_to_zero_after(settings.scale_to_zero_after);
                let (start, reason) = match current {
                    Some(n) if entry.reason.is_empty() => (n, format!("resumed at {n} replicas")),
                    // Autoscaling turned back on: start from the pinned size.
                    Some(n) => (n, format!("autoscaling on at {n} replicas")),
                    None => {
                        let n = cfg.replicas_for(0.0);
                        (n, format!("initial: {n} replicas before any demand"))
                    }
                };
                policy.resume(now, start);
                entry.reason = reason;
                entry.policy = Some(policy);
            }
        }
        let decided = entry
            .policy
            .as_ref()
            .and_then(ScalingPolicy::desired)
            .unwrap_or(cfg.min_replicas);
        let desired = decided.clamp(cfg.min_replicas, cfg.max_replicas);
        if desired != decided {
            // New bounds apply at once; the policy catches up on its next sample.
            entry.reason = format!(
                "bounds: kept within [{}, {}]",
                cfg.min_replicas, cfg.max_replicas
            );
        }
        entry.desired = desired;
        (desired, entry.reason.clone())
    }

    /// Feeds one demand sample to an autoscaled pool's policy and keeps its figures. Returns
    /// the decision, or `None` when the pool is not autoscaled (or not reconciled yet).
    pub fn observe(
        &self,
        key: &PoolKey,
        now: Duration,
        sample: DemandSample,
        figures: Figures,
    ) -> Option<Decision> {
        let mut pools = self.lock();
        let entry = pools.get_mut(key)?;
        entry.figures = Some(figures);
        let decision = entry.policy.as_mut()?.observe(now, sample);
        if decision.changed() {
            entry.desired = decision.desired;
            entry.reason = decision.reason.to_string();
        }
        Some(decision)
    }

    /// The size a standby pool should have at `now`: its minimum, raised by the claims pools
    /// made from it over the claim window.
    pub fn standby_target(&self, key: &PoolKey, config: &StandbyConfig, now: Duration) -> u32 {
        self.with_standby(key, config, |policy| policy.target(now))
    }

    /// Records `claims` workers claimed from the standby pool `key` at `now`.
    pub fn record_claims(&self, key: &PoolKey, config: &StandbyConfig, now: Duration, claims: u32) {
        self.with_standby(key, config, |policy| {
            policy.claim(now, claims, claims);
        });
    }

    /// Runs `f` on the standby pool's policy under `config`, made on first use.
    fn with_standby<T>(
        &self,
        key: &PoolKey,
        config: &StandbyConfig,
        f: impl FnOnce(&mut StandbyPolicy) -> T,
    ) -> T {
        let mut standby = self.standby.lock().unwrap_or_else(|e| e.into_inner());
        let policy = standby
            .entry(key.clone())
            .or_insert_with(|| StandbyPolicy::new(config.clone()).expect("validated settings"));
        if policy.config() != config {
            // New bounds: the claim history is short (one window), so starting over is cheap.
            *policy = StandbyPolicy::new(config.clone()).expect("validated settings");
        }
        f(policy)
    }

    /// The gateways' last figures for a pool.
    pub fn figures(&self, key: &PoolKey) -> Option<Figures> {
        self.lock().get(key).and_then(|p| p.figures)
    }

    /// Drops the state of pools that no longer exist.
    pub fn retain(&self, keep: impl Fn(&PoolKey) -> bool) {
        self.lock().retain(|k, _| keep(k));
        self.standby
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep(k));
    }

    /// Records the outcome of a demand poll: `None` when it succeeded.
    pub fn set_demand_error(&self, error: Option<String>) {
        *self.demand_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// Why the last demand poll failed, if it did.
    pub fn demand_error(&self) -> Option<String> {
        self.demand_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
