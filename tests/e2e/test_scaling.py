"""`quiver up` sizing its worker processes from demand with the operator's scaling policy, and
graceful exit: a worker told to stop finishes its running queries, exits, and loses nothing."""

import os
import re
import signal
import subprocess

import pyarrow.flight as flight

from conftest import QUIVER_BIN, alive, quiver_env

# A result far larger than every buffer between worker and client (about 36 MB of Arrow data), so
# a stream whose reader stops reading keeps its query in flight on the worker.
HELD = "SELECT l_orderkey, l_linenumber, n_nationkey FROM lineitem, nation"
TIMEOUT = 120


def hold(endpoint: str):
    """Starts HELD and reads its first batch; the rest stays unread."""
    client = flight.connect(endpoint)
    reader = client.do_get(flight.Ticket(HELD.encode()))
    first = reader.read_chunk().data
    assert first.num_rows > 0
    return client, reader, first.num_rows


def finish(held, expected_rows: int) -> None:
    """Reads the rest of a held stream and checks nothing was lost."""
    client, reader, first_rows = held
    rows = first_rows + reader.read_all().num_rows
    assert rows == expected_rows, f"held stream returned {rows} rows, expected {expected_rows}"
    client.close()


def expected_rows(endpoint: str) -> int:
    client = flight.connect(endpoint)
    sql = "SELECT (SELECT count(*) FROM lineitem) * (SELECT count(*) FROM nation) AS n"
    return client.do_get(flight.Ticket(sql.encode())).read_all().column(0)[0].as_py()


def wait_started(q, n: int) -> None:
    while len(q.started) < n:
        q.wait_for("worker started:", TIMEOUT)


SCALE = re.compile(r"^scale: (\d+) -> (\d+) workers \((.+)\)$")


def next_scale(q) -> tuple[int, int, str]:
    line = q.wait_for("scale:", TIMEOUT)
    m = SCALE.match(line)
    assert m, f"malformed scaling line {line!r}"
    return int(m.group(1)), int(m.group(2)), m.group(3)


def test_workers_follow_demand_up_and_down(start_quiver):
    q = start_quiver(
        "--min-workers", "1", "--max-workers", "3", "--warm-workers", "1",
        "--target-concurrency", "1", "--worker-slots", "4",
        "--stable-window", "2s", "--panic-window", "1s", "--scale-down-delay", "1s",
        workers=None, expected_workers=1)
    total = expected_rows(q.endpoint)

    # Four queries in flight on one worker at a target of 1 a worker: the pool grows to its
    # maximum, only ever upwards, one decision per sample that needed more.
    held = [hold(q.endpoint) for _ in range(4)]
    size = 1
    while size < 3:
        frm, to, reason = next_scale(q)
        assert frm == size and to > frm, f"scaled {frm} -> {to} ({reason}) while demand rose"
        assert reason.startswith(("panic:", "scale up:")), reason
        size = to
    assert size == 3
    wait_started(q, 3)
    assert len(q.worker_pids) == 3

    # Three finish: demand 1 needs one busy worker and one warm spare. The worker retired is an
    # idle one; the query still running keeps going.
    for h in held[1:]:
        finish(h, total)
    frm, to, reason = next_scale(q)
    assert (frm, to) == (3, 2), f"scaled {frm} -> {to} ({reason})"
    assert reason.startswith("scale down:"), reason
    draining = q.wait_for("worker draining:", TIMEOUT)
    stopped = q.wait_for("worker stopped:", TIMEOUT)
    pid = int(re.search(r"pid=(\d+)", draining).group(1))
    assert f"pid={pid} " in stopped and "exit status: 0" in stopped, f"{stopped}; {q.stdout}"
    assert not alive(pid), "a drained worker is still running"

    # The last one finishes, whole: back to the minimum, which is also the warm spare.
    finish(held[0], total)
    frm, to, reason = next_scale(q)
    assert (frm, to) == (2, 1), f"scaled {frm} -> {to} ({reason})"
    q.wait_for("worker stopped:", TIMEOUT)
    assert len(q.worker_pids) == 1
    # Still serving.
    assert expected_rows(q.endpoint) == total


def test_a_worker_stopped_with_sigterm_drains_exits_and_is_replaced(start_quiver):
    q = start_quiver(workers=2)
    total = expected_rows(q.endpoint)
    held = [hold(q.endpoint) for _ in range(2)]  # least-loaded dispatch: one on each worker
    victim = q.started[0][0]
    os.kill(victim, signal.SIGTERM)

    # Its running query still completes in full, then it exits on its own and is replaced.
    for h in held:
        finish(h, total)
    exited = q.wait_for(f"worker exited: pid={victim} ", TIMEOUT)
    assert "exit status: 0" in exited, exited
    assert not alive(victim)
    wait_started(q, 3)
    assert len(q.worker_pids) == 2
    assert expected_rows(q.endpoint) == total


def test_inconsistent_worker_counts_are_refused():
    out = subprocess.run([QUIVER_BIN, "up", "--min-workers", "4", "--max-workers", "2"],
                         capture_output=True, text=True, env=quiver_env(), timeout=60)
    assert out.returncode != 0
    assert "minReplicas 4 is above maxReplicas 2" in out.stderr, out.stderr
    out = subprocess.run([QUIVER_BIN, "up", "--workers", "2", "--max-workers", "3"],
                         capture_output=True, text=True, env=quiver_env(), timeout=60)
    assert out.returncode != 0 and "cannot be used with" in out.stderr, out.stderr
