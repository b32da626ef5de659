//! Command-line interface: one binary, one subcommand per role. Every flag has a `QUIVER_…`
//! environment variable so the same settings work from a shell, a Pod spec or a Helm value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Quiver: serverless OLAP queries over Arrow Flight SQL.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The roles and tools.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything on this machine: TPC-H data, a gateway and local worker processes.
    Up(UpArgs),
    /// Run the gateway: authenticate, admit and dispatch queries to workers.
    Gateway(GatewayArgs),
    /// Run a query worker: a pre-warmed DataFusion engine serving Flight SQL.
    Worker(WorkerArgs),
    /// Generate TPC-H data as Parquet plus a catalog file.
    Datagen(DatagenArgs),
    /// Run one SQL statement against a Quiver endpoint and print the result.
    Sql(SqlArgs),
    /// Measure latency direct to a worker and through the gateway, in the same run.
    Bench(BenchArgs),
    /// Read a password from standard input and print its Argon2 hash for the admission config
    /// (`users: [{name, password: <hash>}]`).
    HashPassword,
    /// Wait, then exit: a Kubernetes preStop hook for an image without a shell. The pod keeps
    /// serving while its endpoints are removed, so no new connection arrives after SIGTERM.
    PreStop(PreStopArgs),
}

/// `quiver pre-stop`.
#[derive(Debug, Args)]
pub struct PreStopArgs {
    /// How long to wait, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub delay: Duration,
}

/// Per-query limits shared by `worker` and `up`.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Memory one query may use for operators (hash tables, sorts), e.g. 512MiB or 2GiB.
    #[arg(long, env = "QUIVER_MEMORY_LIMIT", default_value = "1GiB", value_parser = parse_bytes)]
    pub memory_limit: u64,
    /// Longest a query may run, from planning to its last batch, e.g. 30s or 2m.
    #[arg(long, env = "QUIVER_QUERY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub query_timeout: Duration,
    /// How long a stopping worker waits for running queries before exiting anyway (default:
    /// the query timeout plus 15s, so a drain covers every query the worker admitted).
    #[arg(long, env = "QUIVER_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
}

/// What a drain waits for beyond the query timeout: the last batches' delivery.
const DRAIN_MARGIN: Duration = Duration::from_secs(15);

impl LimitArgs {
    /// The drain timeout, given or derived from the query timeout.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
            .unwrap_or(self.query_timeout + DRAIN_MARGIN)
    }
}

/// The gateway's request limits and serving threads, shared by `gateway` and `up`.
#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// Longest SQL text a client may send, e.g. 1MiB; longer is refused with INVALID_ARGUMENT.
    #[arg(long, env = "QUIVER_MAX_SQL_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_sql_bytes: u64,
    /// Threads serving client connections, plain or TLS, each with its own connections to the
    /// workers (default: one per core).
    #[arg(long, env = "QUIVER_IO_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub io_threads: Option<u16>,
    /// Start a statement's run when a client plans it (GetFlightInfo), for the DoGet that
    /// redeems its ticket to claim: the worker executes while the ticket travels to the client
    /// and back. A run not claimed within 2s is cancelled; turn this off for clients that plan
    /// statements without running them.
    #[arg(long, env = "QUIVER_EAGER_RUNS", default_value_t = true, action = clap::ArgAction::Set)]
    pub eager_runs: bool,
    /// Client connections the gateway keeps open at once; past it a new connection is closed
    /// at once. Keep it below the process's open-file limit, which also covers the
    /// connections to the workers.
    #[arg(long, env = "QUIVER_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

impl RequestArgs {
    /// The SQL limit in bytes.
    pub fn max_sql_bytes(&self) -> usize {
        usize::try_from(self.max_sql_bytes).unwrap_or(usize::MAX)
    }

    /// The connection cap.
    pub fn max_connections(&self) -> usize {
        usize::try_from(self.max_connections).unwrap_or(usize::MAX)
    }

    /// The io threads asked for, if any.
    pub fn io_threads(&self) -> Option<usize> {
        self.io_threads.map(usize::from)
    }
}

