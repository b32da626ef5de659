//! Each call decoded once into the command it carries.
//!
//! A descriptor, ticket or action body is read here and nowhere else: what comes out is typed,
//! and every signature in it (statement tickets, prepared-statement handles) is already
//! verified, so the pipeline never looks at client bytes again.

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, Any, CommandStatementQuery, ProstMessageExt,
};
use arrow_flight::{Action, CancelFlightInfoRequest, FlightDescriptor, FlightInfo};
use prost::Message;
use tonic::Status;

use super::session::SessionAction;
use super::session::proto::SetSessionOptionsRequest;
use super::ticket::{GatewayTicket, bound_prepared, is_flight_sql, is_metadata};
use quiver_core::ticket::{QueryTicket, TicketKind, TicketSigner};

pub(super) const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";
/// The Flight SQL action that `CancelFlightInfo` replaced; older JDBC drivers send it.
pub(super) const CANCEL_QUERY: &str = "CancelQuery";
pub(super) const SET_SESSION_OPTIONS: &str = "SetSessionOptions";
pub(super) const GET_SESSION_OPTIONS: &str = "GetSessionOptions";
pub(super) const CLOSE_SESSION: &str = "CloseSession";
pub(super) const CREATE_PREPARED_STATEMENT: &str = "CreatePreparedStatement";
pub(super) const CLOSE_PREPARED_STATEMENT: &str = "ClosePreparedStatement";

/// Actions the gateway answers itself, as `ListActions` describes them.
pub(super) const LOCAL_ACTIONS: [(&str, &str); 6] = [
    (
        SET_SESSION_OPTIONS,
        "Sets session options (quiver.source, quiver.tags, catalog, schema); the session is \
         returned in the arrow_flight_session_id cookie.",
    ),
    (GET_SESSION_OPTIONS, "Returns the session's options."),
    (CLOSE_SESSION, "Ends the session (clears its cookie)."),
    (
        CANCEL_FLIGHT_INFO,
        "Cancels a running query: request CancelFlightInfoRequest, response CancelFlightInfoResult.",
    ),
    (
        CANCEL_QUERY,
        "Cancels a running query (deprecated form): request ActionCancelQueryRequest.",
    ),
    (
        CLOSE_PREPARED_STATEMENT,
        "Closes a reusable prepared statement resource on the server.",
    ),
];

/// Actions answered with a worker's help.
pub(super) const RELAYED_ACTIONS: [(&str, &str); 1] = [(
    CREATE_PREPARED_STATEMENT,
    "Creates a reusable prepared statement resource on the server.",
)];

/// A call as it arrives: the message of the RPC that carried it.
pub(super) enum Call {
    /// `GetFlightInfo`.
    Info(FlightDescriptor),
    /// `DoGet`.
    Get(Vec<u8>),
    /// `DoAction`.
    Action(Action),
}

/// What a call asks for.
#[derive(Debug)]
pub(super) enum Command {
    /// Work for a worker of the caller's pool.
    Relayed(Relayed),
    /// Answered by the gateway alone.
    Local(Local),
}

/// The commands a worker serves.
#[derive(Debug)]
pub(super) enum Relayed {
    /// Plan a statement (or a bound prepared statement) on a worker; the client gets a gateway
    /// ticket to redeem with `DoGet`.
    Plan {
        /// The client's descriptor, echoed in the FlightInfo.
        descriptor: FlightDescriptor,
        sql: String,
        params: Option<String>,
    },
    /// Create a prepared statement: planned on a worker, answered with a signed handle.
    Prepare { sql: String },
    /// Run a query and stream its batches.
    Run {
        /// The ticket as presented: what a cancel names the query by.
        presented: Vec<u8>,
        query: QueryTicket,
    },
    /// Describe a Flight SQL metadata command (catalogs, tables, …): a worker's FlightInfo.
    DescribeMetadata(FlightDescriptor),
    /// Fetch a metadata command's rows from a worker, forwarded as received; `lists_objects`
    /// answers are filtered to the tenant's catalogs.
    FetchMetadata { bytes: Vec<u8>, lists_objects: bool },
}

/// The commands no worker takes part in.
#[derive(Debug)]
pub(super) enum Local {
    /// Cancel the caller's queries redeemed with any of these tickets; `legacy` answers in the
    /// deprecated `CancelQuery` form.
    Cancel { tickets: Vec<Vec<u8>>, legacy: bool },
    /// Close a prepared statement: handles are stateless, so this only checked it was genuine.
    ClosePrepared,
    /// Set, read or end the session kept in the caller's cookie.
    Session(SessionAction),
}

