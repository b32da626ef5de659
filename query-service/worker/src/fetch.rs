//! The worker's end of the fetch exchange (`quiver_core::fetch`), on the Flight port: each
//! accepted connection is told apart by its first bytes, fetch connections are served here
//! and HTTP/2 ones handed to tonic once their preface has arrived.
//!
//! A fetch runs as the Flight service's own DoGet, after the same grant check the gRPC path's
//! interceptor makes, so authority is checked the same way whichever way a query arrives.
//! Everything a peer can make the worker hold is bounded: connections still being told apart
//! (and how long each may take), fetch connections open at once, a request's size and how long
//! it may take to arrive, and how long a connection may sit idle. A peer that closes its connection mid-fetch ends the query.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{FlightData, Ticket};
use futures::{FutureExt, Stream, StreamExt};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tonic::{Request, Status};

use crate::flight::{WorkerService, check_grant};
use quiver_core::accepted::Accepted;
use quiver_core::fetch;
use quiver_core::protocol::{GRANT_HEADER, MAX_MESSAGE_BYTES, WORKER_STATE_HEADER, carries_rows};
use quiver_core::ticket::TicketSigner;

/// Connections whose first bytes are still awaited, at most; further ones wait in the backlog.
const MAX_SNIFFING: usize = 1024;
/// Fetch connections open at once, at most (a gateway keeps at most 128 per io thread): past
/// it a new one is closed unanswered, and a gateway that sees that sends this worker its
/// DoGets over gRPC for a while.
const MAX_FETCH_CONNECTIONS: usize = 4096;
/// HTTP/2 connections open at once, at most (a gateway opens one per io thread, and one more
/// for health): past it a new one is closed unanswered.
const MAX_HTTP2_CONNECTIONS: usize = 1024;
/// A connection that has not sent the fetch magic or HTTP/2's preface by then is dropped.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Pause before peeking again at a connection that has sent part of the magic or preface.
const PARTIAL_RETRY: Duration = Duration::from_millis(5);
/// A request whose length has arrived must arrive whole within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A fetch connection idle this long between requests is closed (the gateway reopens one).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Frames gathered into one write at most, when several are ready at once.
const WRITE_BATCH_BYTES: usize = 1 << 20;

/// What a peer may make [`accept`] hold.
#[derive(Debug, Clone, Copy)]
struct Limits {
    fetch: usize,
    http2: usize,
    /// How long a connection may take to say what it speaks.
    sniff: Duration,
}

const LIMITS: Limits = Limits {
    fetch: MAX_FETCH_CONNECTIONS,
    http2: MAX_HTTP2_CONNECTIONS,
    sniff: SNIFF_TIMEOUT,
};

/// HTTP/2 connections accepted on `listener`, for tonic; fetch connections are served on the
/// way. The accept task and every fetch connection end when the returned stream is dropped.
pub(crate) fn incoming(
    listener: TcpListener,
    service: WorkerService,
    signer: TicketSigner,
) -> impl Stream<Item = io::Result<Accepted<TcpStream>>> + Send + 'static {
    accept(listener, LIMITS, move |stream, closed| {
        serve(stream, service.clone(), signer.clone(), closed)
    })
}

/// [`incoming`] with fetch connections served by `serve_fetch`, within `limits`.
fn accept<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    serve_fetch: F,
) -> impl Stream<Item = io::Result<Accepted<TcpStream>>> + Send + 'static
where
    F: Fn(TcpStream, watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve_fetch = Arc::new(serve_fetch);
    let (http2, rx) = mpsc::channel::<Accepted<TcpStream>>(128);
    let (closed_tx, closed) = watch::channel(false);
    let sniffing = Arc::new(Semaphore::new(MAX_SNIFFING));
    let fetching = Arc::new(Semaphore::new(limits.fetch));
    let http2_open = Arc::new(Semaphore::new(limits.http2));
    let accept = tokio::spawn(async move {
        loop {
            let Ok(slot) = sniffing.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (http2, serve_fetch, fetching, http2_open, closed) = (
                http2.clone(),
                serve_fetch.clone(),
                fetching.clone(),
                http2_open.clone(),
                closed.clone(),
            );
            tokio::spawn(async move {
                let Ok(Ok(speaks)) = tokio::time::timeout(limits.sniff, sniff(&stream)).await
                else {
                    return;
                };
                drop(slot);
                if speaks == Speaks::Fetch {
                    let Ok(_open) = fetching.try_acquire_owned() else {
                        tracing::debug!("too many fetch connections; closing a new one");
                        return;
                    };
                    serve_fetch(stream, closed).await;
                } else {
                    let Ok(place) = http2_open.try_acquire_owned() else {
                        tracing::debug!("too many HTTP/2 connections; closing a new one");
                        return;
                    };
                    let _ = http2.send(Accepted::new(stream, place)).await;
                }
            });
        }
    });
    let guard = Closing {
        accept,
        closed: closed_tx,
    };
    futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv().await.map(|stream| (Ok(stream), (rx, guard)))
    })
}

