//! Worker processes on one machine: spawns `quiver worker` children on loopback, adds each to
//! the pool once it is listening, replaces any that die, follows the desired count (fixed, or
//! from the autoscaler) by starting or draining workers, and drains them all on stop.
//!
//! Each child's stdin is a pipe the supervisor never writes to. A child exits when it reads EOF,
//! so even if the supervisor is killed outright the kernel closes the pipe and no worker
//! outlives it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;

use quiver_gateway::WorkerPool;

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

/// Keeps as many workers running as `desired` says until `stop` turns true.
///
/// A rise starts new workers, which join the pool once warm. A fall takes the least busy workers
/// out of rotation first (a worker still starting is the cheapest to give up), then drains them:
/// their running queries finish, no new ones arrive. A worker that exits on its own is replaced.
pub async fn supervise(
    pool: Arc<WorkerPool>,
    command: WorkerCommand,
    mut desired: watch::Receiver<u32>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SupervisorError> {
    let command = Arc::new(command);
    let mut slots: HashMap<u64, Slot> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut failure = None;
    let mut sizing = true;
    loop {
        if *stop.borrow() {
            break;
        }
        let want = usize::try_from(*desired.borrow_and_update()).unwrap_or(usize::MAX);
        let mut active: Vec<(u64, Option<String>)> = slots
            .iter()
            .filter(|(_, slot)| !slot.retiring)
            .map(|(id, slot)| (*id, slot.endpoint.lock().expect("endpoint lock").clone()))
            .collect();
        while active.len() < want {
            let id = next_id;
            next_id += 1;
            let (retire_tx, retire_rx) = watch::channel(false);
            let endpoint = Arc::new(Mutex::new(None));
            tasks.spawn(run_slot(
                id,
                pool.clone(),
                command.clone(),
                endpoint.clone(),
                retire_rx,
                stop.clone(),
            ));
            slots.insert(
                id,
                Slot {
                    retire: retire_tx,
                    retiring: false,
                    endpoint,
                },
            );
            active.push((id, None));
        }
        if active.len() > want {
            let load = |endpoint: &Option<String>| {
                endpoint
                    .as_ref()
                    .and_then(|e| pool.worker(e))
                    .map_or(0, |w| w.in_flight() + 1)
            };
            active.sort_by_key(|(id, endpoint)| (load(endpoint), *id));
            for (id, endpoint) in active.iter().take(active.len() - want) {
                let slot = slots.get_mut(id).expect("active slot");
                slot.retiring = true;
                let _ = slot.retire.send(true);
                tracing::info!(slot = id, endpoint = ?endpoint, "retiring worker");
            }
        }
        tokio::select! {
            changed = desired.changed(), if sizing => {
                // Without a sender nobody changes the size again: hold it until stopped.
                sizing = changed.is_ok();
            }
            _ = stopped(&mut stop) => {}
            Some(joined) = tasks.join_next() => {
                let (id, result) = joined.expect("worker slot task panicked");
                slots.remove(&id);
                if let Err(e) = result {
                    failure = Some(e);
                    break;
                }
            }
        }
    }
    // Stopping: every slot sees `stop` (or is told to retire) and drains its worker.
    for slot in slots.values() {
        let _ = slot.retire.send(true);
    }
    while let Some(joined) = tasks.join_next().await {
        let (_, result) = joined.expect("worker slot task panicked");
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The supervisor's handle on one worker slot.
struct Slot {
    /// Turns true to drain the slot's worker for good.
    retire: watch::Sender<bool>,
    /// Retirement was requested; the slot no longer counts towards the size.
    retiring: bool,
    /// The worker's address once it listens, to find its load.
    endpoint: Arc<Mutex<Option<String>>>,
}

/// One worker slot: start, watch, replace, and finally drain when retired or stopped.
async fn run_slot(
    slot: u64,
    pool: Arc<WorkerPool>,
    command: Arc<WorkerCommand>,
    endpoint: Arc<Mutex<Option<String>>>,
    mut retire: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> (u64, Result<(), SupervisorError>) {
    let mut start_failures = 0;
    loop {
        if *stop.borrow() || *retire.borrow() {
            return (slot, Ok(()));
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(source) => {
                let exe = command.exe.clone();
                return (slot, Err(SupervisorError::Spawn { exe, source }));
            }
        };
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
            _ = leave(&mut retire, &mut stop) => {
                drain(child, stdin, &command).await;
                return (slot, Ok(()));
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
                return (slot, Err(SupervisorError::CrashLoop { status }));
            }
            continue;
        };
        start_failures = 0;
        if let Err(e) = pool.add(&addr) {
            tracing::error!(slot, pid, error = %e, "worker announced an unusable address");
            drain(child, stdin, &command).await;
            continue;
        }
        *endpoint.lock().expect("endpoint lock") = Some(addr.clone());
        println!("worker started: pid={pid} endpoint=grpc://{addr}");
        tracing::info!(slot, pid, %addr, "worker started");
        // Nothing more is expected on stdout; keep reading so the pipe never fills.
        let stdout_drain =
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        tokio::select! {
            status = child.wait() => {
                pool.remove(&addr);
                *endpoint.lock().expect("endpoint lock") = None;
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                tracing::warn!(slot, pid, %addr, %status, "worker exited; starting a replacement");
                println!("worker exited: pid={pid} endpoint=grpc://{addr} status={status}");
            }
            _ = leave(&mut retire, &mut stop) => {
                // Out of rotation first, so no new query lands on a draining worker.
                pool.remove(&addr);
                println!("worker draining: pid={pid} endpoint=grpc://{addr}");
                let status = drain(child, stdin, &command).await;
                println!("worker stopped: pid={pid} endpoint=grpc://{addr} status={status}");
                stdout_drain.abort();
                return (slot, Ok(()));
            }
        }
        stdout_drain.abort();
    }
}

/// Closes the child's stdin (its signal to drain), waits for it, and kills it if it overstays.
/// Returns how the child ended.
async fn drain(
    mut child: Child,
    stdin: Option<tokio::process::ChildStdin>,
    command: &WorkerCommand,
) -> String {
    drop(stdin);
    let limit = command.drain_timeout + KILL_GRACE;
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.map_or_else(|e| e.to_string(), |s| s.to_string()),
        Err(_) => {
            tracing::warn!(
                pid = child.id(),
                "worker did not exit after draining; killing it"
            );
            let _ = child.kill().await;
            "killed after the drain timeout".to_owned()
        }
    }
}

/// Resolves once the slot is retired or everything stops.
async fn leave(retire: &mut watch::Receiver<bool>, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = stopped(retire) => {}
        _ = stopped(stop) => {}
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