/// `quiver up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address the gateway listens on.
    #[arg(long, env = "QUIVER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Data directory; TPC-H is generated there unless it already holds a catalog.yaml.
    /// Default: .quiver/tpch-sf<SCALE_FACTOR>.
    #[arg(long, env = "QUIVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TPC-H scale factor to generate (1.0 is about 1 GB of CSV, 250 MB of Parquet).
    #[arg(long, env = "QUIVER_SCALE_FACTOR", default_value_t = 0.1)]
    pub scale_factor: f64,
    /// Address of the admin HTTP port (metrics, demand); port 0 picks a free port.
    #[arg(long, env = "QUIVER_ADMIN_LISTEN", default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
    /// Admission config (tenants, rate limits, resource groups); without it the gateway is open.
    #[arg(long, env = "QUIVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// More tenants, in a file with only a `tenants:` list in the config's format (e.g. from a
    /// Kubernetes Secret, so credential hashes stay out of the ConfigMap); reloaded on change.
    #[arg(long, env = "QUIVER_TENANTS_FILE")]
    pub tenants_file: Option<PathBuf>,
    /// Query slots per ready worker: the pool admits this many queries per worker at once.
    #[arg(long, env = "QUIVER_WORKER_SLOTS", default_value_t = quiver_gateway::DEFAULT_WORKER_SLOTS)]
    pub worker_slots: u32,
    /// A fixed number of worker processes (default 2 unless --min-workers/--max-workers set a
    /// range to autoscale in).
    #[arg(long, env = "QUIVER_WORKERS", value_parser = clap::value_parser!(u16).range(1..),
          conflicts_with_all = ["min_workers", "max_workers"])]
    pub workers: Option<u16>,
    /// Autoscale: fewest worker processes, however quiet (default 1).
    #[arg(long, env = "QUIVER_MIN_WORKERS")]
    pub min_workers: Option<u16>,
    /// Autoscale: most worker processes, however busy (default the larger of 4 and the minimum).
    #[arg(long, env = "QUIVER_MAX_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_workers: Option<u16>,
    /// Autoscale: idle, ready workers kept on top of demand so a burst never waits for a start.
    #[arg(long, env = "QUIVER_WARM_WORKERS", default_value_t = 1)]
    pub warm_workers: u16,
    /// Autoscale: concurrent queries each worker should run (default: --worker-slots).
    #[arg(long, env = "QUIVER_TARGET_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..))]
    pub target_concurrency: Option<u32>,
    /// Autoscale: the pool shrinks only to the most it needed over this window.
    #[arg(long, env = "QUIVER_STABLE_WINDOW", default_value = "30s", value_parser = humantime::parse_duration)]
    pub stable_window: Duration,
    /// Autoscale: after a burst (demand above twice the capacity) the pool does not shrink for
    /// this long.
    #[arg(long, env = "QUIVER_PANIC_WINDOW", default_value = "6s", value_parser = humantime::parse_duration)]
    pub panic_window: Duration,
    /// Autoscale: least time between a change of size and a following scale-down.
    #[arg(long, env = "QUIVER_SCALE_DOWN_DELAY", default_value = "15s", value_parser = humantime::parse_duration)]
    pub scale_down_delay: Duration,
    /// Standby worker processes of no pool, kept warm besides the pool's workers: the pool grows
    /// (or wakes from zero) by claiming one in well under a second instead of starting a
    /// process, and each one claimed is replaced at once.
    #[arg(long, env = "QUIVER_STANDBY_WORKERS", default_value_t = 0)]
    pub standby_workers: u16,
    /// Autoscale with --min-workers 0: after this long without a query the pool drains to zero
    /// workers, and the next query wakes it (e.g. 30s). Without it, only the ordinary
    /// scale-down reaches zero.
    #[arg(long, env = "QUIVER_SCALE_TO_ZERO_AFTER", value_parser = humantime::parse_duration)]
    pub scale_to_zero_after: Option<Duration>,
    /// With --min-workers 0: how long a query waits at the gateway for a worker while the pool
    /// wakes, before it fails with UNAVAILABLE.
    #[arg(long, env = "QUIVER_WAKE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub wake_timeout: Duration,
    /// Per-query limits for the workers.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The gateway's request limits.
    #[command(flatten)]
    pub requests: RequestArgs,
    /// Key the gateway and its workers share to sign tickets and grants (default: a fresh
    /// random key; set it to call the workers directly, as `quiver bench` does).
    #[arg(long, env = "QUIVER_TICKET_KEY", hide_env_values = true)]
    pub ticket_key: Option<String>,
    /// TLS for the gateway's Flight endpoint.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS for the gateway's Flight endpoint, shared by `gateway` and `up`.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// Serve TLS with this PEM certificate chain (leaf first); reloaded when the file changes.
    #[arg(long, env = "QUIVER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key; reloaded when the file changes.
    #[arg(long, env = "QUIVER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by a CA in this PEM file (mutual TLS).
    #[arg(long, env = "QUIVER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The files to serve TLS from, if TLS is on.
    pub fn files(&self) -> Option<quiver_gateway::TlsFiles> {
        Some(quiver_gateway::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

impl UpArgs {
    /// The scale-to-zero idle time and the wake timeout, refusing flags that cannot apply: a
    /// pool goes to zero (and queries wait for it to wake) only with --min-workers 0.
    pub fn zero(&self) -> Result<(Option<Duration>, Option<Duration>), String> {
        let may_be_zero = self.min_workers == Some(0);
        match self.scale_to_zero_after {
            Some(_) if !may_be_zero => {
                return Err(
                    "--scale-to-zero-after needs --min-workers 0: a pool with a \
                            minimum above zero never goes to zero"
                        .into(),
                );
            }
            Some(after) if after.is_zero() => {
                return Err("--scale-to-zero-after must be above zero, e.g. 30s".into());
            }
            _ => {}
        }
        if self.wake_timeout.is_zero() {
            return Err("--wake-timeout must be above zero, e.g. 30s".into());
        }
        let wake = may_be_zero.then_some(self.wake_timeout);
        Ok((self.scale_to_zero_after, wake))
    }

    /// Fixed workers, or the autoscaling range when --min-workers or --max-workers is given.
    pub fn scaling(&self) -> crate::local::autoscale::Scaling {
        use crate::local::autoscale::Scaling;
        if self.min_workers.is_none() && self.max_workers.is_none() {
            return Scaling::Fixed(u32::from(self.workers.unwrap_or(2)));
        }
        let min = self.min_workers.unwrap_or(1);
        let max = self.max_workers.unwrap_or(min.max(4));
        Scaling::Auto(quiver_core::scaling::ScalingConfig {
            min_replicas: u32::from(min),
            max_replicas: u32::from(max),
            warm_replicas: u32::from(self.warm_workers),
            target_concurrency: self.target_concurrency.unwrap_or(self.worker_slots),
            stable_window: self.stable_window,
            panic_window: self.panic_window,
            scale_down_delay: self.scale_down_delay,
            ..quiver_core::scaling::ScalingConfig::default()
        })
    }
}

/// `quiver gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to listen on for Flight SQL clients.
    #[arg(long, env = "QUIVER_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Address of the admin HTTP port: /metrics, /v1/pools (demand), /healthz.
    #[arg(long, env = "QUIVER_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Admission config (tenants, rate limits, resource groups); reloaded when it changes.
    #[arg(long, env = "QUIVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// More tenants, in a file with only a `tenants:` list in the config's format (e.g. from a
    /// Kubernetes Secret, so credential hashes stay out of the ConfigMap); reloaded on change.
    #[arg(long, env = "QUIVER_TENANTS_FILE")]
    pub tenants_file: Option<PathBuf>,
    /// Gateway replicas behind the same Service: each enforces its share of every limit.
    #[arg(long, env = "QUIVER_GATEWAY_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub gateway_replicas: u32,
    /// Query slots per ready worker: the pool admits this many queries per worker at once.
    #[arg(long, env = "QUIVER_WORKER_SLOTS", default_value_t = quiver_gateway::DEFAULT_WORKER_SLOTS)]
    pub worker_slots: u32,
    /// A worker endpoint (grpc://host:port) of the default pool; repeat for each worker.
    #[arg(
        long = "worker",
        env = "QUIVER_WORKER_ENDPOINTS",
        value_delimiter = ','
    )]
    pub workers: Vec<String>,
    /// A named pool: NAME=grpc://host:port,grpc://host:port with static discovery, NAME alone
    /// with kubernetes discovery; repeat for each pool (in the variable, separate pools with
    /// `;`). Resource groups choose their pool with `pool:`.
    #[arg(long = "pool", env = "QUIVER_POOLS", value_delimiter = ';', value_parser = parse_pool)]
    pub pools: Vec<PoolSpec>,
    /// Where the pools' workers come from: `static` (--worker, --pool) or `kubernetes` (the
    /// ready endpoints of each pool's Service, which the operator names after the pool).
    #[arg(long, env = "QUIVER_DISCOVERY", value_enum, default_value_t = Discovery::Static)]
    pub discovery: Discovery,
    /// Namespace of the pools' Services with kubernetes discovery (default: the gateway pod's).
    #[arg(long, env = "QUIVER_NAMESPACE")]
    pub namespace: Option<String>,
    /// How long a query waits at the gateway for a pool with no ready worker to get one (a
    /// pool at zero waking), at most its group's queue timeout; 0 fails it at once with
    /// UNAVAILABLE. Default: 30s with kubernetes discovery, 0 with static.
    #[arg(long, env = "QUIVER_WAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub wake_timeout: Option<Duration>,
    /// Key shared with the workers to sign query tickets.
    #[arg(long, env = "QUIVER_TICKET_KEY", hide_env_values = true)]
    pub ticket_key: String,
    /// Longest a query may run, from admission to its last batch, e.g. 30s or 2m; the gateway
    /// ends it then even if its client has stopped reading. Match the workers' setting.
    #[arg(long, env = "QUIVER_QUERY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub query_timeout: Duration,
    /// The gateway's request limits.
    #[command(flatten)]
    pub requests: RequestArgs,
    /// TLS for the Flight endpoint.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// How the gateway finds each pool's workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Discovery {
    /// Fixed endpoints from --worker and --pool.
    Static,
    /// The EndpointSlices of each pool's Service, watched.
    Kubernetes,
}

