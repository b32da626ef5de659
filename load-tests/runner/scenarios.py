"""What the runner does around each k6 scenario: how it starts Quiver, what the scenario needs,
what it does to Quiver mid-run, and the gates that compare phases (k6 thresholds cannot compare
one phase with another, so these run over the samples afterwards).

The load itself (rates, phases, thresholds) lives in scenarios/<name>.js.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import analysis as A

HERE = Path(__file__).resolve().parent.parent  # load-tests/


@dataclass
class Spec:
    name: str
    about: str  # what the report should show, one paragraph
    scale_factor: float = 0.1
    workers: int = 2
    # `quiver up` autoscaling arguments (--min-workers and the rest).
    autoscale: list[str] = field(default_factory=list)
    # Flags the scenario cannot run without; missing → skipped with a message.
    requires: list[str] = field(default_factory=list)
    config: Path | None = None  # admission config passed with --config
    up_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Seconds into the load at which the runner stops one worker with SIGTERM when Quiver
    # cannot scale down by itself (no autoscaling flags); the supervisor replaces it.
    stop_workers_at: list[float] = field(default_factory=list)
    gates: Callable[["A.Run", dict], list[dict]] | None = None


def gate(name: str, ok: bool | None, actual, limit, note: str = "") -> dict:
    """One gate; ok=None means it could not be checked on this run (shown as SKIP, not failed)."""
    return {"gate": name, "ok": None if ok is None else bool(ok), "actual": actual, "limit": limit, "note": note}


def _phase(run: A.Run, name: str) -> dict | None:
    return next((p for p in run.phases if p["name"] == name), None)


def _p99(qs) -> float | None:
    return A.pct([q.ms for q in qs], 99)


def noisy_gates(run: A.Run, ctx: dict) -> list[dict]:
    alone, beside = _phase(run, "quiet alone"), _phase(run, "noisy beside quiet")
    if not alone or not beside:
        return [gate("phases present", False, None, None, "k6 summary has no phases")]
    quiet = [q for q in run.queries if q.tenant == "quiet" and q.outcome == "ok"]
    p_alone = _p99([q for q in quiet if A.in_phase(q, alone)])
    p_beside = _p99([q for q in quiet if A.in_phase(q, beside)])
    ratio_limit = float(ctx["env"].get("QUIET_P99_RATIO", "1.2"))
    out = []
    if p_alone and p_beside:
        ratio = p_beside / p_alone
        out.append(
            gate(
                "quiet p99 beside noisy / quiet p99 alone",
                ratio <= ratio_limit,
                round(ratio, 3),
                f"<= {ratio_limit}",
                f"{p_beside:.1f} ms vs {p_alone:.1f} ms",
            )
        )
    else:
        out.append(gate("quiet p99 measured in both phases", False, None, None))
    # The noisy tenant's admitted rate stays at its quota (noisy-cap: 20 qps, burst 5).
    quota = float(ctx["env"].get("NOISY_QUOTA_QPS", "20"))
    burst = float(ctx["env"].get("NOISY_BURST", "5"))
    length = min(beside["end"], run.duration) - beside["start"]
    admitted = [
        q for q in run.queries if q.tenant == "noisy" and q.outcome == "ok" and A.in_phase(q, beside)
    ]
    limit = quota * 1.05 + burst / max(length, 1)
    rate = len(admitted) / max(length, 1)
    out.append(
        gate(
            "noisy admitted queries per second",
            rate <= limit,
            round(rate, 2),
            f"<= {limit:.2f}",
            f"quota {quota:g} qps + 5 %, burst {burst:g}",
        )
    )
    return out


def _reaction(run: A.Run, phase: dict | None) -> tuple[float | None, int | None, int | None]:
    """Seconds from the start of `phase` until a pool has more ready workers than at its start."""
    if not phase:
        return None, None, None
    for pool in A.pool_names(run):
        ts, vs = A.workers_series(run, pool, ready=True)
        before = [v for t, v in zip(ts, vs) if t <= phase["start"]]
        if not before:
            continue
        base = before[-1]
        for t, v in zip(ts, vs):
            if t > phase["start"] and v > base:
                return round(t - phase["start"], 2), int(base), int(max(vs))
        return None, int(base), int(max(vs))
    return None, None, None


def scale_up_gates(phase_name: str, env_key: str, default: float):
    def gates(run: A.Run, ctx: dict) -> list[dict]:
        if not ctx["autoscale"]:
            return [
                gate(
                    f"ready workers rise after '{phase_name}'",
                    None,
                    None,
                    None,
                    "not checked: this quiver has no autoscaling flags (--min-workers …); the pool was fixed",
                )
            ]
        limit = float(ctx["env"].get(env_key, str(default)))
        secs, base, peak = _reaction(run, _phase(run, phase_name))
        return [
            gate(
                f"seconds from '{phase_name}' to a new ready worker",
                secs is not None and secs <= limit,
                secs,
                f"<= {limit:g}",
                f"ready workers {base} before, {peak} at most",
            )
        ]

    return gates


def drain_gates(run: A.Run, ctx: dict) -> list[dict]:
    longs = [q for q in run.queries if q.kind == "long"]
    failed = [q for q in longs if q.outcome not in ("ok", "rejected")]
    out = [
        gate(
            "long queries failed while workers drained",
            len(failed) == 0 and len(longs) > 0,
            len(failed),
            "== 0",
            f"{len(longs)} long queries",
        )
    ]
    stopped = ctx.get("stopped_workers", [])
    if ctx["autoscale"]:
        drops = 0
        for pool in A.pool_names(run):
            _, vs = A.workers_series(run, pool)
            drops += sum(1 for a, b in zip(vs, vs[1:]) if b < a)
        out.append(gate("pool scaled down during the run", drops > 0, drops, "> 0"))
    elif ctx["started_quiver"]:
        out.append(
            gate(
                "workers stopped with SIGTERM while queries ran",
                len(stopped) > 0,
                len(stopped),
                "> 0",
                "no autoscaling flags: the runner stopped workers itself (the supervisor should replace them)",
            )
        )
        drain_s = float(ctx["env"].get("DRAIN_TIMEOUT_S", "30"))
        lingering = [st for st in stopped if not st.get("exited") and run.duration - st["at_s"] > drain_s]
        if stopped:
            out.append(
                gate(
                    "stopped workers exited once drained",
                    not lingering,
                    f"{sum(1 for st in stopped if st.get('exited'))} of {len(stopped)} exited",
                    "all (those stopped more than the drain timeout before the end)",
                    "still running: " + ", ".join(str(st["pid"]) for st in stopped if not st.get("exited"))
                    if any(not st.get("exited") for st in stopped) else "",
                )
            )
    return out


def soak_gates(run: A.Run, ctx: dict) -> list[dict]:
    out = []
    ok = [q for q in run.queries if q.outcome == "ok"]
    window = min(300.0, run.duration / 4)
    first = [q for q in ok if 30 <= q.t < 30 + window] or [q for q in ok if q.t < window]
    last = [q for q in ok if q.t >= run.duration - window]
    limit = float(ctx["env"].get("SOAK_P99_DRIFT", "1.5"))
    if first and last:
        r = _p99(last) / _p99(first)
        out.append(gate("p99 last window / first window", r <= limit, round(r, 3), f"<= {limit}"))
    ts, vs = A.series(run, "rss:gateway")
    if len(vs) > 4:
        early = [v for t, v in zip(ts, vs) if 30 <= t < 30 + window] or vs[: len(vs) // 4]
        late = [v for t, v in zip(ts, vs) if t >= run.duration - window] or vs[-(len(vs) // 4):]
        growth = (sum(late) / len(late)) / (sum(early) / len(early))
        glimit = float(ctx["env"].get("SOAK_RSS_GROWTH", "1.5"))
        out.append(
            gate("gateway RSS last window / first window", growth <= glimit, round(growth, 3), f"<= {glimit}")
        )
    return out


AUTOSCALE = ["--min-workers", "1", "--max-workers", "4", "--warm-workers", "1", "--target-concurrency", "2"]

SPECS: dict[str, Spec] = {
    s.name: s
    for s in [
        Spec(
            "smoke",
            "A short dashboard mix at 5 queries/s over both APIs (plain DoGet and Flight SQL). "
            "Every query succeeds; it is what CI runs.",
            scale_factor=0.01,
        ),
        Spec(
            "steady",
            "A dashboard's steady traffic, point lookups and small aggregations over TPC-H at a "
            "constant arrival rate: latency stays flat, nothing is rejected or fails.",
        ),
        Spec(
            "step",
            "Arrival rate steps from 5 to 40 queries/s and back. With autoscaling the pool's "
            "ready workers rise within seconds of the step and fall after it; latency recovers.",
            autoscale=AUTOSCALE,
            gates=scale_up_gates("step up", "STEP_REACTION_S", 2.0),
        ),
        Spec(
            "spike",
            "A ten-second spike from 5 to 80 queries/s. Warm spares absorb the start of the "
            "spike, the pool scales up during it and back down afterwards; no query fails.",
            autoscale=AUTOSCALE,
            gates=scale_up_gates("spike", "SPIKE_REACTION_S", 2.0),
        ),
        Spec(
            "noisy-neighbour",
            "Two tenants: quiet at 10 queries/s throughout, noisy at 200 queries/s (10x its "
            "20 qps quota) in the middle phase. The noisy tenant is held to its quota and told "
            "why (RESOURCE_EXHAUSTED); the quiet tenant is never rejected and its p99 stays "
            "within 1.2x of its p99 alone.",
            requires=["--config"],
            config=HERE / "config" / "admission.yaml",
            gates=noisy_gates,
        ),
        Spec(
            "drain",
            "Long queries (and a trickle of dashboard queries) while the pool shrinks: scaled "
            "down by the autoscaler when load falls, or, without autoscaling, workers stopped "
            "with SIGTERM by the runner. Draining workers finish their queries: none fails.",
            workers=3,
            autoscale=["--min-workers", "1", "--max-workers", "4", "--warm-workers", "0",
                       "--target-concurrency", "1"],
            stop_workers_at=[12.0, 24.0],
            gates=drain_gates,
        ),
        Spec(
            "soak",
            "The steady mix for a long time (SOAK_SECONDS, default 30 minutes): latency does "
            "not drift and the gateway's memory does not grow.",
            gates=soak_gates,
        ),
    ]
}
