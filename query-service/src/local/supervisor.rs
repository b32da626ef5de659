//! Worker processes on one machine: spawns `quiver worker` children on loopback, adds each to
//! the pool once it is listening, replaces any that die, and drains them all on stop.
//!
//! Each child's stdin is a pipe the supervisor never writes to. A child exits when it reads EOF,
//! so even if the supervisor is killed outright the kernel closes the pipe and no worker
//! outlives it.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::dispatch::pool::WorkerPool;

/// A worker that dies this many times in a row before listening is broken, not unlucky.
const MAX_START_FAILURES: u32 = 3;
/// Time a drained child gets beyond its drain timeout before it is killed.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// The line a worker prints on stdout once bound.
pub const LISTENING_PREFIX: &str = "listening on ";

/// How to start a worker process.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The `quiver` executable.
    pub exe: PathBuf,
    /// Catalog file for the workers.
    pub catalog: PathBuf,
    /// `--memory-limit` value.
    pub memory_limit: String,
    /// `--query-timeout` value.
    pub query_timeout: String,
    /// How long a drain may take.
    pub drain_timeout: Duration,
    /// Shared ticket key, passed through the environment (never on the command line).
    pub ticket_key: String,
}

impl WorkerCommand {
    fn spawn(&self) -> std::io::Result<Child> {
        Command::new(&self.exe)
            .arg("worker")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--catalog")
            .arg(&self.catalog)
            .arg("--memory-limit")
            .arg(&self.memory_limit)
            .arg("--query-timeout")
            .arg(&self.query_timeout)
            .arg("--drain-timeout")
            .arg(humantime::format_duration(self.drain_timeout).to_string())
            .arg("--exit-on-stdin-eof")
            .env("QUIVER_TICKET_KEY", &self.ticket_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
    }
}

/// Why the supervisor gave up.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The worker executable could not be started at all.
    #[error("cannot start worker process {exe}: {source}")]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Workers keep exiting before they listen (bad catalog, bad flags).
    #[error(
        "worker exited {MAX_START_FAILURES} times before it started listening (last: {status}); see its error above"
    )]
    CrashLoop {
        /// The last exit status.
        status: String,
    },
}

/// Keeps `count` workers running until `stop` turns true.
pub async fn supervise(
    pool: Arc<WorkerPool>,
    command: WorkerCommand,
    count: usize,
    stop: watch::Receiver<bool>,
) -> Result<(), SupervisorError> {
    let command = Arc::new(command);
    let mut slots = JoinSet::new();
    for slot in 0..count {
        slots.spawn(run_slot(slot, pool.clone(), command.clone(), stop.clone()));
    }
    while let Some(result) = slots.join_next().await {
        result.expect("worker slot task panicked")?;
    }
    Ok(())
}

/// One worker slot: start, watch, replace, and finally drain.
async fn run_slot(
    slot: usize,
    pool: Arc<WorkerPool>,
    command: Arc<WorkerCommand>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SupervisorError> {
    let mut start_failures = 0;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let mut child = command.spawn().map_err(|source| SupervisorError::Spawn {
            exe: command.exe.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();

        let addr = tokio::select! {
            line = async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                        return Some(addr.trim().to_owned());
                    }
                }
                None
            } => line,
            _ = stopped(&mut stop) => {
                drain(child, stdin, &command).await;
                return Ok(());
            }
        };
        let Some(addr) = addr else {
            let status = child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            start_failures += 1;
            tracing::error!(slot, pid, %status, "worker exited before listening");
            if start_failures >= MAX_START_FAILURES {
                return Err(SupervisorError::CrashLoop { status });
            }
            continue;
        };
        start_failures = 0;
        if let Err(e) = pool.add(&addr) {
            tracing::error!(slot, pid, error = %e, "worker announced an unusable address");
            drain(child, stdin, &command).await;
            continue;
        }
        println!("worker started: pid={pid} endpoint=grpc://{addr}");
        tracing::info!(slot, pid, %addr, "worker started");
        // Nothing more is expected on stdout; keep reading so the pipe never fills.
        let stdout_drain =
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        tokio::select! {
            status = child.wait() => {
                pool.remove(&addr);
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                tracing::warn!(slot, pid, %addr, %status, "worker exited; starting a replacement");
                println!("worker exited: pid={pid} endpoint=grpc://{addr} status={status}");
            }
            _ = stopped(&mut stop) => {
                // Out of rotation first, so no new query lands on a draining worker.
                pool.remove(&addr);
                drain(child, stdin, &command).await;
                stdout_drain.abort();
                return Ok(());
            }
        }
        stdout_drain.abort();
    }
}

/// Closes the child's stdin (its signal to drain), waits for it, and kills it if it overstays.
async fn drain(
    mut child: Child,
    stdin: Option<tokio::process::ChildStdin>,
    command: &WorkerCommand,
) {
    drop(stdin);
    let limit = command.drain_timeout + KILL_GRACE;
    if tokio::time::timeout(limit, child.wait()).await.is_err() {
        tracing::warn!(
            pid = child.id(),
            "worker did not exit after draining; killing it"
        );
        let _ = child.kill().await;
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
