//! The `quiver` binary: parses arguments, starts logging, binds, and hands over to a role.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use quiver::cli::{Cli, Command};
use tokio::net::TcpListener;

/// Stack of each runtime thread. SQL nesting is bounded before anything recursive runs; the
/// larger stack is a margin on top of that bound, for the planner and expression evaluation.
const THREAD_STACK_BYTES: usize = 8 << 20;

/// mimalloc, as DataFusion's own CLI uses: a short query is thousands of small allocations
/// (gRPC frames, plans, arrays, hash tables) across threads, which its per-thread pages serve
/// with less locking and fewer trips to the kernel than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    quiver::telemetry::init();
    let open_files = raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, open_files)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard one: a gateway holds a descriptor per
/// client connection (up to `--max-connections`) plus its connections to workers, and the
/// usual soft limit of 1024 is far below that. Returns the limit now in force (`None`:
/// unlimited).
fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // Unlimited (`None`) is left alone: the kernel caps open files below it anyway.
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = rustix::process::Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return Some(maximum),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
    limit.current
}

/// Descriptors a gateway needs besides its client connections (worker connections, files).
const OTHER_DESCRIPTORS: u64 = 1024;

/// Warns when `--max-connections` leaves too few of the open-file limit for the rest: the cap
/// would then not be what stops a flood of connections.
fn check_connection_cap(max_connections: usize, open_files: Option<u64>) {
    if let Some(limit) = open_files
        && (max_connections as u64).saturating_add(OTHER_DESCRIPTORS) > limit
    {
        tracing::warn!(
            max_connections,
            open_file_limit = limit,
            "--max-connections plus {OTHER_DESCRIPTORS} is over the open-file limit; lower it, \
             or raise the limit"
        );
    }
}

