//! The demand loop: polls every gateway's `/v1/pools` at the poll interval (1 s by default),
//! feeds each pool's policy, and acts on a change of size.
//!
//! ```text
//!  watch EndpointSlices (kubernetes.io/service-name=<gateway admin Service>) ──► reflector store
//!  every poll: the store's ready endpoints ──► GET http://<each gateway pod>/v1/pools
//!        (or the URL itself when it is not a Service name)          │
//!                                                sum over gateways ─┘
//!  per pool: policy.observe(in_flight + queued, arrivals) ──► changed?
//!        down: pod-deletion-cost = in-flight queries on every pod (idle pods go first)
//!        then reconcile (Deployment replicas), Event, log line with the reason
//! ```
//!
//! Each gateway counts only the queries it admitted, so the operator reads every gateway pod
//! and sums: one poll of a load-balanced Service would see one replica's share. When any
//! gateway cannot be read the tick is skipped and every pool holds its size (a partial sum
//! would look like a drop in demand); the pools report `Degraded: DemandUnavailable`.
//!
//! Pools are matched to the gateways' figures by name; a pool no gateway reports has no demand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http::Uri;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{debug, info, warn};

use super::{Context, Figures, PoolKey, reconcile, status};
use crate::crd::{POOL_LABEL, QueryPool};
use quiver_core::scaling::{Decision, DemandSample};

/// Pods with a lower cost are removed first when a ReplicaSet shrinks.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

pub use quiver_core::demand::{DemandReport, PoolDemand, WorkerLoad};

/// A pool's demand summed over the gateways.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolTotal {
    /// Queries running.
    pub in_flight: u32,
    /// Queries waiting.
    pub queued: u32,
    /// Arrivals per second.
    pub arrivals_per_sec: f64,
    /// Worker host (pod IP) → (ready in any gateway's view, in-flight queries in all).
    pub loads: BTreeMap<String, (bool, u32)>,
}

impl PoolTotal {
    /// The policy's input.
    pub fn sample(&self) -> DemandSample {
        DemandSample {
            in_flight: self.in_flight,
            queued: self.queued,
            arrivals_per_sec: self.arrivals_per_sec,
        }
    }

    /// The figures for status: warm = ready workers running nothing.
    pub fn figures(&self) -> Figures {
        let warm = self
            .loads
            .values()
            .filter(|(ready, in_flight)| *ready && *in_flight == 0)
            .count();
        Figures {
            in_flight: self.in_flight,
            queued: self.queued,
            warm: u32::try_from(warm).unwrap_or(u32::MAX),
        }
    }
}

/// Sums the gateways' reports per pool.
pub fn aggregate(reports: &[DemandReport]) -> BTreeMap<String, PoolTotal> {
    let mut totals: BTreeMap<String, PoolTotal> = BTreeMap::new();
    for pool in reports.iter().flat_map(|r| &r.pools) {
        let total = totals.entry(pool.pool.clone()).or_default();
        total.in_flight = total.in_flight.saturating_add(pool.in_flight);
        total.queued = total.queued.saturating_add(pool.queued);
        if pool.arrivals_per_sec.is_finite() {
            total.arrivals_per_sec += pool.arrivals_per_sec.max(0.0);
        }
        for load in &pool.worker_loads {
            let Some(host) = endpoint_host(&load.endpoint) else {
                continue;
            };
            let entry = total.loads.entry(host).or_insert((false, 0));
            entry.0 |= load.ready;
            entry.1 = entry.1.saturating_add(load.in_flight);
        }
    }
    totals
}

/// The host of a worker endpoint: `grpc://10.0.0.5:50051` → `10.0.0.5`,
/// `grpc://[fd00::5]:50051` → `fd00::5`.
pub fn endpoint_host(endpoint: &str) -> Option<String> {
    let uri: Uri = endpoint.parse().ok()?;
    let host = uri.host()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// The deletion cost each pod should carry: the queries running on it, so the idle pods go
/// first and the busiest last. Pods no gateway reports (starting, or not yet discovered) cost
/// 0, like an idle pod; the ReplicaSet removes not-ready pods before any ready one anyway.
pub fn deletion_costs(pods: &[Pod], loads: &BTreeMap<String, (bool, u32)>) -> Vec<(String, i32)> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|pod| {
            let in_flight = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|ip| loads.get(ip))
                .map_or(0, |(_, in_flight)| *in_flight);
            (pod.name_any(), i32::try_from(in_flight).unwrap_or(i32::MAX))
        })
        .collect()
}

