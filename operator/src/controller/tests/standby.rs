//! Standby pools and claims: a pool takes ready standby pods before its Deployment starts new
//! ones, lets claimed pods go first, wakes from zero by claiming, and its claimed pods go with
//! it; the standby pool's Deployment grows with the claims.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodCondition, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::reconcile::{deployment, exists, get_pool, has_event, pool, replicas, report, setup};
use crate::controller::resources::{self, CATALOG_HASH_ANNOTATION, CLAIMED_LABEL};
use crate::controller::{claim, demand, reconcile};
use crate::crd::{POOL_LABEL, QueryPool};

const NS: &str = "analytics";
const STANDBY: &str = "standby";

fn standby_pool(min: i32, max: i32) -> QueryPool {
    pool(
        STANDBY,
        json!({"role": "Standby", "minReplicas": min, "maxReplicas": max, "warmReplicas": 0,
               "template": {"catalog": {"tables": []}}}),
    )
}

/// A pod of the standby Deployment, as its ReplicaSet makes it.
fn standby_pod(name: &str, ready: bool) -> Pod {
    let mut labels = resources::labels(STANDBY);
    labels.insert("pod-template-hash".into(), "5d8f7c9b4".into());
    let mut pod = Pod::default();
    pod.metadata.name = Some(name.into());
    pod.metadata.namespace = Some(NS.into());
    pod.metadata.labels = Some(labels);
    pod.status = Some(PodStatus {
        pod_ip: Some(format!("10.1.0.{}", name.len())),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

async fn create_pods(client: &Client, pods: impl IntoIterator<Item = Pod>) {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    for pod in pods {
        api.create(&PostParams::default(), &pod).await.unwrap();
    }
}

async fn get_pod(client: &Client, name: &str) -> Option<Pod> {
    Api::<Pod>::namespaced(client.clone(), NS)
        .get_opt(name)
        .await
        .unwrap()
}

/// Names of the pods claimed into `pool`.
async fn claimed(client: &Client, pool: &str) -> Vec<String> {
    let mut names: Vec<String> = claim::claimed_pods(client, NS, pool)
        .await
        .unwrap()
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

async fn reconcile_named(
    client: &Client,
    ctx: &std::sync::Arc<crate::controller::Context>,
    name: &str,
) {
    reconcile(get_pool(client, name).await, ctx.clone())
        .await
        .unwrap();
}

fn pinned_sales(replicas: i32) -> QueryPool {
    pool(
        "sales",
        json!({"autoscaling": {"enabled": false}, "replicas": replicas, "standbyPool": STANDBY}),
    )
}

fn catalog_hash(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[CATALOG_HASH_ANNOTATION]
        .clone()
}

/// A standby pool with two ready pods and one still warming, and a pool pinned at 3 that
/// claims from it.
async fn two_ready_one_warming() -> (Client, std::sync::Arc<crate::controller::Context>) {
    let (client, ctx) = setup(vec![standby_pool(1, 8), pinned_sales(3)]).await;
    let pods = [
        standby_pod("s-a", true),
        standby_pod("s-b", true),
        standby_pod("s-c", false),
    ];
    create_pods(&client, pods).await;
    (client, ctx)
}

#[tokio::test]
async fn a_pool_claims_ready_standby_workers_before_starting_pods() {
    let (client, ctx) = two_ready_one_warming().await;

    // The standby pool: `quiver worker --standby`, probed on quiver.Ready, no catalog.
    reconcile_named(&client, &ctx, STANDBY).await;
    let standby = deployment(&client, STANDBY).await;
    assert_eq!(replicas(&standby), 1);
    let spec = standby.spec.unwrap().template.spec.unwrap();
    let worker = &spec.containers[0];
    let env: BTreeMap<_, _> = worker
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.clone()))
        .collect();
    assert_eq!(env["QUIVER_STANDBY"].as_deref(), Some("true"));
    assert!(!env.contains_key("QUIVER_CATALOG"));
    let probe = worker
        .readiness_probe
        .as_ref()
        .unwrap()
        .grpc
        .as_ref()
        .unwrap();
    assert_eq!(
        probe.service.as_deref(),
        Some(resources::READY_HEALTH_SERVICE)
    );
    assert!(
        spec.volumes
            .iter()
            .flatten()
            .all(|v| v.config_map.is_none())
    );
    assert!(!exists::<ConfigMap>(&client, "standby-catalog").await);

    // The pool wants 3: two ready standby workers are claimed, one new pod is started.
    reconcile_named(&client, &ctx, "sales").await;
    assert_eq!(claimed(&client, "sales").await, ["s-a", "s-b"]);
    let sales = deployment(&client, "sales").await;
    assert_eq!(
        replicas(&sales),
        1,
        "the Deployment starts only what claims did not cover"
    );
    let pool_uid = get_pool(&client, "sales").await.uid();
    for name in ["s-a", "s-b"] {
        let pod = get_pod(&client, name).await.unwrap();
        let labels = pod.labels();
        assert_eq!(labels[POOL_LABEL], "sales");
        assert_eq!(labels[CLAIMED_LABEL], "true");
        assert!(
            !labels.contains_key("pod-template-hash"),
            "out of the standby ReplicaSet's selector, so it starts a replacement"
        );
        let selector = resources::selector_labels("sales");
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "in the pool's Service"
        );
        let owners = pod.owner_references();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "QueryPool");
        assert_eq!(Some(owners[0].uid.clone()), pool_uid);
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(
            pod.annotations()[CATALOG_HASH_ANNOTATION],
            catalog_hash(&sales)
        );
    }
    let unready = get_pod(&client, "s-c").await.unwrap();
    assert_eq!(
        unready.labels()[POOL_LABEL],
        STANDBY,
        "a warming standby is not claimed"
    );

    let status = get_pool(&client, "sales").await.status.clone().unwrap();
    assert_eq!(status.desired, 3);
    assert_eq!(status.ready, 2, "the claimed workers count as the pool's");
    assert!(has_event(&client, "Claimed").await);
    assert!(
        ctx.metrics
            .encode()
            .contains(r#"quiver_operator_claims_total{namespace="analytics",pool="sales"} 2"#),
        "{}",
        ctx.metrics.encode()
    );

    // Again with nothing changed: no further claim, the same Deployment.
    reconcile_named(&client, &ctx, "sales").await;
    assert_eq!(claimed(&client, "sales").await, ["s-a", "s-b"]);
    assert_eq!(replicas(&deployment(&client, "sales").await), 1);
}

#[tokio::test]
async fn claimed_workers_go_first_on_shrink_and_on_a_catalog_change() {
    let (client, ctx) = two_ready_one_warming().await;
    reconcile_named(&client, &ctx, "sales").await;
    assert_eq!(claimed(&client, "sales").await, ["s-a", "s-b"]);
    // s-b is busier than s-a, as the demand loop marks it.
    Api::<Pod>::namespaced(client.clone(), NS)
        .patch(
            "s-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {demand::DELETION_COST: "3"}}})),
        )
        .await
        .unwrap();

    let pools: Api<QueryPool> = Api::namespaced(client.clone(), NS);
    pools
        .patch(
            "sales",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    reconcile_named(&client, &ctx, "sales").await;
    assert_eq!(
        claimed(&client, "sales").await,
        ["s-b"],
        "the idle claimed worker goes"
    );
    assert!(get_pod(&client, "s-a").await.is_none());
    assert_eq!(replicas(&deployment(&client, "sales").await), 0);

    // A new catalog: the claimed worker was given the old one, so it goes and a pod with the
    // new catalog takes its place (the only standby left is still warming).
    pools
        .patch(
            "sales",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"catalog": {"tables": [
                {"name": "orders", "location": "s3://tpch/orders/"}]}}}})),
        )
        .await
        .unwrap();
    reconcile_named(&client, &ctx, "sales").await;
    assert!(claimed(&client, "sales").await.is_empty());
    assert!(get_pod(&client, "s-b").await.is_none());
    assert_eq!(replicas(&deployment(&client, "sales").await), 1);
}