/// Stops accepting and ends the fetch connections when tonic drops its incoming stream.
struct Closing {
    accept: tokio::task::JoinHandle<()>,
    closed: watch::Sender<bool>,
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = self.closed.send(true);
    }
}

/// What a new connection speaks.
#[derive(Debug, PartialEq, Eq)]
enum Speaks {
    Fetch,
    Http2,
}

/// The client preface every HTTP/2 (gRPC) connection opens with.
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the connection speaks, from its first bytes, which are left unread: the fetch magic,
/// or HTTP/2's whole preface. The HTTP/2 server would wait for the rest of a preface forever
/// (its keepalive pings start after it), so a connection goes to it only once its preface has
/// arrived; one that sends neither is refused here, as the server would refuse it.
async fn sniff(stream: &TcpStream) -> io::Result<Speaks> {
    let mut first = [0u8; HTTP2_PREFACE.len()];
    loop {
        let seen = stream.peek(&mut first).await?;
        if seen == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let seen = &first[..seen];
        if seen.starts_with(fetch::MAGIC) {
            return Ok(Speaks::Fetch);
        }
        if seen == HTTP2_PREFACE {
            return Ok(Speaks::Http2);
        }
        if !fetch::MAGIC.starts_with(seen) && !HTTP2_PREFACE.starts_with(seen) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "neither the fetch exchange nor HTTP/2",
            ));
        }
        // Part of either so far (peers send it in one write, so this is rare): look again
        // shortly rather than spin on what is already buffered.
        tokio::time::sleep(PARTIAL_RETRY).await;
    }
}

/// Serves fetches on one connection, one after another, until the peer closes it, it idles too
/// long, a request is malformed, or the worker stops.
async fn serve(
    stream: TcpStream,
    service: WorkerService,
    signer: TicketSigner,
    mut closed: watch::Receiver<bool>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut magic = [0u8; 4];
    if reader.read_exact(&mut magic).await.is_err() {
        return;
    }
    // Taken: the gateway reads this before any frame, so a close after it means the worker
    // failed with the request in hand (`quiver_core::fetch`).
    if writer.write_all(fetch::MAGIC).await.is_err() {
        return;
    }
    // A peer that has not sent a request yet has shown nothing: it gets as long as a sniff.
    let mut wait = SNIFF_TIMEOUT;
    loop {
        let len = tokio::select! {
            len = tokio::time::timeout(wait, reader.read_u32()) => match len {
                Ok(Ok(len)) => len as usize,
                _ => return,
            },
            _ = closed.wait_for(|closed| *closed) => return,
        };
        if len > MAX_MESSAGE_BYTES {
            let _ = send_error(
                &mut writer,
                &Status::invalid_argument("fetch request too large"),
            )
            .await;
            return;
        }
        // Memory follows the bytes that arrive, not the length a peer claims.
        let mut body = Vec::new();
        let mut request = (&mut reader).take(len as u64);
        match tokio::time::timeout(REQUEST_TIMEOUT, request.read_to_end(&mut body)).await {
            Ok(Ok(n)) if n == len => {}
            _ => return,
        }
        let Ok((ticket, grant_value)) = fetch::decode_request(&body) else {
            let _ = send_error(
                &mut writer,
                &Status::invalid_argument("malformed fetch request"),
            )
            .await;
            return;
        };
        let answered = tokio::select! {
            answered = run(&service, &signer, ticket, grant_value, &mut reader, &mut writer) => answered,
            _ = closed.wait_for(|closed| *closed) => return,
        };
        if answered.is_err() {
            return;
        }
        wait = IDLE_TIMEOUT;
    }
}

