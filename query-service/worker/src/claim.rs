//! Standby workers and their claim: a worker started without a catalog waits, warm, until a
//! claimer (the local supervisor, or the gateway on Kubernetes) hands it a pool's catalog, then
//! becomes an ordinary worker of that pool.
//!
//! ```text
//!  standby (prewarming) ──► standby (warm) ──(quiver.Claim: catalog document, gateway grant)──►
//!     ▲                                                                  claiming │ parse +
//!     └──── bad catalog (INVALID_ARGUMENT), or the caller went away ◄─────────────┤ validate,
//!                                                                                 ▼ warm_up
//!                                               claimed: engine set, SERVING, answer sent
//!
//!  health       ""            quiver.Standby     quiver.Ready
//!  prewarming   NOT_SERVING   NOT_SERVING        NOT_SERVING
//!  warm         NOT_SERVING   SERVING            SERVING
//!  claiming     NOT_SERVING   NOT_SERVING        SERVING (listed, takes no query)
//!  claimed      SERVING       NOT_SERVING        SERVING
//!  (a worker started with a catalog: warming, all NOT_SERVING, then serving, as claimed)
//!  stopping     NOT_SERVING   NOT_SERVING        NOT_SERVING
//! ```
//!
//! The claim's body is the catalog document itself (a catalog file's YAML, or JSON), at most
//! [`MAX_CLAIM_BYTES`]: on Kubernetes the catalog lives in the QueryPool, not in a file of the
//! standby pod. Relative local locations in it resolve against the worker's working directory;
//! the local supervisor sends its file's document with absolute locations
//! ([`CatalogFile::document_of`](crate::catalog::CatalogFile::document_of)).
//!
//! A claim is an ordinary Flight action, so the `require_grant` interceptor refuses it without
//! the gateway's signed grant; tenants never reach it, because the gateway relays only its own
//! CreatePreparedStatement action. The answer is sent after warm-up, so the caller's round trip
//! is the claim's whole latency. State and health change under one lock, so a claim that
//! finishes while the worker stops never reports it SERVING again.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use datafusion::prelude::SessionContext;
use tokio::sync::Mutex;
use tonic::Status;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::catalog::Catalog;
use crate::engine::{self, Engine, QueryLimits};

pub use quiver_core::protocol::{
    CLAIM_ACTION, MAX_CLAIM_BYTES, READY_HEALTH_SERVICE, STANDBY_HEALTH_SERVICE,
};

/// How errors name a claimed catalog.
const CLAIM_ORIGIN: &str = "document of the claim";

/// Where the worker is in its life, as far as claims and serving go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Started with a catalog, warming it: never claimable.
    Warming,
    /// Started with a catalog and serving it.
    Serving,
    /// Waiting for a claim; `warm` once the standby pre-warm has finished.
    Standby { warm: bool },
    /// A claim is loading its catalog; `warm` as in `Standby`, kept for a return to it.
    Claiming { warm: bool },
    /// Claimed: an ordinary worker of its pool.
    Claimed,
    /// Draining: no claim and no return to SERVING.
    Stopping,
}

/// What each health service reports in a state: (`""`, standby, ready).
/// A claim that is loading stays ready: on Kubernetes the pod is already in its pool's Service,
/// and dropping out of its endpoints while it loads would only delay the first query (the
/// probe must see it ready again, then the gateway must list it again); queries reach it only
/// once `""` is SERVING.
fn health_of(state: State) -> [(&'static str, bool); 3] {
    let serving = matches!(state, State::Serving | State::Claimed);
    let standby = state == State::Standby { warm: true };
    let loading = state == State::Claiming { warm: true };
    [
        ("", serving),
        (STANDBY_HEALTH_SERVICE, standby),
        (READY_HEALTH_SERVICE, serving || standby || loading),
    ]
}

/// The worker's readiness: its engine cell, its health statuses and whether it may be claimed.
#[derive(Clone)]
pub(crate) struct Readiness {
    state: Arc<Mutex<State>>,
    engine: Arc<OnceLock<Arc<Engine>>>,
    health: HealthReporter,
    limits: QueryLimits,
}

/// What a claim did, for its answer and the log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claimed {
    /// Tables registered.
    pub tables: usize,
    /// Milliseconds from the claim's arrival to SERVING.
    pub millis: u128,
}

