//! Worker processes on one machine: spawns `quiver worker` children on loopback, adds each to
//! the pool once it is listening, replaces any that die, follows the desired count (fixed, or
//! from the autoscaler) by starting or draining workers, and drains them all on stop.
//!
//! With standby workers ([`super::standby`]) a rise claims ready standby workers first and
//! cold-starts only the rest (`scaling::standby::split`); each claimed standby is replaced at
//! once, so the standby pool stays at its size.
//!
//! Starting, watching and draining one process is [`super::process`]'s job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

pub use super::process::{LISTENING_PREFIX, SupervisorError, WorkerCommand};
use super::process::{Launch, MAX_START_FAILURES, Started, drain, launch, stopped};
use super::standby::{self, Ready};
use quiver_core::scaling::standby::split;
use quiver_core::ticket::TicketSigner;
use quiver_gateway::WorkerPool;

/// Keeps as many workers running as `desired` says until `stop` turns true, and `standby`
/// standby workers besides.
///
/// A rise claims ready standby workers first and starts new workers for the rest; new workers
/// join the pool once warm. A fall takes the least busy workers out of rotation first (a worker
/// still starting is the cheapest to give up), then drains them: their running queries finish,
/// no new ones arrive. A worker or standby worker that exits on its own is replaced.
pub async fn supervise(
    pool: Arc<WorkerPool>,
    command: WorkerCommand,
    standby: u32,
    mut desired: watch::Receiver<u32>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SupervisorError> {
    let command = Arc::new(command);
    let mut slots: HashMap<u64, Slot> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut failure = None;
    let mut sizing = true;
    // Standby slots: present while their task runs; `Some` once the worker is ready to claim.
    let mut standbys: HashMap<u64, Option<Ready>> = HashMap::new();
    let mut standby_tasks = JoinSet::new();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Ready>();
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
        if active.len() < want {
            let needed = u32::try_from(want - active.len()).unwrap_or(u32::MAX);
            let ready = standbys.values().filter(|r| r.is_some()).count();
            let plan = split(needed, u32::try_from(ready).unwrap_or(u32::MAX));
            let claimable: Vec<u64> = standbys
                .iter()
                .filter(|(_, r)| r.is_some())
                .map(|(id, _)| *id)
                .take(plan.claims as usize)
                .collect();
            // Claims first, then cold starts for the rest.
            let mut sources: Vec<Option<oneshot::Receiver<Started>>> = Vec::new();
            for id in claimable {
                let offer = standbys
                    .remove(&id)
                    .flatten()
                    .expect("a claimable standby is ready");
                let (give_tx, give_rx) = oneshot::channel();
                // A standby that just exited drops the request; its slot cold-starts instead.
                let _ = offer.claim.send(give_tx);
                sources.push(Some(give_rx));
            }
            sources.extend((0..plan.cold_starts).map(|_| None));
            for handover in sources {
                let id = next_id;
                next_id += 1;
                let (retire_tx, retire_rx) = watch::channel(false);
                let endpoint = Arc::new(Mutex::new(None));
                tasks.spawn(run_slot(
                    id,
                    pool.clone(),
                    command.clone(),
                    endpoint.clone(),
                    handover,
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
        // Refill the standby pool: a claimed or exited standby worker is replaced at once.
        while standbys.len() < standby as usize {
            let id = next_id;
            next_id += 1;
            standby_tasks.spawn(standby::run_standby(
                id,
                command.clone(),
                ready_tx.clone(),
                stop.clone(),
            ));
            standbys.insert(id, None);
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
            Some(joined) = standby_tasks.join_next() => {
                let (id, result) = joined.expect("standby slot task panicked");
                standbys.remove(&id);
                if let Err(e) = result {
                    failure = Some(e);
                    break;
                }
            }
            Some(offer) = ready_rx.recv() => {
                if let Some(entry) = standbys.get_mut(&offer.id) {
                    *entry = Some(offer);
                }
            }
        }
    }
    // Stopping: every slot sees `stop` (or is told to retire) and drains its worker; standby
    // slots see `stop` too, and offers dropped here tell waiting ones to drain.
    for slot in slots.values() {
        let _ = slot.retire.send(true);
    }
    drop(standbys);
    drop(ready_rx);
    while let Some(joined) = tasks.join_next().await {
        let (_, result) = joined.expect("worker slot task panicked");
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
    }
    while let Some(joined) = standby_tasks.join_next().await {
        let (_, result) = joined.expect("standby slot task panicked");
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

/// One worker slot: start (or claim `handover`, a standby worker), watch, replace, and finally
/// drain when retired or stopped.
async fn run_slot(
    slot: u64,
    pool: Arc<WorkerPool>,
    command: Arc<WorkerCommand>,
    endpoint: Arc<Mutex<Option<String>>>,
    mut handover: Option<oneshot::Receiver<Started>>,
    mut retire: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> (u64, Result<(), SupervisorError>) {
    let mut start_failures = 0;
    loop {
        if *stop.borrow() || *retire.borrow() {
            return (slot, Ok(()));
        }
        // A standby that exited just before the hand-over leaves this slot to cold-start.
        let claimed = match handover.take() {
            Some(offer) => offer.await.ok(),
            None => None,
        };
        let claiming = claimed.is_some();
        let mut started = match claimed {
            Some(started) => started,
            None => match launch(&command, false, leave(&mut retire, &mut stop)).await {
                Launch::Started(started) => *started,
                Launch::Left => return (slot, Ok(())),
                Launch::Failed(e) => return (slot, Err(e)),
                Launch::Exited(status) => {
                    start_failures += 1;
                    tracing::error!(slot, %status, "worker exited before listening");
                    if start_failures >= MAX_START_FAILURES {
                        return (slot, Err(SupervisorError::CrashLoop { status }));
                    }
                    continue;
                }
            },
        };
        start_failures = 0;
        let (pid, addr) = (started.pid, started.addr.clone());
        // Into the pool before a claim, so its health stream is open when it turns SERVING.
        if let Err(e) = pool.add(&addr) {
            tracing::error!(slot, pid, error = %e, "worker announced an unusable address");
            drain(started, &command).await;
            continue;
        }
        *endpoint.lock().expect("endpoint lock") = Some(addr.clone());
        if claiming {
            let began = Instant::now();
            let signer = TicketSigner::new(command.ticket_key.as_bytes());
            let claimed = tokio::select! {
                claimed = standby::claim(&addr, &command.catalog, &signer) => claimed,
                _ = leave(&mut retire, &mut stop) => {
                    pool.remove(&addr);
                    drain(started, &command).await;
                    return (slot, Ok(()));
                }
            };
            if let Err(e) = claimed {
                tracing::warn!(slot, pid, %addr, error = %e, "claim failed; starting a worker instead");
                println!("worker claim failed: pid={pid} endpoint=grpc://{addr}: {e}");
                pool.remove(&addr);
                *endpoint.lock().expect("endpoint lock") = None;
                drain(started, &command).await;
                continue;
            }
            let ms = began.elapsed().as_millis();
            println!("worker claimed: pid={pid} endpoint=grpc://{addr} in {ms} ms");
            tracing::info!(slot, pid, %addr, ms, "standby worker claimed");
        } else {
            println!("worker started: pid={pid} endpoint=grpc://{addr}");
            tracing::info!(slot, pid, %addr, "worker started");
        }

        let exited = tokio::select! {
            status = started.child.wait() => Some(status),
            _ = leave(&mut retire, &mut stop) => None,
        };
        // Out of rotation first, so no new query lands on a draining or dead worker.
        pool.remove(&addr);
        match exited {
            Some(status) => {
                *endpoint.lock().expect("endpoint lock") = None;
                let status = status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                tracing::warn!(slot, pid, %addr, %status, "worker exited; starting a replacement");
                println!("worker exited: pid={pid} endpoint=grpc://{addr} status={status}");
            }
            None => {
                println!("worker draining: pid={pid} endpoint=grpc://{addr}");
                let status = drain(started, &command).await;
                println!("worker stopped: pid={pid} endpoint=grpc://{addr} status={status}");
                return (slot, Ok(()));
            }
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
