//! The QueryPool controller: turns each pool into its workers and keeps them at the size the
//! scaling policy decides.
//!
//! ```text
//!  watch QueryPools, owned Deployments/Services/PDBs/NetworkPolicies/ConfigMaps/claimed pods
//!      │
//!      ▼
//!  reconcile(pool) ── validate spec ──✗──► Degraded condition + Warning event (objects kept)
//!      │ ok
//!      ├─ desired = pinned replicas, the policy's size (scale.rs), or for a Standby pool
//!      │            its minimum raised by recent claims
//!      ├─ claimed pods (claim.rs): release stale and surplus ones, claim ready standby pods
//!      │                           while the pool needs more
//!      ├─ server-side apply: ConfigMap, Service, PDB, NetworkPolicy (unless turned off),
//!      │                     Deployment(replicas = desired − claimed)
//!      └─ status (patched only when it changed)
//!
//!  demand loop (demand.rs), every poll: gateways' figures ─► policy ─► on a change:
//!      deletion cost on the least busy pods (before a scale-down), then reconcile(pool)
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::crd::{QueryPool, QueryPoolStatus, Role, validate};
use crate::metrics::Metrics;

pub mod claim;
pub mod demand;
pub mod leader;
pub mod resources;
pub mod run;
pub mod scale;
pub mod status;

#[cfg(test)]
mod tests;

pub use scale::{Figures, PoolKey, Scalers};

/// Why a reconcile failed. Invalid specs are not errors: they are reported in status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the controller was doing.
        action: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The pool has no namespace (a cluster-scoped copy, which the CRD does not allow).
    #[error("QueryPool {0} has no namespace")]
    NoNamespace(String),
}

impl Error {
    fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Error::Kube {
            action,
            source: Box::new(source),
        }
    }
}

/// What reconcile and the demand loop share.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Events about pools.
    pub recorder: Recorder,
    /// Every pool's scaling state.
    pub scalers: Scalers,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Who the workers' NetworkPolicies admit.
    pub gateway: resources::GatewayPeer,
    /// Whether each pool gets a NetworkPolicy (a platform without an enforcing CNI, or with
    /// its own policies, turns them off).
    pub network_policies: bool,
    /// Consecutive failed reconciles per pool, for the retry backoff.
    failures: std::sync::Mutex<std::collections::HashMap<PoolKey, u32>>,
    /// The policy's clock: time since this instant.
    epoch: Instant,
}

impl Context {
    /// A context reporting events as `instance` (the pod name).
    pub fn new(client: Client, instance: Option<String>, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: resources::MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            scalers: Scalers::default(),
            metrics,
            gateway: resources::GatewayPeer::default(),
            network_policies: true,
            failures: Default::default(),
            epoch: Instant::now(),
        }
    }

    /// The same context with the workers admitting `gateway` (default: the chart's gateway pods
    /// in each pool's namespace).
    pub fn with_gateway(mut self, gateway: resources::GatewayPeer) -> Self {
        self.gateway = gateway;
        self
    }

    /// The same context making (`true`, the default) or not making the pools' NetworkPolicies.
    pub fn with_network_policies(mut self, on: bool) -> Self {
        self.network_policies = on;
        self
    }

    /// Monotonic time for the scaling policy.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Records an Event on a pool; a failure to record is logged, never fatal.
    pub async fn event(&self, pool: &QueryPool, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &pool.object_ref(&())).await {
            warn!(pool = %pool.name_any(), error = %e, "could not record an event");
        }
    }
}

/// Server-side applies `obj` as the operator's field manager, taking over fields others set
/// (drift repair).
async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(resources::MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(obj))
        .await
        .map_err(Error::kube(format!("apply {} {name}", K::kind(&()))))
}

