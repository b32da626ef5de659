//! Standby worker processes of `quiver up`: started without a catalog and kept warm, so the
//! pool grows (or wakes from zero) by claiming one, which takes well under a second, instead of
//! starting a process and warming it (seconds).
//!
//! ```text
//!  run_standby: spawn `quiver worker --standby` ──► listening ──► Ready{claim handle} to the
//!               supervisor ──► waits: exit (replaced) │ claim (hands the process over) │ stop
//!  supervisor:  pool needs n ──► split(n, ready standby) ──► hand-overs + cold starts
//!  slot:        hand-over ──► add to the pool ──► claim(catalog) ──► SERVING ──► ordinary worker
//! ```
//!
//! A claim is the worker's `quiver.Claim` Flight action with the gateway's grant header, which
//! the supervisor can sign because it holds the ticket key it gave the gateway. Its body is the
//! catalog file's document with absolute table locations, as the worker resolves relative ones
//! against its own working directory.

use std::path::Path;
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Endpoint;

use super::process::{
    Launch, MAX_START_FAILURES, Started, SupervisorError, WorkerCommand, drain, launch, stopped,
};
use quiver_core::protocol::grant_header;
use quiver_core::ticket::TicketSigner;
use quiver_worker::catalog::CatalogFile;

/// Longest a claim may take: loading a catalog and warming it, on a loaded machine. A claim
/// that takes longer is abandoned and its worker drained; the slot cold-starts instead.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(120);
/// Connecting to a worker on loopback takes milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A ready standby worker's offer to the supervisor: send it a place to hand the process to.
#[derive(Debug)]
pub struct Ready {
    /// The standby slot's id.
    pub id: u64,
    /// Where to ask for the process.
    pub claim: oneshot::Sender<oneshot::Sender<Started>>,
}

/// One standby slot: starts a standby worker, offers it once listening, and hands it over when
/// claimed. Ends when the worker is handed over, exits (the supervisor starts another), or
/// everything stops (the worker is drained).
pub async fn run_standby(
    id: u64,
    command: std::sync::Arc<WorkerCommand>,
    ready: mpsc::UnboundedSender<Ready>,
    mut stop: watch::Receiver<bool>,
) -> (u64, Result<(), SupervisorError>) {
    let mut start_failures = 0;
    let mut started = loop {
        match launch(&command, true, stopped(&mut stop)).await {
            Launch::Started(started) => break *started,
            Launch::Left => return (id, Ok(())),
            Launch::Failed(e) => return (id, Err(e)),
            Launch::Exited(status) => {
                start_failures += 1;
                tracing::error!(slot = id, %status, "standby worker exited before listening");
                if start_failures >= MAX_START_FAILURES {
                    return (id, Err(SupervisorError::CrashLoop { status }));
                }
            }
        }
    };
    let (pid, addr) = (started.pid, started.addr.clone());
    println!("standby started: pid={pid} endpoint=grpc://{addr}");
    tracing::info!(slot = id, pid, %addr, "standby worker started");
    let (claim_tx, mut claim_rx) = oneshot::channel();
    if ready
        .send(Ready {
            id,
            claim: claim_tx,
        })
        .is_err()
    {
        drain(started, &command).await;
        return (id, Ok(()));
    }
    enum Next {
        Exited(String),
        Claimed(Result<oneshot::Sender<Started>, oneshot::error::RecvError>),
        Stop,
    }
    let next = tokio::select! {
        status = started.child.wait() => {
            Next::Exited(status.map_or_else(|e| e.to_string(), |s| s.to_string()))
        }
        give = &mut claim_rx => Next::Claimed(give),
        _ = stopped(&mut stop) => Next::Stop,
    };
    match next {
        Next::Exited(status) => {
            println!("standby exited: pid={pid} endpoint=grpc://{addr} status={status}");
            tracing::warn!(slot = id, pid, %status, "standby worker exited; starting another");
        }
        Next::Claimed(Ok(give)) => {
            // The claimer went away before taking it: nobody else will, so stop it.
            if let Err(started) = give.send(started) {
                drain(started, &command).await;
            }
        }
        // The supervisor dropped the offer (it is stopping or shrinking the standby pool).
        Next::Claimed(Err(_)) | Next::Stop => {
            drain(started, &command).await;
        }
    }
    (id, Ok(()))
}

/// Why a claim failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The worker could not be reached.
    #[error("cannot reach the standby worker: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The worker refused or failed the claim.
    #[error("the standby worker refused the claim: {}", .0.message())]
    Refused(Box<tonic::Status>),
    /// The catalog file cannot be read.
    #[error(transparent)]
    Catalog(#[from] quiver_worker::catalog::CatalogError),
    /// The claim took longer than [`CLAIM_TIMEOUT`].
    #[error(
        "the claim did not finish within {}",
        humantime::format_duration(CLAIM_TIMEOUT)
    )]
    Timeout,
}

impl From<tonic::Status> for ClaimError {
    fn from(status: tonic::Status) -> Self {
        ClaimError::Refused(Box::new(status))
    }
}

/// Claims the standby worker at `addr` for `catalog`; returns once it serves it.
pub async fn claim(addr: &str, catalog: &Path, signer: &TicketSigner) -> Result<(), ClaimError> {
    let exchange = async {
        let body = CatalogFile::document_of(catalog)?;
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await?;
        let mut client = FlightServiceClient::new(channel);
        quiver_gateway::send_claim(&mut client, &body, &grant_header(signer, &[])).await?;
        Ok(())
    };
    tokio::time::timeout(CLAIM_TIMEOUT, exchange)
        .await
        .map_err(|_| ClaimError::Timeout)?
}
