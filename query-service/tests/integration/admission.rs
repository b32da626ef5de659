//! Admission through a real gateway: credentials, catalogs, and the retry hint on rejections.

use arrow_flight::{FlightClient, Ticket};
use futures::TryStreamExt;
use tonic::Code;

use crate::common::*;

const CONFIG: &str = "
tenants:
  - name: boxed
    # sha256 of \"boxed-token\"
    tokens: ['sha256:BOXED']
    catalogs: [elsewhere]
  - name: open
    tokens: ['sha256:OPEN']
rate_limits:
  - {name: one-per-second, match: {tenant: open}, key: [tenant], qps: 1, burst: 1}
";

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn connect(addr: std::net::SocketAddr) -> FlightClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightClient::new(channel)
}

async fn flight(addr: std::net::SocketAddr, token: &str) -> FlightClient {
    let mut client = connect(addr).await;
    client
        .add_header("authorization", &format!("Bearer {token}"))
        .unwrap();
    client
}

async fn status(client: &mut FlightClient, sql: &str) -> Result<usize, tonic::Status> {
    match client.do_get(Ticket::new(sql.to_owned())).await {
        Ok(stream) => match stream.try_collect::<Vec<_>>().await {
            Ok(b) => Ok(b.iter().map(|b| b.num_rows()).sum()),
            Err(arrow_flight::error::FlightError::Tonic(s)) => Err(*s),
            Err(e) => panic!("{e}"),
        },
        Err(arrow_flight::error::FlightError::Tonic(s)) => Err(*s),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn credentials_catalogs_and_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admission.yaml");
    let text = CONFIG
        .replace("BOXED", &sha256_hex("boxed-token"))
        .replace("OPEN", &sha256_hex("open-token"));
    std::fs::write(&path, text).unwrap();
    let worker = start_worker(default_limits()).await;
    let (gateway, _pool) = start_gateway_with(&[worker.addr], 1, Some(path)).await;

    let s = status(&mut flight(gateway, "nobody").await, "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);

    let s = status(
        &mut flight(gateway, "boxed-token").await,
        "SELECT * FROM nation",
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(
        s.message().contains("quiver.public.nation"),
        "{}",
        s.message()
    );

    let mut open = flight(gateway, "open-token").await;
    assert_eq!(status(&mut open, "SELECT * FROM nation").await.unwrap(), 25);
    let s = status(&mut open, "SELECT 1").await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(s.message().contains("one-per-second"), "{}", s.message());
    let hint: u64 = s
        .metadata()
        .get("retry-after-ms")
        .expect("retry hint trailer")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(hint > 0 && hint <= 1000, "{hint}");
}

/// A run for a pool with no ready worker is held while the pool wakes, but never longer than
/// its group lets a query queue: here 1 s, against a 30 s wake timeout.
#[tokio::test]
async fn a_run_waits_for_a_waking_pool_no_longer_than_its_queue_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admission.yaml");
    std::fs::write(
        &path,
        "resource_groups:\n  - {name: quick, queue_timeout: 1s}\n",
    )
    .unwrap();
    let pool = quiver_gateway::WorkerPool::new("default");
    let mut config = gateway_config(
        quiver_gateway::Pools::single(pool),
        std::sync::Arc::new(quiver_gateway::GatewayMetrics::default()),
        Some(path),
    );
    config.wake_timeout = Some(std::time::Duration::from_secs(30));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(quiver_gateway::run(
        listener,
        config,
        std::future::pending(),
    ));
    let mut client = connect(addr).await;
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        status(&mut client, "SELECT 1"),
    )
    .await
    .expect("held past the group's queue timeout")
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("after waiting 1s"), "{err}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
}