/// Brings one pool's objects and status in line with its spec. Idempotent: a second run with
/// nothing changed writes the same objects and no status.
pub async fn reconcile(pool: Arc<QueryPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let result = reconcile_inner(&pool, &ctx).await;
    ctx.metrics.reconciled(result.is_ok());
    if result.is_ok() {
        let key = (pool.namespace().unwrap_or_default(), pool.name_any());
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
    result
}

async fn reconcile_inner(pool: &QueryPool, ctx: &Context) -> Result<Action, Error> {
    let name = pool.name_any();
    let ns = pool
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let key: PoolKey = (ns.clone(), name.clone());
    let pools: Api<QueryPool> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Time(Timestamp::now());
    let figures = ctx.scalers.figures(&key);

    let settings = match validate(&pool.spec) {
        Ok(settings) => settings,
        Err(e) => {
            // Keep the workers as they are: a typo must not take a serving pool down.
            let previous = pool.status.as_ref();
            let was_degraded = previous.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == status::DEGRADED && c.reason == e.reason())
            });
            let seen = status::Observed {
                generation: pool.metadata.generation,
                desired: previous.map_or(0, |s| u32::try_from(s.desired).unwrap_or(0)),
                reason: previous
                    .and_then(|s| s.last_scale_reason.clone())
                    .unwrap_or_default(),
                deployment: None,
                figures,
                degraded: Some((e.reason().into(), e.to_string())),
                now,
                selector: resources::selector_string(&name),
            };
            write_status(&pools, pool, status::status(previous, &seen)).await?;
            if !was_degraded {
                warn!(namespace = %ns, pool = %name, error = %e, "invalid QueryPool spec");
                ctx.event(pool, EventType::Warning, e.reason(), e.to_string())
                    .await;
            }
            return Ok(Action::await_change());
        }
    };

    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let current = deployments
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("get Deployment {name}")))?
        .and_then(|d| d.spec.and_then(|s| s.replicas))
        .map(|r| u32::try_from(r).unwrap_or(0));
    let (config_map, catalog_hash) = resources::catalog_config_map(pool);
    let mut claimed = match settings.role {
        Role::Pool => claim::claimed_pods(&ctx.client, &ns, &name).await?,
        Role::Standby => Vec::new(),
    };
    let running = match (current, claimed.len()) {
        (None, 0) => None,
        (current, n) => Some(current.unwrap_or(0) + u32::try_from(n).unwrap_or(u32::MAX)),
    };
    let (desired, reason) = match settings.role {
        Role::Pool => ctx.scalers.desired(&key, &settings, running, ctx.now()),
        Role::Standby if settings.autoscaling => {
            let n = ctx
                .scalers
                .standby_target(&key, &settings.standby, ctx.now());
            (
                n,
                format!(
                    "standby: {n} workers (min {}, max {}, from the claims of the last {:?})",
                    settings.standby.min, settings.standby.max, settings.standby.claim_window
                ),
            )
        }
        Role::Standby => (
            settings.pinned,
            format!(
                "pinned: spec.replicas {} (autoscaling off)",
                settings.pinned
            ),
        ),
    };
    let claimed_count = resize_claims(
        ctx,
        pool,
        &settings,
        &mut claimed,
        desired,
        running.unwrap_or(0),
        &catalog_hash,
    )
    .await?;
    // The Deployment makes up what claimed workers do not.
    let replicas = desired.saturating_sub(claimed_count);

    if settings.role == Role::Pool {
        apply(
            &Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns),
            &config_map,
        )
        .await?;
    }
    apply(
        &Api::<Service>::namespaced(ctx.client.clone(), &ns),
        &resources::service(pool),
    )
    .await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns),
        &resources::pod_disruption_budget(pool),
    )
    .await?;
    // Before the Deployment: no worker is ever up without its ingress locked down.
    let policies = Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &ns);
    if ctx.network_policies {
        apply(&policies, &resources::network_policy(pool, &ctx.gateway)).await?;
    } else if let Some(policy) = policies
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("get NetworkPolicy {name}")))?
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == pool.uid().as_ref())
        })
    {
        // Turned off after the pool was made: remove the one this pool owns, no other.
        policies
            .delete(&policy.name_any(), &Default::default())
            .await
            .map_err(Error::kube(format!("delete NetworkPolicy {name}")))?;
        info!(namespace = %ns, pool = %name, "removed the workers' NetworkPolicy");
    }
    let deployment = resources::deployment(pool, replicas, settings.drain_timeout, &catalog_hash);
    let applied = apply(&deployments, &deployment).await?;
    if current.is_none() {
        info!(namespace = %ns, pool = %name, desired, "created the workers");
        ctx.event(
            pool,
            EventType::Normal,
            "Created",
            format!("Deployment {name} with {desired} workers"),
        )
        .await;
    }
    ctx.metrics.set_desired(&ns, &name, desired);

    let deployment_status = applied.status.unwrap_or_default();
    let seen = status::Observed {
        generation: pool.metadata.generation,
        desired,
        reason,
        deployment: Some((
            deployment_status.replicas.unwrap_or(0) + count(claimed.len()),
            deployment_status.ready_replicas.unwrap_or(0)
                + count(claimed.iter().filter(|p| claim::is_ready(p)).count()),
        )),
        figures,
        degraded: ctx
            .scalers
            .demand_error()
            .filter(|_| settings.autoscaling)
            .map(|e| ("DemandUnavailable".into(), format!("holding the size: {e}"))),
        now,
        selector: resources::selector_string(&name),
    };
    write_status(&pools, pool, status::status(pool.status.as_ref(), &seen)).await?;
    Ok(match settings.role {
        // A standby pool's target follows the claims of a sliding window: look again soon.
        Role::Standby => Action::requeue(Duration::from_secs(10)),
        // The watches bring changes; the requeue is a safety net for a missed event.
        Role::Pool => Action::requeue(Duration::from_secs(300)),
    })
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Brings a pool's claimed workers in line with `desired`: releases those loaded with an old
/// catalog and those beyond `desired`, and, when the pool needs more than `running` and has a
/// standby pool, claims ready standby workers before the Deployment starts new pods. Returns
/// the claimed workers the pool keeps; `claimed` is left holding them.
async fn resize_claims(
    ctx: &Context,
    pool: &QueryPool,
    settings: &crate::crd::PoolSettings,
    claimed: &mut Vec<k8s_openapi::api::core::v1::Pod>,
    desired: u32,
    running: u32,
    catalog_hash: &str,
) -> Result<u32, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let release = claim::to_release(claimed, desired, catalog_hash);
    if !release.is_empty() {
        claim::release(&ctx.client, &ns, &release).await?;
        claimed.retain(|p| !release.contains(&p.name_any()));
    }
    let kept = u32::try_from(claimed.len()).unwrap_or(u32::MAX);
    let running = running.saturating_sub(u32::try_from(release.len()).unwrap_or(u32::MAX));
    let Some(standby) = settings.standby_pool.as_deref() else {
        return Ok(kept);
    };
    let needed = desired.saturating_sub(running);
    if needed == 0 {
        return Ok(kept);
    }
    let Some(source) = Api::<QueryPool>::namespaced(ctx.client.clone(), &ns)
        .get_opt(standby)
        .await
        .map_err(Error::kube(format!("get QueryPool {standby}")))?
    else {
        debug!(pool = %pool.name_any(), %standby, "standby pool not found; starting new pods");
        return Ok(kept);
    };
    let Ok(source_settings) = validate(&source.spec) else {
        return Ok(kept);
    };
    if source_settings.role != Role::Standby {
        debug!(pool = %pool.name_any(), %standby, "standbyPool is not a Standby pool");
        return Ok(kept);
    }
    let candidates = claim::claimable(&ctx.client, &ns, standby).await?;
    let taken = claim::claim(&ctx.client, pool, &candidates, needed, catalog_hash).await?;
    let moved = u32::try_from(taken.len()).unwrap_or(u32::MAX);
    if moved > 0 {
        ctx.scalers.record_claims(
            &(ns.clone(), standby.to_owned()),
            &source_settings.standby,
            ctx.now(),
            moved,
        );
        ctx.metrics.claimed(&ns, &pool.name_any(), moved);
        ctx.event(
            pool,
            EventType::Normal,
            "Claimed",
            format!("{moved} warm workers from standby pool {standby}"),
        )
        .await;
        // The claimed pods as the relabels left them count from here on.
        claimed.extend(taken);
    }
    Ok(u32::try_from(claimed.len()).unwrap_or(u32::MAX))
}

