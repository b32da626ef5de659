//! Authentication before the message is read: every call except the Handshake must present
//! valid credentials in its headers, checked here before tonic decodes (or even receives) its
//! body, so an unauthenticated caller cannot make the gateway read, buffer or parse anything.
//! The caller's [`Identity`] rides in the request's extensions to the service.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

use crate::admission::Admission;
use crate::auth::{self, Identity};
use quiver_core::seal::Sealer;

/// The one method that authenticates by itself (Basic credentials in, a session token out).
const HANDSHAKE_PATH: &str = "/arrow.flight.protocol.FlightService/Handshake";

/// Wraps the gateway's Flight service with header authentication.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    admission: Arc<Admission>,
    sealer: Arc<Sealer>,
}

impl<S> Authenticated<S> {
    /// Authenticates calls to `inner` under `admission`'s policy, opening session tokens with
    /// the gateway's `sealer`.
    pub fn new(inner: S, admission: Arc<Admission>, sealer: Arc<Sealer>) -> Self {
        Self {
            inner,
            admission,
            sealer,
        }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tonic::codegen::Service<http::Request<Body>> for Authenticated<S>
where
    S: tonic::codegen::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures::future::Either<
        S::Future,
        std::future::Ready<Result<http::Response<Body>, Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != HANDSHAKE_PATH {
            let header = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            let policy = self.admission.policy();
            match auth::authenticate_header(&policy, &self.sealer, header) {
                Ok(identity) => {
                    request.extensions_mut().insert::<Identity>(identity);
                }
                Err(e) => {
                    let status = tonic::Status::from(e);
                    return futures::future::Either::Right(std::future::ready(Ok(
                        status.into_http()
                    )));
                }
            }
        }
        futures::future::Either::Left(self.inner.call(request))
    }
}
