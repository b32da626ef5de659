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
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::server::Router;

use crate::tls::Handshakes;
use quiver_core::accepted::Accepted;

/// Stack of each io thread: as large as the main runtime's, since statements are classified
/// (parsed) on it.
const STACK_BYTES: usize = 8 << 20;
/// Pause after a failed accept (e.g. out of file descriptors) before the next try.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How often refused connections are logged at most.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(10);

/// An accepted connection on its way to an io thread, with its handshake slot under TLS and
/// its place among the gateway's connections.
type Incoming = (
    std::net::TcpStream,
    Option<OwnedSemaphorePermit>,
    OwnedSemaphorePermit,
);

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

/// How many io threads, and how many client connections they keep open at most.
#[derive(Debug, Clone, Copy)]
pub struct Threads {
    /// Io threads.
    pub count: usize,
    /// Client connections open at once, at most: past it a new one is closed at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` with `threads` io threads until `shutdown` resolves, then
/// stops accepting and returns once every thread has let its running streams finish. With
/// `tls`, each io thread runs the handshakes of its own connections. `refused` is told of
/// each connection closed because as many as allowed are open.
pub async fn serve(
    listener: TcpListener,
    threads: Threads,
    router: Router,
    tls: Option<Handshakes>,
    refused: impl Fn(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let places = Arc::new(Semaphore::new(threads.max_connections.max(1)));
    let mut connections = Vec::new();
    let mut finished = Vec::new();
    for index in 0..threads.count.max(1) {
        let (tx, rx) = mpsc::unbounded_channel::<Incoming>();
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
                    let accepted =
                        UnboundedReceiverStream::new(rx).filter_map(|(std, slot, place)| {
                            let stream = TcpStream::from_std(std).and_then(|stream| {
                                stream.set_nodelay(true)?;
                                Ok(stream)
                            });
                            std::future::ready(match stream {
                                Ok(stream) => Some((stream, slot, place)),
                                Err(e) => {
                                    tracing::warn!(error = %e, "taking a connection failed");
                                    None
                                }
                            })
                        });
                    match tls {
                        None => {
                            let plain = accepted.map(|(stream, _, place)| {
                                io::Result::Ok(Accepted::new(stream, place))
                            });
                            router
                                .serve_with_incoming_shutdown(plain, std::future::pending())
                                .await
                        }
                        Some(tls) => {
                            let encrypted =
                                tls.complete(accepted.filter_map(|(stream, slot, place)| {
                                    std::future::ready(slot.map(|slot| (stream, slot, place)))
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
        let (mut refusals, mut logged) = (0u64, None::<Instant>);
        loop {
            let slot = match &tls {
                Some(tls) => Some(tls.slot().await),
                None => None,
            };
            match listener.accept().await {
                Ok((stream, peer)) => {
                    // Closed at once when the gateway is full: the client fails fast instead
                    // of waiting in the backlog.
                    let Ok(place) = places.clone().try_acquire_owned() else {
                        drop(stream);
                        refused();
                        refusals += 1;
                        if logged.is_none_or(|at| at.elapsed() >= REFUSALS_LOGGED_EVERY) {
                            tracing::warn!(
                                %peer,
                                refusals,
                                max = threads.max_connections,
                                "client connections at their maximum; closing new ones"
                            );
                            (refusals, logged) = (0, Some(Instant::now()));
                        }
                        continue;
                    };
                    let Ok(stream) = stream.into_std() else {
                        continue;
                    };
                    // A thread that has gone (it failed) is skipped.
                    let mut accepted = Some((stream, slot, place));
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    /// A server of the health service, SERVING, and the port to serve it on.
    async fn health_server() -> (Router, TcpListener, std::net::SocketAddr) {
        let (health, service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let router = tonic::transport::Server::builder().add_service(service);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (router, listener, addr)
    }

    /// A health check over a connection of its own: the status, or why it failed.
    async fn health_check(addr: std::net::SocketAddr) -> Result<i32, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await?;
        Ok(status.into_inner().status)
    }

    /// Past the maximum, a new connection is closed at once (and counted); one that closes
    /// gives its place back.
    #[tokio::test]
    async fn connections_past_the_maximum_are_closed() {
        let (router, listener, addr) = health_server().await;
        let refused = Arc::new(AtomicUsize::new(0));
        let counted = refused.clone();
        let threads = Threads {
            count: 1,
            max_connections: 2,
        };
        let _server = tokio::spawn(serve(
            listener,
            threads,
            router,
            None,
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
            },
            std::future::pending(),
        ));
        // Two idle connections that have begun (sent the preface) hold both places.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
            held.push(stream);
        }
        // Accepted in the order they connected, so those two took the places first.
        assert!(health_check(addr).await.is_err(), "no place for a third");
        assert!(refused.load(Ordering::SeqCst) >= 1, "and counted");
        drop(held);
        // The server notices the closes in its own time: retried until a place is free.
        while health_check(addr).await.is_err() {
            tokio::task::yield_now().await;
        }
    }

    /// Connections are served on the io threads, and shutdown stops accepting and returns.
    #[tokio::test]
    async fn serves_connections_on_its_threads_until_shutdown() {
        let (router, listener, addr) = health_server().await;
        let (stop, stopped) = oneshot::channel::<()>();
        let threads = Threads {
            count: 2,
            max_connections: 16,
        };
        let server = tokio::spawn(serve(listener, threads, router, None, || {}, async {
            let _ = stopped.await;
        }));
        for _ in 0..3 {
            assert_eq!(health_check(addr).await.unwrap(), 1, "SERVING");
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
