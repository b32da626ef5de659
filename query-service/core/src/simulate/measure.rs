//! What a run measures, accumulated tick by tick.
//!
//! - *decide*: from a jump in demand to the policy asking for pods (starting or ready) enough
//!   for the jump's offered load: the policy's own reaction, cold start aside;
//! - *ready*: from a jump to ready capacity (ready pods × target) covering the jump's offered
//!   load (rate × mean query time): the reaction a client feels, cold start included;
//! - *short*: seconds during which ready capacity was below the offered load, for traces
//!   without jumps as much as with them;
//! - waits: a query *waited* when no slot was free in the tick it arrived;
//! - *idle pod-seconds*: free slots of ready pods over target concurrency, integrated — what
//!   was paid for and not used; *pod-seconds*: every pod that exists (starting, ready or
//!   draining), integrated — what was paid for.

use std::time::Duration;

use super::trace::Trace;

/// Per-jump reaction, in seconds after the jump.
#[derive(Debug, Clone, Copy, Default)]
struct Reaction {
    decided: Option<f64>,
    ready: Option<f64>,
}

/// The pool during one tick, as the measures need it.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    /// Time since the start, in seconds.
    pub secs: f64,
    /// Length of the tick, in seconds.
    pub dt: f64,
    /// Pods existing (starting, ready or draining).
    pub pods: f64,
    /// Free slots of ready pods, in pods (free slots / target).
    pub idle: f64,
    /// Concurrent queries the ready pods take.
    pub ready_capacity: f64,
    /// Concurrent queries the pods asked for (starting or ready) will take.
    pub asked_capacity: f64,
}

/// Running totals of one simulation.
#[derive(Debug, Clone)]
pub struct Measures {
    pod_secs: f64,
    idle_secs: f64,
    short_secs: f64,
    /// Queries dispatched, by ticks waited (index = ticks).
    waits: Vec<u64>,
    scale_events: u32,
    reactions: Vec<Reaction>,
}

impl Measures {
    /// Empty totals for a trace with `jumps` sudden rises.
    pub fn new(jumps: usize) -> Self {
        Self {
            pod_secs: 0.0,
            idle_secs: 0.0,
            short_secs: 0.0,
            waits: Vec::new(),
            scale_events: 0,
            reactions: vec![Reaction::default(); jumps],
        }
    }

    /// Adds one tick.
    pub fn account(&mut self, tick: &Tick, trace: &Trace) {
        let dt = tick.dt;
        self.pod_secs += tick.pods * dt;
        self.idle_secs += tick.idle * dt;
        if tick.ready_capacity < trace.offered(tick.secs) {
            self.short_secs += dt;
        }
        let mean = trace.mean_service.as_secs_f64();
        for (reaction, (at, rate)) in self.reactions.iter_mut().zip(trace.jumps) {
            if tick.secs < *at {
                continue;
            }
            let need = rate * mean;
            if reaction.decided.is_none() && tick.asked_capacity >= need {
                reaction.decided = Some(tick.secs - at);
            }
            if reaction.ready.is_none() && tick.ready_capacity >= need {
                reaction.ready = Some(tick.secs - at);
            }
        }
    }

    /// The policy changed the size.
    pub fn scaled(&mut self) {
        self.scale_events += 1;
    }

    /// Queries dispatched, by ticks waited (index = ticks).
    pub fn waits(&self) -> &[u64] {
        &self.waits
    }

    /// A query was dispatched after waiting `ticks`.
    pub fn waited(&mut self, ticks: u64) {
        let i = ticks as usize;
        if self.waits.len() <= i {
            self.waits.resize(i + 1, 0);
        }
        self.waits[i] += 1;
    }

    /// The totals as an outcome, with ticks of length `tick`.
    pub fn outcome(&self, tick: Duration) -> Outcome {
        let queries: u64 = self.waits.iter().sum();
        let waited = queries - self.waits.first().copied().unwrap_or(0);
        let wait_sum: u64 = self
            .waits
            .iter()
            .enumerate()
            .map(|(ticks, n)| ticks as u64 * n)
            .sum();
        // Nearest-rank 99th percentile.
        let rank = (queries as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        let p99 = self
            .waits
            .iter()
            .position(|n| {
                seen += n;
                seen >= rank.max(1)
            })
            .unwrap_or(0);
        let worst = |pick: fn(&Reaction) -> Option<f64>| -> Option<Option<Duration>> {
            if self.reactions.is_empty() {
                return None;
            }
            let all: Option<Vec<f64>> = self.reactions.iter().map(pick).collect();
            Some(all.map(|v| Duration::from_secs_f64(v.into_iter().fold(0.0, f64::max))))
        };
        Outcome {
            queries,
            waited,
            mean_wait: tick.mul_f64(wait_sum as f64 / queries.max(1) as f64),
            p99_wait: tick * p99 as u32,
            decide: worst(|r| r.decided),
            ready: worst(|r| r.ready),
            short_secs: self.short_secs,
            idle_pod_secs: self.idle_secs,
            pod_secs: self.pod_secs,
            scale_events: self.scale_events,
        }
    }
}

/// What one policy did over one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Queries served (dispatched to a pod).
    pub queries: u64,
    /// Of those, queries that found no free slot on arrival.
    pub waited: u64,
    /// Mean wait for a slot over all served queries.
    pub mean_wait: Duration,
    /// 99th-percentile wait for a slot.
    pub p99_wait: Duration,
    /// Slowest time from a jump to asking for enough pods: `None` for a trace without jumps,
    /// `Some(None)` when some jump never got them.
    pub decide: Option<Option<Duration>>,
    /// Slowest time from a jump to enough ready capacity: `None` for a trace without jumps,
    /// `Some(None)` when some jump never got it.
    pub ready: Option<Option<Duration>>,
    /// Seconds with ready capacity below the offered load.
    pub short_secs: f64,
    /// Ready capacity left unused, in pod-seconds.
    pub idle_pod_secs: f64,
    /// Pods existing, in pod-seconds.
    pub pod_secs: f64,
    /// Changes of the desired size.
    pub scale_events: u32,
}

impl Outcome {
    /// Share of served queries that waited, in [0, 1].
    pub fn waited_share(&self) -> f64 {
        self.waited as f64 / self.queries.max(1) as f64
    }
}
