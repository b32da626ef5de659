//! Reconcile: owned objects, the workers' NetworkPolicy, idempotence, status, drift, deletion,
//! invalid specs, pinning and the scale-down order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Service};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use kube_fake_client::{ClientBuilder, interceptor};
use serde_json::json;

use crate::controller::demand::{self, DELETION_COST, DemandReport, PoolDemand, WorkerLoad};
use crate::controller::resources::GatewayPeer;
use crate::controller::{Context, reconcile, status};
use crate::crd::{QueryPool, QueryPoolSpec, QueryPoolStatus};
use crate::metrics::Metrics;

const NS: &str = "analytics";

pub(super) fn pool(name: &str, spec: serde_json::Value) -> QueryPool {
    let mut base = json!({
        "minReplicas": 1,
        "maxReplicas": 5,
        "warmReplicas": 1,
        "targetConcurrency": 2,
        "drainTimeout": "45s",
        "template": {
            "image": "ghcr.io/quiver-dev/quiver:0.1.0",
            "ticketKeySecret": {"name": "quiver-ticket-key"},
            "catalog": {"tables": [{"name": "lineitem", "location": "s3://tpch/lineitem/", "hot": true}]}
        }
    });
    merge(&mut base, spec);
    let spec: QueryPoolSpec = serde_json::from_value(base).expect("spec");
    let mut pool = QueryPool::new(name, spec);
    pool.metadata.namespace = Some(NS.into());
    pool
}

fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

async fn client_with(objects: Vec<QueryPool>, builder: ClientBuilder) -> Client {
    let mut builder = builder
        .with_resource::<QueryPool>()
        .with_status_subresource::<QueryPool>();
    for o in objects {
        builder = builder.with_object(o);
    }
    builder.build().await.expect("fake client")
}

pub(super) async fn setup(pools: Vec<QueryPool>) -> (Client, Arc<Context>) {
    let client = client_with(pools, ClientBuilder::new()).await;
    let ctx = Arc::new(Context::new(
        client.clone(),
        Some("operator-0".into()),
        Arc::new(Metrics::default()),
    ));
    (client, ctx)
}

pub(super) async fn get_pool(client: &Client, name: &str) -> Arc<QueryPool> {
    Arc::new(
        Api::<QueryPool>::namespaced(client.clone(), NS)
            .get(name)
            .await
            .unwrap(),
    )
}

pub(super) async fn deployment(client: &Client, name: &str) -> Deployment {
    Api::<Deployment>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap()
}

/// Whether the object `name` of kind `K` exists in the test namespace.
pub(super) async fn exists<K>(client: &Client, name: &str) -> bool
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), NS)
        .get_opt(name)
        .await
        .unwrap()
        .is_some()
}

/// Whether an Event with `reason` was recorded in the test namespace.
pub(super) async fn has_event(client: &Client, reason: &str) -> bool {
    Api::<K8sEvent>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| e.reason.as_deref() == Some(reason))
}

pub(super) fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().unwrap().replicas.unwrap()
}

fn condition<'a>(
    status: &'a QueryPoolStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

/// The fields reconcile owns, without the server's bookkeeping.
fn owned_view<K: Resource + serde::Serialize>(obj: &K) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).unwrap();
    let meta = v["metadata"].as_object_mut().unwrap();
    for key in ["resourceVersion", "managedFields", "generation"] {
        meta.remove(key);
    }
    v
}

