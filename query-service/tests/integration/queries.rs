//! Queries through the gateway: the Flight SQL flow, prepared statements, plain SQL tickets,
//! metadata, and draining.

use arrow::array::{AsArray, Int64Array};
use arrow::datatypes::Int64Type;
use arrow_flight::sql::client::{FlightSqlServiceClient, PreparedStatement};
use arrow_flight::sql::{CommandGetTables, ProstMessageExt, TicketStatementQuery};
use arrow_flight::{FlightClient, Ticket};
use futures::TryStreamExt;
use prost::Message;
use tonic::transport::Channel;

use crate::common::*;

fn single_i64(batches: &[arrow::record_batch::RecordBatch]) -> i64 {
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let b = batches.iter().find(|b| b.num_rows() == 1).unwrap();
    b.column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .map(|a| a.value(0))
        .unwrap_or_else(|| b.column(0).as_primitive::<Int64Type>().value(0))
}

#[tokio::test]
async fn statement_through_gateway_matches_direct() {
    let worker = start_worker(default_limits()).await;
    let (gateway, _pool) = start_gateway(&[worker.addr], 1).await;
    let sql = "SELECT count(*) FROM lineitem WHERE l_quantity < 10";
    let direct = quiver::client::query_worker(
        &mut client(worker.addr).await,
        &quiver_core::ticket::TicketSigner::new(KEY),
        sql,
    )
    .await
    .unwrap();
    let via = quiver::client::query(&mut client(gateway).await, sql)
        .await
        .unwrap();
    assert!(single_i64(&direct) > 0);
    assert_eq!(single_i64(&direct), single_i64(&via));
}

