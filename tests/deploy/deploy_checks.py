"""Assertions shared by the chart and kustomize tests: pod security, probes, resources, RBAC."""

from __future__ import annotations

from typing import Any

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")

# What the operator must be allowed, and no more: (apiGroup, resource) -> verbs. These are the
# calls operator/src/controller makes (see charts/quiver/templates/operator/_rules.tpl).
OPERATOR_RULES = {
    ("quiver.dev", "querypools"): {"get", "list", "watch"},
    ("quiver.dev", "querypools/status"): {"patch"},
    ("quiver.dev", "querypools/finalizers"): {"update"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("", "services"): {"list", "watch", "create", "patch"},
    ("", "configmaps"): {"list", "watch", "create", "patch"},
    ("policy", "poddisruptionbudgets"): {"list", "watch", "create", "patch"},
    ("networking.k8s.io", "networkpolicies"): {"list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"list", "watch", "patch", "delete"},
    ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
LEASE_RULES = {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
# What kubernetes discovery calls (query-service/gateway/src/dispatch/discovery.rs): watchers.
GATEWAY_RULES = {
    ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
    ("quiver.dev", "querypools"): {"list", "watch"},
}


def pod_spec(obj) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def container(obj, name: str) -> dict[str, Any]:
    found = [c for c in pod_spec(obj)["containers"] if c["name"] == name]
    assert found, f"{obj.kind}/{obj.name} has no container {name}"
    return found[0]


def env(c: dict[str, Any]) -> dict[str, Any]:
    """Container env as {name: value or valueFrom}."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def assert_secure_pod(obj) -> None:
    """The restricted Pod Security Standard, plus read-only root and resource limits."""
    where = f"{obj.kind}/{obj.name}"
    spec = pod_spec(obj)
    psc = spec.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, f"{where}: pod must set runAsNonRoot"
    assert psc.get("runAsUser", 0) != 0, f"{where}: pod must not run as uid 0"
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp"
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key), f"{where}: {key} must be off"
    for vol in spec.get("volumes", []):
        assert "hostPath" not in vol, f"{where}: hostPath volume {vol['name']}"
    for c in spec.get("initContainers", []) + spec["containers"]:
        cwhere = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, f"{cwhere}: allowPrivilegeEscalation"
        assert sc.get("readOnlyRootFilesystem") is True, f"{cwhere}: readOnlyRootFilesystem"
        assert sc.get("privileged") is not True, f"{cwhere}: privileged"
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{cwhere}: drop ALL caps"
        assert not sc.get("capabilities", {}).get("add"), f"{cwhere}: adds capabilities"
        assert sc.get("runAsUser", psc.get("runAsUser", 0)) != 0, f"{cwhere}: runs as root"
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                assert r in res.get(kind, {}), f"{cwhere}: resources.{kind}.{r} missing"
        assert not c["image"].endswith(":latest"), f"{cwhere}: image tag latest"
        # A read-only root needs a writable /tmp.
        assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), f"{cwhere}: /tmp"


def assert_gateway_probes(obj, flight_port: int) -> None:
    c = container(obj, "gateway")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["flight"] == flight_port
    # Readiness and startup use the standard gRPC health service on the Flight port.
    for probe in ("readinessProbe", "startupProbe"):
        assert c[probe]["grpc"]["port"] == flight_port, f"gateway {probe} must be gRPC on Flight"
    live = c["livenessProbe"]
    assert live["httpGet"]["path"] == "/healthz" and live["httpGet"]["port"] == "admin"


def assert_operator_probes(obj) -> None:
    c = container(obj, "operator")
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "admin", f"operator {probe}"


def rules_map(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """Flattens RBAC rules to {(apiGroup, resource): verbs}, refusing wildcards."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), f"wildcard in {field}: {rule}"
        assert not rule.get("nonResourceURLs"), f"nonResourceURLs: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def assert_no_secret_access(rules: dict[tuple[str, str], set[str]]) -> None:
    assert ("", "secrets") not in rules, "must not read Secrets"
    for (_, resource), verbs in rules.items():
        assert "escalate" not in verbs and "bind" not in verbs and "impersonate" not in verbs
        assert resource not in ("pods/exec", "pods/attach", "nodes", "serviceaccounts/token")
