//! The pool model: queries arriving, waiting for a slot, running on pods that start, serve and
//! drain, advanced in fixed ticks.
//!
//! ```text
//!  each tick:  pods whose cold start is over become ready
//!              running queries that are done leave; drained pods with nothing running go
//!              arrivals of this tick (Poisson at the trace's rate) join the queue
//!              queue (FIFO) ──► least-loaded ready pod with a free slot, until none is free
//!              account pod-seconds, idle capacity, capacity against the offered load
//!              the policy sees the pool; a new size starts pods or drains the least busy
//! ```
//!
//! Queries and pod start-ups draw from separate seeded streams, so every policy sees the very
//! same queries (common random numbers) and differences come from the policies alone.
//!
//! New pods come from a [`Supply`] first: in the single-pool report there is none and every
//! pod cold-starts; in the [fleet](super::fleet) a shared standby pool hands out warm pods.
//!
//! Simplified: the queue has no limit or timeout (a query waits until served, so waiting is
//! measured, not rejections); a query never fails; draining has no timeout (queries are
//! short); capacity is exactly target concurrency per pod.

use std::collections::VecDeque;
use std::time::Duration;

use super::Setup;
use super::measure::{Measures, Outcome, Tick};
use super::policy::{Autoscaler, Observation};
use super::rng::Rng;
use super::trace::Trace;

/// Stream of query arrivals and service times.
const QUERIES: u64 = 1;
/// Stream of pod cold starts.
const PODS: u64 = 2;
/// Distance between the streams of two pools of one run.
const POOL_STREAMS: u64 = 16;

/// A query is the first after idle when the pool saw no arrival for this long before it: long
/// enough for every policy with scale to zero to have reached zero, so its latency shows the
/// wake-up.
pub const IDLE_GAP: Duration = Duration::from_secs(60);

/// Where a pool's new pods come from before it cold-starts them.
pub trait Supply {
    /// Hands up to `needed` ready-to-claim pods to a pool at `tick`; returns the tick at which
    /// each becomes ready in the pool. The pool cold-starts the rest.
    fn claim(&mut self, tick: u64, needed: u32) -> Vec<u64>;
}

/// No supply: every new pod is a cold start.
#[derive(Debug, Clone, Copy, Default)]
pub struct ColdStartsOnly;

impl Supply for ColdStartsOnly {
    fn claim(&mut self, _tick: u64, _needed: u32) -> Vec<u64> {
        Vec::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Requested; ready at this tick.
    Starting(u64),
    /// Taking queries.
    Ready,
    /// Being removed: takes no new queries, finishes its running ones.
    Draining,
}

#[derive(Debug)]
struct Pod {
    state: State,
    /// Ticks at which the running queries finish.
    running: Vec<u64>,
}

/// A query waiting for a slot.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    arrived: u64,
    service: u64,
    /// The first query after [`IDLE_GAP`] without arrivals: its latency is a wake-up's.
    after_idle: bool,
}

/// One pool under one policy over one trace.
pub struct Simulation<'a> {
    trace: &'a Trace,
    setup: &'a Setup,
    policy: Box<dyn Autoscaler>,
    queries: Rng,
    starts: Rng,
    tick: u64,
    ticks: u64,
    pods: Vec<Pod>,
    queue: VecDeque<Waiting>,
    /// Arrivals of the last second, one entry per tick.
    recent: VecDeque<u32>,
    arrived: u64,
    completed: u64,
    desired: u32,
    measures: Measures,
    /// Tick of the last arrival, if any.
    last_arrival: Option<u64>,
    /// Ticks from arrival to result of each first query after idle.
    wakes: Vec<u64>,
}

impl<'a> Simulation<'a> {
    /// A pool at the policy's steady size for the trace's starting load, all pods ready.
    pub fn new(trace: &'a Trace, setup: &'a Setup, policy: Box<dyn Autoscaler>) -> Self {
        Self::for_pool(trace, setup, policy, 0)
    }

