//! Statements that were running when their worker failed as a process: a statement that stops
//! one worker is retried on another (the failure may have had nothing to do with it), but one
//! that was running on two different workers that stopped within [`WINDOW`] is not sent to a
//! third, and is held back for a whole [`WINDOW`] from that second failure. Copies of a statement running on the
//! worker that failed count as one failure. A statement that crashes workers (a query of death, or
//! a dashboard refreshing one) then costs at most two workers, not every worker each time it is
//! sent.
//!
//! A tenant that varies the text (a comment, a literal) would get a fresh count for each
//! variant, so failures also count per tenant: once [`PROBATION_AFTER`] different workers have
//! failed while running one tenant's statements within the window, the tenant is on probation
//! for a whole window from that failure. Its statements that completed within a window of now
//! still run (a dashboard
//! keeps refreshing after a node loss); any other is held back. Completions are remembered per
//! tenant, bounded.
//!
//! Statements are told apart by tenant and text, so one tenant's failures never hold back
//! another tenant's statements, and the hash is keyed per process, so no one can write a text
//! that collides with someone else's on purpose.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long a worker failure counts against the statements that were running on it.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Failures within the window after which a statement is held back.
pub const HELD_BACK_AFTER: u32 = 2;
/// Distinct workers failed under one tenant's statements within the window after which only
/// its statements that completed recently run. One statement alone can take two; a third
/// means the tenant's texts vary, or it was unlucky in a node loss (its known statements still
/// run then).
pub const PROBATION_AFTER: u32 = 3;
/// Statements remembered at most; past it, further ones are not recorded (each entry stands
/// for a failed worker, so filling it already took many).
const CAPACITY: usize = 4096;
/// Completed statements remembered per tenant at most. When a tenant's are full, those older
/// than the window go, and if none is, all of that tenant's go: endless distinct texts grow
/// nothing, and a tenant filling its own forgets only its own (if on probation, its
/// statements are then held back until the probation ends).
const COMPLETED_PER_TENANT: usize = 1024;
/// Tenants whose completions are remembered at most; past it, a tenant new to the table is not
/// recorded until others' entries age out (tenants are configured, so this is far above what
/// a deployment has).
const COMPLETED_TENANTS: usize = 256;

/// A statement's key: its tenant and text, hashed with this process's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatementKey {
    statement: u64,
    tenant: u64,
}

/// Why a statement is not sent, and for how much longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The statement itself was running on [`HELD_BACK_AFTER`] workers that failed.
    Statement(Duration),
    /// Its tenant is on probation and the statement has not completed within the window.
    Tenant(Duration),
}

/// What one worker failure under a statement found and changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// Distinct workers failed under the statement in the window, this one included.
    pub workers: u32,
    /// This failure held the statement back.
    pub held_back: bool,
    /// This failure put the statement's tenant on probation.
    pub probation: bool,
}

#[derive(Debug)]
struct Record {
    /// The workers that failed under it in the current window (each counts once, however many
    /// of its calls were running there).
    workers: Vec<u64>,
    /// When the first failure of the current window was seen.
    since: Instant,
}

impl Record {
    fn new(now: Instant) -> Self {
        Self {
            workers: Vec::new(),
            since: now,
        }
    }

    /// Counts `worker` (up to `limit` distinct ones), starting a new window if the last one
    /// ended; how many distinct workers failed in the window, and whether this one made them
    /// `limit`.
    fn add(&mut self, worker: u64, limit: u32, now: Instant) -> (u32, bool) {
        if now.duration_since(self.since) >= WINDOW {
            *self = Self::new(now);
        }
        let new = !self.workers.contains(&worker) && self.workers.len() < limit as usize;
        if new {
            self.workers.push(worker);
        }
        let count = self.workers.len() as u32;
        let reached = new && count == limit;
        if reached {
            // The hold lasts a whole window from the failure that made it: counted from the
            // first failure, a statement that crashes workers now and then would be held
            // back for as little as a second.
            self.since = now;
        }
        (count, reached)
    }

    /// What is left of the window, once `limit` workers failed in it.
    fn holds(&self, limit: u32, now: Instant) -> Option<Duration> {
        let left = WINDOW.checked_sub(now.duration_since(self.since))?;
        (self.workers.len() >= limit as usize && !left.is_zero()).then_some(left)
    }
}

/// Failures by statement and by tenant, and the statements that completed, shared by every
/// call.
#[derive(Debug)]
pub struct Suspects {
    hasher: RandomState,
    records: Mutex<Records>,
    /// When each statement last completed, by tenant.
    completed: Mutex<HashMap<u64, HashMap<u64, Instant>>>,
}

#[derive(Debug, Default)]
struct Records {
    statements: HashMap<StatementKey, Record>,
    tenants: HashMap<u64, Record>,
}

impl Default for Suspects {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            records: Mutex::default(),
            completed: Mutex::default(),
        }
    }
}

