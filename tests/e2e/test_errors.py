"""Each failure returns its own status with a message naming the cause, and the gateway keeps
serving: every error is followed by a successful query."""

import subprocess

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import QUIVER_BIN


def run(endpoint: str, sql: str):
    return flight.connect(endpoint).do_get(flight.Ticket(sql.encode())).read_all()


def assert_still_serving(endpoint: str):
    assert run(endpoint, "SELECT count(*) AS n FROM nation").column("n")[0].as_py() == 25


@pytest.mark.parametrize("sql,needle", [
    ("SELEC 1", "SELEC"),
    ("SELECT * FROM no_such_table", "no_such_table"),
    ("SELECT nope FROM nation", "nope"),
    ("DROP TABLE lineitem", "not supported"),
])
def test_bad_sql_is_invalid_argument(quiver, sql, needle):
    # pyarrow maps INVALID_ARGUMENT to ArrowInvalid.
    with pytest.raises(pa.ArrowInvalid) as err:
        run(quiver.endpoint, sql)
    assert needle in str(err.value)
    assert_still_serving(quiver.endpoint)


def test_memory_limit_is_resource_exhausted(start_quiver):
    q = start_quiver("--memory-limit", "256KiB")
    with pytest.raises(Exception) as err:
        run(q.endpoint, "SELECT count(*) FROM lineitem a JOIN lineitem b ON a.l_comment = b.l_comment")
    assert "memory limit" in str(err.value), repr(err.value)
    assert "RESOURCE_EXHAUSTED" in str(err.value) or "resource" in str(err.value).lower()
    assert_still_serving(q.endpoint)


def test_time_limit_is_deadline_exceeded(start_quiver):
    q = start_quiver("--query-timeout", "500ms")
    with pytest.raises(flight.FlightTimedOutError) as err:
        run(q.endpoint, "SELECT count(*) FROM lineitem a, lineitem b WHERE a.l_comment < b.l_comment")
    assert "time limit of 500ms" in str(err.value)
    assert_still_serving(q.endpoint)


def test_forged_ticket_is_unauthenticated(quiver):
    # A Flight SQL TicketStatementQuery whose handle is not signed by this deployment.
    handle = b"QV1" + b"\x00" * 32 + b'{"kind":"statement","sql":"SELECT 1","issued_at_ms":0}'
    inner = b"\x0a" + bytes([len(handle)]) + handle
    type_url = b"type.googleapis.com/arrow.flight.protocol.sql.TicketStatementQuery"
    ticket = b"\x0a" + bytes([len(type_url)]) + type_url + b"\x12" + bytes([len(inner)]) + inner
    with pytest.raises(flight.FlightUnauthenticatedError) as err:
        flight.connect(quiver.endpoint).do_get(flight.Ticket(ticket)).read_all()
    assert "signature" in str(err.value)
    assert_still_serving(quiver.endpoint)


def test_no_ready_worker_is_unavailable(tmp_path):
    # A gateway whose only worker address has nothing listening.
    from conftest import free_port
    port, dead = free_port(), free_port()
    gateway = subprocess.Popen(
        [QUIVER_BIN, "gateway", "--listen", f"127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0",
         "--worker", f"grpc://127.0.0.1:{dead}"],
        env={"QUIVER_TICKET_KEY": "k", "PATH": "/usr/bin:/bin"}, stderr=subprocess.PIPE, text=True)
    try:
        # The gateway logs once it serves; wait for that line rather than sleeping.
        for line in gateway.stderr:
            if "gateway serving" in line:
                break
        with pytest.raises(flight.FlightUnavailableError) as err:
            run(f"grpc://127.0.0.1:{port}", "SELECT 1")
        assert "no ready worker" in str(err.value)
    finally:
        gateway.terminate()
        assert gateway.wait(timeout=30) == 0


def test_invalid_catalog_is_refused_at_start(tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("tables:\n  - {name: t, location: missing.parquet, colour: red}\n")
    result = subprocess.run([QUIVER_BIN, "worker", "--listen", "127.0.0.1:0", "--catalog", str(catalog)],
                            env={"QUIVER_TICKET_KEY": "k"}, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert str(catalog) in result.stderr
    assert "colour" in result.stderr
