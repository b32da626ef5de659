//! Standby workers and their claim: a worker started without a catalog waits, warm, until a
//! supervisor hands it one, then becomes an ordinary worker of that pool.
//!
//! ```text
//!  standby ──(quiver.Claim: catalog path, with the gateway grant)──► claiming
//!     ▲                                                               │ load + validate catalog,
//!     └──── bad catalog (INVALID_ARGUMENT) ◄──────────────────────────┤ Engine::warm_up
//!                                                                     ▼
//!                                            claimed: engine set, health SERVING, answer sent
//! ```
//!
//! A claim is an ordinary Flight action, so the `require_grant` interceptor refuses it without
//! the gateway's signed grant; tenants never reach it, because the gateway relays only its own
//! CreatePreparedStatement action. The answer is sent after warm-up, so the caller's round trip
//! is the claim's whole latency. Serving status and the stop of a drain are set under one lock,
//! so a claim that finishes while the worker stops never reports it SERVING again.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use datafusion::prelude::SessionContext;
use tokio::sync::Mutex;
use tonic::Status;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::catalog::Catalog;
use crate::engine::{self, Engine, QueryLimits};

/// The Flight action type of a claim; its body is the catalog file's path (UTF-8).
pub const CLAIM_ACTION: &str = "quiver.Claim";
/// Longest catalog path a claim may name: paths are short; more is not a path.
const MAX_PATH_BYTES: usize = 4096;

/// Where the worker is in its life, as far as claims and serving go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Started with a catalog: never claimable.
    Pooled,
    /// Warm, waiting for a claim.
    Standby,
    /// A claim is loading its catalog.
    Claiming,
    /// Claimed: an ordinary worker of its pool.
    Claimed,
    /// Draining: no claim and no return to SERVING.
    Stopping,
}

/// The worker's readiness: its engine cell, its health status and whether it may be claimed.
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
    /// A worker that will be given its catalog at start (`standby` false) or by a claim.
    pub(crate) fn new(
        standby: bool,
        engine: Arc<OnceLock<Arc<Engine>>>,
        health: HealthReporter,
        limits: QueryLimits,
    ) -> Self {
        let state = if standby {
            State::Standby
        } else {
            State::Pooled
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            engine,
            health,
            limits,
        }
    }

    /// Serves `engine` and reports SERVING, unless a drain began meanwhile (then `false`).
    pub(crate) async fn serve(&self, engine: Engine) -> bool {
        let state = self.state.lock().await;
        if *state == State::Stopping {
            return false;
        }
        let _ = self.engine.set(Arc::new(engine));
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;
        true
    }

    /// Stops claims and reports NOT_SERVING for good: the start of a drain.
    pub(crate) async fn stop(&self) {
        let mut state = self.state.lock().await;
        *state = State::Stopping;
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
    }

    /// Handles a claim whose body is `body`: loads the catalog it names and warms the engine
    /// exactly as a worker started with it would, then serves.
    pub(crate) async fn claim(&self, body: &[u8]) -> Result<Claimed, Status> {
        let arrived = Instant::now();
        let path = claim_path(body)?;
        {
            let mut state = self.state.lock().await;
            match *state {
                State::Standby => *state = State::Claiming,
                State::Pooled => {
                    return Err(Status::failed_precondition(
                        "this worker was started with a catalog and cannot be claimed",
                    ));
                }
                State::Claiming | State::Claimed => {
                    return Err(Status::failed_precondition(
                        "this standby worker is already claimed",
                    ));
                }
                State::Stopping => {
                    return Err(Status::failed_precondition("this worker is stopping"));
                }
            }
        }
        // Back to standby if this claim fails or its caller goes away mid-warm-up.
        let mut undo = Undo {
            state: Some(self.state.clone()),
        };
        let catalog = Catalog::load(path).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let engine = Engine::warm_up(&catalog, self.limits)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut state = self.state.lock().await;
        if *state != State::Claiming {
            return Err(Status::failed_precondition("this worker is stopping"));
        }
        *state = State::Claimed;
        undo.state = None;
        let _ = self.engine.set(Arc::new(engine));
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;
        let claimed = Claimed {
            tables: catalog.tables.len(),
            millis: arrived.elapsed().as_millis(),
        };
        tracing::info!(
            catalog = %path.display(),
            tables = claimed.tables,
            ms = claimed.millis,
            "standby worker claimed, warm and serving"
        );
        Ok(claimed)
    }
}

