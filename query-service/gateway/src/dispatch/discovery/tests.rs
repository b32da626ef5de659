use std::collections::BTreeMap;

use futures::stream;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

/// An endpoint with the given (ready, terminating) conditions; `None` leaves them unset.
fn endpoint(address: &str, ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
    Endpoint {
        addresses: vec![address.into()],
        conditions: Some(EndpointConditions {
            ready,
            serving: Some(true),
            terminating,
        }),
        ..Endpoint::default()
    }
}

fn slice(
    name: &str,
    service: &str,
    ports: &[(&str, i32)],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        address_type: "IPv4".into(),
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("q".into()),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.into(),
                service.into(),
            )])),
            ..ObjectMeta::default()
        },
        ports: Some(
            ports
                .iter()
                .map(|(name, port)| EndpointPort {
                    name: Some((*name).into()),
                    port: Some(*port),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
        endpoints,
    }
}

fn set(urls: &[&str]) -> BTreeSet<String> {
    urls.iter().map(|u| (*u).to_owned()).collect()
}

#[test]
fn ready_and_not_terminating_endpoints_per_pool() {
    let slices = [
        slice(
            "a-1",
            "a",
            &[("flight", 50051)],
            vec![
                endpoint("10.0.0.1", Some(true), Some(false)),
                // Terminating: out at once, even while it still serves its running queries.
                endpoint("10.0.0.2", Some(false), Some(true)),
                // Not ready yet (warming).
                endpoint("10.0.0.3", Some(false), Some(false)),
                // Unknown readiness counts as ready.
                endpoint("10.0.0.4", None, None),
            ],
        ),
        // A second slice of the same Service, with the worker port among others.
        slice(
            "a-2",
            "a",
            &[("metrics", 9090), ("flight", 50061)],
            vec![endpoint("fd00::5", Some(true), None)],
        ),
        slice(
            "b-1",
            "b",
            &[("flight", 50051)],
            vec![endpoint("10.0.1.1", Some(true), None)],
        ),
        // Another Service's slice is not a pool's.
        slice(
            "x-1",
            "other",
            &[("flight", 50051)],
            vec![endpoint("10.9.9.9", Some(true), None)],
        ),
    ];
    let workers = ready_workers(&slices, &["a", "b", "c"]);
    assert_eq!(
        workers,
        BTreeMap::from([
            (
                "a".to_owned(),
                set(&[
                    "http://10.0.0.1:50051",
                    "http://10.0.0.4:50051",
                    "http://[fd00::5]:50061"
                ])
            ),
            ("b".to_owned(), set(&["http://10.0.1.1:50051"])),
            // A pool without a slice is there, empty.
            ("c".to_owned(), BTreeSet::new()),
        ])
    );
}

fn endpoints_of(pools: &Pools, pool: &str) -> BTreeSet<String> {
    pools
        .get(pool)
        .unwrap()
        .workers()
        .iter()
        .map(|w| w.endpoint().to_owned())
        .collect()
}

#[tokio::test]
async fn follow_applies_complete_lists_and_updates() {
    let pools = Pools::new(["a", "b"]);
    let two = slice(
        "a-1",
        "a",
        &[("flight", 50051)],
        vec![
            endpoint("10.0.0.1", Some(true), None),
            endpoint("10.0.0.2", Some(true), None),
        ],
    );
    let one_terminating = slice(
        "a-1",
        "a",
        &[("flight", 50051)],
        vec![
            endpoint("10.0.0.1", Some(true), None),
            endpoint("10.0.0.2", Some(false), Some(true)),
        ],
    );
    let b = slice(
        "b-1",
        "b",
        &[("flight", 50051)],
        vec![endpoint("10.0.1.1", Some(true), None)],
    );
    let events: Vec<Result<Event<EndpointSlice>, watcher::Error>> = vec![
        Ok(Event::Init),
        Ok(Event::InitApply(two.clone())),
        Ok(Event::InitApply(b.clone())),
        Ok(Event::InitDone),
        Ok(Event::Apply(one_terminating)),
        Ok(Event::Delete(b)),
    ];
    follow(stream::iter(events), &pools).await;
    assert_eq!(endpoints_of(&pools, "a"), set(&["http://10.0.0.1:50051"]));
    assert!(
        endpoints_of(&pools, "b").is_empty(),
        "the deleted slice's workers are gone"
    );

    // A re-list applies only once complete: until InitDone the previous view stands.
    let pools = Pools::new(["a", "b"]);
    let events: Vec<Result<Event<EndpointSlice>, watcher::Error>> = vec![
        Ok(Event::Init),
        Ok(Event::InitApply(two)),
        Ok(Event::InitDone),
        Ok(Event::Init),
        Ok(Event::InitApply(slice(
            "a-1",
            "a",
            &[("flight", 50051)],
            Vec::new(),
        ))),
    ];
    follow(stream::iter(events), &pools).await;
    assert_eq!(
        endpoints_of(&pools, "a"),
        set(&["http://10.0.0.1:50051", "http://10.0.0.2:50051"])
    );
}

#[tokio::test]
async fn a_pool_added_while_running_gets_the_workers_already_listed() {
    let pools = Pools::new(["a"]);
    let (events, rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn({
        let pools = pools.clone();
        async move {
            follow(
                tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
                &pools,
            )
            .await
        }
    });
    let a = slice(
        "a-1",
        "a",
        &[("flight", 50051)],
        vec![endpoint("10.0.0.1", Some(true), None)],
    );
    let late = slice(
        "late-1",
        "late",
        &[("flight", 50051)],
        vec![endpoint("10.0.2.1", Some(true), None)],
    );
    for event in [
        Event::Init,
        Event::InitApply(a),
        Event::InitApply(late.clone()),
        Event::InitDone,
    ] {
        events.send(Ok(event)).unwrap();
    }
    let wait = |pool: Arc<super::super::pool::WorkerPool>| async move {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            pool.wait_until(|p| !p.workers().is_empty()),
        )
        .await
        .expect("workers applied")
    };
    wait(pools.get("a").unwrap()).await;
    // The slice of a Service that is no pool (yet) was kept, not applied.
    assert_eq!(pools.names(), ["a"]);
    // Its QueryPool appears: the pool gets the workers listed before, with no slice event.
    let added = pools.ensure("late");
    wait(added.clone()).await;
    assert_eq!(
        endpoints_of(&pools, "late"),
        set(&["http://10.0.2.1:50051"])
    );
    // Later slice events of the new pool apply as for any other.
    events.send(Ok(Event::Delete(late))).unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        added.wait_until(|p| p.workers().is_empty()),
    )
    .await
    .expect("the deleted slice's workers are gone");
    drop(events);
    follower.await.unwrap();
}
