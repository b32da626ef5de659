//! Waiting for a slot: one pool's [`Scheduler`] behind a lock, with the queries parked on it.
//!
//! ```text
//!  submit(place) ── Run ────────────────────────────────► runs, holds a slot until release
//!        └──────── Queued: parked (under the same lock) ──► wait(): started by a release or a
//!                                                           capacity change, or times out
//! ```
//!
//! A parked query's state moves out of `Waiting` exactly once, and whoever moves it decides who
//! owns its slot, so a slot is released exactly once however the wait ends (started, timed out,
//! or its client gone).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Decision, GroupId, GroupLimits, Rejection, Scheduler, WaiterId};

/// One pool's groups and the queries waiting in them.
#[derive(Debug)]
pub struct PoolQueue {
    scheduler: Mutex<Scheduler>,
    waiters: Mutex<HashMap<WaiterId, Arc<Waiter>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitState {
    Waiting,
    Started,
    Abandoned,
}

/// A query parked in a group's queue.
#[derive(Debug)]
pub struct Waiter {
    id: WaiterId,
    leaf: GroupId,
    state: Mutex<WaitState>,
    started: tokio::sync::Notify,
}

/// What [`PoolQueue::submit`] decided.
#[derive(Debug)]
pub enum Submitted {
    /// It holds a slot of `leaf` now.
    Run,
    /// It waits; [`PoolQueue::wait`] tells whether it started in time.
    Queued(Arc<Waiter>),
    /// Refused without waiting.
    Rejected(Rejection),
}

/// Where a submitted query went.
#[derive(Debug)]
pub struct Placed {
    /// Its leaf group.
    pub leaf: GroupId,
    /// The leaf's dotted path (a templated value may have been sent to the overflow group).
    pub path: String,
    /// The leaf's queue timeout.
    pub queue_timeout: Duration,
    /// The decision.
    pub submitted: Submitted,
}

impl PoolQueue {
    /// A queue whose root group has `capacity` slots.
    pub fn new(capacity: u32) -> Arc<Self> {
        let mut root = GroupLimits::unlimited();
        root.hard_concurrency = capacity;
        Arc::new(Self {
            scheduler: Mutex::new(Scheduler::new(root)),
            waiters: Mutex::new(HashMap::new()),
        })
    }

    /// Places a query with `place` (which finds or creates its leaf) and submits it, all under
    /// one lock: a queued query is parked before any release can start it.
    pub fn submit(&self, place: impl FnOnce(&mut Scheduler) -> GroupId) -> Placed {
        let mut s = self.scheduler.lock().expect("scheduler");
        let leaf = place(&mut s);
        let submitted = match s.submit(leaf) {
            Decision::Run => Submitted::Run,
            Decision::Rejected(rejection) => Submitted::Rejected(rejection),
            Decision::Queued(id) => {
                let waiter = Arc::new(Waiter {
                    id,
                    leaf,
                    state: Mutex::new(WaitState::Waiting),
                    started: tokio::sync::Notify::new(),
                });
                self.waiters
                    .lock()
                    .expect("waiters")
                    .insert(id, waiter.clone());
                Submitted::Queued(waiter)
            }
        };
        Placed {
            leaf,
            path: s.path(leaf).to_owned(),
            queue_timeout: s.queue_timeout(leaf),
            submitted,
        }
    }

    /// Waits up to `timeout` for `waiter` to start. True: it holds a slot (to release when
    /// done). False: it timed out and gave up its place. If this future is dropped (the client
    /// went away), the place, or the slot granted meanwhile, is given back.
    pub fn wait(
        self: &Arc<Self>,
        waiter: Arc<Waiter>,
        timeout: Duration,
    ) -> impl Future<Output = bool> + use<> {
        // Armed before the future is first polled, so dropping it unpolled gives up too.
        let mut guard = WaitGuard {
            queue: self.clone(),
            waiter,
            armed: true,
        };
        async move {
            let started = tokio::time::timeout(timeout, guard.waiter.started.notified())
                .await
                .is_ok();
            guard.armed = false;
            started || guard.queue.abandon(&guard.waiter)
        }
    }

    /// Queries waiting in the pool.
    pub fn queued(&self) -> u32 {
        let s = self.scheduler.lock().expect("scheduler");
        s.queued(s.root())
    }

    /// Every group's path, running and queued counts.
    pub fn snapshot(&self) -> Vec<(String, u32, u32)> {
        self.scheduler.lock().expect("scheduler").snapshot()
    }

