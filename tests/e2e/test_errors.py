"""Each failure returns its own gRPC status with a message naming the cause, and the service keeps
serving: every error is followed by a successful query. Statuses are read from the pyarrow
exception class and message prefix (see flight_sql.status_of for pyarrow's mapping)."""

import json
import signal
import subprocess
import time
import urllib.request

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow.flight as flight
import pytest

import flight_sql
from conftest import QUIVER_BIN, alive, free_port, quiver_env, wait_tcp
from flight_sql import server_message, status_of

# Runs for minutes on SF 0.01 without limits: a nested-loop join of 60k x 60k rows.
SLOW_QUERY = "SELECT count(*) FROM lineitem a, lineitem b WHERE a.l_comment < b.l_comment"
# Needs a hash table of all of lineitem's comments.
HUNGRY_QUERY = "SELECT count(*) FROM lineitem a JOIN lineitem b ON a.l_comment = b.l_comment"


def run(endpoint: str, sql: str):
    return flight.connect(endpoint).do_get(flight.Ticket(sql.encode())).read_all()


def assert_still_serving(endpoint: str):
    assert run(endpoint, "SELECT count(*) AS n FROM nation").column("n")[0].as_py() == 25


def failure(fn) -> Exception:
    with pytest.raises(Exception) as err:
        fn()
    return err.value


BAD_SQL = [
    # sql, accepted statuses, words DataFusion's message contains
    ("SELEC 1", {"INVALID_ARGUMENT"}, ["Expected", "SELEC"]),
    ("SELECT * FROM no_such_table", {"INVALID_ARGUMENT", "NOT_FOUND"}, ["no_such_table", "not found"]),
    ("SELECT nope FROM nation", {"INVALID_ARGUMENT", "NOT_FOUND"}, ["nope"]),
    ("DROP TABLE lineitem", {"INVALID_ARGUMENT"}, ["are refused"]),
    # Values the query asks the impossible of: the query's fault, not the worker's.
    ("SELECT CAST('abc' AS INT)", {"INVALID_ARGUMENT"}, ["Cannot cast string 'abc'"]),
    ("SELECT CAST(300 AS TINYINT)", {"INVALID_ARGUMENT"}, ["300"]),
    ("SELECT 1/0", {"INVALID_ARGUMENT"}, ["Divide by zero"]),
]


@pytest.mark.parametrize("sql,statuses,words", BAD_SQL, ids=["syntax", "table", "column", "ddl", "cast", "narrowing", "division"])
def test_bad_sql_plain_ticket(quiver, sql, statuses, words):
    err = failure(lambda: run(quiver.endpoint, sql))
    assert status_of(err) in statuses, f"{status_of(err)}: {err}"
    for w in words:
        assert w in server_message(err), err
    assert_still_serving(quiver.endpoint)


@pytest.mark.parametrize("sql,statuses,words", BAD_SQL, ids=["syntax", "table", "column", "ddl", "cast", "narrowing", "division"])
def test_bad_sql_flight_sql_statement(quiver, sql, statuses, words):
    # Planning errors surface at GetFlightInfo, before any ticket exists.
    client = flight.connect(quiver.endpoint)
    err = failure(lambda: flight_sql.command(client, flight_sql.statement_query(sql)))
    assert status_of(err) in statuses, f"{status_of(err)}: {err}"
    for w in words:
        assert w in server_message(err), err
    assert_still_serving(quiver.endpoint)


@pytest.mark.parametrize("sql,statuses,words", BAD_SQL, ids=["syntax", "table", "column", "ddl", "cast", "narrowing", "division"])
def test_bad_sql_adbc(quiver, sql, statuses, words):
    codes = {getattr(adbc_driver_manager.AdbcStatusCode, s) for s in statuses}
    with flightsql.connect(quiver.endpoint, autocommit=True) as conn, conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error) as err:
            # A value error may surface when the rows are read rather than at execute.
            cur.execute(sql)
            cur.fetch_arrow_table()
        assert err.value.status_code in codes, err.value
        for w in words:
            assert w in str(err.value), err.value
        # The same connection goes on working.
        cur.execute("SELECT count(*) AS n FROM region")
        assert cur.fetch_arrow_table().column("n").to_pylist() == [5]


def test_memory_limit_is_resource_exhausted(start_quiver):
    q = start_quiver("--memory-limit", "1MiB")
    [worker] = q.worker_pids
    err = failure(lambda: run(q.endpoint, HUNGRY_QUERY))
    assert status_of(err) == "RESOURCE_EXHAUSTED", f"{status_of(err)}: {err}"
    msg = server_message(err)
    assert "memory limit" in msg, msg
    assert any(s in msg for s in ("1 MiB", "1MiB", "1048576")), f"the message should name the limit: {msg[:200]}"
    # Only the query ended: the same worker serves the next one.
    assert_still_serving(q.endpoint)
    assert alive(worker) and q.worker_pids == [worker]


