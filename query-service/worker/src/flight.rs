//! The worker's Flight SQL service: decodes each command, calls the engine or the metadata
//! module, and encodes the answer. No policy lives here; the gateway decides who may run what.
//!
//! A worker runs only what a gateway admitted: every call carries the gateway's signed grant in
//! the `x-quiver-grant` header (checked by [`require_grant`] before the message is read), and
//! every statement arrives as a signed [`TicketKind::Admitted`] ticket holding the exact text
//! the gateway checked and the catalogs its tenant may read, which the engine checks against
//! the plan. Plain Flight SQL statements sent straight to a worker are refused.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetCrossReference,
    CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandStatementQuery, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::InFlight;
use crate::claim::{CLAIM_ACTION, Readiness};
use crate::engine::Engine;
use crate::metadata::{self, Keys};
use crate::status;
use quiver_core::prepared;
use quiver_core::protocol::{self, CREATE_ADMITTED_PREPARED, GRANT_HEADER};
use quiver_core::ticket::{QueryTicket, TicketKind, TicketSigner};

/// Refuses a call without a valid gateway grant before its message is decoded: who reaches a
/// worker's port directly can make it read nothing.
pub fn require_grant(
    signer: TicketSigner,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let grant = request
            .metadata()
            .get(GRANT_HEADER)
            .and_then(|v| v.to_str().ok());
        check_grant(&signer, grant)?;
        Ok(request)
    }
}

/// Whether `grant` (the grant header's value) is one a gateway signed with this deployment's
/// key: every call to a worker, gRPC or fetch, passes this first.
pub(crate) fn check_grant(signer: &TicketSigner, grant: Option<&str>) -> Result<(), Status> {
    if grant.is_some_and(|grant| protocol::is_granted(signer, grant)) {
        Ok(())
    } else {
        Err(not_admitted())
    }
}

fn not_admitted() -> Status {
    Status::unauthenticated(
        "workers answer only calls a Quiver gateway admitted; connect to the gateway",
    )
}

type FlightStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// The worker's Flight SQL endpoint. The engine is set once warm-up finishes; until then every
/// call answers `UNAVAILABLE`.
#[derive(Clone)]
pub struct WorkerService {
    engine: Arc<OnceLock<Arc<Engine>>>,
    signer: TicketSigner,
    in_flight: InFlight,
    readiness: Readiness,
}

impl WorkerService {
    /// A service that answers once `engine` is set, and takes claims through `readiness`.
    pub(crate) fn new(
        engine: Arc<OnceLock<Arc<Engine>>>,
        signer: TicketSigner,
        in_flight: InFlight,
        readiness: Readiness,
    ) -> Self {
        Self {
            engine,
            signer,
            in_flight,
            readiness,
        }
    }

    fn engine(&self) -> Result<&Arc<Engine>, Status> {
        self.engine.get().ok_or_else(status::warming_up)
    }

    /// A FlightInfo whose single endpoint redeems `ticket` wherever the client got it from.
    fn flight_info(
        schema: &arrow::datatypes::Schema,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("cannot encode result schema: {e}")))?
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
            .with_descriptor(descriptor)
            .with_ordered(true);
        Ok(Response::new(info))
    }

    /// Plans an admitted statement for its schema. The endpoint's ticket is the grant itself:
    /// the gateway replaces it with a ticket of its own before a client sees it.
    async fn statement_info(
        &self,
        handle: &[u8],
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let query = self.signer.verify(handle, TicketKind::Admitted)?;
        let _planning = self.in_flight.enter();
        let (_, schema) = self
            .engine()?
            .plan(&query.sql, params(&query)?, catalogs(&query))
            .await?;
        let ticket = TicketStatementQuery {
            statement_handle: handle.to_vec().into(),
        };
        Self::flight_info(&schema, ticket.as_any().encode_to_vec(), descriptor)
    }

    /// Metadata answers carry the command itself as their ticket, as the Flight SQL spec does.
    fn metadata_info(
        schema: &SchemaRef,
        command: impl ProstMessageExt,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::flight_info(schema, command.as_any().encode_to_vec(), descriptor)
    }

    async fn run(&self, query: &QueryTicket) -> Result<Response<FlightStream>, Status> {
        // Entered before planning, so a drain waits for queries still being planned too; it
        // lives as long as the response stream, so draining waits for the last batch.
        let guard = self.in_flight.enter();
        let stream = self
            .engine()?
            .execute(
                &query.sql,
                params(query)?,
                query.memory_limit,
                catalogs(query),
            )
            .await?;
        let schema = stream.schema();
        let batches = stream.map(move |item| {
            let _held = &guard;
            item.map_err(|e| FlightError::Tonic(Box::new(Status::from(e))))
        });
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map(|item| match item {
                Ok(data) if data.encoded_len() > protocol::MAX_MESSAGE_BYTES => {
                    Err(status::over_message_limit(data.encoded_len()))
                }
                item => item.map_err(Status::from),
            });
        Ok(Response::new(Box::pin(flight)))
    }
}