/// Makes room for one more entry in `map`, bounded by `capacity`: drops those whose window
/// ended, then, if that was not enough, says so.
fn room<K, V>(
    map: &mut HashMap<K, V>,
    capacity: usize,
    mut live: impl FnMut(&mut V) -> bool,
) -> bool {
    if map.len() < capacity {
        return true;
    }
    map.retain(|_, value| live(value));
    map.len() < capacity
}

impl Suspects {
    /// The key of `sql` sent by `tenant`.
    pub fn key(&self, tenant: &str, sql: &str) -> StatementKey {
        StatementKey {
            statement: self.hasher.hash_one((tenant, sql)),
            tenant: self.hasher.hash_one(tenant),
        }
    }

    /// Records that `worker` (its pool id) failed while running `key`.
    pub fn record(&self, key: StatementKey, worker: u64) -> Failed {
        let now = Instant::now();
        let live = |r: &Record| now.duration_since(r.since) < WINDOW;
        let mut records = self.records.lock().expect("suspects lock");
        let mut probation = false;
        if records.tenants.contains_key(&key.tenant)
            || room(&mut records.tenants, CAPACITY, |r| live(r))
        {
            (_, probation) = records
                .tenants
                .entry(key.tenant)
                .or_insert_with(|| Record::new(now))
                .add(worker, PROBATION_AFTER, now);
        }
        if !records.statements.contains_key(&key)
            && !room(&mut records.statements, CAPACITY, |r| live(r))
        {
            return Failed {
                workers: 1,
                held_back: false,
                probation,
            };
        }
        let (workers, held_back) = records
            .statements
            .entry(key)
            .or_insert_with(|| Record::new(now))
            .add(worker, HELD_BACK_AFTER, now);
        Failed {
            workers,
            held_back,
            probation,
        }
    }

    /// Records that `key` ran to its end on a worker.
    pub fn completed(&self, key: StatementKey) {
        let now = Instant::now();
        let live = |at: &Instant| now.duration_since(*at) < WINDOW;
        let mut tenants = self.completed.lock().expect("suspects lock");
        if !tenants.contains_key(&key.tenant)
            && !room(&mut tenants, COMPLETED_TENANTS, |statements| {
                statements.retain(|_, at| live(at));
                !statements.is_empty()
            })
        {
            return;
        }
        let statements = tenants.entry(key.tenant).or_default();
        if !statements.contains_key(&key.statement)
            && !room(statements, COMPLETED_PER_TENANT, |at| live(at))
        {
            statements.clear();
        }
        statements.insert(key.statement, now);
    }

    /// Whether `key` is held back, why, and for how much longer in whole seconds rounded up
    /// (for the message a client reads).
    pub fn held_back(&self, key: StatementKey) -> Option<Hold> {
        let now = Instant::now();
        let records = self.records.lock().expect("suspects lock");
        if let Some(left) = records
            .statements
            .get(&key)
            .and_then(|r| r.holds(HELD_BACK_AFTER, now))
        {
            return Some(Hold::Statement(whole_seconds(left)));
        }
        let left = records
            .tenants
            .get(&key.tenant)?
            .holds(PROBATION_AFTER, now)?;
        drop(records);
        let known = self
            .completed
            .lock()
            .expect("suspects lock")
            .get(&key.tenant)
            .and_then(|statements| statements.get(&key.statement))
            .is_some_and(|at| now.duration_since(*at) < WINDOW);
        (!known).then(|| Hold::Tenant(whole_seconds(left)))
    }
}

fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_statement_is_held_back_after_two_failures_until_the_window_ends() {
        let suspects = Suspects::default();
        let boom = suspects.key("t", "SELECT boom()");
        assert_eq!(suspects.held_back(boom), None);
        assert_eq!(suspects.record(boom, 7).workers, 1);
        // Its other calls that were running on the same worker do not count again.
        assert_eq!(suspects.record(boom, 7).workers, 1);
        assert_eq!(
            suspects.held_back(boom),
            None,
            "one failure may be a coincidence"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        let second = suspects.record(boom, 8);
        assert_eq!(
            (second.workers, second.held_back),
            (2, true),
            "this failure held it back"
        );
        assert!(!suspects.record(boom, 8).held_back, "said once");
        assert_eq!(
            suspects.held_back(boom),
            Some(Hold::Statement(WINDOW)),
            "a whole window from the failure that held it back"
        );
        // Only that statement, and only for its tenant.
        assert_eq!(suspects.held_back(suspects.key("t", "SELECT 1")), None);
        assert_eq!(suspects.held_back(suspects.key("u", "SELECT boom()")), None);
        tokio::time::advance(WINDOW).await;
        assert_eq!(suspects.held_back(boom), None, "the window has passed");
        assert_eq!(
            suspects.record(boom, 8).workers,
            1,
            "a new window starts from one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_record_is_bounded() {
        let suspects = Suspects::default();
        for i in 0..CAPACITY {
            suspects.record(suspects.key("t", &format!("SELECT {i}")), 1);
        }
        // Full: a new statement is not recorded while the old ones count.
        let late = suspects.key("t", "SELECT late");
        assert_eq!(suspects.record(late, 1).workers, 1);
        assert_eq!(suspects.record(late, 2).workers, 1);
        // Once they have aged out, there is room again.
        tokio::time::advance(WINDOW).await;
        assert_eq!(suspects.record(late, 1).workers, 1);
        assert_eq!(suspects.record(late, 2).workers, 2);
        assert_eq!(suspects.records.lock().unwrap().statements.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_whose_statements_take_three_workers_runs_only_known_statements() {
        let suspects = Suspects::default();
        let dashboard = suspects.key("t", "SELECT count(*) FROM orders");
        suspects.completed(dashboard);
        // Each variant of the text fails once, on a different worker: no statement reaches
        // two failures, but the tenant reaches three.
        for (n, worker) in [(1, 11), (2, 12)] {
            let variant = suspects.key("t", &format!("SELECT boom() -- {n}"));
            suspects.record(variant, worker);
            assert_eq!(suspects.held_back(variant), None);
        }
        let fresh = suspects.key("t", "SELECT boom() -- 4");
        assert_eq!(suspects.held_back(fresh), None, "two workers: not yet");
        tokio::time::advance(Duration::from_secs(60)).await;
        let third = suspects.record(suspects.key("t", "SELECT boom() -- 3"), 13);
        assert!(third.probation && !third.held_back, "{third:?}");
        let more = suspects.record(suspects.key("t", "SELECT boom() -- 5"), 14);
        assert!(!more.probation, "said once");
        assert_eq!(
            suspects.held_back(fresh),
            Some(Hold::Tenant(WINDOW)),
            "a new text is held back for a whole window from the third failure"
        );
        assert_eq!(
            suspects.held_back(dashboard),
            None,
            "a known statement runs"
        );
        assert_eq!(
            suspects.held_back(suspects.key("u", "SELECT boom() -- 4")),
            None,
            "other tenants are not affected"
        );
        tokio::time::advance(WINDOW - Duration::from_secs(1)).await;
        assert!(suspects.held_back(fresh).is_some(), "not yet");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(suspects.held_back(fresh), None, "the window has passed");
    }

    #[tokio::test(start_paused = true)]
    async fn completions_are_remembered_for_the_window_and_bounded_per_tenant() {
        let suspects = Suspects::default();
        let remembered = |tenant: &str| {
            suspects
                .completed
                .lock()
                .unwrap()
                .get(&suspects.key(tenant, "").tenant)
                .map_or(0, HashMap::len)
        };
        let known = suspects.key("t", "SELECT 1");
        suspects.completed(known);
        for worker in 1..=3 {
            suspects.record(suspects.key("t", &format!("SELECT {worker} / 0")), worker);
        }
        assert_eq!(suspects.held_back(known), None);
        // Another tenant filling its own record touches nobody else's.
        tokio::time::advance(Duration::from_secs(300)).await;
        for i in 0..=COMPLETED_PER_TENANT {
            suspects.completed(suspects.key("u", &format!("SELECT {i}")));
        }
        assert_eq!(remembered("u"), 1, "full of live entries, it was emptied");
        assert_eq!(suspects.held_back(known), None, "t's record is intact");
        // A tenant filling its own forgets its own.
        for i in 0..COMPLETED_PER_TENANT {
            suspects.completed(suspects.key("t", &format!("SELECT {i} + 1")));
        }
        assert!(
            matches!(suspects.held_back(known), Some(Hold::Tenant(_))),
            "forgotten, a statement of a tenant on probation is held back"
        );
        suspects.completed(known);
        assert_eq!(suspects.held_back(known), None);
        // Full again once the earlier ones have aged out: those go, the later ones stay.
        for i in 0..COMPLETED_PER_TENANT - 1 {
            suspects.completed(suspects.key("v", &format!("SELECT {i}")));
        }
        tokio::time::advance(WINDOW - Duration::from_secs(1)).await;
        suspects.completed(suspects.key("v", "SELECT late"));
        assert_eq!(remembered("v"), COMPLETED_PER_TENANT);
        tokio::time::advance(Duration::from_secs(2)).await;
        suspects.completed(suspects.key("v", "SELECT later"));
        assert_eq!(remembered("v"), 2, "the late ones stay");
        // At most so many tenants; one more is recorded once others' entries have aged out.
        for n in 0..COMPLETED_TENANTS {
            suspects.completed(suspects.key(&format!("tenant {n}"), "SELECT 1"));
        }
        let newcomer = suspects.key("newcomer", "SELECT 1");
        suspects.completed(newcomer);
        assert_eq!(
            remembered("newcomer"),
            0,
            "the table is full of live tenants"
        );
        tokio::time::advance(WINDOW).await;
        suspects.completed(newcomer);
        assert_eq!(remembered("newcomer"), 1);
        assert!(suspects.completed.lock().unwrap().len() <= COMPLETED_TENANTS);
    }
}
