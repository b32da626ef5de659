//! Leader election over a Lease in the in-memory API, on tokio's paused clock: a `sleep` here
//! advances virtual time once every task is idle, so nothing waits for real.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube_fake_client::{ClientBuilder, interceptor};
use tokio::time::{Instant, sleep};

use crate::controller::leader::{Attempt, LeaderError, LeaseLock, RenewError, Timing};

const LEASE: &str = "quiver-operator";

fn following(holder: &str) -> Attempt {
    Attempt::Following(holder.into())
}

async fn leases() -> Api<Lease> {
    let client = ClientBuilder::new().build().await.unwrap();
    Api::namespaced(client, "quiver")
}

#[test]
fn timings_must_let_the_leader_stop_before_the_lease_ends() {
    let s = Duration::from_secs;
    let t = Timing::default();
    assert_eq!(
        (t.lease_duration, t.renew_deadline, t.retry_period),
        (s(15), s(10), s(2))
    );
    assert_eq!(Timing::new(s(15), s(10), s(2)).unwrap(), t);
    for (lease, deadline, retry) in [
        (s(15), s(15), s(2)),
        (s(10), s(15), s(2)),
        (s(15), s(2), s(2)),
    ] {
        assert!(Timing::new(lease, deadline, retry).is_err());
    }
    assert!(Timing::new(s(15), s(10), Duration::ZERO).is_err());
}

/// The holder's clock is an hour behind: its renewTime looks long expired, but the follower
/// goes by its own observation of the record changing.
#[tokio::test(start_paused = true)]
async fn a_skewed_holder_keeps_the_lease_until_a_full_lease_of_our_observation() {
    let api = leases().await;
    let timing = Timing::default();
    let a = LeaseLock::new(api.clone(), LEASE, "operator-a", timing);
    let b = LeaseLock::new(api.clone(), LEASE, "operator-b", timing);
    let skewed = || Timestamp::now() - SignedDuration::from_hours(1);

    assert_eq!(a.try_acquire(skewed()).await.unwrap(), Attempt::Leading);
    assert_eq!(
        b.try_acquire(Timestamp::now()).await.unwrap(),
        following("operator-a"),
        "a renewTime an hour old is no reason to take over"
    );
    // a renews at 10 s with the same skewed clock: b's observation restarts then.
    sleep(Duration::from_secs(10)).await;
    assert_eq!(a.try_acquire(skewed()).await.unwrap(), Attempt::Leading);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        b.try_acquire(Timestamp::now()).await.unwrap(),
        following("operator-a")
    );
    // a stops renewing. b saw the change at 11 s, so at 25 s (14 s later) it still follows.
    sleep(Duration::from_secs(14)).await;
    assert_eq!(
        b.try_acquire(Timestamp::now()).await.unwrap(),
        following("operator-a"),
        "14 s since the last change b saw"
    );
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        b.try_acquire(Timestamp::now()).await.unwrap(),
        Attempt::Leading,
        "a full lease since the last change: b takes over"
    );
    let spec = api.get(LEASE).await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("operator-b"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(
        a.try_acquire(skewed()).await.unwrap(),
        following("operator-b"),
        "the old leader sees it lost"
    );

    // Releasing hands over at once.
    b.release().await;
    assert_eq!(a.try_acquire(skewed()).await.unwrap(), Attempt::Leading);
}

/// A follower that starts after the holder died still waits a full lease from its first look:
/// it cannot know how long ago the record last changed.
#[tokio::test(start_paused = true)]
async fn a_new_follower_waits_a_full_lease_from_its_first_look() {
    let api = leases().await;
    let timing = Timing::default();
    let a = LeaseLock::new(api.clone(), LEASE, "operator-a", timing);
    let long_ago = Timestamp::now() - SignedDuration::from_hours(24);
    assert_eq!(a.try_acquire(long_ago).await.unwrap(), Attempt::Leading);
    drop(a);

    let b = LeaseLock::new(api, LEASE, "operator-b", timing);
    let start = Instant::now();
    b.acquire().await;
    let waited = start.elapsed();
    assert!(
        waited >= timing.lease_duration && waited <= timing.lease_duration + timing.retry_period,
        "took over after {waited:?}"
    );
}

/// Optimistic concurrency on takeover: two followers that race for an expired lease both read
/// it, then both write; the second write carries a stale resourceVersion and is refused.
#[tokio::test(start_paused = true)]
async fn of_two_followers_racing_for_an_expired_lease_one_wins() {
    let api = leases().await;
    let timing = Timing::default();
    let a = LeaseLock::new(api.clone(), LEASE, "operator-a", timing);
    let b = LeaseLock::new(api.clone(), LEASE, "operator-b", timing);
    let c = LeaseLock::new(api.clone(), LEASE, "operator-c", timing);
    assert_eq!(
        a.try_acquire(Timestamp::now()).await.unwrap(),
        Attempt::Leading
    );
    assert_eq!(
        b.try_acquire(Timestamp::now()).await.unwrap(),
        following("operator-a")
    );
    assert_eq!(
        c.try_acquire(Timestamp::now()).await.unwrap(),
        following("operator-a")
    );
    sleep(timing.lease_duration).await;

    // The client's request queue interleaves the two: both reads, then both writes.
    let (by_b, by_c) = tokio::join!(
        b.try_acquire(Timestamp::now()),
        c.try_acquire(Timestamp::now())
    );
    let (by_b, by_c) = (by_b.unwrap(), by_c.unwrap());
    let winner = match (&by_b, &by_c) {
        (Attempt::Leading, Attempt::Conflict) => "operator-b",
        (Attempt::Conflict, Attempt::Leading) => "operator-c",
        other => panic!("expected one leader and one conflict, got {other:?}"),
    };
    let spec = api.get(LEASE).await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(winner));
    assert_eq!(spec.lease_transitions, Some(1));
}

