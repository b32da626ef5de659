use std::path::Path;

use kube::core::crd::CustomResourceExt;

use super::*;
use crate::crd::validate::validate;

/// A valid pool with the chart's sample values.
pub(crate) fn sample_spec() -> QueryPoolSpec {
    serde_json::from_value(serde_json::json!({
        "minReplicas": 1,
        "maxReplicas": 4,
        "warmReplicas": 1,
        "targetConcurrency": 4,
        "template": {
            "image": "ghcr.io/quiver-dev/quiver:0.1.0",
            "ticketKeySecret": {"name": "quiver-ticket-key"},
            "catalog": {"tables": [
                {"name": "lineitem", "location": "s3://tpch/lineitem/", "hot": true},
                {"name": "orders", "location": "s3://tpch/orders/"}
            ]}
        }
    }))
    .expect("sample spec parses")
}

#[test]
fn committed_crd_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("crd/querypool.yaml");
    let generated = crd_yaml();
    if std::env::var_os("QUIVER_UPDATE_CRD").is_some() {
        std::fs::write(&path, &generated).expect("write the CRD");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "operator/crd/querypool.yaml differs from the Rust types; regenerate with \
         `cargo run -p quiver-operator -- crd > operator/crd/querypool.yaml` (or \
         QUIVER_UPDATE_CRD=1 cargo test -p quiver-operator crd), then run \
         deploy/kustomize/generate_base.py, which copies it to charts/quiver/crds/ and the base"
    );
}

#[test]
fn crd_has_scale_status_and_columns() {
    let crd = serde_json::to_value(QueryPool::crd()).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let scale = &version["subresources"]["scale"];
    assert_eq!(scale["specReplicasPath"], ".spec.replicas");
    assert_eq!(scale["statusReplicasPath"], ".status.replicas");
    assert_eq!(scale["labelSelectorPath"], ".status.selector");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<_> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        columns,
        [
            "Ready",
            "Desired",
            "Workers",
            "Warm",
            "In-Flight",
            "Min",
            "Max",
            "Queued",
            "Age"
        ]
    );
    let columns = version["additionalPrinterColumns"].as_array().unwrap();
    assert_eq!(
        columns[0]["jsonPath"],
        ".status.conditions[?(@.type==\"Ready\")].status"
    );
    // min, max and queued only with `-o wide`.
    let wide: Vec<_> = columns
        .iter()
        .filter(|c| c["priority"] == 1)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(wide, ["Min", "Max", "Queued"]);
    let conditions =
        &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(
        conditions["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["minReplicas"]["minimum"].as_f64(),
        Some(0.0)
    );
    assert_eq!(
        spec["properties"]["targetConcurrency"]["minimum"].as_f64(),
        Some(1.0)
    );
    assert_eq!(spec["required"], serde_json::json!(["template"]));
    let rules = spec["x-kubernetes-validations"].to_string();
    assert!(
        rules.contains("self.minReplicas <= self.maxReplicas"),
        "{rules}"
    );
}

#[test]
fn defaults_fill_an_empty_spec() {
    let spec = sample_spec();
    assert!(spec.autoscaling.enabled);
    assert_eq!(spec.drain_timeout, None);
    assert_eq!(spec.template.ticket_key_secret.key, "ticket-key");
    assert_eq!(spec.template.query_memory_limit, "1GiB");
    let settings = validate(&spec).unwrap();
    assert_eq!(settings.scaling.min_replicas, 1);
    assert_eq!(settings.scaling.max_replicas, 4);
    assert_eq!(settings.pinned, 1, "replicas unset pins minReplicas");
    // The default drain covers the longest query (60s) plus the last batches' delivery.
    assert_eq!(settings.drain_timeout, std::time::Duration::from_secs(75));
    let longer = QueryPoolSpec {
        template: WorkerTemplate {
            query_timeout: "2m".into(),
            ..spec.template.clone()
        },
        ..spec.clone()
    };
    assert_eq!(
        validate(&longer).unwrap().drain_timeout,
        std::time::Duration::from_secs(135)
    );
    let explicit = QueryPoolSpec {
        drain_timeout: Some("45s".into()),
        ..spec
    };
    assert_eq!(
        validate(&explicit).unwrap().drain_timeout,
        std::time::Duration::from_secs(45)
    );
}