    /// Pool number `pool` of a run with several: its own query and start-up streams, so pools
    /// differ, while every policy sees the same queries on the same pool.
    pub fn for_pool(
        trace: &'a Trace,
        setup: &'a Setup,
        policy: Box<dyn Autoscaler>,
        pool: u64,
    ) -> Self {
        let cfg = &setup.pool;
        let initial = policy
            .initial(trace.offered(0.0))
            .clamp(cfg.min_replicas, cfg.max_replicas);
        let pods = (0..initial)
            .map(|_| Pod {
                state: State::Ready,
                running: Vec::new(),
            })
            .collect();
        let ticks = (trace.length.as_nanos() / setup.tick.as_nanos()) as u64;
        Self {
            trace,
            setup,
            policy,
            queries: Rng::new(setup.seed, QUERIES + POOL_STREAMS * pool),
            starts: Rng::new(setup.seed, PODS + POOL_STREAMS * pool),
            tick: 0,
            ticks,
            pods,
            queue: VecDeque::new(),
            recent: VecDeque::new(),
            arrived: 0,
            completed: 0,
            desired: initial,
            measures: Measures::new(trace.jumps.len()),
            last_arrival: None,
            wakes: Vec::new(),
        }
    }

    /// The trace is over.
    pub fn done(&self) -> bool {
        self.tick >= self.ticks
    }

    /// Runs to the end of the trace and returns what was measured.
    pub fn run(mut self) -> Outcome {
        while !self.done() {
            self.step();
        }
        self.outcome()
    }

    /// Queries that arrived so far.
    pub fn arrived(&self) -> u64 {
        self.arrived
    }

    /// Queries that finished so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Queries waiting for a slot now.
    pub fn waiting(&self) -> u64 {
        self.queue.len() as u64
    }

    /// Queries running now.
    pub fn running(&self) -> u64 {
        self.pods.iter().map(|p| p.running.len() as u64).sum()
    }

    /// Pods starting or ready (the Deployment's replicas); draining pods are on their way out.
    pub fn replicas(&self) -> u32 {
        self.pods
            .iter()
            .filter(|p| p.state != State::Draining)
            .count() as u32
    }

    /// Every pod that exists, draining ones included.
    pub fn pods(&self) -> u32 {
        self.pods.len() as u32
    }

    /// Most queries running on any one pod now.
    pub fn busiest_pod(&self) -> usize {
        self.pods.iter().map(|p| p.running.len()).max().unwrap_or(0)
    }

    /// Ready pods running no query now: paid for and serving nothing.
    pub fn idle_pods(&self) -> u32 {
        self.ready_pods().filter(|p| p.running.is_empty()).count() as u32
    }

    /// Queries dispatched so far, by ticks waited (index = ticks).
    pub fn wait_histogram(&self) -> &[u64] {
        self.measures.waits()
    }

    /// Ticks from arrival to result of each first query after [`IDLE_GAP`] without arrivals
    /// that has been dispatched so far.
    pub fn wake_latencies(&self) -> &[u64] {
        &self.wakes
    }

    /// What was measured so far.
    pub fn outcome(&self) -> Outcome {
        self.measures.outcome(self.setup.tick)
    }

    fn now(&self) -> Duration {
        self.setup.tick * self.tick as u32
    }

    /// Advances one tick; every new pod cold-starts.
    pub fn step(&mut self) {
        self.step_with(&mut ColdStartsOnly);
    }

