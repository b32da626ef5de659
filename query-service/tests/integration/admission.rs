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

async fn flight(addr: std::net::SocketAddr, token: &str) -> FlightClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightClient::new(channel);
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
