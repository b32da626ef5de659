//! An HPA-style autoscaler: the Kubernetes HorizontalPodAutoscaler (autoscaling/v2) on an
//! external "concurrent queries" metric served through a metrics pipeline.
//!
//! ```text
//!  every 15 s (scrape):  the gateway's gauge in_flight + queued, as Prometheus scrapes it
//!  every 15 s (sync):    metric = mean of the scrapes of the last 30 s (the adapter's query)
//!                        ratio = metric / (target × replicas)
//!                        |ratio − 1| ≤ 0.1  ──► keep replicas (tolerance)
//!                        otherwise          ──► recommend ceil(metric / target)
//!                        up:   at once, at most max(2 × replicas, replicas + 4)   (default scaleUp)
//!                        down: to the highest recommendation of the last 300 s    (stabilisation)
//! ```
//!
//! The scrapes run 5 s after each sync, so the newest value a sync sees is 10 s old and the
//! metric lags demand by 10–25 s, as a 15 s scrape and a 30 s query window would.
//!
//! Simplified: an `External` metric with an `AverageValue` target (total demand / target per
//! pod), so pod readiness and missing pod metrics play no part; scale-up limits are applied per
//! sync rather than over a sliding period; no CPU initialisation period.

use std::collections::VecDeque;
use std::time::Duration;

use crate::scaling::ScalingConfig;

use super::policy::{Autoscaler, Observation};

/// `--horizontal-pod-autoscaler-sync-period` (default 15 s).
const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// Prometheus scrape interval of the gateway.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(15);
/// Scrapes happen this long after each sync.
const SCRAPE_OFFSET: Duration = Duration::from_secs(5);
/// The adapter's averaging window (`avg_over_time(...[30s])`).
const METRIC_WINDOW: Duration = Duration::from_secs(30);
/// `--horizontal-pod-autoscaler-tolerance` (default 0.1).
const TOLERANCE: f64 = 0.1;
/// `behavior.scaleDown.stabilizationWindowSeconds` (default 300 s).
const SCALE_DOWN_STABILISATION: Duration = Duration::from_secs(300);
/// Default scale-up policies: 100% or 4 pods per 15 s, whichever allows more.
const SCALE_UP_PODS: u32 = 4;

/// HorizontalPodAutoscaler with default behaviour.
#[derive(Debug)]
pub struct Hpa {
    min: u32,
    max: u32,
    target: f64,
    /// Scraped values: (time, in_flight + queued).
    scrapes: VecDeque<(Duration, f64)>,
    next_scrape: Duration,
    next_sync: Duration,
    /// Recommendations kept for the scale-down stabilisation: (time, replicas).
    recommendations: VecDeque<(Duration, u32)>,
}

impl Hpa {
    /// An HPA within the bounds and at the target of `config`.
    pub fn new(config: &ScalingConfig) -> Self {
        Self {
            min: config.min_replicas,
            max: config.max_replicas,
            target: f64::from(config.target_concurrency.max(1)),
            scrapes: VecDeque::new(),
            next_scrape: SCRAPE_OFFSET,
            next_sync: SYNC_PERIOD,
            recommendations: VecDeque::new(),
        }
    }
}

impl Autoscaler for Hpa {
    fn initial(&self, concurrency: f64) -> u32 {
        ((concurrency / self.target).ceil() as u32).clamp(self.min, self.max)
    }

    fn tick(&mut self, seen: &Observation) -> Option<u32> {
        if seen.now >= self.next_scrape {
            self.next_scrape += SCRAPE_INTERVAL;
            let gauge = f64::from(seen.in_flight) + f64::from(seen.queued);
            self.scrapes.push_back((seen.now, gauge));
        }
        if seen.now < self.next_sync {
            return None;
        }
        self.next_sync += SYNC_PERIOD;
        let now = seen.now;
        while self
            .scrapes
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > METRIC_WINDOW)
        {
            self.scrapes.pop_front();
        }
        if self.scrapes.is_empty() {
            // No metric yet: the HPA leaves the scale alone.
            return None;
        }
        let metric = self.scrapes.iter().map(|(_, v)| v).sum::<f64>() / self.scrapes.len() as f64;
        let current = seen.replicas.max(1);
        let ratio = metric / (self.target * f64::from(current));
        let raw = if (ratio - 1.0).abs() <= TOLERANCE {
            current
        } else {
            (metric / self.target).ceil() as u32
        };
        let recommendation = raw.clamp(self.min, self.max);

        self.recommendations.push_back((now, recommendation));
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > SCALE_DOWN_STABILISATION)
        {
            self.recommendations.pop_front();
        }
        let desired = if recommendation > current {
            let limit = (current * 2).max(current + SCALE_UP_PODS);
            recommendation.min(limit)
        } else {
            // The highest recommendation of the window, never above the current size.
            let highest = self.recommendations.iter().map(|(_, r)| *r).max();
            highest.unwrap_or(recommendation).min(current)
        };
        Some(desired.clamp(self.min, self.max))
    }
}
