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
///
/// It reads the one field it needs, with every offset bounds-checked, instead of running the
/// flatbuffer verifier over the whole message: the gateway asks this of every message it
/// relays, and verifying a schema message walks all of its fields.
pub fn carries_rows(data_header: &[u8]) -> bool {
    ipc_header_type(data_header).is_none_or(|t| t == arrow::ipc::MessageHeader::RecordBatch.0)
}

/// The `header_type` field (field 1, a byte) of an Arrow IPC `Message` flatbuffer, or `None`
/// when an offset points outside the buffer. An absent field is its default, 0 (`NONE`).
fn ipc_header_type(buf: &[u8]) -> Option<u8> {
    const HEADER_TYPE_SLOT: usize = 4 + 2;
    let u16_at = |at: usize| {
        Some(u16::from_le_bytes(
            buf.get(at..at.checked_add(2)?)?.try_into().ok()?,
        ))
    };
    let u32_at = |at: usize| {
        Some(u32::from_le_bytes(
            buf.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    // Root: offset of the table; table: signed distance back to its vtable.
    let table = usize::try_from(u32_at(0)?).ok()?;
    let back = i64::from(i32::from_le_bytes(u32_at(table)?.to_le_bytes()));
    let vtable = usize::try_from(i64::try_from(table).ok()?.checked_sub(back)?).ok()?;
    let vtable_len = usize::from(u16_at(vtable)?);
    if vtable_len < HEADER_TYPE_SLOT + 2 {
        return Some(0);
    }
    match usize::from(u16_at(vtable.checked_add(HEADER_TYPE_SLOT)?)?) {
        0 => Some(0),
        field => buf.get(table.checked_add(field)?).copied(),
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, DictionaryArray, Int32Array};
    use arrow::datatypes::{DataType, Field, Int32Type, Schema};
    use arrow::ipc::writer::{
        DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions,
    };
    use arrow::record_batch::RecordBatch;

    use super::*;

    /// What the flatbuffer verifier says of the same bytes.
    fn verified(header: &[u8]) -> bool {
        arrow::ipc::root_as_message(header)
            .map(|m| m.header_type() == arrow::ipc::MessageHeader::RecordBatch)
            .unwrap_or(true)
    }

    /// The schema, a dictionary and a record batch, as IPC message headers.
    fn messages() -> Vec<Vec<u8>> {
        let dict: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int32, false),
            Field::new("d", dict.data_type().clone(), false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int32Array::from(vec![1, 2, 3])), Arc::new(dict)],
        )
        .unwrap();
        let generator = IpcDataGenerator::default();
        let options = IpcWriteOptions::default();
        let mut tracker = DictionaryTracker::new(false);
        let schema =
            generator.schema_to_bytes_with_dictionary_tracker(&schema, &mut tracker, &options);
        let (dictionaries, batch) = generator
            .encode(
                &batch,
                &mut tracker,
                &options,
                &mut IpcWriteContext::default(),
            )
            .unwrap();
        assert_eq!(dictionaries.len(), 1);
        vec![
            schema.ipc_message,
            dictionaries[0].ipc_message.clone(),
            batch.ipc_message,
        ]
    }

    #[test]
    fn tells_a_record_batch_from_schema_and_dictionary() {
        let [schema, dictionary, batch] = <[Vec<u8>; 3]>::try_from(messages()).unwrap();
        assert!(!carries_rows(&schema));
        assert!(!carries_rows(&dictionary));
        assert!(carries_rows(&batch));
    }

    /// Cut or corrupted headers never read outside the buffer, and whatever the field read
    /// says about a message the verifier accepts, the verifier says too.
    #[test]
    fn damaged_headers_are_read_safely() {
        for message in messages() {
            for len in 0..message.len() {
                let cut = &message[..len];
                if arrow::ipc::root_as_message(cut).is_ok() {
                    assert_eq!(carries_rows(cut), verified(cut), "cut to {len}");
                }
            }
            for at in 0..message.len() {
                for byte in [0x00, 0x7f, 0x80, 0xff] {
                    let mut bent = message.clone();
                    bent[at] = byte;
                    if arrow::ipc::root_as_message(&bent).is_ok() {
                        assert_eq!(carries_rows(&bent), verified(&bent), "byte {at} = {byte}");
                    } else {
                        carries_rows(&bent);
                    }
                }
            }
        }
        assert!(carries_rows(&[]), "an empty header counts as rows");
    }
}
