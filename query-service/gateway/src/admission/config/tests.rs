use std::path::Path;

use super::*;

const POOLS: &[&str] = &[DEFAULT_POOL];

fn parse(text: &str) -> Result<Policy, ConfigError> {
    Policy::parse(text, Path::new("admission.yaml"), POOLS)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn the_documented_example_loads_as_written() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/admission.yaml");
    let p = Policy::load(&path, POOLS).unwrap();
    assert!(!p.open);
    assert_eq!(p.tenants.len(), 2);
    assert_eq!(p.tokens.len(), 2);
    assert_eq!(p.rate_limits[1].tenant.as_deref(), Some("noisy"));
    let adhoc = resolve_group(&p.groups, "adhoc").unwrap();
    assert_eq!(adhoc.limits.hard_concurrency, 2);
    assert_eq!(adhoc.subgroups[0].name, "${user}");
    // Unset fields inherit from the parent.
    assert_eq!(
        adhoc.subgroups[0].limits.queue_timeout,
        Duration::from_secs(2)
    );
    assert_eq!(adhoc.subgroups[0].limits.max_queued, 20);
    assert_eq!(p.default_group, "dashboards");
}

#[test]
fn invalid_configs_name_field_and_reason() {
    let cases = [
        (
            "selectors: [{group: nowhere}]",
            "selectors[0].group",
            "unknown group",
        ),
        (
            "tenants: [{name: a}, {name: a}]",
            "tenants[1].name",
            "declared twice",
        ),
        (
            "resource_groups: [{name: g, hard_concurrency: -1}]",
            "hard_concurrency",
            "expected u32",
        ),
        (
            "rate_limits: [{name: r, qps: -5}]",
            "rate_limits[0].qps",
            "positive",
        ),
        (
            "resource_groups: [{name: g, weight: 0}]",
            "resource_groups[0].weight",
            "at least 1",
        ),
        (
            "resource_groups: [{name: g, pool: gpu}]",
            "resource_groups[0].pool",
            "unknown pool",
        ),
        (
            "tenants: [{name: a, tokens: [plain-token]}]",
            "tenants[0].tokens[0]",
            "sha256",
        ),
        (
            "resource_groups: [{name: g, colour: red}]",
            "colour",
            "unknown field",
        ),
        (
            "resource_groups: [{name: g, subgroups: [{name: a}, {name: a}]}]",
            "resource_groups[0].subgroups[1].name",
            "declared twice",
        ),
        (
            "selectors: [{user: '(', group: default}]",
            "selectors[0].user",
            "regular expression",
        ),
    ];
    for (text, field, reason) in cases {
        let e = err(text);
        assert!(e.contains("admission.yaml"), "{text}: {e}");
        assert!(e.contains(field), "{text}: {e}");
        assert!(e.contains(reason), "{text}: {e}");
    }
}

#[test]
fn a_group_on_a_pool_the_gateway_does_not_serve_is_refused() {
    let text = "resource_groups: [{name: etl, pool: b}, {name: adhoc}]";
    let e = Policy::parse(text, Path::new("admission.yaml"), &["a", "b"])
        .unwrap_err()
        .to_string();
    // The second group runs on the default pool, which this gateway does not serve.
    for word in [
        "admission.yaml",
        "resource_groups[1].pool",
        "\"adhoc\"",
        "\"default\"",
        "[a, b]",
    ] {
        assert!(e.contains(word), "{word}: {e}");
    }
    let p = Policy::parse(
        "resource_groups: [{name: etl, pool: b, subgroups: [{name: x}]}, {name: adhoc, pool: a}]",
        Path::new("admission.yaml"),
        &["a", "b"],
    )
    .unwrap();
    assert_eq!(resolve_group(&p.groups, "etl.x").unwrap().pool, "b");
    assert_eq!(resolve_group(&p.groups, "adhoc").unwrap().pool, "a");
}

#[test]
fn the_open_group_runs_on_a_served_pool() {
    assert_eq!(Policy::open_for(&["a", "b"]).groups[0].pool, "a");
    assert_eq!(
        Policy::open_for(&["a", DEFAULT_POOL]).groups[0].pool,
        DEFAULT_POOL
    );
    let p = Policy::parse("tenants: [{name: t}]", Path::new("t.yaml"), &["b"]).unwrap();
    assert_eq!(p.groups[0].pool, "b");
}

#[test]
fn empty_config_is_open() {
    let p = parse("{}").unwrap();
    assert!(p.open);
    assert_eq!(p.default_group, "default");
}

const TENANT_A: &str = "sha256:3a37d32950429821feecb61998c7f203aaeec5ca4625db0c35d19a03d8ed6ee5";
const TENANT_B: &str = "sha256:0a140a21213665182a7308eabafbba7b7053a9c8986854fc83685688f043f5d3";

#[test]
fn a_tenants_file_adds_tenants_and_names_itself_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("admission.yaml");
    let tenants = dir.path().join("tenants.yaml");
    std::fs::write(
        &config,
        format!("tenants: [{{name: a, tokens: ['{TENANT_A}']}}]\nresource_groups: [{{name: g}}]\n"),
    )
    .unwrap();
    std::fs::write(
        &tenants,
        format!("tenants: [{{name: b, tokens: ['{TENANT_B}']}}]\n"),
    )
    .unwrap();
    let p = Policy::load_with_tenants(&config, Some(&tenants), POOLS).unwrap();
    assert!(!p.open);
    let names: Vec<_> = p.tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    // Each token maps to its own tenant, whichever file it came from.
    assert_eq!(p.tokens[&TENANT_B["sha256:".len()..]], 1);
    assert_eq!(p.tokens[&TENANT_A["sha256:".len()..]], 0);

    // A tenant declared in both files: the error names the tenants file and its index there.
    std::fs::write(&tenants, "tenants: [{name: a}]\n").unwrap();
    let e = Policy::load_with_tenants(&config, Some(&tenants), POOLS)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tenants.yaml: tenants[0].name"), "{e}");
    assert!(!e.contains("admission.yaml"), "{e}");

    // Anything but tenants in the tenants file is refused, naming that file.
    std::fs::write(&tenants, "rate_limits: []\n").unwrap();
    let e = Policy::load_with_tenants(&config, Some(&tenants), POOLS)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tenants.yaml") && e.contains("rate_limits"),
        "{e}"
    );

    // A missing tenants file is an error, not an open gateway.
    let e = Policy::load_with_tenants(&config, Some(&dir.path().join("nope.yaml")), POOLS)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.yaml"), "{e}");
}

#[test]
fn a_tenants_file_alone_turns_authentication_on() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.yaml");
    std::fs::write(
        &tenants,
        format!("tenants: [{{name: b, tokens: ['{TENANT_B}']}}]\n"),
    )
    .unwrap();
    let p = Policy::load_tenants(&tenants, POOLS).unwrap();
    assert!(!p.open);
    assert_eq!(p.tenants.len(), 1);
    assert_eq!(p.default_group, Policy::open().default_group);
}
