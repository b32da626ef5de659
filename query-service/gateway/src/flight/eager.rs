//! Runs started when a statement is planned, for the `DoGet` that redeems its ticket to claim.
//!
//! ```text
//!  GetFlightInfo ──► plan ──► FlightInfo to the client
//!                     └─────► run the ticket's DoGet now ──► held here ──┐
//!  DoGet(same ticket, same caller) ─────────────────────────► claims it ◄┘
//! ```
//!
//! A Flight SQL client plans a statement and redeems the ticket at once. Starting the run when
//! the plan is answered lets the worker execute while the FlightInfo travels to the client and
//! its `DoGet` travels back, so that round trip and the gateway's own handling of the `DoGet`
//! leave the query's critical path.
//!
//! The run is the `DoGet` itself, taken through the same pipeline with the caller's own headers
//! (ticket check, admission and group slot, grant, dispatch, outcome), so nothing about it is
//! trusted more than a client's call. Only the caller that planned it can claim it, with the
//! exact ticket it was given. What a client may make the gateway hold is bounded: at most
//! [`MAX_WAITING`] unclaimed runs at once and [`MAX_WAITING_PER_TENANT`] of one tenant (past
//! that, plans are answered without one), each dropped if not claimed within [`CLAIM_WINDOW`],
//! which cancels it at its worker and frees its slot. A `DoGet` arriving later, or at another
//! gateway replica, runs as before.
//!
//! A run nobody claims is a query executed for nothing. Where that is the rule rather than the
//! exception (a load balancer that spreads each call over gateway replicas, as service meshes
//! do with HTTP/2, or a client that plans without fetching), a tenant with [`PAUSE_AFTER`] of
//! its last [`HISTORY`] runs unclaimed gets no early starts for [`PAUSE`], then is tried again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::Status;

use super::pipeline::Reply;
use crate::auth::Identity;

/// How long a started run waits for its `DoGet`: clients redeem a ticket right after planning,
/// so this covers a slow network, not a client that put the ticket aside.
pub const CLAIM_WINDOW: Duration = Duration::from_secs(2);
/// How often closed windows are swept while runs wait, so a run is dropped at most this long
/// after its window. One timer for all runs: a timer per run cost each query a timer
/// registration and, whenever it was the earliest, a wake-up of its own io thread.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Unclaimed runs held at once, across all clients; each also holds its group's slot, so
/// admission bounds them per group as well.
pub const MAX_WAITING: usize = 1024;
/// Unclaimed runs of one tenant held at once (a dashboard refresh plans a few dozen), so one
/// tenant that plans without redeeming cannot take every other tenant's early starts.
pub const MAX_WAITING_PER_TENANT: usize = 128;
/// A tenant's last runs whose claims are remembered.
const HISTORY: u32 = 16;
/// Unclaimed runs among a tenant's last [`HISTORY`] that pause its early starts: half, so a
/// client whose every other `DoGet` reaches another replica pauses too.
const PAUSE_AFTER: u32 = 8;
/// How long a tenant's early starts are paused; its history starts afresh after.
pub const PAUSE: Duration = Duration::from_secs(60);
/// Tenants whose claims are remembered at most (only those with recent unclaimed runs are).
const MAX_HISTORIES: usize = 4096;

/// Why a run was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStarted {
    /// As many runs as allowed wait (in all, or for the tenant), or the ticket has one.
    Full,
    /// Most of the tenant's recent runs went unclaimed ([`PAUSE_AFTER`]).
    Paused,
}

/// What a claim gets: the run's reply, once its first rows (or its end) arrived.
pub type Claimed = oneshot::Receiver<Result<Reply, Status>>;

/// Started runs not yet claimed, by the digest of the ticket they answer (a ticket carries its
/// SQL, up to the SQL limit; its digest is all a lookup needs).
#[derive(Default)]
pub struct EagerRuns {
    waiting: Mutex<Table>,
}

