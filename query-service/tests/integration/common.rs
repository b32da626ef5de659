//! Shared fixtures: a tiny TPC-H data set generated once per test binary, and helpers that start
//! workers and gateways on port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use quiver_core::ticket::TicketSigner;
use quiver_gateway::GatewayMetrics;
use quiver_gateway::WorkerPool;
use quiver_worker::WorkerConfig;
use quiver_worker::catalog::Catalog;
use quiver_worker::engine::QueryLimits;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub const KEY: &[u8] = b"integration-test-key";

/// TPC-H at scale 0.001, generated once for the whole binary.
pub fn catalog_path() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        quiver::datagen::generate(dir.path(), 0.001).expect("datagen");
        dir
    });
    dir.path().join(quiver::datagen::CATALOG_FILE)
}

pub fn default_limits() -> QueryLimits {
    QueryLimits {
        memory_limit: 256 << 20,
        timeout: Duration::from_secs(30),
    }
}

/// A running worker; dropping `stop` (or sending on it) starts its drain.
pub struct TestWorker {
    pub addr: SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), quiver_worker::WorkerError>>,
}

pub async fn start_worker(limits: QueryLimits) -> TestWorker {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = WorkerConfig {
        catalog: Catalog::load(&catalog_path()).unwrap(),
        limits,
        drain_timeout: Duration::from_secs(10),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(quiver_worker::run(
        listener,
        config,
        TicketSigner::new(KEY),
        async {
            let _ = stopped.await;
        },
    ));
    TestWorker {
        addr,
        stop: Some(stop),
        task,
    }
}

/// Starts a gateway over `workers` and waits until `ready` of them report SERVING.
pub async fn start_gateway(workers: &[SocketAddr], ready: usize) -> (SocketAddr, Arc<WorkerPool>) {
    start_gateway_with(workers, ready, None).await
}

/// A test gateway's settings: `pools`, `metrics` and an optional admission config file, with
/// the shared key and default limits.
pub fn gateway_config(
    pools: Arc<quiver_gateway::Pools>,
    metrics: Arc<GatewayMetrics>,
    admission: Option<PathBuf>,
) -> quiver_gateway::GatewayConfig {
    quiver_gateway::GatewayConfig {
        admin: None,
        pools,
        metrics,
        key: KEY.to_vec(),
        config: admission,
        tenants: None,
        replicas: 1,
        worker_slots: 8,
        tls: None,
        max_sql_bytes: quiver_core::sql::DEFAULT_MAX_SQL_BYTES,
        query_timeout: Duration::from_secs(30),
        wake_timeout: None,
        io_threads: None,
        eager_runs: true,
        max_connections: 1024,
    }
}

/// Like [`start_gateway`], with an admission config file.
pub async fn start_gateway_with(
    workers: &[SocketAddr],
    ready: usize,
    admission: Option<PathBuf>,
) -> (SocketAddr, Arc<WorkerPool>) {
    let pool = WorkerPool::new("default");
    for w in workers {
        pool.add(&w.to_string()).unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), pool.wait_ready(ready))
        .await
        .expect("workers ready in time");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = gateway_config(
        quiver_gateway::Pools::single(pool.clone()),
        Arc::new(GatewayMetrics::default()),
        admission,
    );
    tokio::spawn(quiver_gateway::run(
        listener,
        config,
        std::future::pending(),
    ));
    (addr, pool)
}

pub async fn client(addr: SocketAddr) -> FlightSqlServiceClient<Channel> {
    quiver::client::connect(&addr.to_string()).await.unwrap()
}
