//! The gateway role: serves Flight SQL to clients and dispatches each query to a worker.
//!
//! ```text
//!  client ──► flight (decode, check ticket) ──► dispatch (least-loaded ready worker, retry once)
//!         ◄── relayed Flight data ◄────────────── worker
//! ```

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

use crate::admin::{self, AdminState};
use crate::dispatch::Dispatcher;
use crate::dispatch::pool::WorkerPool;
use crate::flight::GatewayService;
use crate::metrics::GatewayMetrics;
use crate::ticket::TicketSigner;

/// Serves the gateway on `listener` (and the admin port on `admin`, if given) until `shutdown`
/// resolves; running streams finish first.
pub async fn run(
    listener: TcpListener,
    admin: Option<TcpListener>,
    pool: Arc<WorkerPool>,
    metrics: Arc<GatewayMetrics>,
    signer: TicketSigner,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(admin) = admin {
        let state = AdminState {
            pools: vec![pool.clone()],
            metrics: metrics.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = admin::serve(admin, state, async {
                let _ = admin_stopped.await;
            })
            .await
            {
                tracing::error!(error = %e, "admin server failed");
            }
        });
    }
    let service = GatewayService::new(Dispatcher::new(pool), signer, metrics);
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "gateway serving (open mode: no authentication, one default group)"
    );
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    let _ = admin_stop.send(());
    result
}
