use std::path::Path;

use super::*;

fn admission(yaml: &str) -> Arc<Admission> {
    Admission::new(
        Policy::parse(yaml, Path::new("a.yaml"), &["default"]).unwrap(),
        1,
    )
}

fn who(tenant: &str) -> Identity {
    Identity {
        tenant: tenant.into(),
        user: tenant.into(),
    }
}

const TWO_TENANTS: &str = "
tenants:
  - {name: a, tokens: ['sha256:0000000000000000000000000000000000000000000000000000000000000000']}
  - {name: b, tokens: ['sha256:1111111111111111111111111111111111111111111111111111111111111111']}
rate_limits:
  - {name: per-tenant, key: [tenant], qps: 10, burst: 2}
resource_groups:
  - {name: g, hard_concurrency: 1, max_queued: 1, queue_timeout: 200ms}
";

#[tokio::test]
async fn rate_limit_names_policy_and_retry_hint() {
    let adm = admission(TWO_TENANTS);
    let hints = ClientHints::default();
    let p1 = adm
        .admit(&who("a"), &hints, "SELECT 1", false)
        .await
        .unwrap();
    drop(p1);
    drop(
        adm.admit(&who("a"), &hints, "SELECT 1", false)
            .await
            .unwrap(),
    );
    let err = adm
        .admit(&who("a"), &hints, "SELECT 1", false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdmissionError::RateLimited { policy, .. } if policy == "per-tenant"),
        "{err}"
    );
    let hint = err.retry_after().unwrap();
    assert!(
        hint <= Duration::from_millis(100) && hint > Duration::from_millis(50),
        "{hint:?}"
    );
    // Another tenant has its own bucket.
    assert!(
        adm.admit(&who("b"), &hints, "SELECT 1", false)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn queue_timeout_then_slot_handover() {
    let adm = admission(TWO_TENANTS);
    let hints = ClientHints::default();
    let running = adm
        .admit(&who("a"), &hints, "SELECT 1", false)
        .await
        .unwrap();
    // Waits its whole queue timeout of 200 ms.
    let err = adm
        .admit(&who("b"), &hints, "SELECT 1", false)
        .await
        .unwrap_err();
    assert!(matches!(err, AdmissionError::QueueTimeout { .. }), "{err}");
    assert!(err.to_string().contains("timed out in the queue"));
    // A waiter gets the slot as soon as the running query's permit drops.
    let adm2 = adm.clone();
    let waiter = tokio::spawn(async move {
        adm2.admit(&who("b"), &ClientHints::default(), "SELECT 2", false)
            .await
    });
    tokio::task::yield_now().await;
    assert_eq!(adm.queued(), 1);
    drop(running);
    let permit = waiter.await.unwrap().unwrap();
    assert_eq!(permit.checked.placement.path, "g");
    assert_eq!(adm.queued(), 0);
}

#[tokio::test]
async fn abandoned_waiter_frees_its_place() {
    let adm = admission(TWO_TENANTS);
    let running = adm
        .admit(&who("a"), &ClientHints::default(), "SELECT 1", false)
        .await
        .unwrap();
    let adm2 = adm.clone();
    let waiter = tokio::spawn(async move {
        adm2.admit(&who("b"), &ClientHints::default(), "SELECT 1", false)
            .await
    });
    tokio::task::yield_now().await;
    assert_eq!(adm.queued(), 1);
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(adm.queued(), 0);
    drop(running);
    // The slot is free again.
    let snapshot = adm.snapshot();
    assert_eq!(snapshot, vec![("g".to_owned(), 0, 0)]);
}

#[tokio::test]
async fn forbidden_table_is_refused() {
    let adm = admission(
        "tenants: [{name: a, tokens: ['sha256:0000000000000000000000000000000000000000000000000000000000000000'], catalogs: [other]}]",
    );
    let err = adm
        .admit(
            &who("a"),
            &ClientHints::default(),
            "SELECT * FROM lineitem",
            false,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("quiver.public.lineitem"), "{err}");
}

const TWO_POOLS: &str = "
resource_groups:
  - {name: x, pool: b, queue_timeout: 10s}
  - {name: y, pool: a, queue_timeout: 10s}
selectors:
  - {source: etl, group: x}
default_group: y
";

#[tokio::test]
async fn each_pool_has_its_own_capacity_and_demand() {
    let policy = Policy::parse(TWO_POOLS, Path::new("a.yaml"), &["a", "b"]).unwrap();
    let adm = Admission::new(policy, 1);
    adm.set_capacity("a", 1);
    adm.set_capacity("b", 1);
    let etl = ClientHints {
        source: Some("etl".into()),
        ..ClientHints::default()
    };
    let on_b = adm
        .admit(&who("default"), &etl, "SELECT 1", false)
        .await
        .unwrap();
    assert_eq!(on_b.checked.placement.pool, "b");
    // Pool b is full; pool a is not, so y's query runs at once.
    let on_a = adm
        .admit(&who("default"), &ClientHints::default(), "SELECT 1", false)
        .await
        .unwrap();
    assert_eq!(on_a.checked.placement.pool, "a");
    // A second x query waits for pool b alone.
    let adm2 = adm.clone();
    let etl2 = etl.clone();
    let waiter =
        tokio::spawn(async move { adm2.admit(&who("default"), &etl2, "SELECT 2", false).await });
    tokio::task::yield_now().await;
    assert_eq!((adm.queued_in("a"), adm.queued_in("b")), (0, 1));
    // More capacity in pool a starts nothing; in pool b it starts the waiter.
    adm.set_capacity("a", 4);
    assert_eq!(adm.queued_in("b"), 1);
    adm.set_capacity("b", 2);
    let permit = waiter.await.unwrap().unwrap();
    assert_eq!(permit.checked.placement.pool, "b");
    assert_eq!(adm.arrivals_per_sec("b"), 2.0);
    assert_eq!(adm.arrivals_per_sec("a"), 1.0);
    // Calls outside a query go to the caller's group's pool.
    assert_eq!(adm.pool_of(&who("default"), &etl), "b");
    assert_eq!(adm.pool_of(&who("default"), &ClientHints::default()), "a");
}