/// Annotates the pool's pods with their deletion cost, patching only those whose cost changed.
pub async fn mark_pods(
    client: &Client,
    pool: &QueryPool,
    loads: &BTreeMap<String, (bool, u32)>,
) -> Result<usize, kube::Error> {
    let ns = pool.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = format!("{POOL_LABEL}={}", pool.name_any());
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    let mut patched = 0;
    for (name, cost) in deletion_costs(&list.items, loads) {
        let cost = cost.to_string();
        let current = list
            .items
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.annotations().get(DELETION_COST));
        if current == Some(&cost) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"annotations": {DELETION_COST: cost}}});
        pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        patched += 1;
    }
    Ok(patched)
}

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How long the demand loop waits for the first list of the gateway endpoints before it
/// polls: a list takes milliseconds, so a longer wait means the watch is failing, which the
/// pools should then report.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(10);

/// Why the gateways' demand could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DemandError {
    /// The gateway Service's EndpointSlices have not been listed yet: the watch is starting or
    /// failing (its errors are logged).
    #[error("the endpoints of {0} are not listed yet")]
    NotListed(String),
    /// The gateway Service has no ready endpoint.
    #[error("no ready gateway behind {0}")]
    NoGateway(String),
    /// A gateway did not answer in time.
    #[error("{0}: no answer within {1:?}")]
    Timeout(Uri, Duration),
    /// A gateway could not be reached.
    #[error("{0}: {1}")]
    Http(Uri, String),
    /// A gateway answered with an error status or an unreadable document.
    #[error("{0}: {1}")]
    Response(Uri, String),
}

/// Where the gateways' admin ports are.
#[derive(Debug, Clone)]
pub enum Gateways {
    /// One URL, polled as is.
    Url(Uri),
    /// Every ready endpoint of a Service, found through its EndpointSlices.
    Service {
        /// Service namespace.
        namespace: String,
        /// Service name.
        name: String,
        /// Port to use when a slice has several ports and none is named `admin`.
        port: u16,
    },
}

impl Gateways {
    /// From the admin URL: `http://<svc>.<ns>.svc[.<domain>]:<port>` names a Service, whose
    /// pods are polled one by one; any other URL is polled as is.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("gateway admin URL {url:?}: {e}"))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("gateway admin URL {url:?} has no host"))?;
        let labels: Vec<&str> = host.split('.').collect();
        match labels.as_slice() {
            [name, namespace, "svc", ..] => Ok(Gateways::Service {
                namespace: (*namespace).into(),
                name: (*name).into(),
                port: uri.port_u16().unwrap_or(80),
            }),
            _ => Ok(Gateways::Url(uri)),
        }
    }

    /// The label selector of the Service's EndpointSlices; none for a plain URL.
    pub fn slice_selector(&self) -> Option<String> {
        match self {
            Gateways::Url(_) => None,
            Gateways::Service { name, .. } => Some(service_selector(name)),
        }
    }

    /// What the poller reads, and for a Service the watch that keeps it current, to be run
    /// for as long as the poller is used. A watch, not a list per poll: the poll runs every
    /// second, and the gateways change rarely.
    pub fn discover(
        &self,
        client: Client,
    ) -> (Targets, Option<impl Future<Output = ()> + Send + 'static>) {
        match self {
            Gateways::Url(uri) => (Targets::Url(pools_uri(uri)), None),
            Gateways::Service {
                namespace,
                name,
                port,
            } => {
                let (store, writer) = reflector::store();
                let targets = Targets::Slices {
                    service: format!("{namespace}/{name}"),
                    port: *port,
                    store,
                };
                let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
                (
                    targets,
                    Some(watch_slices(api, service_selector(name), writer)),
                )
            }
        }
    }
}

/// Selects the EndpointSlices of Service `name`.
fn service_selector(name: &str) -> String {
    format!("{SERVICE_NAME_LABEL}={name}")
}

/// Keeps `writer`'s store equal to the EndpointSlices `selector` picks, until dropped. API
/// errors are logged and retried with backoff; the store keeps what it had meanwhile, and a
/// relist replaces it only once complete.
pub async fn watch_slices(
    api: Api<EndpointSlice>,
    selector: String,
    writer: Writer<EndpointSlice>,
) {
    info!(%selector, "watching the gateway endpoints");
    let events = watcher::watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .reflect(writer);
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            warn!(error = %e, "watching the gateway endpoints failed; retrying");
        }
    }
}

