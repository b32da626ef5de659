//! The scaling policy: how many workers a pool needs, from the demand the gateway reports.
//!
//! Pure code: no I/O, no clock. The caller passes the time of each sample (any monotonic
//! [`Duration`] since an epoch of its choosing) and gets back the desired replicas with the
//! reason. The Kubernetes controller calls it once per demand poll; the local supervisor of
//! `quiver up` calls it once per ~250 ms sample. Both act on the same decisions.
//!
//! ```text
//!  sample ──► demand = max(in_flight + queued, arrivals/s × mean query time)
//!                      │
//!                      ▼
//!   needed = ceil(demand / target per pod) + warm spares, within [min, max]
//!                      │
//!      needed > desired ──► scale up at once          (a burst: "panic" when demand > 2× capacity)
//!      in panic window  ──► hold, never scale down
//!      scale-down delay ──► hold, too soon after the last change
//!      otherwise        ──► the most `needed` seen over the stable window (scale-down smoothing)
//! ```
//!
//! The mean query time comes from Little's law over the stable window (total concurrency divided
//! by total arrivals), so a jump in the arrival rate raises demand before the queue shows it.
//!
//! Scale to zero is opt-in ([`ScalingPolicy::set_scale_to_zero_after`]) for pools with
//! `min_replicas` 0: such a pool keeps at least one worker while it is in use, drops to zero
//! once it has seen no query (running, queued or arriving) for the idle time, and wakes on the
//! first sample with any demand. [`standby`] decides where the workers of a wake-up or a burst
//! come from: claimed from the shared standby pool first, cold-started for the rest.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

pub mod standby;
#[cfg(test)]
mod tests;

/// What a pool may and should look like; the controller builds it from a `QueryPool` spec, the
/// supervisor from its flags.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingConfig {
    /// Fewest replicas, however quiet (default 1).
    pub min_replicas: u32,
    /// Most replicas, however busy (default 10).
    pub max_replicas: u32,
    /// Idle, ready replicas kept on top of demand so a burst does not wait for a start (default 1).
    pub warm_replicas: u32,
    /// Concurrent queries one replica should run (default 4, at least 1).
    pub target_concurrency: u32,
    /// Scale-down smoothing: a pool shrinks only to the most it needed over this window
    /// (default 30 s).
    pub stable_window: Duration,
    /// After a burst (demand above `panic_threshold` × capacity) the pool does not shrink for this
    /// long (default 6 s).
    pub panic_window: Duration,
    /// Least time between a change of size and a following scale-down (default 15 s).
    pub scale_down_delay: Duration,
    /// Demand over capacity that counts as a burst (default 2.0, more than 1).
    pub panic_threshold: f64,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        Self {
            min_replicas: 1,
            max_replicas: 10,
            warm_replicas: 1,
            target_concurrency: 4,
            stable_window: Duration::from_secs(30),
            panic_window: Duration::from_secs(6),
            scale_down_delay: Duration::from_secs(15),
            panic_threshold: 2.0,
        }
    }
}

impl ScalingConfig {
    /// Checks the bounds hold together.
    pub fn validate(&self) -> Result<(), ScalingError> {
        if self.min_replicas > self.max_replicas {
            return Err(ScalingError::MinAboveMax {
                min: self.min_replicas,
                max: self.max_replicas,
            });
        }
        if self.max_replicas == 0 {
            return Err(ScalingError::ZeroMax);
        }
        if self.target_concurrency == 0 {
            return Err(ScalingError::ZeroTarget);
        }
        if !(self.panic_threshold > 1.0 && self.panic_threshold.is_finite()) {
            return Err(ScalingError::PanicThreshold(self.panic_threshold));
        }
        Ok(())
    }

    /// Replicas that serve `demand` concurrent queries plus the warm spares, within the bounds.
    pub fn replicas_for(&self, demand: f64) -> u32 {
        let demand = if demand.is_finite() {
            demand.max(0.0)
        } else {
            0.0
        };
        let busy = (demand / f64::from(self.target_concurrency)).ceil();
        let busy = if busy >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            busy as u32
        };
        busy.saturating_add(self.warm_replicas)
            .clamp(self.min_replicas, self.max_replicas)
    }
}

/// A configuration the policy cannot run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScalingError {
    /// `min_replicas` is above `max_replicas`.
    #[error("minReplicas {min} is above maxReplicas {max}")]
    MinAboveMax {
        /// The minimum given.
        min: u32,
        /// The maximum given.
        max: u32,
    },
    /// `max_replicas` is zero: a pool that can never serve.
    #[error("maxReplicas must be at least 1")]
    ZeroMax,
    /// `target_concurrency` is zero.
    #[error("targetConcurrency must be at least 1")]
    ZeroTarget,
    /// `panic_threshold` is not a finite number above 1.
    #[error("panic threshold must be a finite number above 1, got {0}")]
    PanicThreshold(f64),
}