/// The waiting runs, how many of them each tenant has, whether their windows are watched, and
/// the claims of tenants whose recent runs went unclaimed.
#[derive(Default)]
struct Table {
    runs: HashMap<TicketDigest, Waiting>,
    per_tenant: HashMap<String, usize>,
    /// A sweeper task is running; it stops when no run waits.
    sweeping: bool,
    histories: HashMap<String, History>,
}

/// Whether a tenant's last runs were claimed, and until when its early starts are paused.
#[derive(Debug, Default)]
struct History {
    /// One bit per run, newest lowest: set when it went unclaimed.
    unclaimed: u16,
    paused_until: Option<Instant>,
}

impl Table {
    /// Adds a run unless the table, or the caller's tenant, is at its bound, the ticket
    /// already has one, or the tenant's early starts are paused.
    fn insert(&mut self, ticket: TicketDigest, run: Waiting) -> Result<(), NotStarted> {
        let tenant = &run.caller.tenant;
        if !self.histories.is_empty()
            && let Some(history) = self.histories.get(tenant)
            && let Some(until) = history.paused_until
        {
            if Instant::now() < until {
                return Err(NotStarted::Paused);
            }
            self.histories.remove(tenant);
        }
        if self.runs.len() >= MAX_WAITING
            || self.per_tenant.get(tenant).copied().unwrap_or(0) >= MAX_WAITING_PER_TENANT
            || self.runs.contains_key(&ticket)
        {
            return Err(NotStarted::Full);
        }
        *self.per_tenant.entry(tenant.clone()).or_insert(0) += 1;
        self.runs.insert(ticket, run);
        Ok(())
    }

    /// Records whether a run of `tenant` was claimed; pauses the tenant's early starts once
    /// [`PAUSE_AFTER`] of its last [`HISTORY`] were not. Only tenants with an unclaimed run
    /// among their last are remembered, at most [`MAX_HISTORIES`]: when full, all but the
    /// paused are forgotten, and past that a tenant is not paused (its runs are still bounded
    /// by [`MAX_WAITING_PER_TENANT`]).
    fn record(&mut self, tenant: &str, claimed: bool) {
        if claimed && self.histories.is_empty() {
            return;
        }
        if !claimed && self.histories.len() >= MAX_HISTORIES {
            // Tenants paused now are kept; the rest start afresh.
            let now = Instant::now();
            self.histories
                .retain(|_, h| h.paused_until.is_some_and(|until| now < until));
        }
        let full = self.histories.len() >= MAX_HISTORIES;
        let history = match self.histories.get_mut(tenant) {
            Some(history) => history,
            None if claimed || full => return,
            None => self.histories.entry(tenant.to_owned()).or_default(),
        };
        if history.paused_until.is_some() {
            return;
        }
        history.unclaimed = (history.unclaimed << 1) | u16::from(!claimed);
        if history.unclaimed.count_ones() >= PAUSE_AFTER {
            history.paused_until = Some(Instant::now() + PAUSE);
            tracing::info!(
                %tenant,
                "{PAUSE_AFTER} of the tenant's last {HISTORY} runs started at planning went \
                 unclaimed; its plans start no run for {}",
                humantime::format_duration(PAUSE)
            );
        } else if history.unclaimed == 0 {
            self.histories.remove(tenant);
        }
    }

    fn remove(&mut self, ticket: &TicketDigest) -> Option<Waiting> {
        let run = self.runs.remove(ticket)?;
        let tenant = &run.caller.tenant;
        if let Some(count) = self.per_tenant.get_mut(tenant) {
            *count -= 1;
            if *count == 0 {
                self.per_tenant.remove(tenant);
            }
        }
        Some(run)
    }

    /// Takes out the runs whose window closed by `now` (at most [`MAX_WAITING`] to look at).
    fn remove_expired(&mut self, now: Instant) -> Vec<Waiting> {
        let closed: Vec<TicketDigest> = self
            .runs
            .iter()
            .filter(|(_, run)| run.expires <= now)
            .map(|(ticket, _)| *ticket)
            .collect();
        closed
            .iter()
            .filter_map(|ticket| self.remove(ticket))
            .collect()
    }
}

