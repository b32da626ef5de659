//! Signed, stateless query tickets.
//!
//! A ticket carries the SQL it runs, so any worker can redeem it and any gateway replica can
//! forward it: no worker-local state has to survive between `GetFlightInfo` and `DoGet`. An
//! HMAC-SHA256 over the payload, keyed by a secret that the gateway and its workers share, stops a
//! client from forging or altering one.
//!
//! ```text
//!  "QV2" | sealed (crate::seal, domain Ticket) of the payload (JSON: kind, sql, issued_at_ms, …)
//! ```
//!
//! Prepared-statement handles carry their parameter schema and, once bound, the parameter row
//! (both as base64 Arrow IPC), so binding returns a new handle instead of storing anything: any
//! gateway replica can check it and any worker can run it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::seal::{Domain, SealError, Sealer, now_ms};

const MAGIC: &[u8] = b"QV2";

/// How long a statement ticket from `GetFlightInfo` may be redeemed: clients call `DoGet` right
/// after, so an hour only covers slow clients while bounding replay of a leaked ticket.
pub const STATEMENT_TICKET_TTL: Duration = Duration::from_secs(60 * 60);
/// How long a prepared-statement handle stays valid after it was created or last bound: BI tools
/// keep prepared statements for a whole working session, and binding issues a fresh handle, so
/// only a statement left idle this long expires.
pub const PREPARED_HANDLE_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// How long a gateway's grant to a worker stays valid: it is used at once (or on the retry a
/// moment later); the margin covers clock skew between pods.
pub const ADMITTED_TTL: Duration = Duration::from_secs(5 * 60);

/// What a ticket lets its bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketKind {
    /// Run a statement once (`TicketStatementQuery.statement_handle`).
    Statement,
    /// A prepared statement's handle, executable many times.
    Prepared,
    /// A gateway's grant to a worker: this exact text, for this tenant's catalogs. Only the
    /// gateway issues them and only workers accept them; a client never sees one.
    Admitted,
}

impl TicketKind {
    fn ttl(self) -> Duration {
        match self {
            TicketKind::Statement => STATEMENT_TICKET_TTL,
            TicketKind::Prepared => PREPARED_HANDLE_TTL,
            TicketKind::Admitted => ADMITTED_TTL,
        }
    }
}

/// The verified contents of a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryTicket {
    /// Statement ticket or prepared handle.
    pub kind: TicketKind,
    /// The SQL to run.
    pub sql: String,
    /// Issue time, milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
    /// A memory limit tighter than the worker's own, set by the query's resource group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// Prepared handles: the parameter schema the statement expects (base64 Arrow IPC schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_schema: Option<String>,
    /// The bound parameter row (base64 Arrow IPC stream of one batch with one row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
    /// Grants: the catalog patterns the tenant may read; the worker checks its plan against
    /// them. Absent means nothing may be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalogs: Option<Vec<String>>,
    /// Statement tickets from GetFlightInfo: a random id, so their first DoGet is not counted
    /// against the rate limits a second time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<u64>,
}

impl QueryTicket {
    /// A ticket of `kind` for `sql`, issued now, with nothing else set.
    pub fn new(kind: TicketKind, sql: &str) -> Self {
        Self {
            kind,
            sql: sql.to_owned(),
            issued_at_ms: now_ms(),
            memory_limit: None,
            param_schema: None,
            params: None,
            catalogs: None,
            nonce: None,
        }
    }
}

/// Why a ticket was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    /// The bytes are not a Quiver ticket at all.
    #[error("the ticket is not a Quiver ticket")]
    Malformed,
    /// The signature does not match: forged, altered, or signed with another key.
    #[error("the ticket's signature is invalid")]
    BadSignature,
    /// The ticket is older than its kind allows.
    #[error("the ticket has expired; request a new one with GetFlightInfo")]
    Expired,
    /// A statement ticket was used where a prepared handle was expected, or the reverse.
    #[error("expected a {expected:?} ticket, got a {actual:?} ticket")]
    WrongKind {
        /// The kind the call needs.
        expected: TicketKind,
        /// The kind presented.
        actual: TicketKind,
    },
}