/// The catalog path a claim's body names.
fn claim_path(body: &[u8]) -> Result<&Path, Status> {
    if body.is_empty() || body.len() > MAX_PATH_BYTES {
        return Err(Status::invalid_argument(format!(
            "a claim's body is a catalog file path of 1 to {MAX_PATH_BYTES} bytes"
        )));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| Status::invalid_argument("a claim's catalog path must be UTF-8"))?;
    Ok(Path::new(text))
}

/// Returns a failed or abandoned claim's worker to standby.
struct Undo {
    state: Option<Arc<Mutex<State>>>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        // Drop cannot wait for the lock; a claim holds it only briefly, so try, then defer.
        if let Ok(mut s) = state.try_lock() {
            reset(&mut s);
            return;
        }
        tokio::spawn(async move { reset(&mut *state.lock().await) });
    }
}

fn reset(state: &mut State) {
    if *state == State::Claiming {
        *state = State::Standby;
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
    use std::time::Duration;

    fn readiness(standby: bool) -> (Readiness, Arc<OnceLock<Arc<Engine>>>) {
        let (health, _) = tonic_health::server::health_reporter();
        let cell = Arc::new(OnceLock::new());
        let limits = QueryLimits {
            memory_limit: 64 << 20,
            timeout: Duration::from_secs(10),
        };
        (Readiness::new(standby, cell.clone(), health, limits), cell)
    }

    fn catalog(dir: &Path, location: &str) -> std::path::PathBuf {
        let path = dir.join("catalog.yaml");
        std::fs::write(
            &path,
            format!("tables:\n  - name: t\n    location: {location}\n"),
        )
        .unwrap();
        path
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
    fn claim_bodies_are_bounded_paths() {
        assert!(claim_path(b"").is_err());
        assert!(claim_path(&[0xff, 0xfe]).is_err());
        assert!(claim_path(&vec![b'a'; MAX_PATH_BYTES + 1]).is_err());
        assert_eq!(claim_path(b"/x/c.yaml").unwrap(), Path::new("/x/c.yaml"));
    }

    #[tokio::test]
    async fn a_bad_catalog_leaves_the_worker_standby_and_a_good_one_claims_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let (ready, cell) = readiness(true);
        let missing = dir.path().join("nope.yaml");
        let err = ready
            .claim(missing.to_str().unwrap().as_bytes())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        let bad = catalog(dir.path(), "missing.parquet");
        let err = ready
            .claim(bad.to_str().unwrap().as_bytes())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(cell.get().is_none());

        let file = parquet(dir.path()).await;
        let good = catalog(dir.path(), file.to_str().unwrap());
        let claimed = ready
            .claim(good.to_str().unwrap().as_bytes())
            .await
            .unwrap();
        assert_eq!(claimed.tables, 1);
        assert!(cell.get().is_some());
        let again = ready
            .claim(good.to_str().unwrap().as_bytes())
            .await
            .unwrap_err();
        assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again}");
    }

    #[tokio::test]
    async fn pooled_and_stopping_workers_refuse_claims() {
        let (pooled, _) = readiness(false);
        let err = pooled.claim(b"/c.yaml").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let (standby, cell) = readiness(true);
        standby.stop().await;
        let err = standby.claim(b"/c.yaml").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            !standby
                .serve(Engine::from_state(
                    SessionContext::new().state(),
                    standby.limits
                ))
                .await
        );
        assert!(cell.get().is_none());
    }

    #[tokio::test]
    async fn prewarm_runs() {
        prewarm().await;
    }
}
