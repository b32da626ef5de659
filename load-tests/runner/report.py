"""report.html: one self-contained page per run (plots are inline base64 PNGs).

Sections: verdict and what the scenario shows, k6 thresholds and derived gates, figures by
phase/tenant/outcome, then plots over time: latency percentiles, throughput by outcome, by
tenant, pool replicas and queue depth, admission rejections, memory.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import analysis as A  # noqa: E402

OUTCOME_COLOURS = {
    "ok": "#2e7d32",
    "rejected": "#f9a825",
    "unavailable": "#c62828",
    "timeout": "#6a1b9a",
    "cancelled": "#8d6e63",
    "internal": "#b71c1c",
    "invalid": "#1565c0",
    "unauthenticated": "#37474f",
    "denied": "#455a64",
    "held_back": "#ff6f00",
    "connect_error": "#000000",
    "error": "#d81b60",
}


def _bin(run: A.Run) -> float:
    return max(1.0, round(run.duration / 240.0))


def _phases(ax, run: A.Run) -> None:
    for i, ph in enumerate(run.phases):
        if len(run.phases) > 1:
            ax.axvspan(ph["start"], ph["end"], color="#000000", alpha=0.03 if i % 2 else 0.0)
            ax.axvline(ph["start"], color="#888888", lw=0.8, ls=":")
            ax.text(ph["start"], 1.0, " " + ph["name"], transform=ax.get_xaxis_transform(),
                    va="top", ha="left", fontsize=8, color="#555555")


def _events(ax, run: A.Run) -> None:
    for ev in run.events:
        ax.axvline(ev["at_s"], color="#c62828", lw=1, ls="--")
        ax.text(ev["at_s"], 0.5, " " + ev["label"], transform=ax.get_xaxis_transform(), rotation=90,
                va="center", ha="right", fontsize=8, color="#c62828")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fig(title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(11, 3.6))
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_xlabel("seconds since the start of the load")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def latency_plot(run: A.Run) -> str | None:
    ok = [q for q in run.queries if q.outcome == "ok"]
    if not ok:
        return None
    b = _bin(run)
    # One set of lines per tenant when there are several, else long vs short queries when the
    # scenario mixes them (a long query's seconds would hide the short ones' milliseconds).
    if len({q.tenant for q in ok}) > 1:
        key = lambda q: q.tenant  # noqa: E731
    elif any(q.kind == "long" for q in ok):
        key = lambda q: "long" if q.kind == "long" else "short"  # noqa: E731
    else:
        key = lambda q: ""  # noqa: E731
    groups = sorted({key(q) for q in ok})
    fig, ax = _fig(f"Latency of successful queries ({b:g} s bins)", "ms")
    styles = {50: ":", 95: "--", 99: "-"}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(groups):
        bins = defaultdict(list)
        for q in ok:
            if key(q) == g:
                bins[int(q.t // b)].append(q.ms)
        # Every bin from the first to the last, empty ones as gaps: a line must not bridge a
        # stretch without queries (the wake scenario's idle phases).
        xs = list(range(min(bins), max(bins) + 1))
        for p, ls in styles.items():
            ys = [np.percentile(bins[x], p) if x in bins else np.nan for x in xs]
            label = f"{g} p{p}".strip()
            ax.plot([x * b + b / 2 for x in xs], ys, ls=ls, color=palette[i % len(palette)], label=label)
    # Queries a scenario singled out (wake: the first query of each burst, at a pool at zero).
    firsts = [q for q in ok if q.tags.get("wake") == "first"]
    if firsts:
        ax.scatter([q.t for q in firsts], [q.ms for q in firsts], marker="o", s=36, color="#c62828",
                   zorder=5, label="first query after idle")
    all_ms = [q.ms for q in ok]
    if max(all_ms) > 20 * max(1.0, float(np.median(all_ms))):
        ax.set_yscale("log")
    _phases(ax, run)
    _events(ax, run)
    ax.legend(fontsize=8, ncol=3, loc="upper right")
    return _png(fig)


def throughput_plot(run: A.Run) -> str | None:
    if not run.queries:
        return None
    b = _bin(run)
    n = int(run.duration // b) + 1
    outcomes = sorted({q.outcome for q in run.queries}, key=lambda o: (o != "ok", o))
    fig, ax = _fig(f"Throughput by outcome (queries/s, {b:g} s bins)", "queries/s")
    xs = np.arange(n) * b + b / 2
    stack = []
    for o in outcomes:
        counts = np.zeros(n)
        for q in run.queries:
            if q.outcome == o:
                counts[min(n - 1, int(q.t // b))] += 1
        stack.append(counts / b)
    ax.stackplot(xs, *stack, labels=outcomes, colors=[OUTCOME_COLOURS.get(o, "#999999") for o in outcomes], alpha=0.85)
    if run.dropped:
        d = np.zeros(n)
        for t in run.dropped:
            d[min(n - 1, max(0, int(t // b)))] += 1
        ax.plot(xs, d / b, color="black", ls="--", lw=1, label="dropped (no free VU)")
    _phases(ax, run)
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def tenant_plot(run: A.Run) -> str | None:
    tenants = sorted({q.tenant for q in run.queries})
    if len(tenants) < 2:
        return None
    b = _bin(run)
    n = int(run.duration // b) + 1
    xs = np.arange(n) * b + b / 2
    fig, ax = _fig(f"Throughput by tenant and outcome (queries/s, {b:g} s bins)", "queries/s")
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, tenant in enumerate(tenants):
        for o, ls in (("ok", "-"), ("rejected", "--")):
            counts = np.zeros(n)
            for q in run.queries:
                if q.tenant == tenant and q.outcome == o:
                    counts[min(n - 1, int(q.t // b))] += 1
            if counts.any():
                ax.plot(xs, counts / b, ls=ls, color=palette[i % len(palette)], label=f"{tenant} {o}")
    _phases(ax, run)
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def pool_plot(run: A.Run) -> str | None:
    pools = A.pool_names(run)
    if not pools:
        return None
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 5.6), sharex=True)
    ax.set_title("Pool replicas (workers / ready)", loc="left", fontsize=11)
    ax2.set_title("Demand: in flight and queued", loc="left", fontsize=11)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, pool in enumerate(pools):
        c = palette[i % len(palette)]
        ts, vs = A.workers_series(run, pool)
        ax.step(ts, vs, where="post", color=c, label=f"{pool} workers")
        ts, vs = A.workers_series(run, pool, ready=True)
        ax.step(ts, vs, where="post", color=c, ls="--", label=f"{pool} ready")
        ts, vs = A.series(run, f"pools:{pool}:in_flight")
        if not ts:
            ts, vs = A.series(run, f"quiver_pool_in_flight{{pool={pool}}}")
        ax2.plot(ts, vs, color=c, label=f"{pool} in flight")
        ts, vs = A.series(run, f"pools:{pool}:queued")
        if ts:
            ax2.plot(ts, vs, color=c, ls="--", label=f"{pool} queued")
    # Queue depth per resource group, if the gateway exports it.
    for key in A.metric_keys(run, lambda k: k.startswith("quiver_admission_") and ("queued" in k or "running" in k)
                             and "_total" not in k and "_sum" not in k and "_count" not in k):
        ts, vs = A.series(run, key)
        if any(vs):
            ax2.plot(ts, vs, ls=":" if "queued" in key else "-.", label=key.replace("quiver_admission_", "group "))
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc="upper right")
        _phases(a, run)
        _events(a, run)
    ax.set_ylabel("workers")
    ax.set_ylim(bottom=0)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax2.set_ylabel("queries")
    ax2.set_xlabel("seconds since the start of the load")
    return _png(fig)


def rejection_plot(run: A.Run) -> str | None:
    keys = A.metric_keys(run, lambda k: k.startswith("quiver_") and "reject" in k and "_total" in k)
    if not keys:
        return None
    fig, ax = _fig("Rejections reported by the gateway (per second, from its counters)", "rejections/s")
    drew = False
    for key in keys:
        ts, vs = A.series(run, key)
        if len(ts) < 2 or vs[-1] == vs[0]:
            continue
        rate = [(b - a) / max(1e-6, tb - ta) for a, b, ta, tb in zip(vs, vs[1:], ts, ts[1:])]
        ax.plot(ts[1:], rate, label=key.replace("quiver_", ""))
        drew = True
    if not drew:
        plt.close(fig)
        return None
    _phases(ax, run)
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def cpu_plot(run: A.Run) -> str | None:
    lines = [("machine (all processes)", "cpu:machine_busy"), ("gateway + supervisor", "rss:cpu_gateway"),
             ("workers", "rss:cpu_workers"), ("k6 (load generator)", "cpu:k6")]
    drawn = [(label, A.cpu_cores(run, key)) for label, key in lines]
    drawn = [(label, tv) for label, tv in drawn if tv[0]]
    if not drawn:
        return None
    fig, ax = _fig(f"CPU in use (cores; this machine has {os.cpu_count()})", "cores")
    for label, (ts, vs) in drawn:
        ax.plot(ts, vs, label=label, lw=1)
    ax.axhline(os.cpu_count() or 0, color="#c62828", lw=0.8, ls="--")
    ax.set_ylim(bottom=0)
    _phases(ax, run)
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def memory_plot(run: A.Run) -> str | None:
    ts, gw = A.series(run, "rss:gateway")
    if not ts:
        return None
    fig, ax = _fig("Resident memory", "MiB")
    ax.plot(ts, [v / 2**20 for v in gw], label="gateway + supervisor")
    ts2, wk = A.series(run, "rss:workers")
    if ts2:
        ax.plot(ts2, [v / 2**20 for v in wk], label="all workers")
    _phases(ax, run)
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1150px;color:#222}
h1{margin-bottom:.2em} .v{display:inline-block;padding:.2em .7em;border-radius:4px;color:#fff;font-weight:600}
.pass{background:#2e7d32}.fail{background:#c62828}.skip{background:#757575}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:14px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600} .note{color:#555}
img{max-width:100%;border:1px solid #eee;margin:.4em 0 1em} code{background:#f4f4f4;padding:0 .3em}
"""


