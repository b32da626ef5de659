//! Rate-limit policies: GCRA (the generic cell rate algorithm) per policy and key.
//!
//! GCRA keeps one timestamp per key, the "theoretical arrival time" (TAT): a request at `now` is
//! allowed when `TAT - burst_tolerance <= now`, and then moves TAT one emission interval on.
//! That gives exactly `qps` sustained with bursts of `burst`, in O(1) time and memory per key,
//! and tells a rejected client precisely when to retry.
//!
//! Time is passed in, never read here, so tests drive it by hand.
//!
//! Which policies apply to a request and under which key is decided here too
//! ([`RateLimitPolicy::key_for`]), and [`Limiters`] checks a request against all of them at once.

use std::collections::HashMap;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

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

/// What a rate-limit key is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    /// One bucket for everyone.
    Global,
    /// Per tenant.
    Tenant,
    /// Per user.
    User,
    /// Per resource group (leaf path).
    Group,
}

/// A compiled rate-limit policy.
#[derive(Debug, Clone)]
pub struct RateLimitPolicy {
    /// Name, reported in rejections.
    pub name: String,
    /// Key parts.
    pub key: Vec<KeyPart>,
    /// The rate.
    pub rate: Rate,
    /// Applies only to this tenant, if set.
    pub tenant: Option<String>,
    /// Applies only to users matching this, if set.
    pub user: Option<Regex>,
    /// Applies only to groups under this path, if set.
    pub group: Option<String>,
}

/// Who a request is from and, once classified, where it runs: what policies match and key.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Tenant name.
    pub tenant: &'a str,
    /// User name.
    pub user: &'a str,
    /// The resource group's path, once the statement is classified.
    pub group: Option<&'a str>,
}

impl RateLimitPolicy {
    /// True when the policy needs the group (matched or keyed by it), so it is checked only
    /// after classification.
    pub fn needs_group(&self) -> bool {
        self.group.is_some() || self.key.contains(&KeyPart::Group)
    }

    /// The bucket `subject` counts in, or `None` when the policy does not apply to it.
    pub fn key_for(&self, subject: &Subject) -> Option<String> {
        let path = subject.group.unwrap_or("");
        if self.tenant.as_ref().is_some_and(|t| t != subject.tenant)
            || self
                .user
                .as_ref()
                .is_some_and(|u| !u.is_match(subject.user))
            || self
                .group
                .as_ref()
                .is_some_and(|g| path != g && !path.starts_with(&format!("{g}.")))
        {
            return None;
        }
        let key = self
            .key
            .iter()
            .map(|part| match part {
                KeyPart::Global => "global".to_owned(),
                KeyPart::Tenant => format!("tenant={}", subject.tenant),
                KeyPart::User => format!("user={}", subject.user),
                KeyPart::Group => format!("group={path}"),
            })
            .collect::<Vec<_>>()
            .join(",");
        Some(key)
    }
}

/// A request one policy refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The policy's name.
    pub policy: String,
    /// The bucket.
    pub key: String,
    /// When the request would be admitted.
    pub retry_after: Duration,
}

/// Keys per policy above which idle keys are dropped.
const PRUNE_AT: usize = 100_000;

/// The state of every policy of one policy version, in the policies' order.
#[derive(Debug)]
pub struct Limiters {
    gcra: Vec<Gcra>,
}

impl Limiters {
    /// State for `policies` policies, all at full burst.
    pub fn new(policies: usize) -> Self {
        Self {
            gcra: (0..policies).map(|_| Gcra::default()).collect(),
        }
    }

