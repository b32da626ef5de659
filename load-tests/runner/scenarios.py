"""What the runner does around each k6 scenario: how it starts Quiver, what the scenario needs,
what it does to Quiver mid-run, and the gates that compare phases (k6 thresholds cannot compare
one phase with another, so these run over the samples afterwards).

The load itself (rates, phases, thresholds) lives in scenarios/<name>.js.
"""

from __future__ import annotations

import re
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
    # Figures of this scenario beyond the common ones: {title: rows (list of dicts) or a dict},
    # written to summary.json under "details" and shown as tables in the report.
    details: Callable[["A.Run", dict], dict] | None = None
    # Marks for the plots ({"at_s", "label"}), e.g. from what quiver up printed.
    events: Callable[["A.Run", dict], list[dict]] | None = None


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


# ---- wake: a pool at zero, then queried ----

SCALE = re.compile(r"^scale: (\d+) -> (\d+) workers \((.*)\)$")
CLAIM = re.compile(r"^worker claimed: pid=(\d+) \S+ in (\d+) ms$")
COLD = re.compile(r"^worker started: pid=(\d+)")


def _timeline(run: A.Run, ctx: dict, pattern: re.Pattern) -> list[tuple[float, re.Match]]:
    """quiver up's lines matching `pattern`, timed in seconds from the start of the load."""
    out = []
    for wall, line in ctx.get("quiver_timeline") or []:
        if m := pattern.match(line):
            out.append((wall - run.t0, m))
    return out


def _pool_workers(s: dict) -> int | None:
    """Workers of every pool in one sampler row (None when the row has no /v1/pools)."""
    pools = s.get("pools")
    if pools is None:
        return None
    return int(sum(p.get("workers", 0) for p in pools))


def _wake_cycles(run: A.Run, ctx: dict) -> list[dict]:
    """One row per idle + burst cycle: was the pool at zero, and how long the first query took."""
    rows = []
    claims = _timeline(run, ctx, CLAIM)
    colds = _timeline(run, ctx, COLD)
    n = sum(1 for ph in run.phases if ph["name"].startswith("burst "))
    for i in range(1, n + 1):
        idle, burst = _phase(run, f"idle {i}"), _phase(run, f"burst {i}")
        if not idle or not burst:
            continue
        nxt = _phase(run, f"idle {i + 1}")
        until = nxt["end"] if nxt else run.duration + 5  # a burst's queries may end after it
        row: dict = {"cycle": i}
        # The pool in the sampler's rows during the idle phase: when it reached zero, and its
        # size at the last row before the burst (nothing but a query can wake it in between).
        rows_idle = [(s["t"], _pool_workers(s)) for s in run.samples
                     if idle["start"] <= s["t"] < idle["end"] and _pool_workers(s) is not None]
        zero_at = next((t for t, w in rows_idle if w == 0), None)
        row["workers at burst start"] = rows_idle[-1][1] if rows_idle else None
        if zero_at is not None:
            before = [q.t for q in run.queries if q.t < zero_at]
            since = max(before) if before else idle["start"]
            row["s from last query to zero"] = round(zero_at - since, 1)
        else:
            row["s from last query to zero"] = None
        first = [q for q in run.queries if q.tags.get("wake") == "first" and q.tags.get("cycle") == str(i)]
        rest = [q for q in run.queries if q.tags.get("wake") == "burst" and q.tags.get("cycle") == str(i)
                and q.outcome == "ok"]
        if first:
            q = first[0]
            row.update({"first query ms": round(q.ms, 1), "outcome": q.outcome, "kind": q.kind, "api": q.api})
        else:
            row.update({"first query ms": None, "outcome": "missing"})
        row["rest of burst p50 ms"] = round(A.pct([q.ms for q in rest], 50), 1) if rest else None
        if ctx.get("started_quiver"):
            # What brought the worker back: a standby claimed, or a cold start.
            mine = [(t, m) for t, m in claims if burst["start"] - 0.5 <= t < until]
            row["claims"] = len(mine)
            row["claim ms"] = int(mine[0][1].group(2)) if mine else None
            row["cold starts"] = sum(1 for t, _ in colds if burst["start"] - 0.5 <= t < until)
        rows.append(row)
    return rows