/// The catalogs an admitted ticket's tenant may read; none when the grant names none.
fn catalogs(query: &QueryTicket) -> &[String] {
    query.catalogs.as_deref().unwrap_or_default()
}

/// The bound parameter values of a ticket, if any.
fn params(query: &QueryTicket) -> Result<Option<Vec<ScalarValue>>, Status> {
    match &query.params {
        Some(text) => Ok(Some(prepared::decode_row(text)?)),
        None => Ok(None),
    }
}

/// Encodes one metadata batch as a DoGet response.
fn one_batch(schema: SchemaRef, batch: RecordBatch) -> Response<FlightStream> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async move { Ok(batch) }))
        .map_err(Status::from);
    Response::new(Box::pin(stream))
}

#[tonic::async_trait]
impl FlightSqlService for WorkerService {
    type FlightService = WorkerService;

    async fn get_flight_info_statement(
        &self,
        _query: CommandStatementQuery,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(not_admitted())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        _cmd: CommandPreparedStatementQuery,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(not_admitted())
    }

    /// The gateway's planning call: a descriptor holding an admitted statement ticket.
    async fn get_flight_info_fallback(
        &self,
        cmd: arrow_flight::sql::Command,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        match cmd {
            arrow_flight::sql::Command::TicketStatementQuery(ticket) => {
                self.statement_info(&ticket.statement_handle, request.into_inner())
                    .await
            }
            other => Err(Status::unimplemented(format!(
                "{} is not supported",
                other.type_url()
            ))),
        }
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let verified = self
            .signer
            .verify(&ticket.statement_handle, TicketKind::Admitted)
            .map_err(|_| not_admitted())?;
        self.run(&verified).await
    }

    async fn do_get_prepared_statement(
        &self,
        _cmd: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(not_admitted())
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        _message: arrow_flight::sql::Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(not_admitted())
    }

    async fn do_action_create_prepared_statement(
        &self,
        _query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        Err(not_admitted())
    }