/// Issues and verifies tickets with one shared key.
#[derive(Clone)]
pub struct TicketSigner {
    sealer: Sealer,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketSigner { key: <redacted> }")
    }
}

impl TicketSigner {
    /// A signer for `key`; gateway and workers must be given the same key.
    pub fn new(key: &[u8]) -> Self {
        Self {
            sealer: Sealer::new(key),
        }
    }

    /// A signer with a fresh random key, for a single process tree (`quiver up`, tests).
    pub fn random_key() -> String {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Signs a new ticket of `kind` for `sql`.
    pub fn issue(&self, kind: TicketKind, sql: &str) -> Vec<u8> {
        self.issue_limited(kind, sql, None)
    }

    /// Signs a ticket that also caps the query's memory at `memory_limit` bytes.
    pub fn issue_limited(&self, kind: TicketKind, sql: &str, memory_limit: Option<u64>) -> Vec<u8> {
        self.sign(&QueryTicket {
            memory_limit,
            ..QueryTicket::new(kind, sql)
        })
    }

    /// Signs `ticket` as it is (callers set `issued_at_ms`, normally via [`QueryTicket::new`]).
    pub fn sign(&self, ticket: &QueryTicket) -> Vec<u8> {
        let payload = serde_json::to_vec(ticket).expect("a ticket always serialises");
        let sealed = self
            .sealer
            .seal_at(Domain::Ticket, &payload, ticket.issued_at_ms);
        let mut out = Vec::with_capacity(MAGIC.len() + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&sealed);
        out
    }

    /// True when `bytes` claim to be a Quiver ticket (signed or not); used to tell tickets from
    /// plain SQL text before verifying.
    pub fn looks_like_ticket(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }

    /// Checks the signature, age and kind of a ticket and returns its contents.
    pub fn verify(&self, bytes: &[u8], expected: TicketKind) -> Result<QueryTicket, TicketError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(TicketError::Malformed)?;
        // The longest-lived kind bounds the seal; the kind's own limit is checked below.
        let opened = self
            .sealer
            .open(
                Domain::Ticket,
                rest,
                PREPARED_HANDLE_TTL.max(STATEMENT_TICKET_TTL),
            )
            .map_err(|e| match e {
                SealError::Malformed => TicketError::Malformed,
                SealError::BadSignature => TicketError::BadSignature,
                SealError::Expired => TicketError::Expired,
            })?;
        let ticket: QueryTicket =
            serde_json::from_slice(opened.payload).map_err(|_| TicketError::Malformed)?;
        if ticket.kind != expected {
            return Err(TicketError::WrongKind {
                expected,
                actual: ticket.kind,
            });
        }
        if opened.age() > ticket.kind.ttl() {
            return Err(TicketError::Expired);
        }
        Ok(ticket)
    }
}

