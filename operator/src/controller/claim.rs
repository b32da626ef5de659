//! Claiming standby workers into a pool, and letting them go.
//!
//! ```text
//!  Standby pool "s" (Deployment s: `quiver worker --standby`, ready = warm and claimable)
//!      │ pool "p" needs n more workers: claim = min(n, ready standby pods)
//!      ▼
//!  relabel pod: quiver.dev/pool=p, quiver.dev/claimed=true, owner = QueryPool p
//!      ├─► it leaves s's ReplicaSet selector: the ReplicaSet starts a replacement (refill)
//!      └─► it enters p's Service: the gateway sees a claimable worker in p's EndpointSlices
//!          and sends it p's catalog (`quiver.Claim`); it serves once that catalog is warm
//!  p shrinks, or p's catalog changes: claimed pods are deleted first (they drain on SIGTERM)
//! ```
//!
//! The operator only moves pods; the claim that loads the catalog is the gateway's, which
//! holds the key that workers accept actions from. A relabel carries the pod's
//! resourceVersion, so two pools reconciled at once never take the same pod.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info};

use super::Error;
use super::demand::DELETION_COST;
use super::resources::{self, CATALOG_HASH_ANNOTATION, CLAIMED_LABEL};
use crate::crd::{POOL_LABEL, QueryPool};

/// The claimed pods of `pool` that are not terminating.
pub async fn claimed_pods(client: &Client, ns: &str, pool: &str) -> Result<Vec<Pod>, Error> {
    let selector = format!("{POOL_LABEL}={pool},{CLAIMED_LABEL}=true");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!("list claimed pods of {pool}")))?;
    Ok(list.items.into_iter().filter(live).collect())
}

/// The standby pool's pods that may be claimed now: ready (warm), not terminating, not
/// claimed; oldest first, so the longest-warm go first.
pub async fn claimable(client: &Client, ns: &str, standby: &str) -> Result<Vec<Pod>, Error> {
    let selector = resources::selector_string(standby);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!("list standby pods of {standby}")))?;
    let mut ready: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| live(p) && is_ready(p) && !p.labels().contains_key(CLAIMED_LABEL))
        .collect();
    ready.sort_by(|a, b| {
        (a.creation_timestamp(), a.name_any()).cmp(&(b.creation_timestamp(), b.name_any()))
    });
    Ok(ready)
}

/// Moves up to `wanted` of `candidates` into `pool`; returns the moved pods as the relabel
/// left them. A pod changed since it was listed (another pool took it, or it started
/// terminating) is skipped.
pub async fn claim(
    client: &Client,
    pool: &QueryPool,
    candidates: &[Pod],
    wanted: u32,
    catalog_hash: &str,
) -> Result<Vec<Pod>, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let wanted = usize::try_from(wanted).unwrap_or(usize::MAX);
    let mut moved = Vec::new();
    for pod in candidates {
        if moved.len() >= wanted {
            break;
        }
        let name = pod.name_any();
        let patch = resources::claim_patch(pool, pod, catalog_hash);
        match pods
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(pod) => {
                moved.push(pod);
                info!(namespace = %ns, pool = %pool.name_any(), pod = %name, "claimed a standby worker");
            }
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                debug!(pod = %name, "standby pod changed while claiming it; skipped");
            }
            Err(e) => return Err(Error::kube(format!("claim pod {name}"))(e)),
        }
    }
    Ok(moved)
}

/// Claimed pods to let go, in order: those loaded with another catalog than `catalog_hash`,
/// then, while more than `keep` remain, the not ready and the least busy (by deletion cost).
pub fn to_release(claimed: &[Pod], keep: u32, catalog_hash: &str) -> Vec<String> {
    let (current, stale): (Vec<&Pod>, Vec<&Pod>) = claimed.iter().partition(|p| {
        p.annotations()
            .get(CATALOG_HASH_ANNOTATION)
            .map(String::as_str)
            == Some(catalog_hash)
    });
    let mut out: Vec<String> = stale.iter().map(|p| p.name_any()).collect();
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    if current.len() > keep {
        let mut current = current;
        current.sort_by_key(|p| {
            let cost = p
                .annotations()
                .get(DELETION_COST)
                .and_then(|c| c.parse::<i64>().ok())
                .unwrap_or(0);
            (is_ready(p), cost, p.name_any())
        });
        let excess = current.len() - keep;
        out.extend(current.iter().take(excess).map(|p| p.name_any()));
    }
    out
}

/// Deletes claimed pods: each drains its queries on SIGTERM within its grace period.
pub async fn release(client: &Client, ns: &str, names: &[String]) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for name in names {
        match pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => info!(namespace = %ns, pod = %name, "released a claimed worker"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(Error::kube(format!("delete pod {name}"))(e)),
        }
    }
    Ok(())
}

/// Whether the pod's Ready condition is true.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn live(pod: &Pod) -> bool {
    pod.meta().deletion_timestamp.is_none()
}
