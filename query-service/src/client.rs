//! A small Flight SQL client: `quiver sql` and the benchmark use it to run statements the way
//! any Flight SQL client does (GetFlightInfo, then DoGet on each endpoint).

use std::time::Duration;

use arrow::record_batch::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::{Channel, Endpoint};

/// Connects to a Flight SQL endpoint (`grpc://host:port`, `http://host:port` or `host:port`).
pub async fn connect(endpoint: &str) -> Result<FlightSqlServiceClient<Channel>, FlightError> {
    let rest = endpoint
        .strip_prefix("grpc://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    let channel = Endpoint::from_shared(format!("http://{rest}"))
        .map_err(|e| FlightError::ProtocolError(format!("invalid endpoint {endpoint:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| FlightError::ProtocolError(format!("cannot connect to {endpoint}: {e}")))?;
    Ok(FlightSqlServiceClient::new(channel))
}

/// Runs `sql` and returns every batch, with row count: for printing and benchmarks, where the
/// result is small by construction.
pub async fn query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, FlightError> {
    let info = client.execute(sql.to_owned(), None).await?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint
            .ticket
            .ok_or_else(|| FlightError::ProtocolError("endpoint without a ticket".into()))?;
        let stream = client.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

/// Turns a client error into the line a user should read: the server's status code and message.
pub fn describe(err: &FlightError) -> String {
    match err {
        FlightError::Tonic(status) => format!("{:?}: {}", status.code(), status.message()),
        other => other.to_string(),
    }
}

/// Runs `sql` straight on a worker the way the gateway does (an admitted ticket and a grant,
/// signed with the deployment's key), for benchmarks that measure the worker alone.
pub async fn query_worker(
    client: &mut FlightSqlServiceClient<Channel>,
    signer: &quiver_core::ticket::TicketSigner,
    sql: &str,
) -> Result<Vec<RecordBatch>, FlightError> {
    use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
    use prost::Message;
    use quiver_core::ticket::{QueryTicket, TicketKind};
    let all = vec!["*".to_owned()];
    let admitted = signer.sign(&QueryTicket {
        catalogs: Some(all.clone()),
        ..QueryTicket::new(TicketKind::Admitted, sql)
    });
    let grant = quiver_core::protocol::grant_header(signer, &all);
    fn request<T>(message: T, grant: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = grant.parse() {
            request
                .metadata_mut()
                .insert(quiver_core::protocol::GRANT_HEADER, value);
        }
        request
    }
    let command = TicketStatementQuery {
        statement_handle: admitted.into(),
    };
    let inner = client.inner_mut();
    let descriptor = arrow_flight::FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    let info = inner
        .get_flight_info(request(descriptor, &grant))
        .await?
        .into_inner();
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint
            .ticket
            .ok_or_else(|| FlightError::ProtocolError("endpoint without a ticket".into()))?;
        let stream = inner.do_get(request(ticket, &grant)).await?.into_inner();
        let decoded = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            stream.map_err(|status| FlightError::Tonic(Box::new(status))),
        );
        batches.extend(decoded.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}