#[tokio::test]
async fn reconcile_creates_owned_objects() {
    let (client, ctx) = setup(vec![pool("default", json!({}))]).await;
    let pool = get_pool(&client, "default").await;
    reconcile(pool.clone(), ctx.clone()).await.unwrap();

    let uid = pool.uid().unwrap();
    let owned_by_pool = |refs: Option<&Vec<_>>| {
        let refs: &Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> =
            refs.unwrap();
        refs.len() == 1
            && refs[0].uid == uid
            && refs[0].controller == Some(true)
            && refs[0].kind == "QueryPool"
    };
    let d = deployment(&client, "default").await;
    assert!(owned_by_pool(d.metadata.owner_references.as_ref()));
    assert_eq!(
        replicas(&d),
        1,
        "no demand: the one warm worker, which minReplicas 1 covers"
    );
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(45 + 10),
        "drain + margin"
    );
    let c = &pod.containers[0];
    assert_eq!(c.args.as_deref(), Some(&["worker".to_string()][..]));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .grpc
            .as_ref()
            .unwrap()
            .port,
        50051
    );
    let env: BTreeMap<_, _> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.clone(), e.clone()))
        .collect();
    assert_eq!(env["QUIVER_LISTEN"].value.as_deref(), Some("0.0.0.0:50051"));
    assert_eq!(env["QUIVER_DRAIN_TIMEOUT"].value.as_deref(), Some("45s"));
    let key = env["QUIVER_TICKET_KEY"]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (key.name.as_str(), key.key.as_str()),
        ("quiver-ticket-key", "ticket-key")
    );

    let svc = Api::<Service>::namespaced(client.clone(), NS)
        .get("default")
        .await
        .unwrap();
    assert!(owned_by_pool(svc.metadata.owner_references.as_ref()));
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("flight"), 50051));
    let labels = svc.labels();
    assert_eq!(labels["quiver.dev/pool"], "default");
    assert_eq!(labels["app.kubernetes.io/name"], "quiver");
    assert_eq!(labels["app.kubernetes.io/component"], "worker");

    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), NS)
        .get("default")
        .await
        .unwrap();
    assert!(owned_by_pool(pdb.metadata.owner_references.as_ref()));
    let cm = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get("default-catalog")
        .await
        .unwrap();
    assert!(owned_by_pool(cm.metadata.owner_references.as_ref()));
    let catalog: serde_json::Value =
        serde_yaml::from_str(&cm.data.unwrap()["catalog.yaml"]).unwrap();
    assert_eq!(
        catalog,
        json!({"catalog": "quiver", "schema": "public",
               "tables": [{"name": "lineitem", "location": "s3://tpch/lineitem/", "hot": true}]})
    );

    assert!(has_event(&client, "Created").await);
}

/// The pool's NetworkPolicy: its workers (the Deployment's selector) take Flight connections from
/// the gateway's pods only.
async fn network_policy_spec(
    client: &Client,
) -> k8s_openapi::api::networking::v1::NetworkPolicySpec {
    let np = Api::<NetworkPolicy>::namespaced(client.clone(), NS)
        .get("default")
        .await
        .unwrap();
    let pool = get_pool(client, "default").await;
    let owner = &np.metadata.owner_references.as_ref().unwrap()[..];
    assert_eq!(owner.len(), 1);
    assert_eq!(
        (
            owner[0].kind.as_str(),
            owner[0].uid.as_str(),
            owner[0].controller
        ),
        ("QueryPool", pool.uid().unwrap().as_str(), Some(true))
    );
    assert_eq!(
        np.labels()["app.kubernetes.io/managed-by"],
        "quiver-operator"
    );
    let spec = np.spec.unwrap();
    let workers = deployment(client, "default").await.spec.unwrap().selector;
    assert_eq!(spec.pod_selector.as_ref(), Some(&workers));
    assert_eq!(
        spec.pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["quiver.dev/pool"],
        "default"
    );
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_string()][..])
    );
    assert!(spec.egress.is_none(), "egress is left alone");
    spec
}

#[tokio::test]
async fn network_policy_admits_only_the_gateway_on_the_flight_port() {
    let (client, ctx) = setup(vec![pool("default", json!({}))]).await;
    reconcile(get_pool(&client, "default").await, ctx.clone())
        .await
        .unwrap();
    let spec = network_policy_spec(&client).await;
    assert_eq!(
        serde_json::to_value(&spec.ingress).unwrap(),
        json!([{
            "ports": [{"port": 50051, "protocol": "TCP"}],
            "from": [{"podSelector": {"matchLabels": {
                "app.kubernetes.io/name": "quiver",
                "app.kubernetes.io/component": "gateway",
            }}}],
        }]),
        "one rule: Flight from the chart's gateway pods in the pool's namespace; nothing else"
    );

    // A gateway in another namespace, with its release's labels: one peer with both selectors
    // (the gateway's pods in that namespace, not every pod there).
    let (client, _) = setup(vec![pool("default", json!({}))]).await;
    let gateway = GatewayPeer {
        pod_labels: BTreeMap::from([
            ("app.kubernetes.io/name".into(), "quiver".into()),
            ("app.kubernetes.io/instance".into(), "edge".into()),
            ("app.kubernetes.io/component".into(), "gateway".into()),
        ]),
        namespace: Some("quiver-system".into()),
    };
    let ctx = Arc::new(
        Context::new(client.clone(), None, Arc::new(Metrics::default())).with_gateway(gateway),
    );
    reconcile(get_pool(&client, "default").await, ctx)
        .await
        .unwrap();
    let spec = network_policy_spec(&client).await;
    let ingress = spec.ingress.unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        serde_json::to_value(&ingress[0].from).unwrap(),
        json!([{
            "podSelector": {"matchLabels": {
                "app.kubernetes.io/name": "quiver",
                "app.kubernetes.io/instance": "edge",
                "app.kubernetes.io/component": "gateway",
            }},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "quiver-system"}},
        }])
    );
}

