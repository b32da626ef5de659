//! The objects a `QueryPool` owns, built as plain values (no I/O) so tests can read them:
//!
//! ```text
//!  QueryPool "p" ──owns──► ConfigMap  p-catalog   catalog.yaml for `quiver worker --catalog`
//!                 ├──────► Deployment p           the workers; replicas = desired
//!                 ├──────► Service    p           headless, port "flight"; its EndpointSlices
//!                 │                               are how the gateway finds ready workers
//!                 ├──────► PodDisruptionBudget p  one worker at a time on node drains
//!                 └──────► NetworkPolicy p        ingress to the workers: the Flight port, from
//!                                                 the gateway's pods only
//! ```
//!
//! Every object carries the pool's labels and a controller owner reference, so deleting the
//! pool deletes them and the controller hears of their changes. A `Standby` pool has no
//! ConfigMap: its Deployment runs `quiver worker --standby`, probed on [`READY_HEALTH_SERVICE`];
//! a pod claimed from it gets a pool's labels and owner through [`claim_patch`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, GRPCAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
    TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::crd::{POOL_LABEL, QueryPool, Role, WORKER_PORT, WORKER_PORT_NAME};

/// Field manager of every write the operator makes.
pub const MANAGER: &str = "quiver-operator";
/// Extra seconds past the drain timeout before the kubelet kills a worker: the worker needs a
/// moment to close its listener and flush after the last query.
pub const GRACE_MARGIN_SECS: i64 = 10;
/// Annotation of the pod template holding a hash of the catalog, so a catalog change rolls the
/// workers (they load it at start).
pub const CATALOG_HASH_ANNOTATION: &str = "quiver.dev/catalog-hash";
/// Label of a pod claimed from a standby pool into a serving pool.
pub const CLAIMED_LABEL: &str = "quiver.dev/claimed";
/// The worker's gRPC health service that is SERVING while the worker is fit for its role: a
/// warm standby waiting for a claim, or a worker serving queries. Standby pods are probed on
/// it, so a claimed pod stays ready from standby through to serving.
pub const READY_HEALTH_SERVICE: &str = "quiver.Ready";
/// The ReplicaSet's label on the pods it made.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Where the catalog ConfigMap is mounted in a worker.
const CATALOG_DIR: &str = "/etc/quiver/catalog";
/// The catalog file's key in the ConfigMap.
const CATALOG_KEY: &str = "catalog.yaml";
/// The image's non-root user (deploy/Dockerfile: USER 65532).
const RUN_AS: i64 = 65532;
/// The label the API server puts on every namespace with its name (Kubernetes 1.22+).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The only clients the workers admit: the gateway's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPeer {
    /// Labels every gateway pod carries (all must match).
    pub pod_labels: BTreeMap<String, String>,
    /// The gateway's namespace; `None`: each pool's own namespace.
    pub namespace: Option<String>,
}

impl Default for GatewayPeer {
    /// The chart's gateway pods (charts/quiver/templates/_helpers.tpl,
    /// `quiver.componentSelectorLabels` with component `gateway`) of any release, in the
    /// pool's namespace: the `--gateway-pod-labels` default.
    fn default() -> Self {
        Self {
            pod_labels: BTreeMap::from([
                ("app.kubernetes.io/name".into(), "quiver".into()),
                ("app.kubernetes.io/component".into(), "gateway".into()),
            ]),
            namespace: None,
        }
    }
}

/// Labels that select a pool's workers: the selector of the Deployment, the Service, the PDB and
/// the NetworkPolicy, and the labels the gateway selects EndpointSlices by.
pub fn selector_labels(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "quiver".into()),
        ("app.kubernetes.io/component".into(), "worker".into()),
        (POOL_LABEL.into(), pool.into()),
    ])
}

/// Labels of every object of a pool and of its pods.
pub fn labels(pool: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pool);
    labels.insert("app.kubernetes.io/instance".into(), pool.into());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels
}

