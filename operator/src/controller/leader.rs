//! Leader election with a `coordination.k8s.io/v1` Lease, so only one operator replica
//! reconciles and scales at a time.
//!
//! ```text
//!  follower ── every renew interval: take the Lease if it is free or expired ──► leader
//!  leader   ── every renew interval: renew ──✗ (taken, or not renewed within the lease) ──► exit
//! ```
//!
//! Writes are optimistic (`replace` with the resourceVersion read), so two replicas that race
//! for an expired Lease cannot both win. A leader that loses the Lease stops the process
//! rather than trying to wind its work down: the pod restarts as a follower.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

/// A Lease held under one identity.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// How the leader lost its Lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Another replica holds the Lease now.
    #[error("lease {0} was taken by {1}")]
    Taken(String, String),
    /// The Lease could not be renewed before it expired.
    #[error("lease {name} not renewed within {duration:?}: {source}")]
    Expired {
        /// The Lease.
        name: String,
        /// Its duration.
        duration: Duration,
        /// The last error.
        #[source]
        source: Box<kube::Error>,
    },
}

impl LeaseLock {
    /// A lock on Lease `name` for `identity` (the pod name), held for `duration` per renewal.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// Takes the Lease if it is free, expired or already ours, and renews it. `Ok(Some(holder))`
    /// names the other holder when it is not ours.
    pub async fn try_acquire(&self, now: Timestamp) -> Result<Option<String>, kube::Error> {
        let duration_secs = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
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
                Ok(_) => Ok(None),
                // Another replica created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Some(String::new())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours {
            let ttl = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(0).into());
            let expired = spec
                .renew_time
                .as_ref()
                .is_none_or(|renewed| renewed.0 + ttl < now);
            if let Some(holder) = holder.filter(|_| !expired) {
                return Ok(Some(holder));
            }
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(MicroTime(now));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(None),
            // Someone wrote it since we read it: they renewed or took it.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Some(String::new())),
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
                Ok(None) => {
                    info!(lease = %self.name, identity = %self.identity, "leading");
                    return;
                }
                Ok(Some(holder)) if !logged => {
                    info!(lease = %self.name, %holder, "following");
                    logged = true;
                }
                Ok(Some(_)) => {}
                Err(e) => warn!(lease = %self.name, error = %e, "cannot read the lease"),
            }
            tokio::time::sleep(self.renew_interval()).await;
        }
    }

    /// Renews the Lease until it is lost; returns why.
    pub async fn hold(&self) -> LeaderError {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_interval()).await;
            match self.try_acquire(Timestamp::now()).await {
                Ok(None) => last_renewed = tokio::time::Instant::now(),
                Ok(Some(holder)) => return LeaderError::Taken(self.name.clone(), holder),
                Err(e) if last_renewed.elapsed() >= self.duration => {
                    return LeaderError::Expired {
                        name: self.name.clone(),
                        duration: self.duration,
                        source: Box::new(e),
                    };
                }
                Err(e) => warn!(lease = %self.name, error = %e, "lease renewal failed; retrying"),
            }
        }
    }

    /// A third of the lease: two renewals may fail before it expires.
    fn renew_interval(&self) -> Duration {
        self.duration / 3
    }
}
