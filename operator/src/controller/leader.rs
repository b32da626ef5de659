//! Leader election with a `coordination.k8s.io/v1` Lease, so only one operator replica
//! reconciles and scales at a time. The timing follows client-go's leader election.
//!
//! ```text
//!  follower ── every retry period: take the Lease if it is free, or if its record has not
//!              changed for a lease duration of our own observation ──► leader
//!  leader   ── every retry period: renew (each attempt time-boxed)
//!              ──✗ taken, or no renewal within the renew deadline ──► step down (exit)
//! ```
//!
//! No replica compares another's `renewTime` with its own clock: the clocks of two nodes may
//! disagree by more than a lease. A follower notes, on its own monotonic clock, when it last saw
//! the record change, and takes over only a lease duration after that. The leader gives up once
//! the renew deadline (shorter than the lease) has passed since the start of its last
//! successful renewal; a follower saw that write no earlier than it started, so the leader has
//! stopped before any follower can take over, as long as the clocks run at about the same rate.
//!
//! Writes are optimistic (`replace` with the resourceVersion read), so two replicas that race
//! for an expired Lease cannot both win. A leader that loses the Lease stops the process
//! rather than trying to wind its work down: the pod restarts as a follower.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How long a Lease lasts and how its holder keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long followers wait, from the last change they saw, before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// Time between two attempts to take or renew the Lease.
    pub retry_period: Duration,
}

/// client-go's defaults: a 15 s lease, a 10 s renew deadline, a try every 2 s.
impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Lease timings that could let two replicas lead at once, or the leader step down for nothing.
#[derive(Debug, thiserror::Error)]
#[error(
    "leader election needs retry period ({retry_period:?}) < renew deadline ({renew_deadline:?}) \
     < lease duration ({lease_duration:?}), and a lease of at least 1s"
)]
pub struct InvalidTiming {
    /// The lease duration given.
    pub lease_duration: Duration,
    /// The renew deadline given.
    pub renew_deadline: Duration,
    /// The retry period given.
    pub retry_period: Duration,
}

impl Timing {
    /// Checked timings: the leader must step down before the lease can end for the others
    /// (deadline < lease), and must get more than one try within its deadline (retry <
    /// deadline). The Lease stores whole seconds, so the lease must be at least one.
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, InvalidTiming> {
        let valid = !retry_period.is_zero()
            && retry_period < renew_deadline
            && renew_deadline < lease_duration
            && lease_duration >= Duration::from_secs(1);
        if !valid {
            return Err(InvalidTiming {
                lease_duration,
                renew_deadline,
                retry_period,
            });
        }
        Ok(Self {
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }

    /// The most one renewal attempt may take: half the deadline, so a request that hangs on a
    /// dead connection leaves time for another on a new one, while a slow API server still
    /// has seconds to answer.
    fn attempt_timeout(&self) -> Duration {
        self.renew_deadline / 2
    }
}

/// What one attempt to take or renew the Lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the Lease: it created, renewed or took it.
    Leading,
    /// Another replica holds it and, as far as this replica has seen, is keeping it.
    Following(String),
    /// Someone wrote the Lease between our read and our write; it is theirs for now.
    Conflict,
}

/// How the leader lost its Lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Another replica holds the Lease now.
    #[error("lease {0} was taken by {1}")]
    Taken(String, String),
    /// No renewal succeeded within the renew deadline, so this replica stepped down before
    /// the lease could run out for the others.
    #[error("lease {name} not renewed within {deadline:?}; stepping down")]
    NotRenewed {
        /// The Lease.
        name: String,
        /// The renew deadline.
        deadline: Duration,
        /// Why the last attempt failed, if one was made.
        #[source]
        last: Option<RenewError>,
    },
}

/// Why one renewal attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The API server refused or could not be reached.
    #[error(transparent)]
    Api(Box<kube::Error>),
    /// The API server did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The Lease changed between our read and write.
    #[error("the lease changed while renewing it")]
    Conflict,
}

/// The part of a Lease record whose change shows that its holder is alive.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
}

/// What this replica last saw of the Lease, on its own clock.
#[derive(Debug, Default)]
struct Seen {
    /// The record, and when it was first seen as it is.
    record: Option<(Record, Instant)>,
    /// Start of the last attempt that left this replica holding the Lease.
    renewed: Option<Instant>,
}