#[tokio::test]
async fn a_pool_at_zero_wakes_by_claiming_and_goes_back_to_zero() {
    let sales = pool(
        "sales",
        json!({"minReplicas": 0, "maxReplicas": 10, "warmReplicas": 0, "targetConcurrency": 1,
               "standbyPool": STANDBY,
               "autoscaling": {"stableWindow": "10s", "panicWindow": "2s", "scaleDownDelay": "2s",
                               "scaleToZeroAfter": "20s"}}),
    );
    let (client, ctx) = setup(vec![standby_pool(1, 8), sales]).await;
    create_pods(
        &client,
        (0..8).map(|i| standby_pod(&format!("s-{i}"), true)),
    )
    .await;
    reconcile_named(&client, &ctx, STANDBY).await;
    reconcile_named(&client, &ctx, "sales").await;
    assert_eq!(replicas(&deployment(&client, "sales").await), 0, "at zero");
    assert!(claimed(&client, "sales").await.is_empty());

    // Seven queries held at the gateway for the pool at zero: seven warm workers are claimed,
    // no pod has to start.
    let pools = [get_pool(&client, "sales").await];
    demand::step(
        &ctx,
        &pools,
        Ok(vec![report("sales", &[], 7)]),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(claimed(&client, "sales").await.len(), 7);
    assert_eq!(replicas(&deployment(&client, "sales").await), 0);

    // Seven claims in the window: the standby pool is kept larger while they go on.
    reconcile_named(&client, &ctx, STANDBY).await;
    assert_eq!(replicas(&deployment(&client, STANDBY).await), 2);

    // Idle from then on: the pool drains back to zero, releasing every claimed worker.
    let mut t = 2;
    while !claimed(&client, "sales").await.is_empty() && t < 300 {
        let pools = [get_pool(&client, "sales").await];
        demand::step(
            &ctx,
            &pools,
            Ok(vec![report("sales", &[], 0)]),
            Duration::from_secs(t),
        )
        .await;
        t += 2;
    }
    assert!(
        claimed(&client, "sales").await.is_empty(),
        "still claimed at {t} s"
    );
    assert!(t > 20, "not before the idle time: {t} s");
    assert_eq!(replicas(&deployment(&client, "sales").await), 0);
    let status = get_pool(&client, "sales").await.status.clone().unwrap();
    assert_eq!(status.desired, 0);
    assert!(
        get_pod(&client, "s-7").await.is_some(),
        "the unclaimed standby stays"
    );
}

#[tokio::test]
async fn deleting_a_pool_deletes_its_claimed_workers_not_the_standby_pool() {
    let (client, ctx) = setup(vec![standby_pool(1, 8), pinned_sales(1)]).await;
    create_pods(
        &client,
        [standby_pod("s-a", true), standby_pod("s-b", true)],
    )
    .await;
    reconcile_named(&client, &ctx, STANDBY).await;
    reconcile_named(&client, &ctx, "sales").await;
    assert_eq!(claimed(&client, "sales").await, ["s-a"]);
    Api::<QueryPool>::namespaced(client.clone(), NS)
        .delete("sales", &DeleteParams::default())
        .await
        .unwrap();
    // The fake collects dependents by owner reference, as the garbage collector would.
    assert!(get_pod(&client, "s-a").await.is_none());
    assert!(get_pod(&client, "s-b").await.is_some());
    assert!(exists::<Deployment>(&client, STANDBY).await);
}

#[tokio::test]
async fn a_pool_without_a_standby_pool_starts_pods() {
    // standbyPool names a pool that is not a Standby one: no claim, the Deployment covers all.
    let (client, ctx) = setup(vec![pool("other", json!({})), pinned_sales(2)]).await;
    let mut foreign = standby_pod("o-a", true);
    foreign.metadata.labels = Some(resources::labels("other"));
    create_pods(&client, [foreign, standby_pod("s-a", true)]).await;
    Api::<QueryPool>::namespaced(client.clone(), NS)
        .patch(
            "sales",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"standbyPool": "other"}})),
        )
        .await
        .unwrap();
    reconcile_named(&client, &ctx, "sales").await;
    assert!(claimed(&client, "sales").await.is_empty());
    assert_eq!(replicas(&deployment(&client, "sales").await), 2);
    assert_eq!(
        get_pod(&client, "o-a").await.unwrap().labels()[POOL_LABEL],
        "other"
    );
}
