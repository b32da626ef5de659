//! The pools a gateway serves, by name. Each resource group runs on one pool, so a group bound to
//! its own pool shares no worker with the others.
//!
//! ```text
//!  --worker / --pool NAME=…  ─┐                        ┌─► WorkerPool "default"
//!  supervisor (quiver up)    ─┼─► worker sets by pool ─┼─► WorkerPool "a"
//!  EndpointSlices (k8s)      ─┘                        └─► WorkerPool "b"
//!  QueryPools (k8s)          ───► pools added while running, each with its catalog document
//! ```
//!
//! The pools given at start exist for the gateway's whole life, so the admission config can be
//! checked against them; with Kubernetes discovery every QueryPool adds one more while the
//! gateway runs (never removed: a deleted QueryPool's pool is only emptied, so a running config
//! naming it stays valid). A pool's catalog document is what a standby worker listed in it is
//! claimed with; a pool without one claims nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::DispatchError;
use super::pool::WorkerPool;
use crate::admission::config::DEFAULT_POOL;

/// The gateway's pools.
#[derive(Debug)]
pub struct Pools {
    pools: RwLock<BTreeMap<String, Arc<WorkerPool>>>,
    default: Arc<WorkerPool>,
    /// Catalog documents by pool, as the pools' QueryPools give them.
    catalogs: RwLock<BTreeMap<String, Arc<str>>>,
    /// Bumped whenever a pool is added or a catalog changes.
    changed: watch::Sender<u64>,
}

