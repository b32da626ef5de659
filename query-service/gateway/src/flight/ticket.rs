//! What a client's `DoGet` ticket is: a signed statement ticket, a Flight SQL metadata command,
//! or plain UTF-8 SQL from a simple gRPC client.

use arrow_flight::sql::{Any, Command};
use prost::Message;
use tonic::Status;

use quiver_core::ticket::{QueryTicket, TicketKind, TicketSigner};

/// Type URLs of Flight SQL messages all start with this.
const FLIGHT_SQL_TYPE_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

/// True when `bytes` are a protobuf `Any` holding a Flight SQL message.
pub fn is_flight_sql(bytes: &[u8]) -> bool {
    decode_flight_sql(bytes).is_some()
}

fn decode_flight_sql(bytes: &[u8]) -> Option<Any> {
    Any::decode(bytes)
        .ok()
        .filter(|any| any.type_url.starts_with(FLIGHT_SQL_TYPE_PREFIX))
}

/// True for the Flight SQL metadata commands a worker answers from its catalog.
pub fn is_metadata(command: &Command) -> bool {
    matches!(
        command,
        Command::CommandGetCatalogs(_)
            | Command::CommandGetDbSchemas(_)
            | Command::CommandGetTables(_)
            | Command::CommandGetTableTypes(_)
            | Command::CommandGetSqlInfo(_)
            | Command::CommandGetXdbcTypeInfo(_)
            | Command::CommandGetPrimaryKeys(_)
            | Command::CommandGetExportedKeys(_)
            | Command::CommandGetImportedKeys(_)
            | Command::CommandGetCrossReference(_)
    )
}

/// True for the metadata commands whose answers list catalog objects a tenant may not see, so
/// their rows are filtered to the tenant's catalogs.
fn lists_catalog_objects(command: &Command) -> bool {
    matches!(
        command,
        Command::CommandGetCatalogs(_)
            | Command::CommandGetDbSchemas(_)
            | Command::CommandGetTables(_)
    )
}

/// A prepared statement's handle, checked: genuine, unexpired, and with its parameters bound.
pub fn bound_prepared(signer: &TicketSigner, handle: &[u8]) -> Result<QueryTicket, Status> {
    let prepared = signer.verify(handle, TicketKind::Prepared)?;
    quiver_core::prepared::check_bound(&prepared)?;
    Ok(prepared)
}

/// A ticket the gateway has checked.
#[derive(Debug)]
pub enum GatewayTicket {
    /// A query: a verified statement ticket or prepared handle (with its bound parameters), or
    /// plain SQL.
    Query(QueryTicket),
    /// A Flight SQL metadata command (catalogs, tables, …), forwarded as received.
    Metadata {
        /// The ticket as received.
        bytes: Vec<u8>,
        /// Its answer lists catalog objects, to be filtered to the tenant's catalogs.
        lists_objects: bool,
    },
}

