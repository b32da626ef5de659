//! Admission: between authentication and dispatch, decides for each query which resource group
//! it runs in, whether a rate-limit policy refuses it, and when it may start.
//!
//! ```text
//!  identity ──► classify (selectors → group, tables → permission)
//!           ──► rate_limit (every matching policy; the first to refuse wins)
//!           ──► group (run now / wait in the group's queue / shed) ──► Permit
//! ```
//!
//! Cheapest rejection first: a rate-limit check is one hash lookup, queueing holds memory and a
//! task. The [`Permit`] frees its slot on drop and travels with the result stream, so a slot is
//! held until the last batch or the client's disconnect.
//!
//! Several gateway replicas each enforce `1/replicas` of every rate and concurrency limit
//! (`--gateway-replicas`). That needs no coordination; its cost is accuracy when load is uneven
//! across replicas: a tenant whose traffic all lands on one replica gets `1/replicas` of its
//! quota until the load balancer spreads it.

pub mod classify;
pub mod config;
pub mod group;
pub mod rate_limit;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use self::classify::{ClientHints, FactsCache, Placement};
use self::config::Identity;
use self::config::{Policy, StatementKind};
use self::group::{GroupId, PoolQueue, Rejection, Submitted};
use self::rate_limit::{Limiters, Subject};
use quiver_core::sql::SqlError;

/// Slots per ready worker: how many queries the pool root admits per worker.
pub const DEFAULT_WORKER_SLOTS: u32 = 8;

/// Why admission refused a query.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The statement is too large, too deep, malformed, or not something the gateway can
    /// classify: refused before any worker sees it.
    #[error(transparent)]
    InvalidSql(#[from] SqlError),
    /// The tenant may not read a table the query names.
    #[error("tenant {tenant:?} may not read {table}")]
    Forbidden {
        /// The tenant.
        tenant: String,
        /// The table.
        table: String,
    },
    /// A rate-limit policy refused the query.
    #[error("rate limit {policy:?} exceeded for {key}; retry in {} ms", retry_after.as_millis())]
    RateLimited {
        /// The policy.
        policy: String,
        /// The key it counted (e.g. `tenant=noisy`).
        key: String,
        /// When a retry would be admitted.
        retry_after: Duration,
    },
    /// The group's queue is full.
    #[error("resource group {group:?} has {max_queued} queries queued already; retry later")]
    QueueFull {
        /// The group.
        group: String,
        /// Its queue limit.
        max_queued: u32,
        /// A suggested wait.
        retry_after: Duration,
    },
    /// The expected wait is longer than the group's queue timeout.
    #[error("resource group {group:?} is overloaded: expected wait {} ms exceeds its queue timeout of {} ms", expected.as_millis(), timeout.as_millis())]
    Shed {
        /// The group.
        group: String,
        /// The estimate.
        expected: Duration,
        /// The group's queue timeout.
        timeout: Duration,
    },
    /// The query waited for its group's whole queue timeout.
    #[error("query timed out in the queue of resource group {group:?} after {} ms", waited.as_millis())]
    QueueTimeout {
        /// The group.
        group: String,
        /// How long it waited.
        waited: Duration,
    },
}

impl AdmissionError {
    /// How long the client should wait before retrying, where that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AdmissionError::RateLimited { retry_after, .. }
            | AdmissionError::QueueFull { retry_after, .. } => Some(*retry_after),
            AdmissionError::Shed {
                expected, timeout, ..
            } => Some(expected.saturating_sub(*timeout)),
            AdmissionError::QueueTimeout { waited, .. } => Some(*waited / 2),
            AdmissionError::Forbidden { .. } | AdmissionError::InvalidSql(_) => None,
        }
    }

    /// The policy or group that refused, for metrics.
    pub fn source(&self) -> &str {
        match self {
            AdmissionError::RateLimited { policy, .. } => policy,
            AdmissionError::Forbidden { .. } => "catalogs",
            AdmissionError::InvalidSql(_) => "invalid_sql",
            AdmissionError::QueueFull { .. } => "queue_full",
            AdmissionError::Shed { .. } => "shed",
            AdmissionError::QueueTimeout { .. } => "queue_timeout",
        }
    }
}

/// A query's claim on its group's slot; frees it on drop and starts the next waiting query.
#[derive(Debug)]
pub struct Permit {
    groups: Arc<PoolQueue>,
    leaf: GroupId,
    started: Instant,
    /// The statement as checked, with the placement it was admitted with.
    pub checked: Checked,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.groups.release(self.leaf, self.started.elapsed());
    }
}

