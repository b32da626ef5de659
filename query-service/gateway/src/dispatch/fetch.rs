//! The gateway's end of the fetch exchange (`quiver_core::fetch`): an admitted DoGet sent to a
//! worker on a plain connection instead of a gRPC call.
//!
//! Each io thread keeps its own idle connections per worker; a connection runs one fetch at a
//! time and goes back to its thread's idle list when the fetch ends cleanly. A fetch may be
//! read to its end or dropped on another thread (a run started at planning, claimed by a DoGet
//! on another connection, or dropped by the sweeper of unclaimed runs): its place is given back
//! to the thread that opened it, and its connection is closed rather than kept by a thread
//! whose runtime does not drive it. One dropped mid-stream (the client went away, the deadline passed) is closed,
//! which ends the query on the worker. A kept connection the worker has closed since (it idled
//! it out or restarted) is found closed before use and replaced; any other failure is a
//! transport failure, judged like gRPC's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use arrow_flight::FlightData;
use bytes::BytesMut;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::{Code, Status};

use super::connect::{self, NotSent};
use super::pool::Worker;
use quiver_core::fetch;
use quiver_core::protocol::{MAX_MESSAGE_BYTES, WORKER_STATE_HEADER};

/// Fetch connections one io thread keeps open to one worker at most, busy or idle; past it,
/// calls go over the shared gRPC connection.
pub const MAX_CONNECTIONS: usize = 128;
/// An idle connection older than this is closed rather than reused (the worker closes its side
/// after five minutes).
const IDLE_FOR: Duration = Duration::from_secs(60);
/// Bytes a frame's buffer grows by at most before they have arrived.
const READ_CHUNK: usize = 64 << 10;

type Connection = BufReader<TcpStream>;

/// One io thread's connections to one worker.
struct Connections {
    /// Dropped with the worker.
    alive: Weak<()>,
    idle: Vec<(Instant, Connection)>,
    /// Connections carrying a fetch now (each has a [`Busy`] guard, which may drop on another
    /// thread).
    busy: Arc<AtomicUsize>,
}

thread_local! {
    static CONNECTIONS: RefCell<HashMap<u64, Connections>> = RefCell::new(HashMap::new());
}

fn with_worker_entry(worker: u64, f: impl FnOnce(&mut Connections)) {
    CONNECTIONS.with(|all| {
        if let Some(entry) = all.borrow_mut().get_mut(&worker) {
            f(entry);
        }
    });
}