#[tokio::test]
async fn network_policies_can_be_left_to_the_cluster() {
    let (client, ctx) = setup(vec![pool("default", json!({}))]).await;
    reconcile(get_pool(&client, "default").await, ctx)
        .await
        .unwrap();
    assert!(exists::<NetworkPolicy>(&client, "default").await);

    // Turned off: the pool's policy goes, its workers stay.
    let off = |client: &Client| {
        Arc::new(
            Context::new(client.clone(), None, Arc::new(Metrics::default()))
                .with_network_policies(false),
        )
    };
    reconcile(get_pool(&client, "default").await, off(&client))
        .await
        .unwrap();
    assert!(!exists::<NetworkPolicy>(&client, "default").await);
    assert!(exists::<Deployment>(&client, "default").await);

    // A new pool gets none, and a policy of its name that the cluster's owners wrote (not
    // owned by the pool) is theirs: it stays.
    let (client, _) = setup(vec![pool("fresh", json!({}))]).await;
    let mut theirs = NetworkPolicy::default();
    theirs.metadata.name = Some("fresh".into());
    Api::<NetworkPolicy>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    reconcile(get_pool(&client, "fresh").await, off(&client))
        .await
        .unwrap();
    let kept = Api::<NetworkPolicy>::namespaced(client.clone(), NS)
        .get("fresh")
        .await
        .unwrap();
    assert!(kept.owner_references().is_empty() && kept.spec.is_none());
    assert!(exists::<Deployment>(&client, "fresh").await);
}

#[tokio::test]
async fn reconcile_twice_changes_nothing() {
    let (client, ctx) = setup(vec![pool("default", json!({}))]).await;
    reconcile(get_pool(&client, "default").await, ctx.clone())
        .await
        .unwrap();
    let pool_after_first = get_pool(&client, "default").await;
    let first = (
        owned_view(&deployment(&client, "default").await),
        owned_view(
            &Api::<Service>::namespaced(client.clone(), NS)
                .get("default")
                .await
                .unwrap(),
        ),
        owned_view(
            &Api::<ConfigMap>::namespaced(client.clone(), NS)
                .get("default-catalog")
                .await
                .unwrap(),
        ),
        owned_view(
            &Api::<NetworkPolicy>::namespaced(client.clone(), NS)
                .get("default")
                .await
                .unwrap(),
        ),
    );
    reconcile(pool_after_first.clone(), ctx.clone())
        .await
        .unwrap();
    let second = (
        owned_view(&deployment(&client, "default").await),
        owned_view(
            &Api::<Service>::namespaced(client.clone(), NS)
                .get("default")
                .await
                .unwrap(),
        ),
        owned_view(
            &Api::<ConfigMap>::namespaced(client.clone(), NS)
                .get("default-catalog")
                .await
                .unwrap(),
        ),
        owned_view(
            &Api::<NetworkPolicy>::namespaced(client.clone(), NS)
                .get("default")
                .await
                .unwrap(),
        ),
    );
    assert_eq!(first, second);
    let pool_after_second = get_pool(&client, "default").await;
    assert_eq!(
        pool_after_first.resource_version(),
        pool_after_second.resource_version(),
        "an unchanged status is not written again"
    );
}

