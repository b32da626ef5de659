//! The one place where stage errors become gRPC statuses.
//!
//! Codes are chosen for what the client should do next: fix the query (`INVALID_ARGUMENT`),
//! back off and retry (`RESOURCE_EXHAUSTED`, `UNAVAILABLE`), re-authenticate (`UNAUTHENTICATED`),
//! or report a bug (`INTERNAL`, whose details stay in the log).

use tonic::Status;

use crate::admission::AdmissionError;
use crate::auth::AuthError;
use crate::dispatch::DispatchError;
use crate::prepared::ParamError;
use crate::ticket::TicketError;
use crate::worker::engine::EngineError;

impl From<EngineError> for Status {
    fn from(err: EngineError) -> Self {
        match &err {
            EngineError::InvalidQuery(_) | EngineError::NotSupported(_) => {
                Status::invalid_argument(err.to_string())
            }
            EngineError::MemoryLimit { .. } => Status::resource_exhausted(err.to_string()),
            EngineError::Forbidden { .. } => Status::permission_denied(err.to_string()),
            EngineError::Timeout { .. } => Status::deadline_exceeded(err.to_string()),
            EngineError::Execution(source) => match source.find_root() {
                datafusion::error::DataFusionError::Internal(_) => {
                    tracing::error!(error = %source, "internal error in query execution");
                    Status::internal("internal error in query execution; see the worker log")
                }
                _ => Status::internal(err.to_string()),
            },
        }
    }
}

impl From<ParamError> for Status {
    fn from(err: ParamError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

impl From<TicketError> for Status {
    fn from(err: TicketError) -> Self {
        match err {
            TicketError::BadSignature | TicketError::Expired => {
                Status::unauthenticated(err.to_string())
            }
            TicketError::Malformed | TicketError::WrongKind { .. } => {
                Status::invalid_argument(err.to_string())
            }
        }
    }
}

impl From<DispatchError> for Status {
    fn from(err: DispatchError) -> Self {
        match err {
            DispatchError::NoReadyWorker { .. }
            | DispatchError::WorkerFailed { .. }
            | DispatchError::UnknownPool { .. } => Status::unavailable(err.to_string()),
            DispatchError::Worker(status) => *status,
            DispatchError::InvalidEndpoint { .. } => {
                tracing::error!(error = %err, "invalid worker endpoint in the pool");
                Status::internal("the gateway's worker pool is misconfigured; see the gateway log")
            }
        }
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        if let AuthError::Throttled(wait) = err {
            let mut metadata = tonic::metadata::MetadataMap::new();
            if let Ok(value) = wait.as_millis().max(1).to_string().parse() {
                metadata.insert(RETRY_AFTER_TRAILER, value);
            }
            return Status::with_metadata(
                tonic::Code::ResourceExhausted,
                err.to_string(),
                metadata,
            );
        }
        Status::unauthenticated(err.to_string())
    }
}

/// Trailer with how many milliseconds a rejected client should wait before retrying.
pub const RETRY_AFTER_TRAILER: &str = "retry-after-ms";

impl From<AdmissionError> for Status {
    fn from(err: AdmissionError) -> Self {
        match err {
            AdmissionError::Forbidden { .. } => return Status::permission_denied(err.to_string()),
            AdmissionError::InvalidSql(_) => return Status::invalid_argument(err.to_string()),
            _ => {}
        }
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(wait) = err.retry_after() {
            let ms = wait.as_millis().max(1).to_string();
            if let Ok(value) = ms.parse() {
                metadata.insert(RETRY_AFTER_TRAILER, value);
            }
        }
        Status::with_metadata(tonic::Code::ResourceExhausted, err.to_string(), metadata)
    }
}

/// Metadata a worker puts on a status about its own state (warming up), never on a query's
/// error: the gateway retries such a call on another worker. A query cannot set metadata, so
/// no text a query writes can make the gateway think a worker failed.
pub const WORKER_STATE_HEADER: &str = "x-quiver-worker-state";

/// A status for "the server is not ready yet": the client should retry shortly.
pub fn warming_up() -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(WORKER_STATE_HEADER, "warming-up".parse().expect("ascii"));
    Status::with_metadata(
        tonic::Code::Unavailable,
        "the worker is still warming up its catalog",
        metadata,
    )
}