/// One busy connection's place in the count of the thread that opened it, given back when
/// dropped, however and wherever the fetch ends.
struct Busy {
    count: Arc<AtomicUsize>,
    /// The thread whose idle list the connection may go back to.
    home: ThreadId,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A place for one fetch to `worker`, with an idle connection if there is one; `None` when
/// this thread already has [`MAX_CONNECTIONS`] open to it, busy or idle.
fn reserve(worker: &Worker) -> Option<(Busy, Option<Connection>)> {
    CONNECTIONS.with(|all| {
        let mut all = all.borrow_mut();
        if !all.contains_key(&worker.id()) {
            all.retain(|_, c| c.alive.strong_count() > 0);
        }
        let entry = all.entry(worker.id()).or_insert_with(|| Connections {
            alive: worker.alive(),
            idle: Vec::new(),
            busy: Arc::default(),
        });
        // Connections idle too long are closed: the worker may have closed its side.
        entry.idle.retain(|(since, _)| since.elapsed() < IDLE_FOR);
        let idle = entry.idle.pop().map(|(_, connection)| connection);
        if idle.is_none()
            && entry.busy.load(Ordering::Relaxed) + entry.idle.len() >= MAX_CONNECTIONS
        {
            return None;
        }
        entry.busy.fetch_add(1, Ordering::Relaxed);
        let busy = Busy {
            count: entry.busy.clone(),
            home: std::thread::current().id(),
        };
        Some((busy, idle))
    })
}

/// A failure of the connection, not of the query: the dispatcher treats it as the worker
/// failing (a status with a source, as the gRPC stack makes them).
fn transport(endpoint: &str, e: io::Error) -> Status {
    failed(endpoint, &e.to_string(), Arc::new(e))
}

/// A connection that failed to open: a transport failure the worker cannot have caused.
fn not_sent(endpoint: &str, e: NotSent) -> Status {
    failed(endpoint, &e.0.to_string(), Arc::new(e))
}

fn failed(endpoint: &str, error: &str, source: Arc<dyn std::error::Error + Send + Sync>) -> Status {
    let mut status =
        Status::unavailable(format!("connection to worker {endpoint} failed: {error}"));
    status.set_source(source);
    status
}

/// A fetch under way: its connection and the first frame's header, already read. The
/// connection is `None` once the fetch has ended (returned to the idle list, or closed).
pub struct Fetch {
    busy: Option<Busy>,
    connection: Option<Connection>,
    pending: Option<[u8; fetch::FRAME_HEADER_BYTES]>,
    worker: Arc<Worker>,
}

/// Starts a fetch of `ticket` on `worker` with `grant`, over this thread's connections to it.
/// `None` when gRPC should carry it instead: the worker does not speak the exchange, or this
/// thread has too many connections open to it already.
pub async fn start(
    worker: &Arc<Worker>,
    ticket: &[u8],
    grant: &str,
) -> Option<Result<Fetch, Status>> {
    if worker.fetch_refused() {
        return None;
    }
    let (busy, reused) = reserve(worker)?;
    // A kept connection the worker has closed since (it restarted, or idled it out) is
    // replaced before use, so a failure after the request is sent on a kept connection means
    // the worker failed with the request in hand.
    let reused = reused.filter(is_open);
    let is_new = reused.is_none();
    let mut connection = match reused {
        Some(connection) => connection,
        None => match connect(worker).await {
            Ok(connection) => connection,
            Err(e) => return Some(Err(not_sent(worker.endpoint(), e))),
        },
    };
    let request = fetch::encode_request(ticket, grant);
    // Closed, or answered as something else, before the worker took the request: one that
    // does not speak the exchange or is at its connection cap still listens, and gets its
    // DoGets over gRPC for a while; one that is gone never had the request.
    if is_new && !taken(&mut connection, &request).await {
        return match connect(worker).await {
            Ok(_) => {
                worker.refuse_fetch();
                None
            }
            Err(e) => Some(Err(not_sent(worker.endpoint(), e))),
        };
    }
    let sent = async {
        if !is_new {
            connection.get_mut().write_all(&request).await?;
        }
        let mut header = [0u8; fetch::FRAME_HEADER_BYTES];
        connection.read_exact(&mut header).await?;
        io::Result::Ok(header)
    }
    .await;
    Some(match sent {
        Ok(header) => Ok(Fetch {
            busy: Some(busy),
            connection: Some(connection),
            pending: Some(header),
            worker: worker.clone(),
        }),
        // The worker had the request: it failed with it in hand.
        Err(e) => Err(transport(worker.endpoint(), e)),
    })
}

/// Sends a new connection's magic and first request in one write, and reads the worker's
/// echo: whether it took the connection (`quiver_core::fetch`).
async fn taken(connection: &mut Connection, request: &[u8]) -> bool {
    let mut echo = [0u8; fetch::MAGIC.len()];
    connection
        .get_mut()
        .write_all(&[fetch::MAGIC.as_slice(), request].concat())
        .await
        .is_ok()
        && connection.read_exact(&mut echo).await.is_ok()
        && &echo == fetch::MAGIC
}

/// Whether a kept connection is still open: an idle connection receives nothing, so bytes or
/// an end waiting on it mean the worker closed it. Costs no system call while the runtime has
/// seen nothing arrive on it.
fn is_open(connection: &Connection) -> bool {
    if !connection.buffer().is_empty() {
        return false;
    }
    let mut byte = [0u8; 1];
    matches!(connection.get_ref().try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

async fn connect(worker: &Worker) -> Result<Connection, NotSent> {
    Ok(BufReader::new(connect::open(worker.authority()).await?))
}

impl Fetch {
    /// The next Flight message, `None` at the end. A failed query comes back as the worker's
    /// status; a broken connection as a transport failure.
    pub async fn message(&mut self) -> Result<Option<FlightData>, Status> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(None);
        };
        let header = match self.pending.take() {
            Some(header) => header,
            None => {
                let mut header = [0u8; fetch::FRAME_HEADER_BYTES];
                if let Err(e) = connection.read_exact(&mut header).await {
                    return Err(self.broken(e));
                }
                header
            }
        };
        let (kind, len) = fetch::parse_frame_header(header);
        if len > MAX_MESSAGE_BYTES {
            // Not read, so the connection is closed; but it is the query's doing (a row this
            // large), not the worker failing: the query's own error, retried nowhere.
            self.close();
            return Err(Status::resource_exhausted(format!(
                "worker {} sent a result message of {len} bytes, over the {} MiB limit on one \
                 message: a row this large cannot be sent",
                self.worker.endpoint(),
                MAX_MESSAGE_BYTES >> 20
            )));
        }
        // Memory follows the bytes that arrive, not the length announced.
        let mut payload = BytesMut::with_capacity(len.min(READ_CHUNK));
        let mut frame = (&mut *connection).take(len as u64);
        while payload.len() < len {
            payload.reserve((len - payload.len()).min(READ_CHUNK));
            match frame.read_buf(&mut payload).await {
                Ok(0) => return Err(self.broken(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Err(self.broken(e)),
            }
        }
        match kind {
            fetch::FRAME_DATA => FlightData::decode(payload.freeze())
                .map(Some)
                .map_err(|e| self.broken(io::Error::new(io::ErrorKind::InvalidData, e))),
            fetch::FRAME_END => {
                self.finish();
                Ok(None)
            }
            fetch::FRAME_ERROR => {
                let Some(failure) = fetch::decode_error(&payload) else {
                    return Err(self.broken(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed fetch error frame",
                    )));
                };
                self.finish();
                let mut status = Status::new(Code::from_i32(failure.code), failure.message);
                if let Some(state) = failure.state.and_then(|s| s.parse().ok()) {
                    status.metadata_mut().insert(WORKER_STATE_HEADER, state);
                }
                Err(status)
            }
            _ => Err(self.broken(io::Error::new(
                io::ErrorKind::InvalidData,
                "unknown fetch frame",
            ))),
        }
    }

    /// The fetch ended as the exchange says: the connection takes the next one, if this is
    /// the thread that opened it (any other closes it).
    fn finish(&mut self) {
        if let Some(connection) = self.connection.take() {
            // Idle from now, no longer busy.
            let busy = self.busy.take();
            if busy.is_some_and(|busy| busy.home == std::thread::current().id()) {
                with_worker_entry(self.worker.id(), |c| {
                    c.idle.push((Instant::now(), connection))
                });
            }
        }
    }

    /// The connection cannot be trusted any further: it is closed.
    fn broken(&mut self, e: io::Error) -> Status {
        self.close();
        transport(self.worker.endpoint(), e)
    }

    /// Closes the connection and gives its place back, however the fetch ended.
    fn close(&mut self) {
        self.connection = None;
        self.busy = None;
    }
}

/// Connections this thread has open to `worker`, busy or idle.
#[cfg(test)]
fn open(worker: &Worker) -> usize {
    CONNECTIONS.with(|all| {
        all.borrow()
            .get(&worker.id())
            .map_or(0, |c| c.busy.load(Ordering::Relaxed) + c.idle.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::pool::WorkerPool;

    /// A fake worker on a local port, added to a pool: each connection is handed to `serve`
    /// once its first four bytes have arrived (the pool's health watch connects too). The port
    /// closes, as when a worker dies, once `serve` returns false.
    async fn fake_worker<F, Fut>(serve: F) -> Arc<Worker>
    where
        F: Fn(TcpStream, [u8; 4]) -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("grpc://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut magic = [0u8; 4];
                if stream.read_exact(&mut magic).await.is_ok() && !serve(stream, magic).await {
                    return;
                }
            }
        });
        WorkerPool::new("p").add(&endpoint).unwrap()
    }

    /// Takes a fetch connection, as a worker does before reading requests.
    async fn take(stream: &mut TcpStream) {
        stream.write_all(fetch::MAGIC).await.unwrap();
    }

    async fn read_request(stream: &mut TcpStream) -> io::Result<usize> {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut body).await
    }

    /// A worker speaking the exchange that answers `answered` requests on each connection with
    /// an empty result, then hangs up, having read one more request if `read_the_next`; with
    /// the fetch connections it took.
    async fn worker_that_hangs_up_after(
        answered: usize,
        read_the_next: bool,
    ) -> (Arc<Worker>, Arc<std::sync::atomic::AtomicUsize>) {
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let worker = fake_worker(move |mut stream, magic| {
            let count = count.clone();
            async move {
                if &magic != fetch::MAGIC {
                    return true;
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                take(&mut stream).await;
                for _ in 0..answered {
                    if read_request(&mut stream).await.is_err() {
                        return true;
                    }
                    let end = fetch::frame_header(fetch::FRAME_END, 0);
                    stream.write_all(&end).await.unwrap();
                }
                if read_the_next {
                    let _ = read_request(&mut stream).await;
                }
                true
            }
        })
        .await;
        (worker, accepted)
    }

    async fn run_to_end(worker: &Arc<Worker>) -> Result<(), Status> {
        let mut fetch = start(worker, b"ticket", "grant").await.unwrap()?;
        while fetch.message().await?.is_some() {}
        Ok(())
    }

    /// A fetch read to its end or dropped on another thread (a claimed or swept run started
    /// at planning) gives its place back to the thread that opened it, and its connection is
    /// kept by neither thread.
    #[tokio::test]
    async fn a_fetch_that_ends_on_another_thread_gives_its_place_back() {
        // One answer per connection: the fake worker serves its connections one at a time.
        let (worker, accepted) = worker_that_hangs_up_after(1, false).await;
        let read = start(&worker, b"ticket", "grant").await.unwrap().unwrap();
        let dropped = start(&worker, b"ticket", "grant").await.unwrap().unwrap();
        assert_eq!(open(&worker), 2);
        let there = worker.clone();
        // This runtime keeps driving the connections while the other thread reads one.
        let open_there = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut read = read;
                while read.message().await.unwrap().is_some() {}
                drop(dropped);
                open(&there)
            })
        })
        .await
        .unwrap();
        assert_eq!(open_there, 0, "the other thread keeps no connection");
        assert_eq!(open(&worker), 0, "both places were given back here");
        run_to_end(&worker).await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// A worker that hangs up on the exchange's first bytes (one that does not speak it) gets
    /// its DoGets over gRPC, and no connection stays counted against it.
    #[tokio::test]
    async fn a_worker_that_hangs_up_on_the_exchange_gets_grpc() {
        let worker = fake_worker(|_, _| async { true }).await;
        assert!(!worker.fetch_refused());
        assert!(start(&worker, b"ticket", "grant").await.is_none());
        assert!(worker.fetch_refused());
        // Refused for a while: not even tried again.
        assert!(start(&worker, b"ticket", "grant").await.is_none());
        assert_eq!(open(&worker), 0);
    }

    /// A kept connection the worker closed after its last answer (it idled it out or
    /// restarted) is replaced before use, so the next fetch succeeds on a new connection.
    #[tokio::test]
    async fn a_kept_connection_the_worker_closed_is_replaced() {
        let (worker, accepted) = worker_that_hangs_up_after(1, false).await;
        for round in 1..=3 {
            run_to_end(&worker).await.unwrap();
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), round);
        }
    }

    /// A worker that fails with the request in hand on a kept connection is a transport
    /// failure that reached it (it may have failed because of the query), not one to paper
    /// over with a new connection.
    #[tokio::test]
    async fn a_worker_failing_with_the_request_in_hand_reached_it() {
        let (worker, accepted) = worker_that_hangs_up_after(1, true).await;
        run_to_end(&worker).await.unwrap();
        let status = run_to_end(&worker).await.unwrap_err();
        assert!(std::error::Error::source(&status).is_some(), "{status:?}");
        assert!(super::super::reached_worker(&status), "{status:?}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!worker.fetch_refused());
    }

    /// A worker that dies with the request in hand on a new connection is a transport failure
    /// that reached it, not a worker that does not speak the exchange: both when its port is
    /// closed by the time the gateway looks and when it still accepts for a moment (a killed
    /// process's connections close before its listening socket does).
    #[tokio::test]
    async fn a_worker_dying_on_a_new_connection_reached_it() {
        for still_listening in [false, true] {
            let worker = fake_worker(move |mut stream, magic| async move {
                if &magic != fetch::MAGIC {
                    return true;
                }
                take(&mut stream).await;
                let _ = read_request(&mut stream).await;
                still_listening
            })
            .await;
            let Some(Err(status)) = start(&worker, b"ticket", "grant").await else {
                panic!(
                    "a dying worker answered, or was taken for one that does not speak the exchange"
                );
            };
            assert!(super::super::reached_worker(&status), "{status:?}");
            assert!(
                !worker.fetch_refused(),
                "still listening: {still_listening}"
            );
            assert_eq!(open(&worker), 0);
        }
    }

    /// A frame over the message limit is not read: the connection is closed, and the failure
    /// is the query's (a row that large), not a broken worker to retry elsewhere.
    #[tokio::test]
    async fn a_frame_over_the_limit_is_the_query_s_error() {
        let worker = fake_worker(|mut stream, _| async move {
            take(&mut stream).await;
            let _ = read_request(&mut stream).await;
            let header = fetch::frame_header(fetch::FRAME_DATA, MAX_MESSAGE_BYTES + 1);
            stream.write_all(&header).await.unwrap();
            // Held open: only the gateway closes it.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            true
        })
        .await;
        let mut fetch = start(&worker, b"ticket", "grant").await.unwrap().unwrap();
        let status = fetch.message().await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(std::error::Error::source(&status).is_none(), "{status:?}");
        assert_eq!(open(&worker), 0, "the connection was closed");
    }

    /// A worker that is not there is a transport failure (retried elsewhere), not a refusal.
    #[tokio::test]
    async fn a_worker_that_is_gone_is_a_transport_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = WorkerPool::new("p");
        let worker = pool.add(&format!("grpc://{addr}")).unwrap();
        let Some(Err(status)) = start(&worker, b"ticket", "grant").await else {
            panic!("connecting to a closed port succeeded");
        };
        assert!(std::error::Error::source(&status).is_some(), "{status:?}");
        assert!(!super::super::reached_worker(&status), "{status:?}");
        assert!(!worker.fetch_refused());
        assert_eq!(open(&worker), 0);
    }
}
