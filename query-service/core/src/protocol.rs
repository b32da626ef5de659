//! What a gateway and its workers agree on besides Flight SQL itself: the grant header every
//! worker call carries, the action that creates a prepared statement from an admitted ticket,
//! the claim of a standby worker and the health services that say whether it may be claimed,
//! the header that reports a worker's state, message limits, and the default catalog names.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::ticket::{QueryTicket, TicketKind, TicketSigner};

/// True for a Flight message whose IPC header (`FlightData::data_header`) is a record batch,
/// the first message of an answer that carries rows (schema and dictionaries come before).
/// Unreadable headers count as rows, so nothing waits on them.
pub fn carries_rows(data_header: &[u8]) -> bool {
    arrow::ipc::root_as_message(data_header)
        .map(|m| m.header_type() == arrow::ipc::MessageHeader::RecordBatch)
        .unwrap_or(true)
}

/// Header of the gateway's grant on every call to a worker.
pub const GRANT_HEADER: &str = "x-quiver-grant";
/// Action the gateway sends to create a prepared statement: its body is an admitted ticket.
pub const CREATE_ADMITTED_PREPARED: &str = "quiver.CreatePreparedStatement";
/// Action that claims a standby worker for a pool: its body is the pool's catalog document (the
/// YAML of a worker's `--catalog` file; JSON is YAML too), at most [`MAX_CLAIM_BYTES`].
pub const CLAIM_ACTION: &str = "quiver.Claim";
/// Largest claim body a worker reads: catalogs list tables, not data.
pub const MAX_CLAIM_BYTES: usize = 1 << 20;
/// gRPC health service a worker reports SERVING on while it is a warm, unclaimed standby that a
/// claim may take, and NOT_SERVING otherwise (warming, claiming, claimed, stopping, or started
/// with a catalog). The empty service name stays "serves queries".
pub const STANDBY_HEALTH_SERVICE: &str = "quiver.Standby";
/// gRPC health service a worker reports SERVING on while it is fit for its role: a warm
/// claimable standby, a claimed standby loading its catalog, or a worker serving queries;
/// NOT_SERVING while warming and while draining. Standby pods use it as their readiness probe,
/// so a pod moved into a pool is listed in the pool's endpoints before it serves queries, the
/// gateway claims it, and it stays listed while it loads.
pub const READY_HEALTH_SERVICE: &str = "quiver.Ready";
/// Response metadata a worker sets when it refuses a call because of its own state (warming
/// up, draining): a fact about the worker the gateway may act on, unlike error text.
pub const WORKER_STATE_HEADER: &str = "x-quiver-worker-state";
/// Largest gRPC message a worker accepts or sends; Flight batches are split well below it.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Longest a query may run by default, from planning to its last batch (gateway and worker).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Catalog unqualified table names resolve in.
pub const DEFAULT_CATALOG: &str = "quiver";
/// Schema unqualified table names resolve in.
pub const DEFAULT_SCHEMA: &str = "public";

/// The header value granting a worker call (no statement: statements travel as tickets).
pub fn grant_header(signer: &TicketSigner, catalogs: &[String]) -> String {
    let grant = QueryTicket {
        catalogs: Some(catalogs.to_vec()),
        ..QueryTicket::new(TicketKind::Admitted, "")
    };
    STANDARD.encode(signer.sign(&grant))
}

/// True when `header` is a genuine, unexpired grant.
pub fn is_granted(signer: &TicketSigner, header: &str) -> bool {
    STANDARD
        .decode(header)
        .is_ok_and(|bytes| signer.verify(&bytes, TicketKind::Admitted).is_ok())
}