def test_memory_limit_message_names_the_configured_limit(start_quiver):
    q = start_quiver("--memory-limit", "256KiB")
    err = failure(lambda: run(q.endpoint, HUNGRY_QUERY))
    assert status_of(err) == "RESOURCE_EXHAUSTED", f"{status_of(err)}: {err}"
    msg = server_message(err)
    assert any(s in msg for s in ("256 KiB", "256KiB", "262144", "0.25 MiB")), \
        f"the message should name the 256KiB limit: {msg[:200]}"
    assert_still_serving(q.endpoint)


def test_time_limit_is_deadline_exceeded(start_quiver):
    q = start_quiver("--query-timeout", "500ms")
    [worker] = q.worker_pids
    t0 = time.monotonic()
    err = failure(lambda: run(q.endpoint, SLOW_QUERY))
    elapsed = time.monotonic() - t0
    assert isinstance(err, flight.FlightTimedOutError), f"{status_of(err)}: {err}"
    assert "time limit" in server_message(err) and "500ms" in server_message(err), err
    assert elapsed < 20, f"the timed-out query took {elapsed:.1f}s to end"
    assert_still_serving(q.endpoint)
    assert alive(worker) and q.worker_pids == [worker]


# One row over the 64 MiB message limit: Flight splits batches by rows, so its message is too.
HUGE_ROW = "SELECT repeat('x', 70000000) AS s"


def test_a_row_over_the_message_limit_is_the_query_s_error(start_quiver):
    """A result message over the limit is the query's own error, the same every time: not a
    worker failure (nothing is retried elsewhere, no worker leaves rotation, the statement is
    never held back), and the worker serves on."""
    q = start_quiver(workers=2)
    workers = sorted(q.worker_pids)
    for _ in range(4):
        err = failure(lambda: run(q.endpoint, HUGE_ROW))
        assert status_of(err) in ("RESOURCE_EXHAUSTED", "OUT_OF_RANGE"), f"{status_of(err)}: {err}"
        assert "limit" in server_message(err), err
        assert_still_serving(q.endpoint)
    pools = json.loads(urllib.request.urlopen(f"{q.admin_url}/v1/pools", timeout=5).read())
    assert all(w["ready"] for p in pools["pools"] for w in p["worker_loads"]), pools
    assert sorted(q.worker_pids) == workers
    log = q.log_path.read_text(errors="replace")
    assert "worker failed" not in log and "held back" not in log, q.log_tail()


def statement_ticket(client, sql: str) -> bytes:
    info = client.get_flight_info(flight.FlightDescriptor.for_command(flight_sql.statement_query(sql)))
    return info.endpoints[0].ticket.ticket


def test_tampered_ticket_is_rejected(quiver):
    client = flight.connect(quiver.endpoint)
    ticket = statement_ticket(client, "SELECT 1 AS x")
    # The genuine ticket works, and again (tickets are stateless).
    for _ in range(2):
        assert client.do_get(flight.Ticket(ticket)).read_all().column("x").to_pylist() == [1]
    if b"SELECT 1 AS x" in ticket:
        tampered = ticket.replace(b"SELECT 1 AS x", b"SELECT 2 AS x")
    else:
        tampered = ticket[:-1] + bytes([ticket[-1] ^ 1])
    err = failure(lambda: client.do_get(flight.Ticket(tampered)).read_all())
    assert status_of(err) in ("UNAUTHENTICATED", "INVALID_ARGUMENT"), f"{status_of(err)}: {err}"
    assert "ticket" in server_message(err).lower(), err
    assert_still_serving(quiver.endpoint)


def test_forged_ticket_is_rejected(quiver):
    # A well-formed TicketStatementQuery whose handle was not signed by this deployment.
    handle = b"QV1" + b"\x00" * 32 + b'{"kind":"statement","sql":"SELECT 1","issued_at_ms":0}'
    inner = b"\x0a" + bytes([len(handle)]) + handle
    type_url = b"type.googleapis.com/arrow.flight.protocol.sql.TicketStatementQuery"
    ticket = b"\x0a" + bytes([len(type_url)]) + type_url + b"\x12" + bytes([len(inner)]) + inner
    err = failure(lambda: flight.connect(quiver.endpoint).do_get(flight.Ticket(ticket)).read_all())
    assert status_of(err) in ("UNAUTHENTICATED", "INVALID_ARGUMENT"), f"{status_of(err)}: {err}"
    assert "ticket" in server_message(err).lower(), err
    assert_still_serving(quiver.endpoint)


