//! Claims of standby workers: a worker listed in a pool that reports itself a warm, unclaimed
//! standby is sent `quiver.Claim` with the pool's catalog document, and becomes an ordinary
//! worker of the pool when its health turns SERVING.
//!
//! ```text
//!  pool with a catalog document ──► each listed worker not SERVING: watch quiver.Standby
//!      SERVING (and "" not) ──► quiver.Claim(catalog document, gateway grant), one per endpoint
//!          ok ──► the worker reports SERVING ──► the pool's health tracking takes it
//!          refused / failed / timed out ──► warn, wait (doubling, bounded), look again
//! ```
//!
//! On Kubernetes the operator moves a standby pod into a pool by relabelling it; the pod is
//! listed in the pool's EndpointSlices because its readiness probe is `quiver.Ready`. Only the
//! gateway holds the grant key, so it claims. A claim runs in its own task: if the pod drops
//! out of the endpoints while it loads (it stays ready on `quiver.Ready` meanwhile, but its
//! node may fail), the claim still ends, so it is neither abandoned nor sent twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arrow_flight::Action;
use arrow_flight::flight_service_client::FlightServiceClient;
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::pool::{Worker, WorkerPool};
use super::registry::Pools;
use super::{Failure, failure, granted};
use quiver_core::protocol::{CLAIM_ACTION, STANDBY_HEALTH_SERVICE, grant_header};
use quiver_core::ticket::TicketSigner;

/// Longest a claim may take: parsing a catalog, reading its Parquet metadata and loading its hot
/// tables. A claim past it is abandoned, which returns the worker to standby.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause after a failed claim before looking again; doubles while claims keep failing.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Pause before re-opening a broken standby health stream; doubles up to the maximum.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(100);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// How a claim ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimOutcome {
    /// The worker loaded the catalog and serves.
    Claimed,
    /// The worker answered with an error (a bad catalog, already claimed, stopping).
    Refused,
    /// The connection failed.
    Failed,
    /// No answer within the claim timeout.
    Timeout,
}

impl ClaimOutcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claimed => "claimed",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
        }
    }
}

/// Where a claim's end is counted: the pool and the outcome.
pub type RecordClaim = Box<dyn Fn(&str, ClaimOutcome) + Send + Sync>;

/// Claims the standby workers listed in the gateway's pools.
pub struct Claimer {
    pools: Arc<Pools>,
    signer: TicketSigner,
    record: RecordClaim,
    timeout: Duration,
    /// Endpoints with a claim in flight: one each, even if the worker leaves its pool and is
    /// listed again meanwhile.
    in_flight: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Claimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimer")
            .field("timeout", &self.timeout)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Claimer {
    /// A claimer for `pools`, granting its claims with `key` (the key shared with the workers)
    /// and counting each with `record`.
    pub fn new(pools: Arc<Pools>, key: &[u8], record: RecordClaim) -> Arc<Self> {
        Arc::new(Self {
            pools,
            signer: TicketSigner::new(key),
            record,
            timeout: CLAIM_TIMEOUT,
            in_flight: Mutex::default(),
        })
    }

    /// Tends every pool, now and added later, for as long as the future runs.
    pub async fn run(self: Arc<Self>) {
        let pools = self.pools.clone();
        pools
            .for_each(move |pool| tend_pool(self.clone(), pool))
            .await;
    }

    /// Claims `worker` of `pool` with `document` in a task of its own; `None` when a claim of
    /// that endpoint is already in flight.
    async fn claim(
        self: &Arc<Self>,
        pool: &str,
        worker: &Worker,
        document: Arc<str>,
    ) -> Option<ClaimOutcome> {
        let endpoint = worker.endpoint().to_owned();
        if !self
            .in_flight
            .lock()
            .expect("claims lock")
            .insert(endpoint.clone())
        {
            return None;
        }
        let mut client = worker.client();
        let grant = grant_header(&self.signer, &[]);
        let (claimer, pool) = (self.clone(), pool.to_owned());
        let task = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let exchange = send_claim(&mut client, &document, &grant);
            let outcome = match tokio::time::timeout(claimer.timeout, exchange).await {
                Ok(Ok(())) => {
                    tracing::info!(%pool, worker = %endpoint, ms = started.elapsed().as_millis(), "standby worker claimed");
                    ClaimOutcome::Claimed
                }
                Ok(Err(status)) => {
                    let outcome = if failure(&status) == Failure::Transport {
                        ClaimOutcome::Failed
                    } else {
                        ClaimOutcome::Refused
                    };
                    tracing::warn!(%pool, worker = %endpoint, code = ?status.code(), error = %status.message(), "claiming a standby worker failed; will retry");
                    outcome
                }
                Err(_) => {
                    tracing::warn!(%pool, worker = %endpoint, timeout = ?claimer.timeout, "claiming a standby worker timed out; will retry");
                    ClaimOutcome::Timeout
                }
            };
            (claimer.record)(&pool, outcome);
            claimer
                .in_flight
                .lock()
                .expect("claims lock")
                .remove(&endpoint);
            outcome
        });
        // Ends with the claim even if the caller is dropped (a worker that left its pool).
        Some(task.await.unwrap_or(ClaimOutcome::Failed))
    }
}

/// Sends `quiver.Claim` with the catalog `document` and the gateway's `grant`, and returns once
/// the worker serves it (its answer comes after its warm-up). The gateway's claims and the local
/// supervisor's are this one exchange.
pub async fn send_claim(
    client: &mut FlightServiceClient<Channel>,
    document: &str,
    grant: &str,
) -> Result<(), tonic::Status> {
    let action = Action {
        r#type: CLAIM_ACTION.to_owned(),
        body: document.as_bytes().to_vec().into(),
    };
    let mut answers = client
        .do_action(granted(action, grant)?)
        .await?
        .into_inner();
    while answers.message().await?.is_some() {}
    Ok(())
}

