"""Turns a run's raw outputs into figures: k6's per-query samples (CSV), the k6 summary and the
sampler's gateway samples. Everything here is pure computation over loaded data, shared by the
derived gates (gates.py) and the report (report.py).
"""

from __future__ import annotations

import csv
import gzip
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

WANTED = {"query_duration", "query_ttfb", "dropped_iterations", "flight_bytes", "flight_messages"}


@dataclass
class Query:
    t: float  # seconds from the start of the load, when the query ended
    ms: float
    scenario: str
    tenant: str
    outcome: str
    kind: str
    api: str
    tags: dict = field(default_factory=dict)  # every tag of the sample (a scenario's own ones too)


@dataclass
class Run:
    t0: float  # unix seconds of the start of the load
    duration: float  # seconds of load
    queries: list[Query]
    dropped: list[float]  # times of iterations k6 could not start (no free VU)
    bytes_total: float
    messages_total: float
    k6: dict  # the k6 summary JSON (with "quiver": {scenario, phases})
    samples: list[dict]  # sampler rows, "t" rebased to seconds from t0
    phases: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # {"at_s", "label"}: what the runner did


def load_run(out: Path, samples: list[dict]) -> Run:
    k6 = json.loads((out / "k6-summary.json").read_text()) if (out / "k6-summary.json").exists() else {}
    setup = k6.get("setup_data") or {}
    rows = []
    path = out / "k6-samples.csv.gz"
    if path.exists():
        with gzip.open(path, "rt", newline="") as f:
            for r in csv.DictReader(f):
                if r["metric_name"] in WANTED:
                    rows.append(r)
    t0 = setup.get("t0")
    if t0 is None:
        t0 = min((float(r["timestamp"]) for r in rows), default=0.0)
    t0 = float(t0) / 1000.0
    queries, dropped = [], []
    nbytes = nmsgs = 0.0
    for r in rows:
        t = float(r["timestamp"]) / 1000.0 - t0
        name = r["metric_name"]
        if name == "query_duration":
            tags = dict(parse_qsl(r.get("extra_tags") or ""))
            queries.append(
                Query(
                    t=t,
                    ms=float(r["metric_value"]),
                    scenario=r.get("scenario") or "",
                    tenant=tags.get("tenant", "default"),
                    outcome=tags.get("outcome", "?"),
                    kind=tags.get("kind", "query"),
                    api=tags.get("api", "?"),
                    tags=tags,
                )
            )
        elif name == "dropped_iterations":
            dropped.append(t)
        elif name == "flight_bytes":
            nbytes += float(r["metric_value"])
        elif name == "flight_messages":
            nmsgs += float(r["metric_value"])
    duration = (k6.get("state") or {}).get("testRunDurationMs", 0) / 1000.0
    duration = max(duration, max((q.t for q in queries), default=0.0))
    for s in samples:
        s["t"] = s["t"] - t0
    phases = (k6.get("quiver") or {}).get("phases") or []
    return Run(t0, duration, queries, dropped, nbytes, nmsgs, k6, samples, phases)


def pct(values, p) -> float | None:
    return float(np.percentile(values, p)) if len(values) else None


def stats(qs: list[Query], seconds: float | None = None) -> dict:
    ms = [q.ms for q in qs]
    out = {"count": len(qs)}
    if seconds:
        out["per_second"] = round(len(qs) / seconds, 2)
    if ms:
        out.update(
            p50_ms=round(pct(ms, 50), 1),
            p95_ms=round(pct(ms, 95), 1),
            p99_ms=round(pct(ms, 99), 1),
            max_ms=round(max(ms), 1),
        )
    return out


def in_phase(q: Query, phase: dict) -> bool:
    return phase["start"] <= q.t < phase["end"]


