//! Statements that were running when their worker failed as a process: a statement that stops
//! one worker is retried on another (the failure may have had nothing to do with it), but one
//! that was running on two different workers that stopped within [`WINDOW`] is not sent to a
//! third, and is held back for the rest of the window. Copies of a statement running on the
//! worker that failed count as one failure. A statement that crashes workers (a query of death, or
//! a dashboard refreshing one) then costs at most two workers, not every worker each time it is
//! sent.
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
/// Statements remembered at most; past it, further ones are not recorded (each entry stands
/// for a failed worker, so filling it already took many).
const CAPACITY: usize = 4096;

/// A statement's key: its tenant and text, hashed with this process's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatementKey(u64);

#[derive(Debug)]
struct Record {
    /// The workers that failed under it in the current window (each counts once, however many
    /// of its calls were running there).
    workers: Vec<u64>,
    /// When the first failure of the current window was seen.
    since: Instant,
}

/// Statements seen running on workers that failed, with how often, shared by every call.
#[derive(Debug)]
pub struct Suspects {
    hasher: RandomState,
    records: Mutex<HashMap<StatementKey, Record>>,
}

impl Default for Suspects {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            records: Mutex::new(HashMap::new()),
        }
    }
}

impl Suspects {
    /// The key of `sql` sent by `tenant`.
    pub fn key(&self, tenant: &str, sql: &str) -> StatementKey {
        StatementKey(self.hasher.hash_one((tenant, sql)))
    }

    /// Records that `worker` (its pool id) failed while running `key`; returns how many
    /// distinct workers failed under it in the window, this one included.
    pub fn record(&self, key: StatementKey, worker: u64) -> u32 {
        let now = Instant::now();
        let mut records = self.records.lock().expect("suspects lock");
        if records.len() >= CAPACITY && !records.contains_key(&key) {
            records.retain(|_, r| now.duration_since(r.since) < WINDOW);
            if records.len() >= CAPACITY {
                return 1;
            }
        }
        let record = records.entry(key).or_insert(Record {
            workers: Vec::new(),
            since: now,
        });
        if now.duration_since(record.since) >= WINDOW {
            *record = Record {
                workers: Vec::new(),
                since: now,
            };
        }
        if !record.workers.contains(&worker) && record.workers.len() < HELD_BACK_AFTER as usize {
            record.workers.push(worker);
        }
        record.workers.len() as u32
    }

    /// How much longer `key` is held back, if it is, in whole seconds rounded up (for the
    /// message a client reads).
    pub fn held_back(&self, key: StatementKey) -> Option<Duration> {
        let records = self.records.lock().expect("suspects lock");
        let record = records.get(&key)?;
        let left = WINDOW.checked_sub(Instant::now().duration_since(record.since))?;
        (record.workers.len() >= HELD_BACK_AFTER as usize && !left.is_zero())
            .then(|| Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_statement_is_held_back_after_two_failures_until_the_window_ends() {
        let suspects = Suspects::default();
        let boom = suspects.key("t", "SELECT boom()");
        assert_eq!(suspects.held_back(boom), None);
        assert_eq!(suspects.record(boom, 7), 1);
        // Its other calls that were running on the same worker do not count again.
        assert_eq!(suspects.record(boom, 7), 1);
        assert_eq!(
            suspects.held_back(boom),
            None,
            "one failure may be a coincidence"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(suspects.record(boom, 8), 2);
        assert_eq!(
            suspects.held_back(boom),
            Some(WINDOW - Duration::from_secs(60))
        );
        // Only that statement, and only for its tenant.
        assert_eq!(suspects.held_back(suspects.key("t", "SELECT 1")), None);
        assert_eq!(suspects.held_back(suspects.key("u", "SELECT boom()")), None);
        tokio::time::advance(WINDOW).await;
        assert_eq!(suspects.held_back(boom), None, "the window has passed");
        assert_eq!(suspects.record(boom, 8), 1, "a new window starts from one");
    }

    #[tokio::test(start_paused = true)]
    async fn the_record_is_bounded() {
        let suspects = Suspects::default();
        for i in 0..CAPACITY {
            suspects.record(suspects.key("t", &format!("SELECT {i}")), 1);
        }
        // Full: a new statement is not recorded while the old ones count.
        let late = suspects.key("t", "SELECT late");
        assert_eq!(suspects.record(late, 1), 1);
        assert_eq!(suspects.record(late, 2), 1);
        // Once they have aged out, there is room again.
        tokio::time::advance(WINDOW).await;
        assert_eq!(suspects.record(late, 1), 1);
        assert_eq!(suspects.record(late, 2), 2);
        assert_eq!(suspects.records.lock().unwrap().len(), 1);
    }
}