/// Runs one fetch and writes its frames. An error means the connection is unusable.
async fn run(
    service: &WorkerService,
    signer: &TicketSigner,
    ticket: &[u8],
    grant: &str,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
) -> io::Result<()> {
    if let Err(status) = check_grant(signer, Some(grant)) {
        return send_error(writer, &status).await;
    }
    let mut request = Request::new(Ticket::new(ticket.to_vec()));
    match grant.parse() {
        Ok(value) => {
            request.metadata_mut().insert(GRANT_HEADER, value);
        }
        Err(_) => return send_error(writer, &Status::unauthenticated("invalid grant")).await,
    }
    let mut results = match FlightService::do_get(service, request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return send_error(writer, &status).await,
    };
    let mut out = Vec::new();
    let mut probe = [0u8; 1];
    // Messages before the first batch (the schema, dictionaries) wait for it: the gateway holds
    // them until rows arrive anyway, so sending them alone costs both sides a wake-up.
    let mut rows_seen = false;
    loop {
        // The peer sends nothing while a fetch streams: a read that returns means it closed
        // the connection (or broke the protocol), and the query ends here.
        let next = tokio::select! {
            next = results.next() => next,
            _ = reader.read(&mut probe) => return Err(io::ErrorKind::ConnectionAborted.into()),
        };
        let mut next = Some(next);
        // Gather what is ready now into one write.
        while let Some(item) = next.take() {
            match item {
                Some(Ok(data)) => {
                    rows_seen |= carries_rows(&data.data_header);
                    push_data(&mut out, &data);
                    if out.len() < WRITE_BATCH_BYTES {
                        next = results.next().now_or_never();
                    }
                }
                Some(Err(status)) => {
                    out.extend_from_slice(&error_frame(&status));
                    writer.write_all(&out).await?;
                    return Ok(());
                }
                None => {
                    out.extend_from_slice(&fetch::frame_header(fetch::FRAME_END, 0));
                    writer.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        if rows_seen || out.len() >= WRITE_BATCH_BYTES {
            writer.write_all(&out).await?;
            out.clear();
        }
    }
}

fn push_data(out: &mut Vec<u8>, data: &FlightData) {
    out.extend_from_slice(&fetch::frame_header(fetch::FRAME_DATA, data.encoded_len()));
    data.encode(out).expect("a Vec grows as needed");
}

fn error_frame(status: &Status) -> Vec<u8> {
    let state = status
        .metadata()
        .get(WORKER_STATE_HEADER)
        .and_then(|v| v.to_str().ok());
    let message = crate::status::bounded(status.message());
    let payload = fetch::encode_error(status.code() as i32, state, &message);
    let mut frame = fetch::frame_header(fetch::FRAME_ERROR, payload.len()).to_vec();
    frame.extend_from_slice(&payload);
    frame
}

async fn send_error(writer: &mut OwnedWriteHalf, status: &Status) -> io::Result<()> {
    writer.write_all(&error_frame(status)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the cap a new fetch connection is closed unserved; one that ends frees its place.
    #[tokio::test]
    async fn fetch_connections_past_the_cap_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (opened_tx, mut opened) = mpsc::unbounded_channel::<()>();
        let (ended_tx, mut ended) = mpsc::unbounded_channel::<()>();
        let limits = Limits { fetch: 2, ..LIMITS };
        let _incoming = accept(listener, limits, move |mut stream, _closed| {
            let (opened, ended) = (opened_tx.clone(), ended_tx.clone());
            async move {
                let _ = opened.send(());
                // Held until the peer closes it.
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
                let _ = ended.send(());
            }
        });
        let fetch = || async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(fetch::MAGIC).await.unwrap();
            stream
        };
        let first = fetch().await;
        let _second = fetch().await;
        opened.recv().await.unwrap();
        opened.recv().await.unwrap();

        let mut third = fetch().await;
        let mut byte = [0u8; 1];
        // The timeout only turns a regression (the third served and held open) into a failure.
        let read = tokio::time::timeout(Duration::from_secs(30), third.read(&mut byte))
            .await
            .expect("the third connection was held open");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        drop(first);
        ended.recv().await.unwrap();
        let _fourth = fetch().await;
        opened.recv().await.unwrap();
        assert!(
            opened.try_recv().is_err(),
            "only the first, second and fourth were served"
        );
    }

    /// The next connection handed to the HTTP/2 server, which must be `peer`'s (the timeout
    /// only turns a regression into a failure).
    async fn handed_over(
        incoming: &mut (impl Stream<Item = io::Result<Accepted<TcpStream>>> + Unpin),
        peer: &TcpStream,
    ) -> Accepted<TcpStream> {
        let handed = tokio::time::timeout(Duration::from_secs(30), incoming.next())
            .await
            .expect("handed over")
            .unwrap()
            .unwrap();
        assert_eq!(
            handed.get_ref().peer_addr().unwrap(),
            peer.local_addr().unwrap()
        );
        handed
    }

    /// A connection goes to the HTTP/2 server only with its whole preface; one that stops
    /// part-way is dropped when its time is up, and one that speaks neither protocol at once.
    #[tokio::test]
    async fn http2_connections_are_handed_over_with_their_whole_preface() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            http2: 1,
            sniff: Duration::from_secs(5),
            ..LIMITS
        };
        let incoming = accept(listener, limits, |_stream, _closed| async {});
        tokio::pin!(incoming);
        // Whether the worker closed it; the timeout only turns a regression (held open) into
        // a failure.
        let closed = |mut stream: TcpStream| async move {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte));
            matches!(read.await, Ok(Ok(0) | Err(_)))
        };

        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(&HTTP2_PREFACE[..4]).await.unwrap();
        let mut other = TcpStream::connect(addr).await.unwrap();
        other.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(
            closed(other).await,
            "a connection speaking neither is dropped"
        );

        // A new HTTP/2 peer that has sent its preface.
        let http2 = || async {
            let mut peer = TcpStream::connect(addr).await.unwrap();
            peer.write_all(HTTP2_PREFACE).await.unwrap();
            peer
        };

        let whole = http2().await;
        let handed = handed_over(&mut incoming, &whole).await;
        // Past the cap a new HTTP/2 connection is closed; the handed one keeps its place.
        assert!(closed(http2().await).await, "past the cap");
        drop(handed);
        // A closed connection gives its place back.
        let third = http2().await;
        let handed = handed_over(&mut incoming, &third).await;

        assert!(
            closed(partial).await,
            "a partial preface is dropped in time"
        );
        let mut rest = [0u8; HTTP2_PREFACE.len()];
        assert_eq!(
            handed.get_ref().peek(&mut rest).await.unwrap(),
            rest.len(),
            "left unread"
        );
    }
}
