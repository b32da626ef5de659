//! `quiver-operator run`: the controller, the demand loop, leader election and the admin port,
//! assembled.
//!
//! ```text
//!  admin server (/healthz, /metrics) ── always, so probes pass while following
//!  [leader election: wait for the Lease; renew it, or step down within the renew deadline]
//!                                        ──► Controller(QueryPools, owned objects)
//!                                        └─► demand loop (when a gateway URL is set), fed by
//!                                            a watch of the gateway Service's EndpointSlices
//!  shutdown signal ─► controller drains its queue ─► Lease released
//! ```

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::Controller;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::demand::{self, Gateways, Poller};
use super::leader::{LeaseLock, Timing};
use super::resources::{CLAIMED_LABEL, MANAGER};
use super::{Context, error_policy, reconcile};
use crate::cli::{GatewayArgs, RunArgs};
use crate::controller::resources::GatewayPeer;
use crate::crd::QueryPool;
use crate::metrics::Metrics;

/// Runs the operator until `shutdown` completes or the Lease is lost.
pub async fn run(
    args: RunArgs,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    // Settings first: a bad one fails before anything starts.
    let timing = Timing::new(
        args.leader.lease_duration,
        args.leader.lease_renew_deadline,
        args.leader.lease_retry_period,
    )?;
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let admin_task = tokio::spawn(crate::admin::serve(admin, metrics.clone()));

    let identity = args.leader.pod_name.clone().unwrap_or_else(hostname);
    let lock = if args.leader.leader_election {
        let namespace = args
            .leader
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let api: Api<Lease> = Api::namespaced(client.clone(), &namespace);
        let lock = LeaseLock::new(api, &args.leader.lease_name, &identity, timing);
        lock.acquire().await;
        Some(lock)
    } else {
        None
    };
    metrics.set_leader(true);

    let gateway = args.gateway.peer();
    info!(
        ?gateway,
        "workers admit Flight connections from the gateway pods only"
    );
    let ctx = Arc::new(
        Context::new(client.clone(), Some(identity), metrics)
            .with_gateway(gateway)
            .with_network_policies(args.gateway.worker_network_policies),
    );
    let (pools, owned) = match &args.watch_namespace {
        Some(ns) => (
            Api::<QueryPool>::namespaced(client.clone(), ns),
            Some(ns.clone()),
        ),
        None => (Api::<QueryPool>::all(client.clone()), None),
    };
    let api = |_: &()| owned.clone();
    // Only the objects the operator made: a cluster-wide watch of every ConfigMap would cost
    // memory for nothing.
    let mine =
        || watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let controller = Controller::new(pools, watcher::Config::default())
        .owns(namespaced_or_all::<Deployment>(&client, api(&())), mine())
        .owns(namespaced_or_all::<Service>(&client, api(&())), mine())
        .owns(
            namespaced_or_all::<PodDisruptionBudget>(&client, api(&())),
            mine(),
        )
        .owns(
            namespaced_or_all::<NetworkPolicy>(&client, api(&())),
            mine(),
        )
        .owns(namespaced_or_all::<ConfigMap>(&client, api(&())), mine())
        // Workers claimed from a standby pool are the pool's own pods: hear of them going.
        .owns(
            namespaced_or_all::<Pod>(&client, api(&())),
            watcher::Config::default().labels(&format!("{CLAIMED_LABEL}=true")),
        );

    let mut demand_tasks = Vec::new();
    match &args.demand.gateway_admin_url {
        Some(url) => {
            let gateways = Gateways::from_url(url).map_err(anyhow::Error::msg)?;
            info!(?gateways, interval = ?args.demand.demand_poll_interval, "polling demand");
            let (targets, watch) = gateways.discover(client.clone());
            demand_tasks.extend(watch.map(tokio::spawn));
            let poller = Poller::new(targets, args.demand.demand_timeout);
            demand_tasks.push(tokio::spawn(demand::run(
                ctx.clone(),
                controller.store(),
                poller,
                args.demand.demand_poll_interval,
            )));
        }
        None => {
            warn!("no gateway admin URL: autoscaled pools stay at minReplicas + warmReplicas");
        }
    }

    let controller = controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "controller");
            }
        });
    let outcome = match &lock {
        Some(lock) => tokio::select! {
            () = controller => Ok(()),
            lost = lock.hold() => Err(anyhow::Error::new(lost)),
        },
        None => {
            controller.await;
            Ok(())
        }
    };
    for task in demand_tasks {
        task.abort();
    }
    if outcome.is_ok()
        && let Some(lock) = &lock
    {
        lock.release().await;
    }
    admin_task.abort();
    info!("stopped");
    outcome
}

fn namespaced_or_all<K>(client: &Client, namespace: Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), &ns),
        None => Api::all(client.clone()),
    }
}

/// The pod name when QUIVER_POD_NAME is not set: the hostname (a pod's hostname is its name).
fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "quiver-operator".into())
}

impl GatewayArgs {
    /// The peer the workers' NetworkPolicies admit.
    pub fn peer(&self) -> GatewayPeer {
        GatewayPeer {
            pod_labels: self.gateway_pod_labels.clone(),
            namespace: self.gateway_namespace.clone().filter(|ns| !ns.is_empty()),
        }
    }
}