/// The gateways to poll, as known now.
#[derive(Debug, Clone)]
pub enum Targets {
    /// One gateway, at this `/v1/pools` URL.
    Url(Uri),
    /// The ready endpoints of a Service's EndpointSlices, as a reflector keeps them.
    Slices {
        /// `namespace/name` of the Service, for errors.
        service: String,
        /// Port to use when a slice has several ports and none is named `admin`.
        port: u16,
        /// The Service's slices.
        store: Store<EndpointSlice>,
    },
}

impl Targets {
    /// The `/v1/pools` URL of every gateway to poll now.
    pub fn now(&self) -> Result<Vec<Uri>, DemandError> {
        let (service, port, store) = match self {
            Targets::Url(uri) => return Ok(vec![uri.clone()]),
            Targets::Slices {
                service,
                port,
                store,
            } => (service, *port, store),
        };
        // An empty store before the first list is not "no gateway".
        if !matches!(store.wait_until_ready().now_or_never(), Some(Ok(()))) {
            return Err(DemandError::NotListed(service.clone()));
        }
        let slices = store.state();
        let targets = ready_targets(slices.iter().map(|s| &**s), port);
        if targets.is_empty() {
            return Err(DemandError::NoGateway(service.clone()));
        }
        Ok(targets)
    }

    /// Waits until the endpoints are first listed, for at most `limit` (at once for a URL).
    pub async fn listed(&self, limit: Duration) {
        if let Targets::Slices { store, .. } = self {
            let _ = tokio::time::timeout(limit, store.wait_until_ready()).await;
        }
    }
}

/// The `/v1/pools` URL of every ready endpoint in `slices`, at the slice's port (its only one,
/// or the one named `admin`, else `default_port`).
pub fn ready_targets<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    default_port: u16,
) -> Vec<Uri> {
    let mut targets = Vec::new();
    for slice in slices {
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = match ports {
            [only] => only.port,
            _ => ports
                .iter()
                .find(|p| p.name.as_deref() == Some("admin"))
                .and_then(|p| p.port),
        }
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(default_port);
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            // Terminating gateways are leaving; their queries finish without new ones.
            if conditions.and_then(|c| c.ready) == Some(false) {
                continue;
            }
            // The addresses of one endpoint are one pod; the first is enough.
            if let Some(address) = endpoint.addresses.first() {
                let host = if address.contains(':') {
                    format!("[{address}]")
                } else {
                    address.clone()
                };
                if let Ok(uri) = format!("http://{host}:{port}/v1/pools").parse() {
                    targets.push(uri);
                }
            }
        }
    }
    targets
}

/// `base` with the path `/v1/pools`.
fn pools_uri(base: &Uri) -> Uri {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(
        format!("{}/v1/pools", base.path().trim_end_matches('/'))
            .parse()
            .expect("a path"),
    );
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

/// Reads the gateways' demand.
#[derive(Clone)]
pub struct Poller {
    http: HttpClient<HttpConnector, Empty<Bytes>>,
    targets: Targets,
    timeout: Duration,
}

impl Poller {
    /// A poller giving each gateway `timeout` to answer.
    pub fn new(targets: Targets, timeout: Duration) -> Self {
        Self {
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            targets,
            timeout,
        }
    }

    /// Every gateway's report, or the first failure.
    pub async fn poll(&self) -> Result<Vec<DemandReport>, DemandError> {
        let targets = self.targets.now()?;
        let fetches = targets.into_iter().map(|uri| self.fetch(uri));
        futures::future::try_join_all(fetches).await
    }

    async fn fetch(&self, uri: Uri) -> Result<DemandReport, DemandError> {
        let request = async {
            let response = self
                .http
                .get(uri.clone())
                .await
                .map_err(|e| DemandError::Http(uri.clone(), e.to_string()))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| DemandError::Http(uri.clone(), e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(DemandError::Response(uri.clone(), format!("HTTP {status}")));
            }
            serde_json::from_slice(&body)
                .map_err(|e| DemandError::Response(uri.clone(), e.to_string()))
        };
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| DemandError::Timeout(uri.clone(), self.timeout))?
    }
}