def breakdown(run: Run) -> list[dict]:
    """Rows of (phase, tenant, outcome) with count, rate and latency percentiles."""
    rows = []
    phases = run.phases or [{"name": "all", "start": 0, "end": run.duration + 1}]
    for ph in phases:
        groups = defaultdict(list)
        for q in run.queries:
            if in_phase(q, ph):
                groups[(q.tenant, q.outcome)].append(q)
        length = max(1e-9, min(ph["end"], run.duration) - ph["start"])
        for (tenant, outcome), qs in sorted(groups.items()):
            rows.append({"phase": ph["name"], "tenant": tenant, "outcome": outcome, **stats(qs, length)})
    return rows


def totals(run: Run) -> dict:
    by_outcome = defaultdict(int)
    by_tenant = defaultdict(lambda: defaultdict(int))
    for q in run.queries:
        by_outcome[q.outcome] += 1
        by_tenant[q.tenant][q.outcome] += 1
    ok = [q for q in run.queries if q.outcome == "ok"]
    return {
        "queries": len(run.queries),
        "per_second": round(len(run.queries) / run.duration, 2) if run.duration else None,
        "by_outcome": dict(by_outcome),
        "by_tenant": {t: dict(v) for t, v in by_tenant.items()},
        "ok_latency": stats(ok),
        "dropped_iterations": len(run.dropped),
        "flight_messages": int(run.messages_total),
        "flight_bytes": int(run.bytes_total),
    }


def series(run: Run, key: str) -> tuple[list[float], list[float]]:
    """(t, value) of one sampler value: a metric key, or pools:<pool>:<field>, or rss:<field>."""
    ts, vs = [], []
    for s in run.samples:
        v = None
        if key.startswith("pools:"):
            _, pool, fld = key.split(":", 2)
            for p in s.get("pools") or []:
                if p.get("pool") == pool and isinstance(p.get(fld), (int, float)):
                    v = p[fld]
        elif key.startswith("rss:"):
            v = (s.get("rss") or {}).get(key[4:])
        elif key.startswith("cpu:"):
            v = (s.get("cpu") or {}).get(key[4:])
        else:
            v = (s.get("metrics") or {}).get(key)
        if v is not None:
            ts.append(s["t"])
            vs.append(float(v))
    return ts, vs


def pool_names(run: Run) -> list[str]:
    names = []
    for s in run.samples:
        for p in s.get("pools") or []:
            if p.get("pool") not in names:
                names.append(p.get("pool"))
        for k in (s.get("metrics") or {}):
            if k.startswith("quiver_pool_workers{") and "pool=" in k:
                name = k.split("pool=", 1)[1].split(",")[0].rstrip("}")
                if name not in names:
                    names.append(name)
    return names


def workers_series(run: Run, pool: str, ready: bool = False) -> tuple[list[float], list[float]]:
    fld = "ready" if ready else "workers"
    ts, vs = series(run, f"pools:{pool}:{fld}")
    if not ts:
        name = "quiver_pool_ready_workers" if ready else "quiver_pool_workers"
        ts, vs = series(run, f"{name}{{pool={pool}}}")
    return ts, vs


def metric_keys(run: Run, pred) -> list[str]:
    keys = []
    for s in run.samples:
        for k in (s.get("metrics") or {}):
            if k not in keys and pred(k):
                keys.append(k)
    return keys


def cpu_cores(run: Run, key: str) -> tuple[list[float], list[float]]:
    """CPU cores in use over time, from a cumulative CPU-seconds series (rss:cpu_… or cpu:…)."""
    ts, vs = series(run, key)
    out_t, out_v = [], []
    for (t0, v0), (t1, v1) in zip(zip(ts, vs), zip(ts[1:], vs[1:])):
        if t1 > t0 and v1 >= v0:
            out_t.append(t1)
            out_v.append((v1 - v0) / (t1 - t0))
    return out_t, out_v


def mean_cores(run: Run, key: str, start: float, end: float) -> float | None:
    ts, vs = cpu_cores(run, key)
    xs = [v for t, v in zip(ts, vs) if start <= t < end]
    return round(sum(xs) / len(xs), 2) if xs else None
