//! One call's path through the gateway, in one function ([`GatewayService::run`]):
//!
//! ```text
//! identify ──► decode (command) ──► admit ──► sign ──► track ──► dispatch ──► record
//! ```
//!
//! - **identify**: the caller (set by [`super::authenticate`]) and its selector hints;
//! - **decode**: the call's bytes into a typed [`Command`], signatures verified;
//! - **admit**: rate limits, the statement check, and for a run its group's queue;
//!   a statement planned before for the same catalogs is answered from [`super::planned`];
//! - **sign**: the request the worker gets, with its grant (the worker checks both again);
//! - **track**: a run is registered for cancels and given its deadline before it starts;
//! - **dispatch**: to the least-loaded ready worker of the pool ([`crate::dispatch`]);
//! - **record**: the reply, with the query's outcome recorded when its stream ends.
//!
//! Commands no worker takes part in (cancels, sessions, closing a prepared statement) are
//! answered right after decoding.

use std::sync::Arc;

use arrow_flight::sql::{ActionCancelQueryResult, ProstMessageExt, TicketStatementQuery};
use arrow_flight::{
    Action, CancelFlightInfoResult, CancelStatus, FlightDescriptor, FlightEndpoint, FlightInfo,
    Ticket,
};
use prost::Message;
use tonic::{Request, Status};

use super::GatewayService;
use super::command::{Call, Command, Local, Relayed};
use super::planned;
use super::recorded::{Query, RecordedStream};
use super::session::Session;
use super::visible;
use crate::admission::classify::ClientHints;
use crate::admission::{Checked, Permit};
use crate::auth::Identity;
use crate::dispatch::FlightDataStream;
use crate::metrics::{Outcome, QueryRecord, Unclaimed};
use quiver_core::protocol::CREATE_ADMITTED_PREPARED;
use quiver_core::ticket::{QueryTicket, TicketKind};

/// A worker may take this long past the query timeout to report its own timeout before the
/// gateway ends the query itself.
const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Who is calling, read once per call.
pub(super) struct Caller {
    identity: Identity,
    hints: ClientHints,
    session: Session,
}

/// What the gateway answers, in the shape of the RPC that asked.
pub(super) enum Reply {
    Info(FlightInfo),
    /// A statement's plan, whose one ticket (prepaid with `nonce`) the gateway may start
    /// running before the client redeems it ([`super::eager`]).
    Planned {
        info: FlightInfo,
        ticket: bytes::Bytes,
        nonce: u64,
    },
    Stream(FlightDataStream),
    Results {
        results: Vec<arrow_flight::Result>,
        /// The `set-cookie` value when the session changed.
        cookie: Option<String>,
    },
}

/// Admission's decision for a command bound for a worker.
struct Admitted {
    pool: String,
    /// What the worker's grant lets it read for this caller.
    catalogs: Vec<String>,
    /// The statement as checked, for a plan or a prepare (a run's is in its permit).
    checked: Option<Checked>,
    /// A run's slot in its group, held until its stream ends.
    permit: Option<Permit>,
    /// The catalog patterns a metadata listing is filtered to.
    visible: Option<Vec<String>>,
}

impl Admitted {
    fn checked(&self) -> Option<&Checked> {
        self.checked
            .as_ref()
            .or(self.permit.as_ref().map(|p| &p.checked))
    }
}

/// The request a worker gets.
enum Signed {
    Info(FlightDescriptor),
    Get(Ticket),
    Action(Action),
}

/// What a worker answered.
enum Answer {
    Info(FlightInfo),
    Stream(FlightDataStream),
    Results(Vec<arrow_flight::Result>),
}

/// A run, reachable by cancels and bounded by its deadline from before its first batch.
struct Tracked {
    query: Arc<Query>,
    registration: Option<super::cancel::Registration>,
    deadline: Option<super::recorded::Deadline>,
}

impl GatewayService {
    /// Serves one call. `GetFlightInfo` and `DoGet` calls count in the outcome metrics whether
    /// they stream or are refused at any step; a refused plan never reaches `DoGet`, so it is
    /// counted here.
    pub(super) async fn run(&self, request: Request<Call>) -> Result<Reply, Status> {
        let counted = !matches!(request.get_ref(), Call::Action(_));
        // Set by an eager run (never by a client: extensions do not come off the wire).
        let unclaimed = request.extensions().get::<Unclaimed>().cloned();
        let start = || {
            self.metrics
                .start_query(self.dispatcher.pool().name())
                .unless(unclaimed.clone())
        };
        let mut record = matches!(request.get_ref(), Call::Get(_)).then(start);
        let result = self.pipeline(request, &mut record).await;
        if let Err(status) = &result
            && counted
        {
            record
                .get_or_insert_with(start)
                .finish(Outcome::from_code(status.code()));
        }
        result
    }

