//! Dispatch: sends a query to the least-loaded ready worker of its pool and relays the answer.
//!
//! A worker that fails before the client has seen a row (connection refused, killed, still
//! warming up) costs the client nothing: the call is retried once on another worker; the schema
//! is held back until the first batch so a worker dying while it plans is retried too. Once
//! batches have flowed, a failure is reported as `UNAVAILABLE` so the client knows a retry is
//! safe. A worker is judged failed on transport facts only (a connection or stream error from
//! the HTTP/2 stack or the fetch connection, or the worker's own state metadata), never on an
//! error's text, which a query can write.
//! Flight data is relayed message by message, never decoded into Arrow or collected, so the
//! gateway's memory does not grow with the result. On an io thread a DoGet goes to the worker
//! by the fetch exchange ([`fetch`]) rather than as a gRPC call.
//!
//! A pool that may sit at zero workers (a wake timeout is set) holds a call that finds no ready
//! worker instead of refusing it: the call waits, counted in the pool's demand as waiting for
//! the pool to wake, until a worker reports SERVING or the wake timeout passes. A pool that
//! may not be at zero still answers UNAVAILABLE at once, so a client fails over quickly.

pub mod claim;
mod connect;
pub mod discovery;
mod fetch;
pub mod pool;
pub mod querypools;
pub mod registry;
pub mod suspects;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::{Action, FlightData, FlightDescriptor, FlightInfo, Ticket};
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tonic::{Code, Status};

use self::pool::{Worker, WorkerLoad, WorkerPool};
use self::registry::Pools;
use self::suspects::{HELD_BACK_AFTER, Hold, PROBATION_AFTER, StatementKey, Suspects, WINDOW};
use quiver_core::protocol::WORKER_STATE_HEADER;
use quiver_core::protocol::{GRANT_HEADER, carries_rows};

/// A relayed stream of Flight data.
pub type FlightDataStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send>>;

/// Why a query could not be dispatched.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No worker in the pool reports SERVING.
    #[error("no ready worker in pool {pool:?} ({workers} workers, none ready); retry shortly")]
    NoReadyWorker {
        /// The pool.
        pool: String,
        /// Workers in it, ready or not.
        workers: usize,
    },
    /// The pool had no ready worker and none became ready within the wake timeout.
    #[error(
        "pool {pool:?} has no ready worker after waiting {} for it to wake; retry shortly",
        humantime::format_duration(*.waited)
    )]
    WakeTimeout {
        /// The pool.
        pool: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// The worker failed as a process or connection, on the first try and the retry.
    #[error("worker {endpoint} failed: {message}; the query can be retried")]
    WorkerFailed {
        /// The last worker tried.
        endpoint: String,
        /// What the connection reported.
        message: String,
    },
    /// The worker answered with an error about the query itself; passed through unchanged.
    #[error("{}", .0.message())]
    Worker(Box<Status>),
    /// A placement names a pool this gateway does not serve (the config was checked against
    /// the pools, so this means the pools changed under a running config).
    #[error("pool {pool:?} is not served by this gateway (pools: {known})")]
    UnknownPool {
        /// The pool asked for.
        pool: String,
        /// The pools served, comma-separated.
        known: String,
    },
    /// The statement was running on workers that failed as processes, twice within
    /// [`WINDOW`]: it is not sent to another ([`suspects`]).
    #[error(
        "this statement was running on {HELD_BACK_AFTER} workers that failed within {}; it is \
         held back for {} so it cannot stop more",
        humantime::format_duration(WINDOW),
        humantime::format_duration(*.left)
    )]
    HeldBack {
        /// How much longer it is held back.
        left: Duration,
    },
    /// Workers failed under the tenant's statements on [`PROBATION_AFTER`] workers within
    /// [`WINDOW`], and this statement has not completed within the last one ([`suspects`]).
    #[error(
        "{PROBATION_AFTER} workers failed within {} while running this tenant's statements; \
         until {} from now only statements that completed recently are run, and this one has \
         not",
        humantime::format_duration(WINDOW),
        humantime::format_duration(*.left)
    )]
    OnProbation {
        /// How much longer the tenant's new statements are held back.
        left: Duration,
    },
    /// A worker address that is not a valid URL.
    #[error("invalid worker endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// As given.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// How a failed call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The connection or stream broke: the worker is suspect.
    Transport,
    /// The worker said it cannot serve yet (warming up): try another, its health will tell.
    NotReady,
    /// The worker answered about the query itself.
    Query,
}

