//! The gateway's Flight endpoint. Each `FlightService` method maps its RPC to one call of the
//! pipeline ([`pipeline`]: identify → decode → admit → sign → dispatch → record), which decodes
//! the call once into a typed command ([`command`]) and takes it through every step. Flight SQL
//! commands pass through to a worker; two additions serve simple gRPC clients such as k6: a
//! `DoGet` whose ticket is UTF-8 SQL and a `GetFlightInfo` whose command is UTF-8 SQL.
//!
//! Some things are answered by the gateway rather than a worker, because only it can: binding
//! prepared-statement parameters ([`bind`], into a new signed handle), cancelling a query it is
//! streaming ([`cancel`]), hiding catalogs a tenant may not read ([`visible`]), and session
//! options ([`session`], kept in a signed cookie).

mod authenticate;
mod bind;
mod cancel;
mod command;
mod eager;
mod pipeline;
mod planned;
mod prepaid;
mod recorded;
mod session;
mod ticket;
mod visible;

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType as FlightActionType, Criteria, Empty, FlightData, FlightDescriptor,
    FlightInfo, HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use self::cancel::Running;
use self::command::Call;
use self::eager::{EagerRuns, NotStarted};
use self::pipeline::Reply;
use self::planned::PlannedInfos;
use self::prepaid::Prepaid;
use self::session::SessionCodec;
use crate::admission::Admission;
use crate::auth::{self, Identity};
use crate::dispatch::{Dispatcher, FlightDataStream};
use crate::metrics::{EagerOutcome, GatewayMetrics, Unclaimed};
use quiver_core::protocol::MAX_MESSAGE_BYTES;
use quiver_core::seal::Sealer;
use quiver_core::ticket::TicketSigner;

/// Request messages may be this many times the SQL limit, so SQL somewhat over the limit gets
/// the clear INVALID_ARGUMENT from the SQL check rather than the transport's OUT_OF_RANGE.
const REQUEST_TO_SQL_RATIO: usize = 4;
/// Smallest request message accepted: one row of prepared-statement parameters must fit.
const MIN_REQUEST_BYTES: usize = 4 << 20;

/// A call's headers and extensions (the caller's identity among them), kept to make a call of
/// another kind on the caller's behalf.
type CallHeaders = (tonic::metadata::MetadataMap, tonic::Extensions);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The gateway's `FlightService`.
#[derive(Debug, Clone)]
pub struct GatewayService {
    dispatcher: Dispatcher,
    signer: TicketSigner,
    /// Seals and opens session tokens (built once: an HMAC key setup per call adds up).
    sealer: Arc<Sealer>,
    admission: Arc<Admission>,
    metrics: Arc<GatewayMetrics>,
    running: Arc<Running>,
    sessions: SessionCodec,
    prepaid: Arc<Prepaid>,
    /// Planning answers by statement, so repeats skip the worker.
    planned: Arc<PlannedInfos>,
    /// Runs started at planning time, for their DoGet to claim; `None` when turned off.
    eager: Option<Arc<EagerRuns>>,
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
            sealer: Arc::new(Sealer::new(key)),
            admission,
            metrics,
            running: Arc::default(),
            sessions: SessionCodec::new(key),
            prepaid: Arc::default(),
            planned: Arc::default(),
            eager: Some(Arc::default()),
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

    /// Whether a statement's run starts when it is planned (the default), for its `DoGet` to
    /// claim, or only when the ticket is redeemed.
    pub fn with_eager_runs(mut self, eager: bool) -> Self {
        self.eager = eager.then(Arc::default);
        self
    }

