"""Cancelling a long query: CancelFlightInfo, the older CancelQuery action, a client that
disconnects, and ADBC's cancel. Each must end the stream and free the resource-group slot at
once, which the gateway's `quiver_admission_running` gauge shows."""

import re
import time
import urllib.request

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow.flight as flight
import pytest

import flight_sql

# Streams far longer than any test: the client reads one batch and holds the rest back, so the
# query stays running until something stops it (or its 60 s time limit passes).
LONG = "SELECT value FROM generate_series(1, 100000000000)"
# "At once": well inside the query time limit, with room for a slow debug build.
FREED_WITHIN = 5.0


def gauge(q, name: str) -> int:
    """The largest value of a gateway gauge across its labels."""
    text = urllib.request.urlopen(q.admin_url + "/metrics", timeout=5).read().decode()
    values = [int(float(v)) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M)]
    return max(values, default=0)


def running(q) -> int:
    """Queries holding a resource-group slot (the root group counts them all)."""
    return gauge(q, "quiver_admission_running")


def wait_running(q, expected: int, within: float) -> float:
    """Polls the gauge until it reads `expected`; returns how long that took."""
    start = time.monotonic()
    while True:
        now = running(q)
        if now == expected:
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"running stayed {now}, expected {expected}"
        time.sleep(0.05)  # polling a gauge: there is no event to wait on


@pytest.fixture()
def idle(quiver):
    """The shared deployment, with no query running before and after the test."""
    wait_running(quiver, 0, 30)
    yield quiver
    wait_running(quiver, 0, FREED_WITHIN)


def drain(reader):
    """Reads chunk by chunk until the stream ends or fails (read_all would turn a CANCELLED
    status into a KeyboardInterrupt: pyarrow treats it as a signal)."""
    while True:
        reader.read_chunk()


def start_long(client):
    info = client.get_flight_info(flight.FlightDescriptor.for_command(flight_sql.statement_query(LONG)))
    reader = client.do_get(info.endpoints[0].ticket)
    chunk = reader.read_chunk()
    assert chunk.data.num_rows > 0
    return info, reader


@pytest.mark.parametrize("how", ["CancelFlightInfo", "CancelQuery"])
def test_cancel_action_stops_the_query_and_frees_its_slot(idle, how):
    client = flight.connect(idle.endpoint)
    info, reader = start_long(client)
    assert running(idle) == 1
    assert gauge(idle, "quiver_pool_in_flight") == 1
    cancel = flight_sql.cancel_flight_info if how == "CancelFlightInfo" else flight_sql.cancel_query
    assert cancel(client, info) == flight_sql.CANCEL_STATUS_CANCELLED
    took = wait_running(idle, 0, FREED_WITHIN)
    print(f"\n{how}: slot free {took * 1000:.0f} ms after the cancel returned")
    # The worker's stream was dropped too: the pool counts no query in flight on its workers.
    assert gauge(idle, "quiver_pool_in_flight") == 0
    # The stream ends with CANCELLED (after any batches already in flight).
    with pytest.raises(flight.FlightCancelledError, match="cancelled by the client"):
        drain(reader)
    # Nothing left to cancel.
    assert cancel(client, info) == flight_sql.CANCEL_STATUS_NOT_CANCELLABLE
    client.close()


def test_client_disconnect_frees_the_slot(idle):
    client = flight.connect(idle.endpoint)
    _, reader = start_long(client)
    assert running(idle) == 1
    reader.cancel()
    client.close()
    took = wait_running(idle, 0, FREED_WITHIN)
    print(f"\ndisconnect: slot free {took * 1000:.0f} ms later")


def test_adbc_cancel_frees_the_slot(idle):
    with flightsql.connect(idle.endpoint, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(LONG)
            reader = cur.fetch_record_batch()
            assert reader.read_next_batch().num_rows > 0
            assert running(idle) == 1
            cur.adbc_cancel()
            wait_running(idle, 0, FREED_WITHIN)
            with pytest.raises((adbc_driver_manager.Error, OSError)):
                reader.read_all()


def test_queries_after_a_cancel_run_normally(idle):
    client = flight.connect(idle.endpoint)
    info, reader = start_long(client)
    flight_sql.cancel_flight_info(client, info)
    wait_running(idle, 0, FREED_WITHIN)
    table = client.do_get(flight.Ticket(b"SELECT count(*) AS n FROM nation")).read_all()
    assert table.column("n").to_pylist() == [25]
    client.close()


def test_a_cancel_starts_the_next_queued_query(start_quiver, tmp_path):
    """One slot: a second query waits behind the long one, and runs as soon as it is cancelled."""
    import threading

    config = tmp_path / "admission.yaml"
    config.write_text("resource_groups:\n  - {name: one, hard_concurrency: 1, queue_timeout: 60s}\n")
    q = start_quiver("--config", str(config))
    client = flight.connect(q.endpoint)
    info, reader = start_long(client)
    done = threading.Event()
    result = {}

    def second():
        other = flight.connect(q.endpoint)
        result["n"] = other.do_get(flight.Ticket(b"SELECT count(*) AS n FROM nation")).read_all().column("n")[0].as_py()
        other.close()
        done.set()

    waiter = threading.Thread(target=second)
    waiter.start()
    deadline = time.monotonic() + 30
    while gauge(q, "quiver_admission_queued") != 1:
        assert time.monotonic() < deadline, "the second query never queued"
        time.sleep(0.05)  # polling a gauge: there is no event to wait on
    assert not done.is_set()
    assert flight_sql.cancel_flight_info(client, info) == flight_sql.CANCEL_STATUS_CANCELLED
    assert done.wait(FREED_WITHIN), "the queued query did not start after the cancel"
    waiter.join()
    assert result["n"] == 25
    client.close()