/// Sorts a status by who failed. Statuses the client library made from a transport error carry
/// that error as their source; statuses a worker sent do not, and only the worker's own code
/// sets [`WORKER_STATE_HEADER`].
fn failure(status: &Status) -> Failure {
    if std::error::Error::source(status).is_some() {
        Failure::Transport
    } else if status.code() == Code::Unavailable
        && status.metadata().contains_key(WORKER_STATE_HEADER)
    {
        Failure::NotReady
    } else {
        Failure::Query
    }
}

/// Whether a transport failure happened after the call reached the worker: a worker that was
/// gone before it (connection refused or never made, as when it died idle and its health
/// stream has not told yet) cannot have failed because of the call.
fn reached_worker(status: &Status) -> bool {
    use std::io::ErrorKind;
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<connect::NotSent>() {
            return false;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::TimedOut
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            )
        {
            return false;
        }
        source = err.source();
    }
    true
}

/// A call's request with the gateway's grant header.
fn granted<T>(message: T, grant: &str) -> Result<tonic::Request<T>, Status> {
    let mut request = tonic::Request::new(message);
    let value = grant
        .parse()
        .map_err(|_| Status::internal("the worker grant is not a valid header"))?;
    request.metadata_mut().insert(GRANT_HEADER, value);
    Ok(request)
}

/// Calls one pool holds at most while it wakes; past it they fail fast with UNAVAILABLE. Runs
/// are bounded by admission already, but planning calls take no slot: this bounds what callers
/// can make the gateway hold for a pool that cannot wake.
const MAX_WAITING: usize = 1024;

/// Messages held before the first batch at most; past it the stream is relayed as it is (a
/// result with that many dictionaries is already streaming).
const HELD_MESSAGES: usize = 64;

/// How a DoGet reached its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The fetch exchange, on an io thread's own connection.
    Fetch,
    /// A gRPC call: from the main runtime (TLS clients), past an io thread's connection cap,
    /// or to a worker that refused the exchange.
    Grpc,
}

impl Transport {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Fetch => "fetch",
            Transport::Grpc => "grpc",
        }
    }
}

/// A worker's DoGet answer: over this io thread's fetch connection when there is one to use,
/// else over the shared gRPC connection.
enum Answer {
    Fetch(fetch::Fetch),
    Grpc(tonic::Streaming<FlightData>),
}

impl Answer {
    /// Sends `ticket` with `grant` to `worker`.
    async fn start(worker: &Arc<Worker>, ticket: &Ticket, grant: &str) -> Result<Self, Status> {
        if crate::io_threads::is_current()
            && let Some(started) = fetch::start(worker, &ticket.ticket, grant).await
        {
            return started.map(Answer::Fetch);
        }
        let request = granted(ticket.clone(), grant)?;
        Ok(Answer::Grpc(
            worker.client().do_get(request).await?.into_inner(),
        ))
    }

    fn transport(&self) -> Transport {
        match self {
            Answer::Fetch(_) => Transport::Fetch,
            Answer::Grpc(_) => Transport::Grpc,
        }
    }

    async fn message(&mut self) -> Result<Option<FlightData>, Status> {
        match self {
            Answer::Fetch(fetch) => fetch.message().await,
            Answer::Grpc(stream) => stream.message().await,
        }
    }
}

/// Sends calls to the workers of one of the gateway's pools.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    pools: Arc<Pools>,
    pool: Arc<WorkerPool>,
    /// How long a call waits for a pool with no ready worker to wake; `None` fails fast.
    wake_timeout: Option<Duration>,
    /// Statements that were running on failed workers, shared by every dispatcher.
    suspects: Arc<Suspects>,
    /// The call's statement, when it plans or runs one, and its tenant (for the log).
    statement: Option<(StatementKey, Arc<str>)>,
}

