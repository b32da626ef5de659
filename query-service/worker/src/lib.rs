//! The worker role: a pre-warmed DataFusion query server behind Flight SQL.
//!
//! ```text
//!  bind ──► serve health (NOT_SERVING) + Flight (UNAVAILABLE) ──► warm up catalog
//!       ──► SERVING ── shutdown signal ──► NOT_SERVING ──► wait for in-flight queries
//!           (up to the drain timeout) ──► exit
//! ```
//!
//! The socket is bound before warm-up so orchestrators can probe health while tables load, and
//! health flips to NOT_SERVING before draining so the gateway stops sending new queries.
//!
//! A standby worker ([`run_standby`]) starts without a catalog: it warms what it can and waits
//! for a claim ([`claim`]) to hand it one, then warms that catalog exactly as above. Besides
//! the default health service (`""`, SERVING while serving queries), every worker reports
//! [`claim::STANDBY_HEALTH_SERVICE`] (claimable now) and [`claim::READY_HEALTH_SERVICE`] (fit
//! for its role: a warm standby or serving), the readiness probe of standby pods.

pub mod authorise;
pub mod catalog;
pub mod claim;
pub mod engine;
mod fetch;
mod flight;
mod metadata;
mod output_bounds;
mod status;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::catalog::Catalog;
use self::engine::{Engine, QueryLimits};
use self::flight::WorkerService;
use quiver_core::accepted::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
use quiver_core::ticket::TicketSigner;

use quiver_core::protocol::MAX_MESSAGE_BYTES;

/// Counts queries whose results are still streaming, so a drain can wait for them.
#[derive(Clone, Debug)]
pub struct InFlight {
    count: Arc<watch::Sender<usize>>,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            count: Arc::new(watch::channel(0).0),
        }
    }
}

impl InFlight {
    /// Marks one query as running until the guard drops.
    pub fn enter(&self) -> InFlightGuard {
        self.count.send_modify(|n| *n += 1);
        InFlightGuard {
            count: self.count.clone(),
        }
    }

    /// Queries running now.
    pub fn current(&self) -> usize {
        *self.count.borrow()
    }

    /// Resolves once no query is running.
    pub async fn idle(&self) {
        let mut rx = self.count.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// Releases one in-flight slot on drop, however the result stream ends.
#[derive(Debug)]
pub struct InFlightGuard {
    count: Arc<watch::Sender<usize>>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.count.send_modify(|n| *n -= 1);
    }
}

/// Everything a worker needs besides its socket.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The validated catalog.
    pub catalog: Catalog,
    /// Per-query limits.
    pub limits: QueryLimits,
    /// How long a drain waits for running queries before exiting anyway.
    pub drain_timeout: Duration,
}

/// Everything a standby worker needs besides its socket: its catalog comes with a claim.
#[derive(Debug, Clone, Copy)]
pub struct StandbyConfig {
    /// Per-query limits, once claimed.
    pub limits: QueryLimits,
    /// How long a drain waits for running queries before exiting anyway.
    pub drain_timeout: Duration,
}

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A table could not be registered or warmed.
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// The gRPC server failed.
    #[error("worker server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` resolves, then drains and returns.
pub async fn run(
    listener: TcpListener,
    config: WorkerConfig,
    signer: TicketSigner,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let start = Start::Catalog(config.catalog);
    serve(
        listener,
        start,
        config.limits,
        config.drain_timeout,
        signer,
        shutdown,
    )
    .await
}

/// Serves a standby worker on `listener`: NOT_SERVING until a claim gives it a catalog, then an
/// ordinary worker until `shutdown` resolves.
pub async fn run_standby(
    listener: TcpListener,
    config: StandbyConfig,
    signer: TicketSigner,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let (limits, drain) = (config.limits, config.drain_timeout);
    serve(listener, Start::Standby, limits, drain, signer, shutdown).await
}

/// Where a worker's catalog comes from.
enum Start {
    /// Given at start: warmed before serving.
    Catalog(Catalog),
    /// Given by a claim, later.
    Standby,
}

/// The worker's life, whichever way its catalog comes: bind, serve NOT_SERVING, warm (or wait
/// for a claim), serve, drain.
async fn serve(
    listener: TcpListener,
    start: Start,
    limits: QueryLimits,
    drain_timeout: Duration,
    signer: TicketSigner,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let engine_cell = Arc::new(OnceLock::new());
    let in_flight = InFlight::default();
    let standby = matches!(start, Start::Standby);
    // Every health service reports NOT_SERVING from here until warm-up (or a claim) is done.
    let readiness = claim::Readiness::new(standby, engine_cell.clone(), health, limits).await;
    let grant = flight::require_grant(signer.clone());
    let service = WorkerService::new(
        engine_cell.clone(),
        signer.clone(),
        in_flight.clone(),
        readiness.clone(),
    );
    let incoming = fetch::incoming(listener, service.clone(), signer);
    let flight = tonic::service::interceptor::InterceptedService::new(
        FlightServiceServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        grant,
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_readiness = readiness.clone();
    let drain_in_flight = in_flight.clone();
    let drain = async move {
        shutdown.await;
        drain_readiness.stop().await;
        tracing::info!(in_flight = drain_in_flight.current(), "draining");
        if tokio::time::timeout(drain_timeout, drain_in_flight.idle())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = drain_in_flight.current(),
                "drain timeout passed; stopping with queries still running"
            );
        }
        let _ = stop_tx.send(());
    };

    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(flight)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    let server = tokio::spawn(server);
    let mut drain = tokio::spawn(drain);

    match start {
        Start::Catalog(catalog) => {
            let engine = match Engine::warm_up(&catalog, limits).await {
                Ok(engine) => engine,
                Err(e) => {
                    server.abort();
                    drain.abort();
                    return Err(e.into());
                }
            };
            if readiness.serve(engine).await {
                tracing::info!(tables = catalog.tables.len(), "worker warm and serving");
            }
        }
        Start::Standby => {
            claim::prewarm().await;
            readiness.warm().await;
        }
    }

    // Once the drain has released the server, streams that outlived the drain timeout get a
    // short grace to see their connection close rather than holding the exit forever.
    let mut server = server;
    tokio::select! {
        result = &mut server => {
            drain.abort();
            match result {
                Ok(r) => r.map_err(WorkerError::from),
                Err(join) => panic!("worker server task panicked: {join}"),
            }
        }
        _ = async {
            let _ = (&mut drain).await;
            tokio::time::sleep(EXIT_GRACE).await;
        } => {
            server.abort();
            Ok(())
        }
    }
}

/// How long connections may take to close after a drain before the worker exits regardless.
const EXIT_GRACE: Duration = Duration::from_secs(1);
