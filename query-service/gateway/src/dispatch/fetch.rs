//! The gateway's end of the fetch exchange (`quiver_core::fetch`): an admitted DoGet sent to a
//! worker on a plain connection instead of a gRPC call.
//!
//! Each io thread keeps its own idle connections per worker, so a fetch never leaves its
//! thread; a connection runs one fetch at a time and goes back to the idle list when the fetch
//! ends cleanly. One dropped mid-stream (the client went away, the deadline passed) is closed,
//! which ends the query on the worker. A reused connection that turns out closed (the worker
//! idled it out or restarted) is replaced once, transparently; any other failure is a transport
//! failure, judged like gRPC's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arrow_flight::FlightData;
use bytes::BytesMut;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::{Code, Status};

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
/// Connecting to a worker on the same network should take milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

type Connection = BufReader<TcpStream>;

/// One io thread's connections to one worker.
struct Connections {
    /// Dropped with the worker.
    alive: Weak<()>,
    idle: Vec<(Instant, Connection)>,
    /// Open now, busy or idle.
    open: usize,
}

thread_local! {
    static CONNECTIONS: RefCell<HashMap<u64, Connections>> = RefCell::new(HashMap::new());
}

/// A connection taken for one fetch: counted as open until it is returned or dropped.
struct Taken {
    worker: u64,
    connection: Option<Connection>,
}

impl Taken {
    fn give_back(mut self) {
        if let Some(connection) = self.connection.take() {
            with_worker_entry(self.worker, |c| c.idle.push((Instant::now(), connection)));
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if self.connection.is_some() {
            with_worker_entry(self.worker, |c| c.open = c.open.saturating_sub(1));
        }
    }
}

fn with_worker_entry(worker: u64, f: impl FnOnce(&mut Connections)) {
    CONNECTIONS.with(|all| {
        if let Some(entry) = all.borrow_mut().get_mut(&worker) {
            f(entry);
        }
    });
}

/// An idle connection to `worker` if there is one, else a slot for a new one; `None` when this
/// thread already has [`MAX_CONNECTIONS`] open to it.
fn reserve(worker: &Worker) -> Option<Option<Connection>> {
    CONNECTIONS.with(|all| {
        let mut all = all.borrow_mut();
        if !all.contains_key(&worker.id()) {
            all.retain(|_, c| c.alive.strong_count() > 0);
        }
        let entry = all.entry(worker.id()).or_insert_with(|| Connections {
            alive: worker.alive(),
            idle: Vec::new(),
            open: 0,
        });
        while let Some((since, connection)) = entry.idle.pop() {
            if since.elapsed() < IDLE_FOR {
                return Some(Some(connection));
            }
            entry.open = entry.open.saturating_sub(1);
        }
        (entry.open < MAX_CONNECTIONS).then(|| {
            entry.open += 1;
            None
        })
    })
}

/// A failure of the connection, not of the query: the dispatcher treats it as the worker
/// failing (a status with a source, as the gRPC stack makes them).
fn transport(endpoint: &str, e: io::Error) -> Status {
    let mut status = Status::unavailable(format!("connection to worker {endpoint} failed: {e}"));
    status.set_source(Arc::new(e));
    status
}

/// A fetch under way: its connection and the first frame's header, already read.
pub struct Fetch {
    taken: Taken,
    pending: Option<[u8; fetch::FRAME_HEADER_BYTES]>,
    endpoint: String,
}

/// Starts a fetch of `ticket` on `worker` with `grant`, over this thread's connections to it.
/// `None` when gRPC should carry it instead: the worker does not speak the exchange, or this
/// thread has too many connections open to it already.
pub async fn start(worker: &Worker, ticket: &[u8], grant: &str) -> Option<Result<Fetch, Status>> {
    if worker.fetch_refused() {
        return None;
    }
    let reused = reserve(worker)?;
    let request = fetch::encode_request(ticket, grant);
    let mut taken = Taken {
        worker: worker.id(),
        connection: None,
    };
    let mut reused = reused;
    loop {
        let was_reused = reused.is_some();
        let mut connection = match reused.take() {
            Some(connection) => connection,
            None => match connect(worker).await {
                Ok(connection) => connection,
                Err(e) => {
                    // The slot reserved for it is released.
                    with_worker_entry(worker.id(), |c| c.open = c.open.saturating_sub(1));
                    return Some(Err(transport(worker.endpoint(), e)));
                }
            },
        };
        let sent = async {
            connection.get_mut().write_all(&request).await?;
            let mut header = [0u8; fetch::FRAME_HEADER_BYTES];
            connection.read_exact(&mut header).await?;
            io::Result::Ok(header)
        }
        .await;
        taken.connection = Some(connection);
        match sent {
            Ok(header) => {
                return Some(Ok(Fetch {
                    taken,
                    pending: Some(header),
                    endpoint: worker.endpoint().to_owned(),
                }));
            }
            // A kept connection the worker had closed: open a new one in its place.
            Err(_) if was_reused => {
                taken.connection = None;
            }
            // A new connection closed before any answer: a worker that does not speak the
            // exchange (an older version) hangs up on its first bytes. Use gRPC for it; a
            // worker that is really gone fails that call as well.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                worker.refuse_fetch();
                return None;
            }
            Err(e) => return Some(Err(transport(worker.endpoint(), e))),
        }
    }
}

async fn connect(worker: &Worker) -> io::Result<Connection> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(worker.authority()))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let mut connection = BufReader::new(stream);
    connection.get_mut().write_all(fetch::MAGIC).await?;
    Ok(connection)
}

impl Fetch {
    /// The next Flight message, `None` at the end. A failed query comes back as the worker's
    /// status; a broken connection as a transport failure.
    pub async fn message(&mut self) -> Result<Option<FlightData>, Status> {
        let Some(connection) = self.taken.connection.as_mut() else {
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
            return Err(self.broken(io::Error::new(
                io::ErrorKind::InvalidData,
                "fetch frame over the message limit",
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

    /// The fetch ended as the exchange says: the connection takes the next one.
    fn finish(&mut self) {
        let connection = self.taken.connection.take();
        Taken {
            worker: self.taken.worker,
            connection,
        }
        .give_back();
    }

    /// The connection cannot be trusted any further: it is closed.
    fn broken(&mut self, e: io::Error) -> Status {
        self.taken.connection = None;
        with_worker_entry(self.taken.worker, |c| c.open = c.open.saturating_sub(1));
        transport(&self.endpoint, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::pool::WorkerPool;

    /// A worker that hangs up on the exchange's first bytes (one that does not speak it) gets
    /// its DoGets over gRPC, and no connection stays counted against it.
    #[tokio::test]
    async fn a_worker_that_hangs_up_on_the_exchange_gets_grpc() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut magic = [0u8; 4];
                let _ = stream.read_exact(&mut magic).await;
                drop(stream);
            }
        });
        let pool = WorkerPool::new("p");
        let worker = pool.add(&format!("grpc://{addr}")).unwrap();
        assert!(!worker.fetch_refused());
        assert!(start(&worker, b"ticket", "grant").await.is_none());
        assert!(worker.fetch_refused());
        // Refused for a while: not even tried again.
        assert!(start(&worker, b"ticket", "grant").await.is_none());
        CONNECTIONS.with(|all| assert_eq!(all.borrow()[&worker.id()].open, 0));
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
        assert!(!worker.fetch_refused());
        CONNECTIONS.with(|all| assert_eq!(all.borrow()[&worker.id()].open, 0));
    }
}