impl Readiness {
    /// A worker that will be given its catalog at start (`standby` false) or by a claim; its
    /// health services report NOT_SERVING until then.
    pub(crate) async fn new(
        standby: bool,
        engine: Arc<OnceLock<Arc<Engine>>>,
        health: HealthReporter,
        limits: QueryLimits,
    ) -> Self {
        let state = if standby {
            State::Standby { warm: false }
        } else {
            State::Warming
        };
        publish(&health, state).await;
        Self {
            state: Arc::new(Mutex::new(state)),
            engine,
            health,
            limits,
        }
    }

    /// Moves to `next` and reports it, under the state lock the caller holds.
    async fn set(&self, state: &mut State, next: State) {
        *state = next;
        publish(&self.health, next).await;
    }

    /// The standby pre-warm finished: a standby may now report itself claimable.
    pub(crate) async fn warm(&self) {
        let mut state = self.state.lock().await;
        let next = match *state {
            State::Standby { .. } => State::Standby { warm: true },
            State::Claiming { .. } => State::Claiming { warm: true },
            _ => return,
        };
        self.set(&mut state, next).await;
    }

    /// Serves `engine` and reports SERVING, unless a drain began meanwhile (then `false`).
    pub(crate) async fn serve(&self, engine: Engine) -> bool {
        let mut state = self.state.lock().await;
        if *state == State::Stopping {
            return false;
        }
        let _ = self.engine.set(Arc::new(engine));
        self.set(&mut state, State::Serving).await;
        true
    }

    /// Stops claims and reports NOT_SERVING for good: the start of a drain.
    pub(crate) async fn stop(&self) {
        let mut state = self.state.lock().await;
        self.set(&mut state, State::Stopping).await;
    }

    /// Handles a claim whose body is `body`, a catalog document: validates it and warms the
    /// engine exactly as a worker started with it would, then serves.
    pub(crate) async fn claim(&self, body: &[u8]) -> Result<Claimed, Status> {
        let arrived = Instant::now();
        let text = claim_document(body)?;
        {
            let mut state = self.state.lock().await;
            match *state {
                State::Standby { warm } => self.set(&mut state, State::Claiming { warm }).await,
                State::Warming | State::Serving => {
                    return Err(Status::failed_precondition(
                        "this worker was started with a catalog and cannot be claimed",
                    ));
                }
                State::Claiming { .. } | State::Claimed => {
                    return Err(Status::failed_precondition(
                        "this standby worker is already claimed",
                    ));
                }
                State::Stopping => {
                    return Err(Status::failed_precondition("this worker is stopping"));
                }
            }
        }
        // Back to standby if its caller goes away mid-warm-up (the future is dropped).
        let mut undo = Undo {
            readiness: Some(self.clone()),
        };
        let loaded = match self.load(text).await {
            Ok(loaded) => loaded,
            Err(e) => {
                undo.readiness = None;
                self.back_to_standby().await;
                return Err(e);
            }
        };
        let (catalog, engine) = loaded;
        let mut state = self.state.lock().await;
        undo.readiness = None;
        if !matches!(*state, State::Claiming { .. }) {
            return Err(Status::failed_precondition("this worker is stopping"));
        }
        let _ = self.engine.set(Arc::new(engine));
        self.set(&mut state, State::Claimed).await;
        let claimed = Claimed {
            tables: catalog.tables.len(),
            millis: arrived.elapsed().as_millis(),
        };
        tracing::info!(
            catalog = %catalog.catalog,
            tables = claimed.tables,
            ms = claimed.millis,
            "standby worker claimed, warm and serving"
        );
        Ok(claimed)
    }

