//! A connection as a gateway or a worker hands it to its HTTP/2 server: it holds one of the
//! server's places for connections while it is open, and it must begin (the HTTP/2 preface)
//! within [`PREFACE_TIMEOUT`] of being handed over.
//!
//! An idle connection costs a descriptor and buffers, and one that never sends a byte is held
//! by the HTTP/2 server forever (its keepalive pings start only once the preface has arrived).
//! Without both bounds a single peer could open connections until the process runs out of
//! descriptors, and then nobody else could connect (nor a gateway reach its workers).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tonic::transport::server::Connected;

/// Bytes of the HTTP/2 client preface (`PRI * HTTP/2.0…`), which a gRPC client sends at once.
const PREFACE_BYTES: usize = 24;
/// How long a connection may take to send its preface, once accepted (and, under TLS, once
/// its handshake is done).
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// Once it has begun, the HTTP/2 server pings a quiet connection this often and drops it when
/// no answer comes within [`KEEPALIVE_TIMEOUT`]: it finds peers that vanished without closing.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A served connection and its place.
pub struct Accepted<S> {
    io: S,
    /// Given back when the connection closes.
    _place: OwnedSemaphorePermit,
    /// Until the preface has arrived: when it must have, and how much of it has.
    preface: Option<(Pin<Box<Sleep>>, usize)>,
}

impl<S> Accepted<S> {
    /// `io`, holding `place` until it closes.
    pub fn new(io: S, place: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            _place: place,
            preface: Some((Box::pin(tokio::time::sleep(PREFACE_TIMEOUT)), 0)),
        }
    }

    /// The connection itself.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Accepted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some((deadline, seen)) = &mut this.preface else {
            return polled;
        };
        match &polled {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                *seen += read;
                // The preface has arrived, or the peer closed: nothing left to time.
                if *seen >= PREFACE_BYTES || read == 0 {
                    this.preface = None;
                }
                polled
            }
            Poll::Ready(Err(_)) => polled,
            // Polled with the read, so the deadline wakes this task if nothing arrives.
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface in time",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Accepted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<S: Connected> Connected for Accepted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Semaphore;

    use super::*;

    fn place(places: &Arc<Semaphore>) -> OwnedSemaphorePermit {
        places.clone().try_acquire_owned().unwrap()
    }

    /// A peer that sends nothing, or only part of the preface, is cut off at the deadline and
    /// its place given back; one that sent the preface is not timed any more.
    #[tokio::test(start_paused = true)]
    async fn a_connection_must_begin_in_time() {
        let places = Arc::new(Semaphore::new(3));
        let (_peer, io) = tokio::io::duplex(1024);
        let mut silent = Accepted::new(io, place(&places));
        let (mut partial_peer, io) = tokio::io::duplex(1024);
        let mut partial = Accepted::new(io, place(&places));
        partial_peer.write_all(b"PRI * HTTP").await.unwrap();
        let (mut client, io) = tokio::io::duplex(1024);
        let mut started = Accepted::new(io, place(&places));
        client.write_all(&[b'x'; PREFACE_BYTES]).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(started.read(&mut buf).await.unwrap(), PREFACE_BYTES);
        assert_eq!(partial.read(&mut buf).await.unwrap(), 10);
        assert_eq!(places.available_permits(), 0);

        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let err = partial.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop((silent, partial));
        assert_eq!(places.available_permits(), 2, "their places are given back");
        // The started connection may stay quiet past the deadline now.
        tokio::time::sleep(PREFACE_TIMEOUT * 2).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(started.read(&mut buf).await.unwrap(), 5);
    }
}
