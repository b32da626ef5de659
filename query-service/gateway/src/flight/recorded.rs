//! A relayed result stream that records its query's outcome when it ends or is dropped, and that
//! a cancel can stop from outside.
//!
//! A cancel cannot wait for the stream to be polled: while the client reads nothing, flow control
//! keeps the server from polling it at all. So the worker stream and the admission permit live in
//! a [`Query`] that the cancel reaches directly, drops at once, and marks; the client's stream
//! then ends with `CANCELLED` the next time it is polled.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use arrow_flight::FlightData;
use futures::Stream;
use tonic::Status;

use super::cancel::Registration;
use crate::admission::Permit;
use crate::dispatch::FlightDataStream;
use crate::metrics::{Outcome, QueryRecord};

/// What a running query holds: its worker stream and its resource-group slot.
#[derive(Default)]
pub struct Query {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    inner: Option<FlightDataStream>,
    permit: Option<Permit>,
    started: bool,
    cancelled: bool,
    /// Set when the query was ended for running past its time limit.
    timed_out: Option<std::time::Duration>,
    waker: Option<Waker>,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.held.lock().expect("query");
        f.debug_struct("Query")
            .field("running", &held.inner.is_some())
            .field("cancelled", &held.cancelled)
            .finish()
    }
}

impl Query {
    /// A query holding `permit`, before its worker stream exists.
    pub fn new(permit: Option<Permit>) -> Arc<Self> {
        Arc::new(Self {
            held: Mutex::new(Held {
                permit,
                ..Held::default()
            }),
        })
    }

    /// Stops the query: drops its worker stream (the worker's gRPC stream is reset, which stops
    /// the plan there) and its permit (the slot frees now). False if it had already ended.
    pub fn cancel(&self) -> bool {
        self.end(None)
    }

    /// Ends the query once `limit` has passed, whether or not its client reads: a timer, not
    /// a poll of the stream, which a client that stops reading never causes. The timer stops
    /// when the returned guard drops (the stream ended first).
    pub fn expire_after(self: &Arc<Self>, limit: std::time::Duration) -> Deadline {
        let query = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            if let Some(query) = query.upgrade()
                && query.end(Some(limit))
            {
                tracing::info!(limit = ?limit, "query ended by its time limit at the gateway");
            }
        });
        Deadline(task)
    }

    fn end(&self, timed_out: Option<std::time::Duration>) -> bool {
        let (inner, permit, waker) = {
            let mut held = self.held.lock().expect("query");
            if held.cancelled || (held.started && held.inner.is_none()) {
                return false;
            }
            held.cancelled = true;
            held.timed_out = timed_out;
            (held.inner.take(), held.permit.take(), held.waker.take())
        };
        drop(inner);
        drop(permit);
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

/// A query's time limit at the gateway; dropping it stops the timer.
#[derive(Debug)]
pub struct Deadline(tokio::task::JoinHandle<()>);

impl Drop for Deadline {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Passes messages through; the first error or the end of the stream sets the outcome, and
/// dropping the stream early leaves it `cancelled`.
/// The admission permit rides along, so the group's slot is held until the stream ends.
pub struct RecordedStream {
    query: Arc<Query>,
    record: QueryRecord,
    reported: bool,
    _registration: Option<Registration>,
    _deadline: Option<Deadline>,
}

impl RecordedStream {
    /// Relays `inner` for `query`, recording into `record`; `registration` lets a cancel find it.
    pub fn new(
        query: Arc<Query>,
        inner: FlightDataStream,
        record: QueryRecord,
        registration: Option<Registration>,
        deadline: Option<Deadline>,
    ) -> Self {
        {
            let mut held = query.held.lock().expect("query");
            held.started = true;
            if !held.cancelled {
                held.inner = Some(inner);
            }
        }
        Self {
            query,
            record,
            reported: false,
            _registration: registration,
            _deadline: deadline,
        }
    }
}

impl Stream for RecordedStream {
    type Item = Result<FlightData, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let mut held = this.query.held.lock().expect("query");
        if held.cancelled {
            if this.reported {
                return Poll::Ready(None);
            }
            this.reported = true;
            if let Some(limit) = held.timed_out {
                this.record
                    .finish(Outcome::from_code(tonic::Code::DeadlineExceeded));
                return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                    "query exceeded its time limit of {}",
                    humantime::format_duration(limit)
                )))));
            }
            this.record.finish(Outcome::Cancelled);
            return Poll::Ready(Some(Err(Status::cancelled(
                "the query was cancelled by the client",
            ))));
        }
        held.waker = Some(cx.waker().clone());
        let Some(inner) = held.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let item = std::task::ready!(inner.as_mut().poll_next(cx));
        match &item {
            None => {
                this.record.finish(Outcome::Ok);
                held.inner = None;
                held.permit = None;
            }
            Some(Err(status)) => this.record.finish(Outcome::from_code(status.code())),
            Some(Ok(_)) => {}
        }
        Poll::Ready(item)
    }
}