    /// Starts the run of a planned statement's ticket as the caller's own `DoGet` would, with
    /// the planning call's headers. A run nobody claims gives the ticket its prepayment back,
    /// so a late `DoGet` is not counted twice.
    fn run_eagerly(&self, ticket: &[u8], nonce: u64, headers: CallHeaders) {
        let Some(eager) = &self.eager else {
            return;
        };
        let (metadata, mut extensions) = headers;
        let unclaimed = Unclaimed::default();
        extensions.insert(unclaimed.clone());
        let request = Request::from_parts(metadata, extensions, Call::Get(ticket.to_vec()));
        let Ok(caller) = self.identity(&request) else {
            return;
        };
        let (prepaid, tenant) = (self.prepaid.clone(), caller.tenant.clone());
        let metrics = self.metrics.clone();
        let service = self.clone();
        let started = eager.start(
            ticket,
            caller,
            async move { service.run(request).await },
            move || {
                unclaimed.set();
                prepaid.insert(nonce, &tenant);
                metrics.eager_run(EagerOutcome::Unclaimed);
            },
        );
        match started {
            Ok(()) => {}
            Err(NotStarted::Full) => self.metrics.eager_run(EagerOutcome::NotStarted),
            Err(NotStarted::Paused) => self.metrics.eager_run(EagerOutcome::Paused),
        }
    }

    /// The caller's identity: set by the authentication layer before the message was read,
    /// or (without that layer, in tests) checked here.
    fn identity<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        match request.extensions().get::<Identity>() {
            Some(identity) => Ok(identity.clone()),
            None => auth::authenticate(&self.admission.policy(), &self.sealer, request.metadata())
                .map_err(Status::from),
        }
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
        let sealer = self.sealer.clone();
        let server = FlightServiceServer::new(self)
            .max_decoding_message_size(request_limit)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        authenticate::Authenticated::new(server, admission, sealer)
    }
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
            let sealer = self.sealer.clone();
            let headers = request.metadata().clone();
            let result =
                tokio::task::spawn_blocking(move || auth::handshake(&policy, &sealer, &headers))
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
        let headers = self
            .eager
            .as_ref()
            .map(|_| (request.metadata().clone(), request.extensions().clone()));
        match self.run(request.map(Call::Info)).await? {
            Reply::Info(info) => Ok(Response::new(info)),
            Reply::Planned {
                info,
                ticket,
                nonce,
            } => {
                if let Some(headers) = headers {
                    self.run_eagerly(&ticket, nonce, headers);
                }
                Ok(Response::new(info))
            }
            _ => Err(mismatched("GetFlightInfo")),
        }
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
        let claimed = self.eager.as_ref().and_then(|eager| {
            eager.claim(&request.get_ref().ticket, || self.identity(&request).ok())
        });
        if let Some(claimed) = claimed {
            self.metrics.eager_run(EagerOutcome::Claimed);
            // The run's task ends without a reply only if it was torn down (the gateway
            // stopping): nothing of the query reached the client, so it may be retried.
            let reply = claimed.await.map_err(|_| {
                Status::unavailable("the query's run ended without an answer; retry the query")
            })?;
            return match reply? {
                Reply::Stream(stream) => Ok(Response::new(stream)),
                _ => Err(mismatched("DoGet")),
            };
        }
        match self
            .run(request.map(|t| Call::Get(t.ticket.to_vec())))
            .await?
        {
            Reply::Stream(stream) => Ok(Response::new(stream)),
            _ => Err(mismatched("DoGet")),
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
        let Reply::Results { results, cookie } = self.run(request.map(Call::Action)).await? else {
            return Err(mismatched("DoAction"));
        };
        let mut response =
            Response::new(Box::pin(futures::stream::iter(results.into_iter().map(Ok)))
                as Self::DoActionStream);
        if let Some(cookie) = cookie {
            let value = cookie
                .parse()
                .map_err(|_| Status::internal("session cookie is not a valid header"))?;
            response.metadata_mut().insert("set-cookie", value);
        }
        Ok(response)
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = command::RELAYED_ACTIONS
            .into_iter()
            .chain(command::LOCAL_ACTIONS)
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

/// A reply in another RPC's shape: the pipeline never produces one, so this is a bug.
fn mismatched(rpc: &str) -> Status {
    tracing::error!(rpc, "the pipeline answered in another RPC's shape");
    Status::internal("the gateway could not answer this call; see the gateway log")
}