def wake_gates(run: A.Run, ctx: dict) -> list[dict]:
    cycles = _wake_cycles(run, ctx)
    if not cycles:
        return [gate("idle and burst phases present", False, None, None, "k6 summary has no phases")]
    out = []
    if not A.pool_names(run):
        out.append(gate("pool at zero workers when each burst began", None, None, None,
                        "not checked: no /v1/pools samples (no admin URL)"))
    else:
        at_zero = [c for c in cycles if c["workers at burst start"] == 0]
        out.append(gate(
            "pool at zero workers when each burst began",
            len(at_zero) == len(cycles),
            f"{len(at_zero)} of {len(cycles)}",
            "all",
            "workers at the last sample of each idle phase: "
            + ", ".join(str(c["workers at burst start"]) for c in cycles)
            + "; zero reached "
            + ", ".join("never" if c["s from last query to zero"] is None else f"{c['s from last query to zero']:g} s"
                        for c in cycles)
            + " after the last query",
        ))
    if ctx.get("started_quiver"):
        claimed = [c for c in cycles if c.get("claims")]
        out.append(gate(
            "each wake-up claimed a standby worker",
            len(claimed) == len(cycles),
            f"{len(claimed)} of {len(cycles)}",
            "all",
            "claims in ms: " + ", ".join(str(c.get("claim ms") or "-") for c in cycles)
            + f"; cold starts during the bursts: {sum(c.get('cold starts') or 0 for c in cycles)}",
        ))
    else:
        out.append(gate("each wake-up claimed a standby worker", None, None, None,
                        "not checked: the runner did not start quiver up (--endpoint)"))
    return out


def wake_details(run: A.Run, ctx: dict) -> dict:
    cycles = _wake_cycles(run, ctx)
    ms = [c["first query ms"] for c in cycles if c.get("first query ms") is not None]
    return {
        "wake-ups": cycles,
        "first query after idle (ms)": {
            "wake-ups": len(ms),
            "p50": round(A.pct(ms, 50), 1) if ms else None,
            "min": min(ms, default=None),
            "max": max(ms, default=None),
            "each": ", ".join(f"{v:g}" for v in ms) or "-",
        },
    }


def wake_events(run: A.Run, ctx: dict) -> list[dict]:
    """Scale-to-zero decisions, claims and cold starts (a wake-up's decision and its claim come
    within milliseconds of each other, so the decision is not marked separately)."""
    out = [{"at_s": round(t, 2), "label": "to zero"}
           for t, m in _timeline(run, ctx, SCALE) if m.group(2) == "0"]
    out += [{"at_s": round(t, 2), "label": f"claim {m.group(2)} ms"} for t, m in _timeline(run, ctx, CLAIM)]
    out += [{"at_s": round(t, 2), "label": "cold start"} for t, _ in _timeline(run, ctx, COLD)]
    return sorted((e for e in out if e["at_s"] >= -1), key=lambda e: e["at_s"])


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
        Spec(
            "wake",
            "A pool at zero, then queried, three times over: 10 s without a query (the pool "
            "scales to zero after 3 s), then 5 s of queries at 5/s. The first query of each "
            "burst is held at the gateway while the pool claims its standby worker; its latency "
            "is the wake-up's cost. No query fails or is rejected, every wake-up takes under 5 s, "
            "and the pool really was at zero workers before each burst.",
            autoscale=["--min-workers", "0", "--max-workers", "2", "--warm-workers", "0",
                       "--standby-workers", "1", "--scale-to-zero-after", "3s"],
            requires=["--min-workers", "--standby-workers", "--scale-to-zero-after"],
            gates=wake_gates,
            details=wake_details,
            events=wake_events,
        ),
    ]
}
