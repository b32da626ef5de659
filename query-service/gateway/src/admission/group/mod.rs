//! The resource-group scheduler of one pool, as pure state: no clock, no I/O, no tasks.
//!
//! Groups form a tree under the pool's root. A query runs in a leaf group and counts against its
//! leaf and every ancestor, so a parent's hard concurrency bounds its children together. When a
//! slot frees, the next query is chosen top-down: at each level among the children that have
//! waiting queries and room to run, by the parent's scheduling policy:
//!
//! ```text
//!  root (pool capacity)
//!   ├── dashboards  weight 3 ─┐ weighted fair: stride scheduling, each admission advances a
//!   └── adhoc       weight 1 ─┘ child's pass by 1/weight; the lowest pass goes next (3:1 shares)
//!         └── adhoc.alice, adhoc.bob …  (templated, created on first use)
//! ```
//!
//! `fair` picks the child with the fewest running queries; `priority` the highest priority.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

mod queue;
pub use self::queue::{PoolQueue, Submitted};

/// How a group shares its capacity among its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduling {
    /// Fewest running queries first.
    Fair,
    /// Shares proportional to weight.
    #[default]
    WeightedFair,
    /// Highest priority first; weighted fair among equals.
    Priority,
}

/// Limits of one group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupLimits {
    /// Queries running at once in the group's subtree.
    pub hard_concurrency: u32,
    /// Queries waiting at once in the group's subtree.
    pub max_queued: u32,
    /// Longest a query may wait.
    pub queue_timeout: Duration,
    /// Share relative to siblings (weighted fair).
    pub weight: u32,
    /// Rank among siblings (priority).
    pub priority: u32,
    /// How this group shares among its children.
    pub scheduling: Scheduling,
}

impl GroupLimits {
    /// No limits: the pool root before its capacity is known.
    pub fn unlimited() -> Self {
        Self {
            hard_concurrency: u32::MAX,
            max_queued: u32::MAX,
            queue_timeout: Duration::MAX,
            weight: 1,
            priority: 0,
            scheduling: Scheduling::WeightedFair,
        }
    }
}

/// Index of a group in the scheduler.
pub type GroupId = usize;
/// Identity of a waiting query.
pub type WaiterId = u64;

/// Why a query was refused without queueing.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// The group (or an ancestor) has its maximum number of queries waiting.
    QueueFull {
        /// The full group.
        group: String,
        /// Its limit.
        max_queued: u32,
    },
    /// The queue is so long that the query would time out before running.
    ExpectedWaitTooLong {
        /// The group.
        group: String,
        /// The estimated wait.
        expected: Duration,
        /// The group's queue timeout.
        timeout: Duration,
    },
}

/// What happened to a submitted query.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// It may run now; it holds a slot until [`Scheduler::release`].
    Run,
    /// It waits; a later `release` or `set_capacity` returns its id when it may run.
    Queued(WaiterId),
    /// Refused.
    Rejected(Rejection),
}

#[derive(Debug)]
struct Node {
    path: String,
    parent: Option<GroupId>,
    children: Vec<GroupId>,
    limits: GroupLimits,
    running: u32,
    queued: u32,
    pass: f64,
    /// Waiting queries, for leaves: id and time of arrival.
    queue: VecDeque<WaiterId>,
    /// Smoothed time a query of this group holds its slot, for the expected-wait estimate.
    service: Option<Duration>,
    /// When a query last arrived, on the scheduler's own count of arrivals.
    last_used: u64,
}

/// Weight of the newest sample in the service-time average.
const SERVICE_EWMA_ALPHA: f64 = 0.2;

/// All groups of one pool and their running and waiting queries.
#[derive(Debug)]
pub struct Scheduler {
    nodes: Vec<Node>,
    by_path: HashMap<String, GroupId>,
    next_waiter: WaiterId,
    /// Arrivals so far: the clock of `last_used`.
    arrivals: u64,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new(GroupLimits::unlimited())
    }
}

impl Scheduler {
    /// A scheduler whose root has `root` limits (the pool's capacity).
    pub fn new(root: GroupLimits) -> Self {
        let mut s = Self {
            nodes: Vec::new(),
            by_path: HashMap::new(),
            next_waiter: 1,
            arrivals: 0,
        };
        s.push(String::new(), None, root);
        s
    }

    fn push(&mut self, path: String, parent: Option<GroupId>, limits: GroupLimits) -> GroupId {
        let id = self.nodes.len();
        self.by_path.insert(path.clone(), id);
        self.nodes.push(Node {
            path,
            parent,
            children: Vec::new(),
            limits,
            running: 0,
            queued: 0,
            pass: parent.map_or(0.0, |p| self.min_active_pass(p)),
            queue: VecDeque::new(),
            service: None,
            last_used: self.arrivals,
        });
        if let Some(p) = parent {
            self.nodes[p].children.push(id);
        }
        id
    }

