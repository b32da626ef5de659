#!/usr/bin/env python3
"""Quiver against DuckDB on the same Parquet files and the same queries, in one run.

Starts `quiver up` (the default deployment: a gateway and two workers) on a TPC-H data
directory, then runs every query of `quiver bench --print-queries` alternately through the
gateway (pyarrow.flight, a thin C++ client: the SQL travels as the command) and in DuckDB in this
process over views of the same files, fetching Arrow tables on both sides. Prints p50 and p99
per query and the ratio Quiver / DuckDB; `--json` writes them too.

    .venv/bin/python tests/bench/vs_duckdb.py --quiver target/release/quiver

DuckDB comes from PyPI (tests/e2e/requirements.txt). The figures in docs/performance.md come
from this script and `quiver bench`, run on the same machine in the same session.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.flight as flight

ROOT = Path(__file__).resolve().parents[2]
READY_LINE = re.compile(r"^quiver ready: (grpc://\S+)$")
TABLES = ["region", "nation", "supplier", "part", "partsupp", "customer", "orders", "lineitem"]


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile, as `quiver bench` computes it."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


def start_quiver(binary: str, data_dir: Path, scale_factor: float, workers: int):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    env["RUST_LOG"] = "warn"
    proc = subprocess.Popen(
        [binary, "up", "--listen", "127.0.0.1:0", "--workers", str(workers),
         "--scale-factor", str(scale_factor), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
    )
    for line in proc.stdout:
        match = READY_LINE.match(line.strip())
        if match:
            return proc, match.group(1)
    proc.wait()
    sys.exit(f"quiver up exited with {proc.returncode} before it was ready")


def quiver_query(client: flight.FlightClient, sql: str):
    info = client.get_flight_info(flight.FlightDescriptor.for_command(sql.encode()))
    tables = [client.do_get(e.ticket).read_all() for e in info.endpoints]
    return sum(t.num_rows for t in tables)


def duckdb_connection(data_dir: Path, threads: int | None):
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {threads}")
    for table in TABLES:
        path = (data_dir / f"{table}.parquet").as_posix().replace("'", "''")
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}')")
    return con


def duckdb_query(con, sql: str):
    # DuckDB's relational API hands Arrow over without the copy its DB-API result makes
    # (`to_arrow_table` in DuckDB 1.4 and later, `arrow` before).
    relation = con.sql(sql)
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    return fetch().num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quiver", default=str(ROOT / "target" / "release" / "quiver"))
    parser.add_argument("--scale-factor", type=float, default=0.1)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duckdb-threads", type=int, help="default: DuckDB's own (all cores)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    data_dir = args.data_dir or ROOT / ".quiver" / f"tpch-sf{args.scale_factor:g}"
    queries = json.loads(subprocess.run(
        [args.quiver, "bench", "--print-queries"], check=True, capture_output=True, text=True,
    ).stdout)
    proc, endpoint = start_quiver(args.quiver, data_dir, args.scale_factor, args.workers)
    try:
        client = flight.FlightClient(endpoint)
        con = duckdb_connection(data_dir, args.duckdb_threads)
        results = []
        for q in queries:
            name, sql = q["name"], q["sql"]
            rows = (quiver_query(client, sql), duckdb_query(con, sql))
            if rows[0] != rows[1]:
                sys.exit(f"{name}: Quiver returned {rows[0]} rows, DuckDB {rows[1]}")
            for _ in range(args.warmup):
                quiver_query(client, sql)
                duckdb_query(con, sql)
            times = {"quiver": [], "duckdb": []}
            for _ in range(args.iterations):
                t = time.perf_counter()
                quiver_query(client, sql)
                times["quiver"].append((time.perf_counter() - t) * 1e6)
                t = time.perf_counter()
                duckdb_query(con, sql)
                times["duckdb"].append((time.perf_counter() - t) * 1e6)
            row = {"name": name, "rows": rows[0]}
            for side, samples in times.items():
                row[f"{side}_p50_us"] = percentile(samples, 0.5)
                row[f"{side}_p99_us"] = percentile(samples, 0.99)
            row["ratio_p50"] = row["quiver_p50_us"] / row["duckdb_p50_us"]
            results.append(row)
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    machine = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    print(f"Quiver (gateway, {args.workers} workers) vs DuckDB {duckdb.__version__} in-process; "
          f"TPC-H SF {args.scale_factor:g}, {args.iterations} runs each; {machine}\n")
    print(f"{'query':<18} {'rows':>6} {'quiver p50':>11} {'duckdb p50':>11} {'ratio':>6} "
          f"{'quiver p99':>11} {'duckdb p99':>11}")
    for r in results:
        print(f"{r['name']:<18} {r['rows']:>6} {r['quiver_p50_us']:>8.0f} µs "
              f"{r['duckdb_p50_us']:>8.0f} µs {r['ratio_p50']:>6.2f} "
              f"{r['quiver_p99_us']:>8.0f} µs {r['duckdb_p99_us']:>8.0f} µs")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine, "duckdb": duckdb.__version__, "scale_factor": args.scale_factor,
            "iterations": args.iterations, "workers": args.workers, "queries": results,
        }, indent=2))


if __name__ == "__main__":
    main()
