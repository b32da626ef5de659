"""The admission configs the chart and the overlays write load in the real gateway, and a bad
one is refused with the file, field and reason.

Needs a built `quiver` binary with `--config` (QUIVER_BIN, else target/debug/quiver; scripts/test
builds it first); skipped without one. The gateway runs on loopback ports chosen by the OS and is
stopped after it has loaded its config.
"""

from __future__ import annotations

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


def start_gateway(config: dict, tmp_path: pathlib.Path, pools: list[str]) -> tuple[int | None, str]:
    """Runs `quiver gateway --config FILE` serving `pools` (static endpoints that need not
    answer: the config check comes first); returns (exit code or None if still running, stderr)."""
    path = tmp_path / "admission.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    proc = subprocess.Popen(
        [quiver_bin(), "gateway", "--config", str(path), "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", "--ticket-key", "test-key",
         *(arg for pool in pools for arg in ("--pool", f"{pool}=grpc://127.0.0.1:9"))],
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


def chart_config(values: dict | None) -> tuple[dict, list[str]]:
    """The one admission file the gateway would see (the ConfigMap's config plus the tenants)
    and the pools the chart tells the gateway to serve (QUIVER_POOLS)."""
    objects = render_chart(values)
    config = yaml.safe_load(objects.one("ConfigMap", f"{RELEASE}-admission")["data"]["admission.yaml"])
    secret = objects.named("Secret", f"{RELEASE}-tenants")
    if secret:
        config["tenants"] = yaml.safe_load(secret["stringData"]["tenants.yaml"])["tenants"]
    gateway = objects.one("Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"]["containers"][0]
    pools = next(e["value"] for e in gateway["env"] if e["name"] == "QUIVER_POOLS")
    return config, [p.split("=", 1)[0] for p in pools.split(";")]


def dev_overlay_config() -> tuple[dict, list[str]]:
    directory = KUSTOMIZE / "overlays" / "dev"
    config = yaml.safe_load((directory / "admission.yaml").read_text())
    config["tenants"] = yaml.safe_load((directory / "tenants.yaml").read_text())["tenants"]
    return config, ["default"]


CONFIGS = {
    "chart defaults": lambda: chart_config(None),
    "chart all-on (two pools)": lambda: chart_config(load_values(ALL_ON_VALUES)),
    "dev overlay": dev_overlay_config,
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_loads_in_the_gateway(name, tmp_path):
    config, pools = CONFIGS[name]()
    code, stderr = start_gateway(config, tmp_path, pools)
    assert code is None, f"gateway exited {code} on the {name} config:\n{stderr}"


def test_gateway_refuses_an_unknown_pool(tmp_path):
    config, pools = chart_config(None)
    config["resource_groups"][0]["pool"] = "nightly"
    code, stderr = start_gateway(config, tmp_path, pools)
    assert code not in (None, 0), "gateway accepted a group on an unknown pool"
    assert "resource_groups[0].pool" in stderr and "nightly" in stderr, stderr
    assert "serves the pools [default]" in stderr, stderr