    /// Advances one tick, taking new pods from `supply` before cold-starting any.
    pub fn step_with(&mut self, supply: &mut dyn Supply) {
        let tick = self.tick;
        let now = self.now();
        let secs = now.as_secs_f64();
        let dt = self.setup.tick.as_secs_f64();
        let slots = self.setup.pool.target_concurrency as usize;

        for pod in &mut self.pods {
            if matches!(pod.state, State::Starting(at) if at <= tick) {
                pod.state = State::Ready;
            }
            let before = pod.running.len();
            pod.running.retain(|end| *end > tick);
            self.completed += (before - pod.running.len()) as u64;
        }
        self.pods
            .retain(|p| !(p.state == State::Draining && p.running.is_empty()));

        let arrivals = self.queries.poisson(self.trace.rate_at(secs) * dt);
        let mean_ticks = self.trace.mean_service.as_secs_f64() / dt;
        let gap = (IDLE_GAP.as_secs_f64() / dt).round() as u64;
        for _ in 0..arrivals {
            let service = self.queries.exponential(mean_ticks).round().max(1.0) as u64;
            let after_idle = self.last_arrival.is_none_or(|last| tick - last >= gap);
            self.last_arrival = Some(tick);
            self.queue.push_back(Waiting {
                arrived: tick,
                service,
                after_idle,
            });
        }
        self.arrived += u64::from(arrivals);
        self.recent.push_back(arrivals);
        let per_sec = (1.0 / dt).round() as usize;
        while self.recent.len() > per_sec {
            self.recent.pop_front();
        }

        self.dispatch(tick, slots);

        let seen = Observation {
            now,
            in_flight: self.running() as u32,
            queued: self.queue.len() as u32,
            arrivals_last_sec: self.recent.iter().sum(),
            ready: self.ready_pods().count() as u32,
            replicas: self.replicas(),
        };
        if let Some(desired) = self.policy.tick(&seen) {
            let cfg = &self.setup.pool;
            let desired = desired.clamp(cfg.min_replicas, cfg.max_replicas);
            if desired != self.desired {
                self.measures.scaled();
                self.desired = desired;
            }
            self.resize(tick, desired, supply);
        }

        // Measured at the end of the tick, so a decision counts from the tick it was taken.
        let per_pod = slots as f64;
        let free: usize = self.ready_pods().map(|p| slots - p.running.len()).sum();
        let snapshot = Tick {
            secs,
            dt,
            pods: self.pods.len() as f64,
            idle: free as f64 / per_pod,
            ready_capacity: self.ready_pods().count() as f64 * per_pod,
            asked_capacity: f64::from(self.replicas()) * per_pod,
        };
        self.measures.account(&snapshot, self.trace);
        self.tick += 1;
    }

    fn ready_pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(|p| p.state == State::Ready)
    }

    /// Hands waiting queries, oldest first, to the least-loaded ready pods.
    fn dispatch(&mut self, tick: u64, slots: usize) {
        while let Some(first) = self.queue.front().copied() {
            let Some(pod) = self
                .pods
                .iter_mut()
                .filter(|p| p.state == State::Ready && p.running.len() < slots)
                .min_by_key(|p| p.running.len())
            else {
                break;
            };
            pod.running.push(tick + first.service);
            self.queue.pop_front();
            self.measures.waited(tick - first.arrived);
            if first.after_idle {
                // The model has no streaming: a query's result is there when it ends.
                self.wakes.push(tick + first.service - first.arrived);
            }
        }
    }

    /// Claims from `supply`, then starts or drains pods, until `desired` are starting or ready.
    fn resize(&mut self, tick: u64, desired: u32, supply: &mut dyn Supply) {
        let mut replicas = self.replicas();
        if desired > replicas {
            let needed = desired - replicas;
            for ready_at in supply.claim(tick, needed).into_iter().take(needed as usize) {
                self.pods.push(Pod {
                    state: State::Starting(ready_at),
                    running: Vec::new(),
                });
                replicas += 1;
            }
        }
        let (low, high) = self.setup.cold_start;
        while replicas < desired {
            let spread = (high.saturating_sub(low)).as_secs_f64() * self.starts.unit();
            let cold = low.as_secs_f64() + spread;
            let ready_at = tick + (cold / self.setup.tick.as_secs_f64()).ceil() as u64;
            self.pods.push(Pod {
                state: State::Starting(ready_at),
                running: Vec::new(),
            });
            replicas += 1;
        }
        while replicas > desired {
            // Pods still starting go first (they serve nobody yet), newest first; then the
            // least busy ready pod, as the operator's deletion-cost marking arranges.
            let victim = self
                .pods
                .iter()
                .enumerate()
                .filter(|(_, p)| p.state != State::Draining)
                .min_by_key(|(i, p)| match p.state {
                    State::Starting(_) => (0, 0, usize::MAX - i),
                    _ => (1, p.running.len(), *i),
                })
                .map(|(i, _)| i);
            let Some(victim) = victim else { break };
            self.pods[victim].state = State::Draining;
            replicas -= 1;
        }
        self.pods
            .retain(|p| !(p.state == State::Draining && p.running.is_empty()));
    }
}