/// One `--pool` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// Pool name, as resource groups name it.
    pub name: String,
    /// Worker endpoints (static discovery).
    pub endpoints: Vec<String>,
}

/// Parses `NAME` or `NAME=ENDPOINT,ENDPOINT`.
fn parse_pool(s: &str) -> Result<PoolSpec, String> {
    let (name, endpoints) = match s.trim().split_once('=') {
        Some((name, list)) => (
            name.trim(),
            list.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        None => (s.trim(), Vec::new()),
    };
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ',') {
        return Err(format!(
            "{s:?}: expected NAME=grpc://host:port,... or NAME, with a pool name such as \"etl\""
        ));
    }
    Ok(PoolSpec {
        name: name.to_owned(),
        endpoints,
    })
}

impl GatewayArgs {
    /// The pools to serve and, with static discovery, their workers; `--worker` feeds the
    /// default pool. Refuses combinations that would leave a pool silently empty.
    pub fn pool_endpoints(&self) -> Result<BTreeMap<String, Vec<String>>, String> {
        use quiver_gateway::DEFAULT_POOL;
        let mut pools = BTreeMap::new();
        if !self.workers.is_empty() {
            if self.discovery == Discovery::Kubernetes {
                return Err(
                    "--worker gives static endpoints; with --discovery kubernetes name \
                            the pools with --pool NAME"
                        .into(),
                );
            }
            pools.insert(DEFAULT_POOL.to_owned(), self.workers.clone());
        }
        for pool in &self.pools {
            match self.discovery {
                Discovery::Static if pool.endpoints.is_empty() => {
                    return Err(format!(
                        "pool {:?} has no workers: give --pool {}=grpc://host:port,...",
                        pool.name, pool.name
                    ));
                }
                Discovery::Kubernetes if !pool.endpoints.is_empty() => {
                    return Err(format!(
                        "pool {:?}: with --discovery kubernetes the workers are discovered; \
                         give the name alone (--pool {})",
                        pool.name, pool.name
                    ));
                }
                _ => {}
            }
            if pools
                .insert(pool.name.clone(), pool.endpoints.clone())
                .is_some()
            {
                return Err(format!(
                    "pool {:?} is given twice (--worker fills the pool {DEFAULT_POOL:?})",
                    pool.name
                ));
            }
        }
        if pools.is_empty() {
            match self.discovery {
                Discovery::Static => {
                    return Err("no workers: give --worker grpc://host:port or \
                                --pool NAME=grpc://host:port (or --discovery kubernetes)"
                        .into());
                }
                Discovery::Kubernetes => {
                    pools.insert(DEFAULT_POOL.to_owned(), Vec::new());
                }
            }
        }
        Ok(pools)
    }
}

