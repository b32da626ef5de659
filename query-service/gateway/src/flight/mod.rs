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

mod authenticate;
mod bind;
pub mod cancel;
mod prepaid;
mod recorded;
pub mod session;
pub mod ticket;
pub mod visible;

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::TicketStatementQuery;
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, Any, CommandStatementQuery, ProstMessageExt,
};
use arrow_flight::{
    Action, ActionType as FlightActionType, CancelFlightInfoRequest, CancelFlightInfoResult,
    CancelStatus, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
    flight_descriptor::DescriptorType,
};
use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use self::cancel::Running;
use self::prepaid::Prepaid;
use self::recorded::{Query, RecordedStream};
use self::session::{SessionCodec, proto as session_proto};
use self::ticket::{GatewayTicket, bound_prepared, is_flight_sql, is_metadata};
use crate::admission::classify::ClientHints;
use crate::admission::{Admission, Checked};
use crate::auth::{self, Identity};
use crate::dispatch::{Dispatcher, FlightDataStream};
use crate::metrics::{GatewayMetrics, Outcome};
use quiver_core::protocol::MAX_MESSAGE_BYTES;
use quiver_core::protocol::{CREATE_ADMITTED_PREPARED, grant_header};
use quiver_core::ticket::{QueryTicket, TicketKind, TicketSigner};

/// A worker may take this long past the query timeout to report its own timeout before the
/// gateway ends the query itself.
const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// Request messages may be this many times the SQL limit, so SQL somewhat over the limit gets
/// the clear INVALID_ARGUMENT from the SQL check rather than the transport's OUT_OF_RANGE.
const REQUEST_TO_SQL_RATIO: usize = 4;
/// Smallest request message accepted: one row of prepared-statement parameters must fit.
const MIN_REQUEST_BYTES: usize = 4 << 20;

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