impl Command {
    /// Decodes `call`. Forged, altered or expired tickets and handles stop here, as do unknown
    /// commands and malformed messages.
    pub(super) fn decode(call: Call, signer: &TicketSigner) -> Result<Self, Status> {
        match call {
            Call::Info(descriptor) => Self::from_descriptor(descriptor, signer),
            Call::Get(ticket) => Ok(Self::Relayed(
                match GatewayTicket::decode(&ticket, signer)? {
                    GatewayTicket::Query(query) => Relayed::Run {
                        presented: ticket,
                        query,
                    },
                    GatewayTicket::Metadata {
                        bytes,
                        lists_objects,
                    } => Relayed::FetchMetadata {
                        bytes,
                        lists_objects,
                    },
                },
            )),
            Call::Action(action) => Self::from_action(action, signer),
        }
    }

    /// A `GetFlightInfo` descriptor: a Flight SQL command, or plain UTF-8 SQL from a simple gRPC
    /// client. A prepared statement's handle must be genuine, unexpired and bound.
    fn from_descriptor(
        descriptor: FlightDescriptor,
        signer: &TicketSigner,
    ) -> Result<Self, Status> {
        use arrow_flight::sql::Command as FlightSql;
        let descriptor = normalise_descriptor(descriptor)?;
        let command = Any::decode(&*descriptor.cmd)
            .map_err(|e| Status::invalid_argument(format!("invalid Flight SQL command: {e}")))
            .and_then(|any| {
                FlightSql::try_from(any).map_err(|e| {
                    Status::invalid_argument(format!("invalid Flight SQL command: {e}"))
                })
            })?;
        match command {
            FlightSql::CommandStatementQuery(q) => Ok(Self::Relayed(Relayed::Plan {
                descriptor,
                sql: q.query,
                params: None,
            })),
            FlightSql::CommandPreparedStatementQuery(p) => {
                let prepared = bound_prepared(signer, &p.prepared_statement_handle)?;
                Ok(Self::Relayed(Relayed::Plan {
                    descriptor,
                    sql: prepared.sql,
                    params: prepared.params,
                }))
            }
            command if is_metadata(&command) => {
                Ok(Self::Relayed(Relayed::DescribeMetadata(descriptor)))
            }
            other => Err(Status::unimplemented(format!(
                "{} is not supported",
                other.type_url()
            ))),
        }
    }

    fn from_action(action: Action, signer: &TicketSigner) -> Result<Self, Status> {
        let body = &*action.body;
        Ok(match action.r#type.as_str() {
            SET_SESSION_OPTIONS => {
                let request = SetSessionOptionsRequest::decode(body).map_err(|e| {
                    Status::invalid_argument(format!("invalid SetSessionOptionsRequest: {e}"))
                })?;
                Self::Local(Local::Session(SessionAction::Set(request)))
            }
            GET_SESSION_OPTIONS => Self::Local(Local::Session(SessionAction::Get)),
            CLOSE_SESSION => Self::Local(Local::Session(SessionAction::Close)),
            CANCEL_FLIGHT_INFO => {
                let cancel = CancelFlightInfoRequest::decode(body).map_err(|e| {
                    Status::invalid_argument(format!("invalid CancelFlightInfoRequest: {e}"))
                })?;
                Self::Local(Local::Cancel {
                    tickets: info_tickets(cancel.info)?,
                    legacy: false,
                })
            }
            CANCEL_QUERY => {
                let cancel: ActionCancelQueryRequest = unpack(body)?;
                let info = FlightInfo::decode(&*cancel.info).map_err(|e| {
                    Status::invalid_argument(format!("invalid FlightInfo in CancelQuery: {e}"))
                })?;
                Self::Local(Local::Cancel {
                    tickets: info_tickets(Some(info))?,
                    legacy: true,
                })
            }
            CREATE_PREPARED_STATEMENT => {
                let create: ActionCreatePreparedStatementRequest = unpack(body)?;
                Self::Relayed(Relayed::Prepare { sql: create.query })
            }
            CLOSE_PREPARED_STATEMENT => {
                let close: ActionClosePreparedStatementRequest = unpack(body)?;
                signer.verify(&close.prepared_statement_handle, TicketKind::Prepared)?;
                Self::Local(Local::ClosePrepared)
            }
            other => {
                return Err(Status::unimplemented(format!(
                    "action {other:?} is not supported"
                )));
            }
        })
    }
}

/// A Flight SQL action body (`Any`-wrapped) as the message the action takes.
fn unpack<T: ProstMessageExt + Default>(body: &[u8]) -> Result<T, Status> {
    Any::decode(body)
        .ok()
        .and_then(|any| any.unpack::<T>().ok().flatten())
        .ok_or_else(|| {
            let name = T::type_url().rsplit('.').next().unwrap_or("message");
            Status::invalid_argument(format!("invalid {name}"))
        })
}

