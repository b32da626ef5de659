//! The demand side: summing gateways, deletion costs, finding every gateway pod through its
//! Service's EndpointSlices (a reflector's store), and polling a real HTTP endpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use kube_fake_client::ClientBuilder;

use crate::controller::demand::{
    DemandError, DemandReport, Gateways, Poller, PoolDemand, Targets, WorkerLoad, aggregate,
    deletion_costs, endpoint_host,
};

fn gateway_report(in_flight: &[(&str, u32)], queued: u32, arrivals: f64) -> DemandReport {
    DemandReport {
        pools: vec![PoolDemand {
            pool: "default".into(),
            in_flight: in_flight.iter().map(|(_, n)| n).sum(),
            queued,
            arrivals_per_sec: arrivals,
            worker_loads: in_flight
                .iter()
                .map(|(endpoint, n)| WorkerLoad {
                    endpoint: (*endpoint).into(),
                    ready: true,
                    in_flight: *n,
                })
                .collect(),
            ..PoolDemand::default()
        }],
    }
}

#[test]
fn gateways_are_summed_per_pool_and_worker() {
    let a = gateway_report(
        &[("grpc://10.0.0.1:50051", 2), ("grpc://10.0.0.2:50051", 0)],
        1,
        3.0,
    );
    let b = gateway_report(
        &[("grpc://10.0.0.1:50051", 1), ("grpc://10.0.0.2:50051", 0)],
        2,
        4.5,
    );
    let totals = aggregate(&[a, b]);
    let total = &totals["default"];
    assert_eq!((total.in_flight, total.queued), (3, 3));
    assert!((total.arrivals_per_sec - 7.5).abs() < 1e-9);
    assert_eq!(total.loads["10.0.0.1"], (true, 3));
    assert_eq!(total.loads["10.0.0.2"], (true, 0));
    let figures = total.figures();
    assert_eq!((figures.in_flight, figures.queued, figures.warm), (3, 3, 1));
}

#[test]
fn endpoint_hosts() {
    assert_eq!(
        endpoint_host("grpc://10.0.0.5:50051").as_deref(),
        Some("10.0.0.5")
    );
    assert_eq!(
        endpoint_host("grpc://[fd00::5]:50051").as_deref(),
        Some("fd00::5")
    );
    assert_eq!(endpoint_host("not a url"), None);
}

#[test]
fn busy_pods_cost_more_and_unknown_pods_cost_nothing() {
    let pod = |name: &str, ip: Option<&str>| {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.status = Some(PodStatus {
            pod_ip: ip.map(Into::into),
            ..PodStatus::default()
        });
        pod
    };
    let pods = [
        pod("busy", Some("10.0.0.1")),
        pod("idle", Some("10.0.0.2")),
        pod("starting", None),
    ];
    let loads = BTreeMap::from([
        ("10.0.0.1".to_string(), (true, 4)),
        ("10.0.0.2".to_string(), (true, 0)),
    ]);
    let costs = deletion_costs(&pods, &loads);
    assert_eq!(
        costs,
        [
            ("busy".to_string(), 4),
            ("idle".to_string(), 0),
            ("starting".to_string(), 0)
        ]
    );
}

#[test]
fn admin_url_names_a_service_or_is_used_as_is() {
    let svc =
        Gateways::from_url("http://quiver-gateway-admin.analytics.svc.cluster.local:9090").unwrap();
    assert!(matches!(
        svc,
        Gateways::Service { ref namespace, ref name, port: 9090 }
            if namespace == "analytics" && name == "quiver-gateway-admin"
    ));
    assert!(matches!(
        Gateways::from_url("http://127.0.0.1:9090").unwrap(),
        Gateways::Url(_)
    ));
    assert!(Gateways::from_url("::not a url").is_err());
}

fn slice(name: &str, ready: &[(&str, Option<bool>)]) -> EndpointSlice {
    let mut slice = EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: ready
            .iter()
            .map(|(ip, ready)| Endpoint {
                addresses: vec![(*ip).into()],
                conditions: Some(EndpointConditions {
                    ready: *ready,
                    ..EndpointConditions::default()
                }),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("admin".into()),
            port: Some(9091),
            ..EndpointPort::default()
        }]),
        ..EndpointSlice::default()
    };
    slice.metadata.name = Some(name.into());
    slice.metadata.namespace = Some("analytics".into());
    slice.metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".into(),
        "quiver-gateway-admin".into(),
    )]));
    slice
}

