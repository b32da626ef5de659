//! The fetch exchange on a worker's Flight port, spoken by hand: admitted DoGets answered as
//! frames, several on one connection, the grant checked as on the gRPC path, bad requests
//! refused, and HTTP/2 still served on the same port.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use arrow_flight::FlightData;
use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use futures::TryStreamExt;
use prost::Message;
use quiver_core::fetch;
use quiver_core::protocol::grant_header;
use quiver_core::ticket::{QueryTicket, TicketKind, TicketSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// What one fetch answered.
#[derive(Debug)]
enum Answer {
    Rows(Vec<FlightData>),
    Error(fetch::FetchFailure),
}

fn statement(signer: &TicketSigner, sql: &str) -> Vec<u8> {
    let handle = signer.sign(&QueryTicket {
        catalogs: Some(vec!["*".to_owned()]),
        ..QueryTicket::new(TicketKind::Admitted, sql)
    });
    TicketStatementQuery {
        statement_handle: handle.into(),
    }
    .as_any()
    .encode_to_vec()
}

/// A fetch connection the worker has taken: it echoes the magic before any request.
async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(fetch::MAGIC).await.unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, fetch::MAGIC);
    stream
}

async fn ask(stream: &mut TcpStream, ticket: &[u8], grant: &str) -> Answer {
    stream
        .write_all(&fetch::encode_request(ticket, grant))
        .await
        .unwrap();
    let mut data = Vec::new();
    loop {
        let mut header = [0u8; fetch::FRAME_HEADER_BYTES];
        stream.read_exact(&mut header).await.unwrap();
        let (kind, len) = fetch::parse_frame_header(header);
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        match kind {
            fetch::FRAME_DATA => data.push(FlightData::decode(&payload[..]).unwrap()),
            fetch::FRAME_END => return Answer::Rows(data),
            fetch::FRAME_ERROR => return Answer::Error(fetch::decode_error(&payload).unwrap()),
            other => panic!("unknown frame kind {other}"),
        }
    }
}

async fn rows(data: Vec<FlightData>) -> Vec<arrow::record_batch::RecordBatch> {
    arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(futures::stream::iter(
        data.into_iter().map(Ok),
    ))
    .try_collect()
    .await
    .unwrap()
}

#[tokio::test]
async fn a_worker_answers_fetches_and_checks_them_like_do_get() {
    let worker = start_worker(default_limits()).await;
    // The gateway waits for the worker to be SERVING.
    let (_gateway, _pool) = start_gateway(&[worker.addr], 1).await;
    let signer = TicketSigner::new(KEY);
    let grant = grant_header(&signer, &["*".to_owned()]);
    let mut stream = connect(worker.addr).await;

    // Two queries, one after another, on one connection.
    for (sql, expected) in [
        ("SELECT count(*) FROM nation", 25),
        ("SELECT count(*) FROM region", 5),
    ] {
        let Answer::Rows(data) = ask(&mut stream, &statement(&signer, sql), &grant).await else {
            panic!("{sql} failed");
        };
        let batches = rows(data).await;
        let counts: Vec<i64> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| b.column(0).as_primitive::<Int64Type>().value(0))
            .collect();
        assert_eq!(counts, vec![expected], "{sql}");
    }

    // A grant signed with another key is refused as on the gRPC path, and the connection
    // stays usable.
    let forged = grant_header(&TicketSigner::new(b"another key"), &["*".to_owned()]);
    let Answer::Error(failure) = ask(&mut stream, &statement(&signer, "SELECT 1"), &forged).await
    else {
        panic!("a forged grant was accepted");
    };
    assert_eq!(
        failure.code,
        tonic::Code::Unauthenticated as i32,
        "{failure:?}"
    );
    // A ticket signed with another key: the worker's ticket check, same as DoGet's.
    let Answer::Error(failure) = ask(
        &mut stream,
        &statement(&TicketSigner::new(b"another key"), "SELECT 1"),
        &grant,
    )
    .await
    else {
        panic!("a forged ticket was accepted");
    };
    assert_ne!(failure.code, tonic::Code::Ok as i32, "{failure:?}");
    // A query error is the query's status, not a broken connection.
    let Answer::Error(failure) = ask(
        &mut stream,
        &statement(&signer, "SELECT * FROM nope"),
        &grant,
    )
    .await
    else {
        panic!("an unknown table was answered");
    };
    assert_ne!(failure.code, tonic::Code::Unavailable as i32, "{failure:?}");
    let Answer::Rows(data) = ask(&mut stream, &statement(&signer, "SELECT 1"), &grant).await else {
        panic!("the connection broke after refusals");
    };
    assert_eq!(
        rows(data).await.iter().map(|b| b.num_rows()).sum::<usize>(),
        1
    );

    // A row over the message limit is the query's error, as on the gRPC path, and the
    // connection stays usable.
    let huge = "SELECT repeat('x', 70000000) AS s";
    let Answer::Error(failure) = ask(&mut stream, &statement(&signer, huge), &grant).await else {
        panic!("a row over the message limit was sent");
    };
    assert_eq!(
        failure.code,
        tonic::Code::ResourceExhausted as i32,
        "{failure:?}"
    );
    assert!(failure.message.contains("limit"), "{failure:?}");
    let Answer::Rows(_) = ask(&mut stream, &statement(&signer, "SELECT 1"), &grant).await else {
        panic!("the connection broke after a row over the limit");
    };
    let over_grpc = quiver::client::query_worker(&mut client(worker.addr).await, &signer, huge)
        .await
        .unwrap_err();
    assert!(
        matches!(&over_grpc, arrow_flight::error::FlightError::Tonic(s) if s.code() == tonic::Code::ResourceExhausted),
        "{over_grpc:?}"
    );

    // A request longer than any message is refused and the connection closed.
    let mut stream = connect(worker.addr).await;
    stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut header = [0u8; fetch::FRAME_HEADER_BYTES];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(fetch::parse_frame_header(header).0, fetch::FRAME_ERROR);
    let mut payload = vec![0u8; fetch::parse_frame_header(header).1];
    stream.read_exact(&mut payload).await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "the connection is closed after the refusal"
    );

    // A request whose lengths disagree is refused likewise.
    let mut stream = connect(worker.addr).await;
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 9]).await.unwrap();
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(fetch::parse_frame_header(header).0, fetch::FRAME_ERROR);

    // HTTP/2 clients are still served on the same port.
    let direct = quiver::client::query_worker(
        &mut quiver::client::connect(&worker.addr.to_string())
            .await
            .unwrap(),
        &signer,
        "SELECT count(*) FROM nation",
    )
    .await
    .unwrap();
    let total: usize = direct.iter().map(|b| b.num_rows()).sum();
    assert_eq!(total, 1);
    assert!(direct.iter().any(|b| b.column(0).len() == 1));
}