#[test]
fn invalid_specs_name_the_field() {
    /// A change to a valid spec, the message it must give and the condition reason.
    type Case = (fn(&mut QueryPoolSpec), &'static str, &'static str);
    let cases: Vec<Case> = vec![
        (
            |s| s.min_replicas = 5,
            "minReplicas 5 is above maxReplicas 4",
            "InvalidScaling",
        ),
        (
            |s| s.warm_replicas = -1,
            "spec.warmReplicas must not be negative",
            "InvalidScaling",
        ),
        (
            |s| s.autoscaling.panic_threshold = 1.0,
            "panic threshold",
            "InvalidScaling",
        ),
        (
            |s| s.drain_timeout = Some("soon".into()),
            "spec.drainTimeout: \"soon\"",
            "InvalidLimits",
        ),
        (
            |s| s.template.query_memory_limit = "2 parsecs".into(),
            "queryMemoryLimit",
            "InvalidLimits",
        ),
        (
            |s| s.template.catalog.tables[1].name = "lineitem".into(),
            "tables[1].name: duplicate table \"lineitem\"",
            "InvalidTemplate",
        ),
        (
            |s| s.template.image = " ".into(),
            "template.image",
            "InvalidTemplate",
        ),
        (
            |s| s.autoscaling.scale_to_zero_after = Some("5m".into()),
            "scaleToZeroAfter needs spec.minReplicas 0, got 1",
            "InvalidScaling",
        ),
        (
            |s| {
                s.min_replicas = 0;
                s.autoscaling.scale_to_zero_after = Some("later".into());
            },
            "spec.autoscaling.scaleToZeroAfter: \"later\"",
            "InvalidLimits",
        ),
        (
            |s| s.role = Role::Standby,
            "spec.template.catalog.tables is not allowed with role Standby",
            "InvalidStandby",
        ),
        (
            |s| {
                s.role = Role::Standby;
                s.template.catalog.tables.clear();
                s.standby_pool = Some("other".into());
            },
            "spec.standbyPool is not allowed with role Standby",
            "InvalidStandby",
        ),
    ];
    for (change, message, reason) in cases {
        let mut spec = sample_spec();
        change(&mut spec);
        let err = validate(&spec).unwrap_err();
        assert!(err.to_string().contains(message), "{err} lacks {message}");
        assert_eq!(err.reason(), reason, "{err}");
    }
}

#[test]
fn scale_to_zero_and_standby_settings() {
    let mut spec = sample_spec();
    spec.min_replicas = 0;
    spec.autoscaling.scale_to_zero_after = Some("90s".into());
    spec.standby_pool = Some("standby".into());
    let settings = validate(&spec).unwrap();
    assert_eq!(
        settings.scale_to_zero_after,
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(settings.standby_pool.as_deref(), Some("standby"));
    assert_eq!(settings.role, Role::Pool);

    let mut standby = sample_spec();
    standby.role = Role::Standby;
    standby.template.catalog.tables.clear();
    standby.min_replicas = 2;
    standby.max_replicas = 6;
    let settings = validate(&standby).unwrap();
    assert_eq!((settings.standby.min, settings.standby.max), (2, 6));
    // The role round-trips as the name the gateway reads.
    let json = serde_json::to_value(&standby).unwrap();
    assert_eq!(json["role"], "Standby");
}

#[test]
fn sizes_follow_the_worker_flag() {
    for ok in ["1GiB", "512MiB", "1.5GB", "100", "64kib", "2Gi", "1TiB"] {
        let mut spec = sample_spec();
        spec.template.query_memory_limit = ok.into();
        assert!(validate(&spec).is_ok(), "{ok}");
    }
    for bad in ["", "GiB", "1PiB", "-1GiB", "0"] {
        let mut spec = sample_spec();
        spec.template.query_memory_limit = bad.into();
        assert!(validate(&spec).is_err(), "{bad}");
    }
}
