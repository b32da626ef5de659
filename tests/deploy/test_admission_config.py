"""The admission configs the chart and the overlays write load in the real gateway, and a bad
one is refused with the file, field and reason.

Needs a built `quiver` binary with `--config` (QUIVER_BIN, else target/debug/quiver; scripts/test
builds it first); skipped without one. The gateway runs on loopback ports chosen by the OS and is
stopped after it has loaded its config.
"""

from __future__ import annotations

import copy
import os
import pathlib
import subprocess
import time

import pytest
import yaml

from deploy_helpers import ALL_ON_VALUES, KUSTOMIZE, RELEASE, ROOT, load_values, render_chart

STARTUP_SECONDS = 3.0


def quiver_bin() -> str:
    candidates = [os.environ.get("QUIVER_BIN", ""), str(ROOT / "target" / "debug" / "quiver")]
    binary = next((c for c in candidates if c and pathlib.Path(c).is_file()), None)
    if binary is None:
        pytest.skip("no built quiver binary (set QUIVER_BIN)")
    usage = subprocess.run([binary, "gateway", "--help"], capture_output=True, text=True, timeout=30).stdout
    if "--config" not in usage:
        pytest.skip(f"{binary} predates the admission config (--config)")
    return binary


def start_gateway(config: dict, tmp_path: pathlib.Path) -> tuple[int | None, str]:
    """Runs `quiver gateway --config FILE`; returns (exit code or None if still running, stderr)."""
    path = tmp_path / "admission.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    proc = subprocess.Popen(
        [quiver_bin(), "gateway", "--config", str(path), "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", "--worker", "grpc://127.0.0.1:9", "--ticket-key", "test-key"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    code = proc.poll()
    if code is None:
        proc.terminate()
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
    return code, stderr


def chart_config(values: dict | None) -> dict:
    """The one admission file the gateway would see: the ConfigMap's config plus the tenants."""
    objects = render_chart(values)
    config = yaml.safe_load(objects.one("ConfigMap", f"{RELEASE}-admission")["data"]["admission.yaml"])
    secret = objects.named("Secret", f"{RELEASE}-tenants")
    if secret:
        config["tenants"] = yaml.safe_load(secret["stringData"]["tenants.yaml"])["tenants"]
    return config


def dev_overlay_config() -> dict:
    directory = KUSTOMIZE / "overlays" / "dev"
    config = yaml.safe_load((directory / "admission.yaml").read_text())
    config["tenants"] = yaml.safe_load((directory / "tenants.yaml").read_text())["tenants"]
    return config


CONFIGS = {
    "chart defaults": lambda: chart_config(None),
    "chart all-on (one pool)": lambda: chart_config(single_pool(load_values(ALL_ON_VALUES))),
    "dev overlay": dev_overlay_config,
}


def single_pool(values: dict) -> dict:
    """All-on values with every group on the default pool (the gateway knows one pool today)."""
    values = copy.deepcopy(values)
    for group in values["admission"]["config"]["resource_groups"]:
        group.pop("pool", None)
    return values


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_loads_in_the_gateway(name, tmp_path):
    code, stderr = start_gateway(CONFIGS[name](), tmp_path)
    assert code is None, f"gateway exited {code} on the {name} config:\n{stderr}"


def test_gateway_refuses_an_unknown_pool(tmp_path):
    config = chart_config(None)
    config["resource_groups"][0]["pool"] = "nightly"
    code, stderr = start_gateway(config, tmp_path)
    assert code not in (None, 0), "gateway accepted a group on an unknown pool"
    assert "resource_groups[0].pool" in stderr and "nightly" in stderr, stderr
