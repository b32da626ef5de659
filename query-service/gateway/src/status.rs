//! The one place where stage errors become gRPC statuses.
//!
//! Codes are chosen for what the client should do next: fix the query (`INVALID_ARGUMENT`),
//! back off and retry (`RESOURCE_EXHAUSTED`, `UNAVAILABLE`), re-authenticate (`UNAUTHENTICATED`),
//! or report a bug (`INTERNAL`, whose details stay in the log).

use tonic::Status;

use crate::admission::AdmissionError;
use crate::auth::AuthError;
use crate::dispatch::DispatchError;

impl From<DispatchError> for Status {
    fn from(err: DispatchError) -> Self {
        match err {
            DispatchError::NoReadyWorker { .. }
            | DispatchError::WakeTimeout { .. }
            | DispatchError::WorkerFailed { .. }
            | DispatchError::UnknownPool { .. } => Status::unavailable(err.to_string()),
            DispatchError::Worker(status) => *status,
            // Not until the window passes: retrying would only stop another worker.
            DispatchError::HeldBack { .. } | DispatchError::OnProbation { .. } => {
                Status::failed_precondition(err.to_string())
            }
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
