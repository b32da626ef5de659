//! The gateway's Flight endpoint: protocol in and out, nothing else.
//!
//! Each call is decoded, checked as cheaply as possible (signatures, message shape), and handed
//! to [`crate::dispatch`]. Flight SQL commands pass through to a worker unchanged; two additions
//! serve simple gRPC clients such as k6: a `DoGet` whose ticket is UTF-8 SQL and a
//! `GetFlightInfo` whose command is UTF-8 SQL.
//!
//! Three things are answered here rather than on a worker, because only the gateway can:
//! binding prepared-statement parameters ([`bind`], into a new signed handle), cancelling a
//! query it is streaming ([`cancel`]), and hiding catalogs a tenant may not read ([`visible`]).
//! Session options ([`session`]) are answered here too, from a signed cookie.

mod bind;
pub mod cancel;
mod recorded;
pub mod session;
pub mod ticket;
pub mod visible;

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, ActionCreatePreparedStatementRequest, Any,
    CommandStatementQuery, ProstMessageExt,
};
use arrow_flight::{
    Action, ActionType as FlightActionType, CancelFlightInfoRequest, CancelFlightInfoResult,
    CancelStatus, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
    flight_descriptor::DescriptorType,
};
use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use self::cancel::Running;
use self::recorded::{Query, RecordedStream};
use self::session::{SessionCodec, proto as session_proto};
use self::ticket::{GatewayTicket, is_flight_sql, worker_ticket};
use crate::admission::Admission;
use crate::admission::classify::ClientHints;
use crate::auth::{self, Identity};
use crate::dispatch::{Dispatcher, FlightDataStream};
use crate::metrics::{GatewayMetrics, Outcome};
use crate::ticket::TicketSigner;
use crate::worker::MAX_MESSAGE_BYTES;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Actions the gateway answers itself: cancelling a query it streams.
const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";
/// The Flight SQL action that `CancelFlightInfo` replaced; older JDBC drivers send it.
const CANCEL_QUERY: &str = "CancelQuery";
const SET_SESSION_OPTIONS: &str = "SetSessionOptions";
const GET_SESSION_OPTIONS: &str = "GetSessionOptions";
const CLOSE_SESSION: &str = "CloseSession";
const LOCAL_ACTIONS: [(&str, &str); 5] = [
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
];

/// Flight SQL actions the gateway relays to workers.
const RELAYED_ACTIONS: [(&str, &str); 2] = [
    (
        "CreatePreparedStatement",
        "Creates a reusable prepared statement resource on the server.",
    ),
    (
        "ClosePreparedStatement",
        "Closes a reusable prepared statement resource on the server.",
    ),
];

/// The gateway's `FlightService`.
#[derive(Debug, Clone)]
pub struct GatewayService {
    dispatcher: Dispatcher,
    signer: TicketSigner,
    key: Arc<[u8]>,
    admission: Arc<Admission>,
    metrics: Arc<GatewayMetrics>,
    running: Arc<Running>,
    sessions: SessionCodec,
}

impl GatewayService {
    /// A gateway dispatching to `dispatcher`'s pool, signing tickets with `signer`.
    pub fn new(
        dispatcher: Dispatcher,
        key: &[u8],
        admission: Arc<Admission>,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        Self {
            dispatcher,
            signer: TicketSigner::new(key),
            key: key.into(),
            admission,
            metrics,
            running: Arc::default(),
            sessions: SessionCodec::new(key),
        }
    }