/// One pool's demand at one instant, as the gateway reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DemandSample {
    /// Queries running on the pool's workers.
    pub in_flight: u32,
    /// Queries admitted and waiting for a worker slot.
    pub queued: u32,
    /// Queries that arrived over the last second.
    pub arrivals_per_sec: f64,
}

/// Why the policy chose a size. `Display` gives the line to log or put in status.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// The first sample: sized for the demand at once.
    Initial {
        /// Concurrent demand.
        demand: f64,
    },
    /// Demand exceeded the threshold times capacity: scaled up at once, panic mode started.
    Panic {
        /// Concurrent demand.
        demand: f64,
        /// Queries the previous size serves at target.
        capacity: f64,
        /// The threshold (e.g. 2.0).
        threshold: f64,
    },
    /// Demand (plus warm spares) needs more replicas: scaled up at once.
    ScaleUp {
        /// Concurrent demand.
        demand: f64,
        /// Queries the previous size serves at target.
        capacity: f64,
    },
    /// Demand stayed lower over the whole stable window: scaled down to its peak.
    ScaleDown {
        /// Most concurrent demand seen over the stable window.
        peak: f64,
        /// The stable window.
        window: Duration,
    },
    /// No scale-down while panic mode lasts.
    HoldPanic {
        /// Time left in panic mode.
        remaining: Duration,
    },
    /// No scale-down so soon after the last change.
    HoldDelay {
        /// Time left before a scale-down may happen.
        remaining: Duration,
    },
    /// The size fits the demand.
    Steady {
        /// Concurrent demand.
        demand: f64,
    },
    /// The bounds changed and the size moved into them.
    Bounds {
        /// Fewest replicas.
        min: u32,
        /// Most replicas.
        max: u32,
    },
    /// No query ran, waited or arrived for the scale-to-zero idle time: down to zero.
    ScaleToZero {
        /// Time since the pool last saw a query.
        idle: Duration,
    },
    /// Demand on a pool at zero: up at once, to at least one worker.
    Wake {
        /// Concurrent demand.
        demand: f64,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |d: &Duration| d.as_secs_f64();
        match self {
            Reason::Initial { demand } => write!(f, "initial: demand {}", Num(*demand)),
            Reason::Panic {
                demand,
                capacity,
                threshold,
            } => write!(
                f,
                "panic: demand {} > {}x capacity {}",
                Num(*demand),
                Num(*threshold),
                Num(*capacity)
            ),
            Reason::ScaleUp { demand, capacity } => write!(
                f,
                "scale up: demand {} with capacity {}",
                Num(*demand),
                Num(*capacity)
            ),
            Reason::ScaleDown { peak, window } => write!(
                f,
                "scale down: peak demand {} over the last {}s",
                Num(*peak),
                Num(secs(window))
            ),
            Reason::HoldPanic { remaining } => {
                write!(f, "hold: panic mode for another {:.1}s", secs(remaining))
            }
            Reason::HoldDelay { remaining } => {
                write!(f, "hold: scale-down delay, {:.1}s left", secs(remaining))
            }
            Reason::Steady { demand } => write!(f, "steady: demand {}", Num(*demand)),
            Reason::Bounds { min, max } => write!(f, "bounds: kept within [{min}, {max}]"),
            Reason::ScaleToZero { idle } => {
                write!(f, "scale to zero: no query for {}s", Num(secs(idle)))
            }
            Reason::Wake { demand } => write!(f, "wake: demand {} at zero", Num(*demand)),
        }
    }
}

/// Prints whole numbers without decimals and others with one.
struct Num(f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if (self.0 - self.0.round()).abs() < 0.05 {
            write!(f, "{}", self.0.round())
        } else {
            write!(f, "{:.1}", self.0)
        }
    }
}

/// The policy's answer to one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Replicas the pool should have now.
    pub desired: u32,
    /// Replicas desired before this sample (equal to `desired` when nothing changed).
    pub previous: u32,
    /// Concurrent demand the policy read from the sample.
    pub demand: f64,
    /// Panic mode is on: the pool will not shrink.
    pub panic: bool,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// The size changed with this sample.
    pub fn changed(&self) -> bool {
        self.desired != self.previous
    }
}

/// A demand sample kept for the windows.
#[derive(Debug, Clone, Copy)]
struct Kept {
    at: Duration,
    /// Concurrent demand (after the arrival-rate estimate).
    demand: f64,
    /// `in_flight + queued` as reported.
    concurrency: f64,
    arrivals: f64,
}

