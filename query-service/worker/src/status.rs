//! Where the worker's errors become gRPC statuses, chosen for what the gateway and the client
//! should do next: fix the query, back off, or report a bug (details stay in the log).

use tonic::Status;

use crate::engine::EngineError;
use quiver_core::protocol::WORKER_STATE_HEADER;

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

/// A status for "the server is not ready yet": the client should retry shortly. It carries
/// [`WORKER_STATE_HEADER`], a fact a query cannot set, so the gateway retries elsewhere.
pub fn warming_up() -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(WORKER_STATE_HEADER, "warming-up".parse().expect("ascii"));
    Status::with_metadata(
        tonic::Code::Unavailable,
        "the worker is still warming up its catalog",
        metadata,
    )
}