def test_no_ready_worker_is_unavailable_then_recovers(data_dir, tmp_path):
    """A gateway whose only worker is not there says UNAVAILABLE; once a worker (run as its own
    process with the same ticket key) comes up at that address, the same gateway serves."""
    port, worker_port = free_port(), free_port()
    env = quiver_env(QUIVER_TICKET_KEY="e2e-ticket-key")
    logs = [open(tmp_path / "gateway.log", "w"), open(tmp_path / "worker.log", "w")]
    gateway = subprocess.Popen(
        # --admin-listen: its default, 0.0.0.0:9090, may be taken on a shared machine.
        [QUIVER_BIN, "gateway", "--listen", f"127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0",
         "--worker", f"grpc://127.0.0.1:{worker_port}"],
        env=env, stdout=logs[0], stderr=subprocess.STDOUT)
    worker = None
    try:
        wait_tcp(port, 60)
        endpoint = f"grpc://127.0.0.1:{port}"
        err = failure(lambda: run(endpoint, "SELECT 1"))
        assert isinstance(err, flight.FlightUnavailableError), f"{status_of(err)}: {err}"
        assert "no ready worker" in server_message(err), err

        worker = subprocess.Popen(
            [QUIVER_BIN, "worker", "--listen", f"127.0.0.1:{worker_port}",
             "--catalog", str(data_dir / "catalog.yaml")],
            env=env, stdout=logs[1], stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:  # the gateway notices the worker by its own health checks
            try:
                assert_still_serving(endpoint)
                break
            except flight.FlightUnavailableError as e:
                assert "no ready worker" in str(e), e
                assert worker.poll() is None, f"worker exited {worker.returncode}"
                assert time.monotonic() < deadline, "the gateway never used the worker that came up"
                time.sleep(0.2)
    finally:
        for p in (worker, gateway):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) if p is not None else 0 for p in (worker, gateway)]
        for f in logs:
            f.close()
    assert codes == [0, 0], f"worker, gateway exit codes on SIGTERM: {codes}\n" + \
        (tmp_path / "gateway.log").read_text()[-2000:] + (tmp_path / "worker.log").read_text()[-2000:]


CATALOGS = {
    # name: (catalog text, words the error names besides the catalog path)
    "unknown-field": ("tables:\n  - {name: nation, location: {nation}, colour: red}\n", ["colour"]),
    "missing-file": ("tables:\n  - {name: t, location: missing.parquet}\n", ["missing.parquet"]),
    "duplicate-table": ("tables:\n  - {name: dup_t, location: {nation}}\n  - {name: dup_t, location: {nation}}\n",
                        ["dup_t"]),
    "not-yaml": ("tables: [\n", ["line"]),
    "no-tables": ("catalog: quiver\n", ["tables"]),
}


@pytest.mark.parametrize("case", list(CATALOGS))
def test_invalid_catalog_is_refused_at_start(case, tmp_path, data_dir):
    text, words = CATALOGS[case]
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(text.replace("{nation}", str(data_dir / "nation.parquet")))
    result = subprocess.run([QUIVER_BIN, "worker", "--listen", f"127.0.0.1:{free_port()}",
                             "--catalog", str(catalog)],
                            env=quiver_env(QUIVER_TICKET_KEY="k"), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stderr
    assert str(catalog) in result.stderr, result.stderr
    for w in words:
        assert w in result.stderr, result.stderr


def test_catalog_file_that_does_not_exist(tmp_path):
    catalog = tmp_path / "nowhere.yaml"
    result = subprocess.run([QUIVER_BIN, "worker", "--listen", f"127.0.0.1:{free_port()}",
                             "--catalog", str(catalog)],
                            env=quiver_env(QUIVER_TICKET_KEY="k"), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert str(catalog) in result.stderr and "No such file" in result.stderr, result.stderr


def test_catalog_table_that_is_not_parquet(tmp_path):
    (tmp_path / "t.parquet").write_text("not a parquet file")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("tables:\n  - {name: broken_t, location: t.parquet}\n")
    result = subprocess.run([QUIVER_BIN, "worker", "--listen", f"127.0.0.1:{free_port()}",
                             "--catalog", str(catalog)],
                            env=quiver_env(QUIVER_TICKET_KEY="k"), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    # Names the table and the file that is not Parquet, and says why.
    assert "broken_t" in result.stderr and str(tmp_path / "t.parquet") in result.stderr, result.stderr
    assert "Parquet" in result.stderr, result.stderr