/// The policy for one pool: feed it samples in time order with [`ScalingPolicy::observe`].
#[derive(Debug, Clone)]
pub struct ScalingPolicy {
    config: ScalingConfig,
    samples: VecDeque<Kept>,
    desired: Option<u32>,
    last_change: Option<Duration>,
    panic_until: Option<Duration>,
    now: Duration,
    /// Idle time after which a pool with `min_replicas` 0 goes to zero; `None`: never by idling.
    scale_to_zero_after: Option<Duration>,
    /// Last sample with a query running, queued or arriving (or the first sample).
    last_active: Option<Duration>,
}

impl ScalingPolicy {
    /// A policy with no history; the first sample sizes the pool.
    pub fn new(config: ScalingConfig) -> Result<Self, ScalingError> {
        config.validate()?;
        Ok(Self {
            config,
            samples: VecDeque::new(),
            desired: None,
            last_change: None,
            panic_until: None,
            now: Duration::ZERO,
            scale_to_zero_after: None,
            last_active: None,
        })
    }

    /// Lets a pool with `min_replicas` 0 go to zero after `after` without a query (`None`, the
    /// default, keeps today's behaviour). Until then such a pool keeps at least one worker, so a
    /// pause shorter than the idle time never costs a wake-up. Pools with `min_replicas` above
    /// 0 ignore it.
    pub fn set_scale_to_zero_after(&mut self, after: Option<Duration>) {
        self.scale_to_zero_after = after;
    }

    /// The scale-to-zero idle time, if scale to zero is on.
    pub fn scale_to_zero_after(&self) -> Option<Duration> {
        self.scale_to_zero_after
    }

    /// The configuration in force.
    pub fn config(&self) -> &ScalingConfig {
        &self.config
    }

    /// Replaces the configuration, keeping the history; the next sample applies the new bounds.
    pub fn set_config(&mut self, config: ScalingConfig) -> Result<(), ScalingError> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Replicas last decided, if any sample was seen.
    pub fn desired(&self) -> Option<u32> {
        self.desired
    }

    /// Starts from a known size (e.g. the Deployment's replicas after an operator restart), as
    /// if the pool had just changed to it at `now`.
    pub fn resume(&mut self, now: Duration, replicas: u32) {
        self.now = self.now.max(now);
        self.desired = Some(replicas.clamp(self.config.min_replicas, self.config.max_replicas));
        self.last_change = Some(self.now);
        // The idle time counts from the restart: the pool's history is unknown.
        self.last_active = Some(self.now);
    }

    /// Takes one sample taken at `now` and decides the size. Times that go backwards count as
    /// the latest time seen.
    pub fn observe(&mut self, now: Duration, sample: DemandSample) -> Decision {
        let now = now.max(self.now);
        self.now = now;
        let demand = self.record(now, sample);
        let active = sample.in_flight > 0 || sample.queued > 0 || sample.arrivals_per_sec > 0.0;
        if active || self.last_active.is_none() {
            self.last_active = Some(now);
        }
        if let Some(decision) = self.zero(now, demand, active) {
            return decision;
        }
        let cfg = self.ordinary_config();
        let needed = cfg.replicas_for(demand);
        let Some(previous) = self.desired else {
            return self.decide(now, needed, needed, demand, Reason::Initial { demand });
        };
        let capacity = f64::from(previous.saturating_sub(cfg.warm_replicas).max(1))
            * f64::from(cfg.target_concurrency);
        let bursting = demand > cfg.panic_threshold * capacity;
        if bursting {
            self.panic_until = Some(now + cfg.panic_window);
        }
        let panic_left = self
            .panic_until
            .filter(|until| *until >= now)
            .map(|until| until - now);

        // Bounds first: a changed spec moves the size at once, in either direction.
        if previous < cfg.min_replicas || previous > cfg.max_replicas {
            let to = previous
                .clamp(cfg.min_replicas, cfg.max_replicas)
                .max(needed);
            let (min, max) = (cfg.min_replicas, cfg.max_replicas);
            return self.decide(now, previous, to, demand, Reason::Bounds { min, max });
        }
        // Up at once: a query waiting for a pod costs more than a pod waiting for a query.
        if needed > previous {
            let reason = if bursting {
                Reason::Panic {
                    demand,
                    capacity,
                    threshold: cfg.panic_threshold,
                }
            } else {
                Reason::ScaleUp { demand, capacity }
            };
            return self.decide(now, previous, needed, demand, reason);
        }
        // Down only to the peak of the stable window, never in panic, never too soon.
        let peak = self.peak_demand();
        let cfg = &cfg;
        let down_to = cfg.replicas_for(peak);
        if down_to >= previous {
            return self.decide(now, previous, previous, demand, Reason::Steady { demand });
        }
        if let Some(remaining) = panic_left {
            return self.decide(
                now,
                previous,
                previous,
                demand,
                Reason::HoldPanic { remaining },
            );
        }
        let since_change = self.last_change.map_or(Duration::MAX, |at| now - at);
        if since_change < cfg.scale_down_delay {
            let remaining = cfg.scale_down_delay - since_change;
            return self.decide(
                now,
                previous,
                previous,
                demand,
                Reason::HoldDelay { remaining },
            );
        }
        let window = cfg.stable_window;
        self.decide(
            now,
            previous,
            down_to,
            demand,
            Reason::ScaleDown { peak, window },
        )
    }