#[tokio::test]
async fn plain_sql_ticket_and_prepared_statement() {
    let worker = start_worker(default_limits()).await;
    let (gateway, _pool) = start_gateway(&[worker.addr], 1).await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = FlightClient::new(channel);
    let batches: Vec<_> = flight
        .do_get(Ticket::new("SELECT count(*) FROM nation"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(single_i64(&batches), 25);

    let mut sql = client(gateway).await;
    let mut prepared = sql
        .prepare("SELECT count(*) FROM region".into(), None)
        .await
        .unwrap();
    assert_eq!(prepared.dataset_schema().unwrap().fields().len(), 1);
    for _ in 0..2 {
        assert_eq!(execute(&mut sql, &mut prepared).await, 5);
    }
    prepared.close().await.unwrap();
}

/// Executes a prepared statement and redeems its ticket: the single integer it returns.
async fn execute(
    sql: &mut FlightSqlServiceClient<Channel>,
    prepared: &mut PreparedStatement<Channel>,
) -> i64 {
    let info = prepared.execute().await.unwrap();
    single_i64(&redeem(sql, info).await)
}

/// The batches behind a FlightInfo's first endpoint.
async fn redeem(
    sql: &mut FlightSqlServiceClient<Channel>,
    info: arrow_flight::FlightInfo,
) -> Vec<arrow::record_batch::RecordBatch> {
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    sql.do_get(ticket)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn prepared_statement_with_parameters() {
    let worker = start_worker(default_limits()).await;
    let (gateway, _pool) = start_gateway(&[worker.addr], 1).await;
    let mut sql = client(gateway).await;
    let mut prepared = sql
        .prepare(
            "SELECT count(*) FROM nation WHERE n_regionkey = ?".into(),
            None,
        )
        .await
        .unwrap();
    let params = prepared.parameter_schema().unwrap().clone();
    assert_eq!(params.fields().len(), 1);
    assert_eq!(params.field(0).name(), "$1");
    // Each region has five nations; the arrow-flight client binds with DoPut and then executes
    // the handle the gateway returned.
    for region in [0i64, 4] {
        let batch = arrow::record_batch::RecordBatch::try_from_iter([(
            "region",
            std::sync::Arc::new(Int64Array::from(vec![region])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        prepared.set_parameters(batch).unwrap();
        assert_eq!(execute(&mut sql, &mut prepared).await, 5);
    }
    prepared.close().await.unwrap();
}

#[tokio::test]
async fn tables_with_schemas() {
    let worker = start_worker(default_limits()).await;
    let (gateway, _pool) = start_gateway(&[worker.addr], 1).await;
    let mut sql = client(gateway).await;
    let info = sql
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: Some("line%".into()),
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let batches = redeem(&mut sql, info).await;
    let names: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let col = b.column_by_name("table_name").unwrap().as_string::<i32>();
            col.iter()
                .map(|v| v.unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(names, vec!["lineitem".to_owned()]);
    assert!(batches[0].column_by_name("table_schema").is_some());
}

#[tokio::test]
async fn draining_worker_finishes_its_query_while_the_other_serves() {
    let a = start_worker(default_limits()).await;
    let b = start_worker(default_limits()).await;
    let (gateway, pool) = start_gateway(&[a.addr, b.addr], 2).await;
    let mut sql = client(gateway).await;
    // Large enough (hundreds of MB) that HTTP/2 flow control keeps it streaming.
    let big = "SELECT l.*, n.n_comment FROM lineitem l CROSS JOIN nation n CROSS JOIN region r";
    let expected = single_i64(
        &quiver::client::query(&mut sql, "SELECT count(*) * 125 FROM lineitem")
            .await
            .unwrap(),
    ) as usize;

    let info = sql.execute(big.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = sql.do_get(ticket).await.unwrap();
    let mut rows = stream.try_next().await.unwrap().unwrap().num_rows();
    assert_eq!(pool.in_flight(), 1);
    let busy_port: u16 = pool
        .workers()
        .into_iter()
        .find(|w| w.in_flight() == 1)
        .and_then(|w| w.endpoint().rsplit(':').next().map(str::to_owned))
        .unwrap()
        .parse()
        .unwrap();
    let (mut busy, idle) = if busy_port == a.addr.port() {
        (a, b)
    } else {
        (b, a)
    };

    // Drain the busy worker: it leaves rotation at once but finishes the running stream.
    drop(busy.stop.take());
    pool.wait_until(|p| p.ready_count() == 1).await;
    let n = quiver::client::query(&mut client(gateway).await, "SELECT count(*) FROM orders")
        .await
        .unwrap();
    assert!(single_i64(&n) > 0);
    assert!(!busy.task.is_finished());
    while let Some(batch) = stream.try_next().await.unwrap() {
        rows += batch.num_rows();
    }
    assert_eq!(rows, expected);
    busy.task.await.unwrap().unwrap();
    drop(idle);
}

#[tokio::test]
async fn an_admitted_ticket_runs_on_any_worker_and_nothing_else_does() {
    use quiver_core::ticket::{QueryTicket, TicketKind, TicketSigner};
    let a = start_worker(default_limits()).await;
    let b = start_worker(default_limits()).await;
    // Both warm (the gateway is only used here to wait for readiness).
    let _gateway = start_gateway(&[a.addr, b.addr], 2).await;
    let signer = TicketSigner::new(KEY);
    // Stateless: what the gateway admitted runs on either worker.
    for worker in [a.addr, b.addr] {
        let batches = quiver::client::query_worker(
            &mut client(worker).await,
            &signer,
            "SELECT count(*) FROM part",
        )
        .await
        .unwrap();
        assert_eq!(single_i64(&batches), 200);
    }
    // Straight to a worker without the gateway's grant: refused before anything runs.
    let status = client(a.addr)
        .await
        .execute("SELECT count(*) FROM part".into(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&status, arrow_flight::error::FlightError::Tonic(s) if s.code() == tonic::Code::Unauthenticated),
        "{status:?}"
    );
    // A grant signed with another key is no grant.
    let forged = TicketSigner::new(b"another key");
    let status = quiver::client::query_worker(&mut client(a.addr).await, &forged, "SELECT 1")
        .await
        .unwrap_err();
    assert!(
        matches!(&status, arrow_flight::error::FlightError::Tonic(s) if s.code() == tonic::Code::Unauthenticated),
        "{status:?}"
    );
    // The worker checks the plan against the grant's catalogs itself.
    let mut on_a = client(a.addr).await;
    let outsider = signer.sign(&QueryTicket {
        catalogs: Some(vec!["other".into()]),
        ..QueryTicket::new(TicketKind::Admitted, "SELECT * FROM (SELECT 1) x, part")
    });
    let ticket = Ticket::new(
        TicketStatementQuery {
            statement_handle: outsider.into(),
        }
        .as_any()
        .encode_to_vec(),
    );
    let mut request = tonic::Request::new(ticket);
    request.metadata_mut().insert(
        quiver_core::protocol::GRANT_HEADER,
        quiver_core::protocol::grant_header(&signer, &[])
            .parse()
            .unwrap(),
    );
    let status = on_a.inner_mut().do_get(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("quiver.public.part"),
        "{status:?}"
    );
}