    /// The gateway's CreatePreparedStatement: the body is an admitted ticket for the statement.
    /// A claim of a standby worker (by the local supervisor or the gateway): the body is the
    /// pool's catalog document.
    async fn do_action_fallback(
        &self,
        request: Request<arrow_flight::Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let action = request.into_inner();
        if action.r#type == CLAIM_ACTION {
            let claimed = self.readiness.claim(&action.body).await?;
            let body = arrow_flight::Result {
                body: format!(
                    "claimed: {} tables in {} ms",
                    claimed.tables, claimed.millis
                )
                .into(),
            };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(body)]))));
        }
        if action.r#type != CREATE_ADMITTED_PREPARED {
            return Err(Status::unimplemented(format!(
                "action {:?} is not supported",
                action.r#type
            )));
        }
        let query = self
            .signer
            .verify(&action.body, TicketKind::Admitted)
            .map_err(|_| not_admitted())?;
        let _planning = self.in_flight.enter();
        let (schema, parameters) = self.engine()?.prepare(&query.sql, catalogs(&query)).await?;
        let ipc = |schema: &arrow::datatypes::Schema| {
            SchemaAsIpc::new(schema, &Default::default())
                .try_into()
                .map(|IpcMessage(bytes)| bytes)
                .map_err(|e| Status::internal(format!("cannot encode schema: {e}")))
        };
        let handle = QueryTicket {
            param_schema: Some(prepared::encode_schema(&parameters)?),
            ..QueryTicket::new(TicketKind::Prepared, &query.sql)
        };
        let result = ActionCreatePreparedStatementResult {
            prepared_statement_handle: self.signer.sign(&handle).into(),
            dataset_schema: ipc(&schema)?,
            parameter_schema: ipc(&parameters)?,
        };
        let body = arrow_flight::Result {
            body: result.as_any().encode_to_vec().into(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(body)]))))
    }

    async fn do_action_close_prepared_statement(
        &self,
        cmd: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Handles are stateless: closing one only checks that it is ours.
        self.signer
            .verify(&cmd.prepared_statement_handle, TicketKind::Prepared)?;
        Ok(())
    }

    async fn get_flight_info_sql_info(
        &self,
        cmd: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, _) = metadata::sql_info(cmd.clone())?;
        Self::metadata_info(&schema, cmd, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        cmd: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (schema, batch) = metadata::sql_info(cmd)?;
        Ok(one_batch(schema, batch))
    }

    async fn get_flight_info_catalogs(
        &self,
        cmd: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, _) = metadata::catalogs(self.engine()?.base_state())?;
        Self::metadata_info(&schema, cmd, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        _cmd: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (schema, batch) = metadata::catalogs(self.engine()?.base_state())?;
        Ok(one_batch(schema, batch))
    }

    async fn get_flight_info_schemas(
        &self,
        cmd: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, _) = metadata::db_schemas(self.engine()?.base_state(), cmd.clone())?;
        Self::metadata_info(&schema, cmd, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        cmd: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (schema, batch) = metadata::db_schemas(self.engine()?.base_state(), cmd)?;
        Ok(one_batch(schema, batch))
    }

    async fn get_flight_info_tables(
        &self,
        cmd: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, _) = metadata::tables(self.engine()?.base_state(), cmd.clone()).await?;
        Self::metadata_info(&schema, cmd, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        cmd: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (schema, batch) = metadata::tables(self.engine()?.base_state(), cmd).await?;
        Ok(one_batch(schema, batch))
    }

    async fn get_flight_info_table_types(
        &self,
        cmd: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, _) = metadata::table_types()?;
        Self::metadata_info(&schema, cmd, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        _cmd: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (schema, batch) = metadata::table_types()?;
        Ok(one_batch(schema, batch))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        cmd: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, _) = metadata::xdbc_type_info(cmd)?;
        Self::metadata_info(&schema, cmd, request.into_inner())
    }

    async fn do_get_xdbc_type_info(
        &self,
        cmd: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (schema, batch) = metadata::xdbc_type_info(cmd)?;
        Ok(one_batch(schema, batch))
    }

    async fn get_flight_info_primary_keys(
        &self,
        cmd: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, _) = metadata::no_keys(Keys::Primary)?;
        Self::metadata_info(&schema, cmd, request.into_inner())
    }

    async fn do_get_primary_keys(
        &self,
        _cmd: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (schema, batch) = metadata::no_keys(Keys::Primary)?;
        Ok(one_batch(schema, batch))
    }

    async fn get_flight_info_exported_keys(
        &self,
        cmd: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, _) = metadata::no_keys(Keys::Foreign)?;
        Self::metadata_info(&schema, cmd, request.into_inner())
    }

    async fn do_get_exported_keys(
        &self,
        _cmd: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (schema, batch) = metadata::no_keys(Keys::Foreign)?;
        Ok(one_batch(schema, batch))
    }

    async fn get_flight_info_imported_keys(
        &self,
        cmd: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, _) = metadata::no_keys(Keys::Foreign)?;
        Self::metadata_info(&schema, cmd, request.into_inner())
    }

    async fn do_get_imported_keys(
        &self,
        _cmd: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (schema, batch) = metadata::no_keys(Keys::Foreign)?;
        Ok(one_batch(schema, batch))
    }

    async fn get_flight_info_cross_reference(
        &self,
        cmd: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, _) = metadata::no_keys(Keys::Foreign)?;
        Self::metadata_info(&schema, cmd, request.into_inner())
    }

    async fn do_get_cross_reference(
        &self,
        _cmd: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (schema, batch) = metadata::no_keys(Keys::Foreign)?;
        Ok(one_batch(schema, batch))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