type TicketDigest = [u8; 32];

fn digest(ticket: &[u8]) -> TicketDigest {
    Sha256::digest(ticket).into()
}

impl std::fmt::Debug for EagerRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting = self.waiting.lock().map_or(0, |w| w.runs.len());
        f.debug_struct("EagerRuns")
            .field("waiting", &waiting)
            .finish()
    }
}

struct Waiting {
    caller: Identity,
    /// Dropping it (with the entry) ends the run, or drops the reply it already sent.
    reply: Claimed,
    /// When the claim window closes.
    expires: Instant,
    /// Told when the window closes with nobody having claimed the run.
    unclaimed: Box<dyn FnOnce() + Send>,
}

impl EagerRuns {
    /// Starts `run` (the `DoGet` of `ticket` on behalf of `caller`) on the current runtime,
    /// unless as many runs as allowed (in all, or for the caller's tenant) are already
    /// waiting, or the tenant's are paused. `unclaimed` is called when the window closes with
    /// nobody having claimed it.
    pub fn start<F>(
        self: &Arc<Self>,
        ticket: &[u8],
        caller: Identity,
        run: F,
        unclaimed: impl FnOnce() + Send + 'static,
    ) -> Result<(), NotStarted>
    where
        F: Future<Output = Result<Reply, Status>> + Send + 'static,
    {
        let (mut tx, reply) = oneshot::channel();
        let waiting = Waiting {
            caller,
            reply,
            expires: Instant::now() + CLAIM_WINDOW,
            unclaimed: Box::new(unclaimed),
        };
        let start_sweeper = {
            let mut table = self.waiting.lock().expect("eager runs");
            table.insert(digest(ticket), waiting)?;
            !std::mem::replace(&mut table.sweeping, true)
        };
        if start_sweeper {
            tokio::spawn(Sweeper::new(Arc::clone(self)).run());
        }
        tokio::spawn(async move {
            tokio::pin!(run);
            let result = tokio::select! {
                result = &mut run => result,
                // Dropped unclaimed, or claimed by a DoGet that went away: nobody will read it.
                () = tx.closed() => return,
            };
            // Fails only if the receiver went meanwhile; the reply is then dropped here.
            let _ = tx.send(result);
        });
        Ok(())
    }

    /// The run started for `ticket`, if the caller (read only when there is one) is who
    /// planned it. Anyone else presenting the ticket runs it afresh and leaves the planner's
    /// run waiting.
    pub fn claim(
        &self,
        ticket: &[u8],
        caller: impl FnOnce() -> Option<Identity>,
    ) -> Option<Claimed> {
        let mut waiting = self.waiting.lock().expect("eager runs");
        if waiting.runs.is_empty() {
            return None;
        }
        let ticket = digest(ticket);
        if waiting.runs.get(&ticket)?.caller != caller()? {
            return None;
        }
        let run = waiting.remove(&ticket)?;
        waiting.record(&run.caller.tenant, true);
        Some(run.reply)
    }

    /// Runs waiting to be claimed.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.lock().expect("eager runs").runs.len()
    }
}

/// Drops the runs whose window closed, every [`SWEEP_EVERY`] while any waits.
struct Sweeper {
    runs: Arc<EagerRuns>,
    /// Stopped with nothing waiting, and said so under the table's lock.
    stopped: bool,
}

impl Sweeper {
    fn new(runs: Arc<EagerRuns>) -> Self {
        Self {
            runs,
            stopped: false,
        }
    }

    async fn run(mut self) {
        while !self.stopped {
            tokio::time::sleep(SWEEP_EVERY).await;
            let closed = {
                let mut table = self.runs.waiting.lock().expect("eager runs");
                let closed = table.remove_expired(Instant::now());
                for run in &closed {
                    table.record(&run.caller.tenant, false);
                }
                // Cleared under the lock `start` inserts under, so a run inserted after this
                // look starts a sweeper of its own.
                if table.runs.is_empty() {
                    table.sweeping = false;
                    self.stopped = true;
                }
                closed
            };
            for run in closed {
                // Told before the run is dropped, so its query record counts nothing.
                (run.unclaimed)();
                drop(run.reply);
            }
        }
    }
}

