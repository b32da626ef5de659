"""The QueryPool CRD in charts/ and deploy/ is exactly what `quiver-operator crd` prints.

operator/crd/querypool.yaml is the operator's committed output of `quiver-operator crd` (its own
test fails when that drifts from the Rust types); the copies here must be byte-identical, and
when a built quiver-operator binary is at hand its live output is compared too.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest
import yaml

from deploy_helpers import CRD_COPIES, CRD_SOURCE, ROOT, validate_object


def crd_source() -> bytes:
    if not CRD_SOURCE.exists():
        pytest.skip("operator/crd/querypool.yaml is not generated yet")
    return CRD_SOURCE.read_bytes()


@pytest.mark.parametrize("copy", CRD_COPIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_crd_copy_is_identical(copy: pathlib.Path):
    source = crd_source()
    assert copy.exists(), f"{copy.relative_to(ROOT)} missing: cp operator/crd/querypool.yaml {copy.relative_to(ROOT)}"
    assert copy.read_bytes() == source, (
        f"{copy.relative_to(ROOT)} differs from operator/crd/querypool.yaml; "
        f"regenerate: quiver-operator crd > {copy.relative_to(ROOT)}"
    )


def test_crd_matches_the_operator_binary():
    source = crd_source()
    candidates = [os.environ.get("QUIVER_OPERATOR_BIN", "")] + [
        str(ROOT / "target" / profile / "quiver-operator") for profile in ("debug", "release")
    ]
    binary = next((c for c in candidates if c and pathlib.Path(c).is_file()), None)
    if binary is None:
        pytest.skip("no built quiver-operator binary (set QUIVER_OPERATOR_BIN)")
    printed = subprocess.run([binary, "crd"], capture_output=True, check=True, timeout=60).stdout
    assert printed == source, "operator/crd/querypool.yaml differs from `quiver-operator crd`"


def test_crd_is_what_the_chart_and_manifests_expect():
    crd = yaml.safe_load(crd_source())
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "querypools.quiver.dev"
    assert crd["spec"]["group"] == "quiver.dev" and crd["spec"]["scope"] == "Namespaced"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    assert version["served"] and version["storage"]
    assert "scale" in version.get("subresources", {}) and "status" in version["subresources"]
    import kubernetes_validate

    kubernetes_validate.validate(crd, "1.30.0", strict=True)


def test_querypools_match_the_crd(default_objects, all_on_objects, overlays):
    """Every QueryPool the chart or an overlay creates is valid under the CRD's schema."""
    crd_source()
    pools = [o for objects in (default_objects, all_on_objects, *overlays.values()) for o in objects.of("QueryPool")]
    # The sample pool in each rendering, and the standby pool of the all-on values.
    assert len(pools) == 5 and sum(p["spec"].get("role") == "Standby" for p in pools) == 1
    for pool in pools:
        validate_object(pool)
