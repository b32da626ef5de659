"""Samples the gateway while a scenario runs: Prometheus text from the admin port's /metrics,
per-pool demand from /v1/pools, and (when the runner started Quiver) the RSS of the gateway and
its workers. One JSON object per sample goes to samples.jsonl:

    {"t": <unix s>, "metrics": {"quiver_pool_workers{pool=default}": 2, ...},
     "pools": [{"pool": "default", "workers": 2, "ready": 2, "in_flight": 0, "queued": 0, ...}],
     "rss": {"gateway": <bytes>, "workers": <bytes>, "worker_count": 2,
             "cpu_gateway": <cpu s>, "cpu_workers": <cpu s>},
     "cpu": {"k6": <cpu s>, "machine_busy": <cpu s over all cores>}}

It records whatever is there: without an admin URL it records only RSS, an endpoint that fails
is noted once in `errors` and tried again at the next tick.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.request
from pathlib import Path

from quiver import cpu_seconds, process_tree_rss

LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, float]:
    """Every sample except histogram buckets, keyed `name{k=v,...}` with labels sorted."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m or m.group(1).endswith("_bucket"):
            continue
        labels = sorted(LABEL.findall(m.group(3) or ""))
        key = m.group(1) + ("{" + ",".join(f"{k}={v}" for k, v in labels) + "}" if labels else "")
        try:
            out[key] = float(m.group(4))
        except ValueError:
            continue
    return out


class Sampler(threading.Thread):
    def __init__(self, path: Path, admin: str | None, pid: int | None, interval: float = 0.5):
        super().__init__(daemon=True)
        self.path = path
        self.admin = admin.rstrip("/") if admin else None
        self.pid = pid
        self.interval = interval
        self.errors: dict[str, str] = {}
        self.count = 0
        self.client_pid: int | None = None  # k6, once started: its CPU time is sampled too
        self._halt = threading.Event()

    def _get(self, route: str):
        try:
            with urllib.request.urlopen(self.admin + route, timeout=2) as r:
                return r.read().decode()
        except Exception as e:  # noqa: BLE001 - any failure is recorded and retried
            self.errors.setdefault(route, str(e))
            return None

    def sample(self) -> dict:
        s: dict = {"t": time.time()}
        if self.admin:
            text = self._get("/metrics")
            if text is not None:
                s["metrics"] = parse_prometheus(text)
            body = self._get("/v1/pools")
            if body is not None:
                try:
                    s["pools"] = json.loads(body).get("pools", [])
                except ValueError as e:
                    self.errors.setdefault("/v1/pools", f"not JSON: {e}")
        if self.pid:
            s["rss"] = process_tree_rss(self.pid)
        cpu = {}
        if self.client_pid:
            cpu["k6"] = cpu_seconds(self.client_pid)
        try:
            # Whole machine: busy CPU seconds over all cores, from /proc/stat.
            f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            cpu["machine_busy"] = (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
        s["cpu"] = cpu
        return s

    def run(self) -> None:
        with open(self.path, "w") as f:
            while True:
                f.write(json.dumps(self.sample()) + "\n")
                f.flush()
                self.count += 1
                # A periodic tick, not synchronisation: stop() wakes it at once.
                if self._halt.wait(self.interval):
                    f.write(json.dumps(self.sample()) + "\n")
                    return

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def load_samples(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
