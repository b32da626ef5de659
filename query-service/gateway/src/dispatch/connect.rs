//! Opening a connection to a worker, for the fetch exchange and for gRPC alike: a connection
//! that fails to open carries [`NotSent`], so the dispatcher never counts it against the
//! statement it was for, whatever the cause (refused, timed out, or the gateway out of
//! descriptors). The gRPC stack's own connector reports some of those as plain I/O errors
//! that cannot be told from a worker failing mid-call.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// Connecting to a worker on the same network should take milliseconds; a second means it is gone.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection to a worker could not be opened: nothing was sent on it.
#[derive(Debug, thiserror::Error)]
#[error("not sent: {0}")]
pub struct NotSent(#[source] pub io::Error);

/// A TCP connection to `authority` (`host:port`), with Nagle off: requests are small and
/// each is written whole.
pub async fn open(authority: &str) -> Result<TcpStream, NotSent> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| NotSent(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
        .map_err(NotSent)?;
    stream.set_nodelay(true).map_err(NotSent)?;
    Ok(stream)
}

/// A gRPC channel with `endpoint`'s HTTP/2 settings whose connections [`open`] makes, to
/// `authority` (the channel only ever reaches its one worker).
pub fn channel(endpoint: &Endpoint, authority: &str) -> Channel {
    endpoint.connect_with_connector_lazy(Connector {
        authority: authority.into(),
    })
}

/// The channel's connector: every connection goes to the one worker.
#[derive(Clone)]
struct Connector {
    authority: Arc<str>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = NotSent;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, NotSent>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), NotSent>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let authority = self.authority.clone();
        Box::pin(async move { open(&authority).await.map(TokioIo::new) })
    }
}
