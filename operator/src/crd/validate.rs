//! Checks a `QueryPool` spec once per reconcile and turns it into settings that cannot hold an
//! invalid value. What the schema already rejects is checked again here, because objects
//! written before a schema change, or through a server without CEL, can still hold it.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{QueryPoolSpec, Role};
use quiver_core::scaling::standby::StandbyConfig;
use quiver_core::scaling::{ScalingConfig, ScalingError};

/// A spec the operator cannot run; the message names the field and becomes the `Degraded`
/// condition's message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// A count is negative.
    #[error("spec.{field} must not be negative, got {value}")]
    Negative {
        /// The field.
        field: &'static str,
        /// The value given.
        value: i64,
    },
    /// The scaling bounds do not hold together.
    #[error("spec: {0}")]
    Scaling(#[from] ScalingError),
    /// A duration does not parse.
    #[error("spec.{field}: {value:?} is not a duration such as 30s or 1m30s")]
    Duration {
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// A memory size does not parse.
    #[error("spec.template.queryMemoryLimit: {0:?} is not a size such as 512MiB or 2GiB")]
    Size(String),
    /// A required string is empty.
    #[error("spec.{0} must not be empty")]
    Empty(String),
    /// Scale to zero asked of a pool that must keep workers.
    #[error("spec.autoscaling.scaleToZeroAfter needs spec.minReplicas 0, got {0}")]
    ScaleToZeroAboveMin(u32),
    /// A standby pool given what only a serving pool can use.
    #[error(
        "spec.{0} is not allowed with role Standby: its workers get a catalog when a pool claims them"
    )]
    StandbyField(&'static str),
    /// Two tables share a name.
    #[error("spec.template.catalog.tables[{index}].name: duplicate table {name:?}")]
    DuplicateTable {
        /// Index of the second table.
        index: usize,
        /// The name.
        name: String,
    },
}

impl SpecError {
    /// The condition reason (CamelCase) for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            SpecError::Negative { .. }
            | SpecError::Scaling(_)
            | SpecError::ScaleToZeroAboveMin(_) => "InvalidScaling",
            SpecError::StandbyField(_) => "InvalidStandby",
            SpecError::Duration { .. } | SpecError::Size(_) => "InvalidLimits",
            SpecError::Empty(_) | SpecError::DuplicateTable { .. } => "InvalidTemplate",
        }
    }
}

/// What a worker's default drain allows beyond the query timeout: the last batches' delivery
/// (the same margin `quiver worker` adds when no drain timeout is given).
pub const DRAIN_MARGIN: Duration = Duration::from_secs(15);

/// A checked spec.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    /// The policy's bounds and windows.
    pub scaling: ScalingConfig,
    /// Scale on demand; otherwise keep `pinned`.
    pub autoscaling: bool,
    /// Workers while autoscaling is off.
    pub pinned: u32,
    /// How long a stopping worker may drain.
    pub drain_timeout: Duration,
    /// Idle time after which a pool with minReplicas 0 goes to zero.
    pub scale_to_zero_after: Option<Duration>,
    /// What the workers are for.
    pub role: Role,
    /// The standby pool to claim workers from.
    pub standby_pool: Option<String>,
    /// A standby pool's size bounds (its minReplicas and maxReplicas).
    pub standby: StandbyConfig,
}

/// Checks `spec` and returns the settings the controller acts on.
pub fn validate(spec: &QueryPoolSpec) -> Result<PoolSettings, SpecError> {
    let count = |field: &'static str, value: i32| {
        u32::try_from(value).map_err(|_| SpecError::Negative {
            field,
            value: value.into(),
        })
    };
    let duration = |field: &'static str, value: &str| {
        humantime::parse_duration(value).map_err(|_| SpecError::Duration {
            field,
            value: value.to_string(),
        })
    };
    let auto = &spec.autoscaling;
    let scaling = ScalingConfig {
        min_replicas: count("minReplicas", spec.min_replicas)?,
        max_replicas: count("maxReplicas", spec.max_replicas)?,
        warm_replicas: count("warmReplicas", spec.warm_replicas)?,
        target_concurrency: count("targetConcurrency", spec.target_concurrency)?,
        stable_window: duration("autoscaling.stableWindow", &auto.stable_window)?,
        panic_window: duration("autoscaling.panicWindow", &auto.panic_window)?,
        scale_down_delay: duration("autoscaling.scaleDownDelay", &auto.scale_down_delay)?,
        panic_threshold: auto.panic_threshold,
    };
    scaling.validate()?;
    let scale_to_zero_after = match &auto.scale_to_zero_after {
        Some(after) => Some(duration("autoscaling.scaleToZeroAfter", after)?),
        None => None,
    };
    if scale_to_zero_after.is_some() && scaling.min_replicas > 0 {
        return Err(SpecError::ScaleToZeroAboveMin(scaling.min_replicas));
    }
    if spec.role == Role::Standby {
        if !spec.template.catalog.tables.is_empty() {
            return Err(SpecError::StandbyField("template.catalog.tables"));
        }
        if spec.standby_pool.is_some() {
            return Err(SpecError::StandbyField("standbyPool"));
        }
        if scale_to_zero_after.is_some() {
            return Err(SpecError::StandbyField("autoscaling.scaleToZeroAfter"));
        }
    }
    let standby = StandbyConfig {
        min: scaling.min_replicas,
        max: scaling.max_replicas,
        ..StandbyConfig::default()
    };
    let pinned = match spec.replicas {
        Some(replicas) => count("replicas", replicas)?,
        None => scaling.min_replicas,
    };
    let template = &spec.template;
    let query_timeout = duration("template.queryTimeout", &template.query_timeout)?;
    let drain_timeout = match &spec.drain_timeout {
        Some(drain) => duration("drainTimeout", drain)?,
        None => query_timeout + DRAIN_MARGIN,
    };
    if quiver_core::units::parse_size(&template.query_memory_limit).is_err() {
        return Err(SpecError::Size(template.query_memory_limit.clone()));
    }
    if template.image.trim().is_empty() {
        return Err(SpecError::Empty("template.image".into()));
    }
    if template.ticket_key_secret.name.is_empty() || template.ticket_key_secret.key.is_empty() {
        return Err(SpecError::Empty("template.ticketKeySecret".into()));
    }
    let mut names = BTreeSet::new();
    for (index, table) in template.catalog.tables.iter().enumerate() {
        if table.name.is_empty() {
            return Err(SpecError::Empty(format!(
                "template.catalog.tables[{index}].name"
            )));
        }
        if table.location.is_empty() {
            return Err(SpecError::Empty(format!(
                "template.catalog.tables[{index}].location"
            )));
        }
        if !names.insert(table.name.as_str()) {
            return Err(SpecError::DuplicateTable {
                index,
                name: table.name.clone(),
            });
        }
    }
    Ok(PoolSettings {
        scaling,
        autoscaling: auto.enabled,
        pinned,
        drain_timeout,
        scale_to_zero_after,
        role: spec.role,
        standby_pool: spec.standby_pool.clone(),
        standby,
    })
}