def _table(rows: list[dict], cols: list[str]) -> str:
    if not rows:
        return "<p class=note>none</p>"
    h = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if c in ("ok", "passed"):
                if v is None:
                    cells.append("<td class=note>SKIP</td>")
                else:
                    cells.append(f"<td class={'ok' if v else 'bad'}>{'PASS' if v else 'FAIL'}</td>")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                cells.append(f"<td class=num>{v:g}</td>")
            else:
                cells.append(f"<td>{html.escape(str(v if v is not None else '-'))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


def render(summary: dict, run: A.Run | None) -> str:
    status = summary["status"]
    cls = {"passed": "pass", "failed": "fail"}.get(status, "skip")
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>Quiver load test: {html.escape(summary['scenario'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Quiver load test: {html.escape(summary['scenario'])} <span class='v {cls}'>{status.upper()}</span></h1>",
        f"<p>{html.escape(summary['about'])}</p>",
    ]
    if summary.get("skipped"):
        parts.append(f"<p class=bad>Skipped: {html.escape(summary['skipped'])}</p>")
    info = summary.get("run", {})
    parts.append("<h2>Run</h2>" + _table([{"what": k, "value": v} for k, v in info.items()], ["what", "value"]))
    if summary.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in summary["notes"]) + "</ul>")
    if run is not None:
        parts.append("<h2>k6 thresholds</h2>" + _table(summary["thresholds"], ["metric", "threshold", "actual", "ok"]))
        parts.append("<h2>Gates across phases</h2>" + _table(summary["gates"], ["gate", "actual", "limit", "ok", "note"]))
        t = summary["figures"]
        parts.append(
            "<h2>Figures</h2>"
            + _table(
                [
                    {"what": "queries", "value": t["queries"]},
                    {"what": "queries/s", "value": t["per_second"]},
                    {"what": "by outcome", "value": ", ".join(f"{k}: {v}" for k, v in sorted(t["by_outcome"].items()))},
                    {"what": "ok p50 / p95 / p99 / max (ms)", "value": " / ".join(
                        str(t["ok_latency"].get(k, "-")) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))},
                    {"what": "iterations dropped (no free VU)", "value": t["dropped_iterations"]},
                    {"what": "FlightData messages / bytes", "value": f"{t['flight_messages']} / {t['flight_bytes']}"},
                ],
                ["what", "value"],
            )
        )
        for title, rows in (summary.get("details") or {}).items():
            if isinstance(rows, dict):
                rows = [{"what": k, "value": v} for k, v in rows.items()]
            cols = list(dict.fromkeys(k for r in rows for k in r))
            parts.append(f"<h3>{html.escape(title[:1].upper() + title[1:])}</h3>" + _table(rows, cols))
        parts.append(
            "<h3>By phase, tenant and outcome</h3>"
            + _table(summary["breakdown"], ["phase", "tenant", "outcome", "count", "per_second", "p50_ms", "p95_ms", "p99_ms", "max_ms"])
        )
        plots = [
            ("Latency percentiles over time", latency_plot(run)),
            ("Throughput by outcome", throughput_plot(run)),
            ("Throughput by tenant", tenant_plot(run)),
            ("Replicas and queue depth", pool_plot(run)),
            ("Rejections by policy", rejection_plot(run)),
            ("CPU", cpu_plot(run)),
            ("Memory", memory_plot(run)),
        ]
        parts.append("<h2>Over time</h2>")
        for title, png in plots:
            if png:
                parts.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
        if not A.pool_names(run):
            parts.append("<p class=note>No pool figures: the gateway's admin endpoint was not available "
                         "(pass <code>--admin URL</code> with <code>--endpoint</code>).</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