async fn run(command: Command, open_files: Option<u64>) -> anyhow::Result<()> {
    use anyhow::Context;
    match command {
        Command::Up(args) => {
            check_connection_cap(args.requests.max_connections(), open_files);
            let scaling = args.scaling();
            scaling.validate().context(
                "invalid worker counts (--min-workers, --max-workers, --target-concurrency)",
            )?;
            let (scale_to_zero_after, wake_timeout) = args.zero().map_err(anyhow::Error::msg)?;
            let listener = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            let admin = TcpListener::bind(args.admin_listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
            let config = quiver::local::UpConfig {
                data_dir: args
                    .data_dir
                    .unwrap_or_else(|| quiver::cli::default_data_dir(args.scale_factor)),
                scale_factor: args.scale_factor,
                scaling,
                memory_limit: args.limits.memory_limit.to_string(),
                query_timeout: humantime::format_duration(args.limits.query_timeout).to_string(),
                drain_timeout: args.limits.drain_timeout(),
                max_sql_bytes: args.requests.max_sql_bytes(),
                io_threads: args.requests.io_threads(),
                eager_runs: args.requests.eager_runs,
                max_connections: args.requests.max_connections(),
                ticket_key: args.ticket_key,
                config: args.config,
                tenants: args.tenants_file,
                worker_slots: args.worker_slots,
                tls: args.tls.files(),
                standby_workers: u32::from(args.standby_workers),
                scale_to_zero_after,
                wake_timeout,
            };
            quiver::local::run(listener, admin, config, quiver::shutdown::signal()).await?;
        }
        Command::Gateway(args) => {
            check_connection_cap(args.requests.max_connections(), open_files);
            let listener = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            let admin = TcpListener::bind(args.admin_listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
            let endpoints = args.pool_endpoints().map_err(anyhow::Error::msg)?;
            let pools = quiver_gateway::Pools::new(endpoints.keys().map(String::as_str));
            for (name, workers) in &endpoints {
                let pool = pools.get(name)?;
                for endpoint in workers {
                    pool.add(endpoint)?;
                }
            }
            if args.discovery == quiver::cli::Discovery::Kubernetes {
                use quiver_gateway::discovery;
                let (client, namespace) = discovery::connect(args.namespace.clone()).await?;
                // Pools created while the gateway runs, and the catalogs claims load.
                let learn = quiver_gateway::querypools::run;
                let (api, ns, learned) = (client.clone(), namespace.clone(), pools.clone());
                tokio::spawn(async move { learn(api, &ns, learned).await });
                let pools = pools.clone();
                tokio::spawn(async move { discovery::run(client, &namespace, pools).await });
            }
            let wake_timeout = args.wake_timeout();
            let config = quiver_gateway::GatewayConfig {
                admin: Some(admin),
                pools,
                metrics: std::sync::Arc::new(quiver_gateway::GatewayMetrics::default()),
                key: args.ticket_key.into_bytes(),
                config: args.config,
                tenants: args.tenants_file,
                replicas: args.gateway_replicas,
                worker_slots: args.worker_slots,
                tls: args.tls.files(),
                max_sql_bytes: args.requests.max_sql_bytes(),
                query_timeout: args.query_timeout,
                wake_timeout,
                io_threads: args.requests.io_threads(),
                eager_runs: args.requests.eager_runs,
                max_connections: args.requests.max_connections(),
            };
            quiver_gateway::run(listener, config, quiver::shutdown::signal()).await?;
        }
        Command::Worker(args) => {
            // The catalog is checked before binding: a bad file is a start-up error, not a
            // worker that never becomes ready. A standby worker gets its catalog with a claim.
            let catalog = match &args.catalog {
                Some(path) if !args.standby => Some(quiver_worker::catalog::Catalog::load(path)?),
                _ => None,
            };
            let listener = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            let addr = listener.local_addr()?;
            println!("{}{addr}", quiver::local::supervisor::LISTENING_PREFIX);
            let limits = quiver_worker::engine::QueryLimits {
                memory_limit: usize::try_from(args.limits.memory_limit).unwrap_or(usize::MAX),
                timeout: args.limits.query_timeout,
            };
            let drain_timeout = args.limits.drain_timeout();
            let signer = quiver_core::ticket::TicketSigner::new(args.ticket_key.as_bytes());
            let shutdown = quiver::shutdown::signal_or_stdin_eof(args.exit_on_stdin_eof);
            match catalog {
                Some(catalog) => {
                    let config = quiver_worker::WorkerConfig {
                        catalog,
                        limits,
                        drain_timeout,
                    };
                    quiver_worker::run(listener, config, signer, shutdown).await?;
                }
                None => {
                    let config = quiver_worker::StandbyConfig {
                        limits,
                        drain_timeout,
                    };
                    quiver_worker::run_standby(listener, config, signer, shutdown).await?;
                }
            }
        }
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("cannot read the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!("no password on standard input");
            }
            println!("{}", quiver_gateway::hash_password(password));
        }
        Command::PreStop(args) => tokio::time::sleep(args.delay).await,
        Command::Datagen(args) => {
            let catalog = quiver::datagen::generate(&args.out, args.scale_factor)?;
            println!("wrote {}", catalog.display());
        }
        Command::Sql(args) => {
            let mut client = quiver::client::connect(&args.endpoint)
                .await
                .map_err(|e| anyhow::anyhow!(quiver::client::describe(&e)))?;
            let batches = quiver::client::query(&mut client, &args.sql)
                .await
                .map_err(|e| anyhow::anyhow!(quiver::client::describe(&e)))?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
            println!("({rows} rows)");
        }
        Command::Bench(args) => {
            let data_dir = args
                .data_dir
                .unwrap_or_else(|| quiver::cli::default_data_dir(args.scale_factor));
            if args.print_queries {
                let queries: Vec<_> = quiver::bench::QUERIES
                    .iter()
                    .map(|(name, sql)| serde_json::json!({"name": name, "sql": sql}))
                    .collect();
                // A reader that stops early (`| head`) is not an error.
                let text = serde_json::Value::Array(queries).to_string();
                return match writeln!(std::io::stdout().lock(), "{text}") {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                    _ => Ok(()),
                };
            }
            quiver::bench::run(quiver::bench::BenchConfig {
                data_dir,
                scale_factor: args.scale_factor,
                iterations: args.iterations,
                workers: args.workers,
                clients: args.clients,
                throughput_for: args.throughput_for,
                json: args.json,
                only: args.only,
                pin_gateway: args.pin_gateway,
            })
            .await?;
        }
    }
    Ok(())
}
