//! Where the worker's errors become gRPC statuses, chosen for what the gateway and the client
//! should do next: fix the query, back off, or report a bug (details stay in the log).

use std::borrow::Cow;

use tonic::Status;

use crate::engine::EngineError;
use quiver_core::protocol::{MAX_MESSAGE_BYTES, WORKER_STATE_HEADER};

/// Bytes of an error message sent at most. A query can put its own values in one (a failed
/// cast quotes the value), and a status message travels in a header, which peers bound.
pub const MAX_STATUS_MESSAGE: usize = 16 << 10;

impl From<EngineError> for Status {
    fn from(err: EngineError) -> Self {
        let message = || bounded(&err.to_string()).into_owned();
        match &err {
            EngineError::InvalidQuery(_) | EngineError::NotSupported(_) => {
                Status::invalid_argument(message())
            }
            EngineError::MemoryLimit { .. } => Status::resource_exhausted(message()),
            EngineError::Forbidden { .. } => Status::permission_denied(message()),
            EngineError::Timeout { .. } => Status::deadline_exceeded(message()),
            EngineError::Execution(source) => match source.find_root() {
                datafusion::error::DataFusionError::Internal(_) => {
                    tracing::error!(error = %source, "internal error in query execution");
                    Status::internal("internal error in query execution; see the worker log")
                }
                _ => Status::internal(message()),
            },
        }
    }
}

/// `message`, cut to [`MAX_STATUS_MESSAGE`] bytes (on a character boundary) if longer.
pub fn bounded(message: &str) -> Cow<'_, str> {
    if message.len() <= MAX_STATUS_MESSAGE {
        return Cow::Borrowed(message);
    }
    let mut end = MAX_STATUS_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… (cut at {MAX_STATUS_MESSAGE} bytes)",
        &message[..end]
    ))
}

/// A result message over [`MAX_MESSAGE_BYTES`] (Flight splits batches by rows, so a single
/// row this large makes one) is the query's own error, the same on every worker: gRPC would
/// refuse to encode it, and a gateway to read it from the fetch exchange.
pub fn over_message_limit(bytes: usize) -> Status {
    Status::resource_exhausted(format!(
        "a result message of {bytes} bytes is over the {} MiB limit on one message: a row this \
         large cannot be sent; select less of it (e.g. with substr)",
        MAX_MESSAGE_BYTES >> 20
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(MAX_STATUS_MESSAGE);
        let cut = bounded(&long);
        assert!(cut.len() < MAX_STATUS_MESSAGE + 64, "{}", cut.len());
        assert!(cut.ends_with(&format!("(cut at {MAX_STATUS_MESSAGE} bytes)")));
    }
}
