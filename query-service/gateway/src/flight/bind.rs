//! `DoPut` with `CommandPreparedStatementQuery`: binds parameter values to a prepared statement.
//!
//! The gateway checks the values against the parameter schema carried in the signed handle and
//! answers with a new handle that also carries them (`DoPutPreparedStatementResult`), so nothing
//! is stored and the bound statement runs on whichever worker and replica the client reaches.

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::{Any, Command, DoPutPreparedStatementResult};
use arrow_flight::{FlightData, PutResult};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Status, Streaming};

use quiver_core::prepared;
use quiver_core::ticket::{QueryTicket, TicketKind, TicketSigner};

/// Parameter batches larger than this are refused: one row of values never comes close.
const MAX_PARAMETER_BYTES: usize = 1 << 20;

/// Reads the client's parameter batch and returns the re-signed, bound handle.
pub async fn bind(
    signer: &TicketSigner,
    mut stream: Streaming<FlightData>,
) -> Result<PutResult, Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("DoPut sent no message"))?;
    let descriptor = first.flight_descriptor.clone().ok_or_else(|| {
        Status::invalid_argument("the first DoPut message must carry a flight descriptor")
    })?;
    let any = Any::decode(&*descriptor.cmd)
        .map_err(|e| Status::invalid_argument(format!("invalid DoPut command: {e}")))?;
    let handle = match Command::try_from(any) {
        Ok(Command::CommandPreparedStatementQuery(cmd)) => cmd.prepared_statement_handle,
        Ok(other) => {
            return Err(Status::unimplemented(format!(
                "DoPut with {} is not supported: Quiver is read-only; DoPut only binds \
                 parameters to a prepared query",
                other.type_url()
            )));
        }
        Err(e) => {
            return Err(Status::invalid_argument(format!(
                "invalid DoPut command: {e}"
            )));
        }
    };
    let prepared = signer.verify(&handle, TicketKind::Prepared)?;
    let expected = match &prepared.param_schema {
        Some(text) => prepared::decode_schema(text)?,
        None => {
            return Err(Status::invalid_argument(
                "the statement takes no parameters",
            ));
        }
    };

    let mut size = 0usize;
    let messages = futures::stream::once(async { Ok(first) })
        .chain(stream)
        .map(move |message| {
            let message = message?;
            size += message.data_body.len() + message.data_header.len();
            if size > MAX_PARAMETER_BYTES {
                return Err(Status::invalid_argument(format!(
                    "parameter batches are limited to {MAX_PARAMETER_BYTES} bytes"
                )));
            }
            Ok(message)
        })
        .map_err(|status| FlightError::Tonic(Box::new(status)));
    let batches: Vec<_> = FlightRecordBatchStream::new_from_flight_data(messages)
        .try_collect()
        .await
        .map_err(|e| match e {
            FlightError::Tonic(status) => *status,
            other => Status::invalid_argument(format!("invalid parameter batch: {other}")),
        })?;
    let row = prepared::bind(&expected, &batches)?;
    let bound = QueryTicket {
        param_schema: prepared.param_schema.clone(),
        params: Some(prepared::encode_row(&row)?),
        ..QueryTicket::new(TicketKind::Prepared, &prepared.sql)
    };
    let result = DoPutPreparedStatementResult {
        prepared_statement_handle: Some(signer.sign(&bound).into()),
    };
    Ok(PutResult {
        app_metadata: result.encode_to_vec().into(),
    })
}