    /// Checks `subject` against every policy that applies at this stage: without a group,
    /// those that need none; with one, those that need it. Each limit is shared by `replicas`
    /// gateways. The request counts against the policies only when all of them admit it.
    pub fn admit(
        &mut self,
        policies: &[RateLimitPolicy],
        subject: &Subject,
        replicas: u32,
        now: Duration,
    ) -> Result<(), Refused> {
        let mut passed = Vec::new();
        for (i, policy) in policies.iter().enumerate() {
            if policy.needs_group() != subject.group.is_some() {
                continue;
            }
            let (Some(key), Some(gcra)) = (policy.key_for(subject), self.gcra.get(i)) else {
                continue;
            };
            match gcra.peek(&key, policy.rate.share(replicas), now) {
                Ok(next) => passed.push((i, key, next)),
                Err(retry_after) => {
                    return Err(Refused {
                        policy: policy.name.clone(),
                        key,
                        retry_after,
                    });
                }
            }
        }
        for (i, key, next) in passed {
            let gcra = &mut self.gcra[i];
            gcra.commit(&key, next);
            if gcra.len() > PRUNE_AT {
                gcra.prune(now);
            }
        }
        Ok(())
    }
}

/// The GCRA state of every key of one policy, in nanoseconds since an arbitrary origin.
#[derive(Debug, Default)]
pub struct Gcra {
    tat: HashMap<String, u128>,
}

impl Gcra {
    /// Admits one request for `key` at `now`, or says how long until it would be admitted.
    #[cfg(test)]
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
    #[cfg(test)]
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

    fn policy(name: &str, key: Vec<KeyPart>, rate: Rate) -> RateLimitPolicy {
        RateLimitPolicy {
            name: name.into(),
            key,
            rate,
            tenant: None,
            user: None,
            group: None,
        }
    }

    #[test]
    fn policies_match_and_key_by_subject() {
        let mut adhoc = policy("adhoc", vec![KeyPart::Group], Rate::new(1.0, 1));
        adhoc.group = Some("adhoc".into());
        adhoc.tenant = Some("noisy".into());
        let noisy = Subject {
            tenant: "noisy",
            user: "bob",
            group: Some("adhoc.bob"),
        };
        assert!(adhoc.needs_group());
        assert_eq!(adhoc.key_for(&noisy).as_deref(), Some("group=adhoc.bob"));
        // Not under the group (a prefix of the name is not a parent), not the tenant.
        assert_eq!(
            adhoc.key_for(&Subject {
                group: Some("adhocx"),
                ..noisy
            }),
            None
        );
        assert_eq!(
            adhoc.key_for(&Subject {
                tenant: "quiet",
                ..noisy
            }),
            None
        );
        let per_user = policy("u", vec![KeyPart::Tenant, KeyPart::User], Rate::new(1.0, 1));
        assert!(!per_user.needs_group());
        assert_eq!(
            per_user.key_for(&noisy).as_deref(),
            Some("tenant=noisy,user=bob")
        );
    }

    #[test]
    fn a_request_counts_only_when_every_policy_admits_it() {
        let policies = vec![
            policy("wide", vec![KeyPart::Global], Rate::new(1.0, 3)),
            policy("narrow", vec![KeyPart::User], Rate::new(1.0, 1)),
        ];
        let mut limiters = Limiters::new(policies.len());
        let alice = Subject {
            tenant: "t",
            user: "alice",
            group: None,
        };
        let now = Duration::from_secs(10);
        assert!(limiters.admit(&policies, &alice, 1, now).is_ok());
        let refused = limiters.admit(&policies, &alice, 1, now).unwrap_err();
        assert_eq!(refused.policy, "narrow");
        assert_eq!(refused.key, "user=alice");
        // The refused request did not use up the wide policy: two more users still fit.
        for user in ["bob", "carol"] {
            let subject = Subject { user, ..alice };
            assert!(
                limiters.admit(&policies, &subject, 1, now).is_ok(),
                "{user}"
            );
        }
        let dave = Subject {
            user: "dave",
            ..alice
        };
        assert_eq!(
            limiters.admit(&policies, &dave, 1, now).unwrap_err().policy,
            "wide"
        );
        // Group-keyed policies wait for the group; identity-keyed ones are not checked again.
        let placed = Subject {
            group: Some("g"),
            ..dave
        };
        assert!(limiters.admit(&policies, &placed, 1, now).is_ok());
    }
}
