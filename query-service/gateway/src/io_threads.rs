//! Client connections served thread per core: each thread runs its own single-threaded
//! runtime with its share of the client connections and its own connections to the workers.
//!
//! ```text
//!  listener ─accept─► round robin ─► io thread 0: client conns ─► its worker conns
//!                                 └► io thread 1: client conns ─► its worker conns
//! ```
//!
//! A short query is three gRPC calls at the gateway (two served, one made). On a work-stealing
//! runtime each call hops between threads (the connection task, the call's task, the worker
//! connection's task), and every hop is a futex or eventfd wake-up and a context switch; on a
//! small machine those cost more than the gateway's own work. Kept on one thread, a query's
//! path through the gateway is a run of local task wake-ups. Load spreads by connection, as in
//! proxies built the same way.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::server::Router;

use crate::tls::Handshakes;

/// Stack of each io thread: as large as the main runtime's, since statements are classified
/// (parsed) on it.
const STACK_BYTES: usize = 8 << 20;
/// Pause after a failed accept (e.g. out of file descriptors) before the next try.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// An accepted connection on its way to an io thread, with its handshake slot under TLS.
type Accepted = (std::net::TcpStream, Option<OwnedSemaphorePermit>);

thread_local! {
    static ON_IO_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the caller runs on one of the gateway's io threads (and so should use connections
/// of its own to workers).
pub fn is_current() -> bool {
    ON_IO_THREAD.with(Cell::get)
}

/// Io threads to start when none is configured: one per core the process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Serves `router` on `listener` with `threads` io threads until `shutdown` resolves, then
/// stops accepting and returns once every thread has let its running streams finish. With
/// `tls`, each io thread runs the handshakes of its own connections.
pub async fn serve(
    listener: TcpListener,
    threads: usize,
    router: Router,
    tls: Option<Handshakes>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut connections = Vec::new();
    let mut finished = Vec::new();
    for index in 0..threads.max(1) {
        let (tx, rx) = mpsc::unbounded_channel::<Accepted>();
        let (done, result) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Thread)?;
        let router = router.clone();
        let tls = tls.clone();
        std::thread::Builder::new()
            .name(format!("gateway-io-{index}"))
            .stack_size(STACK_BYTES)
            .spawn(move || {
                ON_IO_THREAD.with(|on| on.set(true));
                // The incoming stream ends when the acceptor stops; the server then drains its
                // connections (a shutdown signal, even one that never fires, makes it wait).
                let served = runtime.block_on(async move {
                    let accepted = UnboundedReceiverStream::new(rx).filter_map(|(std, slot)| {
                        let stream = TcpStream::from_std(std).and_then(|stream| {
                            stream.set_nodelay(true)?;
                            Ok(stream)
                        });
                        std::future::ready(match stream {
                            Ok(stream) => Some((stream, slot)),
                            Err(e) => {
                                tracing::warn!(error = %e, "taking a connection failed");
                                None
                            }
                        })
                    });
                    match tls {
                        None => {
                            let plain = accepted.map(|(stream, _)| io::Result::Ok(stream));
                            router
                                .serve_with_incoming_shutdown(plain, std::future::pending())
                                .await
                        }
                        Some(tls) => {
                            let encrypted = tls.complete(accepted.filter_map(|(stream, slot)| {
                                std::future::ready(slot.map(|slot| (stream, slot)))
                            }));
                            router
                                .serve_with_incoming_shutdown(encrypted, std::future::pending())
                                .await
                        }
                    }
                });
                let _ = done.send(served);
            })
            .map_err(ServeError::Thread)?;
        connections.push(tx);
        finished.push(result);
    }
    let accept = async {
        let mut next = 0usize;
        loop {
            let slot = match &tls {
                Some(tls) => Some(tls.slot().await),
                None => None,
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    let Ok(stream) = stream.into_std() else {
                        continue;
                    };
                    // A thread that has gone (it failed) is skipped.
                    let mut accepted = Some((stream, slot));
                    for _ in 0..connections.len() {
                        let thread = &connections[next % connections.len()];
                        next = next.wrapping_add(1);
                        if !thread.is_closed()
                            && let Some(conn) = accepted.take()
                        {
                            let _ = thread.send(conn);
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = accept => {}
    }
    // Stop accepting at once (the port closes), then let each thread drain its connections.
    drop(listener);
    drop(connections);
    for result in finished {
        match result.await {
            Ok(served) => served.map_err(ServeError::Serve)?,
            Err(_) => return Err(ServeError::Panicked),
        }
    }
    Ok(())
}

/// Why serving stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An io thread or its runtime could not be started.
    #[error("cannot start a gateway io thread: {0}")]
    Thread(io::Error),
    /// An io thread's server failed.
    #[error("gateway server failed: {0}")]
    Serve(tonic::transport::Error),
    /// An io thread panicked.
    #[error("a gateway io thread panicked")]
    Panicked,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    /// Connections are served on the io threads, and shutdown stops accepting and returns.
    #[tokio::test]
    async fn serves_connections_on_its_threads_until_shutdown() {
        let (health, service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let router = tonic::transport::Server::builder().add_service(service);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, 2, router, None, async {
            let _ = stopped.await;
        }));
        for _ in 0..3 {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = HealthClient::new(channel);
            let status = client
                .check(HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(status, 1, "SERVING");
        }
        assert!(!is_current(), "the test's own thread is no io thread");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the port is closed after shutdown"
        );
    }
}
