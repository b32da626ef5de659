"""Graceful exit with default settings: a worker told to stop (SIGTERM) while it streams a
45-second query keeps streaming until the query is done, then exits cleanly; the query loses
nothing. The query lasts 45 s because its client reads slowly: flow control holds the rest of
the result in the worker, which must not exit under it."""

import os
import signal
import time

import pyarrow.flight as flight

from conftest import alive

# Large enough that flow control, not the buffers between client and worker, holds most of it.
QUERY = b"SELECT l.*, r.r_name FROM lineitem l CROSS JOIN region r"
QUERY_SECONDS = 45


def test_sigterm_during_a_45s_query_lets_it_finish(start_quiver):
    q = start_quiver(workers=1)
    (worker, _), = q.started
    client = flight.connect(q.endpoint)
    expected = client.do_get(flight.Ticket(b"SELECT count(*) * 5 AS n FROM lineitem")).read_all()
    expected_rows = expected.column("n")[0].as_py()

    started = time.monotonic()
    reader = client.do_get(flight.Ticket(QUERY))
    first = reader.read_chunk().data
    os.kill(worker, signal.SIGTERM)
    # The client reads nothing for the rest of the 45 s: the load shape, not a wait for an event.
    time.sleep(max(0.0, QUERY_SECONDS - (time.monotonic() - started)))
    assert alive(worker), "the worker exited while its query was still streaming"
    rest = reader.read_all()
    elapsed = time.monotonic() - started
    assert first.num_rows + rest.num_rows == expected_rows
    assert elapsed >= QUERY_SECONDS

    # With its last query done, the draining worker exits by itself, cleanly.
    line = q.wait_for(f"worker exited: pid={worker}", 30)
    assert line.endswith("status=exit status: 0"), line