/// Keeps a watcher on every listed worker of `pool` that does not serve yet, while the pool has
/// a catalog document to claim with.
async fn tend_pool(claimer: Arc<Claimer>, pool: Arc<WorkerPool>) {
    let mut members = pool.subscribe();
    let mut catalogs = claimer.pools.subscribe();
    let mut tending: HashMap<String, (Weak<Worker>, AbortOnDrop)> = HashMap::new();
    loop {
        if claimer.pools.catalog(pool.name()).is_none() {
            tending.clear();
        } else {
            let workers = pool.workers();
            tending.retain(|endpoint, (tended, _)| {
                workers
                    .iter()
                    .any(|w| w.endpoint() == endpoint && Weak::ptr_eq(tended, &Arc::downgrade(w)))
            });
            for worker in workers {
                if worker.is_ready() || tending.contains_key(worker.endpoint()) {
                    continue;
                }
                let weak = Arc::downgrade(&worker);
                let task = tokio::spawn(tend_worker(claimer.clone(), pool.clone(), weak.clone()));
                tending.insert(worker.endpoint().to_owned(), (weak, AbortOnDrop(task)));
            }
        }
        // Both senders outlive this task (the pool and the registry hold them).
        tokio::select! {
            _ = members.changed() => {}
            _ = catalogs.changed() => {}
        }
    }
}

/// The worker, while it is listed and does not serve.
fn not_serving(worker: &Weak<Worker>) -> Option<Arc<Worker>> {
    worker.upgrade().filter(|w| !w.is_ready())
}

/// Watches one worker's standby health and claims it when it is a warm standby, until it
/// serves (or leaves the pool, which aborts this task).
async fn tend_worker(claimer: Arc<Claimer>, pool: Arc<WorkerPool>, worker: Weak<Worker>) {
    let mut members = pool.subscribe();
    let mut catalogs = claimer.pools.subscribe();
    let mut watch_backoff = WATCH_RETRY_MIN;
    let mut retry = RETRY_MIN;
    'watch: loop {
        let Some(channel) = not_serving(&worker).map(|w| w.channel()) else {
            return;
        };
        let request = HealthCheckRequest {
            service: STANDBY_HEALTH_SERVICE.to_owned(),
        };
        let mut stream = match HealthClient::new(channel).watch(request).await {
            Ok(response) => response.into_inner(),
            // A worker without the service is never a standby.
            Err(status) if status.code() == Code::NotFound => return,
            Err(_) => {
                tokio::time::sleep(watch_backoff).await;
                watch_backoff = (watch_backoff * 2).min(WATCH_RETRY_MAX);
                continue;
            }
        };
        let mut standby = false;
        loop {
            tokio::select! {
                update = stream.next() => match update {
                    Some(Ok(update)) => {
                        watch_backoff = WATCH_RETRY_MIN;
                        standby = update.status == ServingStatus::Serving as i32;
                    }
                    _ => break,
                },
                _ = members.changed() => {}
                _ = catalogs.changed() => {}
            }
            let Some(listed) = not_serving(&worker) else {
                return;
            };
            if !standby {
                continue;
            }
            let Some(document) = claimer.pools.catalog(pool.name()) else {
                continue;
            };
            match claimer.claim(pool.name(), &listed, document).await {
                // Its health turns SERVING next; until then it is no standby any more.
                Some(ClaimOutcome::Claimed) => {
                    retry = RETRY_MIN;
                    standby = false;
                }
                // Another claim of this endpoint is loading; its end shows in the health.
                None => standby = false,
                Some(_) => {
                    drop(listed);
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    // Read the worker's status afresh.
                    continue 'watch;
                }
            }
        }
        tokio::time::sleep(watch_backoff).await;
        watch_backoff = (watch_backoff * 2).min(WATCH_RETRY_MAX);
    }
}

/// Stops a worker's watcher when the pool no longer lists it.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_labels() {
        let labels: Vec<_> = [
            ClaimOutcome::Claimed,
            ClaimOutcome::Refused,
            ClaimOutcome::Failed,
            ClaimOutcome::Timeout,
        ]
        .map(ClaimOutcome::as_str)
        .into();
        assert_eq!(labels, ["claimed", "refused", "failed", "timeout"]);
    }

    #[tokio::test]
    async fn one_claim_per_endpoint_at_a_time() {
        let pools = Pools::new(["p"]);
        let metrics = Arc::new(crate::metrics::GatewayMetrics::default());
        let recorder = metrics.clone();
        let record: RecordClaim = Box::new(move |pool, outcome| recorder.claim(pool, outcome));
        let claimer = Claimer::new(pools.clone(), b"k", record);
        let worker = pools.get("p").unwrap().add("127.0.0.1:9").unwrap();
        claimer
            .in_flight
            .lock()
            .unwrap()
            .insert(worker.endpoint().to_owned());
        assert_eq!(claimer.claim("p", &worker, "{}".into()).await, None);
        claimer.in_flight.lock().unwrap().clear();
        // Nothing listens there: the claim fails as a connection, is counted, and is let go.
        let outcome = claimer.claim("p", &worker, "{}".into()).await;
        assert_eq!(outcome, Some(ClaimOutcome::Failed));
        assert!(claimer.in_flight.lock().unwrap().is_empty());
        let text = metrics.encode(&pools.all(), &[]);
        assert!(
            text.contains(r#"quiver_claims_total{pool="p",outcome="failed"} 1"#),
            "{text}"
        );
    }
}
