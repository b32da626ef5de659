//! The operator's Prometheus metrics, served on the admin port at `/metrics`:
//!
//! - `quiver_operator_reconciles_total{outcome}` and `quiver_operator_reconcile_duration_seconds`
//! - `quiver_operator_pool_desired_replicas{namespace,pool}`
//! - `quiver_operator_scale_decisions_total{direction}` (up, down)
//! - `quiver_operator_demand_polls_total{outcome}` (ok, error)
//! - `quiver_operator_claims_total{namespace,pool}`: standby workers claimed into each pool
//! - `quiver_operator_leader` (1 while this replica leads)

use std::sync::atomic::AtomicI64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Reconcile durations: a reconcile is four applies and a status patch, tens of milliseconds
/// on a healthy API server; the top buckets catch a slow or throttled one.
const RECONCILE_BUCKETS: [f64; 9] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    namespace: String,
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

/// The metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Outcome, Counter>,
    reconcile_duration: Histogram,
    desired: Family<PoolLabels, Gauge>,
    decisions: Family<Direction, Counter>,
    polls: Family<Outcome, Counter>,
    claims: Family<PoolLabels, Counter>,
    leader: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("quiver_operator");
        let reconciles = Family::<Outcome, Counter>::default();
        registry.register("reconciles", "Reconciles by outcome", reconciles.clone());
        let reconcile_duration = Histogram::new(RECONCILE_BUCKETS);
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one pool",
            reconcile_duration.clone(),
        );
        let desired = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_desired_replicas",
            "Workers each pool should have",
            desired.clone(),
        );
        let decisions = Family::<Direction, Counter>::default();
        registry.register(
            "scale_decisions",
            "Changes of a pool's size by direction",
            decisions.clone(),
        );
        let polls = Family::<Outcome, Counter>::default();
        registry.register(
            "demand_polls",
            "Polls of the gateways' demand by outcome",
            polls.clone(),
        );
        let claims = Family::<PoolLabels, Counter>::default();
        registry.register(
            "claims",
            "Standby workers claimed into each pool",
            claims.clone(),
        );
        let leader = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register("leader", "1 while this replica leads", leader.clone());
        Self {
            registry,
            reconciles,
            reconcile_duration,
            desired,
            decisions,
            polls,
            claims,
            leader,
        }
    }
}

/// Records a reconcile's duration when dropped, so early returns count.
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Starts timing a reconcile.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            histogram: &self.reconcile_duration,
            start: Instant::now(),
        }
    }

    /// Counts a reconcile.
    pub fn reconciled(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.reconciles.get_or_create(&Outcome { outcome }).inc();
    }

    /// Sets a pool's desired size.
    pub fn set_desired(&self, namespace: &str, pool: &str, desired: u32) {
        let labels = PoolLabels {
            namespace: namespace.into(),
            pool: pool.into(),
        };
        self.desired.get_or_create(&labels).set(i64::from(desired));
    }

    /// Counts a change of size.
    pub fn scaled(&self, up: bool) {
        let direction = if up { "up" } else { "down" };
        self.decisions.get_or_create(&Direction { direction }).inc();
    }

    /// Counts a demand poll.
    pub fn polled(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.polls.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts standby workers claimed into a pool.
    pub fn claimed(&self, namespace: &str, pool: &str, n: u32) {
        let labels = PoolLabels {
            namespace: namespace.into(),
            pool: pool.into(),
        };
        self.claims.get_or_create(&labels).inc_by(u64::from(n));
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
