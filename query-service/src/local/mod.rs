//! `quiver up`: the whole service on one machine: TPC-H data, a gateway, and a supervised pool
//! of worker processes on loopback.

pub mod autoscale;
pub mod process;
pub mod standby;
pub mod supervisor;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use self::autoscale::Scaling;
use self::supervisor::{SupervisorError, WorkerCommand, supervise};
use crate::datagen;
use quiver_core::ticket::TicketSigner;
use quiver_gateway::GatewayMetrics;
use quiver_gateway::WorkerPool;

/// Settings for one local deployment.
#[derive(Debug, Clone)]
pub struct UpConfig {
    /// Data directory; TPC-H is generated there unless a catalog is already present.
    pub data_dir: PathBuf,
    /// TPC-H scale factor for generation.
    pub scale_factor: f64,
    /// Worker processes to run: a fixed count or a range sized from demand.
    pub scaling: Scaling,
    /// Per-query memory limit handed to workers.
    pub memory_limit: String,
    /// Per-query time limit handed to workers.
    pub query_timeout: String,
    /// Drain timeout for workers.
    pub drain_timeout: Duration,
    /// Admission config file, if any.
    pub config: Option<PathBuf>,
    /// A file of more tenants, if any.
    pub tenants: Option<PathBuf>,
    /// Query slots per ready worker.
    pub worker_slots: u32,
    /// TLS for the gateway, if on.
    pub tls: Option<quiver_gateway::TlsFiles>,
    /// Longest SQL text the gateway accepts.
    pub max_sql_bytes: usize,
    /// Key shared by the gateway and its workers; a fresh random one when not given.
    pub ticket_key: Option<String>,
    /// Standby worker processes kept warm besides the pool, claimed before cold starts.
    pub standby_workers: u32,
    /// Idle time after which a pool with a minimum of 0 goes to zero workers; `None`: never.
    pub scale_to_zero_after: Option<Duration>,
    /// How long a query waits for a worker while the pool wakes; `None` (a pool that always
    /// keeps a worker) fails fast with UNAVAILABLE.
    pub wake_timeout: Option<Duration>,
    /// The gateway's io threads; `None`: one per core.
    pub io_threads: Option<usize>,
    /// Start statements' runs when they are planned.
    pub eager_runs: bool,
    /// The gateway's cap on open client connections.
    pub max_connections: usize,
}

