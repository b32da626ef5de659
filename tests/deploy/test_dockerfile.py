"""deploy/Dockerfile: checked as text (no Docker daemon on the test machines). The image is
multi-stage, builds both binaries from the locked workspace, and runs as non-root from a
distroless base that works with a read-only root filesystem."""

from __future__ import annotations

import re
import tomllib

from deploy_helpers import ROOT

DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()


def stages() -> list[str]:
    return re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", DOCKERFILE, re.M | re.I)


def test_multi_stage_with_distroless_nonroot_runtime():
    found = stages()
    assert len(found) == 2
    assert found[0][0].startswith("rust:") and found[0][1] == "builder"
    assert found[1][0] == "gcr.io/distroless/cc-debian12:nonroot"


def test_builds_both_binaries_locked_in_release():
    build = re.search(r"cargo build ([^\n\\]*)", DOCKERFILE)[1]
    assert "--release" in build and "--locked" in build
    assert "--bin quiver " in build + " " and "--bin quiver-operator" in build
    # The binary names exist in the workspace.
    service = tomllib.loads((ROOT / "query-service" / "Cargo.toml").read_text())
    operator = tomllib.loads((ROOT / "operator" / "Cargo.toml").read_text())
    assert "quiver" in [b["name"] for b in service.get("bin", [])]
    assert operator["package"]["name"] == "quiver-operator"
    assert "COPY --from=builder /out/bin/quiver /out/bin/quiver-operator /usr/local/bin/" in DOCKERFILE


def test_every_workspace_member_is_in_the_manifest_stage():
    """The dependency layer is built from the manifests alone; a member missing there fails the
    image build at `cargo fetch`."""
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    manifests = DOCKERFILE.split("cargo fetch", 1)[0]
    for member in workspace:
        assert f"COPY {member}/Cargo.toml {member}/Cargo.toml" in manifests, member


def test_runs_as_non_root_and_picks_roles_by_argument():
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    assert re.search(r"^USER 65532:65532$", runtime, re.M)
    assert 'ENTRYPOINT ["quiver"]' in runtime
    # No listen address baked in: it would apply to the worker role too.
    assert "QUIVER_LISTEN" not in runtime
    assert 'VOLUME ["/data"]' in runtime and "--chown=65532:65532 /out/data /data" in runtime


def test_build_context_is_the_workspace_only():
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*"
    for kept in ("!Cargo.toml", "!Cargo.lock", "!query-service/", "!operator/"):
        assert kept in ignore