    /// Sets the pool's capacity, starting the queries it allows.
    pub fn set_capacity(&self, slots: u32) {
        let started = self
            .scheduler
            .lock()
            .expect("scheduler")
            .set_capacity(slots);
        self.wake(started);
    }

    /// Frees a slot of `leaf` held for `held` and starts the queries that go in its place.
    pub fn release(&self, leaf: GroupId, held: Duration) {
        let started = self
            .scheduler
            .lock()
            .expect("scheduler")
            .release(leaf, held);
        self.wake(started);
    }

    /// Tells started queries to go; a slot given to an abandoned waiter is released again.
    fn wake(&self, started: Vec<WaiterId>) {
        for id in started {
            let Some(waiter) = self.waiters.lock().expect("waiters").remove(&id) else {
                continue;
            };
            let mut state = waiter.state.lock().expect("wait state");
            match *state {
                WaitState::Waiting => {
                    *state = WaitState::Started;
                    waiter.started.notify_one();
                }
                WaitState::Abandoned => {
                    drop(state);
                    self.release(waiter.leaf, Duration::ZERO);
                }
                WaitState::Started => {}
            }
        }
    }

    /// Gives up waiting. True if the query now owns a slot anyway (it started first).
    fn abandon(&self, waiter: &Waiter) -> bool {
        let mut state = waiter.state.lock().expect("wait state");
        match *state {
            WaitState::Started => true,
            WaitState::Abandoned => false,
            WaitState::Waiting => {
                *state = WaitState::Abandoned;
                drop(state);
                let cancelled = self
                    .scheduler
                    .lock()
                    .expect("scheduler")
                    .cancel(waiter.leaf, waiter.id);
                if cancelled {
                    self.waiters.lock().expect("waiters").remove(&waiter.id);
                }
                // Otherwise the scheduler started it an instant ago; `wake` will see
                // `Abandoned` and release the slot.
                false
            }
        }
    }
}

/// Gives up a wait whose future was dropped.
struct WaitGuard {
    queue: Arc<PoolQueue>,
    waiter: Arc<Waiter>,
    armed: bool,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if self.armed && self.queue.abandon(&self.waiter) {
            // Granted a slot nobody will use: give it back.
            self.queue.release(self.waiter.leaf, Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_slot() -> (Arc<PoolQueue>, impl Fn(&mut Scheduler) -> GroupId) {
        let queue = PoolQueue::new(1);
        let place = |s: &mut Scheduler| {
            let root = s.root();
            s.ensure(root, "g", GroupLimits::unlimited())
        };
        (queue, place)
    }

    #[tokio::test]
    async fn a_slot_freed_before_the_wait_begins_is_not_lost() {
        let (queue, place) = one_slot();
        let first = queue.submit(&place);
        assert!(matches!(first.submitted, Submitted::Run));
        let Submitted::Queued(waiter) = queue.submit(&place).submitted else {
            panic!("the second query waits");
        };
        // The running query ends before the waiter starts waiting: it is started all the same.
        queue.release(first.leaf, Duration::from_millis(1));
        assert!(queue.wait(waiter, Duration::from_secs(5)).await);
        assert_eq!(queue.queued(), 0);
    }

    #[tokio::test]
    async fn a_timed_out_or_dropped_wait_gives_its_place_back() {
        let (queue, place) = one_slot();
        let first = queue.submit(&place);
        let Submitted::Queued(waiter) = queue.submit(&place).submitted else {
            panic!("waits");
        };
        assert!(!queue.wait(waiter, Duration::from_millis(10)).await);
        assert_eq!(queue.queued(), 0);
        let Submitted::Queued(waiter) = queue.submit(&place).submitted else {
            panic!("waits");
        };
        drop(queue.wait(waiter, Duration::from_secs(5)));
        let never_polled = queue.clone();
        let Submitted::Queued(waiter) = never_polled.submit(&place).submitted else {
            panic!("waits");
        };
        let wait = tokio::spawn(never_polled.wait(waiter, Duration::from_secs(5)));
        wait.abort();
        let _ = wait.await;
        // Every abandoned place is gone; the slot goes to the next query once the first ends.
        queue.release(first.leaf, Duration::from_millis(1));
        let last = queue.submit(&place).submitted;
        assert!(
            matches!(last, Submitted::Run),
            "{last:?} queued={}",
            queue.queued()
        );
    }
}