    /// The root group (the pool).
    pub fn root(&self) -> GroupId {
        0
    }

    /// The group at a dotted path (`adhoc.alice`), if it exists.
    #[cfg(test)]
    pub fn find(&self, path: &str) -> Option<GroupId> {
        self.by_path.get(path).copied()
    }

    /// The group `name` under `parent`, created with `limits` if new.
    pub fn ensure(&mut self, parent: GroupId, name: &str, limits: GroupLimits) -> GroupId {
        let path = self.child_path(parent, name);
        match self.by_path.get(&path) {
            Some(id) => *id,
            None => self.push(path, Some(parent), limits),
        }
    }

    /// The group `name` under `parent` when `parent` has at most `cap` children: created if new
    /// and there is room; otherwise the least recently used idle child (no query running or
    /// waiting) is renamed to it and starts afresh; while every child is busy, the `overflow`
    /// child. For subgroups named by client-chosen values, whose number must stay bounded.
    pub fn ensure_bounded(
        &mut self,
        parent: GroupId,
        name: &str,
        limits: GroupLimits,
        cap: usize,
        overflow: &str,
    ) -> GroupId {
        let path = self.child_path(parent, name);
        if let Some(id) = self.by_path.get(&path) {
            return *id;
        }
        if self.nodes[parent].children.len() < cap {
            return self.push(path, Some(parent), limits);
        }
        let overflow_path = self.child_path(parent, overflow);
        let idle = self.nodes[parent]
            .children
            .iter()
            .copied()
            .filter(|c| {
                let n = &self.nodes[*c];
                n.running == 0 && n.queued == 0 && n.path != overflow_path && n.children.is_empty()
            })
            .min_by_key(|c| self.nodes[*c].last_used);
        match idle {
            Some(id) => {
                let pass = self.min_active_pass(parent);
                let node = &mut self.nodes[id];
                self.by_path.remove(&node.path);
                node.path = path.clone();
                node.limits = limits;
                node.pass = pass;
                node.service = None;
                node.last_used = self.arrivals;
                self.by_path.insert(path, id);
                id
            }
            None => self.ensure(parent, overflow, limits),
        }
    }