    /// Parses and validates the claimed catalog and warms an engine for it.
    async fn load(&self, text: &str) -> Result<(Catalog, Engine), Status> {
        // No file holds a claimed catalog: relative locations are the working directory's.
        let base = std::env::current_dir().unwrap_or_else(|_| ".".into());
        let catalog = Catalog::parse(text, CLAIM_ORIGIN, &base)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let engine = Engine::warm_up(&catalog, self.limits)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok((catalog, engine))
    }

    /// A failed claim's worker becomes claimable again (unless it began stopping meanwhile).
    async fn back_to_standby(&self) {
        let mut state = self.state.lock().await;
        if let State::Claiming { warm } = *state {
            self.set(&mut state, State::Standby { warm }).await;
        }
    }
}

/// Reports `state` on every health service.
async fn publish(health: &HealthReporter, state: State) {
    for (service, serving) in health_of(state) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status(service, status).await;
    }
}

/// The catalog document a claim's body holds.
fn claim_document(body: &[u8]) -> Result<&str, Status> {
    if body.is_empty() || body.len() > MAX_CLAIM_BYTES {
        return Err(Status::invalid_argument(format!(
            "a claim's body is the pool's catalog document (YAML or JSON) of 1 byte to {} KiB; \
             this one has {} bytes",
            MAX_CLAIM_BYTES >> 10,
            body.len()
        )));
    }
    std::str::from_utf8(body)
        .map_err(|_| Status::invalid_argument("a claim's catalog document must be UTF-8"))
}

/// Returns an abandoned claim's worker to standby.
struct Undo {
    readiness: Option<Readiness>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        let Some(readiness) = self.readiness.take() else {
            return;
        };
        // Drop cannot wait for the lock or the health reporter: defer to a task.
        tokio::spawn(async move { readiness.back_to_standby().await });
    }
}

