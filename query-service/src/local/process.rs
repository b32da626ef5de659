//! One worker process of `quiver up`: how it is started (a pool worker or a standby worker),
//! when it counts as started (its `listening on` line), and how it is drained.
//!
//! Each child's stdin is a pipe the supervisor never writes to. A child exits when it reads EOF,
//! so even if the supervisor is killed outright the kernel closes the pipe and no worker
//! outlives it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;

/// A worker that dies this many times in a row before listening is broken, not unlucky.
pub const MAX_START_FAILURES: u32 = 3;
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
    /// Starts a worker of the pool, or with `standby` a standby worker (no catalog).
    fn spawn(&self, standby: bool) -> std::io::Result<Child> {
        let mut command = Command::new(&self.exe);
        command.arg("worker").arg("--listen").arg("127.0.0.1:0");
        if standby {
            command.arg("--standby");
        } else {
            command.arg("--catalog").arg(&self.catalog);
        }
        command
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

/// A worker process that is listening, with the pipe that keeps it alive.
#[derive(Debug)]
pub struct Started {
    /// The process.
    pub child: Child,
    /// Its stdin: closing it tells the worker to drain.
    pub stdin: Option<ChildStdin>,
    /// Its process id.
    pub pid: u32,
    /// Where it listens (`host:port`).
    pub addr: String,
}

/// How a launch ended.
pub enum Launch {
    /// The worker listens.
    Started(Box<Started>),
    /// It exited before listening, with this status.
    Exited(String),
    /// Stopped or retired while it started; it was drained.
    Left,
    /// The executable could not be started at all.
    Failed(SupervisorError),
}

/// Starts a worker (or a standby worker) and waits until it listens, or until `leave` resolves
/// (the child is then drained). Its later stdout is read to the end so the pipe never fills.
pub async fn launch(
    command: &WorkerCommand,
    standby: bool,
    leave: impl std::future::Future<Output = ()>,
) -> Launch {
    let mut child = match command.spawn(standby) {
        Ok(child) => child,
        Err(source) => {
            let exe = command.exe.clone();
            return Launch::Failed(SupervisorError::Spawn { exe, source });
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
        _ = leave => {
            let started = Started { child, stdin, pid, addr: String::new() };
            drain(started, command).await;
            return Launch::Left;
        }
    };
    let Some(addr) = addr else {
        let status = child
            .wait()
            .await
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        return Launch::Exited(status);
    };
    // Nothing more is expected on stdout; the task ends when the child closes it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Launch::Started(Box::new(Started {
        child,
        stdin,
        pid,
        addr,
    }))
}

/// Closes the child's stdin (its signal to drain), waits for it, and kills it if it overstays.
/// Returns how the child ended.
pub async fn drain(started: Started, command: &WorkerCommand) -> String {
    let Started {
        mut child, stdin, ..
    } = started;
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

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
