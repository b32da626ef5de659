//! Every failure a client can cause or meet gets its own status and a message naming the cause,
//! and the gateway keeps serving afterwards.

use std::time::Duration;

use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use arrow_flight::{FlightClient, Ticket};
use futures::TryStreamExt;
use prost::Message;
use quiver_core::ticket::{TicketKind, TicketSigner};
use quiver_worker::engine::QueryLimits;
use tonic::Code;

use crate::common::*;

fn status_of(err: arrow_flight::error::FlightError) -> tonic::Status {
    match err {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

async fn run(addr: std::net::SocketAddr, sql: &str) -> Result<usize, tonic::Status> {
    let mut c = client(addr).await;
    quiver::client::query(&mut c, sql)
        .await
        .map(|b| b.iter().map(|b| b.num_rows()).sum())
        .map_err(status_of)
}

#[tokio::test]
async fn bad_sql_unknown_table_and_ddl_are_invalid_argument() {
    let worker = start_worker(default_limits()).await;
    let (gateway, _pool) = start_gateway(&[worker.addr], 1).await;
    let cases = [
        ("SELEC 1", "SELEC"),
        ("SELECT * FROM no_such_table", "no_such_table"),
        ("SELECT no_such_column FROM nation", "no_such_column"),
        ("CREATE TABLE t AS SELECT 1", "only queries can run here"),
    ];
    for (sql, needle) in cases {
        let status = run(gateway, sql).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{sql}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{sql}: {}",
            status.message()
        );
        assert_eq!(run(gateway, "SELECT 1").await.unwrap(), 1);
    }
}

#[tokio::test]
async fn memory_limit_is_resource_exhausted() {
    let worker = start_worker(QueryLimits {
        memory_limit: 64 << 10,
        timeout: Duration::from_secs(30),
    })
    .await;
    let (gateway, _pool) = start_gateway(&[worker.addr], 1).await;
    let status = run(
        gateway,
        "SELECT count(*) FROM lineitem a JOIN lineitem b ON a.l_comment = b.l_comment",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("memory limit of 64 KiB"),
        "{}",
        status.message()
    );
    assert_eq!(
        run(gateway, "SELECT count(*) FROM nation").await.unwrap(),
        1
    );
}

#[tokio::test]
async fn time_limit_is_deadline_exceeded() {
    let worker = start_worker(QueryLimits {
        memory_limit: 256 << 20,
        timeout: Duration::from_millis(300),
    })
    .await;
    let (gateway, _pool) = start_gateway(&[worker.addr], 1).await;
    let status = run(
        gateway,
        "SELECT count(*) FROM lineitem a, lineitem b, nation c WHERE a.l_comment < b.l_comment",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("time limit of 300ms"),
        "{}",
        status.message()
    );
    assert_eq!(run(gateway, "SELECT 1").await.unwrap(), 1);
}

#[tokio::test]
async fn forged_and_tampered_tickets_are_refused() {
    let worker = start_worker(default_limits()).await;
    let (gateway, _pool) = start_gateway(&[worker.addr], 1).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = FlightClient::new(channel);
    let forged = TicketStatementQuery {
        statement_handle: TicketSigner::new(b"wrong key")
            .issue(TicketKind::Statement, "SELECT * FROM customer")
            .into(),
    }
    .as_any()
    .encode_to_vec();
    let err = flight.do_get(Ticket::new(forged)).await.unwrap_err();
    let status = status_of(err);
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("signature"),
        "{}",
        status.message()
    );

    let mut genuine = TicketSigner::new(KEY).issue(TicketKind::Statement, "SELECT 1");
    let n = genuine.len();
    genuine[n - 5] ^= 1;
    let tampered = TicketStatementQuery {
        statement_handle: genuine.into(),
    }
    .as_any()
    .encode_to_vec();
    let status = status_of(flight.do_get(Ticket::new(tampered)).await.unwrap_err());
    assert_eq!(status.code(), Code::Unauthenticated);

    let ok: Vec<_> = flight
        .do_get(Ticket::new("SELECT 1"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ok.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}

#[tokio::test]
async fn no_ready_worker_is_unavailable() {
    // A pool whose only worker does not exist.
    let dead: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (gateway, _pool) = start_gateway(&[dead], 0).await;
    let status = run(gateway, "SELECT 1").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("no ready worker"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn invalid_catalog_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.yaml");
    std::fs::write(&path, "tables:\n  - {name: t, location: missing.parquet}\n").unwrap();
    let err = quiver_worker::catalog::Catalog::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("tables[0].location"), "{err}");

    // A file that exists but is not Parquet fails warm-up with the table named.
    std::fs::write(dir.path().join("bad.parquet"), b"not parquet").unwrap();
    std::fs::write(&path, "tables:\n  - {name: bad, location: bad.parquet}\n").unwrap();
    let catalog = quiver_worker::catalog::Catalog::load(&path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = quiver_worker::run(
        listener,
        quiver_worker::WorkerConfig {
            catalog,
            limits: default_limits(),
            drain_timeout: Duration::from_secs(1),
        },
        TicketSigner::new(KEY),
        std::future::pending(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot register table bad"), "{err}");
}