/// Polls at `interval` until the task is dropped, acting on the pools in `store`.
pub async fn run(ctx: Arc<Context>, store: Store<QueryPool>, poller: Poller, interval: Duration) {
    // A watch just started has not listed the gateways yet: wait for it rather than report
    // DemandUnavailable for the moment that takes.
    poller.targets.listed(FIRST_LIST_WAIT).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let polled = poller.poll().await;
        step(&ctx, &store.state(), polled, ctx.now()).await;
    }
}

/// One poll's work: feed every pool's policy, then mark pods and resize the pools whose size
/// changed, and refresh the status figures of the others.
pub async fn step(
    ctx: &Arc<Context>,
    pools: &[Arc<QueryPool>],
    polled: Result<Vec<DemandReport>, DemandError>,
    now: Duration,
) {
    let scalers = &ctx.scalers;
    let reports = match polled {
        Ok(reports) => reports,
        Err(e) => {
            ctx.metrics.polled(false);
            let message = e.to_string();
            if scalers.demand_error().as_deref() != Some(message.as_str()) {
                warn!(error = %message, "cannot read demand; holding every pool's size");
                scalers.set_demand_error(Some(message));
                for pool in pools {
                    refresh(ctx, pool).await;
                }
            }
            return;
        }
    };
    ctx.metrics.polled(true);
    let recovered = scalers.demand_error().is_some();
    if recovered {
        info!("demand readable again");
        scalers.set_demand_error(None);
    }
    let totals = aggregate(&reports);
    scalers.retain(|key| {
        pools
            .iter()
            .any(|p| p.namespace().as_ref() == Some(&key.0) && p.name_any() == key.1)
    });
    for pool in pools {
        let key: PoolKey = (pool.namespace().unwrap_or_default(), pool.name_any());
        let total = totals.get(&key.1).cloned().unwrap_or_default();
        let before = scalers.figures(&key);
        let decision = scalers.observe(&key, now, total.sample(), total.figures());
        match decision {
            Some(decision) if decision.changed() => resize(ctx, pool, &decision, &total).await,
            _ if recovered => refresh(ctx, pool).await,
            _ if before != scalers.figures(&key) => update_figures(ctx, pool, &key).await,
            _ => {}
        }
    }
}

/// Applies a changed size: marks the pods first when shrinking, so the ReplicaSet removes the
/// idle ones, then reconciles.
async fn resize(ctx: &Arc<Context>, pool: &Arc<QueryPool>, decision: &Decision, total: &PoolTotal) {
    let (name, ns) = (pool.name_any(), pool.namespace().unwrap_or_default());
    let up = decision.desired > decision.previous;
    info!(
        namespace = %ns, pool = %name, from = decision.previous, to = decision.desired,
        demand = decision.demand, reason = %decision.reason, "scaling"
    );
    ctx.metrics.scaled(up);
    if !up {
        match mark_pods(&ctx.client, pool, &total.loads).await {
            Ok(patched) => debug!(pool = %name, patched, "deletion costs set"),
            // The workers drain on SIGTERM whichever goes; only the choice is worse.
            Err(e) => warn!(pool = %name, error = %e, "could not set deletion costs"),
        }
    }
    let reason = if up { "ScaledUp" } else { "ScaledDown" };
    let note = format!(
        "{} to {} workers: {}",
        decision.previous, decision.desired, decision.reason
    );
    ctx.event(pool, EventType::Normal, reason, note).await;
    refresh(ctx, pool).await;
}

/// Reconciles one pool now, logging a failure (the controller retries it on its own queue).
async fn refresh(ctx: &Arc<Context>, pool: &Arc<QueryPool>) {
    if let Err(e) = reconcile(pool.clone(), ctx.clone()).await {
        warn!(pool = %pool.name_any(), error = %e, "reconcile after a demand change failed");
    }
}

/// Writes the new in-flight, queued and warm figures into the pool's status, nothing else.
async fn update_figures(ctx: &Arc<Context>, pool: &QueryPool, key: &PoolKey) {
    let (Some(previous), Some(figures)) = (pool.status.as_ref(), ctx.scalers.figures(key)) else {
        return;
    };
    let new = status::with_figures(previous, figures);
    let api: Api<QueryPool> = Api::namespaced(ctx.client.clone(), &key.0);
    if let Err(e) = super::write_status(&api, pool, new).await {
        debug!(pool = %key.1, error = %e, "could not update the figures");
    }
}
