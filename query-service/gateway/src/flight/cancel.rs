//! Cancel: the queries this gateway is streaming, keyed by the ticket the client redeemed, so a
//! `CancelFlightInfo` (or the older `CancelQuery` action) naming that ticket can stop them.
//!
//! ```text
//!  DoGet(ticket) ──► register(ticket, Query { permit, worker stream }) ──► RecordedStream
//!  CancelFlightInfo(info) ──► cancel(info's tickets) ──► Query::cancel: drops the worker stream
//!                             (the worker stops its plan) and the permit (the slot frees) now;
//!                             the client's stream ends CANCELLED
//! ```
//!
//! The registry is per gateway process: a cancel must reach the replica that serves the query's
//! `DoGet`. A client that simply disconnects needs no registry; dropping the stream does the same.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::recorded::Query;
use crate::auth::Identity;

type Key = [u8; 32];
/// The queries redeemed with one ticket, each with its registration id and who runs it.
type Entries = Vec<(u64, Identity, Arc<Query>)>;

/// Running queries by ticket.
#[derive(Debug, Default)]
pub struct Running {
    queries: Mutex<HashMap<Key, Entries>>,
    next_id: AtomicU64,
}

fn key(ticket: &[u8]) -> Key {
    Sha256::digest(ticket).into()
}

impl Running {
    /// Records `owner`'s `query`, redeemed with `ticket`; the registration ends when dropped.
    pub fn register(
        self: &Arc<Self>,
        ticket: &[u8],
        owner: &Identity,
        query: Arc<Query>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = key(ticket);
        self.queries
            .lock()
            .expect("running queries")
            .entry(key)
            .or_default()
            .push((id, owner.clone(), query));
        Registration {
            running: self.clone(),
            key,
            id,
        }
    }

    /// Cancels every running query of `owner` redeemed with `ticket`; returns how many there
    /// were. A ticket can be shared or leaked; a query is stopped only by whoever runs it.
    pub fn cancel(&self, ticket: &[u8], owner: &Identity) -> usize {
        let queries = self
            .queries
            .lock()
            .expect("running queries")
            .get(&key(ticket))
            .cloned()
            .unwrap_or_default();
        // Cancelled outside the registry's lock: dropping a query's parts wakes other tasks.
        queries
            .iter()
            .filter(|(_, who, query)| who == owner && query.cancel())
            .count()
    }

    /// Queries registered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queries
            .lock()
            .expect("running queries")
            .values()
            .map(Vec::len)
            .sum()
    }

    /// True when nothing is registered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A running query's entry in the registry, removed when dropped.
#[derive(Debug)]
pub struct Registration {
    running: Arc<Running>,
    key: Key,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut queries = self.running.queries.lock().expect("running queries");
        if let Some(list) = queries.get_mut(&self.key) {
            list.retain(|(id, _, _)| *id != self.id);
            if list.is_empty() {
                queries.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_reaches_every_query_of_the_ticket_and_registrations_clean_up() {
        let running = Arc::new(Running::default());
        let me = Identity {
            tenant: "t".into(),
            user: "me".into(),
        };
        let other_user = Identity {
            user: "other".into(),
            ..me.clone()
        };
        let queries: Vec<_> = (0..3).map(|_| Query::new(None)).collect();
        let a = running.register(b"t1", &me, queries[0].clone());
        let b = running.register(b"t1", &me, queries[1].clone());
        let other = running.register(b"t2", &me, queries[2].clone());
        assert_eq!(running.len(), 3);
        assert_eq!(
            running.cancel(b"t1", &other_user),
            0,
            "only the caller's own queries"
        );
        assert_eq!(running.cancel(b"t1", &me), 2);
        assert_eq!(
            running.cancel(b"t1", &me),
            0,
            "a second cancel finds nothing to stop"
        );
        assert!(
            queries[2].cancel(),
            "the other ticket's query was left running"
        );
        drop((a, b, other));
        assert!(running.is_empty());
    }
}
