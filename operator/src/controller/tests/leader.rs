//! Leader election over a Lease in the in-memory API, with explicit times instead of waiting.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube_fake_client::ClientBuilder;

use crate::controller::leader::LeaseLock;

#[tokio::test]
async fn one_leader_until_its_lease_expires() {
    let client = ClientBuilder::new().build().await.unwrap();
    let api: Api<Lease> = Api::namespaced(client, "quiver");
    let ttl = Duration::from_secs(15);
    let a = LeaseLock::new(api.clone(), "quiver-operator", "operator-a", ttl);
    let b = LeaseLock::new(api.clone(), "quiver-operator", "operator-b", ttl);
    let t0: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
    let at = |secs: i64| t0 + SignedDuration::from_secs(secs);

    assert_eq!(
        a.try_acquire(at(0)).await.unwrap(),
        None,
        "a creates the lease"
    );
    assert_eq!(
        b.try_acquire(at(1)).await.unwrap().as_deref(),
        Some("operator-a"),
        "b follows"
    );
    assert_eq!(a.try_acquire(at(5)).await.unwrap(), None, "a renews");
    assert_eq!(
        b.try_acquire(at(19)).await.unwrap().as_deref(),
        Some("operator-a"),
        "renewed at 5 s, the lease holds until 20 s"
    );
    assert_eq!(
        b.try_acquire(at(21)).await.unwrap(),
        None,
        "expired: b takes over"
    );
    let spec = api.get("quiver-operator").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("operator-b"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(
        a.try_acquire(at(22)).await.unwrap().as_deref(),
        Some("operator-b"),
        "the old leader sees it lost"
    );

    // Releasing hands over at once.
    b.release().await;
    assert_eq!(a.try_acquire(at(23)).await.unwrap(), None);
}
