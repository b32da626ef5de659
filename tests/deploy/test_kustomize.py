"""deploy/kustomize: the base is up to date with the chart, and every overlay renders with
`kubectl kustomize` into valid, secure objects."""

from __future__ import annotations

import subprocess
import sys

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
from deploy_helpers import KUSTOMIZE, OVERLAYS, ROOT, validate_object


def test_base_is_generated_from_the_chart():
    result = subprocess.run(
        [sys.executable, str(KUSTOMIZE / "generate_base.py"), "--check"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_overlays_render_valid_objects(overlays):
    for name, objects in overlays.items():
        assert len(objects) > 10, name
        for obj in objects:
            validate_object(obj)


def test_overlays_are_secure(overlays):
    for name, objects in overlays.items():
        namespace = {"dev": "quiver-dev", "production": "quiver"}[name]
        ns = objects.one("Namespace")
        assert ns.name == namespace
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        for obj in objects:
            if obj.kind not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
                assert obj["metadata"]["namespace"] == namespace, f"{name}: {obj.kind}/{obj.name}"
        for obj in objects:
            if obj.kind in WORKLOAD_KINDS:
                assert_secure_pod(obj)
        assert_gateway_probes(objects.one("Deployment", "quiver-gateway"), 50051)
        assert_operator_probes(objects.one("Deployment", "quiver-operator"))
        operator_rules = rules_map(objects.one("ClusterRole", "quiver-operator")["rules"])
        assert operator_rules == OPERATOR_RULES
        assert_no_secret_access(operator_rules)
        assert rules_map(objects.one("Role", "quiver-operator")["rules"]) == LEASE_RULES
        assert rules_map(objects.one("Role", "quiver-gateway")["rules"]) == GATEWAY_RULES
        # Bindings follow the overlay's namespace.
        for kind in ("ClusterRoleBinding", "RoleBinding"):
            for binding in objects.of(kind):
                assert all(s["namespace"] == namespace for s in binding["subjects"]), binding.name
        assert {p.name for p in objects.of("NetworkPolicy")} >= {"quiver-gateway", "quiver-workers"}


def test_secrets_referenced_exist_or_are_documented(overlays):
    dev = overlays["dev"]
    gateway = env(container(dev.one("Deployment", "quiver-gateway"), "gateway"))
    key_ref = gateway["QUIVER_TICKET_KEY"]["secretKeyRef"]
    assert dev.named("Secret", key_ref["name"]), "dev: ticket key Secret missing"
    volume = next(v for v in pod_spec(dev.one("Deployment", "quiver-gateway"))["volumes"] if v["name"] == "config")
    tenants_secret = volume["projected"]["sources"][1]["secret"]["name"]
    secret = dev.named("Secret", tenants_secret)
    assert secret, f"dev: tenants Secret {tenants_secret} missing (hash suffix not propagated?)"
    assert "tenants.yaml" in secret["data"]
    # Production never ships credentials; the overlay's header says how to create them.
    assert not overlays["production"].of("Secret")
    header = (KUSTOMIZE / "overlays" / "production" / "kustomization.yaml").read_text()
    assert "create secret generic quiver-ticket-key" in header
    assert "create secret generic quiver-tenants" in header


def test_overlays_install_the_crd(overlays):
    from deploy_helpers import CRD_SOURCE

    import pytest

    if not CRD_SOURCE.exists():
        pytest.skip("operator/crd/querypool.yaml is not generated yet")
    for name, objects in overlays.items():
        crd = objects.one("CustomResourceDefinition", "querypools.quiver.dev")
        assert crd.body == yaml.safe_load(CRD_SOURCE.read_text()), name


def test_dev_is_small(overlays):
    dev = overlays["dev"]
    assert not dev.of("HorizontalPodAutoscaler") and not dev.of("PodDisruptionBudget")
    gateway = dev.one("Deployment", "quiver-gateway")
    assert gateway["spec"]["replicas"] == 1
    assert env(container(gateway, "gateway"))["QUIVER_GATEWAY_REPLICAS"] == "1"
    pool = dev.one("QueryPool", "default")["spec"]
    assert pool["minReplicas"] == pool["maxReplicas"] == 1
    admission = yaml.safe_load(dev.one("ConfigMap", "quiver-admission")["data"]["admission.yaml"])
    assert {"tenant": "noisy", "group": "adhoc"} in admission["selectors"]


def test_production_is_highly_available(overlays):
    prod = overlays["production"]
    hpa = prod.one("HorizontalPodAutoscaler", "quiver-gateway")["spec"]
    assert hpa["minReplicas"] >= 3
    gateway_env = env(container(prod.one("Deployment", "quiver-gateway"), "gateway"))
    assert gateway_env["QUIVER_GATEWAY_REPLICAS"] == str(hpa["minReplicas"])
    pdbs = {p.name for p in prod.of("PodDisruptionBudget")}
    assert pdbs == {"quiver-gateway", "quiver-operator"}
    gateway = pod_spec(prod.one("Deployment", "quiver-gateway"))
    anti = gateway["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in anti
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in anti
    assert gateway["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    operator = prod.one("Deployment", "quiver-operator")
    assert operator["spec"]["replicas"] == 2
    assert env(container(operator, "operator"))["QUIVER_LEADER_ELECTION"] == "true"
    pool = prod.one("QueryPool", "default")["spec"]
    assert pool["minReplicas"] >= 3 and pool["warmReplicas"] >= 1


def test_overlays_list_every_file_they_hold():
    """A file in an overlay that kustomization.yaml does not mention is a forgotten patch."""
    for name in OVERLAYS:
        directory = KUSTOMIZE / "overlays" / name
        text = (directory / "kustomization.yaml").read_text()
        for path in directory.glob("*.yaml"):
            if path.name != "kustomization.yaml":
                assert path.name in text, f"{name}: {path.name} is not used"