impl GatewayArgs {
    /// The wake timeout in force: a held call needs a scaler that wakes pools, which static
    /// endpoints do not have.
    pub fn wake_timeout(&self) -> Option<Duration> {
        let default = match self.discovery {
            Discovery::Kubernetes => DEFAULT_WAKE_TIMEOUT,
            Discovery::Static => Duration::ZERO,
        };
        Some(self.wake_timeout.unwrap_or(default)).filter(|t| !t.is_zero())
    }
}

/// How long a gateway with kubernetes discovery holds a call for a waking pool by default:
/// a claimed standby serves within a second and a cold pod within tens of seconds.
pub const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// `quiver worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Address to listen on for the gateway (port 0 picks a free port).
    #[arg(long, env = "QUIVER_LISTEN", default_value = "0.0.0.0:50052")]
    pub listen: SocketAddr,
    /// Catalog file declaring the tables (required unless --standby).
    #[arg(long, env = "QUIVER_CATALOG", required_unless_present = "standby")]
    pub catalog: Option<PathBuf>,
    /// Start as a standby worker of no pool: warm, NOT_SERVING, until a supervisor or gateway
    /// claims it with a catalog (a `quiver.Claim` Flight action carrying the gateway's grant and
    /// the catalog document; relative table locations resolve against the working directory).
    /// Health service `quiver.Ready` is SERVING from warm until it stops, claim included.
    #[arg(long, env = "QUIVER_STANDBY", conflicts_with = "catalog")]
    pub standby: bool,
    /// Key shared with the gateway to sign query tickets.
    #[arg(long, env = "QUIVER_TICKET_KEY", hide_env_values = true)]
    pub ticket_key: String,
    /// Per-query limits.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Drain and exit when standard input closes (set by a supervising parent process).
    #[arg(long, hide = true)]
    pub exit_on_stdin_eof: bool,
}

