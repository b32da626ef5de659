//! The shared standby pool: where the workers a pool asks for come from, and how many standby
//! workers to keep.
//!
//! A standby worker is running and warmed as far as it can be without a pool (process, runtime,
//! query engine, object-store clients). Any pool can claim one; it then loads that pool's catalog
//! and joins it in well under a second, where a new pod takes a cold start (seconds). Every pool
//! shares the standby pool, so spares are paid once for all pools rather than once per pool,
//! and a pool can sit at zero.
//!
//! ```text
//!  pool needs n more workers ──► claims = min(n, standby ready)   (warm: joins in < 1 s)
//!                                cold starts = n − claims          (new pods: seconds)
//!  standby pool ──► refill to target = clamp(ceil(claims in window / window × refill time),
//!                                            min, max)
//! ```
//!
//! The target sizes the standby pool for the claims expected while one refill is under way
//! (the recent claim rate times the time a new standby worker takes to be ready), so a run of
//! wake-ups across pools keeps finding warm workers; the minimum covers a quiet fleet's first
//! wake-up and the maximum bounds what the fleet pays when claims surge.
//!
//! Pure code, like the scaling policy: the caller passes the time, and acts on the answers.

use std::collections::VecDeque;
use std::time::Duration;

/// How big the standby pool is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct StandbyConfig {
    /// Standby workers kept however quiet the fleet (default 2).
    pub min: u32,
    /// Most standby workers, however many claims (default 8).
    pub max: u32,
    /// Claims are counted over this window to estimate their rate (default 60 s, above 0).
    pub claim_window: Duration,
    /// Time a new standby worker takes to become ready: its cold start (default 10 s).
    pub refill_time: Duration,
}

impl Default for StandbyConfig {
    fn default() -> Self {
        Self {
            min: 2,
            max: 8,
            claim_window: Duration::from_secs(60),
            refill_time: Duration::from_secs(10),
        }
    }
}

/// A standby configuration that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StandbyError {
    /// `min` is above `max`.
    #[error("standby min {min} is above standby max {max}")]
    MinAboveMax {
        /// The minimum given.
        min: u32,
        /// The maximum given.
        max: u32,
    },
    /// The claim window is zero: no rate can be measured over it.
    #[error("standby claim window must be above zero")]
    ZeroWindow,
}

impl StandbyConfig {
    /// Checks the bounds hold together.
    pub fn validate(&self) -> Result<(), StandbyError> {
        if self.min > self.max {
            return Err(StandbyError::MinAboveMax {
                min: self.min,
                max: self.max,
            });
        }
        if self.claim_window.is_zero() {
            return Err(StandbyError::ZeroWindow);
        }
        Ok(())
    }
}

/// Where the workers a pool needs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Split {
    /// Standby workers claimed into the pool.
    pub claims: u32,
    /// New pods to start for the rest.
    pub cold_starts: u32,
}

/// Claim before cold start: a pool that needs `needed` more workers takes as many as it can
/// from the `available` ready standby workers, and starts new pods for the rest.
pub fn split(needed: u32, available: u32) -> Split {
    let claims = needed.min(available);
    Split {
        claims,
        cold_starts: needed - claims,
    }
}

/// Standby workers to keep when `claims` were made over the config's claim window: the claims
/// expected during one refill, within `[min, max]`.
pub fn target(config: &StandbyConfig, claims: u32) -> u32 {
    let window = config.claim_window.as_secs_f64();
    if window <= 0.0 {
        return config.min;
    }
    let expected = f64::from(claims) / window * config.refill_time.as_secs_f64();
    // Below max (at most u32::MAX), so the cast cannot wrap.
    let expected = expected.ceil().min(f64::from(config.max)) as u32;
    expected.max(config.min).min(config.max.max(config.min))
}

/// The standby pool's size policy over time: remembers the claims of the window.
#[derive(Debug, Clone)]
pub struct StandbyPolicy {
    config: StandbyConfig,
    /// Claims made, oldest first: (time, count).
    claims: VecDeque<(Duration, u32)>,
    now: Duration,
}