#[tokio::test]
async fn status_reports_size_selector_and_conditions() {
    let (client, ctx) = setup(vec![pool("default", json!({}))]).await;
    reconcile(get_pool(&client, "default").await, ctx.clone())
        .await
        .unwrap();
    let pool = get_pool(&client, "default").await;
    let status = pool.status.clone().unwrap();
    assert_eq!(status.desired, 1);
    assert_eq!(status.observed_generation, pool.metadata.generation);
    assert_eq!(
        status.selector.as_deref(),
        Some(
            "app.kubernetes.io/component=worker,app.kubernetes.io/name=quiver,quiver.dev/pool=default"
        )
    );
    assert!(status.last_scale_time.is_some());
    assert!(
        status
            .last_scale_reason
            .as_deref()
            .unwrap()
            .starts_with("initial")
    );
    assert_eq!(condition(&status, status::READY).reason, "WorkersStarting");
    assert_eq!(condition(&status, status::SCALING).reason, "ScalingUp");
    assert_eq!(condition(&status, status::DEGRADED).status, "False");

    // The Deployment reports its pods ready: the pool is Ready and Stable.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let ready = json!({"status": {"replicas": 1, "readyReplicas": 1}});
    deployments
        .patch_status("default", &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .unwrap();
    reconcile(pool.clone(), ctx.clone()).await.unwrap();
    let status = get_pool(&client, "default").await.status.clone().unwrap();
    assert_eq!((status.replicas, status.ready), (1, 1));
    assert_eq!(condition(&status, status::READY).status, "True");
    assert_eq!(condition(&status, status::SCALING).reason, "Stable");
}

#[tokio::test]
async fn drift_is_repaired() {
    let (client, ctx) = setup(vec![pool("default", json!({}))]).await;
    reconcile(get_pool(&client, "default").await, ctx.clone())
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let drift = json!({"spec": {"replicas": 9, "template": {"spec": {"terminationGracePeriodSeconds": 1}}}});
    deployments
        .patch("default", &PatchParams::default(), &Patch::Merge(&drift))
        .await
        .unwrap();
    reconcile(get_pool(&client, "default").await, ctx.clone())
        .await
        .unwrap();
    let d = deployment(&client, "default").await;
    assert_eq!(replicas(&d), 1);
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.termination_grace_period_seconds, Some(55));
}

#[tokio::test]
async fn deleting_the_pool_deletes_its_objects() {
    let (client, ctx) = setup(vec![pool("default", json!({}))]).await;
    reconcile(get_pool(&client, "default").await, ctx.clone())
        .await
        .unwrap();
    assert!(exists::<NetworkPolicy>(&client, "default").await);
    Api::<QueryPool>::namespaced(client.clone(), NS)
        .delete("default", &DeleteParams::default())
        .await
        .unwrap();
    // The fake collects dependents by owner reference, as the garbage collector would.
    assert!(!exists::<Deployment>(&client, "default").await);
    assert!(!exists::<Service>(&client, "default").await);
    assert!(!exists::<ConfigMap>(&client, "default-catalog").await);
    assert!(!exists::<PodDisruptionBudget>(&client, "default").await);
    assert!(!exists::<NetworkPolicy>(&client, "default").await);
}

#[tokio::test]
async fn invalid_spec_sets_degraded_and_touches_nothing() {
    let bad = pool("broken", json!({"minReplicas": 6, "maxReplicas": 2}));
    let (client, ctx) = setup(vec![bad]).await;
    reconcile(get_pool(&client, "broken").await, ctx.clone())
        .await
        .unwrap();
    let status = get_pool(&client, "broken").await.status.clone().unwrap();
    let degraded = condition(&status, status::DEGRADED);
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, "InvalidScaling");
    assert!(
        degraded
            .message
            .contains("minReplicas 6 is above maxReplicas 2"),
        "{}",
        degraded.message
    );
    assert!(!exists::<Deployment>(&client, "broken").await);
    let events = Api::<K8sEvent>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidScaling")
                && e.type_.as_deref() == Some("Warning"))
    );

    // Fixing the spec clears the condition and creates the workers.
    let pools: Api<QueryPool> = Api::namespaced(client.clone(), NS);
    pools
        .patch(
            "broken",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"minReplicas": 1}})),
        )
        .await
        .unwrap();
    reconcile(get_pool(&client, "broken").await, ctx.clone())
        .await
        .unwrap();
    let status = get_pool(&client, "broken").await.status.clone().unwrap();
    assert_eq!(condition(&status, status::DEGRADED).status, "False");
    assert_eq!(replicas(&deployment(&client, "broken").await), 1);
}

