//! Statement tickets whose planning call was already counted against the rate limits, so the
//! ticket's first `DoGet` is not counted a second time: a Flight SQL query (GetFlightInfo then
//! DoGet) costs one unit of quota, like a plain `DoGet`. Every later redemption of the same
//! ticket counts in full.
//!
//! Bounded: past [`MAX_PREPAID`] entries the oldest go first, which can only make a client pay
//! twice, never let it pay nothing. Per gateway replica: a DoGet that lands on another replica
//! is counted there.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Unredeemed tickets remembered at most.
const MAX_PREPAID: usize = 100_000;
/// How long a ticket stays prepaid: clients redeem it right after planning.
const PREPAID_TTL: Duration = Duration::from_secs(60);

/// Prepaid ticket nonces, with the tenant that paid.
#[derive(Debug, Default)]
pub struct Prepaid {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_nonce: HashMap<u64, (String, Instant)>,
    order: VecDeque<u64>,
}

impl Prepaid {
    /// Records that `tenant` paid for the ticket with `nonce`.
    pub fn insert(&self, nonce: u64, tenant: &str) {
        let mut entries = self.inner.lock().expect("prepaid");
        let now = Instant::now();
        while entries.order.len() >= MAX_PREPAID
            || entries.order.front().is_some_and(|n| {
                entries
                    .by_nonce
                    .get(n)
                    .is_none_or(|(_, at)| now.duration_since(*at) > PREPAID_TTL)
            })
        {
            let Some(old) = entries.order.pop_front() else {
                break;
            };
            entries.by_nonce.remove(&old);
        }
        entries.by_nonce.insert(nonce, (tenant.to_owned(), now));
        entries.order.push_back(nonce);
    }

    /// True (once) when `tenant` prepaid the ticket with `nonce` and it has not expired.
    pub fn take(&self, nonce: u64, tenant: &str) -> bool {
        let mut entries = self.inner.lock().expect("prepaid");
        match entries.by_nonce.get(&nonce) {
            Some((paid_by, at)) if paid_by == tenant && at.elapsed() <= PREPAID_TTL => {
                entries.by_nonce.remove(&nonce);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_prepaid_once_and_only_for_its_tenant() {
        let prepaid = Prepaid::default();
        prepaid.insert(7, "a");
        assert!(!prepaid.take(7, "b"));
        assert!(prepaid.take(7, "a"));
        assert!(!prepaid.take(7, "a"), "the second redemption pays");
        assert!(!prepaid.take(8, "a"));
    }

    #[test]
    fn stays_bounded() {
        let prepaid = Prepaid::default();
        for n in 0..(MAX_PREPAID as u64 + 10) {
            prepaid.insert(n, "a");
        }
        let entries = prepaid.inner.lock().unwrap();
        assert!(entries.by_nonce.len() <= MAX_PREPAID);
        assert!(!entries.by_nonce.contains_key(&0));
    }
}