impl Dispatcher {
    /// Dispatches to the default pool of `pools`; [`Dispatcher::on`] picks another.
    pub fn new(pools: Arc<Pools>) -> Self {
        let pool = pools.default_pool().clone();
        Self {
            pools,
            pool,
            wake_timeout: None,
            suspects: Arc::default(),
            statement: None,
        }
    }

    /// Holds calls to a pool with no ready worker for up to `timeout` while it wakes (pools
    /// that scale to zero); `None`, the default, answers UNAVAILABLE at once.
    pub fn with_wake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.wake_timeout = timeout;
        self
    }

    /// The pool dispatched to.
    pub fn pool(&self) -> &Arc<WorkerPool> {
        &self.pool
    }

    /// A dispatcher for the pool named `pool` (a query's placement), so a group's queries only
    /// ever reach its own pool's workers.
    pub fn on(&self, pool: &str) -> Result<Dispatcher, DispatchError> {
        if pool == self.pool.name() {
            return Ok(self.clone());
        }
        Ok(Self {
            pools: self.pools.clone(),
            pool: self.pools.get(pool)?,
            wake_timeout: self.wake_timeout,
            suspects: self.suspects.clone(),
            statement: self.statement.clone(),
        })
    }

    /// The same dispatcher, holding a call for a waking pool at most `limit` (the call's group
    /// queue timeout: a held call is a queued call, and no group lets one queue longer).
    pub fn holding_at_most(mut self, limit: Duration) -> Self {
        self.wake_timeout = self.wake_timeout.map(|t| t.min(limit));
        self
    }

    /// The same dispatcher, for a call that plans or runs `sql` for `tenant`: a worker failing
    /// under it counts against the statement ([`suspects`]).
    pub fn for_statement(mut self, tenant: &str, sql: &str) -> Self {
        self.statement = Some((self.suspects.key(tenant, sql), tenant.into()));
        self
    }

    /// Records that `worker` failed as a process (`status`) under the call's statement, if the
    /// call had reached it; how much longer the statement is held back, if it now is.
    fn failed_under_statement(&self, worker: &Worker, status: &Status) -> Option<DispatchError> {
        let (key, tenant) = self.statement.as_ref().filter(|_| reached_worker(status))?;
        let failed = self.suspects.record(*key, worker.id());
        // Said once, when it happens: every refusal after it would flood the log.
        if failed.held_back {
            tracing::warn!(
                %tenant,
                worker = %worker.endpoint(),
                "a statement is held back for {}: {HELD_BACK_AFTER} workers failed while running it",
                humantime::format_duration(WINDOW)
            );
        }
        if failed.probation {
            tracing::warn!(
                %tenant,
                worker = %worker.endpoint(),
                "tenant on probation for {}: {PROBATION_AFTER} workers failed while running its \
                 statements; only its statements that completed recently are run",
                humantime::format_duration(WINDOW)
            );
        }
        self.held_back()
    }

    /// Why the call's statement is not to be sent, if it is not ([`suspects`]).
    fn held_back(&self) -> Option<DispatchError> {
        match self.suspects.held_back(self.statement.as_ref()?.0)? {
            Hold::Statement(left) => Some(DispatchError::HeldBack { left }),
            Hold::Tenant(left) => Some(DispatchError::OnProbation { left }),
        }
    }

    /// Records that the call's statement ran to its end, so it still runs if its tenant is
    /// put on probation.
    fn completed(&self) {
        if let Some((key, _)) = &self.statement {
            self.suspects.completed(*key);
        }
    }

    /// The least-loaded ready worker other than `exclude`. With no worker ready at all and a
    /// wake timeout set, waits for one (bounded by the timeout), counted as waiting meanwhile;
    /// a worker that is ready but excluded or paused after a failure is no wake-up, so that
    /// case fails at once as without a wake timeout, as does a call past [`MAX_WAITING`].
    async fn pick(&self, exclude: Option<&Arc<Worker>>) -> Result<Arc<Worker>, DispatchError> {
        let no_worker = match self.pool.pick(exclude) {
            Ok(worker) => return Ok(worker),
            Err(e) => e,
        };
        let Some(timeout) = self.wake_timeout else {
            return Err(no_worker);
        };
        if self.pool.ready_count() > 0 {
            // A worker turned ready since the pick: the pool has woken, take it.
            return self.pool.pick(exclude);
        }
        if self.pool.waiting() >= MAX_WAITING {
            return Err(no_worker);
        }
        let _waiting = self.pool.start_waiting();
        let started = Instant::now();
        tracing::debug!(pool = %self.pool.name(), "no ready worker; holding the call while the pool wakes");
        let woke = tokio::time::timeout(timeout, self.pool.wait_until(|p| p.ready_count() > 0));
        if woke.await.is_err() {
            return Err(DispatchError::WakeTimeout {
                pool: self.pool.name().to_owned(),
                waited: started.elapsed(),
            });
        }
        tracing::debug!(
            pool = %self.pool.name(),
            waited_ms = started.elapsed().as_millis(),
            "pool woke; dispatching the held call"
        );
        self.pool.pick(exclude)
    }

    /// Runs `call` on the least-loaded ready worker, and once more on another if the first
    /// worker fails as a process, unless the statement is held back. The load guard is
    /// returned so streams can hold it.
    async fn with_retry<T, F, Fut>(&self, call: F) -> Result<(T, WorkerLoad), DispatchError>
    where
        F: Fn(Arc<Worker>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        if let Some(held) = self.held_back() {
            return Err(held);
        }
        let mut failed: Option<Arc<Worker>> = None;
        let mut last_error = None;
        for _attempt in 0..2 {
            let worker = match self.pick(failed.as_ref()).await {
                Ok(w) => w,
                Err(no_worker) => return Err(last_error.unwrap_or(no_worker)),
            };
            let load = worker.start_query();
            match call(worker.clone()).await {
                Ok(value) => {
                    worker.answered();
                    return Ok((value, load));
                }
                Err(status) => match failure(&status) {
                    Failure::Query => {
                        worker.answered();
                        return Err(DispatchError::Worker(Box::new(status)));
                    }
                    kind => {
                        tracing::warn!(worker = %worker.endpoint(), error = %status, "worker failed; retrying on another");
                        if kind == Failure::Transport {
                            worker.mark_failed();
                            if let Some(held) = self.failed_under_statement(&worker, &status) {
                                return Err(held);
                            }
                        }
                        last_error = Some(DispatchError::WorkerFailed {
                            endpoint: worker.endpoint().to_owned(),
                            message: status.message().to_owned(),
                        });
                        failed = Some(worker);
                    }
                },
            }
        }
        Err(last_error.expect("two failed attempts recorded an error"))
    }

    /// `GetFlightInfo` on a worker, with the gateway's `grant`. The returned info's endpoints
    /// carry no location, so the client redeems its tickets at the gateway.
    pub async fn get_flight_info(
        &self,
        descriptor: FlightDescriptor,
        grant: &str,
    ) -> Result<FlightInfo, DispatchError> {
        let (response, _load) = self
            .with_retry(|worker| {
                let request = granted(descriptor.clone(), grant);
                async move { worker.client().get_flight_info(request?).await }
            })
            .await?;
        let mut info = response.into_inner();
        for endpoint in &mut info.endpoint {
            endpoint.location.clear();
        }
        Ok(info)
    }

    /// `DoAction` on a worker, collecting its (small) results.
    pub async fn do_action(
        &self,
        action: Action,
        grant: &str,
    ) -> Result<Vec<arrow_flight::Result>, DispatchError> {
        let (results, _load) = self
            .with_retry(|worker| {
                let request = granted(action.clone(), grant);
                async move {
                    let mut stream = worker.client().do_action(request?).await?.into_inner();
                    let mut out = Vec::new();
                    while let Some(item) = stream.message().await? {
                        out.push(item);
                    }
                    Ok(out)
                }
            })
            .await?;
        Ok(results)
    }

    /// `DoGet` on a worker, relaying its Flight data as it arrives. Messages are held until the
    /// first one with rows (or the end), so a worker that dies before the client has seen a row
    /// is retried on another. Also says which transport carried it.
    pub async fn do_get(
        &self,
        ticket: Ticket,
        grant: &str,
    ) -> Result<(FlightDataStream, Transport), DispatchError> {
        let ((held, transport, rest), load) = self
            .with_retry(|worker| {
                let ticket = &ticket;
                async move {
                    let mut stream = Answer::start(&worker, ticket, grant).await?;
                    let transport = stream.transport();
                    let mut held = Vec::new();
                    while held.len() < HELD_MESSAGES {
                        match stream.message().await? {
                            Some(message) => {
                                let rows = carries_rows(&message.data_header);
                                held.push(message);
                                if rows {
                                    break;
                                }
                            }
                            None => break,
                        }
                    }
                    Ok((held, transport, stream))
                }
            })
            .await?;
        let head = futures::stream::iter(held.into_iter().map(Ok));
        // The rest, which ends after its first error. The load guard lives as long as the
        // relayed stream (a tuple drops in field order: the answer first).
        let relay = (rest, load, self.clone());
        let tail = futures::stream::unfold(Some(relay), |relay| async move {
            // Kept whole, so it drops in that order however the stream ends.
            let mut relay = relay?;
            match relay.0.message().await {
                Ok(Some(message)) => Some((Ok(message), Some(relay))),
                Ok(None) => {
                    relay.2.completed();
                    None
                }
                Err(status) if failure(&status) == Failure::Transport => {
                    let (_, load, this) = &relay;
                    this.failed_under_statement(load.worker(), &status);
                    let failed = Status::unavailable(format!(
                        "worker {} failed while streaming results: {}; the query can be retried",
                        load.worker().endpoint(),
                        status.message()
                    ));
                    Some((Err(failed), None))
                }
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok((Box::pin(head.chain(tail)), transport))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_to_the_named_pool_only() {
        let pools = Pools::new(["a", "b"]);
        pools.get("a").unwrap().add("127.0.0.1:1").unwrap();
        let dispatcher = Dispatcher::new(pools);
        assert_eq!(dispatcher.pool().name(), "a");
        let b = dispatcher.on("b").unwrap();
        assert_eq!(b.pool().name(), "b");
        // Pool b has no worker: its query is refused even though pool a has one.
        let err = b
            .do_get(Ticket::new("SELECT 1"), "grant")
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, DispatchError::NoReadyWorker { pool, workers: 0 } if pool == "b"),
            "{err}"
        );
        assert!(matches!(
            dispatcher.on("c"),
            Err(DispatchError::UnknownPool { .. })
        ));
    }

    /// Refusals read as sentences, whatever their line breaks in the source.
    #[test]
    fn refusals_have_no_runs_of_spaces() {
        let left = Duration::from_secs(61);
        for refusal in [
            DispatchError::HeldBack { left },
            DispatchError::OnProbation { left },
        ] {
            let text = refusal.to_string();
            assert!(!text.contains("  "), "{text}");
        }
    }

    /// What the connection to a worker that died under a call reports.
    fn died() -> Status {
        let mut status = Status::unavailable("connection reset");
        status.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        status
    }

    #[tokio::test]
    async fn a_refused_grpc_connection_never_reached_the_worker() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let channel = connect::channel(
            &tonic::transport::Endpoint::from_shared(endpoint.clone()).unwrap(),
            endpoint.strip_prefix("http://").unwrap(),
        );
        let status = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(failure(&status), Failure::Transport, "{status:?}");
        // Marked as never sent whatever the I/O error's kind, not only for the kinds listed.
        let mut source = std::error::Error::source(&status);
        let mut marked = false;
        while let Some(err) = source {
            marked |= err.is::<connect::NotSent>();
            source = err.source();
        }
        assert!(marked, "{status:?}");
        assert!(!reached_worker(&status), "{status:?}");
        assert!(reached_worker(&died()));
    }

    #[tokio::test]
    async fn a_statement_under_which_two_workers_fail_is_held_back() {
        let pools = Pools::new(["a"]);
        let pool = pools.get("a").unwrap().clone();
        for port in 1..=3 {
            let worker = pool.add(&format!("127.0.0.1:{port}")).unwrap();
            pool.set_ready_for_test(&worker);
        }
        let tried = std::sync::Mutex::new(Vec::new());
        let dying = |worker: Arc<Worker>| {
            tried.lock().unwrap().push(worker.endpoint().to_owned());
            async { Err::<(), _>(died()) }
        };
        let plain = Dispatcher::new(pools);
        let boom = plain.clone().for_statement("t", "SELECT boom()");
        // The first failure may be a coincidence: retried on another worker. The second is
        // not: held back, and not sent to the third worker.
        let err = boom.with_retry(dying).await.err().unwrap();
        assert!(matches!(err, DispatchError::HeldBack { .. }), "{err}");
        let first = tried.lock().unwrap().clone();
        assert_eq!(first.len(), 2, "{first:?}");
        assert_ne!(first[0], first[1]);
        // Sent again (every worker available again), it reaches none.
        for worker in pool.workers() {
            worker.answered();
        }
        let err = boom.with_retry(dying).await.err().unwrap();
        assert!(matches!(err, DispatchError::HeldBack { .. }), "{err}");
        assert_eq!(tried.lock().unwrap().len(), 2);
        let status = Status::from(err);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("held back"), "{status}");
        // Workers that were gone before a call reached them (connection refused) do not count.
        let gone = |worker: Arc<Worker>| async move {
            let _ = worker;
            let mut status = Status::unavailable("connection refused");
            status.set_source(Arc::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )));
            Err::<(), _>(status)
        };
        for worker in pool.workers() {
            worker.answered();
        }
        let other = plain.clone().for_statement("t", "SELECT 2");
        for _ in 0..3 {
            let err = other.with_retry(gone).await.err().unwrap();
            assert!(matches!(err, DispatchError::WorkerFailed { .. }), "{err}");
            for worker in pool.workers() {
                worker.answered();
            }
        }
        // The same failures under calls without a statement hold nothing back.
        let err = plain.with_retry(dying).await.err().unwrap();
        assert!(matches!(err, DispatchError::WorkerFailed { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_that_may_be_at_zero_holds_calls_until_its_wake_timeout() {
        let pools = Pools::new(["a"]);
        let pool = pools.get("a").unwrap().clone();
        let dispatcher = Dispatcher::new(pools).with_wake_timeout(Some(Duration::from_secs(5)));
        let held = tokio::spawn({
            let dispatcher = dispatcher.clone();
            async move { dispatcher.pick(None).await }
        });
        // The held call shows as waiting (the demand the scaler wakes the pool for).
        while pool.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let worker = pool.add("127.0.0.1:1").unwrap();
        pool.set_ready_for_test(&worker);
        let picked = held.await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&picked, &worker));
        assert_eq!(pool.waiting(), 0);

        // No worker becomes ready: the call ends at the timeout, and stops counting.
        pool.remove("127.0.0.1:1");
        let err = dispatcher.pick(None).await.unwrap_err();
        assert!(
            matches!(&err, DispatchError::WakeTimeout { waited, .. } if *waited >= Duration::from_secs(5)),
            "{err}"
        );
        assert_eq!(pool.waiting(), 0);

        // Held calls are bounded: past the bound a call fails at once.
        let held: Vec<_> = (0..MAX_WAITING).map(|_| pool.start_waiting()).collect();
        let err = dispatcher.pick(None).await.unwrap_err();
        assert!(matches!(err, DispatchError::NoReadyWorker { .. }), "{err}");
        drop(held);

        // A group with a shorter queue timeout holds its calls no longer than that.
        let short = dispatcher.clone().holding_at_most(Duration::from_secs(2));
        let err = short.pick(None).await.unwrap_err();
        assert!(
            matches!(&err, DispatchError::WakeTimeout { waited, .. }
                if *waited >= Duration::from_secs(2) && *waited < Duration::from_secs(5)),
            "{err}"
        );
        // A longer one does not lengthen the wake timeout; without one nothing is held.
        let long = dispatcher.clone().holding_at_most(Duration::from_secs(60));
        let err = long.pick(None).await.unwrap_err();
        assert!(
            matches!(&err, DispatchError::WakeTimeout { waited, .. }
                if *waited < Duration::from_secs(6)),
            "{err}"
        );
        let off = Dispatcher::new(Pools::new(["a"])).holding_at_most(Duration::from_secs(2));
        let err = off.pick(None).await.unwrap_err();
        assert!(matches!(err, DispatchError::NoReadyWorker { .. }), "{err}");
    }
}