impl Drop for Sweeper {
    /// A sweeper dropped while runs wait (its runtime shut down) hands over to the sweeper
    /// the next started run starts.
    fn drop(&mut self) {
        if !self.stopped
            && let Ok(mut table) = self.runs.waiting.lock()
        {
            table.sweeping = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::{FutureExt, StreamExt};

    use super::*;

    fn of(tenant: &str, user: &str) -> Identity {
        Identity {
            tenant: tenant.into(),
            user: user.into(),
        }
    }

    fn who(user: &str) -> Identity {
        of("acme", user)
    }

    /// Counts when it is dropped.
    struct Dropped(Arc<AtomicUsize>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A reply whose stream holds `guard` until the stream is dropped.
    fn stream_holding(guard: Dropped) -> Reply {
        let stream = futures::stream::pending().map(move |item| {
            let _held = &guard;
            item
        });
        Reply::Stream(Box::pin(stream))
    }

    /// A run that never finishes, holding `guard` while it is pending.
    async fn endless(guard: Dropped) -> Result<Reply, Status> {
        let _held = guard;
        std::future::pending().await
    }

    fn counter() -> Arc<AtomicUsize> {
        Arc::new(AtomicUsize::new(0))
    }

    fn alive_tasks() -> usize {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    }

    /// Waiting runs share one timer: their sweeper's, which stops when none waits and starts
    /// again with the next run.
    #[tokio::test(start_paused = true)]
    async fn one_sweeper_watches_every_window() {
        let runs = Arc::new(EagerRuns::default());
        let (running, unclaimed) = (counter(), counter());
        for n in 0..10usize {
            let seen = unclaimed.clone();
            let run = endless(Dropped(running.clone()));
            // Over two tenants, so neither has enough unclaimed runs to be paused.
            let caller = of(["acme", "initech"][n % 2], "u");
            assert!(
                runs.start(&n.to_be_bytes(), caller, run, move || {
                    seen.fetch_add(1, Ordering::SeqCst);
                })
                .is_ok()
            );
        }
        assert_eq!(alive_tasks(), 11, "ten runs and one sweeper");
        tokio::time::sleep(CLAIM_WINDOW + SWEEP_EVERY).await;
        assert_eq!(runs.waiting(), 0);
        assert_eq!(unclaimed.load(Ordering::SeqCst), 10);
        assert_eq!(
            running.load(Ordering::SeqCst),
            10,
            "every run was cancelled"
        );
        tokio::task::yield_now().await;
        assert_eq!(alive_tasks(), 0, "the sweeper stopped with nothing waiting");
        let run = endless(Dropped(running.clone()));
        assert!(runs.start(b"later", who("ann"), run, || {}).is_ok());
        assert_eq!(alive_tasks(), 2, "a run started later has a sweeper again");
        tokio::time::sleep(CLAIM_WINDOW + SWEEP_EVERY).await;
        assert_eq!(runs.waiting(), 0, "and is dropped when its window closes");
    }

    #[tokio::test(start_paused = true)]
    async fn the_planner_claims_the_reply_and_nobody_else_does() {
        let runs = Arc::new(EagerRuns::default());
        let (dropped, unclaimed) = (counter(), counter());
        let guard = Dropped(dropped.clone());
        let seen = unclaimed.clone();
        assert!(
            runs.start(
                b"t1",
                who("ann"),
                async move { Ok(stream_holding(guard)) },
                move || {
                    seen.fetch_add(1, Ordering::SeqCst);
                },
            )
            .is_ok()
        );
        assert!(runs.claim(b"t1", || Some(who("bob"))).is_none());
        assert!(runs.claim(b"t2", || Some(who("ann"))).is_none());
        assert_eq!(runs.waiting(), 1, "another caller leaves the run waiting");
        let reply = runs.claim(b"t1", || Some(who("ann"))).expect("claimed");
        let Ok(Ok(Reply::Stream(stream))) = reply.await else {
            panic!("the run's stream");
        };
        assert_eq!(runs.waiting(), 0);
        tokio::time::sleep(SWEEP_EVERY).await;
        tokio::task::yield_now().await;
        assert_eq!(
            alive_tasks(),
            0,
            "a claimed run's task ends with its reply, and the sweeper once nothing waits"
        );
        tokio::time::sleep(CLAIM_WINDOW * 2).await;
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            0,
            "a claimed stream is the claimer's"
        );
        assert_eq!(unclaimed.load(Ordering::SeqCst), 0);
        drop(stream);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unclaimed_run_is_dropped_when_the_window_closes() {
        let runs = Arc::new(EagerRuns::default());
        let (running, finished, unclaimed) = (counter(), counter(), counter());
        for (ticket, run) in [
            (
                b"pending".to_vec(),
                endless(Dropped(running.clone())).boxed(),
            ),
            (b"done".to_vec(), {
                let guard = Dropped(finished.clone());
                async move { Ok(stream_holding(guard)) }.boxed()
            }),
        ] {
            let seen = unclaimed.clone();
            runs.start(&ticket, who("ann"), run, move || {
                seen.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        }
        tokio::time::sleep(CLAIM_WINDOW / 2).await;
        assert_eq!(runs.waiting(), 2);
        assert_eq!(
            running.load(Ordering::SeqCst) + finished.load(Ordering::SeqCst),
            0
        );
        tokio::time::sleep(CLAIM_WINDOW).await;
        assert_eq!(runs.waiting(), 0);
        assert_eq!(
            running.load(Ordering::SeqCst),
            1,
            "the pending run was cancelled"
        );
        assert_eq!(
            finished.load(Ordering::SeqCst),
            1,
            "the finished run's stream was dropped"
        );
        assert_eq!(unclaimed.load(Ordering::SeqCst), 2);
        assert!(runs.claim(b"done", || Some(who("ann"))).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_given_up_cancels_the_run() {
        let runs = Arc::new(EagerRuns::default());
        let running = counter();
        runs.start(b"t", who("ann"), endless(Dropped(running.clone())), || {})
            .unwrap();
        let claim = runs.claim(b"t", || Some(who("ann"))).expect("claimed");
        tokio::task::yield_now().await;
        drop(claim);
        // Past the window too: a claimed run is not the window's to end.
        tokio::time::sleep(CLAIM_WINDOW * 2).await;
        assert_eq!(running.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_tenant_cannot_take_every_place() {
        let runs = Arc::new(EagerRuns::default());
        let running = counter();
        let mallory = || of("mallory", "m");
        for n in 0..MAX_WAITING_PER_TENANT {
            let run = endless(Dropped(running.clone()));
            assert!(runs.start(&n.to_be_bytes(), mallory(), run, || {}).is_ok());
        }
        let run = endless(Dropped(running.clone()));
        assert!(
            runs.start(b"more", mallory(), run, || {}) == Err(NotStarted::Full),
            "mallory is at her bound"
        );
        let run = endless(Dropped(running.clone()));
        assert!(
            runs.start(b"ann's", who("ann"), run, || {}).is_ok(),
            "other tenants still start"
        );
        // A claim gives the tenant its place back.
        let _claim = runs
            .claim(&0usize.to_be_bytes(), || Some(mallory()))
            .unwrap();
        let run = endless(Dropped(running.clone()));
        assert!(runs.start(b"more", mallory(), run, || {}).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_so_many_runs_wait() {
        let runs = Arc::new(EagerRuns::default());
        let running = counter();
        for n in 0..MAX_WAITING {
            let run = endless(Dropped(running.clone()));
            let tenant = of(&format!("tenant {}", n % 16), "u");
            assert!(runs.start(&n.to_be_bytes(), tenant, run, || {}).is_ok());
        }
        let refused = endless(Dropped(running.clone()));
        assert_eq!(
            runs.start(b"one more", who("ann"), refused, || {}),
            Err(NotStarted::Full)
        );
        assert_eq!(
            running.load(Ordering::SeqCst),
            1,
            "the refused run never started"
        );
        assert_eq!(
            runs.start(
                &0usize.to_be_bytes(),
                who("ann"),
                async { unreachable!() },
                || {}
            ),
            Err(NotStarted::Full),
            "a ticket already waiting"
        );
        let _first = runs
            .claim(&0usize.to_be_bytes(), || Some(of("tenant 0", "u")))
            .unwrap();
        let run = endless(Dropped(running.clone()));
        assert!(runs.start(b"one more", who("ann"), run, || {}).is_ok());
    }

    /// A tenant half of whose recent runs went unclaimed (as when each call may reach another
    /// gateway replica) gets no early starts for a while; other tenants still do, and the
    /// tenant is tried again after the pause.
    #[tokio::test(start_paused = true)]
    async fn a_tenant_whose_runs_go_unclaimed_is_paused() {
        let runs = Arc::new(EagerRuns::default());
        let running = counter();
        let start = |ticket: &[u8], caller: Identity| {
            runs.start(ticket, caller, endless(Dropped(running.clone())), || {})
        };
        // One short of pausing: still started.
        for n in 0..PAUSE_AFTER - 1 {
            start(&n.to_be_bytes(), who("ann")).unwrap();
        }
        tokio::time::sleep(CLAIM_WINDOW + SWEEP_EVERY).await;
        start(b"claimed", who("ann")).unwrap();
        drop(runs.claim(b"claimed", || Some(who("ann"))).unwrap());
        start(b"unclaimed", who("ann")).unwrap();
        tokio::time::sleep(CLAIM_WINDOW + SWEEP_EVERY).await;
        assert_eq!(start(b"next", who("ann")), Err(NotStarted::Paused));
        assert_eq!(runs.waiting(), 0, "a paused tenant's plans hold nothing");
        start(b"next", of("initech", "u")).expect("other tenants still start");
        tokio::time::sleep(PAUSE).await;
        start(b"after", who("ann")).expect("tried again after the pause");
    }

    /// Claims keep a tenant's early starts going: unclaimed runs count among its last
    /// [`HISTORY`] only.
    #[tokio::test(start_paused = true)]
    async fn a_tenant_that_claims_most_runs_is_not_paused() {
        let runs = Arc::new(EagerRuns::default());
        let running = counter();
        for round in 0..4u32 {
            for n in 0..HISTORY {
                let ticket = (round * HISTORY + n).to_be_bytes();
                runs.start(
                    &ticket,
                    who("ann"),
                    endless(Dropped(running.clone())),
                    || {},
                )
                .unwrap();
                if n >= PAUSE_AFTER - 1 {
                    drop(runs.claim(&ticket, || Some(who("ann"))).unwrap());
                }
            }
            tokio::time::sleep(CLAIM_WINDOW + SWEEP_EVERY).await;
        }
    }

    /// Histories are bounded: when full, every tenant not paused now starts afresh, and a
    /// paused tenant stays paused.
    #[tokio::test(start_paused = true)]
    async fn histories_are_bounded() {
        let mut table = Table::default();
        for _ in 0..PAUSE_AFTER {
            table.record("mallory", false);
        }
        for n in 1..MAX_HISTORIES {
            table.record(&format!("tenant {n}"), false);
        }
        assert_eq!(table.histories.len(), MAX_HISTORIES);
        table.record("one more", false);
        assert_eq!(
            table.histories.len(),
            2,
            "mallory (paused) and the newcomer"
        );
        assert!(table.histories["mallory"].paused_until.is_some());
        assert_eq!(table.histories["one more"].unclaimed, 1);
    }
}
