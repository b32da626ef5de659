//! The standby pool in the fleet model: warm workers no pool owns, claimed by any pool that
//! needs workers and refilled by cold starts, sized by [`StandbyPolicy`].
//!
//! ```text
//!  before each tick: standby workers whose cold start is over become ready
//!  during the tick:  a pool asking for n pods claims min(n, ready) (split), each serving the
//!                    pool after the claim time; the pool cold-starts the rest
//!  after the tick:   start cold standby workers up to the policy's target
//! ```

use std::time::Duration;

use crate::scaling::standby::{StandbyConfig, StandbyPolicy};

use super::super::Setup;
use super::super::model::Supply;
use super::super::rng::Rng;

/// The shared standby pool of one fleet run.
#[derive(Debug)]
pub struct StandbyPool {
    policy: StandbyPolicy,
    tick: Duration,
    cold_start: (Duration, Duration),
    claim_ticks: u64,
    starts: Rng,
    /// Ready standby workers.
    ready: u32,
    /// Ticks at which the standby workers being started become ready.
    starting: Vec<u64>,
    claims: u64,
}

impl StandbyPool {
    /// A standby pool at its minimum, all ready, as after a quiet spell.
    ///
    /// # Panics
    /// If `config` is invalid: the report only uses known-good configurations.
    pub fn new(config: StandbyConfig, setup: &Setup, claim_time: Duration, starts: Rng) -> Self {
        let ready = config.min;
        let claim_ticks = (claim_time.as_secs_f64() / setup.tick.as_secs_f64()).ceil() as u64;
        Self {
            policy: StandbyPolicy::new(config).expect("a valid standby config"),
            tick: setup.tick,
            cold_start: setup.cold_start,
            claim_ticks,
            starts,
            ready,
            starting: Vec::new(),
            claims: 0,
        }
    }

    /// Standby workers ready to be claimed.
    pub fn ready(&self) -> u32 {
        self.ready
    }

    /// Standby workers that exist, ready or starting.
    pub fn pods(&self) -> u32 {
        self.ready + self.starting.len() as u32
    }

    /// Workers claimed so far.
    pub fn claims(&self) -> u64 {
        self.claims
    }

    fn now(&self, tick: u64) -> Duration {
        self.tick * tick as u32
    }

    /// Standby workers whose cold start ends at `tick` become ready.
    pub fn before_tick(&mut self, tick: u64) {
        let before = self.starting.len();
        self.starting.retain(|at| *at > tick);
        self.ready += (before - self.starting.len()) as u32;
    }

    /// Starts standby workers up to the target, once the tick's claims are known.
    pub fn after_tick(&mut self, tick: u64) {
        let now = self.now(tick);
        let (low, high) = self.cold_start;
        for _ in 0..self.policy.refill(now, self.pods()) {
            let cold = low.as_secs_f64() + (high - low).as_secs_f64() * self.starts.unit();
            let ready_at = tick + (cold / self.tick.as_secs_f64()).ceil() as u64;
            self.starting.push(ready_at);
        }
    }
}

impl Supply for StandbyPool {
    fn claim(&mut self, tick: u64, needed: u32) -> Vec<u64> {
        let split = self.policy.claim(self.now(tick), needed, self.ready);
        self.ready -= split.claims;
        self.claims += u64::from(split.claims);
        vec![tick + self.claim_ticks; split.claims as usize]
    }
}