/// Patches the status subresource when it changed. Server-side apply of the status alone, so
/// other writers' fields (e.g. an HPA reading the scale subresource) are left alone.
async fn write_status(
    api: &Api<QueryPool>,
    pool: &QueryPool,
    new: QueryPoolStatus,
) -> Result<(), Error> {
    if pool.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let name = pool.name_any();
    let patch = serde_json::json!({
        "apiVersion": "quiver.dev/v1alpha1",
        "kind": "QueryPool",
        "status": new,
    });
    let params = PatchParams::apply(resources::MANAGER).force();
    api.patch_status(&name, &params, &Patch::Apply(&patch))
        .await
        .map_err(Error::kube(format!("patch status of QueryPool {name}")))?;
    Ok(())
}

/// Retries a failed reconcile after 5 s, doubling per consecutive failure up to 5 min: API
/// errors are mostly transient (a conflict, a restarting server), but a persistent one (say,
/// a webhook rejecting the Deployment) must not hammer the API server.
pub fn error_policy(pool: Arc<QueryPool>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = (pool.namespace().unwrap_or_default(), pool.name_any());
    let failures = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = retry_delay(failures);
    warn!(pool = %pool.name_any(), error = %error, failures, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// Delay before retry number `failures` (1-based).
pub fn retry_delay(failures: u32) -> Duration {
    let base = Duration::from_secs(5);
    base.saturating_mul(1 << failures.saturating_sub(1).min(6))
        .min(Duration::from_secs(300))
}
