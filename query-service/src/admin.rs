//! The gateway's admin HTTP port: Prometheus metrics, the per-pool demand signal the operator
//! and the local supervisor scale from, and a liveness check.
//!
//! ```text
//!  GET /metrics    Prometheus text, names prefixed quiver_
//!  GET /v1/pools   {"pools":[{"pool","workers","ready","in_flight","queued","arrivals_per_sec",
//!                             "worker_loads":[{"endpoint","ready","in_flight"}]}]}
//!  GET /healthz    200 "ok"
//! ```

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::admission::Admission;
use crate::dispatch::pool::WorkerPool;
use crate::metrics::GatewayMetrics;

/// Demand of one pool, as the operator reads it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolDemand {
    /// Pool name.
    pub pool: String,
    /// Workers in the pool.
    pub workers: usize,
    /// Workers reporting SERVING.
    pub ready: usize,
    /// Queries running on the pool.
    pub in_flight: usize,
    /// Queries admitted but waiting for a slot.
    pub queued: usize,
    /// Arrivals over the last second.
    pub arrivals_per_sec: f64,
    /// Per-worker load, so scale-down can pick the least busy pods.
    pub worker_loads: Vec<WorkerLoad>,
}

/// One worker's load.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerLoad {
    /// Worker URL.
    pub endpoint: String,
    /// Reporting SERVING.
    pub ready: bool,
    /// Queries running on it.
    pub in_flight: usize,
}

/// The `/v1/pools` document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DemandReport {
    /// One entry per pool.
    pub pools: Vec<PoolDemand>,
}

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The gateway's pools.
    pub pools: Vec<Arc<WorkerPool>>,
    /// The gateway's metrics.
    pub metrics: Arc<GatewayMetrics>,
    /// Admission, for queue depths.
    pub admission: Arc<Admission>,
}

impl AdminState {
    /// The demand of every pool now.
    pub fn demand(&self) -> DemandReport {
        let arrivals = self.metrics.arrivals_per_sec();
        DemandReport {
            pools: self
                .pools
                .iter()
                .map(|pool| {
                    let workers = pool.workers();
                    PoolDemand {
                        pool: pool.name().to_owned(),
                        workers: workers.len(),
                        ready: workers.iter().filter(|w| w.is_ready()).count(),
                        in_flight: workers.iter().map(|w| w.in_flight()).sum(),
                        queued: self.admission.queued() as usize,
                        arrivals_per_sec: arrivals,
                        worker_loads: workers
                            .iter()
                            .map(|w| WorkerLoad {
                                endpoint: w.endpoint().to_owned(),
                                ready: w.is_ready(),
                                in_flight: w.in_flight(),
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
            .encode(&state.pools, &state.admission.snapshot()),
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