/// `quiver datagen`.
#[derive(Debug, Args)]
pub struct DatagenArgs {
    /// TPC-H scale factor.
    #[arg(long, default_value_t = 0.1)]
    pub scale_factor: f64,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// `quiver sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Gateway (or worker) endpoint.
    #[arg(
        long,
        env = "QUIVER_ENDPOINT",
        default_value = "grpc://127.0.0.1:50051"
    )]
    pub endpoint: String,
    /// The statement.
    pub sql: String,
}

/// `quiver bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Data directory (generated if missing). Default: .quiver/tpch-sf<SCALE_FACTOR>.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// TPC-H scale factor.
    #[arg(long, default_value_t = 0.1)]
    pub scale_factor: f64,
    /// Measured runs per query and path (after warm-up).
    #[arg(long, default_value_t = 300)]
    pub iterations: usize,
    /// Worker processes behind the gateway.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Concurrent clients in the throughput section (0 skips it).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// How long each side of the throughput section runs, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub throughput_for: std::time::Duration,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Measure only the queries whose name contains this text (e.g. "point"), for profiling.
    #[arg(long)]
    pub only: Option<String>,
    /// Give the gateway a core of its own and the workers (and this client) the others, as
    /// when the gateway runs in a pod of its own. Needs at least two cores; Linux only.
    #[arg(long)]
    pub pin_gateway: bool,
    /// Print the benchmark's queries as JSON (name and SQL) and exit, for other tools to run
    /// the same statements.
    #[arg(long)]
    pub print_queries: bool,
}

/// Default data directory for a scale factor, so different scales never share files.
pub fn default_data_dir(scale_factor: f64) -> PathBuf {
    PathBuf::from(format!(".quiver/tpch-sf{scale_factor}"))
}

