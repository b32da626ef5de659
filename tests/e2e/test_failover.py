"""A worker killed (SIGKILL) mid-run loses no query: every query either succeeds or, if it was
already streaming from that worker, fails with a clear UNAVAILABLE that says it can be retried,
and succeeds when retried. The supervisor replaces the worker, and the replacement serves."""

import json
import os
import select
import urllib.request
import signal
import threading
import time

import pyarrow as pa
import pyarrow.flight as flight

import flight_sql
from conftest import _stat, alive, children_of, metric_samples
from flight_sql import status_of

QUERIES = {
    "agg": "SELECT o_orderpriority, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1",
    # All of lineitem's keys and comments: several batches, so it is often mid-stream.
    "scan": "SELECT l_orderkey, l_linenumber, l_comment FROM lineitem",
}
THREADS = 4
PER_THREAD = 24
HELD_STREAMS = 4


def canonical(t: pa.Table) -> pa.Table:
    """Sorted, with plain strings (a scan's row order is not defined; `take` has no string_view kernel)."""
    t = t.cast(pa.schema([pa.field(f.name, pa.string() if pa.types.is_string_view(f.type) else f.type)
                          for f in t.schema]))
    return t.sort_by([(t.column_names[0], "ascending"), (t.column_names[1], "ascending")]) \
        if "l_orderkey" in t.column_names else t


def read(client, name) -> pa.Table:
    return canonical(client.do_get(flight.Ticket(QUERIES[name].encode())).read_all())


