//! The gateway role: serves Flight SQL to clients and dispatches each query to a worker of its
//! group's pool.
//!
//! ```text
//!  client ──► flight (decode, check ticket) ──► admission (group → pool)
//!         ──► dispatch (least-loaded ready worker of that pool, retry once)
//!         ◄── relayed Flight data ◄────────────── worker
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::admin::{self, AdminState};
use crate::admission::Admission;
use crate::admission::config::Policy;
use crate::dispatch::Dispatcher;
use crate::dispatch::claim::Claimer;
use crate::dispatch::pool::WorkerPool;
use crate::dispatch::registry::Pools;
use crate::flight::GatewayService;
use crate::metrics::GatewayMetrics;
use quiver_core::accepted::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};

/// How often the admission config file is checked for changes.
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Everything the gateway needs besides its Flight socket.
pub struct GatewayConfig {
    /// Admin HTTP socket (metrics, demand), if any.
    pub admin: Option<TcpListener>,
    /// The pools served, each fed by a discovery (static endpoints, the local supervisor or
    /// Kubernetes, which also adds pools while running); the admission config may only name
    /// these. Standby workers listed in a pool with a catalog document are claimed into it.
    pub pools: Arc<Pools>,
    /// Metrics registry.
    pub metrics: Arc<GatewayMetrics>,
    /// Key shared with the workers (tickets) and used for session tokens.
    pub key: Vec<u8>,
    /// Admission config file; `None` runs open.
    pub config: Option<PathBuf>,
    /// A file of more tenants (`tenants:` only), e.g. mounted from a Secret.
    pub tenants: Option<PathBuf>,
    /// Gateway replicas sharing the limits.
    pub replicas: u32,
    /// Query slots per ready worker.
    pub worker_slots: u32,
    /// Serve TLS from these files; plain gRPC without.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Longest SQL text accepted.
    pub max_sql_bytes: usize,
    /// Longest a query may run; the gateway ends it then even if its client stops reading.
    pub query_timeout: Duration,
    /// For pools that may scale to zero: how long a call waits for a ready worker while the
    /// pool wakes. `None` (pools that always keep a worker) answers UNAVAILABLE at once.
    pub wake_timeout: Option<Duration>,
    /// Threads serving client connections, each with its own connections to workers; `None`
    /// is one per core. TLS connections are served (and their handshakes run) there too.
    pub io_threads: Option<usize>,
    /// Start a statement's run when it is planned, for its `DoGet` to claim.
    pub eager_runs: bool,
    /// Client connections open at once, at most; past it new ones are closed at once.
    pub max_connections: usize,
}