/// The admission stage: policy, rate-limit state and one group scheduler per pool.
///
/// Each pool has its own scheduler, whose root holds that pool's capacity (its ready workers ×
/// slots), so a busy pool never takes slots from another.
#[derive(Debug)]
pub struct Admission {
    /// What the policy in force owns; a reload swaps it whole, so no call ever sees a new
    /// policy with the old limiters or groups.
    generation: RwLock<Arc<Generation>>,
    origin: Instant,
    replicas: u32,
    /// Capacity by pool; a pool not yet measured is unlimited.
    capacity: Mutex<HashMap<String, u32>>,
    /// Arrivals by pool, for the demand signal.
    arrivals: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Parsed statements, so repeated SQL is not parsed again.
    facts: FactsCache,
    /// Longest SQL text accepted.
    max_sql_bytes: usize,
}

/// One policy version and the state it owns: its rate limiters (one per policy, in order) and
/// its group schedulers by pool (created on a pool's first query). Running queries keep their
/// slots in the generation they were admitted under.
#[derive(Debug)]
struct Generation {
    policy: Arc<Policy>,
    limiters: Mutex<Limiters>,
    groups: RwLock<HashMap<String, Arc<PoolQueue>>>,
}

impl Generation {
    fn new(policy: Policy) -> Arc<Self> {
        Arc::new(Self {
            limiters: Mutex::new(Limiters::new(policy.rate_limits.len())),
            policy: Arc::new(policy),
            groups: RwLock::new(HashMap::new()),
        })
    }
}

/// A statement admission has checked: the exact text a worker may run, where it runs, and what
/// its tenant may read (which the worker checks again against its plan).
#[derive(Debug, Clone)]
pub struct Checked {
    /// The text the worker runs (placeholders numbered).
    pub sql: Arc<str>,
    /// Group and pool.
    pub placement: Placement,
    /// The tenant's readable catalog patterns.
    pub catalogs: Vec<String>,
}

/// The window over which a pool's arrival rate is measured: one second, so scaling reacts to a
/// burst within about a second.
const ARRIVAL_WINDOW: Duration = Duration::from_secs(1);

impl Admission {
    /// Admission under `policy`, sharing limits with `replicas - 1` other gateways.
    pub fn new(policy: Policy, replicas: u32) -> Arc<Self> {
        Self::with_max_sql_bytes(policy, replicas, quiver_core::sql::DEFAULT_MAX_SQL_BYTES)
    }

