//! The `QueryPool` resource (`quiver.dev/v1alpha1`): what a pool of workers should look like and
//! what the operator last saw of it.
//!
//! The schema in `operator/crd/querypool.yaml` (and its copies in `charts/` and `deploy/`) is
//! generated from these types by `quiver-operator crd`; a test fails when the file drifts.
//! The schema rejects what it can express (negative counts, bad duration strings, min above
//! max); [`validate`] checks the rest once per reconcile and the controller reports a failure
//! as the `Degraded` condition.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::crd::CustomResourceExt;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod validate;

pub use validate::{PoolSettings, SpecError, validate};

/// Label on every object of a pool (Service, EndpointSlices, pods): the QueryPool's name. The
/// gateway selects a pool's EndpointSlices with it.
pub const POOL_LABEL: &str = "quiver.dev/pool";
/// Port of the workers' Flight SQL and gRPC health service.
pub const WORKER_PORT: i32 = 50051;
/// Name of the worker port on the pod and the Service (the gateway looks it up by this name).
pub const WORKER_PORT_NAME: &str = "flight";

/// Durations and sizes in the grammar every Quiver binary reads (`30s`, `1m30s`; `512MiB`, `2Gi`).
use quiver_core::units::{DURATION_PATTERN, SIZE_PATTERN};

/// Spec of a pool of pre-warmed query workers. The operator keeps `desired` workers running,
/// where desired = demand / targetConcurrency + warmReplicas within [minReplicas, maxReplicas],
/// or `replicas` when autoscaling is off.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "quiver.dev",
    version = "v1alpha1",
    kind = "QueryPool",
    plural = "querypools",
    shortname = "qp",
    category = "quiver",
    namespaced,
    status = "QueryPoolStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A pool of pre-warmed Quiver query workers, scaled on the demand the gateway reports.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Desired", "type": "integer", "jsonPath": ".status.desired"}"#,
    printcolumn = r#"{"name": "Workers", "type": "integer", "description": "Workers ready to serve", "jsonPath": ".status.ready"}"#,
    printcolumn = r#"{"name": "Warm", "type": "integer", "jsonPath": ".status.warm"}"#,
    printcolumn = r#"{"name": "In-Flight", "type": "integer", "jsonPath": ".status.inFlight"}"#,
    printcolumn = r#"{"name": "Min", "type": "integer", "priority": 1, "jsonPath": ".spec.minReplicas"}"#,
    printcolumn = r#"{"name": "Max", "type": "integer", "priority": 1, "jsonPath": ".spec.maxReplicas"}"#,
    printcolumn = r#"{"name": "Queued", "type": "integer", "priority": 1, "jsonPath": ".status.queued"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not be above maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct QueryPoolSpec {
    /// Fewest workers, however quiet (default 1).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most workers, however busy (default 10).
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Idle, ready workers kept on top of demand so a burst never waits for a cold start
    /// (default 1).
    #[serde(default = "default_warm_replicas")]
    #[schemars(range(min = 0))]
    pub warm_replicas: i32,
    /// Concurrent queries one worker should run (default 4).
    #[serde(default = "default_target_concurrency")]
    #[schemars(range(min = 1))]
    pub target_concurrency: i32,
    /// Workers while autoscaling is off, set by `kubectl scale` or an HPA through the scale
    /// subresource. Unset: minReplicas. Ignored while autoscaling is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// How the operator sizes the pool from demand.
    #[serde(default)]
    pub autoscaling: Autoscaling,
    /// How long a stopping worker may take to finish its queries (default: the template's
    /// queryTimeout plus 15s, so a drain covers every query the worker admitted); the pods'
    /// terminationGracePeriodSeconds is this plus a margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub drain_timeout: Option<String>,
    /// What the workers are for: `Pool` (the default) serves queries on the template's catalog;
    /// `Standby` keeps warm workers without a catalog, which pools naming this one in
    /// `standbyPool` claim when they need capacity, instead of waiting for a new pod.
    #[serde(default)]
    pub role: Role,
    /// A `Standby` QueryPool in this namespace to claim warm workers from before starting new
    /// pods: a claimed worker serves within a second, where a new pod takes a cold start. Its
    /// template's image and resources are what claimed workers run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub standby_pool: Option<String>,
    /// The worker pods.
    pub template: WorkerTemplate,
}

/// What a QueryPool's workers are for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Role {
    /// Workers serving queries on the pool's catalog.
    #[default]
    Pool,
    /// Warm workers without a catalog (`quiver worker --standby`), shared by the pools that
    /// name this one in `standbyPool`; sized between minReplicas and maxReplicas from the
    /// recent rate of claims.
    Standby,
}

impl Default for QueryPoolSpec {
    /// The schema's defaults, with an empty template (which [`validate`] rejects).
    fn default() -> Self {
        Self {
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            warm_replicas: default_warm_replicas(),
            target_concurrency: default_target_concurrency(),
            replicas: None,
            autoscaling: Autoscaling::default(),
            drain_timeout: None,
            role: Role::Pool,
            standby_pool: None,
            template: WorkerTemplate::default(),
        }
    }
}