const CREATE_PREPARED_STATEMENT: &str = "CreatePreparedStatement";
const CLOSE_PREPARED_STATEMENT: &str = "ClosePreparedStatement";
/// Flight SQL actions answered with a worker's help.
const RELAYED_ACTIONS: [(&str, &str); 2] = [
    (
        CREATE_PREPARED_STATEMENT,
        "Creates a reusable prepared statement resource on the server.",
    ),
    (
        CLOSE_PREPARED_STATEMENT,
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
    prepaid: Arc<Prepaid>,
    query_timeout: std::time::Duration,
    throttle: Arc<auth::Throttle>,
    /// Password checks (Argon2, deliberately slow) running at once.
    password_checks: Arc<tokio::sync::Semaphore>,
}

/// Password checks at once: about one per core, so sign-ins cannot starve queries.
const PASSWORD_CHECKS: usize = 2;
/// How long a Handshake waits for a password check slot before it is refused.
const PASSWORD_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
            prepaid: Arc::default(),
            query_timeout: quiver_core::protocol::DEFAULT_QUERY_TIMEOUT,
            throttle: Arc::default(),
            password_checks: Arc::new(tokio::sync::Semaphore::new(PASSWORD_CHECKS)),
        }
    }

    /// Ends every query after `timeout` (plus a short grace for the worker's own report),
    /// whether or not its client reads: the slot and the worker are freed either way.
    pub fn with_query_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// The caller's identity: set by the authentication layer before the message was read,
    /// or (without that layer, in tests) checked here.
    fn identity<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        match request.extensions().get::<Identity>() {
            Some(identity) => Ok(identity.clone()),
            None => self.identify(request.metadata()),
        }
    }

    /// The grant a worker needs for a call made for `catalogs`' holder.
    fn grant(&self, catalogs: &[String]) -> String {
        grant_header(&self.signer, catalogs)
    }

    /// An admitted ticket for a worker: the checked text, its parameters and the tenant's
    /// catalogs, which the worker checks against its plan.
    fn admitted(
        &self,
        checked: &Checked,
        params: Option<String>,
        memory_limit: Option<u64>,
    ) -> Vec<u8> {
        self.signer.sign(&QueryTicket {
            params,
            memory_limit,
            catalogs: Some(checked.catalogs.clone()),
            ..QueryTicket::new(TicketKind::Admitted, &checked.sql)
        })
    }

    /// Authentication: the first and cheapest check of every call.
    fn identify(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Identity, Status> {
        let policy = self.admission.policy();
        auth::authenticate(&policy, &self.key, metadata).map_err(Status::from)
    }

    /// The tonic service, behind authentication from headers. Requests may be as large as the
    /// SQL limit allows and no larger; results as large as the workers send.
    pub fn into_server(self) -> authenticate::Authenticated<FlightServiceServer<Self>> {
        let request_limit = self
            .admission
            .max_sql_bytes()
            .saturating_mul(REQUEST_TO_SQL_RATIO)
            .max(MIN_REQUEST_BYTES);
        let admission = self.admission.clone();
        let key = self.key.clone();
        let server = FlightServiceServer::new(self)
            .max_decoding_message_size(request_limit)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        authenticate::Authenticated::new(server, admission, key)
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
            .session_of(metadata)
            .hints(client_hints(metadata))
    }

    /// The session actions, answered from and into the session cookie.
    fn session_action(
        &self,
        action: &Action,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Response<BoxStream<arrow_flight::Result>>, Status> {
        let mut session = self.sessions.session_of(metadata);
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

    /// Cancels `owner`'s queries redeemed with any of `tickets`; another caller's are not theirs
    /// to stop, whatever ticket they present.
    fn cancel(&self, tickets: Vec<Vec<u8>>, owner: &Identity) -> CancelStatus {
        let cancelled: usize = tickets.iter().map(|t| self.running.cancel(t, owner)).sum();
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

/// What a `GetFlightInfo` descriptor asks for.
enum Planned {
    /// A statement (or a bound prepared statement): SQL and parameters.
    Statement { sql: String, params: Option<String> },
    /// A Flight SQL metadata command, answered by a worker from its catalog.
    Metadata,
}

/// Decodes a descriptor's command once. A prepared statement's handle is checked here too:
/// forged, expired or still unbound, it goes no further; an unknown command is refused.
fn planned(descriptor: &FlightDescriptor, signer: &TicketSigner) -> Result<Planned, Status> {
    use arrow_flight::sql::Command;
    let command = Any::decode(&*descriptor.cmd)
        .map_err(|e| Status::invalid_argument(format!("invalid Flight SQL command: {e}")))
        .and_then(|any| {
            Command::try_from(any)
                .map_err(|e| Status::invalid_argument(format!("invalid Flight SQL command: {e}")))
        })?;
    match command {
        Command::CommandStatementQuery(q) => Ok(Planned::Statement {
            sql: q.query,
            params: None,
        }),
        Command::CommandPreparedStatementQuery(p) => {
            let prepared = bound_prepared(signer, &p.prepared_statement_handle)?;
            Ok(Planned::Statement {
                sql: prepared.sql,
                params: prepared.params,
            })
        }
        command if is_metadata(&command) => Ok(Planned::Metadata),
        other => Err(Status::unimplemented(format!(
            "{} is not supported",
            other.type_url()
        ))),
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
            let user = auth::basic_user(request.metadata());
            if let Some(user) = &user {
                self.throttle.check(user)?;
            }
            let _slot = tokio::time::timeout(
                PASSWORD_CHECK_WAIT,
                self.password_checks.clone().acquire_owned(),
            )
            .await
            .map_err(|_| Status::resource_exhausted("too many sign-ins at once; retry shortly"))?
            .map_err(|_| Status::unavailable("the gateway is stopping"))?;
            let key = self.key.clone();
            let headers = request.metadata().clone();
            let result =
                tokio::task::spawn_blocking(move || auth::handshake(&policy, &key, &headers))
                    .await
                    .map_err(|_| {
                        Status::internal("the sign-in check failed; see the gateway log")
                    })?;
            if let Some(user) = &user {
                self.throttle.record(user, result.is_ok());
            }
            result?.1
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
            let identity = self.identity(&request)?;
            let hints = self.hints(request.metadata());
            let descriptor = normalise_descriptor(request.into_inner())?;
            match planned(&descriptor, &self.signer)? {
                Planned::Statement { sql, params } => {
                    // Planning makes a worker work: it counts against the rate limits, and the
                    // statement is checked before a worker sees it.
                    let checked = self.admission.plan(&identity, &hints, &sql)?;
                    let command = TicketStatementQuery {
                        statement_handle: self.admitted(&checked, params.clone(), None).into(),
                    };
                    let mut info = self
                        .dispatcher
                        .on(&checked.placement.pool)?
                        .get_flight_info(
                            FlightDescriptor::new_cmd(command.as_any().encode_to_vec()),
                            &self.grant(&checked.catalogs),
                        )
                        .await?;
                    // The client's ticket is the gateway's: the checked text, prepaid once.
                    let nonce = rand::random::<u64>();
                    self.prepaid.insert(nonce, &identity.tenant);
                    let ticket = TicketStatementQuery {
                        statement_handle: self
                            .signer
                            .sign(&QueryTicket {
                                params,
                                nonce: Some(nonce),
                                ..QueryTicket::new(TicketKind::Statement, &checked.sql)
                            })
                            .into(),
                    };
                    info.endpoint = vec![
                        FlightEndpoint::new()
                            .with_ticket(Ticket::new(ticket.as_any().encode_to_vec())),
                    ];
                    info.flight_descriptor = Some(descriptor);
                    Ok::<_, Status>(info)
                }
                Planned::Metadata => {
                    self.admission.count_call(&identity)?;
                    let pool = self.admission.pool_of(&identity, &hints);
                    let grant = self.grant(&self.admission.catalogs_of(&identity));
                    Ok(self
                        .dispatcher
                        .on(&pool)?
                        .get_flight_info(descriptor, &grant)
                        .await?)
                }
            }
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
            let identity = self.identity(&request)?;
            let hints = self.hints(request.metadata());
            // Forged tickets are refused here, before admission or a worker is touched.
            let presented = &request.get_ref().ticket;
            let (ticket, permit, scope, grant) =
                match GatewayTicket::decode(presented, &self.signer)? {
                    GatewayTicket::Metadata(bytes) => {
                        self.admission.count_call(&identity)?;
                        let scope = lists_catalog_objects(&bytes)
                            .then(|| visible::scope(&self.admission.policy(), &identity))
                            .flatten();
                        let grant = self.grant(&self.admission.catalogs_of(&identity));
                        (Ticket::new(bytes), None, scope, grant)
                    }
                    GatewayTicket::Query(query) => {
                        let prepaid = query
                            .nonce
                            .is_some_and(|n| self.prepaid.take(n, &identity.tenant));
                        let admitted = std::time::Instant::now();
                        let permit = self
                            .admission
                            .admit(&identity, &hints, &query.sql, prepaid)
                            .await
                            .inspect_err(|e| self.metrics.admission_rejected(e.source()))?;
                        self.metrics
                            .admitted(&permit.checked.placement.path, admitted.elapsed());
                        let handle = self.admitted(
                            &permit.checked,
                            query.params.clone(),
                            permit.checked.placement.memory_limit,
                        );
                        let ticket = TicketStatementQuery {
                            statement_handle: handle.into(),
                        };
                        let grant = self.grant(&permit.checked.catalogs);
                        (
                            Ticket::new(ticket.as_any().encode_to_vec()),
                            Some(permit),
                            None,
                            grant,
                        )
                    }
                };
            // A query runs on its group's pool, metadata on the caller's group's pool.
            let pool = match &permit {
                Some(permit) => permit.checked.placement.pool.clone(),
                None => self.admission.pool_of(&identity, &hints),
            };
            record.set_pool(&pool);
            // Registered before dispatch, so a cancel that races the first batch still lands.
            let is_query = permit.is_some();
            let query = Query::new(permit);
            let registration =
                is_query.then(|| self.running.register(presented, &identity, query.clone()));
            let deadline =
                is_query.then(|| query.expire_after(self.query_timeout + DEADLINE_GRACE));
            let mut stream = self.dispatcher.on(&pool)?.do_get(ticket, &grant).await?;
            if let Some(patterns) = scope {
                stream = visible::filter(stream, patterns);
            }
            Ok::<_, Status>((stream, query, registration, deadline))
        }
        .await;
        match result {
            Ok((stream, query, registration, deadline)) => Ok(Response::new(Box::pin(
                RecordedStream::new(query, stream, record, registration, deadline),
            ))),
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
        self.identity(&request)?;
        let result = bind::bind(&self.signer, request.into_inner()).await?;
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let identity = self.identity(&request)?;
        let hints = self.hints(request.metadata());
        if matches!(
            request.get_ref().r#type.as_str(),
            SET_SESSION_OPTIONS | GET_SESSION_OPTIONS | CLOSE_SESSION
        ) {
            return self.session_action(request.get_ref(), request.metadata());
        }
        let action = request.into_inner();
        let one = |body: Vec<u8>| -> Result<Response<Self::DoActionStream>, Status> {
            Ok(Response::new(Box::pin(futures::stream::iter([Ok(
                arrow_flight::Result { body: body.into() },
            )]))))
        };
        match action.r#type.as_str() {
            CANCEL_FLIGHT_INFO => {
                let cancel = CancelFlightInfoRequest::decode(&*action.body).map_err(|e| {
                    Status::invalid_argument(format!("invalid CancelFlightInfoRequest: {e}"))
                })?;
                let status = self.cancel(info_tickets(cancel.info)?, &identity);
                one(CancelFlightInfoResult::new(status).encode_to_vec())
            }
            CANCEL_QUERY => {
                let cancel: ActionCancelQueryRequest = unpack(&action.body)?;
                let info = FlightInfo::decode(&*cancel.info).map_err(|e| {
                    Status::invalid_argument(format!("invalid FlightInfo in CancelQuery: {e}"))
                })?;
                let status = self.cancel(info_tickets(Some(info))?, &identity);
                // CancelResult shares CancelStatus's numbering.
                let result = ActionCancelQueryResult {
                    result: status as i32,
                };
                one(result.as_any().encode_to_vec())
            }
            CREATE_PREPARED_STATEMENT => {
                let create: ActionCreatePreparedStatementRequest = unpack(&action.body)?;
                // Planning on a worker counts like a query, and the statement is checked first.
                let checked = self.admission.plan(&identity, &hints, &create.query)?;
                let admitted = Action {
                    r#type: CREATE_ADMITTED_PREPARED.to_owned(),
                    body: self.admitted(&checked, None, None).into(),
                };
                let results = self
                    .dispatcher
                    .on(&checked.placement.pool)?
                    .do_action(admitted, &self.grant(&checked.catalogs))
                    .await?;
                Ok(Response::new(Box::pin(futures::stream::iter(
                    results.into_iter().map(Ok),
                ))))
            }
            CLOSE_PREPARED_STATEMENT => {
                // Handles are stateless: closing one only checks that it is genuine.
                let close: ActionClosePreparedStatementRequest = unpack(&action.body)?;
                self.signer
                    .verify(&close.prepared_statement_handle, TicketKind::Prepared)?;
                Ok(Response::new(Box::pin(futures::stream::empty())))
            }
            other => Err(Status::unimplemented(format!(
                "action {other:?} is not supported"
            ))),
        }
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

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// GetFlightInfo descriptors: decoded or refused with a status, never a panic; a
        /// statement is taken as sent, and nothing unsigned becomes a prepared statement.
        #[test]
        fn descriptors_decode_or_refuse(cmd in prop_oneof![any_like(), prop::collection::vec(any::<u8>(), 0..256)]) {
            let signer = TicketSigner::new(b"k");
            let descriptor = FlightDescriptor::new_cmd(cmd);
            match planned(&descriptor, &signer) {
                Ok(Planned::Statement { params, .. }) => prop_assert!(params.is_none()),
                Ok(Planned::Metadata) => {}
                Err(status) => prop_assert!(!status.message().is_empty()),
            }
        }

        /// Action bodies: the message the action takes, or INVALID_ARGUMENT.
        #[test]
        fn action_bodies_unpack_or_refuse(body in prop_oneof![any_like(), prop::collection::vec(any::<u8>(), 0..256)]) {
            for result in [
                unpack::<ActionCreatePreparedStatementRequest>(&body).map(|_| ()),
                unpack::<ActionClosePreparedStatementRequest>(&body).map(|_| ()),
                unpack::<CommandStatementQuery>(&body).map(|_| ()),
            ] {
                if let Err(status) = result {
                    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                }
            }
            let _ = lists_catalog_objects(&body);
        }
    }
}