impl GatewayTicket {
    /// Classifies and checks a client's ticket; forged or altered tickets stop here.
    pub fn decode(bytes: &[u8], signer: &TicketSigner) -> Result<Self, Status> {
        if let Some(any) = decode_flight_sql(bytes) {
            let command = Command::try_from(any)
                .map_err(|e| Status::invalid_argument(format!("invalid Flight SQL ticket: {e}")))?;
            return match command {
                Command::TicketStatementQuery(t) => Ok(Self::Query(
                    signer.verify(&t.statement_handle, TicketKind::Statement)?,
                )),
                Command::CommandPreparedStatementQuery(p) => Ok(Self::Query(bound_prepared(
                    signer,
                    &p.prepared_statement_handle,
                )?)),
                command if is_metadata(&command) => Ok(Self::Metadata {
                    bytes: bytes.to_vec(),
                    lists_objects: lists_catalog_objects(&command),
                }),
                other => Err(Status::unimplemented(format!(
                    "{} is not supported",
                    other.type_url()
                ))),
            };
        }
        let sql = std::str::from_utf8(bytes).map_err(|_| {
            Status::invalid_argument("the ticket is neither a Flight SQL ticket nor UTF-8 SQL")
        })?;
        if sql.trim().is_empty() {
            return Err(Status::invalid_argument("the ticket's SQL is empty"));
        }
        Ok(Self::Query(QueryTicket::new(TicketKind::Statement, sql)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_flight::sql::{CommandGetCatalogs, ProstMessageExt, TicketStatementQuery};
    use tonic::Code;

    #[test]
    fn classifies_tickets() {
        let signer = TicketSigner::new(b"k");
        let plain = GatewayTicket::decode(b"SELECT 1", &signer).unwrap();
        assert!(matches!(&plain, GatewayTicket::Query(q) if q.sql == "SELECT 1"));
        let query = QueryTicket {
            params: Some("row".into()),
            nonce: Some(7),
            ..QueryTicket::new(TicketKind::Statement, "SELECT 2")
        };
        let ticket = TicketStatementQuery {
            statement_handle: signer.sign(&query).into(),
        }
        .as_any()
        .encode_to_vec();
        assert!(matches!(
            GatewayTicket::decode(&ticket, &signer).unwrap(),
            GatewayTicket::Query(q) if q.sql == "SELECT 2"
                && q.params.as_deref() == Some("row")
                && q.nonce == Some(7)
        ));
        // A worker grant is never accepted from a client.
        let grant = TicketStatementQuery {
            statement_handle: signer.issue(TicketKind::Admitted, "SELECT 3").into(),
        }
        .as_any()
        .encode_to_vec();
        assert!(GatewayTicket::decode(&grant, &signer).is_err());
        let meta = CommandGetCatalogs {}.as_any().encode_to_vec();
        assert!(matches!(
            GatewayTicket::decode(&meta, &signer).unwrap(),
            GatewayTicket::Metadata {
                lists_objects: true,
                ..
            }
        ));
        let info = arrow_flight::sql::CommandGetSqlInfo { info: vec![] }
            .as_any()
            .encode_to_vec();
        assert!(matches!(
            GatewayTicket::decode(&info, &signer).unwrap(),
            GatewayTicket::Metadata {
                lists_objects: false,
                ..
            }
        ));
    }

    #[test]
    fn forged_statement_is_unauthenticated() {
        let other = TicketSigner::new(b"other");
        let forged = TicketStatementQuery {
            statement_handle: other.issue(TicketKind::Statement, "SELECT 1").into(),
        }
        .as_any()
        .encode_to_vec();
        let err = GatewayTicket::decode(&forged, &TicketSigner::new(b"k")).unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }

    #[test]
    fn unbound_prepared_statement_is_invalid() {
        use arrow::datatypes::{DataType, Field, Schema};
        use arrow_flight::sql::CommandPreparedStatementQuery;
        let signer = TicketSigner::new(b"k");
        let schema = Schema::new(vec![Field::new("$1", DataType::Int64, true)]);
        let handle = QueryTicket {
            param_schema: Some(quiver_core::prepared::encode_schema(&schema).unwrap()),
            ..QueryTicket::new(TicketKind::Prepared, "SELECT $1")
        };
        let cmd = CommandPreparedStatementQuery {
            prepared_statement_handle: signer.sign(&handle).into(),
        }
        .as_any()
        .encode_to_vec();
        let err = GatewayTicket::decode(&cmd, &signer).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("bind them with DoPut"), "{err}");
    }

    #[test]
    fn binary_garbage_and_empty_sql_are_invalid() {
        let signer = TicketSigner::new(b"k");
        let err = GatewayTicket::decode(&[0xff, 0xfe, 0x00], &signer).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = GatewayTicket::decode(b"   ", &signer).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// A genuine statement ticket, as the gateway hands out.
        fn genuine(signer: &TicketSigner) -> Vec<u8> {
            let query = QueryTicket {
                nonce: Some(42),
                catalogs: Some(vec!["quiver".into()]),
                ..QueryTicket::new(TicketKind::Statement, "SELECT 1")
            };
            TicketStatementQuery {
                statement_handle: signer.sign(&query).into(),
            }
            .as_any()
            .encode_to_vec()
        }

        /// True unless `q` claims a signature without being exactly the genuine ticket.
        fn not_forged(q: &QueryTicket) -> bool {
            q.nonce.is_none()
                || (q.nonce == Some(42)
                    && q.sql == "SELECT 1"
                    && q.catalogs.as_deref() == Some(&["quiver".to_owned()][..]))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

            /// Any bytes: an answer or a clear refusal, never a panic; what is accepted without
            /// a signature is plain SQL or a metadata command, never a signed kind.
            #[test]
            fn arbitrary_tickets_decode_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let signer = TicketSigner::new(b"k");
                match GatewayTicket::decode(&bytes, &signer) {
                    Ok(GatewayTicket::Query(q)) => prop_assert!(q.nonce.is_none() && q.catalogs.is_none()),
                    Ok(GatewayTicket::Metadata { bytes: m, .. }) => prop_assert_eq!(m, bytes),
                    Err(status) => prop_assert!(!status.message().is_empty()),
                }
            }

            /// A genuine ticket with any byte changed never verifies as the signed statement.
            #[test]
            fn altered_tickets_never_verify(index in any::<prop::sample::Index>(), flip in 1u8..=255) {
                let signer = TicketSigner::new(b"k");
                let mut bytes = genuine(&signer);
                let at = index.index(bytes.len());
                bytes[at] ^= flip;
                if let Ok(GatewayTicket::Query(q)) = GatewayTicket::decode(&bytes, &signer) {
                    prop_assert!(not_forged(&q), "an altered ticket verified: {q:?}");
                }
            }

            /// Truncations and extensions of a genuine ticket are refused too.
            #[test]
            fn cut_or_extended_tickets_never_verify(cut in 0usize..200, tail in prop::collection::vec(any::<u8>(), 1..16)) {
                let signer = TicketSigner::new(b"k");
                let bytes = genuine(&signer);
                let short = &bytes[..cut.min(bytes.len() - 1)];
                if let Ok(GatewayTicket::Query(q)) = GatewayTicket::decode(short, &signer) {
                    prop_assert!(not_forged(&q));
                }
                let mut long = bytes.clone();
                long.extend_from_slice(&tail);
                if let Ok(GatewayTicket::Query(q)) = GatewayTicket::decode(&long, &signer) {
                    prop_assert!(not_forged(&q));
                }
            }
        }
    }
}
