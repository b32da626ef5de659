//! Standby workers: refused without the gateway's grant, unavailable until claimed, claimed once
//! (a bad catalog leaves them standby), and then ordinary workers a gateway dispatches to.

use std::time::Duration;

use arrow_flight::Action;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use quiver_core::protocol::{GRANT_HEADER, WORKER_STATE_HEADER, grant_header};
use quiver_core::ticket::TicketSigner;
use quiver_gateway::WorkerPool;
use quiver_worker::StandbyConfig;
use quiver_worker::catalog::CatalogFile;
use quiver_worker::claim::CLAIM_ACTION;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;

use super::common::{self, KEY};

fn claim(catalog: &str, grant: bool) -> tonic::Request<Action> {
    let mut request = tonic::Request::new(Action {
        r#type: CLAIM_ACTION.to_owned(),
        body: catalog.as_bytes().to_vec().into(),
    });
    if grant {
        let header = grant_header(&TicketSigner::new(KEY), &[]);
        request
            .metadata_mut()
            .insert(GRANT_HEADER, header.parse().unwrap());
    }
    request
}

async fn run(
    client: &mut FlightServiceClient<tonic::transport::Channel>,
    request: tonic::Request<Action>,
) -> Result<(), tonic::Status> {
    let mut answers = client.do_action(request).await?.into_inner();
    while answers.message().await?.is_some() {}
    Ok(())
}

/// `SELECT count(*) FROM nation` through the gateway at `gateway`.
async fn nations(gateway: std::net::SocketAddr) -> i64 {
    let mut client = common::client(gateway).await;
    let batches = quiver::client::query(&mut client, "SELECT count(*) FROM nation")
        .await
        .unwrap();
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0)
}

/// A standby worker on loopback, its stop signal and its task.
async fn start_standby() -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), quiver_worker::WorkerError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = StandbyConfig {
        limits: common::default_limits(),
        drain_timeout: Duration::from_secs(10),
    };
    let task = tokio::spawn(quiver_worker::run_standby(
        listener,
        config,
        TicketSigner::new(KEY),
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop, task)
}

#[tokio::test]
async fn a_standby_worker_is_claimed_once_with_the_grant_and_then_serves() {
    let (addr, stop, task) = start_standby().await;
    // The body is the catalog document itself, as the supervisor and the gateway send it.
    let document = CatalogFile::document_of(&common::catalog_path()).unwrap();
    let catalog = document.as_str();
    let pool = WorkerPool::new("p");
    pool.add(&addr.to_string()).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = FlightServiceClient::new(channel);

    // Without the gateway's grant a claim is refused before its body is read.
    let err = run(&mut flight, claim(catalog, false)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    // Unclaimed: queries are refused as during warm-up, a fact the gateway acts on.
    let mut sql = common::client(addr).await;
    let err = quiver::client::query_worker(&mut sql, &TicketSigner::new(KEY), "SELECT 1")
        .await
        .unwrap_err();
    let FlightError::Tonic(status) = err else {
        panic!("expected a status, got {err}")
    };
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    assert!(status.metadata().contains_key(WORKER_STATE_HEADER));
    assert_eq!(pool.ready_count(), 0);

    // A bad catalog is the claimer's mistake and leaves the worker standby.
    let err = run(
        &mut flight,
        claim("tables: [{name: t, location: /no/such.parquet}]", true),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert_eq!(pool.ready_count(), 0);

    // A good claim answers once the worker serves; a second is refused.
    run(&mut flight, claim(catalog, true)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), pool.wait_ready(1))
        .await
        .expect("the claimed worker reports SERVING");
    let err = run(&mut flight, claim(catalog, true)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    // An ordinary worker now: a gateway dispatches to it.
    let (gateway, _) = common::start_gateway(&[addr], 1).await;
    assert_eq!(nations(gateway).await, 25);

    drop(stop);
    task.await.unwrap().unwrap();
}

/// The TPC-H catalog as a QueryPool carries it: a JSON object, absolute locations.
fn pool_catalog_json() -> String {
    let document = CatalogFile::document_of(&common::catalog_path()).unwrap();
    let file: CatalogFile = serde_yaml::from_str(&document).unwrap();
    serde_json::to_string(&file).unwrap()
}

/// Waits for the next counted claim and returns the metrics text then.
async fn next_claim(
    claims: &mut tokio::sync::watch::Receiver<u64>,
    metrics: &quiver_gateway::GatewayMetrics,
    pools: &quiver_gateway::Pools,
) -> String {
    tokio::time::timeout(Duration::from_secs(60), claims.changed())
        .await
        .expect("a claim within a minute")
        .unwrap();
    metrics.encode(&pools.all(), &[])
}

#[tokio::test]
async fn a_gateway_claims_a_standby_worker_listed_in_its_pool_and_serves_through_it() {
    let (worker, stop, task) = start_standby().await;

    // A gateway serving pool "p", whose QueryPool gives a catalog that cannot load.
    let pools = quiver_gateway::Pools::new(["p"]);
    pools.set_catalog(
        "p",
        Some(r#"{"tables":[{"name":"t","location":"/no/such.parquet"}]}"#.into()),
    );
    let metrics = std::sync::Arc::new(quiver_gateway::GatewayMetrics::default());
    let mut claims = metrics.subscribe_claims();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = listener.local_addr().unwrap();
    let config = common::gateway_config(pools.clone(), metrics.clone(), None);
    tokio::spawn(quiver_gateway::run(
        listener,
        config,
        std::future::pending(),
    ));

    // Discovery lists the standby in the pool (on Kubernetes: relabelled into it, ready by
    // quiver.Ready). The gateway claims it; the worker refuses the bad catalog.
    let pool = pools.get("p").unwrap();
    pool.add(&worker.to_string()).unwrap();
    let text = next_claim(&mut claims, &metrics, &pools).await;
    assert!(
        text.contains(r#"quiver_claims_total{pool="p",outcome="refused"} 1"#),
        "{text}"
    );
    assert_eq!(
        pool.ready_count(),
        0,
        "a refused claim leaves the worker standby"
    );

    // The QueryPool's catalog is fixed: the next try claims the worker, which then serves.
    pools.set_catalog("p", Some(pool_catalog_json()));
    tokio::time::timeout(Duration::from_secs(60), pool.wait_ready(1))
        .await
        .expect("the claimed worker reports SERVING");
    assert_eq!(nations(gateway).await, 25);
    let text = metrics.encode(&pools.all(), &[]);
    assert!(
        text.contains(r#"quiver_claims_total{pool="p",outcome="claimed"} 1"#),
        "{text}"
    );

    drop(stop);
    task.await.unwrap().unwrap();
}
