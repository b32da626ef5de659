//! A Knative-style autoscaler: the KPA's stable and panic windows over per-second concurrency.
//!
//! Follows `pkg/autoscaler/scaling/autoscaler.go` of Knative Serving with its defaults:
//!
//! ```text
//!  each second: the pool's mean concurrency (running + waiting) over that second, as the
//!               queue proxies and the activator report it
//!  every 2 s:   stable = mean of the last 60 s,  panic = mean of the last 6 s
//!               want_stable = ceil(stable / target),  want_panic = ceil(panic / target)
//!               want_panic / ready ≥ 2          ──► panic (again): panic time = now
//!               panic and 60 s since panic time  ──► panic ends
//!               in panic: max(want_stable, want_panic, most wanted since panic began)
//!               otherwise: want_stable;  never below ready / 2 (max scale-down rate 2)
//! ```
//!
//! With `min_replicas` 0 it scales to zero, as Knative does, once the stable window's mean is
//! zero; a request for a service at zero is held by the activator, which pokes the autoscaler
//! at once, so the wake-up is one cold start.
//!
//! Simplified: the per-pod target is the pool's target concurrency at 100% utilisation (Knative
//! defaults to 70%, which is the same as a lower target), so all policies aim at the same load
//! per pod; no scale-to-zero grace or retention period (the last pod goes as soon as the
//! stable mean is zero, which favours Knative's cost), activator buffering limit or burst capacity; bucket
//! averages are plain means of the 100 ms ticks; and there are no warm spares, as Knative has
//! none above demand.

use std::collections::VecDeque;
use std::time::Duration;

use crate::scaling::ScalingConfig;

use super::policy::{Autoscaler, Observation};

/// The autoscaler's decision period (`tick-interval`, default 2 s).
const TICK_INTERVAL: Duration = Duration::from_secs(2);
/// The stable window (`stable-window`, default 60 s).
const STABLE_WINDOW: Duration = Duration::from_secs(60);
/// The panic window (`panic-window-percentage` 10% of the stable window: 6 s).
const PANIC_WINDOW: Duration = Duration::from_secs(6);
/// Panic when the panic window wants this many times the ready pods (`panic-threshold-percentage`
/// 200%).
const PANIC_THRESHOLD: f64 = 2.0;
/// At most this many times fewer pods per decision (`max-scale-down-rate`, default 2).
const MAX_SCALE_DOWN_RATE: f64 = 2.0;
/// Length of one metric bucket (the queue proxies report each second).
const BUCKET: Duration = Duration::from_secs(1);

/// Knative Pod Autoscaler, concurrency metric.
#[derive(Debug)]
pub struct Kpa {
    min: u32,
    max: u32,
    target: f64,
    /// Closed one-second buckets: (end time, mean concurrency).
    buckets: VecDeque<(Duration, f64)>,
    /// The open bucket: sum of tick concurrencies and their count.
    open: (f64, u32),
    open_ends: Duration,
    next_decision: Duration,
    panic_since: Option<Duration>,
    max_panic_pods: u32,
}

impl Kpa {
    /// A KPA within the bounds and at the target of `config`.
    pub fn new(config: &ScalingConfig) -> Self {
        Self {
            min: config.min_replicas,
            max: config.max_replicas,
            target: f64::from(config.target_concurrency.max(1)),
            buckets: VecDeque::new(),
            open: (0.0, 0),
            open_ends: BUCKET,
            next_decision: TICK_INTERVAL,
            panic_since: None,
            max_panic_pods: 0,
        }
    }

    /// Mean of the buckets that ended within `window` of `now`, if any did.
    fn mean(&self, now: Duration, window: Duration) -> Option<f64> {
        let (sum, n) = self
            .buckets
            .iter()
            .filter(|(end, _)| now.saturating_sub(*end) < window)
            .fold((0.0, 0u32), |(s, n), (_, c)| (s + c, n + 1));
        (n > 0).then(|| sum / f64::from(n))
    }

    fn record(&mut self, seen: &Observation) {
        let concurrency = f64::from(seen.in_flight) + f64::from(seen.queued);
        self.open.0 += concurrency;
        self.open.1 += 1;
        if seen.now >= self.open_ends {
            let (sum, n) = self.open;
            self.buckets
                .push_back((seen.now, sum / f64::from(n.max(1))));
            self.open = (0.0, 0);
            self.open_ends += BUCKET;
        }
        while self
            .buckets
            .front()
            .is_some_and(|(end, _)| seen.now.saturating_sub(*end) >= STABLE_WINDOW)
        {
            self.buckets.pop_front();
        }
    }
}

impl Autoscaler for Kpa {
    fn initial(&self, concurrency: f64) -> u32 {
        ((concurrency / self.target).ceil() as u32).clamp(self.min, self.max)
    }

    fn tick(&mut self, seen: &Observation) -> Option<u32> {
        self.record(seen);
        let held = seen.in_flight + seen.queued;
        if seen.replicas == 0 && held > 0 {
            // The activator holds the requests and pokes the autoscaler: up from zero at once.
            let want = (f64::from(held) / self.target).ceil() as u32;
            return Some(want.clamp(1, self.max.max(1)));
        }
        if seen.now < self.next_decision {
            return None;
        }
        self.next_decision += TICK_INTERVAL;
        let (Some(stable), Some(panic)) = (
            self.mean(seen.now, STABLE_WINDOW),
            self.mean(seen.now, PANIC_WINDOW),
        ) else {
            return None;
        };
        let ready = f64::from(seen.ready.max(1));
        let floor = (ready / MAX_SCALE_DOWN_RATE).floor();
        let want = |value: f64| (value / self.target).ceil().max(floor);
        let (want_stable, want_panic) = (want(stable), want(panic));

        let over = want_panic / ready >= PANIC_THRESHOLD;
        if over {
            self.panic_since = Some(seen.now);
        } else if self
            .panic_since
            .is_some_and(|since| since + STABLE_WINDOW < seen.now)
        {
            // The surge has made its way into the stable window.
            self.panic_since = None;
            self.max_panic_pods = 0;
        }
        let mut desired = want_stable;
        if self.panic_since.is_some() {
            // Provision for the larger window, and never scale down in panic.
            desired = desired.max(want_panic).max(f64::from(self.max_panic_pods));
        }
        let desired = (desired.min(f64::from(self.max)) as u32).max(self.min);
        if self.panic_since.is_some() {
            self.max_panic_pods = self.max_panic_pods.max(desired);
        }
        Some(desired)
    }
}