/// Parses sizes such as `512MiB`, `2Gi`, `64MB`, `1048576` (the grammar of
/// [`quiver_core::units`]) for a flag.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    quiver_core::units::parse_size(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("0").is_err());
    }

    fn gateway(args: &[&str]) -> Result<BTreeMap<String, Vec<String>>, String> {
        let mut argv = vec!["quiver", "gateway", "--ticket-key", "k"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Gateway(g) => g.pool_endpoints(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn gateway_pools() {
        let pools = gateway(&[
            "--worker",
            "grpc://h:1",
            "--pool",
            "a=grpc://h:2, grpc://h:3",
            "--pool",
            "b=grpc://h:4",
        ])
        .unwrap();
        assert_eq!(
            pools,
            BTreeMap::from([
                (
                    "a".to_owned(),
                    vec!["grpc://h:2".to_owned(), "grpc://h:3".to_owned()]
                ),
                ("b".to_owned(), vec!["grpc://h:4".to_owned()]),
                ("default".to_owned(), vec!["grpc://h:1".to_owned()]),
            ])
        );
        let k8s = gateway(&["--discovery", "kubernetes", "--pool", "a;b"]).unwrap();
        assert_eq!(k8s.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(k8s.values().all(Vec::is_empty));
        let k8s = gateway(&["--discovery", "kubernetes"]).unwrap();
        assert_eq!(k8s.keys().collect::<Vec<_>>(), ["default"]);
        for (args, words) in [
            (&[][..], "no workers"),
            (&["--pool", "a"][..], "has no workers"),
            (&["--pool", "a=h:1", "--pool", "a=h:2"][..], "given twice"),
            (&["--pool", "=h:1"][..], "pool name"),
            (
                &["--discovery", "kubernetes", "--worker", "h:1"][..],
                "--pool NAME",
            ),
            (
                &["--discovery", "kubernetes", "--pool", "a=h:1"][..],
                "name alone",
            ),
        ] {
            let e = gateway(args).unwrap_err();
            assert!(e.contains(words), "{args:?}: {e}");
        }
    }

    #[test]
    fn gateway_wake_timeout_defaults_by_discovery() {
        let wake = |args: &[&str]| {
            let mut argv = vec!["quiver", "gateway", "--ticket-key", "k"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Gateway(g) => g.wake_timeout(),
                _ => unreachable!(),
            }
        };
        // Kubernetes pools can be at zero and are woken by the operator: hold by default.
        assert_eq!(
            wake(&["--discovery", "kubernetes"]),
            Some(DEFAULT_WAKE_TIMEOUT)
        );
        assert_eq!(
            wake(&["--discovery", "kubernetes", "--wake-timeout", "0s"]),
            None
        );
        // Static endpoints have no scaler: fail fast unless asked.
        assert_eq!(wake(&["--worker", "grpc://h:1"]), None);
        assert_eq!(
            wake(&["--worker", "grpc://h:1", "--wake-timeout", "5s"]),
            Some(Duration::from_secs(5))
        );
    }

    fn up(args: &[&str]) -> Result<(Option<Duration>, Option<Duration>), String> {
        let mut argv = vec!["quiver", "up"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Up(u) => u.zero(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn scale_to_zero_needs_a_minimum_of_zero() {
        let s = Duration::from_secs;
        assert_eq!(up(&[]).unwrap(), (None, None));
        assert_eq!(
            up(&["--min-workers", "0", "--scale-to-zero-after", "30s"]).unwrap(),
            (Some(s(30)), Some(s(30)))
        );
        assert_eq!(
            up(&["--min-workers", "0", "--wake-timeout", "5s"]).unwrap(),
            (None, Some(s(5)))
        );
        for (args, words) in [
            (&["--scale-to-zero-after", "30s"][..], "--min-workers 0"),
            (
                &["--min-workers", "1", "--scale-to-zero-after", "30s"][..],
                "--min-workers 0",
            ),
            (
                &["--min-workers", "0", "--scale-to-zero-after", "0s"][..],
                "above zero",
            ),
            (
                &["--min-workers", "0", "--wake-timeout", "0s"][..],
                "above zero",
            ),
            (
                &["--workers", "2", "--scale-to-zero-after", "30s"][..],
                "--min-workers 0",
            ),
        ] {
            let e = up(args).unwrap_err();
            assert!(e.contains(words), "{args:?}: {e}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
