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
    let p1 = adm.admit(&who("a"), &hints, "SELECT 1").await.unwrap();
    drop(p1);
    drop(adm.admit(&who("a"), &hints, "SELECT 1").await.unwrap());
    let err = adm.admit(&who("a"), &hints, "SELECT 1").await.unwrap_err();
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
    assert!(adm.admit(&who("b"), &hints, "SELECT 1").await.is_ok());
}

#[tokio::test]
async fn queue_timeout_then_slot_handover() {
    let adm = admission(TWO_TENANTS);
    let hints = ClientHints::default();
    let running = adm.admit(&who("a"), &hints, "SELECT 1").await.unwrap();
    // Waits its whole queue timeout of 200 ms.
    let err = adm.admit(&who("b"), &hints, "SELECT 1").await.unwrap_err();
    assert!(matches!(err, AdmissionError::QueueTimeout { .. }), "{err}");
    assert!(err.to_string().contains("timed out in the queue"));
    // A waiter gets the slot as soon as the running query's permit drops.
    let adm2 = adm.clone();
    let waiter = tokio::spawn(async move {
        adm2.admit(&who("b"), &ClientHints::default(), "SELECT 2")
            .await
    });
    tokio::task::yield_now().await;
    assert_eq!(adm.queued(), 1);
    drop(running);
    let permit = waiter.await.unwrap().unwrap();
    assert_eq!(permit.placement.path, "g");
    assert_eq!(adm.queued(), 0);
}

#[tokio::test]
async fn abandoned_waiter_frees_its_place() {
    let adm = admission(TWO_TENANTS);
    let running = adm
        .admit(&who("a"), &ClientHints::default(), "SELECT 1")
        .await
        .unwrap();
    let adm2 = adm.clone();
    let waiter = tokio::spawn(async move {
        adm2.admit(&who("b"), &ClientHints::default(), "SELECT 1")
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
        .admit(&who("a"), &ClientHints::default(), "SELECT * FROM lineitem")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("quiver.public.lineitem"), "{err}");
}