/// A Lease held under one identity.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    seen: Arc<Mutex<Seen>>,
}

impl LeaseLock {
    /// A lock on Lease `name` for `identity` (the pod name).
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: Timing) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            timing,
            seen: Arc::default(),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When this replica first saw `lease` as it is now (now, if it differs from the last).
    fn observe(&self, lease: &Lease) -> Instant {
        let spec = lease.spec.as_ref();
        let record = Record {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec.and_then(|s| s.renew_time.clone()),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let mut seen = self.seen();
        match &seen.record {
            Some((last, since)) if *last == record => *since,
            _ => {
                let now = Instant::now();
                seen.record = Some((record, now));
                now
            }
        }
    }

    fn led(&self, started: Instant, written: &Lease) -> Attempt {
        self.observe(written);
        self.seen().renewed = Some(started);
        Attempt::Leading
    }

    /// One attempt to take the Lease (if it is free, ours, or unchanged for a lease duration
    /// of our observation) or renew it. `now` is only written into the record, for people
    /// reading it; no replica's decision depends on it.
    pub async fn try_acquire(&self, now: Timestamp) -> Result<Attempt, kube::Error> {
        let started = Instant::now();
        let duration_secs = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => Ok(self.led(started, &created)),
                // Another replica created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let unchanged_since = self.observe(&lease);
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() != Some(self.identity.as_str()) {
            if let Some(holder) = holder {
                // The holder's own figure; ours if it wrote none.
                let lease_duration = spec
                    .lease_duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .filter(|s| *s > 0)
                    .map_or(self.timing.lease_duration, Duration::from_secs);
                if unchanged_since.elapsed() < lease_duration {
                    return Ok(Attempt::Following(holder));
                }
                info!(lease = %self.name, %holder, ?lease_duration, "lease not renewed; taking over");
            }
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(MicroTime(now));
        // The resourceVersion read travels with the object: a write since then is a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => Ok(self.led(started, &written)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up so a follower takes over at once instead of after it expires.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            warn!(lease = %self.name, error = %e, "could not release the lease");
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        let mut logged = false;
        loop {
            match self.try_acquire(Timestamp::now()).await {
                Ok(Attempt::Leading) => {
                    info!(lease = %self.name, identity = %self.identity, "leading");
                    return;
                }
                Ok(Attempt::Following(holder)) if !logged => {
                    info!(lease = %self.name, %holder, "following");
                    logged = true;
                }
                Ok(Attempt::Following(_)) => {}
                Ok(Attempt::Conflict) => {
                    debug!(lease = %self.name, "another replica wrote the lease first");
                }
                Err(e) => warn!(lease = %self.name, error = %e, "cannot read the lease"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews the Lease every retry period until it is lost; returns why. The renew deadline
    /// runs from the start of the last successful attempt (of `acquire` or here), or from this
    /// call if there was none. Each attempt is cut off at the deadline, so a hung API call
    /// cannot keep a leader past it.
    pub async fn hold(&self) -> LeaderError {
        let timing = self.timing;
        let called = Instant::now();
        let mut last = None;
        loop {
            let renewed = self.seen().renewed.unwrap_or(called);
            let deadline = renewed + timing.renew_deadline;
            tokio::time::sleep_until((Instant::now() + timing.retry_period).min(deadline)).await;
            let now = Instant::now();
            if now >= deadline {
                return LeaderError::NotRenewed {
                    name: self.name.clone(),
                    deadline: timing.renew_deadline,
                    last,
                };
            }
            let budget = (deadline - now).min(timing.attempt_timeout());
            let error = match tokio::time::timeout(budget, self.try_acquire(Timestamp::now())).await
            {
                Ok(Ok(Attempt::Leading)) => {
                    last = None;
                    continue;
                }
                Ok(Ok(Attempt::Following(holder))) => {
                    return LeaderError::Taken(self.name.clone(), holder);
                }
                // The next read shows whether it was taken.
                Ok(Ok(Attempt::Conflict)) => RenewError::Conflict,
                Ok(Err(e)) => RenewError::Api(Box::new(e)),
                Err(_) => RenewError::Timeout(budget),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            warn!(lease = %self.name, error = %error, ?left, "lease renewal failed; retrying");
            last = Some(error);
        }
    }
}