impl Pools {
    /// Empty pools named `names`. The default pool is the one named [`DEFAULT_POOL`] if any,
    /// else the first name; with no names, a default pool alone.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Arc<Self> {
        let pools: BTreeMap<String, Arc<WorkerPool>> = names
            .into_iter()
            .map(|name| (name.to_owned(), WorkerPool::new(name)))
            .collect();
        Self::from_pools(pools.into_values())
    }

    /// One existing pool (e.g. the one `quiver up` supervises), which is also the default.
    pub fn single(pool: Arc<WorkerPool>) -> Arc<Self> {
        Self::from_pools([pool])
    }

    fn from_pools(pools: impl IntoIterator<Item = Arc<WorkerPool>>) -> Arc<Self> {
        let mut pools: BTreeMap<String, Arc<WorkerPool>> = pools
            .into_iter()
            .map(|p| (p.name().to_owned(), p))
            .collect();
        if pools.is_empty() {
            pools.insert(DEFAULT_POOL.to_owned(), WorkerPool::new(DEFAULT_POOL));
        }
        let default = pools
            .get(DEFAULT_POOL)
            .or_else(|| pools.values().next())
            .expect("at least one pool")
            .clone();
        Arc::new(Self {
            pools: RwLock::new(pools),
            default,
            catalogs: RwLock::default(),
            changed: watch::channel(0).0,
        })
    }

    /// The pool named `name`.
    pub fn get(&self, name: &str) -> Result<Arc<WorkerPool>, DispatchError> {
        let pools = self.pools.read().expect("pools lock");
        pools
            .get(name)
            .cloned()
            .ok_or_else(|| DispatchError::UnknownPool {
                pool: name.to_owned(),
                known: pools
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The pool named `name`, added (empty) if the gateway does not serve it yet.
    pub fn ensure(&self, name: &str) -> Arc<WorkerPool> {
        let pool = {
            let mut pools = self.pools.write().expect("pools lock");
            if let Some(pool) = pools.get(name) {
                return pool.clone();
            }
            let pool = WorkerPool::new(name);
            pools.insert(name.to_owned(), pool.clone());
            pool
        };
        tracing::info!(pool = %name, "serving a new pool");
        self.notify();
        pool
    }

    /// Sets (or with `None` forgets) the catalog document standby workers of `pool` are claimed
    /// with.
    pub fn set_catalog(&self, pool: &str, document: Option<String>) {
        let changed = {
            let mut catalogs = self.catalogs.write().expect("catalogs lock");
            match document {
                Some(document) if catalogs.get(pool).is_none_or(|d| **d != *document) => {
                    catalogs.insert(pool.to_owned(), document.into());
                    true
                }
                Some(_) => false,
                None => catalogs.remove(pool).is_some(),
            }
        };
        if changed {
            self.notify();
        }
    }

    /// The catalog document of `pool`, if known.
    pub fn catalog(&self, pool: &str) -> Option<Arc<str>> {
        self.catalogs
            .read()
            .expect("catalogs lock")
            .get(pool)
            .cloned()
    }

    /// The pools that have a catalog document.
    pub fn with_catalogs(&self) -> BTreeSet<String> {
        self.catalogs
            .read()
            .expect("catalogs lock")
            .keys()
            .cloned()
            .collect()
    }

    /// The pool for calls that belong to no group: [`DEFAULT_POOL`] if served, else the first.
    pub fn default_pool(&self) -> &Arc<WorkerPool> {
        &self.default
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.pools
            .read()
            .expect("pools lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Every pool, sorted by name.
    pub fn all(&self) -> Vec<Arc<WorkerPool>> {
        self.pools
            .read()
            .expect("pools lock")
            .values()
            .cloned()
            .collect()
    }

    /// A receiver that changes whenever a pool is added or a catalog document changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Runs `task` for every pool now and for every pool added later, for as long as the
    /// returned future runs (dropping it stops the tasks).
    pub async fn for_each<F, Fut>(self: Arc<Self>, task: F)
    where
        F: Fn(Arc<WorkerPool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = tokio::task::JoinSet::new();
        let mut started = BTreeSet::new();
        let mut changes = self.subscribe();
        loop {
            for pool in self.all() {
                if started.insert(pool.name().to_owned()) {
                    tasks.spawn(task(pool));
                }
            }
            // The sender lives in `self`, which this future holds: it never closes.
            let _ = changes.changed().await;
        }
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn named_pools_and_default() {
        let pools = Pools::new(["b", "a"]);
        assert_eq!(pools.names(), ["a", "b"]);
        assert_eq!(pools.default_pool().name(), "a");
        assert_eq!(pools.get("b").unwrap().name(), "b");
        let err = pools.get("c").unwrap_err().to_string();
        assert!(err.contains("\"c\"") && err.contains("a, b"), "{err}");

        let pools = Pools::new(["x", DEFAULT_POOL]);
        assert_eq!(pools.default_pool().name(), DEFAULT_POOL);
        assert_eq!(Pools::new(Vec::<&str>::new()).names(), [DEFAULT_POOL]);
    }

    #[tokio::test]
    async fn pools_keep_their_workers_apart() {
        let pools = Pools::new(["a", "b"]);
        pools.get("a").unwrap().add("127.0.0.1:1").unwrap();
        assert_eq!(pools.get("a").unwrap().workers().len(), 1);
        assert!(pools.get("b").unwrap().workers().is_empty());
    }

    #[tokio::test]
    async fn pools_grow_while_running_and_keep_their_identity() {
        let pools = Pools::new(["a"]);
        let mut changes = pools.subscribe();
        let a = pools.get("a").unwrap();
        assert!(
            Arc::ptr_eq(&pools.ensure("a"), &a),
            "an existing pool is kept"
        );
        assert!(!changes.has_changed().unwrap());
        let b = pools.ensure("b");
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert_eq!(pools.names(), ["a", "b"]);
        assert!(Arc::ptr_eq(&pools.get("b").unwrap(), &b));
        assert_eq!(
            pools.default_pool().name(),
            "a",
            "the default is fixed at start"
        );

        assert_eq!(pools.catalog("b"), None);
        pools.set_catalog("b", Some("{}".into()));
        assert_eq!(pools.catalog("b").as_deref(), Some("{}"));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        pools.set_catalog("b", Some("{}".into()));
        assert!(
            !changes.has_changed().unwrap(),
            "the same document is no change"
        );
        assert_eq!(pools.with_catalogs(), BTreeSet::from(["b".to_owned()]));
        pools.set_catalog("b", None);
        assert_eq!(pools.catalog("b"), None);
        assert!(changes.has_changed().unwrap());
    }

    #[tokio::test]
    async fn for_each_runs_for_pools_added_later() {
        let pools = Pools::new(["a"]);
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let each = tokio::spawn(pools.clone().for_each(move |pool| {
            let seen_tx = seen_tx.clone();
            async move {
                let _ = seen_tx.send(pool.name().to_owned());
            }
        }));
        assert_eq!(seen.recv().await.unwrap(), "a");
        pools.ensure("b");
        assert_eq!(seen.recv().await.unwrap(), "b");
        pools.ensure("a");
        pools.set_catalog("a", Some("{}".into()));
        pools.ensure("c");
        assert_eq!(seen.recv().await.unwrap(), "c", "each pool once");
        each.abort();
    }
}