    /// The decisions about zero workers, if one applies: wake a pool at zero on any demand,
    /// keep an idle pool at zero, take a pool idle for the idle time to zero. `None` leaves the
    /// sample to the ordinary policy.
    fn zero(&mut self, now: Duration, demand: f64, active: bool) -> Option<Decision> {
        let previous = self.desired;
        if previous == Some(0) && active {
            // A query is held at the gateway until a worker is ready: ask at once, and for one
            // even when demand reads as zero (arrivals with no history to time them by).
            let to = self.ordinary_config().replicas_for(demand).max(1);
            return Some(self.decide(now, 0, to, demand, Reason::Wake { demand }));
        }
        let after = self.scale_to_zero()?;
        if active {
            return None;
        }
        let idle = now.saturating_sub(self.last_active.unwrap_or(now));
        match previous {
            // A new pool nobody queries starts at zero; a pool at zero stays there.
            None => Some(self.decide(now, 0, 0, demand, Reason::Initial { demand })),
            Some(0) => Some(self.decide(now, 0, 0, demand, Reason::Steady { demand })),
            Some(p) if idle >= after => {
                // Nothing runs, so nothing is lost by skipping the panic and delay holds. The
                // query times seen before the idle spell say nothing about the next wake-up:
                // forgotten, the wake asks for what is held, not for old arrivals x old times.
                self.panic_until = None;
                self.samples.clear();
                Some(self.decide(now, p, 0, demand, Reason::ScaleToZero { idle }))
            }
            Some(_) => None,
        }
    }

    /// The idle time, when scale to zero applies to this pool.
    fn scale_to_zero(&self) -> Option<Duration> {
        self.scale_to_zero_after
            .filter(|_| self.config.min_replicas == 0)
    }

    /// The configuration the ordinary policy runs with: with scale to zero on, a pool in use
    /// keeps at least one worker, so only the idle time (never the stable window) empties it.
    fn ordinary_config(&self) -> ScalingConfig {
        let mut cfg = self.config.clone();
        if self.scale_to_zero().is_some() {
            cfg.min_replicas = 1;
        }
        cfg
    }

    fn decide(
        &mut self,
        now: Duration,
        previous: u32,
        desired: u32,
        demand: f64,
        reason: Reason,
    ) -> Decision {
        if self.desired != Some(desired) {
            self.last_change = Some(now);
        }
        self.desired = Some(desired);
        Decision {
            desired,
            previous,
            demand,
            // Inclusive, so a burst is panic even with a zero-length panic window.
            panic: self.panic_until.is_some_and(|until| until >= now),
            reason,
        }
    }

    /// Keeps the sample, drops the ones older than both windows, and returns the demand.
    fn record(&mut self, now: Duration, sample: DemandSample) -> f64 {
        let horizon = self.config.stable_window.max(self.config.panic_window);
        while self
            .samples
            .front()
            .is_some_and(|s| now.saturating_sub(s.at) > horizon)
        {
            self.samples.pop_front();
        }
        let concurrency = f64::from(sample.in_flight) + f64::from(sample.queued);
        let arrivals = if sample.arrivals_per_sec.is_finite() {
            sample.arrivals_per_sec.max(0.0)
        } else {
            0.0
        };
        // Little's law over the window: mean time in system = mean concurrency / mean arrivals.
        let (sum_c, sum_a) = self
            .samples
            .iter()
            .fold((concurrency, arrivals), |(c, a), s| {
                (c + s.concurrency, a + s.arrivals)
            });
        let predicted = if sum_a > 0.0 {
            arrivals * sum_c / sum_a
        } else {
            0.0
        };
        let demand = concurrency.max(predicted);
        self.samples.push_back(Kept {
            at: now,
            demand,
            concurrency,
            arrivals,
        });
        demand
    }

    /// Most demand seen within the stable window.
    fn peak_demand(&self) -> f64 {
        let now = self.now;
        self.samples
            .iter()
            .filter(|s| now - s.at <= self.config.stable_window)
            .map(|s| s.demand)
            .fold(0.0, f64::max)
    }
}