/// The tickets of a FlightInfo's endpoints, decoded from a cancel request.
fn info_tickets(info: Option<FlightInfo>) -> Result<Vec<Vec<u8>>, Status> {
    let info =
        info.ok_or_else(|| Status::invalid_argument("the cancel request has no FlightInfo"))?;
    Ok(info
        .endpoint
        .into_iter()
        .filter_map(|e| e.ticket)
        .map(|t| t.ticket.to_vec())
        .collect())
}

/// Turns a descriptor whose command is plain SQL into a Flight SQL statement descriptor.
fn normalise_descriptor(mut descriptor: FlightDescriptor) -> Result<FlightDescriptor, Status> {
    if descriptor.r#type() != DescriptorType::Cmd {
        return Err(Status::invalid_argument(
            "only command descriptors are supported: send a Flight SQL command or SQL text",
        ));
    }
    if is_flight_sql(&descriptor.cmd) {
        return Ok(descriptor);
    }
    let sql = std::str::from_utf8(&descriptor.cmd).map_err(|_| {
        Status::invalid_argument("the command is neither a Flight SQL command nor UTF-8 SQL")
    })?;
    descriptor.cmd = CommandStatementQuery {
        query: sql.to_owned(),
        transaction_id: None,
    }
    .as_any()
    .encode_to_vec()
    .into();
    Ok(descriptor)
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Protobuf-shaped bytes: an `Any` with a Flight SQL type URL (or a near miss) and any value,
    /// so decoding reaches the command's own fields rather than stopping at the wrapper.
    fn any_like() -> impl Strategy<Value = Vec<u8>> {
        let names = prop::sample::select(vec![
            "CommandStatementQuery",
            "CommandPreparedStatementQuery",
            "CommandGetTables",
            "CommandGetCatalogs",
            "TicketStatementQuery",
            "CommandStatementUpdate",
            "ActionCreatePreparedStatementRequest",
            "NoSuchCommand",
        ]);
        (names, prop::collection::vec(any::<u8>(), 0..256)).prop_map(|(name, value)| {
            Any {
                type_url: format!("type.googleapis.com/arrow.flight.protocol.sql.{name}"),
                value: value.into(),
            }
            .encode_to_vec()
        })
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![any_like(), prop::collection::vec(any::<u8>(), 0..256)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// GetFlightInfo descriptors: decoded or refused with a status, never a panic; a
        /// statement is taken as sent, and nothing unsigned becomes a prepared statement.
        #[test]
        fn descriptors_decode_or_refuse(cmd in bytes()) {
            let signer = TicketSigner::new(b"k");
            match Command::decode(Call::Info(FlightDescriptor::new_cmd(cmd)), &signer) {
                Ok(Command::Relayed(Relayed::Plan { params, .. })) => prop_assert!(params.is_none()),
                Ok(Command::Relayed(Relayed::DescribeMetadata(_))) => {}
                Ok(other) => prop_assert!(false, "a descriptor decoded as {other:?}"),
                Err(status) => prop_assert!(!status.message().is_empty()),
            }
        }

        /// DoGet tickets: nothing unsigned becomes a query with parameters or a prepayment.
        #[test]
        fn tickets_decode_or_refuse(ticket in bytes()) {
            let signer = TicketSigner::new(b"k");
            match Command::decode(Call::Get(ticket), &signer) {
                Ok(Command::Relayed(Relayed::Run { query, .. })) => {
                    prop_assert!(query.params.is_none() && query.nonce.is_none());
                }
                Ok(Command::Relayed(Relayed::FetchMetadata { .. })) => {}
                Ok(other) => prop_assert!(false, "a ticket decoded as {other:?}"),
                Err(status) => prop_assert!(!status.message().is_empty()),
            }
        }

        /// Action bodies: the message the action takes, or INVALID_ARGUMENT (UNAUTHENTICATED
        /// for a handle that is not ours); nothing unsigned closes a prepared statement.
        #[test]
        fn action_bodies_decode_or_refuse(body in bytes()) {
            let signer = TicketSigner::new(b"k");
            for name in [CREATE_PREPARED_STATEMENT, CLOSE_PREPARED_STATEMENT, CANCEL_QUERY,
                         CANCEL_FLIGHT_INFO, SET_SESSION_OPTIONS] {
                let action = Action { r#type: name.to_owned(), body: body.clone().into() };
                match Command::decode(Call::Action(action), &signer) {
                    Ok(Command::Local(Local::ClosePrepared)) => {
                        prop_assert!(false, "an unsigned handle closed a statement")
                    }
                    Ok(_) => {}
                    Err(status) => prop_assert!(
                        matches!(
                            status.code(),
                            tonic::Code::InvalidArgument | tonic::Code::Unauthenticated
                        ),
                        "{name}: {status:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn unknown_actions_are_unimplemented() {
        let action = Action {
            r#type: "DropEverything".into(),
            body: Default::default(),
        };
        let status = Command::decode(Call::Action(action), &TicketSigner::new(b"k")).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
}
