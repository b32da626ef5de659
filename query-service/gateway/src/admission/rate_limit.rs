//! Rate-limit policies: GCRA (the generic cell rate algorithm) per policy and key.
//!
//! GCRA keeps one timestamp per key, the "theoretical arrival time" (TAT): a request at `now` is
//! allowed when `TAT - burst_tolerance <= now`, and then moves TAT one emission interval on.
//! That gives exactly `qps` sustained with bursts of `burst`, in O(1) time and memory per key,
//! and tells a rejected client precisely when to retry.
//!
//! Time is passed in, never read here, so tests drive it by hand.

use std::collections::HashMap;
use std::time::Duration;

/// One rate: `qps` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Time between requests at the sustained rate.
    pub interval: Duration,
    /// How far ahead of schedule a key may run: `(burst - 1) * interval`.
    pub tolerance: Duration,
}

impl Rate {
    /// A rate of `qps` per second with bursts of `burst` (at least 1).
    pub fn new(qps: f64, burst: u32) -> Self {
        let interval = Duration::from_secs_f64(1.0 / qps);
        Self {
            interval,
            tolerance: interval * burst.max(1).saturating_sub(1),
        }
    }

    /// This rate split across `replicas` gateways, each enforcing its share.
    pub fn share(self, replicas: u32) -> Self {
        let r = replicas.max(1);
        Self {
            interval: self.interval * r,
            tolerance: self.tolerance * r,
        }
    }
}

/// The GCRA state of every key of one policy, in nanoseconds since an arbitrary origin.
#[derive(Debug, Default)]
pub struct Gcra {
    tat: HashMap<String, u128>,
}

impl Gcra {
    /// Admits one request for `key` at `now`, or says how long until it would be admitted.
    pub fn check(&mut self, key: &str, rate: Rate, now: Duration) -> Result<(), Duration> {
        let next = self.peek(key, rate, now)?;
        self.commit(key, next);
        Ok(())
    }

    /// Whether `key` would be admitted at `now`, without counting it: `Ok` holds the state to
    /// [`commit`](Self::commit) once every other policy has agreed, so a request refused by one
    /// policy does not use up another's quota.
    pub fn peek(&self, key: &str, rate: Rate, now: Duration) -> Result<u128, Duration> {
        let now = now.as_nanos();
        let tolerance = rate.tolerance.as_nanos();
        let tat = self.tat.get(key).copied().unwrap_or(now).max(now);
        if tat > now + tolerance {
            return Err(Duration::from_nanos(
                u64::try_from(tat - tolerance - now).unwrap_or(u64::MAX),
            ));
        }
        Ok(tat + rate.interval.as_nanos())
    }

    /// Records an admission checked with [`peek`](Self::peek).
    pub fn commit(&mut self, key: &str, next: u128) {
        match self.tat.get_mut(key) {
            Some(t) => *t = next,
            None => {
                self.tat.insert(key.to_owned(), next);
            }
        }
    }

    /// Forgets keys idle long enough that they are back at full burst, bounding memory.
    pub fn prune(&mut self, now: Duration) {
        let now = now.as_nanos();
        self.tat.retain(|_, tat| *tat > now);
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.tat.len()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.tat.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers `offered` requests per second for `secs` seconds, evenly spaced, and counts admits.
    fn admitted(rate: Rate, offered: u32, secs: u32) -> u32 {
        let mut g = Gcra::default();
        let step = Duration::from_secs(1) / offered;
        (0..offered * secs)
            .filter(|i| g.check("k", rate, step * *i).is_ok())
            .count() as u32
    }

    #[test]
    fn holds_rate_within_5_percent_under_10x_overload() {
        for (qps, burst) in [(50.0, 10), (20.0, 5), (1000.0, 100), (4.0, 1)] {
            let secs = 20;
            let got = admitted(Rate::new(qps, burst), (qps * 10.0) as u32, secs) as f64;
            let want = qps * secs as f64;
            assert!(
                (got - want).abs() / want <= 0.05 + (burst as f64 / want),
                "qps {qps}: admitted {got}, want about {want}"
            );
        }
    }

    #[test]
    fn allows_burst_then_tells_when_to_retry() {
        let rate = Rate::new(10.0, 5);
        let mut g = Gcra::default();
        let t0 = Duration::from_secs(100);
        for _ in 0..5 {
            assert!(g.check("k", rate, t0).is_ok());
        }
        let wait = g.check("k", rate, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(g.check("k", rate, t0 + wait).is_ok());
        // Keys are independent.
        assert!(g.check("other", rate, t0).is_ok());
    }

    #[test]
    fn share_divides_rate_among_replicas() {
        let rate = Rate::new(50.0, 10).share(2);
        let got = admitted(rate, 500, 20) as f64;
        assert!((got - 500.0).abs() / 500.0 <= 0.05, "{got}");
    }

    #[test]
    fn prune_drops_idle_keys() {
        let rate = Rate::new(10.0, 1);
        let mut g = Gcra::default();
        g.check("a", rate, Duration::ZERO).unwrap();
        g.prune(Duration::from_secs(1));
        assert!(g.is_empty());
    }
}