    async fn pipeline(
        &self,
        request: Request<Call>,
        record: &mut Option<QueryRecord>,
    ) -> Result<Reply, Status> {
        let caller = self.identify(&request)?;
        let command = match Command::decode(request.into_inner(), &self.signer)? {
            Command::Relayed(command) => command,
            Command::Local(local) => return Ok(self.answer(caller, local)),
        };
        let mut admitted = self.admit(&caller, &command).await?;
        if let Some(record) = record.as_mut() {
            record.set_pool(&admitted.pool);
        }
        // A statement planned here before, for the same catalogs, needs no worker to plan it.
        let plan_key = match &command {
            Relayed::Plan { params, .. } => admitted
                .checked()
                .map(|c| planned::key(&admitted.pool, &c.sql, params.as_deref(), &c.catalogs)),
            _ => None,
        };
        if let Some(info) = plan_key.as_deref().and_then(|key| self.planned.get(key)) {
            let tracked = self.track(&command, &caller, admitted.permit.take());
            let answer = Answer::Info(info);
            return Ok(self.record(command, &caller, admitted, tracked, answer, record));
        }
        let (signed, grant) = self.sign(&command, &admitted);
        // Before the permit (which holds a run's checked statement) goes to the tracker.
        let mut worker = self.dispatcher.on(&admitted.pool)?;
        if let Some(checked) = admitted.checked() {
            worker = worker.for_statement(&caller.identity.tenant, &checked.sql);
            if let Some((_, limits, _)) = checked.placement.chain.last() {
                worker = worker.holding_at_most(limits.queue_timeout);
            }
        }
        let tracked = self.track(&command, &caller, admitted.permit.take());
        let answer = match signed {
            Signed::Info(descriptor) => {
                let info = worker.get_flight_info(descriptor, &grant).await?;
                if let Some(key) = &plan_key {
                    self.planned.insert(key, &info);
                }
                Answer::Info(info)
            }
            Signed::Get(ticket) => {
                let (stream, transport) = worker.do_get(ticket, &grant).await?;
                self.metrics.dispatched(&admitted.pool, transport);
                Answer::Stream(stream)
            }
            Signed::Action(action) => Answer::Results(worker.do_action(action, &grant).await?),
        };
        Ok(self.record(command, &caller, admitted, tracked, answer, record))
    }

