"""charts/quiver rendered by Helm's engine: default values, every option on, and bad values."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import subprocess

import pytest
import yaml

from deploy_checks import (
    GATEWAY_RULES,
    LEASE_RULES,
    OPERATOR_RULES,
    WORKLOAD_KINDS,
    assert_gateway_probes,
    assert_no_secret_access,
    assert_operator_probes,
    assert_secure_pod,
    container,
    env,
    pod_spec,
    rules_map,
)
from deploy_helpers import ALL_ON_VALUES, CHART, NAMESPACE, RELEASE, ROOT, helm_chart, load_values, render_chart, validate_object

RENDERINGS = ("default_objects", "all_on_objects")


@pytest.fixture(params=RENDERINGS)
def objects(request):
    return request.getfixturevalue(request.param)


def test_lint_passes_strict():
    helm, _ = helm_chart()
    for values in (None, load_values(ALL_ON_VALUES)):
        report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems and not report["errors"], report


def test_every_object_is_a_valid_kubernetes_object(objects):
    assert len(objects) > 10
    for obj in objects:
        validate_object(obj)


def test_names_and_labels_come_from_helpers(objects):
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/version", "helm.sh/chart"):
            assert key in labels, f"{obj.kind}/{obj.name} lacks label {key}"
        if obj.kind not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, f"{obj.kind}/{obj.name} namespace"
        assert len(obj.name) <= 63


def test_one_resource_per_template(objects):
    sources = [o.source for o in objects]
    assert len(sources) == len(set(sources)), "a template renders more than one object"


def test_workloads_are_secure_with_probes_and_resources(objects):
    workloads = [o for o in objects if o.kind in WORKLOAD_KINDS]
    assert {o.name for o in workloads} == {f"{RELEASE}-gateway", f"{RELEASE}-operator"}
    for obj in workloads:
        assert_secure_pod(obj)
    gateway = objects.one("Deployment", f"{RELEASE}-gateway")
    assert_gateway_probes(gateway, 50051)
    assert_operator_probes(objects.one("Deployment", f"{RELEASE}-operator"))


def test_operator_rbac_is_least_privilege(default_objects):
    role = default_objects.one("ClusterRole", f"{RELEASE}-operator")
    rules = rules_map(role["rules"])
    assert rules == OPERATOR_RULES
    assert_no_secret_access(rules)
    lease = rules_map(default_objects.one("Role", f"{RELEASE}-operator")["rules"])
    assert lease == LEASE_RULES
    binding = default_objects.one("ClusterRoleBinding", f"{RELEASE}-operator")
    assert binding["roleRef"]["name"] == role.name
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-operator", "namespace": NAMESPACE}
    ]


def test_namespaced_operator_uses_a_role_only():
    objects = render_chart({"operator": {"rbac": {"clusterWide": False}}})
    assert not objects.of("ClusterRole") and not objects.of("ClusterRoleBinding")
    rules = rules_map(objects.one("Role", f"{RELEASE}-operator")["rules"])
    assert rules == {**OPERATOR_RULES, **LEASE_RULES}
    operator = container(objects.one("Deployment", f"{RELEASE}-operator"), "operator")
    assert env(operator)["QUIVER_WATCH_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


# The kinds a QueryPool owns (operator/src/controller/resources.rs): the operator applies and
# watches each of them the same way.
POOL_CHILDREN = [("apps", "deployments"), ("", "services"), ("", "configmaps"),
                 ("policy", "poddisruptionbudgets"), ("networking.k8s.io", "networkpolicies")]


@pytest.mark.parametrize("cluster_wide", [True, False])
def test_operator_may_manage_the_workers_network_policies(cluster_wide):
    objects = render_chart({"operator": {"rbac": {"clusterWide": cluster_wide}}})
    kind = "ClusterRole" if cluster_wide else "Role"
    rules = rules_map(objects.one(kind, f"{RELEASE}-operator")["rules"])
    policies = rules[("networking.k8s.io", "networkpolicies")]
    assert policies == {"list", "watch", "create", "patch", "delete"}, \
        "apply (create, patch), watch (list, watch), and delete when networkPolicy.enabled is turned off"
    others = [c for c in POOL_CHILDREN if c != ("networking.k8s.io", "networkpolicies")]
    assert all(policies - {"delete"} <= rules[child] for child in others), "same verbs as the other owned kinds"
    assert all("delete" not in rules[child] for child in others), "the garbage collector deletes them with their pool"
    # The policies admit this release's gateway pods, in the release namespace.
    gateway = objects.one("Deployment", f"{RELEASE}-gateway")
    e = env(container(objects.one("Deployment", f"{RELEASE}-operator"), "operator"))
    labels = dict(pair.split("=", 1) for pair in e["QUIVER_GATEWAY_POD_LABELS"].split(","))
    assert labels == gateway["spec"]["selector"]["matchLabels"]
    assert labels.items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    assert e["QUIVER_GATEWAY_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_gateway_rbac_is_read_only(objects):
    rules = rules_map(objects.one("Role", f"{RELEASE}-gateway")["rules"])
    assert rules == GATEWAY_RULES
    assert_no_secret_access(rules)


def test_gateway_wiring(default_objects):
    deploy = default_objects.one("Deployment", f"{RELEASE}-gateway")
    c = container(deploy, "gateway")
    assert c["command"] == ["quiver"] and c["args"] == ["gateway"]
    e = env(c)
    assert e["QUIVER_LISTEN"] == "0.0.0.0:50051"
    assert e["QUIVER_ADMIN_LISTEN"] == "0.0.0.0:9090"
    # Kubernetes discovery of the known pools (the sample pool), in the pod's own namespace.
    assert e["QUIVER_DISCOVERY"] == "kubernetes"
    assert e["QUIVER_POOLS"] == "default"
    assert "QUIVER_WORKER_ENDPOINTS" not in e
    assert e["QUIVER_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert pod_spec(deploy)["automountServiceAccountToken"] is True
    assert e["QUIVER_TICKET_KEY"] == {"secretKeyRef": {"name": f"{RELEASE}-ticket-key", "key": "ticket-key"}}
    assert e["QUIVER_CONFIG"] == "/etc/quiver/admission.yaml"
    assert e["QUIVER_TENANTS_FILE"] == "/etc/quiver/tenants.yaml"
    # admission.yaml (ConfigMap) and tenants.yaml (Secret) in one projected, reloadable directory.
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/quiver")
    assert mount["readOnly"] is True and "subPath" not in mount
    volume = next(v for v in pod_spec(deploy)["volumes"] if v["name"] == mount["name"])
    sources = volume["projected"]["sources"]
    assert sources[0]["configMap"]["name"] == f"{RELEASE}-admission"
    assert sources[0]["configMap"]["items"] == [{"key": "admission.yaml", "path": "admission.yaml"}]
    assert sources[1]["secret"]["name"] == f"{RELEASE}-tenants"
    # The HPA owns the replica count.
    assert "replicas" not in deploy["spec"]
    hpa = default_objects.one("HorizontalPodAutoscaler", f"{RELEASE}-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy.name}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = default_objects.one("PodDisruptionBudget", f"{RELEASE}-gateway")
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    flight = default_objects.one("Service", f"{RELEASE}-gateway")
    assert [p["name"] for p in flight["spec"]["ports"]] == ["flight"]  # admin is never exposed
    assert flight["spec"]["type"] == "ClusterIP"
    admin = default_objects.one("Service", f"{RELEASE}-gateway-admin")
    assert admin["spec"]["ports"][0]["port"] == 9090 and admin["spec"]["type"] == "ClusterIP"


def test_gateway_graceful_exit(default_objects):
    """The preStop hook keeps a stopping gateway serving while endpoints drop it; then SIGTERM
    drains its streams, and the grace period covers the hook plus the longest query."""
    deploy = default_objects.one("Deployment", f"{RELEASE}-gateway")
    c = container(deploy, "gateway")
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["quiver", "pre-stop", "--delay", "5s"]
    assert env(c)["QUIVER_QUERY_TIMEOUT"] == "60s"
    assert pod_spec(deploy)["terminationGracePeriodSeconds"] >= 5 + 60 + 10
    # The hook is a real subcommand of the image's binary.
    binary = os.environ.get("QUIVER_BIN") or str(ROOT / "target" / "debug" / "quiver")
    if pathlib.Path(binary).is_file():
        done = subprocess.run([binary, *command[1:-1], "0s"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    # Off when asked.
    off = render_chart({"gateway": {"preStopDelaySeconds": 0}}).one("Deployment", f"{RELEASE}-gateway")
    assert "lifecycle" not in container(off, "gateway")


def test_operator_wiring(default_objects, all_on_objects):
    c = container(default_objects.one("Deployment", f"{RELEASE}-operator"), "operator")
    assert c["command"] == ["quiver-operator"] and c["args"] == ["run"]
    e = env(c)
    assert e["QUIVER_LEADER_ELECTION"] == "false"
    assert e["QUIVER_GATEWAY_ADMIN_URL"] == f"http://{RELEASE}-gateway-admin.{NAMESPACE}.svc.cluster.local:9090"
    assert not default_objects.of("PodDisruptionBudget") or all(
        p.name != f"{RELEASE}-operator" for p in default_objects.of("PodDisruptionBudget"))
    ha = all_on_objects.one("Deployment", f"{RELEASE}-operator")
    assert ha["spec"]["replicas"] == 2
    assert env(container(ha, "operator"))["QUIVER_LEADER_ELECTION"] == "true"
    assert all_on_objects.one("PodDisruptionBudget", f"{RELEASE}-operator")
    assert "podAntiAffinity" in pod_spec(ha)["affinity"]


def test_ticket_key_secret_generated_or_given(default_objects, all_on_objects):
    import base64

    generated = default_objects.one("Secret", f"{RELEASE}-ticket-key")
    assert len(base64.b64decode(generated["data"]["ticket-key"])) == 48
    given = all_on_objects.one("Secret", f"{RELEASE}-ticket-key")
    assert base64.b64decode(given["data"]["ticket-key"]).decode() == load_values(ALL_ON_VALUES)["ticketKey"]["value"]
    external = render_chart({"ticketKey": {"existingSecret": "my-key", "secretKey": "k"}})
    assert not external.named("Secret", f"{RELEASE}-ticket-key")
    e = env(container(external.one("Deployment", f"{RELEASE}-gateway"), "gateway"))
    assert e["QUIVER_TICKET_KEY"] == {"secretKeyRef": {"name": "my-key", "key": "k"}}


def test_admission_config_and_tenants(all_on_objects):
    values = load_values(ALL_ON_VALUES)
    cm = all_on_objects.one("ConfigMap", f"{RELEASE}-admission")
    assert yaml.safe_load(cm["data"]["admission.yaml"]) == values["admission"]["config"]
    assert "tenants" not in yaml.safe_load(cm["data"]["admission.yaml"])
    secret = all_on_objects.one("Secret", f"{RELEASE}-tenants")
    tenants = yaml.safe_load(secret["stringData"]["tenants.yaml"])
    assert tenants == {"tenants": values["admission"]["tenants"]["list"]}
    assert all(t.startswith("sha256:") for tenant in tenants["tenants"] for t in tenant["tokens"])


def test_tenants_inline_in_the_config_map():
    values = load_values(ALL_ON_VALUES)
    values["admission"]["tenants"]["inConfigMap"] = True
    objects = render_chart(values)
    assert not objects.named("Secret", f"{RELEASE}-tenants")
    admission = yaml.safe_load(objects.one("ConfigMap", f"{RELEASE}-admission")["data"]["admission.yaml"])
    assert admission["tenants"] == values["admission"]["tenants"]["list"]
    deploy = objects.one("Deployment", f"{RELEASE}-gateway")
    assert "QUIVER_TENANTS_FILE" not in env(container(deploy, "gateway"))
    volume = next(v for v in pod_spec(deploy)["volumes"] if v["name"] == "config")
    assert [list(s) for s in volume["projected"]["sources"]] == [["configMap"]]
    assert "inline in ConfigMap" in objects.notes
    helm, chart = helm_chart()
    with chart, pytest.raises(helm.HelmError, match="exclude each other"):
        chart.render(values={"admission": {"tenants": {"inConfigMap": True, "existingSecret": "x"}}},
                     name=RELEASE, namespace=NAMESPACE)


def test_rate_limit_shares_follow_the_replica_count(default_objects, all_on_objects):
    def shares(objects):
        return env(container(objects.one("Deployment", f"{RELEASE}-gateway"), "gateway"))["QUIVER_GATEWAY_REPLICAS"]

    assert shares(default_objects) == "2"  # the HPA's minimum
    assert shares(all_on_objects) == "3"
    assert shares(render_chart({"gateway": {"autoscaling": {"enabled": False}, "replicas": 4}})) == "4"


def test_admission_off_runs_open_without_mounts():
    objects = render_chart({"admission": {"enabled": False}})
    assert not objects.named("ConfigMap", f"{RELEASE}-admission")
    assert not objects.named("Secret", f"{RELEASE}-tenants")
    e = env(container(objects.one("Deployment", f"{RELEASE}-gateway"), "gateway"))
    assert "QUIVER_CONFIG" not in e
    assert "WARNING" in objects.notes


def test_gateway_tls_from_a_secret_with_http_probes():
    objects = render_chart({"gateway": {"tls": {"enabled": True, "secretName": "gateway-cert",
                                                "clientCAKey": "ca.crt"}}})
    deploy = objects.one("Deployment", f"{RELEASE}-gateway")
    c = container(deploy, "gateway")
    e = env(c)
    assert e["QUIVER_TLS_CERT"] == "/etc/quiver/tls/tls.crt"
    assert e["QUIVER_TLS_KEY"] == "/etc/quiver/tls/tls.key"
    assert e["QUIVER_TLS_CLIENT_CA"] == "/etc/quiver/tls/ca.crt"
    # A directory mount, so a renewed certificate reaches the running gateway.
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/quiver/tls")
    assert mount["readOnly"] is True and "subPath" not in mount
    volume = next(v for v in pod_spec(deploy)["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "gateway-cert"
    # kubelet's gRPC probes speak plain text: with TLS on they check the admin port instead.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "grpc" not in c[probe], probe
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "admin"}, probe
    plain = container(render_chart().one("Deployment", f"{RELEASE}-gateway"), "gateway")
    assert "QUIVER_TLS_CERT" not in env(plain) and "grpc" in plain["readinessProbe"]


def test_sample_pool(default_objects, all_on_objects):
    pool = default_objects.one("QueryPool", "default")
    assert pool["apiVersion"] == "quiver.dev/v1alpha1"
    assert pool["spec"]["minReplicas"] <= pool["spec"]["maxReplicas"]
    assert not render_chart({"samplePool": {"enabled": False}}).of("QueryPool")
    assert "standbyPool" not in pool["spec"] and len(default_objects.of("QueryPool")) == 1


def test_standby_pool_and_scale_to_zero(all_on_objects):
    standby = all_on_objects.one("QueryPool", "standby")
    assert standby["spec"]["role"] == "Standby"
    assert "catalog" not in standby["spec"]["template"]
    assert standby["spec"]["template"]["resources"]["requests"]["cpu"] == "250m"
    assert all_on_objects.one("QueryPool", "default")["spec"]["standbyPool"] == "standby"
    at_zero = render_chart({"samplePool": {"minReplicas": 0, "scaleToZeroAfter": "10m"},
                            "standbyPool": {"enabled": True}})
    spec = at_zero.one("QueryPool", "default")["spec"]
    assert spec["minReplicas"] == 0 and spec["autoscaling"] == {"scaleToZeroAfter": "10m"}
    assert at_zero.one("QueryPool", "standby")["spec"]["minReplicas"] == 2


def test_operator_makes_pool_network_policies_only_when_enabled(default_objects):
    def operator_env(objects):
        return env(container(objects.one("Deployment", f"{RELEASE}-operator"), "operator"))
    assert operator_env(default_objects)["QUIVER_WORKER_NETWORK_POLICIES"] == "true"
    off = render_chart({"networkPolicy": {"enabled": False}})
    assert operator_env(off)["QUIVER_WORKER_NETWORK_POLICIES"] == "false"
    assert not off.of("NetworkPolicy")


def test_network_policies(default_objects, all_on_objects):
    for objects in (default_objects, all_on_objects):
        policies = {p.name: p for p in objects.of("NetworkPolicy")}
        assert set(policies) == {f"{RELEASE}-gateway", f"{RELEASE}-operator", f"{RELEASE}-workers"}
        workers = policies[f"{RELEASE}-workers"]["spec"]
        # Workers: only the gateways may send queries.
        assert workers["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {
            "app.kubernetes.io/name": "quiver", "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": "gateway"}}}]
        assert workers["ingress"][0]["ports"] == [{"port": 50051, "protocol": "TCP"}]
        # Nothing else: workers serve no metrics, so scrapers get no way in.
        assert len(workers["ingress"]) == 1, workers["ingress"]
        gateway = policies[f"{RELEASE}-gateway"]["spec"]
        admin = next(r for r in gateway["ingress"] if r["ports"][0]["port"] == "admin")
        assert admin["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    flight = next(r for r in all_on_objects.one("NetworkPolicy", f"{RELEASE}-gateway")["spec"]["ingress"]
                  if r["ports"][0]["port"] == "flight")
    assert flight["from"] == load_values(ALL_ON_VALUES)["networkPolicy"]["flightClients"]
    assert not render_chart({"networkPolicy": {"enabled": False}}).of("NetworkPolicy")


def test_monitoring_is_optional(default_objects, all_on_objects):
    assert not default_objects.of("ServiceMonitor")
    assert not default_objects.named("ConfigMap", f"{RELEASE}-dashboard")
    monitors = {m.name: m for m in all_on_objects.of("ServiceMonitor")}
    assert set(monitors) == {f"{RELEASE}-gateway", f"{RELEASE}-operator"}
    assert monitors[f"{RELEASE}-gateway"]["metadata"]["labels"]["release"] == "kube-prometheus"
    # The gateway monitor selects the admin Service only.
    admin = all_on_objects.one("Service", f"{RELEASE}-gateway-admin")
    selector = monitors[f"{RELEASE}-gateway"]["spec"]["selector"]["matchLabels"]
    assert all(admin["metadata"]["labels"].get(k) == v for k, v in selector.items())
    flight = all_on_objects.one("Service", f"{RELEASE}-gateway")
    assert not all(flight["metadata"]["labels"].get(k) == v for k, v in selector.items())
    dashboard = all_on_objects.one("ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["quiver.json"])
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for metric in ("quiver_queries_total", "quiver_query_duration_seconds_bucket", "quiver_pool_in_flight"):
        assert metric in exprs


def test_all_on_values_reach_the_objects(all_on_objects):
    values = load_values(ALL_ON_VALUES)
    gateway = all_on_objects.one("Deployment", f"{RELEASE}-gateway")
    c = container(gateway, "gateway")
    assert c["image"] == f"{values['image']['repository']}@{values['image']['digest']}"
    assert pod_spec(gateway)["imagePullSecrets"] == [{"name": "regcred"}]
    # Every known pool is discovered: the sample pool and admission.pools.
    assert env(c)["QUIVER_POOLS"] == ";".join([values["samplePool"].get("name", "default"),
                                              *values["admission"]["pools"]])
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod_spec(gateway)["affinity"]["podAntiAffinity"]
    svc = all_on_objects.one("Service", f"{RELEASE}-gateway")
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["ports"][0]["nodePort"] == 30051
    assert all(o["metadata"]["labels"]["team"] == "analytics" for o in all_on_objects)


def test_static_discovery_needs_no_api_access():
    endpoints = ["grpc://10.1.0.5:50051", "grpc://10.1.0.6:50051"]
    objects = render_chart({"gateway": {"discovery": "static", "workerEndpoints": endpoints},
                            "admission": {"pools": ["reporting"]}})
    deploy = objects.one("Deployment", f"{RELEASE}-gateway")
    e = env(container(deploy, "gateway"))
    assert e["QUIVER_DISCOVERY"] == "static"
    assert e["QUIVER_POOLS"] == (f"default={','.join(endpoints)};"
                                 f"reporting=grpc://reporting.{NAMESPACE}.svc.cluster.local:50051")
    assert pod_spec(deploy)["automountServiceAccountToken"] is False
    assert not objects.named("Role", f"{RELEASE}-gateway")
    assert not objects.named("RoleBinding", f"{RELEASE}-gateway")


def test_notes_tell_how_to_connect(default_objects):
    notes = default_objects.notes
    assert f"port-forward service/{RELEASE}-gateway 50051:50051" in notes
    assert "grpc://127.0.0.1:50051" in notes
    assert "admits every client" in notes  # open without tenants, and it says so


BAD_VALUES = [
    ({"gateway": {"replicas": -1}}, "/gateway/replicas", "minimum"),
    ({"operator": {"replicas": -2}}, "/operator/replicas", "minimum"),
    ({"samplePool": {"minReplicas": -1}}, "/samplePool/minReplicas", "minimum"),
    ({"gateway": {"flightPort": 70000}}, "/gateway/flightPort", "maximum"),
    ({"samplePool": {"drainTimeout": "soon"}}, "/samplePool/drainTimeout", "pattern"),
    ({"admission": {"tenants": {"list": [{"name": "t", "tokens": ["plaintext"]}]}}}, "tokens/0", "pattern"),
    ({"gatway": {"replicas": 1}}, "additional properties 'gatway'", ""),
    ({"gateway": {"discovery": "dns"}}, "/gateway/discovery", "kubernetes"),
    ({"gateway": {"tls": {"enabled": True}}}, "/gateway/tls", "secretName"),
]


@pytest.mark.parametrize("values,where,why", BAD_VALUES, ids=[str(v) for v, _, _ in BAD_VALUES])
def test_values_schema_rejects_bad_values(values, where, why):
    helm, chart = helm_chart()
    with chart:
        with pytest.raises(helm.HelmError) as err:
            chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    assert where in str(err.value) and why in str(err.value), str(err.value)


def test_unknown_pool_in_admission_config_is_rejected():
    helm, chart = helm_chart()
    config = copy.deepcopy(load_values(CHART / "values.yaml")["admission"]["config"])
    config["resource_groups"][1]["subgroups"] = [{"name": "${user}", "pool": "nightly"}]
    with chart:
        with pytest.raises(helm.HelmError) as err:
            chart.render(values={"admission": {"config": config}}, name=RELEASE, namespace=NAMESPACE)
    assert 'group "${user}" runs on pool "nightly", which is not a known pool (known: default)' in str(err.value)
    # Listing the pool makes it valid.
    render_chart({"admission": {"config": config, "pools": ["nightly"]}})


def test_tenants_belong_in_the_secret():
    helm, chart = helm_chart()
    with chart:
        with pytest.raises(helm.HelmError, match="admission.tenants.list"):
            chart.render(values={"admission": {"config": {"tenants": []}}}, name=RELEASE, namespace=NAMESPACE)


def test_every_value_is_documented_and_typed():
    """Every key in values.yaml is typed in values.schema.json, and every setting (a key with
    its value on the line) has a `# --` comment right above it."""
    import re

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = load_values(CHART / "values.yaml")

    def walk(node, schema_node, path):
        for key, value in node.items():
            here = f"{path}.{key}" if path else key
            props = schema_node.get("properties", {})
            assert key in props, f"{here} is not in values.schema.json"
            if isinstance(value, dict) and "properties" in props[key] and here != "admission.config":
                walk(value, props[key], here)

    walk(values, schema, "")

    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        match = re.match(r"^( *)([A-Za-z][\w-]*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match[1]), match[2], match[3].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        data = path.startswith(("admission.config.", "samplePool.catalog.", "podSecurityContext.",
                                "containerSecurityContext.")) or ".resources." in path \
            or path.endswith("Probe") is False and "Probe." in path
        if rest and not rest.startswith("#") and not data:
            above = lines[number - 2].strip()
            assert above.startswith("#"), f"values.yaml:{number}: {path} has no comment above it"