    /// The same, accepting SQL texts of at most `max_sql_bytes`.
    pub fn with_max_sql_bytes(policy: Policy, replicas: u32, max_sql_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            generation: RwLock::new(Generation::new(policy)),
            origin: Instant::now(),
            replicas: replicas.max(1),
            capacity: Mutex::new(HashMap::new()),
            arrivals: Mutex::new(HashMap::new()),
            facts: FactsCache::default(),
            max_sql_bytes,
        })
    }

    /// Longest SQL text accepted.
    pub fn max_sql_bytes(&self) -> usize {
        self.max_sql_bytes
    }

    fn current(&self) -> Arc<Generation> {
        self.generation.read().expect("generation").clone()
    }

    /// The scheduler of `pool` in `generation`.
    fn pool_groups(&self, generation: &Generation, pool: &str) -> Arc<PoolQueue> {
        if let Some(groups) = generation.groups.read().expect("groups").get(pool) {
            return groups.clone();
        }
        let mut by_pool = generation.groups.write().expect("groups");
        by_pool
            .entry(pool.to_owned())
            .or_insert_with(|| {
                let capacity = self.capacity.lock().expect("capacity").get(pool).copied();
                PoolQueue::new(capacity.unwrap_or(u32::MAX))
            })
            .clone()
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.current().policy.clone()
    }

    /// Replaces the policy (a config reload). Rate-limit state restarts; running queries keep
    /// their slots in the old groups, new queries use the new ones.
    pub fn replace(&self, policy: Policy) {
        *self.generation.write().expect("generation") = Generation::new(policy);
    }

    /// Sets `pool`'s capacity (ready workers × slots), starting waiting queries it allows.
    pub fn set_capacity(&self, pool: &str, slots: u32) {
        self.capacity
            .lock()
            .expect("capacity")
            .insert(pool.to_owned(), slots);
        if let Some(groups) = self.existing_groups(pool) {
            groups.set_capacity(slots);
        }
    }

    /// `pool`'s groups under the policy in force, if a query has reached them.
    fn existing_groups(&self, pool: &str) -> Option<Arc<PoolQueue>> {
        self.current()
            .groups
            .read()
            .expect("groups")
            .get(pool)
            .cloned()
    }

    /// Every pool's groups, taken out of the lock so no scheduler is locked under it.
    fn all_groups(&self) -> Vec<Arc<PoolQueue>> {
        self.current()
            .groups
            .read()
            .expect("groups")
            .values()
            .cloned()
            .collect()
    }

    /// Running and queued queries per group path, for metrics and the demand signal.
    pub fn snapshot(&self) -> Vec<(String, u32, u32)> {
        self.all_groups()
            .iter()
            .flat_map(|groups| groups.snapshot())
            .collect()
    }

    /// Queries waiting in any group of any pool.
    pub fn queued(&self) -> u32 {
        self.all_groups().iter().map(|groups| groups.queued()).sum()
    }

    /// Queries waiting for a slot of `pool`.
    pub fn queued_in(&self, pool: &str) -> u32 {
        self.existing_groups(pool)
            .map_or(0, |groups| groups.queued())
    }

    /// Queries for `pool` that were classified in the last second, refused ones included (they
    /// are demand the pool did not meet). Refusals by identity-keyed limits come before the pool
    /// is known and are not counted: that demand is over its tenant's quota, not the pool's.
    pub fn arrivals_per_sec(&self, pool: &str) -> f64 {
        let mut arrivals = self.arrivals.lock().expect("arrivals");
        let Some(window) = arrivals.get_mut(pool) else {
            return 0.0;
        };
        prune(window, Instant::now());
        window.len() as f64 / ARRIVAL_WINDOW.as_secs_f64()
    }

    fn arrived(&self, pool: &str) {
        let now = Instant::now();
        let mut arrivals = self.arrivals.lock().expect("arrivals");
        let window = arrivals.entry(pool.to_owned()).or_default();
        window.push_back(now);
        prune(window, now);
    }

    /// The pool for a call outside any query (metadata, prepared-statement actions): the pool
    /// of the caller's group, so a group bound to its own pool never touches another.
    pub fn pool_of(&self, identity: &Identity, hints: &ClientHints) -> String {
        classify::classify(&self.policy(), identity, hints, StatementKind::Other).pool
    }

    /// A call that makes a worker work without a statement (metadata commands): counted
    /// against the limits keyed by identity.
    pub fn count_call(&self, identity: &Identity) -> Result<(), AdmissionError> {
        self.rate_limit(&self.current(), identity, None)
    }

    /// The catalog patterns `identity`'s tenant may read; none for a tenant no longer known.
    pub fn catalogs_of(&self, identity: &Identity) -> Vec<String> {
        self.policy()
            .tenant(&identity.tenant)
            .map(|t| t.catalogs.clone())
            .unwrap_or_default()
    }

    /// Checks a statement and classifies it; no state changes. Refuses what the tenant may not
    /// read and whatever cannot be classified.
    pub fn check(
        &self,
        identity: &Identity,
        hints: &ClientHints,
        sql: &str,
    ) -> Result<(Arc<Policy>, Checked), AdmissionError> {
        let policy = self.policy();
        let checked = self.check_under(&policy, identity, hints, sql)?;
        Ok((policy, checked))
    }

    fn check_under(
        &self,
        policy: &Policy,
        identity: &Identity,
        hints: &ClientHints,
        sql: &str,
    ) -> Result<Checked, AdmissionError> {
        let facts = self.facts.inspect(sql, self.max_sql_bytes)?;
        if let Some(table) = classify::forbidden(policy, identity, &facts) {
            return Err(AdmissionError::Forbidden {
                tenant: identity.tenant.clone(),
                table: table.to_owned(),
            });
        }
        let placement = classify::classify(policy, identity, hints, facts.kind);
        let catalogs = policy
            .tenant(&identity.tenant)
            .map(|t| t.catalogs.clone())
            .unwrap_or_default();
        Ok(Checked {
            sql: facts.sql.clone(),
            placement,
            catalogs,
        })
    }

    /// A call that makes a worker plan (GetFlightInfo, CreatePreparedStatement): checked, and
    /// counted against every matching rate limit like a query. Limits keyed only by identity
    /// refuse before the statement is even parsed: a refusal costs a lookup.
    pub fn plan(
        &self,
        identity: &Identity,
        hints: &ClientHints,
        sql: &str,
    ) -> Result<Checked, AdmissionError> {
        self.check_counted(&self.current(), identity, hints, sql, true, false)
    }

    /// [`Admission::check`] under `policy`, counted against the rate limits when `count`:
    /// limits keyed by identity alone before the parse, the rest after classification. With
    /// `arrive`, a classified run counts in its pool's arrival rate (refused by a group limit
    /// too: that is demand the pool did not meet).
    fn check_counted(
        &self,
        generation: &Generation,
        identity: &Identity,
        hints: &ClientHints,
        sql: &str,
        count: bool,
        arrive: bool,
    ) -> Result<Checked, AdmissionError> {
        if count {
            self.rate_limit(generation, identity, None)?;
        }
        let checked = self.check_under(&generation.policy, identity, hints, sql)?;
        if arrive {
            self.arrived(&checked.placement.pool);
        }
        if count {
            self.rate_limit(generation, identity, Some(&checked.placement))?;
        }
        Ok(checked)
    }

    /// The whole decision for a run: check and classify, rate-limit (unless `prepaid`: its
    /// planning call was counted already), then run, wait or shed.
    pub async fn admit(
        &self,
        identity: &Identity,
        hints: &ClientHints,
        sql: &str,
        prepaid: bool,
    ) -> Result<Permit, AdmissionError> {
        let generation = self.current();
        let mut checked = self.check_counted(&generation, identity, hints, sql, !prepaid, true)?;
        let groups = self.pool_groups(&generation, &checked.placement.pool);
        let placed = groups.submit(|s| {
            let mut node = s.root();
            for (name, limits, templated) in &checked.placement.chain {
                let mut limits = *limits;
                if self.replicas > 1 && limits.hard_concurrency != u32::MAX {
                    limits.hard_concurrency = limits.hard_concurrency.div_ceil(self.replicas);
                }
                node = if *templated {
                    s.ensure_bounded(
                        node,
                        name,
                        limits,
                        classify::MAX_TEMPLATE_VALUES,
                        classify::OVERFLOW_GROUP,
                    )
                } else {
                    s.ensure(node, name, limits)
                };
            }
            node
        });
        // Where the query runs: a templated value may have been sent to the overflow group.
        checked.placement.path = placed.path;
        let (leaf, timeout) = (placed.leaf, placed.queue_timeout);
        let permit = |groups: Arc<PoolQueue>, checked: Checked| Permit {
            groups,
            leaf,
            started: Instant::now(),
            checked,
        };
        match placed.submitted {
            Submitted::Run => Ok(permit(groups, checked)),
            Submitted::Rejected(Rejection::QueueFull { group, max_queued }) => {
                Err(AdmissionError::QueueFull {
                    group,
                    max_queued,
                    retry_after: timeout.min(Duration::from_secs(1)),
                })
            }
            Submitted::Rejected(Rejection::ExpectedWaitTooLong {
                group,
                expected,
                timeout,
            }) => Err(AdmissionError::Shed {
                group,
                expected,
                timeout,
            }),
            Submitted::Queued(waiter) => {
                let waiting = Instant::now();
                if groups.wait(waiter, timeout).await {
                    Ok(permit(groups, checked))
                } else {
                    Err(AdmissionError::QueueTimeout {
                        group: checked.placement.path.clone(),
                        waited: waiting.elapsed(),
                    })
                }
            }
        }
    }

    /// Checks and counts the rate limits that apply: without a placement, those keyed and
    /// matched by identity alone; with one, those that need it.
    fn rate_limit(
        &self,
        generation: &Generation,
        identity: &Identity,
        placement: Option<&Placement>,
    ) -> Result<(), AdmissionError> {
        let subject = Subject {
            tenant: &identity.tenant,
            user: &identity.user,
            group: placement.map(|p| p.path.as_str()),
        };
        generation
            .limiters
            .lock()
            .expect("limiters")
            .admit(
                &generation.policy.rate_limits,
                &subject,
                self.replicas,
                self.origin.elapsed(),
            )
            .map_err(|refused| AdmissionError::RateLimited {
                policy: refused.policy,
                key: refused.key,
                retry_after: refused.retry_after,
            })
    }
}

fn prune(window: &mut VecDeque<Instant>, now: Instant) {
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) > ARRIVAL_WINDOW)
    {
        window.pop_front();
    }
}

#[cfg(test)]
mod tests;
