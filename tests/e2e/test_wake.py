"""Scale to zero and wake-up on one machine: `quiver up --min-workers 0` with a standby worker
drains to zero when idle, holds the next query at the gateway while it claims the standby worker,
answers it, and serves a burst from another claimed standby without failing a query.

Synchronisation is on what `quiver up` prints (scaling decisions, `standby started:`, `worker
claimed:`) and on query results; nothing sleeps to wait."""

import json
import re
import subprocess
import threading
import time
import urllib.request

import pyarrow.flight as flight

from conftest import QUIVER_BIN, quiver_env
from flight_sql import statement_query
from test_scaling import expected_rows, finish, hold, next_scale

TIMEOUT = 120
# Generous for a debug build on a loaded 2-core machine; the figure itself is printed.
WAKE_BOUND_S = 10.0
CLAIMED = re.compile(r"^worker claimed: pid=(\d+) endpoint=(grpc://127\.0\.0\.1:\d+) in (\d+) ms$")


def wait_count(q, prefix: str, n: int) -> list[str]:
    """Waits until `n` lines starting with `prefix` were printed, counting those already read."""
    while True:
        seen = [line for line in q.stdout if line.startswith(prefix)]
        if len(seen) >= n:
            return seen
        q.wait_for(prefix, TIMEOUT)


def seen(q, prefix: str) -> int:
    """Lines starting with `prefix` read so far."""
    return len([line for line in q.stdout if line.startswith(prefix)])


def counts(endpoint: str, table: str, n: int, answers: list[int], failures: list[str],
           gate: threading.Barrier | None = None) -> None:
    """Runs `SELECT count(*) FROM table` n times on one connection (after `gate`, if given),
    appending each answer, or the failure that ended the run."""
    client = flight.connect(endpoint)
    try:
        if gate:
            gate.wait(TIMEOUT)
        for _ in range(n):
            result = client.do_get(flight.Ticket(f"SELECT count(*) FROM {table}".encode())).read_all()
            answers.append(result.column(0)[0].as_py())
    except Exception as e:  # noqa: BLE001 - every failure is reported by the caller
        failures.append(repr(e))
    finally:
        client.close()


def pool_report(q) -> dict:
    with urllib.request.urlopen(q.admin_url + "/v1/pools", timeout=10) as r:
        return json.load(r)["pools"][0]


def nations(endpoint: str) -> int:
    client = flight.connect(endpoint)
    try:
        table = client.do_get(flight.Ticket(b"SELECT count(*) AS n FROM nation")).read_all()
        return table.column(0)[0].as_py()
    finally:
        client.close()