/// Warms what a standby can without a catalog: the query engine's code and allocator, by
/// planning and running a small aggregate, sort and join over an in-memory table, so a claim's
/// first query does not pay for the first use of DataFusion in the process.
pub(crate) async fn prewarm() {
    let started = Instant::now();
    let ctx = SessionContext::new_with_config(engine::session_config().unwrap_or_default());
    let sql = "WITH t(k, v) AS (VALUES (1, 'a'), (2, 'b'), (3, 'c'), (1, 'd')) \
               SELECT t.k, count(*) AS n, max(u.v) AS m FROM t JOIN t AS u ON t.k = u.k \
               WHERE t.k > 0 GROUP BY t.k ORDER BY n DESC, t.k";
    let result = match ctx.sql(sql).await {
        Ok(df) => df.collect().await.map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => tracing::info!(
            ms = started.elapsed().as_millis(),
            "standby warm, waiting for a claim"
        ),
        // Only a warm-up: the claim will warm the real engine regardless.
        Err(e) => tracing::warn!(error = %e, "standby pre-warm query failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health;
    use tonic_health::server::HealthService;

    struct Probe {
        ready: Readiness,
        cell: Arc<OnceLock<Arc<Engine>>>,
        health: HealthService,
    }

    impl Probe {
        /// (`""`, standby, ready) as a health check reads them now.
        async fn health(&self) -> (bool, bool, bool) {
            let mut out = [false; 3];
            for (i, service) in ["", STANDBY_HEALTH_SERVICE, READY_HEALTH_SERVICE]
                .into_iter()
                .enumerate()
            {
                let request = tonic::Request::new(HealthCheckRequest {
                    service: service.to_owned(),
                });
                let status = self
                    .health
                    .check(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .status;
                out[i] = status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            }
            (out[0], out[1], out[2])
        }
    }

    const NOT_SERVING: (bool, bool, bool) = (false, false, false);
    const WARM_STANDBY: (bool, bool, bool) = (false, true, true);
    const SERVING: (bool, bool, bool) = (true, false, true);
    const LOADING: (bool, bool, bool) = (false, false, true);

    async fn probe(standby: bool) -> Probe {
        let (health, _) = tonic_health::server::health_reporter();
        let service = HealthService::from_health_reporter(health.clone());
        let cell = Arc::new(OnceLock::new());
        let limits = QueryLimits {
            memory_limit: 64 << 20,
            timeout: Duration::from_secs(10),
        };
        let ready = Readiness::new(standby, cell.clone(), health, limits).await;
        Probe {
            ready,
            cell,
            health: service,
        }
    }

    fn document(location: &str) -> String {
        format!("tables:\n  - name: t\n    location: '{location}'\n")
    }

    async fn parquet(dir: &Path) -> std::path::PathBuf {
        let ctx = SessionContext::new();
        let file = dir.join("t.parquet");
        ctx.sql("SELECT 1 AS a")
            .await
            .unwrap()
            .write_parquet(file.to_str().unwrap(), Default::default(), None)
            .await
            .unwrap();
        file
    }

    #[test]
    fn claim_bodies_are_bounded_utf8_documents() {
        assert!(claim_document(b"").is_err());
        assert!(claim_document(&[0xff, 0xfe]).is_err());
        let err = claim_document(&vec![b' '; MAX_CLAIM_BYTES + 1]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("1024 KiB"), "{}", err.message());
        assert!(
            err.message().contains(&(MAX_CLAIM_BYTES + 1).to_string()),
            "{}",
            err.message()
        );
        assert!(claim_document(&vec![b' '; MAX_CLAIM_BYTES]).is_ok());
        assert_eq!(claim_document(b"tables: []").unwrap(), "tables: []");
    }

    #[tokio::test]
    async fn an_oversized_claim_is_refused_and_leaves_the_worker_claimable() {
        let p = probe(true).await;
        p.ready.warm().await;
        let err = p
            .ready
            .claim(&vec![b'#'; MAX_CLAIM_BYTES + 1])
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("catalog document"), "{err}");
        assert_eq!(p.health().await, WARM_STANDBY);
    }

    #[tokio::test]
    async fn a_bad_catalog_leaves_the_worker_standby_and_a_good_one_claims_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = probe(true).await;
        // Claimable only once the pre-warm has finished.
        assert_eq!(p.health().await, NOT_SERVING);
        p.ready.warm().await;
        assert_eq!(p.health().await, WARM_STANDBY);

        for bad in [
            "tables: [".to_owned(),
            "tables: []".to_owned(),
            document(dir.path().join("missing.parquet").to_str().unwrap()),
        ] {
            let err = p.ready.claim(bad.as_bytes()).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
            assert!(err.message().contains(CLAIM_ORIGIN), "{err}");
            assert!(p.cell.get().is_none());
            assert_eq!(
                p.health().await,
                WARM_STANDBY,
                "claimable again after {bad:?}"
            );
        }

        let file = parquet(dir.path()).await;
        let good = document(file.to_str().unwrap());
        let claimed = p.ready.claim(good.as_bytes()).await.unwrap();
        assert_eq!(claimed.tables, 1);
        assert!(p.cell.get().is_some());
        assert_eq!(p.health().await, SERVING);
        let again = p.ready.claim(good.as_bytes()).await.unwrap_err();
        assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again}");

        p.ready.stop().await;
        assert_eq!(p.health().await, NOT_SERVING);
    }

    /// Waits until a spawned claim has taken the worker out of standby; returns the state and
    /// the health read under the state lock, so the two agree.
    async fn past_standby(p: &Probe) -> (State, (bool, bool, bool)) {
        loop {
            let state = p.ready.state.lock().await;
            if !matches!(*state, State::Standby { .. }) {
                let health = p.health().await;
                return (*state, health);
            }
            drop(state);
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_claim_serves_no_query_while_it_loads_but_stays_listed() {
        let dir = tempfile::tempdir().unwrap();
        let file = parquet(dir.path()).await;
        // JSON, as the gateway sends a QueryPool's catalog.
        let json = format!(
            r#"{{"catalog":"quiver","schema":"public","tables":[{{"name":"t","location":{:?}}}]}}"#,
            file.to_str().unwrap()
        );
        let p = probe(true).await;
        p.ready.warm().await;
        let claim = tokio::spawn({
            let ready = p.ready.clone();
            async move { ready.claim(json.as_bytes()).await }
        });
        match past_standby(&p).await {
            // Loading: not serving queries, no longer claimable, still ready (listed).
            (State::Claiming { warm: true }, health) => assert_eq!(health, LOADING),
            (State::Claimed, health) => assert_eq!(health, SERVING),
            other => panic!("unexpected {other:?}"),
        }
        let claimed = claim.await.unwrap().unwrap();
        assert_eq!(claimed.tables, 1);
        assert_eq!(p.health().await, SERVING);
    }

    #[tokio::test]
    async fn an_abandoned_claim_returns_the_worker_to_standby() {
        let dir = tempfile::tempdir().unwrap();
        let file = parquet(dir.path()).await;
        let p = probe(true).await;
        p.ready.warm().await;
        let good = document(file.to_str().unwrap());
        let claim = tokio::spawn({
            let ready = p.ready.clone();
            async move { ready.claim(good.as_bytes()).await }
        });
        let (state, _) = past_standby(&p).await;
        claim.abort();
        let finished = claim.await.is_ok();
        if state == State::Claimed || finished {
            // The claim finished before it was aborted: nothing was abandoned.
            assert_eq!(p.health().await, SERVING);
            return;
        }
        // The undo runs as a task: wait for it to put the worker back.
        loop {
            let state = *p.ready.state.lock().await;
            if state == (State::Standby { warm: true }) {
                break;
            }
            assert_eq!(state, State::Claiming { warm: true });
            tokio::task::yield_now().await;
        }
        assert_eq!(p.health().await, WARM_STANDBY);
        assert!(p.cell.get().is_none());
    }

    #[tokio::test]
    async fn pooled_workers_are_never_standby_and_stopping_workers_refuse_claims() {
        let pooled = probe(false).await;
        assert_eq!(pooled.health().await, NOT_SERVING);
        let err = pooled.ready.claim(b"tables: []").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let limits = pooled.ready.limits;
        assert!(
            pooled
                .ready
                .serve(Engine::from_state(SessionContext::new().state(), limits))
                .await
        );
        assert_eq!(pooled.health().await, SERVING);
        pooled.ready.stop().await;
        assert_eq!(pooled.health().await, NOT_SERVING);

        let standby = probe(true).await;
        standby.ready.warm().await;
        standby.ready.stop().await;
        assert_eq!(standby.health().await, NOT_SERVING);
        let err = standby.ready.claim(b"tables: []").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            !standby
                .ready
                .serve(Engine::from_state(SessionContext::new().state(), limits))
                .await
        );
        assert!(standby.cell.get().is_none());
        assert_eq!(standby.health().await, NOT_SERVING);
    }

    #[test]
    fn health_by_state() {
        assert_eq!(
            health_of(State::Standby { warm: false }).map(|h| h.1),
            [false, false, false]
        );
        assert_eq!(
            health_of(State::Standby { warm: true }).map(|h| h.1),
            [false, true, true]
        );
        for loading in [State::Warming, State::Stopping] {
            assert_eq!(health_of(loading).map(|h| h.1), [false, false, false]);
        }
        // A claim loading its catalog keeps the pod listed, taking no query yet.
        assert_eq!(
            health_of(State::Claiming { warm: true }).map(|h| h.1),
            [false, false, true]
        );
        for serving in [State::Claimed, State::Serving] {
            assert_eq!(health_of(serving).map(|h| h.1), [true, false, true]);
        }
    }

    #[tokio::test]
    async fn prewarm_runs() {
        prewarm().await;
    }
}
