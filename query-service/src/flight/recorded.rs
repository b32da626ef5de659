//! A relayed result stream that records its query's outcome when it ends or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use arrow_flight::FlightData;
use futures::Stream;
use tonic::Status;

use crate::admission::Permit;
use crate::dispatch::FlightDataStream;
use crate::metrics::{Outcome, QueryRecord};

/// Passes messages through; the first error or the end of the stream sets the outcome, and
/// dropping the stream early leaves it `cancelled`.
/// The admission permit rides along, so the group's slot is held until the stream ends.
pub struct RecordedStream {
    inner: FlightDataStream,
    record: QueryRecord,
    _permit: Option<Permit>,
}

impl RecordedStream {
    /// Wraps `inner`, recording into `record` and holding `permit`.
    pub fn new(inner: FlightDataStream, record: QueryRecord, permit: Option<Permit>) -> Self {
        Self {
            inner,
            record,
            _permit: permit,
        }
    }
}

impl Stream for RecordedStream {
    type Item = Result<FlightData, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = std::task::ready!(this.inner.as_mut().poll_next(cx));
        match &item {
            None => this.record.finish(Outcome::Ok),
            Some(Err(status)) => this.record.finish(Outcome::from_code(status.code())),
            Some(Ok(_)) => {}
        }
        Poll::Ready(item)
    }
}
