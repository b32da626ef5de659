//! Kubernetes discovery: keeps each pool's workers equal to the ready, not terminating endpoints
//! of the pool's headless Service (which the operator names after the pool).
//!
//! ```text
//!  watch the namespace's EndpointSlices ──► reflector store ─┐ on every slice event, and on
//!  pools added while running (QueryPools) ───────────────────┤ every pool added
//!      ──► ready_workers (pure: slices → worker URLs of the pools served now)
//!      ──► WorkerPool::set_endpoints
//! ```
//!
//! The watch is not limited to the pools' Services by a label selector, because pools are
//! added while it runs; slices of other Services are filtered out when applied.
//!
//! A pod that starts terminating is marked so in its slice before it gets SIGTERM's drain, so
//! the gateway drops it on that update, without waiting for its health stream to say so. A
//! worker that is listed still takes queries only once its own health stream reports SERVING.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector;
use kube::runtime::watcher::{self, Event};

use super::registry::Pools;

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The worker port's name in the pool Service (as the operator creates it).
const WORKER_PORT_NAME: &str = "flight";
/// The worker port when a slice does not say.
const DEFAULT_WORKER_PORT: i32 = 50051;

/// Worker URLs per pool from the slices now: endpoints whose `ready` condition is not false and
/// which are not terminating. Every pool in `pools` has an entry, empty when its Service has no
/// such endpoint (or no slice), so a pool whose workers all go is emptied.
pub fn ready_workers<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    pools: &[&str],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = pools
        .iter()
        .map(|p| ((*p).to_owned(), BTreeSet::new()))
        .collect();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let Some(workers) = out.get_mut(service) else {
            continue;
        };
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = match ports {
            [only] => only.port,
            _ => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(WORKER_PORT_NAME))
                .and_then(|p| p.port),
        }
        .unwrap_or(DEFAULT_WORKER_PORT);
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            // Kubernetes: an unknown `ready` is to be read as ready.
            let ready = conditions.and_then(|c| c.ready) != Some(false);
            let terminating = conditions.and_then(|c| c.terminating) == Some(true);
            if !ready || terminating {
                continue;
            }
            // The addresses of one endpoint are one pod; the first is enough.
            if let Some(address) = endpoint.addresses.first() {
                let host = if address.contains(':') {
                    format!("[{address}]")
                } else {
                    address.clone()
                };
                workers.insert(format!("http://{host}:{port}"));
            }
        }
    }
    out
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// No Kubernetes client configuration (in-cluster or kubeconfig). The cause is printed
    /// as the error's source, not repeated in the message.
    #[error("cannot configure the Kubernetes client for --discovery kubernetes")]
    Client(#[source] Box<kube::Error>),
}

/// A Kubernetes client and the namespace to watch: `namespace`, else the client's default (the
/// service account's namespace in a pod).
pub async fn connect(namespace: Option<String>) -> Result<(kube::Client, String), DiscoveryError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| DiscoveryError::Client(Box::new(e)))?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    Ok((client, namespace))
}

/// Watches the Services' EndpointSlices in `namespace` for as long as the task runs, retrying
/// the API with backoff.
pub async fn run(client: kube::Client, namespace: &str, pools: Arc<Pools>) {
    let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
    tracing::info!(%namespace, pools = ?pools.names(), "discovering workers from EndpointSlices");
    // Every slice of a Service; which Services are pools is decided when applying.
    let config = watcher::Config::default().labels(SERVICE_NAME_LABEL);
    let events = watcher::watcher(api, config);
    follow(events.default_backoff(), &pools).await;
}

/// Applies a watch stream of EndpointSlices to the pools, on each event and whenever a pool is
/// added. A (re)list is applied once complete, so a restart of the watch never empties a pool
/// for a moment. Ends with the stream.
pub async fn follow(
    events: impl Stream<Item = Result<Event<EndpointSlice>, watcher::Error>>,
    pools: &Pools,
) {
    let (store, mut writer) = reflector::store::<EndpointSlice>();
    let mut events = std::pin::pin!(events);
    let mut added = pools.subscribe();
    let mut listed = false;
    loop {
        tokio::select! {
            event = events.next() => {
                let event = match event {
                    None => return,
                    Some(Ok(event)) => event,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching EndpointSlices failed; retrying");
                        continue;
                    }
                };
                writer.apply_watcher_event(&event);
                match event {
                    Event::Init | Event::InitApply(_) => continue,
                    Event::InitDone => listed = true,
                    Event::Apply(_) | Event::Delete(_) => {}
                }
            }
            // The sender lives in `pools`, borrowed for this whole call: it never closes.
            _ = added.changed() => {
                if !listed {
                    continue;
                }
            }
        }
        let names = pools.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let state = store.state();
        for (pool, workers) in ready_workers(state.iter().map(|s| &**s), &names) {
            if let Ok(pool) = pools.get(&pool) {
                pool.set_endpoints(workers.iter().map(String::as_str));
            }
        }
    }
}

#[cfg(test)]
mod tests;