def test_a_pool_at_zero_wakes_from_a_standby_and_a_burst_claims_another(start_quiver):
    q = start_quiver(
        "--min-workers", "0", "--max-workers", "3", "--standby-workers", "1",
        "--scale-to-zero-after", "2s", "--target-concurrency", "1", "--worker-slots", "4",
        workers=None, expected_workers=1)
    total = expected_rows(q.endpoint)

    # Idle for the idle time: the pool drains to zero; the standby worker stays.
    while True:
        frm, to, reason = next_scale(q)
        if to == 0:
            break
    assert reason.startswith("scale to zero:"), reason
    q.wait_for("worker stopped:", TIMEOUT)
    # The first query may have scaled the pool up already, claiming a standby: counts start
    # here, once every claimed standby has been replaced.
    claims = seen(q, "worker claimed:")
    standbys = len(wait_count(q, "standby started:", claims + 1))
    report = pool_report(q)
    assert report["workers"] == 0 and report["ready"] == 0, report

    # The first query at zero is held while the pool wakes, then answered.
    began = time.monotonic()
    assert nations(q.endpoint) == 25
    wake_s = time.monotonic() - began
    claimed = CLAIMED.match(wait_count(q, "worker claimed:", claims + 1)[claims])
    assert claimed, q.stdout
    assert any(line.startswith("scale: 0 -> ") and "(wake:" in line for line in q.stdout), q.stdout
    print(f"\nwake-up: first query at zero answered in {wake_s * 1000:.0f} ms "
          f"(claim {claimed.group(3)} ms)")
    assert wake_s < WAKE_BOUND_S, f"first query after zero took {wake_s:.1f}s"

    # The claimed standby is replaced at once; wait for the replacement before the burst.
    wait_count(q, "standby started:", standbys + 1)

    # A burst: three held streams at a target of one query per worker ask for the maximum of
    # three workers, which claims the new standby; short queries run alongside, none may fail.
    failures: list[str] = []
    answers: list[int] = []

    held = [hold(q.endpoint) for _ in range(3)]
    threads = [threading.Thread(target=counts, args=(q.endpoint, "nation", 10, answers, failures))
               for _ in range(8)]
    for t in threads:
        t.start()
    second = CLAIMED.match(wait_count(q, "worker claimed:", claims + 2)[claims + 1])
    assert second, q.stdout
    print(f"burst: standby claimed in {second.group(3)} ms")
    for t in threads:
        t.join(TIMEOUT)
    assert not failures, failures
    assert answers == [25] * 80
    # The claimed worker is an ordinary, ready member of the pool, and serves queries.
    endpoint = second.group(2).replace("grpc://", "http://")
    loads = {w["endpoint"]: w for w in pool_report(q)["worker_loads"]}
    assert loads.get(endpoint, {}).get("ready"), loads
    for h in held:
        finish(h, total)
    assert nations(q.endpoint) == 25

    # Idle again: back to zero. A Flight SQL client's planning call (GetFlightInfo, a statement
    # the gateway has not planned before) is held while the pool wakes, like a DoGet.
    while next_scale(q)[1] != 0:
        pass
    # Every worker ever started or claimed has stopped: the pool is empty.
    ever = len(q.started) + len(wait_count(q, "worker claimed:", claims + 2))
    wait_count(q, "worker stopped:", ever)
    assert pool_report(q)["workers"] == 0
    client = flight.connect(q.endpoint)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(
        statement_query("SELECT count(*) AS regions FROM region")))
    table = client.do_get(info.endpoints[0].ticket).read_all()
    client.close()
    assert table.column(0)[0].as_py() == 5
    wait_count(q, "worker claimed:", claims + 3)  # the planning call woke the pool
    assert "worker claim failed" not in "\n".join(q.stdout)


def test_bursts_at_zero_lose_no_query(start_quiver):
    """Three times over: the pool drains to zero, then sixteen queries arrive at once. Some wait
    at dispatch for the wake-up, the rest in their group's queue; every one is answered."""
    q = start_quiver(
        "--min-workers", "0", "--max-workers", "3", "--standby-workers", "1",
        "--scale-to-zero-after", "2s", "--target-concurrency", "2", "--worker-slots", "4",
        workers=None, expected_workers=1)
    for cycle in range(3):
        while next_scale(q)[1] != 0:
            pass
        ever = len(q.started) + len([l for l in q.stdout if l.startswith("worker claimed:")])
        wait_count(q, "worker stopped:", ever)
        wait_count(q, "standby started:", cycle + 1)
        results: list[int] = []
        failures: list[str] = []
        gate = threading.Barrier(16)
        threads = [threading.Thread(target=counts,
                                    args=(q.endpoint, "supplier", 1, results, failures, gate))
                   for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert not failures, (cycle, failures)
        assert len(results) == 16 and len(set(results)) == 1, results
        wait_count(q, "worker claimed:", cycle + 1)
    assert "worker claim failed" not in "\n".join(q.stdout)


def test_scale_to_zero_flags_are_checked():
    for args, words in [
        (["--scale-to-zero-after", "30s"], "--min-workers 0"),
        (["--min-workers", "1", "--scale-to-zero-after", "30s"], "--min-workers 0"),
        (["--min-workers", "0", "--scale-to-zero-after", "0s"], "above zero"),
    ]:
        out = subprocess.run([QUIVER_BIN, "up", *args], capture_output=True, text=True,
                             env=quiver_env(), timeout=60)
        assert out.returncode != 0 and words in out.stderr, (args, out.stderr)