/// kube-fake-client answers a watch request as a list, so the reflector's store is fed by hand
/// here, with what the fake lists under the watch's label selector.
#[tokio::test]
async fn every_ready_gateway_pod_is_polled() {
    let client = ClientBuilder::new().build().await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "analytics");
    let pp = PostParams::default();
    let a = slice(
        "gw-a",
        &[("10.1.0.1", Some(true)), ("10.1.0.2", Some(false))],
    );
    slices.create(&pp, &a).await.unwrap();
    slices
        .create(&pp, &slice("gw-b", &[("10.1.0.3", None)]))
        .await
        .unwrap();
    let mut other = slice("other", &[("10.9.9.9", Some(true))]);
    other.metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".into(),
        "something-else".into(),
    )]));
    slices.create(&pp, &other).await.unwrap();

    let gateways =
        Gateways::from_url("http://quiver-gateway-admin.analytics.svc.cluster.local:9090").unwrap();
    let selector = gateways.slice_selector().unwrap();
    assert_eq!(selector, "kubernetes.io/service-name=quiver-gateway-admin");
    let listed = slices
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    let (store, mut writer) = reflector::store();
    let targets = Targets::Slices {
        service: "analytics/quiver-gateway-admin".into(),
        port: 9090,
        store,
    };
    assert!(
        matches!(targets.now(), Err(DemandError::NotListed(_))),
        "before the first list, the gateways are unknown, not absent"
    );
    writer.apply_watcher_event(&Event::Init);
    for slice in listed.items {
        writer.apply_watcher_event(&Event::InitApply(slice));
    }
    writer.apply_watcher_event(&Event::InitDone);
    // The terminating 10.1.0.2 is left out; the slice's target port wins over the URL's.
    assert_eq!(
        urls(&targets),
        [
            "http://10.1.0.1:9091/v1/pools",
            "http://10.1.0.3:9091/v1/pools"
        ]
    );

    // Watch events: gw-a's second pod becomes ready, gw-b goes.
    writer.apply_watcher_event(&Event::Apply(slice(
        "gw-a",
        &[("10.1.0.1", Some(true)), ("10.1.0.2", Some(true))],
    )));
    writer.apply_watcher_event(&Event::Delete(slice("gw-b", &[])));
    assert_eq!(
        urls(&targets),
        [
            "http://10.1.0.1:9091/v1/pools",
            "http://10.1.0.2:9091/v1/pools"
        ]
    );
    writer.apply_watcher_event(&Event::Delete(slice("gw-a", &[])));
    assert!(matches!(targets.now(), Err(DemandError::NoGateway(_))));
}

fn urls(targets: &Targets) -> Vec<String> {
    let mut urls: Vec<String> = targets
        .now()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    urls.sort();
    urls
}

/// The watcher's initial list over the fake fills the store and releases the demand loop's
/// wait; the fake cannot stream a watch, so the watch half is not exercised here.
#[tokio::test(start_paused = true)]
async fn the_watch_lists_the_gateway_service_slices() {
    let client = ClientBuilder::new().build().await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "analytics");
    let pp = PostParams::default();
    slices
        .create(&pp, &slice("gw-a", &[("10.1.0.1", Some(true))]))
        .await
        .unwrap();
    let mut other = slice("other", &[("10.9.9.9", Some(true))]);
    other.metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".into(),
        "something-else".into(),
    )]));
    slices.create(&pp, &other).await.unwrap();

    let gateways =
        Gateways::from_url("http://quiver-gateway-admin.analytics.svc.cluster.local:9090").unwrap();
    let (targets, watch) = gateways.discover(client);
    let watch = tokio::spawn(watch.expect("a Service is watched"));
    tokio::time::timeout(Duration::from_secs(5), async {
        while targets.now().is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("listed");
    assert_eq!(urls(&targets), ["http://10.1.0.1:9091/v1/pools"]);
    watch.abort();

    let (url, watch) = Gateways::from_url("http://127.0.0.1:9090")
        .unwrap()
        .discover(ClientBuilder::new().build().await.unwrap());
    assert!(watch.is_none(), "a plain URL needs no watch");
    assert_eq!(urls(&url), ["http://127.0.0.1:9090/v1/pools"]);
}

#[tokio::test]
async fn poller_reads_a_gateway_over_http() {
    let body = r#"{"pools":[{"pool":"default","workers":2,"ready":2,"in_flight":3,"queued":1,
        "arrivals_per_sec":2.5,"worker_loads":[{"endpoint":"grpc://10.0.0.1:50051","ready":true,
        "in_flight":3}]}]}"#;
    let app = Router::new().route("/v1/pools", get(move || async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = ClientBuilder::new().build().await.unwrap();
    let targets = |url: &str| Gateways::from_url(url).unwrap().discover(client.clone()).0;

    let poller = Poller::new(targets(&format!("http://{addr}")), Duration::from_secs(5));
    let reports = poller.poll().await.unwrap();
    assert_eq!(reports.len(), 1);
    let pool = &reports[0].pools[0];
    assert_eq!(
        (pool.pool.as_str(), pool.in_flight, pool.queued),
        ("default", 3, 1)
    );
    assert_eq!(pool.worker_loads[0].in_flight, 3);

    // A path the gateway does not serve is an error, not zero demand.
    let wrong = Poller::new(
        targets(&format!("http://{addr}/nothing")),
        Duration::from_secs(5),
    );
    let err = wrong.poll().await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    server.abort();
}
