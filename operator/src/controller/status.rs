//! A pool's status from what the reconciler saw, as a pure function: the reconciler writes it
//! only when it differs from the stored status, so an unchanged pool costs no write.
//!
//! Conditions:
//! - `Ready`: every desired worker is ready (`WorkersReady`), or not yet (`WorkersStarting`).
//! - `Scaling`: the Deployment is moving to the desired size (`ScalingUp`, `ScalingDown`) or
//!   there (`Stable`).
//! - `Degraded`: the spec is invalid (`InvalidScaling`, `InvalidLimits`, `InvalidTemplate`:
//!   the workers keep their last good shape) or the gateway's demand cannot be read
//!   (`DemandUnavailable`: the pool holds its size), else `AsExpected`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::scale::Figures;
use crate::crd::QueryPoolStatus;

/// Condition types.
pub const READY: &str = "Ready";
/// Condition type: the size is changing.
pub const SCALING: &str = "Scaling";
/// Condition type: something needs the user's attention.
pub const DEGRADED: &str = "Degraded";

/// What the reconciler observed this time.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The pool's metadata.generation.
    pub generation: Option<i64>,
    /// Workers wanted.
    pub desired: u32,
    /// Why that many.
    pub reason: String,
    /// The Deployment's status: pods, ready pods. `None` while the spec is invalid and nothing
    /// was applied.
    pub deployment: Option<(i32, i32)>,
    /// The gateways' figures.
    pub figures: Option<Figures>,
    /// Why the pool is degraded, if it is: (reason, message).
    pub degraded: Option<(String, String)>,
    /// Now.
    pub now: Time,
    /// The selector string of the workers.
    pub selector: String,
}

/// The new status, keeping unchanged conditions' transition times and the last scale time
/// unless the desired size changed.
pub fn status(previous: Option<&QueryPoolStatus>, seen: &Observed) -> QueryPoolStatus {
    let empty = QueryPoolStatus::default();
    let previous = previous.unwrap_or(&empty);
    let desired = i32::try_from(seen.desired).unwrap_or(i32::MAX);
    let (replicas, ready) = seen
        .deployment
        .unwrap_or((previous.replicas, previous.ready));
    let changed = previous.desired != desired || previous.last_scale_time.is_none();
    let (last_scale_time, last_scale_reason) =
        if seen.degraded.is_some() && seen.deployment.is_none() {
            (
                previous.last_scale_time.clone(),
                previous.last_scale_reason.clone(),
            )
        } else if changed {
            (Some(seen.now.clone()), Some(seen.reason.clone()))
        } else {
            (
                previous.last_scale_time.clone(),
                previous.last_scale_reason.clone(),
            )
        };
    let figures = seen.figures.unwrap_or_default();
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);

    let ready_condition = if ready >= desired {
        (
            READY,
            "True",
            "WorkersReady",
            format!("{ready} of {desired} workers ready"),
        )
    } else {
        (
            READY,
            "False",
            "WorkersStarting",
            format!("{ready} of {desired} workers ready"),
        )
    };
    let scaling_condition = if replicas < desired || ready < desired.min(replicas) {
        (
            SCALING,
            "True",
            "ScalingUp",
            format!("{replicas} to {desired} workers: {}", seen.reason),
        )
    } else if replicas > desired {
        (
            SCALING,
            "True",
            "ScalingDown",
            format!("{replicas} to {desired} workers: {}", seen.reason),
        )
    } else {
        (
            SCALING,
            "False",
            "Stable",
            format!("{desired} workers: {}", seen.reason),
        )
    };
    let degraded_condition = match &seen.degraded {
        Some((reason, message)) => (DEGRADED, "True", reason.as_str(), message.clone()),
        None => (
            DEGRADED,
            "False",
            "AsExpected",
            "spec valid, demand read".to_string(),
        ),
    };
    let conditions = [ready_condition, scaling_condition, degraded_condition]
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let old = previous.conditions.iter().find(|c| c.type_ == type_);
            let last_transition_time = match old {
                Some(old) if old.status == status => old.last_transition_time.clone(),
                _ => seen.now.clone(),
            };
            Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message,
                observed_generation: seen.generation,
                last_transition_time,
            }
        })
        .collect();

    QueryPoolStatus {
        replicas,
        ready,
        warm: count(figures.warm),
        desired,
        in_flight: count(figures.in_flight),
        queued: count(figures.queued),
        last_scale_time,
        last_scale_reason,
        observed_generation: seen.generation,
        conditions,
        selector: Some(seen.selector.clone()),
    }
}

/// `previous` with the gateways' latest figures, for the demand loop's cheap status update.
pub fn with_figures(previous: &QueryPoolStatus, figures: Figures) -> QueryPoolStatus {
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    QueryPoolStatus {
        in_flight: count(figures.in_flight),
        queued: count(figures.queued),
        warm: count(figures.warm),
        ..previous.clone()
    }
}
