"""A worker killed mid-run loses no query that can be retried, and is replaced."""

import os
import signal
import threading

import pyarrow.flight as flight

QUERY = b"SELECT o_orderpriority, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1"
PER_THREAD = 40
THREADS = 4


def test_kill_worker_mid_run(start_quiver):
    q = start_quiver(workers=2)
    expected = flight.connect(q.endpoint).do_get(flight.Ticket(QUERY)).read_all()
    victim = next(iter(q.workers))
    outcomes: list[str] = []
    lock = threading.Lock()
    halfway = threading.Event()

    def client():
        c = flight.connect(q.endpoint)
        for i in range(PER_THREAD):
            if i == PER_THREAD // 4:
                halfway.set()
            for attempt in range(3):
                try:
                    got = c.do_get(flight.Ticket(QUERY)).read_all()
                    assert got.equals(expected)
                    with lock:
                        outcomes.append("ok" if attempt == 0 else "retried")
                    break
                except flight.FlightUnavailableError as e:
                    # Only a query already streaming from the killed worker may fail, and it
                    # says the query can be retried.
                    assert "retried" in str(e) or "no ready worker" in str(e), str(e)
            else:
                with lock:
                    outcomes.append("lost")

    threads = [threading.Thread(target=client) for _ in range(THREADS)]
    for t in threads:
        t.start()
    halfway.wait(timeout=120)
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(timeout=300)

    assert outcomes.count("lost") == 0, outcomes
    assert len(outcomes) == PER_THREAD * THREADS
    # The supervisor starts a replacement.
    q.wait_for("worker started:", 120)
    assert victim not in q.workers and len(q.workers) == 2