/// The selector as a string, for `status.selector` (the scale subresource's label selector).
pub fn selector_string(pool: &str) -> String {
    selector_labels(pool)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Name of a pool's catalog ConfigMap.
pub fn catalog_name(pool: &str) -> String {
    format!("{pool}-catalog")
}

fn meta(pool: &QueryPool, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: pool.namespace(),
        labels: Some(labels(&pool.name_any())),
        owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The catalog file as the worker reads it.
#[derive(Serialize)]
struct CatalogFile<'a> {
    catalog: &'a str,
    schema: &'a str,
    tables: &'a [crate::crd::CatalogTable],
}

/// The catalog ConfigMap and the hash of its contents.
pub fn catalog_config_map(pool: &QueryPool) -> (ConfigMap, String) {
    let catalog = &pool.spec.template.catalog;
    let file = serde_yaml::to_string(&CatalogFile {
        catalog: &catalog.catalog,
        schema: &catalog.schema,
        tables: &catalog.tables,
    })
    .expect("the catalog serialises");
    let hash = format!("{:016x}", fnv1a(file.as_bytes()));
    let cm = ConfigMap {
        metadata: meta(pool, catalog_name(&pool.name_any())),
        data: Some(BTreeMap::from([(CATALOG_KEY.to_string(), file)])),
        ..ConfigMap::default()
    };
    (cm, hash)
}

/// FNV-1a: a stable content hash that needs no dependency and does not change between builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The merge patch that moves a standby pod into `pool`: the pool's labels (so its Service
/// selects the pod and the standby ReplicaSet's selector no longer does), the catalog it will
/// be given, and the pool as its controller (so deleting the pool deletes it). It carries the
/// pod's resourceVersion: a pod changed since it was listed is not taken.
pub fn claim_patch(
    pool: &QueryPool,
    pod: &k8s_openapi::api::core::v1::Pod,
    catalog_hash: &str,
) -> serde_json::Value {
    let name = pool.name_any();
    let mut labels = serde_json::Map::new();
    for (k, v) in self::labels(&name) {
        labels.insert(k, v.into());
    }
    labels.insert(CLAIMED_LABEL.into(), "true".into());
    labels.insert(POD_TEMPLATE_HASH.into(), serde_json::Value::Null);
    serde_json::json!({
        "metadata": {
            "resourceVersion": pod.resource_version(),
            "labels": labels,
            "annotations": {CATALOG_HASH_ANNOTATION: catalog_hash},
            "ownerReferences": pool.controller_owner_ref(&()).map(|o| vec![o]).unwrap_or_default(),
        }
    })
}

/// The headless Service whose EndpointSlices list the pool's ready workers.
pub fn service(pool: &QueryPool) -> Service {
    let name = pool.name_any();
    Service {
        metadata: meta(pool, name.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&name)),
            // Only workers that finished warming take queries.
            publish_not_ready_addresses: Some(false),
            ports: Some(vec![ServicePort {
                name: Some(WORKER_PORT_NAME.into()),
                port: WORKER_PORT,
                target_port: Some(IntOrString::String(WORKER_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("grpc".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// At most one worker down at a time for voluntary disruptions (node drains); scale-downs by
/// the operator are not disruptions and are not limited by it.
pub fn pod_disruption_budget(pool: &QueryPool) -> PodDisruptionBudget {
    let name = pool.name_any();
    PodDisruptionBudget {
        metadata: meta(pool, name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// Ingress to the pool's workers: the Flight port, from the gateway's pods only; everything
/// else is denied (workers have no other port; the kubelet's probes are not subject to
/// NetworkPolicies). Egress is left alone: workers read their tables from object stores.
pub fn network_policy(pool: &QueryPool, gateway: &GatewayPeer) -> NetworkPolicy {
    let name = pool.name_any();
    let selector = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    };
    // One peer with both selectors: gateway pods *in* that namespace (two peers would admit
    // every pod of the namespace).
    let from = NetworkPolicyPeer {
        pod_selector: Some(selector(gateway.pod_labels.clone())),
        namespace_selector: gateway.namespace.as_ref().map(|ns| {
            selector(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                ns.clone(),
            )]))
        }),
        ip_block: None,
    };
    NetworkPolicy {
        metadata: meta(pool, name.clone()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(selector_labels(&name))),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![from]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(WORKER_PORT)),
                    protocol: Some("TCP".into()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }
}

/// The workers' Deployment with `replicas` pods.
pub fn deployment(
    pool: &QueryPool,
    replicas: u32,
    drain: std::time::Duration,
    catalog_hash: &str,
) -> Deployment {
    let name = pool.name_any();
    let template = &pool.spec.template;
    // A standby worker has no catalog until a pool claims it.
    let standby = pool.spec.role == Role::Standby;
    let env_value = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    };
    let mut env = vec![
        env_value("QUIVER_LISTEN", &format!("0.0.0.0:{WORKER_PORT}")),
        if standby {
            env_value("QUIVER_STANDBY", "true")
        } else {
            env_value("QUIVER_CATALOG", &format!("{CATALOG_DIR}/{CATALOG_KEY}"))
        },
        EnvVar {
            name: "QUIVER_TICKET_KEY".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: template.ticket_key_secret.name.clone(),
                    key: template.ticket_key_secret.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env_value("QUIVER_MEMORY_LIMIT", &template.query_memory_limit),
        env_value("QUIVER_QUERY_TIMEOUT", &template.query_timeout),
        env_value(
            "QUIVER_DRAIN_TIMEOUT",
            &humantime::format_duration(drain).to_string(),
        ),
    ];
    env.extend(template.env.iter().cloned());
    let grpc = || GRPCAction {
        port: WORKER_PORT,
        service: standby.then(|| READY_HEALTH_SERVICE.into()),
    };
    let container = Container {
        name: "worker".into(),
        image: Some(template.image.clone()),
        image_pull_policy: template.image_pull_policy.clone(),
        command: Some(vec!["quiver".into()]),
        args: Some(vec!["worker".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(WORKER_PORT_NAME.into()),
            container_port: WORKER_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // gRPC health: NOT_SERVING while warming and while draining, so a worker takes
        // queries only between the two.
        readiness_probe: Some(Probe {
            grpc: Some(grpc()),
            period_seconds: Some(2),
            failure_threshold: Some(1),
            ..Probe::default()
        }),
        // The port answering is enough to be alive: warming and draining are NOT_SERVING but
        // healthy, and must not be restarted.
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String(WORKER_PORT_NAME.into()),
                host: None,
            }),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: template.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(
            [
                (!standby).then(|| VolumeMount {
                    name: "catalog".into(),
                    mount_path: CATALOG_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                }),
                Some(VolumeMount {
                    name: "tmp".into(),
                    mount_path: "/tmp".into(),
                    ..VolumeMount::default()
                }),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        ..Container::default()
    };
    let grace = i64::try_from(drain.as_secs())
        .unwrap_or(i64::MAX / 2)
        .saturating_add(GRACE_MARGIN_SECS);
    let pod = PodSpec {
        containers: vec![container],
        termination_grace_period_seconds: Some(grace),
        service_account_name: template.service_account_name.clone(),
        // Workers never call the Kubernetes API.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        volumes: Some(
            [
                (!standby).then(|| Volume {
                    name: "catalog".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: catalog_name(&name),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                }),
                Some(Volume {
                    name: "tmp".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(Quantity("1Gi".into())),
                        medium: None,
                    }),
                    ..Volume::default()
                }),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        node_selector: (!template.node_selector.is_empty()).then(|| template.node_selector.clone()),
        tolerations: (!template.tolerations.is_empty()).then(|| template.tolerations.clone()),
        affinity: template.affinity.clone(),
        ..PodSpec::default()
    };
    Deployment {
        metadata: meta(pool, name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            // A rollout adds a warm worker before it drains an old one, so capacity never dips.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name)),
                    annotations: Some(BTreeMap::from([(
                        CATALOG_HASH_ANNOTATION.into(),
                        catalog_hash.into(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}