/// Forged or expired tickets are the caller's credentials failing; malformed ones are bad input.
impl From<TicketError> for tonic::Status {
    fn from(err: TicketError) -> Self {
        match err {
            TicketError::BadSignature | TicketError::Expired => {
                tonic::Status::unauthenticated(err.to_string())
            }
            TicketError::Malformed | TicketError::WrongKind { .. } => {
                tonic::Status::invalid_argument(err.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let signer = TicketSigner::new(b"k");
        let t = signer.issue(TicketKind::Statement, "SELECT 1");
        let v = signer.verify(&t, TicketKind::Statement).unwrap();
        assert_eq!(v.sql, "SELECT 1");
        assert!(TicketSigner::looks_like_ticket(&t));
    }

    #[test]
    fn altered_sql_is_refused() {
        let signer = TicketSigner::new(b"k");
        let mut t = signer.issue(TicketKind::Statement, "SELECT 1");
        let at = t.windows(8).position(|w| w == b"SELECT 1").unwrap() + 7;
        t[at] = b'2';
        assert_eq!(
            signer.verify(&t, TicketKind::Statement),
            Err(TicketError::BadSignature)
        );
    }

    #[test]
    fn other_key_is_refused() {
        let t = TicketSigner::new(b"a").issue(TicketKind::Statement, "SELECT 1");
        assert_eq!(
            TicketSigner::new(b"b").verify(&t, TicketKind::Statement),
            Err(TicketError::BadSignature)
        );
    }

    #[test]
    fn kind_is_checked() {
        let signer = TicketSigner::new(b"k");
        let t = signer.issue(TicketKind::Prepared, "SELECT 1");
        assert!(matches!(
            signer.verify(&t, TicketKind::Statement),
            Err(TicketError::WrongKind { .. })
        ));
    }

    #[test]
    fn expired_is_refused() {
        let signer = TicketSigner::new(b"k");
        let old = QueryTicket {
            kind: TicketKind::Statement,
            sql: "SELECT 1".into(),
            issued_at_ms: now_ms() - STATEMENT_TICKET_TTL.as_millis() as u64 - 1000,
            ..QueryTicket::new(TicketKind::Statement, "SELECT 1")
        };
        let t = signer.sign(&old);
        assert_eq!(
            signer.verify(&t, TicketKind::Statement),
            Err(TicketError::Expired)
        );
    }

    #[test]
    fn parameters_ride_in_the_signature() {
        let signer = TicketSigner::new(b"k");
        let bound = QueryTicket {
            params: Some("AAAA".into()),
            param_schema: Some("BBBB".into()),
            ..QueryTicket::new(TicketKind::Prepared, "SELECT $1")
        };
        let mut t = signer.sign(&bound);
        assert_eq!(signer.verify(&t, TicketKind::Prepared).unwrap(), bound);
        let at = t.windows(4).position(|w| w == b"AAAA").unwrap();
        t[at] = b'C';
        assert_eq!(
            signer.verify(&t, TicketKind::Prepared),
            Err(TicketError::BadSignature)
        );
    }

    #[test]
    fn idle_prepared_handles_expire_and_binding_renews_them() {
        let signer = TicketSigner::new(b"k");
        let idle_ms = PREPARED_HANDLE_TTL.as_millis() as u64;
        let created = |age_ms: u64| QueryTicket {
            issued_at_ms: now_ms() - age_ms,
            ..QueryTicket::new(TicketKind::Prepared, "SELECT $1")
        };
        // A statement ticket of that age would long be expired; a prepared handle is not yet.
        let busy = signer.sign(&created(idle_ms - 60_000));
        assert!(signer.verify(&busy, TicketKind::Prepared).is_ok());
        let idle = signer.sign(&created(idle_ms + 1000));
        assert_eq!(
            signer.verify(&idle, TicketKind::Prepared),
            Err(TicketError::Expired)
        );
        // Binding issues a fresh handle from the old one's contents.
        let old = signer.verify(&busy, TicketKind::Prepared).unwrap();
        let bound = signer.sign(&QueryTicket {
            params: Some("row".into()),
            ..QueryTicket::new(TicketKind::Prepared, &old.sql)
        });
        let renewed = signer.verify(&bound, TicketKind::Prepared).unwrap();
        assert!(renewed.issued_at_ms > old.issued_at_ms);
    }

    #[test]
    fn garbage_is_malformed() {
        let signer = TicketSigner::new(b"k");
        assert_eq!(
            signer.verify(b"SELECT 1", TicketKind::Statement),
            Err(TicketError::Malformed)
        );
        assert_eq!(
            signer.verify(b"QV1short", TicketKind::Statement),
            Err(TicketError::Malformed)
        );
    }
}