def exited(pid: int, timeout: float = 30) -> None:
    """Waits for `pid` to exit (its files closed), however its parent handles it."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"process {pid} did not exit within {timeout} s"
    finally:
        os.close(fd)


def retryable(e: Exception) -> bool:
    return isinstance(e, flight.FlightUnavailableError) and "retried" in str(e)


def test_kill_worker_mid_run(start_quiver):
    q = start_quiver(workers=2)
    client = flight.connect(q.endpoint)
    expected = {name: read(client, name) for name in QUERIES}
    assert expected["scan"].num_rows > 60_000
    victim, survivor = q.worker_pids
    outcomes: list[str] = []
    lock = threading.Lock()
    progress = threading.Semaphore(0)

    def record(outcome: str):
        with lock:
            outcomes.append(outcome)
        progress.release()

    def one(c, name) -> None:
        """Runs a query; on a retryable failure retries once. Records what happened."""
        try:
            assert read(c, name).equals(expected[name]), f"{name}: wrong result"
            record("ok")
            return
        except Exception as e:  # noqa: BLE001 - every failure is judged below
            if not retryable(e):
                record(f"FAILED {name}: {status_of(e)}: {e}")
                return
        try:
            assert read(c, name).equals(expected[name]), f"{name}: wrong result on retry"
            record("retried")
        except Exception as e:  # noqa: BLE001
            record(f"FAILED on retry {name}: {status_of(e)}: {e}")

    def load():
        c = flight.connect(q.endpoint)
        for i in range(PER_THREAD):
            one(c, "scan" if i % 2 else "agg")

    # Streams that are certainly in flight when the worker dies: the first batch has arrived, the
    # rest is not read yet. Dispatch spreads them over both workers.
    held = []
    for _ in range(HELD_STREAMS):
        c = flight.connect(q.endpoint)
        reader = c.do_get(flight.Ticket(QUERIES["scan"].encode()))
        first = reader.read_chunk()
        assert first.data.num_rows > 0
        held.append((c, reader, first.data))

    threads = [threading.Thread(target=load) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for _ in range(THREADS * 2):  # some of the load has completed: the rest overlaps the kill
        assert progress.acquire(timeout=120), "the load made no progress"
    os.kill(victim, signal.SIGKILL)

    for c, reader, first in held:
        try:
            rest = reader.read_all()
            got = canonical(pa.concat_tables([pa.Table.from_batches([first]), rest]))
            assert got.equals(expected["scan"]), "held stream: wrong result"
            record("ok")
        except Exception as e:  # noqa: BLE001
            if not retryable(e):
                record(f"FAILED held stream: {status_of(e)}: {e}")
                continue
            try:
                assert read(c, "scan").equals(expected["scan"]), "held stream: wrong result on retry"
                record("retried")
            except Exception as e2:  # noqa: BLE001
                record(f"FAILED held stream on retry: {status_of(e2)}: {e2}")
    for t in threads:
        t.join(timeout=600)
        assert not t.is_alive(), "a client thread hangs"

    failed = [o for o in outcomes if o.startswith("FAILED")]
    print(f"\n{len(outcomes)} queries: {outcomes.count('ok')} ok, {outcomes.count('retried')} "
          f"failed mid-stream and succeeded when retried, {len(failed)} lost")
    assert not failed, failed[:5]
    assert len(outcomes) == THREADS * PER_THREAD + HELD_STREAMS

    # The supervisor replaces the killed worker.
    q.wait_for("worker started:", 120)
    replacement = q.started[-1][0]
    assert replacement not in (victim, survivor)
    assert not alive(victim)
    assert replacement in children_of(q.proc.pid)
    # Once warm (the gateway sees it ready; workers answer only the gateway), the replacement
    # alone can carry the pool: kill the other original worker too, and no query through the
    # gateway fails — a worker that is gone before the first message costs the client nothing.
    admin = next(line.split(": ", 1)[1] for line in q.stdout if line.startswith("quiver admin: "))
    endpoint = q.started[-1][1].replace("grpc://", "http://")
    deadline = time.monotonic() + 120
    while True:
        pools = json.loads(urllib.request.urlopen(f"{admin}/v1/pools", timeout=5).read())
        if any(w["endpoint"] == endpoint and w["ready"]
               for p in pools["pools"] for w in p["worker_loads"]):
            break
        assert time.monotonic() < deadline, "the replacement worker never served"
        time.sleep(0.2)
    os.kill(survivor, signal.SIGKILL)
    # Gone, not only signalled: its connections are closed before the next query is sent. (A
    # query sent in between would have reached a worker that failed with it in hand.)
    exited(survivor)
    for i in range(10):
        assert read(client, "agg").equals(expected["agg"]), i
    q.wait_for("worker started:", 120)
    assert len(q.worker_pids) == 2, q.started


# Runs for minutes before its one row: long enough to find the worker running it and kill it.
SLOW = "SELECT sum(a.l_quantity * b.l_quantity) AS s FROM lineitem a CROSS JOIN lineitem b"


def cpu_ticks(pid: int) -> int:
    """User and system CPU time of `pid` so far, in clock ticks."""
    fields = _stat(pid)
    assert fields is not None, f"worker {pid} is gone"
    return int(fields[11]) + int(fields[12])


def running_on(q, pids_by_endpoint: dict[str, int], exclude: set[int]) -> int:
    """The pid of the worker (not in `exclude`) running the query: the gateway counts it in
    flight there, and the worker has since burnt a fifth of a second of CPU (an idle worker
    burns none), so the query has reached it."""
    deadline = time.monotonic() + 60
    chosen, since = None, 0
    while True:
        if chosen is None:
            pools = json.loads(urllib.request.urlopen(f"{q.admin_url}/v1/pools", timeout=5).read())
            for pool in pools["pools"]:
                for w in pool["worker_loads"]:
                    pid = pids_by_endpoint.get(w["endpoint"])
                    if w["in_flight"] > 0 and pid is not None and pid not in exclude:
                        chosen, since = pid, cpu_ticks(pid)
        elif cpu_ticks(chosen) - since >= os.sysconf("SC_CLK_TCK") // 5:
            return chosen
        assert time.monotonic() < deadline, f"no worker ran the query (chosen: {chosen})"
        time.sleep(0.02)


def test_a_statement_that_two_workers_die_under_is_held_back(start_quiver):
    """A query of death: the worker running it dies, the gateway retries it on the other, that
    one dies too, and the statement is then held back (FAILED_PRECONDITION) instead of being
    sent to the replacements. Other statements run as before."""
    q = start_quiver(workers=2)
    pids = {endpoint.replace("grpc://", "http://"): pid for pid, endpoint in q.started}
    client = flight.connect(q.endpoint)
    outcome: list[BaseException | None] = []

    def run():
        try:
            client.do_get(flight.Ticket(SLOW.encode())).read_all()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001
            outcome.append(e)

    caller = threading.Thread(target=run)
    caller.start()
    first = running_on(q, pids, set())
    os.kill(first, signal.SIGKILL)
    second = running_on(q, pids, {first})  # retried on the other worker
    os.kill(second, signal.SIGKILL)
    caller.join(timeout=120)
    assert not caller.is_alive(), "the call never ended"
    (err,) = outcome
    assert err is not None and status_of(err) == "FAILED_PRECONDITION", f"{err!r}"
    assert "held back" in str(err), str(err)

    # The supervisor replaces both workers; once one serves, other statements run...
    q.wait_for("worker started:", 120)
    q.wait_for("worker started:", 120)
    deadline = time.monotonic() + 120
    while True:
        try:
            assert client.do_get(flight.Ticket(b"SELECT 1 AS one")).read_all().num_rows == 1
            break
        except flight.FlightUnavailableError:
            assert time.monotonic() < deadline, "no replacement worker served"
            time.sleep(0.2)
    # ...and the held-back statement is refused at once, reaching no worker.
    started = time.monotonic()
    try:
        client.do_get(flight.Ticket(SLOW.encode())).read_all()
        raise AssertionError("the held-back statement ran")
    except flight.FlightError as e:
        assert status_of(e) == "FAILED_PRECONDITION", f"{e!r}"
    except pa.ArrowInvalid as e:
        assert status_of(e) == "FAILED_PRECONDITION", f"{e!r}"
    assert time.monotonic() - started < 5, "the held-back statement was not refused at once"
    assert len(q.worker_pids) == 2
    # Both refusals count under their own outcome.
    held = [v for labels, v in metric_samples(q.admin_url, "quiver_queries_total")
            if labels["outcome"] == "held_back"]
    assert held == [2.0], held

    # Varying the text gets no fresh count: a third worker dying under the tenant's statements
    # puts the tenant on probation, and then only its statements that completed recently run.
    pids = {endpoint.replace("grpc://", "http://"): pid for pid, endpoint in q.started}
    outcome.clear()
    variant = SLOW.encode() + b" -- another text"
    caller = threading.Thread(target=lambda: outcome.append(_error_of(client, variant)))
    caller.start()
    os.kill(running_on(q, pids, {first, second}), signal.SIGKILL)
    caller.join(timeout=120)
    assert not caller.is_alive(), "the call never ended"
    (err,) = outcome
    assert err is not None and status_of(err) == "FAILED_PRECONDITION", f"{err!r}"
    assert "completed recently" in str(err), str(err)
    assert client.do_get(flight.Ticket(b"SELECT 1 AS one")).read_all().num_rows == 1, \
        "a statement that completed before still runs"
    err = _error_of(client, b"SELECT 2 AS two")
    assert err is not None and status_of(err) == "FAILED_PRECONDITION", f"{err!r}"
    assert "completed recently" in str(err), str(err)
    # Operators read each once in the log, when it happens, not at every refusal.
    log = q.log_path.read_text(errors="replace")
    assert log.count("a statement is held back") == 1, q.log_tail()
    assert log.count("tenant on probation") == 1, q.log_tail()


def _error_of(client, ticket: bytes) -> BaseException | None:
    """The error reading `ticket`'s results raised, if any."""
    try:
        client.do_get(flight.Ticket(ticket)).read_all()
        return None
    except BaseException as e:  # noqa: BLE001
        return e
