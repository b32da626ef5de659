//! The gateway's admin HTTP port: Prometheus metrics, the per-pool demand signal the operator
//! and the local supervisor scale from, and a liveness check.
//!
//! ```text
//!  GET /metrics    Prometheus text, names prefixed quiver_
//!  GET /v1/pools   {"pools":[{"pool","workers","ready","in_flight","queued","arrivals_per_sec",
//!                             "worker_loads":[{"endpoint","ready","in_flight"}]}]}
//!  GET /healthz    200 "ok"
//! ```
//!
//! `queued` counts queries in the pool's group queues and calls held at dispatch while the pool
//! wakes from zero: both wait for a worker, and a scaler must see both to wake the pool.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use quiver_core::demand::{DemandReport, PoolDemand, WorkerLoad, count};
use tokio::net::TcpListener;

use crate::admission::Admission;
use crate::dispatch::registry::Pools;
use crate::metrics::GatewayMetrics;

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The gateway's pools.
    pub pools: Arc<Pools>,
    /// The gateway's metrics.
    pub metrics: Arc<GatewayMetrics>,
    /// Admission, for queue depths.
    pub admission: Arc<Admission>,
}

impl AdminState {
    /// The demand of every pool now.
    pub fn demand(&self) -> DemandReport {
        DemandReport {
            pools: self
                .pools
                .all()
                .iter()
                .map(|pool| {
                    let workers = pool.workers();
                    PoolDemand {
                        pool: pool.name().to_owned(),
                        workers: count(workers.len()),
                        ready: count(workers.iter().filter(|w| w.is_ready()).count()),
                        in_flight: count(workers.iter().map(|w| w.in_flight()).sum()),
                        // Calls held while the pool wakes wait like queued ones.
                        queued: self
                            .admission
                            .queued_in(pool.name())
                            .saturating_add(count(pool.waiting())),
                        arrivals_per_sec: self.admission.arrivals_per_sec(pool.name()),
                        worker_loads: workers
                            .iter()
                            .map(|w| WorkerLoad {
                                endpoint: w.endpoint().to_owned(),
                                ready: w.is_ready(),
                                in_flight: count(w.in_flight()),
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state
            .metrics
            .encode(&state.pools.all(), &state.admission.snapshot()),
    )
}

async fn pools(State(state): State<AdminState>) -> Json<DemandReport> {
    Json(state.demand())
}

/// Serves the admin port until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/pools", get(pools))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::admission::classify::ClientHints;
    use crate::admission::config::Policy;
    use crate::auth::Identity;

    #[tokio::test]
    async fn demand_is_reported_per_pool() {
        let pools = Pools::new(["a", "b"]);
        pools.get("b").unwrap().add("127.0.0.1:1").unwrap();
        let text = "resource_groups: [{name: x, pool: b}, {name: y, pool: a}]";
        let policy = Policy::parse(text, Path::new("c.yaml"), &["a", "b"]).unwrap();
        let admission = Admission::new(policy, 1);
        let identity = Identity {
            tenant: "default".into(),
            user: "u".into(),
        };
        let _running = admission
            .admit(&identity, &ClientHints::default(), "SELECT 1", false)
            .await
            .unwrap();
        let state = AdminState {
            pools,
            metrics: Arc::new(GatewayMetrics::default()),
            admission,
        };
        // The fields the operator's demand poller reads, one entry per pool.
        let json = serde_json::to_value(state.demand()).unwrap();
        let pools = json["pools"].as_array().unwrap();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0]["pool"], "a");
        assert_eq!(pools[0]["arrivals_per_sec"], 0.0);
        assert_eq!(pools[0]["worker_loads"].as_array().unwrap().len(), 0);
        assert_eq!(pools[1]["pool"], "b");
        assert_eq!(pools[1]["arrivals_per_sec"], 1.0);
        assert_eq!(pools[1]["queued"], 0);
        assert_eq!(pools[1]["in_flight"], 0);
        assert_eq!(
            pools[1]["worker_loads"][0]["endpoint"],
            "http://127.0.0.1:1"
        );
        assert_eq!(pools[1]["worker_loads"][0]["ready"], false);
        // A call held while pool a wakes counts as queued there.
        let _held = state.pools.get("a").unwrap().start_waiting();
        let json = serde_json::to_value(state.demand()).unwrap();
        assert_eq!(json["pools"][0]["queued"], 1);
    }
}
