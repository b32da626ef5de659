//! Gateway metrics.
//!
//! Every query is counted once, by pool and outcome, and timed from arrival to the last relayed
//! message; both are recorded by a guard on drop, so early returns and client disconnects count.
//! Pool sizes are read from the live pool at scrape time. (The arrival rate of the demand report
//! is admission's, per pool.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::Code;

use crate::dispatch::Transport;
use crate::dispatch::claim::ClaimOutcome;
use crate::dispatch::pool::WorkerPool;

/// Query latency buckets in seconds: interactive queries live between 1 ms and a few seconds, so
/// buckets are dense there; the top buckets catch queries nearing their time limit.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

/// How a query ended, as a metric label (never an error's text).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// All batches delivered.
    Ok,
    /// Bad SQL or unknown table.
    Invalid,
    /// A memory limit or admission rejection.
    ResourceExhausted,
    /// The query ran past its time limit.
    Timeout,
    /// No worker could take it, or its worker died.
    Unavailable,
    /// The client went away before the end.
    Cancelled,
    /// Credentials or ticket refused.
    Unauthenticated,
    /// Held back after workers failed while running it (`dispatch::suspects`).
    HeldBack,
    /// Anything else.
    Error,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Invalid => "invalid",
            Outcome::ResourceExhausted => "resource_exhausted",
            Outcome::Timeout => "timeout",
            Outcome::Unavailable => "unavailable",
            Outcome::Cancelled => "cancelled",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::HeldBack => "held_back",
            Outcome::Error => "error",
        }
    }

    /// The outcome a final status stands for.
    pub fn from_code(code: Code) -> Self {
        match code {
            Code::Ok => Outcome::Ok,
            Code::InvalidArgument | Code::NotFound | Code::Unimplemented => Outcome::Invalid,
            Code::ResourceExhausted => Outcome::ResourceExhausted,
            Code::DeadlineExceeded => Outcome::Timeout,
            Code::Unavailable => Outcome::Unavailable,
            Code::Cancelled => Outcome::Cancelled,
            Code::Unauthenticated | Code::PermissionDenied => Outcome::Unauthenticated,
            Code::FailedPrecondition => Outcome::HeldBack,
            _ => Outcome::Error,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    pool: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitingLabels {
    pool: String,
    reason: &'static str,
}

/// The reason label of calls held because their pool has no ready worker yet.
pub const WAKING_POOL: &str = "waking pool";

/// The gateway's metrics registry.
#[derive(Debug)]
pub struct GatewayMetrics {
    registry: Registry,
    queries: Family<QueryLabels, Counter>,
    duration: Family<PoolLabels, Histogram, fn() -> Histogram>,
    workers: Family<PoolLabels, Gauge>,
    ready: Family<PoolLabels, Gauge>,
    in_flight: Family<PoolLabels, Gauge>,
    waiting: Family<WaitingLabels, Gauge>,
    admitted: Family<GroupLabels, Counter>,
    /// The groups `admitted` has series for, so series of groups gone can be removed.
    admitted_groups: Mutex<std::collections::HashSet<String>>,
    rejected: Family<ReasonLabels, Counter>,
    queue_wait: Histogram,
    group_running: Family<GroupLabels, Gauge>,
    group_queued: Family<GroupLabels, Gauge>,
    claims: Family<ClaimLabels, Counter>,
    dispatched: Family<TransportLabels, Counter>,
    eager_runs: Family<EagerLabels, Counter>,
    connections_refused: Counter,
    /// Bumped after each claim is counted, for whoever waits on claims.
    claims_counted: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    pool: String,
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EagerLabels {
    outcome: &'static str,
}

/// What became of a run started when its statement was planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EagerOutcome {
    /// The client's DoGet took it.
    Claimed,
    /// Nobody redeemed the ticket within the claim window; the run was cancelled.
    Unclaimed,
    /// Not started: as many runs as allowed were waiting.
    NotStarted,
    /// Not started: most of the tenant's recent runs went unclaimed.
    Paused,
}

impl EagerOutcome {
    fn as_str(self) -> &'static str {
        match self {
            EagerOutcome::Claimed => "claimed",
            EagerOutcome::Unclaimed => "unclaimed",
            EagerOutcome::NotStarted => "not_started",
            EagerOutcome::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClaimLabels {
    pool: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    policy: String,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let queries = Family::<QueryLabels, Counter>::default();
        let duration = Family::<PoolLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        let workers = Family::<PoolLabels, Gauge>::default();
        let ready = Family::<PoolLabels, Gauge>::default();
        let in_flight = Family::<PoolLabels, Gauge>::default();
        let waiting = Family::<WaitingLabels, Gauge>::default();
        let admitted = Family::<GroupLabels, Counter>::default();
        let rejected = Family::<ReasonLabels, Counter>::default();
        let queue_wait = Histogram::new(LATENCY_BUCKETS);
        let group_running = Family::<GroupLabels, Gauge>::default();
        let group_queued = Family::<GroupLabels, Gauge>::default();
        let claims = Family::<ClaimLabels, Counter>::default();
        let dispatched = Family::<TransportLabels, Counter>::default();
        let eager_runs = Family::<EagerLabels, Counter>::default();
        let connections_refused = Counter::default();
        let mut registry = Registry::with_prefix("quiver");
        registry.register(
            "admission_admitted",
            "Queries admitted, by resource group",
            admitted.clone(),
        );
        registry.register(
            "admission_rejected",
            "Queries refused by admission, by policy or reason",
            rejected.clone(),
        );
        registry.register(
            "admission_running",
            "Queries running, by resource group (subtree)",
            group_running.clone(),
        );
        registry.register(
            "admission_queued",
            "Queries waiting, by resource group (subtree)",
            group_queued.clone(),
        );
        registry.register(
            "admission_queue_wait_seconds",
            "Time from arrival to admission, queueing included",
            queue_wait.clone(),
        );
        registry.register("queries", "Queries by pool and outcome", queries.clone());
        registry.register(
            "query_duration_seconds",
            "Time from a query's arrival to its last result message",
            duration.clone(),
        );
        registry.register("pool_workers", "Workers in the pool", workers.clone());
        registry.register(
            "pool_ready_workers",
            "Workers reporting SERVING",
            ready.clone(),
        );
        registry.register(
            "pool_in_flight",
            "Queries running on the pool",
            in_flight.clone(),
        );
        registry.register(
            "dispatch_waiting",
            "Calls held at dispatch for a ready worker, by pool and reason",
            waiting.clone(),
        );
        registry.register(
            "claims",
            "Claims of standby workers into a pool, by pool and outcome",
            claims.clone(),
        );
        registry.register(
            "dispatch_do_get",
            "DoGets sent to workers, by pool and transport (fetch or grpc); grpc from an io \
             thread means a worker refused the fetch exchange or a connection cap was reached",
            dispatched.clone(),
        );
        registry.register(
            "eager_runs",
            "Runs started when a statement was planned, by outcome: claimed by the client's \
             DoGet, unclaimed (cancelled after the claim window), not started (too many \
             waiting), or paused (most of the tenant's recent runs went unclaimed)",
            eager_runs.clone(),
        );
        registry.register(
            "client_connections_refused",
            "Client connections closed on arrival because as many as allowed were open \
             (--max-connections)",
            connections_refused.clone(),
        );
        Self {
            registry,
            queries,
            duration,
            workers,
            ready,
            in_flight,
            waiting,
            admitted,
            admitted_groups: Mutex::default(),
            rejected,
            queue_wait,
            group_running,
            group_queued,
            claims,
            dispatched,
            eager_runs,
            connections_refused,
            claims_counted: tokio::sync::watch::channel(0).0,
        }
    }
}

impl GatewayMetrics {
    /// Notes a query's arrival and returns the guard that records its end.
    pub fn start_query(self: &Arc<Self>, pool: &str) -> QueryRecord {
        let now = Instant::now();
        QueryRecord {
            metrics: self.clone(),
            pool: pool.to_owned(),
            started: now,
            outcome: Outcome::Cancelled,
            unclaimed: None,
        }
    }

    /// Counts an admission into `group` after waiting `waited`.
    pub fn admitted(&self, group: &str, waited: Duration) {
        {
            let mut counted = self.admitted_groups.lock().expect("admitted groups");
            if !counted.contains(group) {
                counted.insert(group.to_owned());
            }
        }
        self.admitted
            .get_or_create(&GroupLabels {
                group: group.to_owned(),
            })
            .inc();
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// Counts a refusal by `policy` (a rate-limit policy's name or a queue reason).
    pub fn admission_rejected(&self, policy: &str) {
        self.rejected
            .get_or_create(&ReasonLabels {
                policy: policy.to_owned(),
            })
            .inc();
    }

    /// Counts a client connection closed on arrival: as many as allowed were open.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts what became of a run started at planning time.
    pub fn eager_run(&self, outcome: EagerOutcome) {
        self.eager_runs
            .get_or_create(&EagerLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Counts a DoGet sent to a worker of `pool` over `transport`.
    pub fn dispatched(&self, pool: &str, transport: Transport) {
        self.dispatched
            .get_or_create(&TransportLabels {
                pool: pool.to_owned(),
                transport: transport.as_str(),
            })
            .inc();
    }

    /// Counts a claim of a standby worker into `pool`.
    pub fn claim(&self, pool: &str, outcome: ClaimOutcome) {
        self.claims
            .get_or_create(&ClaimLabels {
                pool: pool.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
        self.claims_counted.send_modify(|n| *n += 1);
    }

    /// A receiver that changes after each claim is counted.
    pub fn subscribe_claims(&self) -> tokio::sync::watch::Receiver<u64> {
        self.claims_counted.subscribe()
    }

    /// Prometheus text for the registry, with pool gauges read from `pools` now.
    pub fn encode(&self, pools: &[Arc<WorkerPool>], groups: &[(String, u32, u32)]) -> String {
        // Only the groups that exist now: a templated subgroup taken over by another value (or
        // dropped by a reload) leaves the label sets, which therefore stay bounded. Held for the
        // whole encoding, so two scrapes do not interleave their clearing and setting.
        let mut counted = self.admitted_groups.lock().expect("admitted groups");
        self.group_running.clear();
        self.group_queued.clear();
        let live: std::collections::HashSet<&str> =
            groups.iter().map(|(g, _, _)| g.as_str()).collect();
        counted.retain(|group| {
            let keep = live.contains(group.as_str());
            if !keep {
                self.admitted.remove(&GroupLabels {
                    group: group.clone(),
                });
            }
            keep
        });
        for (group, running, queued) in groups {
            let labels = GroupLabels {
                group: group.clone(),
            };
            self.group_running
                .get_or_create(&labels)
                .set(i64::from(*running));
            self.group_queued
                .get_or_create(&labels)
                .set(i64::from(*queued));
        }
        for pool in pools {
            let labels = PoolLabels {
                pool: pool.name().to_owned(),
            };
            self.workers
                .get_or_create(&labels)
                .set(pool.workers().len() as i64);
            self.ready
                .get_or_create(&labels)
                .set(pool.ready_count() as i64);
            self.in_flight
                .get_or_create(&labels)
                .set(pool.in_flight() as i64);
            self.waiting
                .get_or_create(&WaitingLabels {
                    pool: pool.name().to_owned(),
                    reason: WAKING_POOL,
                })
                .set(pool.waiting() as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Records one query's outcome and duration when dropped. Until told otherwise the outcome is
/// `Cancelled`: a stream dropped before its end was abandoned by the client.
#[derive(Debug)]
pub struct QueryRecord {
    metrics: Arc<GatewayMetrics>,
    pool: String,
    started: Instant,
    outcome: Outcome,
    /// Set if the query was a run started at planning that nobody claimed.
    unclaimed: Option<Unclaimed>,
}

/// Marks a run started when its statement was planned (an eager run) that no `DoGet` claimed:
/// no query happened from the client's side, so its record counts nothing
/// (`quiver_eager_runs_total{outcome="unclaimed"}` counts it), and a late `DoGet` of its
/// ticket counts as the query.
#[derive(Debug, Clone, Default)]
pub struct Unclaimed(Arc<AtomicBool>);

impl Unclaimed {
    /// Marks the run unclaimed; set before the run is dropped.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl QueryRecord {
    /// Sets how the query ended.
    pub fn finish(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }

    /// Counts the query against `pool` (its placement's), once admission has chosen it.
    pub fn set_pool(&mut self, pool: &str) {
        pool.clone_into(&mut self.pool);
    }

    /// Counts nothing if `unclaimed` is set by the time the record drops.
    pub fn unless(mut self, unclaimed: Option<Unclaimed>) -> Self {
        self.unclaimed = unclaimed;
        self
    }
}

impl Drop for QueryRecord {
    fn drop(&mut self) {
        if self.unclaimed.as_ref().is_some_and(Unclaimed::is_set) {
            return;
        }
        let pool = std::mem::take(&mut self.pool);
        self.metrics
            .duration
            .get_or_create(&PoolLabels { pool: pool.clone() })
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .queries
            .get_or_create(&QueryLabels {
                pool,
                outcome: self.outcome.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_outcomes_on_drop() {
        let metrics = Arc::new(GatewayMetrics::default());
        {
            let mut r = metrics.start_query("default");
            r.finish(Outcome::Ok);
        }
        drop(metrics.start_query("default"));
        // An eager run nobody claimed counts nothing; one that was claimed counts as usual.
        let unclaimed = Unclaimed::default();
        let run = metrics
            .start_query("default")
            .unless(Some(unclaimed.clone()));
        unclaimed.set();
        drop(run);
        drop(
            metrics
                .start_query("default")
                .unless(Some(Unclaimed::default())),
        );
        let pool = WorkerPool::new("default");
        let _held = pool.start_waiting();
        let text = metrics.encode(std::slice::from_ref(&pool), &[("g".into(), 1, 2)]);
        assert!(
            text.contains(r#"quiver_dispatch_waiting{pool="default",reason="waking pool"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"quiver_admission_queued{group="g"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"quiver_queries_total{pool="default",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"outcome="cancelled"} 2"#), "{text}");
        assert!(
            text.contains("quiver_query_duration_seconds_count{pool=\"default\"} 3"),
            "{text}"
        );
    }
}
