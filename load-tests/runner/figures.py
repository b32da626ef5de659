"""Prints the README's figures table from the summary.json of each scenario's last run.

    .venv/bin/python load-tests/runner/figures.py [OUT_DIR]     (default load-tests/out)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["smoke", "steady", "step", "spike", "noisy-neighbour", "drain", "soak", "wake"]


def row(d: dict) -> str:
    f = d.get("figures") or {}
    lat = f.get("ok_latency") or {}
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted((f.get("by_outcome") or {}).items()))
    gates = [g for g in d.get("gates") or [] if g.get("ok") is not None]
    failed = [t["metric"] + " " + t["threshold"] for t in d.get("thresholds") or [] if not t["ok"]]
    failed += [g["gate"] for g in gates if not g["ok"]]
    pools = d.get("pools") or {}
    workers = ", ".join(
        f"{int(p['workers_min'])}–{int(p['workers_max'])}" if p.get("workers_min") is not None else "?"
        for p in pools.values()
    ) or "-"
    return (
        f"| {d['scenario']} | {d['status'].upper()} | {d['run'].get('load seconds', '-')} | "
        f"{f.get('queries', '-')} ({f.get('per_second', '-')}/s) | {outcomes or '-'} | "
        f"{lat.get('p50_ms', '-')} / {lat.get('p95_ms', '-')} / {lat.get('p99_ms', '-')} | {workers} | "
        f"{'; '.join(failed) or '-'} |"
    )


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "out"
    print("| scenario | result | load s | queries | by outcome | ok p50 / p95 / p99 ms | workers | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ORDER:
        p = out / name / "summary.json"
        if p.exists():
            print(row(json.loads(p.read_text())))


if __name__ == "__main__":
    main()