    fn child_path(&self, parent: GroupId, name: &str) -> String {
        if self.nodes[parent].path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.nodes[parent].path)
        }
    }

    /// The dotted path of a group.
    pub fn path(&self, group: GroupId) -> &str {
        &self.nodes[group].path
    }

    /// Queries running in a group's subtree.
    #[cfg(test)]
    pub fn running(&self, group: GroupId) -> u32 {
        self.nodes[group].running
    }

    /// Queries waiting in a group's subtree.
    pub fn queued(&self, group: GroupId) -> u32 {
        self.nodes[group].queued
    }

    /// The queue timeout of a group.
    pub fn queue_timeout(&self, group: GroupId) -> Duration {
        self.nodes[group].limits.queue_timeout
    }

    /// Every group's path, running and queued counts (for metrics).
    pub fn snapshot(&self) -> Vec<(String, u32, u32)> {
        self.nodes
            .iter()
            .skip(1)
            .map(|n| (n.path.clone(), n.running, n.queued))
            .collect()
    }

    fn ancestry(&self, group: GroupId) -> impl Iterator<Item = GroupId> + '_ {
        std::iter::successors(Some(group), |g| self.nodes[*g].parent)
    }

    fn has_room(&self, group: GroupId) -> bool {
        self.ancestry(group)
            .all(|g| self.nodes[g].running < self.nodes[g].limits.hard_concurrency)
    }

    fn min_active_pass(&self, parent: GroupId) -> f64 {
        self.nodes[parent]
            .children
            .iter()
            .filter(|c| self.nodes[**c].queued > 0 || self.nodes[**c].running > 0)
            .map(|c| self.nodes[*c].pass)
            .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.min(p))))
            .unwrap_or(0.0)
    }

    /// Submits a query to leaf `group`: runs it now if the group and its ancestors have room
    /// and nobody in the group waits ahead of it, queues it, or refuses it.
    pub fn submit(&mut self, group: GroupId) -> Decision {
        self.arrivals += 1;
        self.nodes[group].last_used = self.arrivals;
        if self.nodes[group].queue.is_empty() && self.has_room(group) {
            self.start(group);
            return Decision::Run;
        }
        for g in self.ancestry(group) {
            let n = &self.nodes[g];
            if g != 0 && n.queued >= n.limits.max_queued {
                return Decision::Rejected(Rejection::QueueFull {
                    group: n.path.clone(),
                    max_queued: n.limits.max_queued,
                });
            }
        }
        let n = &self.nodes[group];
        if let Some(service) = n.service {
            let ahead = f64::from(n.queued + 1);
            let expected = service.mul_f64(ahead / f64::from(n.limits.hard_concurrency.max(1)));
            if expected > n.limits.queue_timeout {
                return Decision::Rejected(Rejection::ExpectedWaitTooLong {
                    group: n.path.clone(),
                    expected,
                    timeout: n.limits.queue_timeout,
                });
            }
        }
        let id = self.next_waiter;
        self.next_waiter += 1;
        let ancestry: Vec<GroupId> = self.ancestry(group).collect();
        for g in ancestry {
            if self.nodes[g].queued == 0 && self.nodes[g].running == 0 {
                // A group waking from idle starts at its siblings' pace, not with credit.
                if let Some(p) = self.nodes[g].parent {
                    let floor = self.min_active_pass(p);
                    self.nodes[g].pass = self.nodes[g].pass.max(floor);
                }
            }
            self.nodes[g].queued += 1;
        }
        self.nodes[group].queue.push_back(id);
        Decision::Queued(id)
    }

    fn start(&mut self, group: GroupId) {
        let ancestry: Vec<GroupId> = self.ancestry(group).collect();
        for g in ancestry {
            let n = &mut self.nodes[g];
            n.running += 1;
            n.pass += 1.0 / f64::from(n.limits.weight.max(1));
        }
    }

    /// Frees the slot of a query of `group` that held it for `held`, and returns the waiting
    /// queries that may run now.
    pub fn release(&mut self, group: GroupId, held: Duration) -> Vec<WaiterId> {
        let ancestry: Vec<GroupId> = self.ancestry(group).collect();
        for g in ancestry {
            self.nodes[g].running = self.nodes[g].running.saturating_sub(1);
        }
        let n = &mut self.nodes[group];
        n.service = Some(match n.service {
            None => held,
            Some(s) => s.mul_f64(1.0 - SERVICE_EWMA_ALPHA) + held.mul_f64(SERVICE_EWMA_ALPHA),
        });
        self.dispatch()
    }

    /// Withdraws a waiting query (timed out or abandoned). False if it was already started,
    /// in which case the caller owns a slot and must release it.
    pub fn cancel(&mut self, group: GroupId, id: WaiterId) -> bool {
        let Some(pos) = self.nodes[group].queue.iter().position(|w| *w == id) else {
            return false;
        };
        self.nodes[group].queue.remove(pos);
        let ancestry: Vec<GroupId> = self.ancestry(group).collect();
        for g in ancestry {
            self.nodes[g].queued -= 1;
        }
        true
    }

    /// Sets the pool's capacity (ready workers × slots each) and returns queries that may run.
    pub fn set_capacity(&mut self, slots: u32) -> Vec<WaiterId> {
        self.nodes[0].limits.hard_concurrency = slots;
        self.dispatch()
    }

    /// Starts waiting queries while there is room, choosing top-down by each parent's policy.
    fn dispatch(&mut self) -> Vec<WaiterId> {
        let mut started = Vec::new();
        while let Some(leaf) = self.pick(0) {
            let id = self.nodes[leaf]
                .queue
                .pop_front()
                .expect("picked leaf has a waiter");
            let ancestry: Vec<GroupId> = self.ancestry(leaf).collect();
            for g in ancestry {
                self.nodes[g].queued -= 1;
            }
            self.start(leaf);
            started.push(id);
        }
        started
    }

    fn pick(&self, node: GroupId) -> Option<GroupId> {
        let n = &self.nodes[node];
        if n.running >= n.limits.hard_concurrency || n.queued == 0 {
            return None;
        }
        if !n.queue.is_empty() {
            return Some(node);
        }
        let mut candidates: Vec<GroupId> = n
            .children
            .iter()
            .copied()
            .filter(|c| {
                let c = &self.nodes[*c];
                c.queued > 0 && c.running < c.limits.hard_concurrency
            })
            .collect();
        let key = |c: &GroupId| {
            let c = &self.nodes[*c];
            match n.limits.scheduling {
                Scheduling::Fair => (0, f64::from(c.running)),
                Scheduling::WeightedFair => (0, c.pass),
                Scheduling::Priority => (u32::MAX - c.limits.priority, c.pass),
            }
        };
        candidates.sort_by(|a, b| {
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
        });
        candidates.into_iter().find_map(|c| self.pick(c))
    }
}

#[cfg(test)]
mod tests;