    /// Authentication: the first and cheapest check of every call.
    fn identify(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Identity, Status> {
        let policy = self.admission.policy();
        auth::authenticate(&policy, &self.key, metadata).map_err(Status::from)
    }

    /// The tonic service, with message limits matching the workers'.
    pub fn into_server(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// One `DoAction` result, with a `set-cookie` header when the session changed.
fn action_reply(
    body: Vec<u8>,
    cookie: Option<String>,
) -> Result<Response<BoxStream<arrow_flight::Result>>, Status> {
    let result = arrow_flight::Result { body: body.into() };
    let mut response = Response::new(
        Box::pin(futures::stream::iter([Ok(result)])) as BoxStream<arrow_flight::Result>
    );
    if let Some(cookie) = cookie {
        let value = cookie
            .parse()
            .map_err(|_| Status::internal("session cookie is not a valid header"))?;
        response.metadata_mut().insert("set-cookie", value);
    }
    Ok(response)
}

impl GatewayService {
    /// The call's selector hints: its headers, then its session's options.
    fn hints(&self, metadata: &tonic::metadata::MetadataMap) -> ClientHints {
        self.sessions
            .from_metadata(metadata)
            .hints(client_hints(metadata))
    }

    /// The session actions, answered from and into the session cookie.
    fn session_action(
        &self,
        action: &Action,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Response<BoxStream<arrow_flight::Result>>, Status> {
        let mut session = self.sessions.from_metadata(metadata);
        match action.r#type.as_str() {
            SET_SESSION_OPTIONS => {
                let request = session_proto::SetSessionOptionsRequest::decode(&*action.body)
                    .map_err(|e| {
                        Status::invalid_argument(format!("invalid SetSessionOptionsRequest: {e}"))
                    })?;
                let errors = session
                    .set(request.session_options)
                    .into_iter()
                    .map(|(name, value)| (name, session_proto::SetSessionOptionError { value }))
                    .collect();
                let result = session_proto::SetSessionOptionsResult { errors };
                action_reply(
                    result.encode_to_vec(),
                    Some(self.sessions.set_cookie(Some(&session))),
                )
            }
            GET_SESSION_OPTIONS => {
                let result = session_proto::GetSessionOptionsResult {
                    session_options: session.options(),
                };
                action_reply(result.encode_to_vec(), None)
            }
            _ => {
                let result = session_proto::CloseSessionResult {
                    status: session_proto::CLOSED,
                };
                action_reply(result.encode_to_vec(), Some(self.sessions.set_cookie(None)))
            }
        }
    }

    /// Cancels the queries redeemed with any of `tickets`.
    fn cancel(&self, tickets: Vec<Vec<u8>>) -> CancelStatus {
        let cancelled: usize = tickets.iter().map(|t| self.running.cancel(t)).sum();
        tracing::info!(cancelled, "cancel requested");
        if cancelled > 0 {
            CancelStatus::Cancelled
        } else {
            // Finished, never started, or streamed by another gateway replica: nothing to stop
            // here, and asking again will not change that.
            CancelStatus::NotCancellable
        }
    }
}

/// The client hints a selector may match, from the `x-quiver-source` and `x-quiver-tags` headers.
fn client_hints(metadata: &tonic::metadata::MetadataMap) -> ClientHints {
    let header = |name| {
        metadata
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    ClientHints {
        source: header("x-quiver-source")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        tags: header("x-quiver-tags")
            .map(|t| {
                t.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The SQL a descriptor will run, for the permission check at planning time. A prepared
/// statement's handle is checked here too: forged, expired or still unbound, it goes no further.
fn descriptor_sql(
    descriptor: &FlightDescriptor,
    signer: &TicketSigner,
) -> Result<Option<String>, Status> {
    use arrow_flight::sql::Command;
    let Some(command) = Any::decode(&*descriptor.cmd)
        .ok()
        .and_then(|any| Command::try_from(any).ok())
    else {
        return Ok(None);
    };
    match command {
        Command::CommandStatementQuery(q) => Ok(Some(q.query)),
        Command::CommandPreparedStatementQuery(p) => {
            let prepared = signer.verify(
                &p.prepared_statement_handle,
                crate::ticket::TicketKind::Prepared,
            )?;
            crate::prepared::check_bound(&prepared)?;
            Ok(Some(prepared.sql))
        }
        _ => Ok(None),
    }
}

/// True for the metadata commands whose answers list catalog objects a tenant may not see.
fn lists_catalog_objects(ticket: &[u8]) -> bool {
    use arrow_flight::sql::Command;
    matches!(
        Any::decode(ticket)
            .ok()
            .and_then(|a| Command::try_from(a).ok()),
        Some(
            Command::CommandGetCatalogs(_)
                | Command::CommandGetDbSchemas(_)
                | Command::CommandGetTables(_)
        )
    )
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

#[tonic::async_trait]
impl FlightService for GatewayService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = FlightDataStream;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<FlightActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let policy = self.admission.policy();
        let token = if policy.open {
            String::new()
        } else {
            auth::handshake(&policy, &self.key, request.metadata())?.1
        };
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut response =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])) as Self::HandshakeStream);
        if !token.is_empty() {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("session token is not a valid header"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(
            "ListFlights is not supported: queries are not stored as flights",
        ))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let result = async {
            let identity = self.identify(request.metadata())?;
            let hints = self.hints(request.metadata());
            let descriptor = normalise_descriptor(request.into_inner())?;
            // Refuse tables the tenant may not read before a worker plans anything; plan on
            // the pool of the query's group.
            let pool = match descriptor_sql(&descriptor, &self.signer)? {
                Some(sql) => self.admission.check(&identity, &hints, &sql)?.1.pool,
                None => self.admission.pool_of(&identity, &hints),
            };
            let dispatcher = self.dispatcher.on(&pool)?;
            Ok::<_, Status>(dispatcher.get_flight_info(descriptor).await?)
        }
        .await;
        // A query refused while planning never reaches DoGet; count it here so rejected SQL
        // shows in the outcome metrics.
        if let Err(status) = &result {
            let mut record = self.metrics.start_query(self.dispatcher.pool().name());
            record.finish(Outcome::from_code(status.code()));
        }
        Ok(Response::new(result?))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "PollFlightInfo is not supported: use GetFlightInfo",
        ))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented(
            "GetSchema is not supported: GetFlightInfo returns the schema",
        ))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let mut record = self.metrics.start_query(self.dispatcher.pool().name());
        let result = async {
            let identity = self.identify(request.metadata())?;
            let hints = self.hints(request.metadata());
            // Forged tickets are refused here, before admission or a worker is touched.
            let presented = &request.get_ref().ticket;
            let (ticket, permit, scope) = match GatewayTicket::decode(presented, &self.signer)? {
                GatewayTicket::Metadata(bytes) => {
                    let scope = lists_catalog_objects(&bytes)
                        .then(|| visible::scope(&self.admission.policy(), &identity))
                        .flatten();
                    (Ticket::new(bytes), None, scope)
                }
                GatewayTicket::Query(query) => {
                    let admitted = std::time::Instant::now();
                    let permit = self
                        .admission
                        .admit(&identity, &hints, &query.sql)
                        .await
                        .inspect_err(|e| self.metrics.admission_rejected(e.source()))?;
                    self.metrics
                        .admitted(&permit.placement.path, admitted.elapsed());
                    let ticket = worker_ticket(&self.signer, &query, permit.placement.memory_limit);
                    (ticket, Some(permit), None)
                }
            };
            // A query runs on its group's pool, metadata on the caller's group's pool.
            let pool = match &permit {
                Some(permit) => permit.placement.pool.clone(),
                None => self.admission.pool_of(&identity, &hints),
            };
            record.set_pool(&pool);
            // Registered before dispatch, so a cancel that races the first batch still lands.
            let is_query = permit.is_some();
            let query = Query::new(permit);
            let registration = is_query.then(|| self.running.register(presented, query.clone()));
            let mut stream = self.dispatcher.on(&pool)?.do_get(ticket).await?;
            if let Some(patterns) = scope {
                stream = visible::filter(stream, patterns);
            }
            Ok::<_, Status>((stream, query, registration))
        }
        .await;
        match result {
            Ok((stream, query, registration)) => Ok(Response::new(Box::pin(RecordedStream::new(
                query,
                stream,
                record,
                registration,
            )))),
            Err(status) => {
                record.finish(Outcome::from_code(status.code()));
                Err(status)
            }
        }
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        self.identify(request.metadata())?;
        let result = bind::bind(&self.signer, request.into_inner()).await?;
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let identity = self.identify(request.metadata())?;
        let hints = self.hints(request.metadata());
        let pool = self.admission.pool_of(&identity, &hints);
        if matches!(
            request.get_ref().r#type.as_str(),
            SET_SESSION_OPTIONS | GET_SESSION_OPTIONS | CLOSE_SESSION
        ) {
            return self.session_action(request.get_ref(), request.metadata());
        }
        let action = request.into_inner();
        match action.r#type.as_str() {
            CANCEL_FLIGHT_INFO => {
                let cancel = CancelFlightInfoRequest::decode(&*action.body).map_err(|e| {
                    Status::invalid_argument(format!("invalid CancelFlightInfoRequest: {e}"))
                })?;
                let status = self.cancel(info_tickets(cancel.info)?);
                let result = CancelFlightInfoResult::new(status);
                return Ok(Response::new(Box::pin(futures::stream::iter([Ok(
                    arrow_flight::Result {
                        body: result.encode_to_vec().into(),
                    },
                )]))));
            }
            CANCEL_QUERY => {
                let cancel: ActionCancelQueryRequest = Any::decode(&*action.body)
                    .ok()
                    .and_then(|any| any.unpack().ok().flatten())
                    .ok_or_else(|| Status::invalid_argument("invalid ActionCancelQueryRequest"))?;
                let info = FlightInfo::decode(&*cancel.info).map_err(|e| {
                    Status::invalid_argument(format!("invalid FlightInfo in CancelQuery: {e}"))
                })?;
                let status = self.cancel(info_tickets(Some(info))?);
                // CancelResult shares CancelStatus's numbering.
                let result = ActionCancelQueryResult {
                    result: status as i32,
                };
                return Ok(Response::new(Box::pin(futures::stream::iter([Ok(
                    arrow_flight::Result {
                        body: result.as_any().encode_to_vec().into(),
                    },
                )]))));
            }
            "CreatePreparedStatement" => {
                // Refuse tables the tenant may not read before a worker plans anything.
                if let Some(create) = Any::decode(&*action.body)
                    .ok()
                    .and_then(|any| any.unpack::<ActionCreatePreparedStatementRequest>().ok())
                    .flatten()
                {
                    self.admission.check(&identity, &hints, &create.query)?;
                }
            }
            _ => {}
        }
        if !RELAYED_ACTIONS
            .iter()
            .any(|(name, _)| *name == action.r#type)
        {
            return Err(Status::unimplemented(format!(
                "action {:?} is not supported",
                action.r#type
            )));
        }
        let results = self.dispatcher.on(&pool)?.do_action(action).await?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            results.into_iter().map(Ok),
        ))))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = RELAYED_ACTIONS
            .into_iter()
            .chain(LOCAL_ACTIONS)
            .map(|(name, description)| {
                Ok(FlightActionType {
                    r#type: name.to_owned(),
                    description: description.to_owned(),
                })
            })
            .collect::<Vec<_>>();
        Ok(Response::new(Box::pin(futures::stream::iter(actions))))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not supported"))
    }
}