/// Renewing every retry period keeps the lease for as long as it goes on.
#[tokio::test(start_paused = true)]
async fn renewing_keeps_leadership() {
    let api = leases().await;
    let timing = Timing::default();
    let a = LeaseLock::new(api.clone(), LEASE, "operator-a", timing);
    let b = LeaseLock::new(api.clone(), LEASE, "operator-b", timing);
    a.acquire().await;
    let before = api.get(LEASE).await.unwrap().metadata.resource_version;
    let holding = tokio::spawn(async move { a.hold().await });
    for _ in 0..60 {
        sleep(Duration::from_secs(1)).await;
        assert_eq!(
            b.try_acquire(Timestamp::now()).await.unwrap(),
            following("operator-a")
        );
    }
    assert!(
        !holding.is_finished(),
        "still leading after four lease durations"
    );
    assert_ne!(
        api.get(LEASE).await.unwrap().metadata.resource_version,
        before,
        "renewed"
    );
    holding.abort();
}

/// Renewals that fail: the leader steps down within the renew deadline of its last renewal,
/// and only a lease later does the follower take over, so the two never overlap.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_fail_steps_down_before_anyone_takes_over() {
    let failing = Arc::new(AtomicBool::new(false));
    let fail = failing.clone();
    let funcs = interceptor::Funcs::new().replace(move |ctx| {
        let holder = ctx.object.pointer("/spec/holderIdentity");
        if fail.load(Ordering::SeqCst) && holder.and_then(|h| h.as_str()) == Some("operator-a") {
            return Err(kube_fake_client::Error::Internal("etcd unavailable".into()));
        }
        Ok(None)
    });
    let client = ClientBuilder::new()
        .with_interceptor_funcs(funcs)
        .build()
        .await
        .unwrap();
    let api: Api<Lease> = Api::namespaced(client, "quiver");
    let timing = Timing::default();
    let a = LeaseLock::new(api.clone(), LEASE, "operator-a", timing);
    let b = LeaseLock::new(api, LEASE, "operator-b", timing);
    a.acquire().await;
    let holding = tokio::spawn(async move {
        let lost = a.hold().await;
        (lost, Instant::now())
    });
    let following_b = tokio::spawn(async move {
        b.acquire().await;
        Instant::now()
    });

    // a renews at 2, 4 and 6 s; from 7 s every write of its fails.
    sleep(Duration::from_secs(7)).await;
    let failing_since = Instant::now();
    failing.store(true, Ordering::SeqCst);
    let (lost, stepped_down) = holding.await.unwrap();
    let took_over = following_b.await.unwrap();

    assert!(
        matches!(
            &lost,
            LeaderError::NotRenewed {
                last: Some(RenewError::Api(_)),
                ..
            }
        ),
        "{lost:?}"
    );
    let last_renewal = failing_since - Duration::from_secs(1);
    assert_eq!(
        stepped_down - last_renewal,
        timing.renew_deadline,
        "steps down at the renew deadline"
    );
    assert!(timing.renew_deadline < timing.lease_duration);
    assert!(
        took_over >= last_renewal + timing.lease_duration,
        "b waits a full lease from the last renewal it saw"
    );
    assert!(took_over > stepped_down, "no overlap");
}

/// Renewals that hang: an API server that accepts connections and never answers. Each attempt
/// is cut off, and the leader steps down at the renew deadline, not when the calls return.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_hang_steps_down_within_the_renew_deadline() {
    // Test builds link rustls with both ring (kube) and aws-lc (kube-fake-client), so a real
    // client needs the provider named; the operator binary links ring alone.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Connections queue in the listen backlog; nothing reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let timing = Timing::default();
    let a = LeaseLock::new(
        Api::namespaced(client, "quiver"),
        LEASE,
        "operator-a",
        timing,
    );

    let start = Instant::now();
    let lost = a.hold().await;
    let held = start.elapsed();
    assert!(
        matches!(
            &lost,
            LeaderError::NotRenewed {
                last: Some(RenewError::Timeout(_)),
                ..
            }
        ),
        "{lost:?}"
    );
    assert_eq!(held, timing.renew_deadline, "stepped down at the deadline");
    assert!(held < timing.lease_duration);
    drop(silent);
}