impl StandbyPolicy {
    /// A policy with no claims yet: its target is the minimum.
    pub fn new(config: StandbyConfig) -> Result<Self, StandbyError> {
        config.validate()?;
        Ok(Self {
            config,
            claims: VecDeque::new(),
            now: Duration::ZERO,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &StandbyConfig {
        &self.config
    }

    /// A pool at `now` needs `needed` more workers and `available` standby workers are ready:
    /// where they come from. The claims count towards the target.
    pub fn claim(&mut self, now: Duration, needed: u32, available: u32) -> Split {
        let split = split(needed, available);
        self.advance(now);
        if split.claims > 0 {
            self.claims.push_back((self.now, split.claims));
        }
        split
    }

    /// Standby workers to keep at `now`.
    pub fn target(&mut self, now: Duration) -> u32 {
        self.advance(now);
        let claims = self.claims.iter().map(|(_, n)| *n).sum();
        target(&self.config, claims)
    }

    /// New standby workers to start at `now` when `standing` are ready or starting.
    pub fn refill(&mut self, now: Duration, standing: u32) -> u32 {
        self.target(now).saturating_sub(standing)
    }

    /// Moves the clock (never backwards) and forgets claims older than the window.
    fn advance(&mut self, now: Duration) {
        self.now = self.now.max(now);
        let window = self.config.claim_window;
        while self
            .claims
            .front()
            .is_some_and(|(at, _)| self.now.saturating_sub(*at) >= window)
        {
            self.claims.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn claims_come_first_then_cold_starts() {
        // (needed, available, claims, cold starts)
        let table = [
            (0, 0, 0, 0),
            (0, 3, 0, 0),
            (1, 0, 0, 1),
            (1, 2, 1, 0),
            (3, 2, 2, 1),
            (5, 5, 5, 0),
        ];
        for (needed, available, claims, cold_starts) in table {
            assert_eq!(
                split(needed, available),
                Split {
                    claims,
                    cold_starts
                },
                "needed {needed}, available {available}"
            );
        }
    }

    #[test]
    fn target_follows_the_claim_rate_within_bounds() {
        let cfg = StandbyConfig::default();
        // 60 s window, 10 s refill: one standby per 6 claims a minute, at least 2, at most 8.
        let table = [(0, 2), (6, 2), (13, 3), (24, 4), (48, 8), (1000, 8)];
        for (claims, expected) in table {
            assert_eq!(target(&cfg, claims), expected, "{claims} claims");
        }
        let fixed = StandbyConfig {
            min: 3,
            max: 3,
            ..cfg
        };
        assert_eq!(target(&fixed, 100), 3);
    }

    #[test]
    fn claims_leave_the_window() {
        let mut policy = StandbyPolicy::new(StandbyConfig::default()).unwrap();
        assert_eq!(policy.target(secs(0)), 2);
        for t in 0..30 {
            policy.claim(secs(t), 1, 5);
        }
        assert_eq!(policy.target(secs(30)), 5, "30 claims a minute x 10 s");
        assert_eq!(policy.refill(secs(30), 2), 3);
        assert_eq!(policy.refill(secs(30), 7), 0);
        // Claims from standby only count: a cold start does not drain the standby pool.
        policy.claim(secs(31), 4, 0);
        assert_eq!(policy.target(secs(70)), 4, "the 19 claims of the last 60 s");
        assert_eq!(policy.target(secs(120)), 2, "every claim forgotten");
    }

    #[test]
    fn invalid_configs_are_refused() {
        let cfg = StandbyConfig {
            min: 4,
            max: 1,
            ..StandbyConfig::default()
        };
        assert_eq!(
            StandbyPolicy::new(cfg).unwrap_err(),
            StandbyError::MinAboveMax { min: 4, max: 1 }
        );
        let cfg = StandbyConfig {
            claim_window: Duration::ZERO,
            ..StandbyConfig::default()
        };
        assert_eq!(
            StandbyPolicy::new(cfg).unwrap_err(),
            StandbyError::ZeroWindow
        );
    }

    fn arb_config() -> impl Strategy<Value = StandbyConfig> {
        (0u32..10, 0u32..20, 1u64..600, 0u64..120).prop_map(|(min, span, window, refill)| {
            StandbyConfig {
                min,
                max: min + span,
                claim_window: secs(window),
                refill_time: secs(refill),
            }
        })
    }

    proptest! {
        #[test]
        fn split_never_claims_more_than_there_is_and_covers_the_need(
            needed in any::<u32>(),
            available in any::<u32>(),
        ) {
            let s = split(needed, available);
            prop_assert!(s.claims <= available && s.claims <= needed);
            prop_assert_eq!(s.claims + s.cold_starts, needed);
            // No cold start while a standby worker is left.
            prop_assert!(s.cold_starts == 0 || s.claims == available);
        }

        #[test]
        fn target_stays_within_bounds_and_grows_with_claims(
            cfg in arb_config(),
            claims in 0u32..100_000,
            more in 0u32..1000,
        ) {
            let t = target(&cfg, claims);
            prop_assert!(cfg.min <= t && t <= cfg.max, "{t}");
            prop_assert!(target(&cfg, claims + more) >= t);
        }

        #[test]
        fn policy_target_stays_within_bounds(
            cfg in arb_config(),
            events in prop::collection::vec((0u64..5000, 0u32..20, 0u32..20), 1..200),
        ) {
            let mut policy = StandbyPolicy::new(cfg.clone()).unwrap();
            let mut now = Duration::ZERO;
            for (gap_ms, needed, available) in events {
                now += Duration::from_millis(gap_ms);
                let s = policy.claim(now, needed, available);
                prop_assert_eq!(s.claims + s.cold_starts, needed);
                let t = policy.target(now);
                prop_assert!(cfg.min <= t && t <= cfg.max, "{t}");
                prop_assert!(policy.refill(now, t) == 0);
            }
        }
    }
}
