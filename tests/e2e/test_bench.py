"""`quiver bench` end to end: it starts its own `quiver up`, runs a query on every path (gateway,
worker, bare relay, engine, DataFusion) and a short throughput section, and writes its JSON
report. Figures are not judged here (that is what the benchmark is for); the report's shape and
its internal consistency are."""

import json
import os
import subprocess

import pytest

from conftest import QUIVER_BIN, quiver_env

PATHS = ("gateway", "worker", "relay", "engine", "datafusion")


def test_bench_reports_every_path_and_throughput(data_dir, tmp_path):
    report_file = tmp_path / "bench.json"
    result = subprocess.run(
        [QUIVER_BIN, "bench", "--data-dir", str(data_dir), "--scale-factor", "0.01",
         "--iterations", "5", "--only", "point lookup", "--clients", "2",
         "--throughput-for", "1s", "--json", str(report_file)],
        capture_output=True, text=True, env=quiver_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rl added" in result.stdout and "gw added" in result.stdout, result.stdout

    report = json.loads(report_file.read_text())
    assert report["iterations"] == 5 and report["workers"] == 2
    assert report["pinning"] is None
    [query] = report["queries"]
    assert query["name"] == "point lookup" and query["rows"] == 1
    for path in PATHS:
        p50, p99 = query[path]["p50"], query[path]["p99"]
        assert 0 < p50 <= p99, (path, query[path])
    # CPU is read from each process's scheduler statistics: present on Linux, and positive.
    for cpu in ("gateway_cpu_us", "worker_cpu_via_gateway_us", "worker_cpu_us"):
        assert query[cpu] is not None and query[cpu] > 0, (cpu, query)

    throughput = report["throughput"]
    assert throughput["clients"] == 2
    assert throughput["direct_qps"] > 0 and throughput["gateway_qps"] > 0, throughput


def test_bench_pins_the_gateway_to_a_core_of_its_own(data_dir, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("--pin-gateway needs two cores")
    report_file = tmp_path / "bench.json"
    result = subprocess.run(
        [QUIVER_BIN, "bench", "--data-dir", str(data_dir), "--scale-factor", "0.01",
         "--iterations", "3", "--only", "select 1", "--clients", "0", "--pin-gateway",
         "--json", str(report_file)],
        capture_output=True, text=True, env=quiver_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"pinned: gateway on CPU {cpus[0]}" in result.stdout, result.stdout
    report = json.loads(report_file.read_text())
    assert report["pinning"] == {"gateway": cpus[:1], "others": cpus[1:]}, report
    [query] = report["queries"]
    assert query["gateway"]["p50"] > 0 and query["gateway_cpu_us"] > 0, query
