//! The gateway learns its pools from QueryPool objects while it runs (Kubernetes discovery only),
//! so a pool created after the gateway started gets its workers and its standby claims without
//! a restart.
//!
//! ```text
//!  watch QueryPools (quiver.dev/v1alpha1, the gateway's namespace, as DynamicObjects)
//!      ──► view (pure: object → standby pool, or query pool with its catalog document)
//!      ──► Pools::ensure(name) + Pools::set_catalog(name, document)
//! ```
//!
//! A `Standby` QueryPool serves no queries and is not a pool here. A query pool's catalog
//! document is its `spec.template.catalog` as JSON, the body a standby worker listed in the
//! pool is claimed with. A deleted QueryPool keeps its (emptied) pool, so a running admission
//! config naming it stays valid, but its catalog is forgotten, so nothing is claimed for it.
//! The objects are read as JSON, so the gateway does not depend on the operator's types.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use super::registry::Pools;

/// The QueryPool resource's group.
pub const GROUP: &str = "quiver.dev";
/// The QueryPool resource's version.
pub const VERSION: &str = "v1alpha1";
/// The QueryPool resource's kind.
pub const KIND: &str = "QueryPool";
/// The QueryPool resource's plural.
pub const PLURAL: &str = "querypools";
/// `spec.role` of a QueryPool of standby workers, which serves no queries itself.
pub const STANDBY_ROLE: &str = "Standby";

/// The QueryPool resource, for a dynamic API.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// What one QueryPool means to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolView {
    /// A pool of standby workers: not a pool queries run on.
    Standby,
    /// A pool queries run on, with the catalog document its claimed workers get (`None` when
    /// the object has no catalog object).
    Query {
        /// `spec.template.catalog` as JSON.
        catalog: Option<String>,
    },
}

/// A QueryPool's name and meaning; `None` for an object without a name.
pub fn view(object: &DynamicObject) -> Option<(String, PoolView)> {
    let name = object.metadata.name.clone()?;
    let spec = object.data.get("spec");
    let role = spec.and_then(|s| s.get("role")).and_then(|r| r.as_str());
    if role == Some(STANDBY_ROLE) {
        return Some((name, PoolView::Standby));
    }
    let catalog = spec
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("catalog"))
        .filter(|c| c.is_object())
        .map(|c| c.to_string());
    Some((name, PoolView::Query { catalog }))
}

/// Applies one QueryPool to the pools; returns its name when it is a query pool.
fn apply(pools: &Pools, object: &DynamicObject) -> Option<String> {
    match view(object)? {
        (name, PoolView::Standby) => {
            // A pool that turned standby claims nothing any more.
            pools.set_catalog(&name, None);
            None
        }
        (name, PoolView::Query { catalog }) => {
            pools.ensure(&name);
            pools.set_catalog(&name, catalog);
            Some(name)
        }
    }
}

/// Watches the QueryPools in `namespace` for as long as the task runs, retrying the API with
/// backoff.
pub async fn run(client: kube::Client, namespace: &str, pools: Arc<Pools>) {
    let resource = api_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &resource);
    tracing::info!(%namespace, "learning pools from QueryPools");
    let events = watcher::watcher(api, watcher::Config::default());
    follow(events.default_backoff(), &pools).await;
}

/// Applies a watch stream of QueryPools to the pools. Objects are applied as they arrive; once
/// a (re)list is complete, catalogs of pools it did not list (deleted while the watch was
/// down) are forgotten. Ends with the stream.
pub async fn follow(
    events: impl Stream<Item = Result<Event<DynamicObject>, watcher::Error>>,
    pools: &Pools,
) {
    let mut events = std::pin::pin!(events);
    // Query pools seen in the current (re)list, until it is complete.
    let mut listing: Option<BTreeSet<String>> = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "watching QueryPools failed; retrying");
                continue;
            }
        };
        match event {
            Event::Init => listing = Some(BTreeSet::new()),
            Event::InitApply(object) => {
                if let (Some(name), Some(listed)) = (apply(pools, &object), listing.as_mut()) {
                    listed.insert(name);
                }
            }
            Event::InitDone => {
                let listed = listing.take().unwrap_or_default();
                for gone in pools.with_catalogs().difference(&listed) {
                    pools.set_catalog(gone, None);
                }
            }
            Event::Apply(object) => {
                apply(pools, &object);
            }
            Event::Delete(object) => {
                if let Some(name) = object.metadata.name.as_deref() {
                    tracing::info!(pool = %name, "QueryPool deleted; its pool stays, emptied by discovery");
                    pools.set_catalog(name, None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