/// Why `quiver up` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// Data generation failed.
    #[error(transparent)]
    Datagen(#[from] datagen::DatagenError),
    /// The workers could not be kept running.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// The gateway failed.
    #[error("gateway failed: {0}")]
    Gateway(#[from] quiver_gateway::GatewayError),
    /// The admission config is invalid.
    #[error(transparent)]
    Config(#[from] quiver_gateway::ConfigError),
    /// The worker counts do not hold together.
    #[error("invalid worker counts: {0}")]
    Scaling(#[from] quiver_core::scaling::ScalingError),
    /// The current executable could not be found to start workers.
    #[error("cannot locate the quiver executable to start workers: {0}")]
    Exe(#[source] std::io::Error),
}

/// How long the gateway may take to finish relaying running streams when stopping.
const GATEWAY_STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs until `shutdown` resolves, then stops the gateway and drains every worker.
pub async fn run(
    listener: TcpListener,
    admin: TcpListener,
    config: UpConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), UpError> {
    // A bad admission config or worker range is refused before any data is generated or
    // worker started.
    quiver_gateway::load_policy(
        config.config.as_ref(),
        config.tenants.as_ref(),
        &[quiver_gateway::DEFAULT_POOL],
    )?;
    config.scaling.validate()?;
    let catalog = if datagen::exists(&config.data_dir) {
        tracing::info!(dir = %config.data_dir.display(), "using existing data");
        config.data_dir.join(datagen::CATALOG_FILE)
    } else {
        tracing::info!(dir = %config.data_dir.display(), scale_factor = config.scale_factor, "generating TPC-H data");
        let dir = config.data_dir.clone();
        let sf = config.scale_factor;
        tokio::task::spawn_blocking(move || datagen::generate(&dir, sf))
            .await
            .expect("data generation panicked")?
    };

    let ticket_key = config
        .ticket_key
        .clone()
        .unwrap_or_else(TicketSigner::random_key);
    let pool = WorkerPool::new(pool_name());
    let command = WorkerCommand {
        exe: std::env::current_exe().map_err(UpError::Exe)?,
        catalog,
        memory_limit: config.memory_limit.clone(),
        query_timeout: config.query_timeout.clone(),
        drain_timeout: config.drain_timeout,
        ticket_key: ticket_key.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let initial = config.scaling.initial();
    let (desired_tx, desired_rx) = watch::channel(initial);
    let mut supervisor = tokio::spawn(supervise(
        pool.clone(),
        command,
        config.standby_workers,
        desired_rx,
        stop_rx,
    ));
    let admin_addr = admin.local_addr().ok();
    let _autoscaler = match (&config.scaling, admin_addr) {
        (Scaling::Auto(scaling), Some(addr)) => {
            let scaling = scaling.clone();
            let to_zero = config.scale_to_zero_after;
            let held = pool.subscribe_waiting();
            tracing::info!(
                min = scaling.min_replicas,
                max = scaling.max_replicas,
                warm = scaling.warm_replicas,
                target = scaling.target_concurrency,
                standby = config.standby_workers,
                scale_to_zero_after = ?to_zero,
                "autoscaling workers"
            );
            Some(AbortOnDrop(tokio::spawn(async move {
                let run = autoscale::run(addr, pool_name(), scaling, to_zero, held, desired_tx);
                if let Err(e) = run.await {
                    tracing::error!(error = %e, "autoscaler stopped");
                }
            })))
        }
        _ => None,
    };

    let scheme = if config.tls.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    };
    let endpoint = listener
        .local_addr()
        .map(|a| format!("{scheme}://{a}"))
        .unwrap_or_default();
    let (gateway_stop_tx, gateway_stop_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = admin_addr {
        println!("quiver admin: http://{addr}");
    }
    let metrics = Arc::new(GatewayMetrics::default());
    let gateway_config = quiver_gateway::GatewayConfig {
        admin: Some(admin),
        pools: quiver_gateway::Pools::single(pool.clone()),
        metrics,
        key: ticket_key.clone().into_bytes(),
        config: config.config.clone(),
        tenants: config.tenants.clone(),
        replicas: 1,
        worker_slots: config.worker_slots,
        tls: config.tls.clone(),
        max_sql_bytes: config.max_sql_bytes,
        query_timeout: humantime::parse_duration(&config.query_timeout)
            .unwrap_or(quiver_worker::engine::DEFAULT_QUERY_TIMEOUT),
        wake_timeout: config.wake_timeout,
        io_threads: config.io_threads,
        eager_runs: config.eager_runs,
        max_connections: config.max_connections,
    };
    let mut gateway = tokio::spawn(quiver_gateway::run(listener, gateway_config, async {
        let _ = gateway_stop_rx.await;
    }));

    tokio::pin!(shutdown);
    let mut failure: Option<UpError> = None;
    tokio::select! {
        _ = pool.wait_ready(usize::try_from(initial).unwrap_or(usize::MAX)) => {
            println!("quiver ready: {endpoint}");
            tracing::info!(%endpoint, workers = initial, "quiver is ready");
            tokio::select! {
                _ = &mut shutdown => {}
                r = &mut supervisor => failure = supervisor_failure(r),
                r = &mut gateway => failure = Some(gateway_failure(r)),
            }
        }
        _ = &mut shutdown => {}
        r = &mut supervisor => failure = supervisor_failure(r),
        r = &mut gateway => failure = Some(gateway_failure(r)),
    }

    tracing::info!("stopping: gateway first, then draining workers");
    let _ = gateway_stop_tx.send(());
    if !gateway.is_finished()
        && tokio::time::timeout(GATEWAY_STOP_GRACE, &mut gateway)
            .await
            .is_err()
    {
        gateway.abort();
    }
    let _ = stop_tx.send(true);
    if !supervisor.is_finished()
        && let Err(e) = supervisor.await.expect("supervisor panicked")
    {
        failure.get_or_insert(e.into());
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The one pool `quiver up` runs.
fn pool_name() -> String {
    quiver_gateway::DEFAULT_POOL.to_owned()
}

/// Stops a background task when its owner goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn supervisor_failure(
    r: Result<Result<(), SupervisorError>, tokio::task::JoinError>,
) -> Option<UpError> {
    match r.expect("supervisor panicked") {
        Ok(()) => None,
        Err(e) => Some(e.into()),
    }
}

fn gateway_failure(
    r: Result<Result<(), quiver_gateway::GatewayError>, tokio::task::JoinError>,
) -> UpError {
    match r.expect("gateway panicked") {
        Ok(()) => unreachable!("the gateway only stops when told to"),
        Err(e) => e.into(),
    }
}