/// Scaling on demand: windows of the policy in `quiver_operator::scaling`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Scale on the gateway's demand (default true). Off: the pool keeps `spec.replicas`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Scale-down smoothing: the pool shrinks only to the most it needed over this window
    /// (default 30s).
    #[serde(default = "default_stable_window")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub stable_window: String,
    /// After a burst the pool does not shrink for this long (default 6s).
    #[serde(default = "default_panic_window")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub panic_window: String,
    /// Least time between a change of size and a following scale-down (default 15s).
    #[serde(default = "default_scale_down_delay")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub scale_down_delay: String,
    /// Demand over capacity that counts as a burst and scales up at once (default 2.0).
    #[serde(default = "default_panic_threshold")]
    #[schemars(range(min = 1.0))]
    pub panic_threshold: f64,
    /// With minReplicas 0: after this long without a query the pool drains to zero workers,
    /// and the first query after that is held at the gateway while the pool wakes. Unset: a
    /// pool keeps at least one worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub scale_to_zero_after: Option<String>,
}

impl Default for Autoscaling {
    fn default() -> Self {
        Self {
            enabled: true,
            stable_window: default_stable_window(),
            panic_window: default_panic_window(),
            scale_down_delay: default_scale_down_delay(),
            panic_threshold: default_panic_threshold(),
            scale_to_zero_after: None,
        }
    }
}

/// The worker pods of a pool: `quiver worker` with a catalog, a ticket key and limits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTemplate {
    /// Container image holding the `quiver` binary.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy (default: Kubernetes' own, IfNotPresent unless the tag is latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Secret key holding the ticket key shared with the gateway (QUIVER_TICKET_KEY).
    pub ticket_key_secret: SecretKeyRef,
    /// Memory one query may use (QUIVER_MEMORY_LIMIT, default 1GiB).
    #[serde(default = "default_memory_limit")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub query_memory_limit: String,
    /// Longest a query may run (QUIVER_QUERY_TIMEOUT, default 60s).
    #[serde(default = "default_query_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub query_timeout: String,
    /// CPU and memory of each worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Tables the workers register and warm before they report ready.
    #[serde(default)]
    pub catalog: Catalog,
    /// Extra environment, e.g. object store credentials (AWS_REGION, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Service account of the worker pods (object store identity); none needs API access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Node selector of the worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the worker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// A key of a Secret in the pool's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key in the Secret (default ticket-key).
    #[serde(default = "default_ticket_key")]
    pub key: String,
}

/// The catalog file the workers load (the format of `quiver worker --catalog`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    /// Catalog name clients see (default quiver).
    #[serde(default = "default_catalog_name")]
    pub catalog: String,
    /// Schema name clients see (default public).
    #[serde(default = "default_schema_name")]
    pub schema: String,
    /// The tables.
    #[serde(default)]
    pub tables: Vec<CatalogTable>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self {
            catalog: default_catalog_name(),
            schema: default_schema_name(),
            tables: Vec::new(),
        }
    }
}

/// One table of the catalog.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogTable {
    /// Table name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// A Parquet file or directory: a path in the pod, or an s3://, gs://, az:// or http(s) URL.
    #[schemars(length(min = 1))]
    pub location: String,
    /// Load into memory while warming, before the worker reports ready (default false).
    #[serde(default)]
    pub hot: bool,
}

/// What the operator last saw of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryPoolStatus {
    /// Workers the Deployment has (the scale subresource's replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Workers ready to serve.
    #[serde(default)]
    pub ready: i32,
    /// Ready workers with no query running.
    #[serde(default)]
    pub warm: i32,
    /// Workers the operator wants.
    #[serde(default)]
    pub desired: i32,
    /// Queries running on the pool, as the gateways last reported.
    #[serde(default)]
    pub in_flight: i32,
    /// Queries waiting for a worker, as the gateways last reported.
    #[serde(default)]
    pub queued: i32,
    /// When `desired` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Why `desired` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Scaling and Degraded; one of each type (a list-map keyed by `type`, so a
    /// server-side apply of the status merges conditions by type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Label selector of the workers (the scale subresource's labelSelectorPath).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// The CRD as YAML, as `quiver-operator crd` prints it and `operator/crd/querypool.yaml` holds.
pub fn crd_yaml() -> String {
    let body = serde_yaml::to_string(&QueryPool::crd()).expect("the CRD serialises");
    format!("# Generated by `quiver-operator crd` from operator/src/crd; do not edit.\n---\n{body}")
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_warm_replicas() -> i32 {
    1
}
fn default_target_concurrency() -> i32 {
    4
}
fn default_true() -> bool {
    true
}
fn default_stable_window() -> String {
    "30s".into()
}
fn default_panic_window() -> String {
    "6s".into()
}
fn default_scale_down_delay() -> String {
    "15s".into()
}
fn default_panic_threshold() -> f64 {
    2.0
}
fn default_memory_limit() -> String {
    "1GiB".into()
}
fn default_query_timeout() -> String {
    "60s".into()
}
fn default_ticket_key() -> String {
    "ticket-key".into()
}
fn default_catalog_name() -> String {
    "quiver".into()
}
fn default_schema_name() -> String {
    "public".into()
}

#[cfg(test)]
mod tests;