    /// The caller's identity and hints: its headers first, then its session's options.
    fn identify<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let identity = self.identity(request)?;
        let session = self.sessions.session_of(request.metadata());
        let hints = session.hints(client_hints(request.metadata()));
        Ok(Caller {
            identity,
            hints,
            session,
        })
    }

    /// Rate limits and checks. A plan or a prepare makes a worker work, so it counts against
    /// the limits like a query and its statement is checked before a worker sees it; a run
    /// (unless its plan prepaid it) also waits for its group's slot. Metadata runs on the
    /// caller's group's pool, counted by identity.
    async fn admit(&self, caller: &Caller, command: &Relayed) -> Result<Admitted, Status> {
        let Caller {
            identity, hints, ..
        } = caller;
        let statement = |checked: Checked| Admitted {
            pool: checked.placement.pool.clone(),
            catalogs: checked.catalogs.clone(),
            checked: Some(checked),
            permit: None,
            visible: None,
        };
        let metadata = |visible| -> Result<Admitted, Status> {
            self.admission.count_call(identity)?;
            Ok(Admitted {
                pool: self.admission.pool_of(identity, hints),
                catalogs: self.admission.catalogs_of(identity),
                checked: None,
                permit: None,
                visible,
            })
        };
        match command {
            Relayed::Plan { sql, .. } | Relayed::Prepare { sql } => {
                Ok(statement(self.admission.plan(identity, hints, sql)?))
            }
            Relayed::Run { query, .. } => {
                let prepaid = query
                    .nonce
                    .is_some_and(|n| self.prepaid.take(n, &identity.tenant));
                let arrived = std::time::Instant::now();
                let permit = self
                    .admission
                    .admit(identity, hints, &query.sql, prepaid)
                    .await
                    .inspect_err(|e| self.metrics.admission_rejected(e.source()))?;
                self.metrics
                    .admitted(&permit.checked.placement.path, arrived.elapsed());
                Ok(Admitted {
                    pool: permit.checked.placement.pool.clone(),
                    catalogs: permit.checked.catalogs.clone(),
                    checked: None,
                    permit: Some(permit),
                    visible: None,
                })
            }
            Relayed::DescribeMetadata(_) => metadata(None),
            Relayed::FetchMetadata { lists_objects, .. } => metadata(
                lists_objects
                    .then(|| visible::scope(&self.admission.policy(), identity))
                    .flatten(),
            ),
        }
    }

    /// The worker's request and grant. A statement travels as an admitted ticket: the checked
    /// text, its parameters, its memory limit and the tenant's catalogs, which the worker checks
    /// against its plan.
    fn sign(&self, command: &Relayed, admitted: &Admitted) -> (Signed, String) {
        let grant = quiver_core::protocol::grant_header(&self.signer, &admitted.catalogs);
        let ticket = |params: Option<String>, memory_limit: Option<u64>| {
            let checked = admitted.checked().expect("a statement was checked");
            self.signer.sign(&QueryTicket {
                params,
                memory_limit,
                catalogs: Some(checked.catalogs.clone()),
                ..QueryTicket::new(TicketKind::Admitted, &checked.sql)
            })
        };
        let statement = |handle: Vec<u8>| {
            TicketStatementQuery {
                statement_handle: handle.into(),
            }
            .as_any()
            .encode_to_vec()
        };
        let signed = match command {
            Relayed::Plan { params, .. } => Signed::Info(FlightDescriptor::new_cmd(statement(
                ticket(params.clone(), None),
            ))),
            Relayed::Prepare { .. } => Signed::Action(Action {
                r#type: CREATE_ADMITTED_PREPARED.to_owned(),
                body: ticket(None, None).into(),
            }),
            Relayed::Run { query, .. } => {
                let memory_limit = admitted
                    .checked()
                    .and_then(|checked| checked.placement.memory_limit);
                Signed::Get(Ticket::new(statement(ticket(
                    query.params.clone(),
                    memory_limit,
                ))))
            }
            Relayed::DescribeMetadata(descriptor) => Signed::Info(descriptor.clone()),
            Relayed::FetchMetadata { bytes, .. } => Signed::Get(Ticket::new(bytes.clone())),
        };
        (signed, grant)
    }

    /// Registers a run before it is dispatched, so a cancel that races the first batch still
    /// lands, and starts its deadline, which ends it whether or not its client reads.
    fn track(&self, command: &Relayed, caller: &Caller, permit: Option<Permit>) -> Tracked {
        let query = Query::new(permit);
        let (registration, deadline) = match command {
            Relayed::Run { presented, .. } => (
                Some(
                    self.running
                        .register(presented, &caller.identity, query.clone()),
                ),
                Some(query.expire_after(self.query_timeout + DEADLINE_GRACE)),
            ),
            _ => (None, None),
        };
        Tracked {
            query,
            registration,
            deadline,
        }
    }

    /// The client's reply from the worker's answer. A plan's FlightInfo carries the gateway's
    /// own ticket (the checked text, prepaid once for this tenant) instead of the worker's; a
    /// stream is relayed through a [`RecordedStream`], which records its outcome when it ends.
    fn record(
        &self,
        command: Relayed,
        caller: &Caller,
        admitted: Admitted,
        tracked: Tracked,
        answer: Answer,
        record: &mut Option<QueryRecord>,
    ) -> Reply {
        match (command, answer) {
            (
                Relayed::Plan {
                    descriptor, params, ..
                },
                Answer::Info(mut info),
            ) => {
                let checked = admitted.checked.expect("a plan was checked");
                let nonce = rand::random::<u64>();
                self.prepaid.insert(nonce, &caller.identity.tenant);
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
                let ticket = bytes::Bytes::from(ticket.as_any().encode_to_vec());
                info.endpoint =
                    vec![FlightEndpoint::new().with_ticket(Ticket::new(ticket.clone()))];
                info.flight_descriptor = Some(descriptor);
                Reply::Planned {
                    info,
                    ticket,
                    nonce,
                }
            }
            (_, Answer::Info(info)) => Reply::Info(info),
            (_, Answer::Results(results)) => Reply::Results {
                results,
                cookie: None,
            },
            (_, Answer::Stream(mut stream)) => {
                if let Some(patterns) = admitted.visible {
                    stream = visible::filter(stream, patterns);
                }
                let record = record
                    .take()
                    .unwrap_or_else(|| self.metrics.start_query(&admitted.pool));
                Reply::Stream(Box::pin(RecordedStream::new(
                    tracked.query,
                    stream,
                    record,
                    tracked.registration,
                    tracked.deadline,
                )))
            }
        }
    }

    /// The commands the gateway answers alone.
    fn answer(&self, caller: Caller, local: Local) -> Reply {
        let one = |body: Vec<u8>, cookie| Reply::Results {
            results: vec![arrow_flight::Result { body: body.into() }],
            cookie,
        };
        match local {
            Local::Cancel { tickets, legacy } => {
                let status = self.cancel(&tickets, &caller.identity);
                if legacy {
                    // CancelResult shares CancelStatus's numbering.
                    let result = ActionCancelQueryResult {
                        result: status as i32,
                    };
                    one(result.as_any().encode_to_vec(), None)
                } else {
                    one(CancelFlightInfoResult::new(status).encode_to_vec(), None)
                }
            }
            Local::ClosePrepared => Reply::Results {
                results: Vec::new(),
                cookie: None,
            },
            Local::Session(action) => {
                let (body, cookie) = self.sessions.answer(caller.session, action);
                one(body, cookie)
            }
        }
    }

    /// Cancels `owner`'s queries redeemed with any of `tickets`; another caller's are not theirs
    /// to stop, whatever ticket they present.
    fn cancel(&self, tickets: &[Vec<u8>], owner: &Identity) -> CancelStatus {
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
