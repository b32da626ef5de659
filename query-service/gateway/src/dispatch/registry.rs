//! The pools a gateway serves, by name. Each resource group runs on one pool, so a group bound to
//! its own pool shares no worker with the others.
//!
//! ```text
//!  --worker / --pool NAME=…  ─┐                        ┌─► WorkerPool "default"
//!  supervisor (quiver up)    ─┼─► worker sets by pool ─┼─► WorkerPool "a"
//!  EndpointSlices (k8s)      ─┘                        └─► WorkerPool "b"
//! ```
//!
//! The set of names is fixed when the gateway starts, because the admission config is checked
//! against it; the workers in each pool change as discovery reports them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::DispatchError;
use super::pool::WorkerPool;
use crate::admission::config::DEFAULT_POOL;

/// The gateway's pools.
#[derive(Debug)]
pub struct Pools {
    pools: BTreeMap<String, Arc<WorkerPool>>,
    default: Arc<WorkerPool>,
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
        Arc::new(Self { pools, default })
    }

    /// The pool named `name`.
    pub fn get(&self, name: &str) -> Result<&Arc<WorkerPool>, DispatchError> {
        self.pools
            .get(name)
            .ok_or_else(|| DispatchError::UnknownPool {
                pool: name.to_owned(),
                known: self.names().join(", "),
            })
    }

    /// The pool for calls that belong to no group: [`DEFAULT_POOL`] if served, else the first.
    pub fn default_pool(&self) -> &Arc<WorkerPool> {
        &self.default
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.pools.keys().map(String::as_str).collect()
    }

    /// Every pool, sorted by name.
    pub fn all(&self) -> Vec<Arc<WorkerPool>> {
        self.pools.values().cloned().collect()
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
}