pub(super) fn report(pool: &str, loads: &[(&str, u32)], queued: u32) -> DemandReport {
    DemandReport {
        pools: vec![PoolDemand {
            pool: pool.into(),
            in_flight: loads.iter().map(|(_, n)| n).sum(),
            queued,
            arrivals_per_sec: 0.0,
            worker_loads: loads
                .iter()
                .map(|(ip, n)| WorkerLoad {
                    endpoint: format!("grpc://{ip}:50051"),
                    ready: true,
                    in_flight: *n,
                })
                .collect(),
            ..PoolDemand::default()
        }],
    }
}

#[tokio::test]
async fn pinned_replicas_hold_while_autoscaling_is_off() {
    let pinned = pool(
        "pinned",
        json!({"autoscaling": {"enabled": false}, "replicas": 3}),
    );
    let (client, ctx) = setup(vec![pinned]).await;
    let pool = get_pool(&client, "pinned").await;
    reconcile(pool.clone(), ctx.clone()).await.unwrap();
    assert_eq!(replicas(&deployment(&client, "pinned").await), 3);

    // Heavy demand does not move a pinned pool, but its figures reach status.
    let pool = get_pool(&client, "pinned").await;
    let heavy = report("pinned", &[("10.0.0.1", 40)], 100);
    demand::step(
        &ctx,
        std::slice::from_ref(&pool),
        Ok(vec![heavy]),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(replicas(&deployment(&client, "pinned").await), 3);
    let status = get_pool(&client, "pinned").await.status.clone().unwrap();
    assert_eq!((status.in_flight, status.queued), (40, 100));

    // `kubectl scale querypool/pinned --replicas=5` writes spec.replicas.
    let pools: Api<QueryPool> = Api::namespaced(client.clone(), NS);
    pools
        .patch(
            "pinned",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    reconcile(get_pool(&client, "pinned").await, ctx.clone())
        .await
        .unwrap();
    assert_eq!(replicas(&deployment(&client, "pinned").await), 5);
    let status = get_pool(&client, "pinned").await.status.clone().unwrap();
    assert_eq!(status.desired, 5);
    assert!(status.last_scale_reason.unwrap().contains("pinned"));
}

fn worker_pod(name: &str, ip: &str) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = Some(name.into());
    pod.metadata.namespace = Some(NS.into());
    pod.metadata.labels = Some(crate::controller::resources::labels("default"));
    pod.status = Some(PodStatus {
        pod_ip: Some(ip.into()),
        ..PodStatus::default()
    });
    pod
}

#[tokio::test]
async fn idle_pods_are_marked_before_replicas_drop() {
    // Writes in order: ("cost", pod, value) for annotations, ("replicas", n) for Deployments.
    let writes: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let log = writes.clone();
    let funcs = interceptor::Funcs::new().patch(move |ctx| {
        if let Some(cost) = ctx
            .patch
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(DELETION_COST))
        {
            log.lock()
                .unwrap()
                .push((ctx.name.to_string(), cost.as_str().unwrap().to_string()));
        } else if let Some(n) = ctx
            .patch
            .pointer("/spec/replicas")
            .filter(|_| ctx.patch["kind"] == "Deployment")
        {
            log.lock().unwrap().push(("replicas".into(), n.to_string()));
        }
        Ok(None)
    });
    let spec = json!({"warmReplicas": 0, "targetConcurrency": 1,
        "autoscaling": {"stableWindow": "2s", "panicWindow": "1s", "scaleDownDelay": "1s"}});
    let client = client_with(
        vec![pool("default", spec)],
        ClientBuilder::new().with_interceptor_funcs(funcs),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for (name, ip) in [
        ("w-a", "10.0.0.1"),
        ("w-b", "10.0.0.2"),
        ("w-c", "10.0.0.3"),
    ] {
        pods.create(&PostParams::default(), &worker_pod(name, ip))
            .await
            .unwrap();
    }
    let ctx = Arc::new(Context::new(
        client.clone(),
        None,
        Arc::new(Metrics::default()),
    ));
    reconcile(get_pool(&client, "default").await, ctx.clone())
        .await
        .unwrap();
    assert_eq!(replicas(&deployment(&client, "default").await), 1);

    // A burst: three queries, one per worker → three workers at once.
    let busy = report(
        "default",
        &[("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)],
        0,
    );
    demand::step(
        &ctx,
        &[get_pool(&client, "default").await],
        Ok(vec![busy]),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(replicas(&deployment(&client, "default").await), 3);
    let status = get_pool(&client, "default").await.status.clone().unwrap();
    assert!(
        status
            .last_scale_reason
            .as_deref()
            .unwrap()
            .starts_with("panic"),
        "{status:?}"
    );

    // Later only w-b runs a query: shrink to one, and w-b must be the one kept.
    writes.lock().unwrap().clear();
    let quiet = report(
        "default",
        &[("10.0.0.1", 0), ("10.0.0.2", 1), ("10.0.0.3", 0)],
        0,
    );
    demand::step(
        &ctx,
        &[get_pool(&client, "default").await],
        Ok(vec![quiet]),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(replicas(&deployment(&client, "default").await), 1);
    let writes = writes.lock().unwrap().clone();
    let drop_at = writes
        .iter()
        .position(|(k, v)| k == "replicas" && v == "1")
        .expect("replicas lowered");
    let marked: BTreeMap<_, _> = writes[..drop_at].iter().cloned().collect();
    assert_eq!(
        marked,
        BTreeMap::from([
            ("w-a".to_string(), "0".to_string()),
            ("w-b".to_string(), "1".to_string()),
            ("w-c".to_string(), "0".to_string()),
        ]),
        "every pod carries its cost before the Deployment shrinks: {writes:?}"
    );
    let b = pods.get("w-b").await.unwrap();
    assert_eq!(b.annotations()[DELETION_COST], "1");
    let events = Api::<K8sEvent>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ScaledDown"))
    );
}

#[tokio::test]
async fn unreadable_demand_holds_the_size_and_degrades() {
    let (client, ctx) = setup(vec![pool("default", json!({}))]).await;
    reconcile(get_pool(&client, "default").await, ctx.clone())
        .await
        .unwrap();
    let pool = get_pool(&client, "default").await;
    let failed = Err(demand::DemandError::NoGateway(
        "analytics/quiver-gateway-admin".into(),
    ));
    demand::step(&ctx, &[pool], failed, Duration::from_secs(1)).await;
    let status = get_pool(&client, "default").await.status.clone().unwrap();
    let degraded = condition(&status, status::DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "DemandUnavailable")
    );
    assert_eq!(replicas(&deployment(&client, "default").await), 1);

    // The next good poll clears it.
    let pool = get_pool(&client, "default").await;
    demand::step(
        &ctx,
        &[pool],
        Ok(vec![report("default", &[], 0)]),
        Duration::from_secs(2),
    )
    .await;
    let status = get_pool(&client, "default").await.status.clone().unwrap();
    assert_eq!(condition(&status, status::DEGRADED).status, "False");
}

#[tokio::test]
async fn bounds_change_applies_at_once() {
    let (client, ctx) = setup(vec![pool("default", json!({}))]).await;
    reconcile(get_pool(&client, "default").await, ctx.clone())
        .await
        .unwrap();
    let pools: Api<QueryPool> = Api::namespaced(client.clone(), NS);
    pools
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"minReplicas": 4}})),
        )
        .await
        .unwrap();
    reconcile(get_pool(&client, "default").await, ctx.clone())
        .await
        .unwrap();
    assert_eq!(replicas(&deployment(&client, "default").await), 4);
    let status = get_pool(&client, "default").await.status.clone().unwrap();
    assert!(status.last_scale_reason.unwrap().starts_with("bounds"));
}

#[test]
fn retry_delay_backs_off_to_five_minutes() {
    let delays: Vec<u64> = (1..=9)
        .map(|n| crate::controller::retry_delay(n).as_secs())
        .collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
}
