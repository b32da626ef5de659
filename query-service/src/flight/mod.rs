//! The gateway's Flight endpoint: protocol in and out, nothing else.
//!
//! Each call is decoded, checked as cheaply as possible (signatures, message shape), and handed
//! to [`crate::dispatch`]. Flight SQL commands pass through to a worker unchanged; two additions
//! serve simple gRPC clients such as k6: a `DoGet` whose ticket is UTF-8 SQL and a
//! `GetFlightInfo` whose command is UTF-8 SQL.

mod recorded;
pub mod ticket;

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use arrow_flight::{
    Action, ActionType as FlightActionType, Criteria, Empty, FlightData, FlightDescriptor,
    FlightInfo, HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
    flight_descriptor::DescriptorType,
};
use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use self::recorded::RecordedStream;
use self::ticket::{GatewayTicket, is_flight_sql, worker_ticket};
use crate::admission::Admission;
use crate::admission::classify::ClientHints;
use crate::auth::{self, Identity};
use crate::dispatch::{Dispatcher, FlightDataStream};
use crate::metrics::{GatewayMetrics, Outcome};
use crate::ticket::TicketSigner;
use crate::worker::MAX_MESSAGE_BYTES;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

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

/// The SQL a descriptor will run, for the permission check at planning time.
fn descriptor_sql(descriptor: &FlightDescriptor, signer: &TicketSigner) -> Option<String> {
    use arrow_flight::sql::{Any, Command};
    let any = Any::decode(&*descriptor.cmd).ok()?;
    match Command::try_from(any).ok()? {
        Command::CommandStatementQuery(q) => Some(q.query),
        Command::CommandPreparedStatementQuery(p) => signer
            .verify(
                &p.prepared_statement_handle,
                crate::ticket::TicketKind::Prepared,
            )
            .ok()
            .map(|t| t.sql),
        _ => None,
    }
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
            let hints = client_hints(request.metadata());
            let descriptor = normalise_descriptor(request.into_inner())?;
            // Refuse tables the tenant may not read before a worker plans anything.
            if let Some(sql) = descriptor_sql(&descriptor, &self.signer) {
                self.admission.check(&identity, &hints, &sql)?;
            }
            Ok::<_, Status>(self.dispatcher.get_flight_info(descriptor).await?)
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
            // Forged tickets are refused here, before admission or a worker is touched.
            let (ticket, permit) =
                match GatewayTicket::decode(&request.get_ref().ticket, &self.signer)? {
                    GatewayTicket::Metadata(bytes) => (Ticket::new(bytes), None),
                    GatewayTicket::Query(sql) => {
                        let hints = client_hints(request.metadata());
                        let admitted = std::time::Instant::now();
                        let permit = self
                            .admission
                            .admit(&identity, &hints, &sql)
                            .await
                            .inspect_err(|e| self.metrics.admission_rejected(e.source()))?;
                        self.metrics
                            .admitted(&permit.placement.path, admitted.elapsed());
                        let ticket =
                            worker_ticket(&self.signer, &sql, permit.placement.memory_limit);
                        (ticket, Some(permit))
                    }
                };
            let stream = self.dispatcher.do_get(ticket).await?;
            Ok::<_, Status>((stream, permit))
        }
        .await;
        match result {
            Ok((stream, permit)) => Ok(Response::new(Box::pin(RecordedStream::new(
                stream, record, permit,
            )))),
            Err(status) => {
                record.finish(Outcome::from_code(status.code()));
                Err(status)
            }
        }
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented(
            "DoPut is not supported: Quiver is read-only and prepared statements take no parameters yet",
        ))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        self.identify(request.metadata())?;
        let action = request.into_inner();
        if !RELAYED_ACTIONS
            .iter()
            .any(|(name, _)| *name == action.r#type)
        {
            return Err(Status::unimplemented(format!(
                "action {:?} is not supported",
                action.r#type
            )));
        }
        let results = self.dispatcher.do_action(action).await?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            results.into_iter().map(Ok),
        ))))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = RELAYED_ACTIONS.map(|(name, description)| {
            Ok(FlightActionType {
                r#type: name.to_owned(),
                description: description.to_owned(),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(actions))))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not supported"))
    }
}