/// HTTP/2 streams one client connection may have open at once: enough for a BI tool's
/// parallel queries, few enough that one connection cannot hold the gateway's memory.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Request headers larger than this are refused (tokens and hints are short).
const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
/// Connections are recycled after this long, so an idle or hoarded connection does not live
/// forever; the grace lets their running queries finish first.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The admission config is invalid.
    #[error(transparent)]
    Config(#[from] crate::admission::config::ConfigError),
    /// The gRPC server failed.
    #[error("gateway server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The io threads could not be started or failed.
    #[error(transparent)]
    Threads(#[from] crate::io_threads::ServeError),
    /// The TLS certificate, key or client CA is invalid.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Loads the admission policy with the tenants file, or the open policy without a config file.
/// Groups may only run on `pools`, the pools the gateway serves.
pub fn load_policy(
    config: Option<&PathBuf>,
    tenants: Option<&PathBuf>,
    pools: &[&str],
) -> Result<Policy, crate::admission::config::ConfigError> {
    match (config, tenants) {
        (Some(path), tenants) => {
            Policy::load_with_tenants(path, tenants.map(PathBuf::as_path), pools)
        }
        // Tenants alone: the default groups and no rate limits, but authentication on.
        (None, Some(tenants)) => Policy::load_tenants(tenants, pools),
        (None, None) => Ok(Policy::open_for(pools)),
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves; running streams finish first.
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let policy = load_policy(
        config.config.as_ref(),
        config.tenants.as_ref(),
        &as_strs(&config.pools.names()),
    )?;
    if policy.open {
        tracing::info!(
            "admission is open: no authentication, one default group (pass --config to configure tenants)"
        );
    } else {
        tracing::info!(
            tenants = policy.tenants.len(),
            rate_limits = policy.rate_limits.len(),
            "admission config loaded"
        );
    }
    let admission = Admission::with_max_sql_bytes(policy, config.replicas, config.max_sql_bytes);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    let mut background = tokio::task::JoinSet::new();
    if let Some(admin) = config.admin {
        let state = AdminState {
            pools: config.pools.clone(),
            metrics: config.metrics.clone(),
            admission: admission.clone(),
        };
        background.spawn(async move {
            if let Err(e) = admin::serve(admin, state, std::future::pending()).await {
                tracing::error!(error = %e, "admin server failed");
            }
        });
    }
    // Every pool's capacity, pools added while running included.
    let (tracked, slots) = (admission.clone(), config.worker_slots);
    background.spawn(
        config
            .pools
            .clone()
            .for_each(move |pool| track_capacity(pool, tracked.clone(), slots)),
    );
    let refused_metric = config.metrics.clone();
    let counted = config.metrics.clone();
    let record = Box::new(move |pool: &str, outcome| counted.claim(pool, outcome));
    background.spawn(Claimer::new(config.pools.clone(), &config.key, record).run());
    if config.config.is_some() || config.tenants.is_some() {
        background.spawn(reload_on_change(
            config.config.clone(),
            config.tenants.clone(),
            config.pools.clone(),
            admission.clone(),
        ));
    }
    tracing::info!(pools = ?config.pools.names(), "serving pools");
    let service = GatewayService::new(
        Dispatcher::new(config.pools).with_wake_timeout(config.wake_timeout),
        &config.key,
        admission,
        config.metrics,
    )
    .with_query_timeout(config.query_timeout)
    .with_eager_runs(config.eager_runs);
    // On shutdown: report NOT_SERVING first (load balancers and probes stop sending), then stop
    // accepting and let running streams finish (each ends by its time limit at the latest).
    let drain_health = health.clone();
    let shutdown = async move {
        shutdown.await;
        drain_health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        tracing::info!("gateway draining: not serving, finishing running queries");
    };
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "gateway serving"
    );
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(KEEPALIVE_INTERVAL))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_connection_age_grace(config.query_timeout + Duration::from_secs(5))
        .add_service(health_service)
        .add_service(service.into_server());
    let (tls, _reload) = match config.tls {
        Some(files) => {
            let (handshakes, reload) = crate::tls::Handshakes::start(files)?;
            (Some(handshakes), Some(reload))
        }
        None => (None, None),
    };
    let threads = crate::io_threads::Threads {
        count: config
            .io_threads
            .unwrap_or_else(crate::io_threads::default_count),
        max_connections: config.max_connections,
    };
    let refused = move || refused_metric.connection_refused();
    let result = crate::io_threads::serve(listener, threads, router, tls, refused, shutdown)
        .await
        .map_err(GatewayError::from);
    background.shutdown().await;
    result
}

/// Keeps a pool's capacity at ready workers × slots. With no worker ready, one worker's
/// worth is admitted, so dispatch can answer UNAVAILABLE instead of letting queries time out,
/// or, for a pool that may be at zero, hold them as waiting while it wakes (the rest queue in
/// admission; both show in the demand the scaler wakes the pool for).
async fn track_capacity(pool: Arc<WorkerPool>, admission: Arc<Admission>, slots: u32) {
    let mut changes = pool.subscribe();
    loop {
        let ready = u32::try_from(pool.ready_count()).unwrap_or(u32::MAX).max(1);
        admission.set_capacity(pool.name(), ready.saturating_mul(slots));
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The names as the admission config's checks take them.
fn as_strs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

/// Reloads the admission config when its file or the tenants file changes; a bad file keeps the
/// running policy. Pool names are checked against the pools served at the time of the reload,
/// and a reload refused while pools were added is tried again then: a config naming a pool
/// whose QueryPool is created after it takes effect once the pool exists.
///
/// Polling the modification times (rather than inotify) also sees a Kubernetes ConfigMap or
/// Secret update, which swaps a symlink instead of writing the file.
async fn reload_on_change(
    config: Option<PathBuf>,
    tenants: Option<PathBuf>,
    pools: Arc<Pools>,
    admission: Arc<Admission>,
) {
    let modified = |p: &Option<PathBuf>| {
        p.as_ref()
            .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    };
    let stamp = || (modified(&config), modified(&tenants));
    let mut last: (Option<SystemTime>, Option<SystemTime>) = stamp();
    let mut tick = tokio::time::interval(CONFIG_POLL);
    let mut added = pools.subscribe();
    let mut refused = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = stamp();
                if now == last {
                    continue;
                }
                last = now;
            }
            // The registry, held here, keeps the sender open.
            _ = added.changed() => {
                if !refused {
                    continue;
                }
            }
        }
        let names = pools.names();
        match load_policy(config.as_ref(), tenants.as_ref(), &as_strs(&names)) {
            Ok(policy) => {
                refused = false;
                admission.replace(policy);
                tracing::info!(
                    config = ?config.as_ref().map(|p| p.display().to_string()),
                    tenants = ?tenants.as_ref().map(|p| p.display().to_string()),
                    "admission config reloaded"
                );
            }
            Err(e) => {
                refused = true;
                tracing::error!(error = %e, "admission config reload failed; keeping the running config")
            }
        }
    }
}
