"""Shared machinery of the hostile-input suites (test_hostile_*.py).

One `quiver up` per module (SF 0.01, 2 workers) with three tenants:

    full      catalogs ["*"]             may read everything
    outsider  catalogs ["other"]         a catalog that does not exist: may read no quiver table
    scoped    catalogs ["quiver.public"] the TPC-H tables, but not information_schema

Every hostile input is sent through one of a few client paths (`VIA`): Flight SQL
GetFlightInfo + DoGet, a plain DoGet whose ticket is SQL, ADBC, or a Flight SQL prepared statement
created with DoAction. Each path returns an `Outcome` (rows seen, result, error, gRPC status),
and `refused` checks an outcome is the expected refusal with no row.

After every test the deployment is checked (`Deployment.check`): the `quiver up` process (which
runs the gateway) and both workers alive, and `SELECT 1` answering 1. A test that breaks the
deployment fails there, with the log tail; the next test starts on a fresh deployment
(`Deployment.ensure`), so one crash does not turn every later test into a confusing failure.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import flight_sql
from conftest import Quiver, alive

TOKENS = {
    "full": "full-token-0123456789abcdef",
    "outsider": "outsider-token-0123456789abcdef",
    "scoped": "scoped-token-0123456789abcdef",
}
CATALOGS = {"full": ["*"], "outsider": ["other"], "scoped": ["quiver.public"]}
WORKERS = 2
# Every call has a deadline, so a hung gateway fails the test instead of stalling the run.
CALL_TIMEOUT = 60.0


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def admission_config() -> str:
    tenants = "".join(
        f"  - name: {name}\n"
        f"    tokens: [\"{token_hash(TOKENS[name])}\"]\n"
        f"    catalogs: {json.dumps(CATALOGS[name])}\n"
        for name in TOKENS)
    # No rate limits; one resource group without a concurrency cap.
    return (f"tenants:\n{tenants}"
            "resource_groups:\n"
            "  - name: all\n"
            "    max_queued: 1000\n"
            "selectors:\n"
            "  - {group: all}\n")


def options(token: str | None = None, header: bytes | None = None,
            timeout: float = CALL_TIMEOUT) -> flight.FlightCallOptions:
    """Call options with `authorization: Bearer <token>`, or with the raw `header` value."""
    if header is None and token is not None:
        header = f"Bearer {token}".encode()
    headers = [(b"authorization", header)] if header is not None else []
    return flight.FlightCallOptions(headers=headers, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# gRPC statuses, from pyarrow and ADBC exceptions

_PREFIX = re.compile(r"^(?:Flight|gRPC) returned ([a-z -]+?) error")
_ADBC_CODE = re.compile(r"\((\w+); \w+\)")
_ADBC_STATUS = {
    # AdbcStatusCode -> gRPC code, as the Flight SQL driver maps them
    "UNAUTHORIZED": "PERMISSION_DENIED",
    "UNAUTHENTICATED": "UNAUTHENTICATED",
    "INVALID_ARGUMENT": "INVALID_ARGUMENT",
    "NOT_IMPLEMENTED": "UNIMPLEMENTED",
    "NOT_FOUND": "NOT_FOUND",
    "INTERNAL": "INTERNAL",
    "IO": "UNAVAILABLE",
    "TIMEOUT": "DEADLINE_EXCEEDED",
    "CANCELLED": "CANCELLED",
    "UNKNOWN": "UNKNOWN",
    "INVALID_STATE": "FAILED_PRECONDITION",
}


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).upper()


def status(exc: BaseException) -> str:
    """The gRPC status an exception from pyarrow.flight or ADBC stands for."""
    if isinstance(exc, adbc_driver_manager.Error):
        # The Go driver's message ends with "(PermissionDenied; ExecuteQuery)": the gRPC code.
        m = _ADBC_CODE.search(str(exc))
        if m:
            code = _snake(m.group(1))
            return {"CANCELED": "CANCELLED"}.get(code, code)
        code = exc.status_code.name if exc.status_code is not None else "UNKNOWN"
        return _ADBC_STATUS.get(code, f"adbc {code}")
    s = flight_sql.status_of(exc)
    if s == "INVALID_ARGUMENT?" or s.startswith("other"):
        m = _PREFIX.match(str(exc))
        if m:
            s = m.group(1).upper().replace(" ", "_").replace("-", "_")
            s = {"PRECONDITION_FAILED": "FAILED_PRECONDITION"}.get(s, s)
    return s


def message(exc: BaseException) -> str:
    return flight_sql.server_message(exc)


# ---------------------------------------------------------------------------------------------
# Outcomes of one attempt


@dataclass
class Outcome:
    """What one attempt got: the rows it saw (also before a mid-stream error), the result table
    if it completed, and the error if not."""
    rows: int = 0
    table: pa.Table | None = None
    error: BaseException | None = None
    batches: list = field(default_factory=list)
    stage: str = ""  # the call that was running when the error came


    @property
    def status(self) -> str:
        return "OK" if self.error is None else status(self.error)

    def describe(self) -> str:
        if self.error is None:
            preview = self.table.slice(0, 3).to_pylist() if self.table is not None else []
            return f"OK with {self.rows} row(s), first {preview}"
        at = f" at {self.stage}" if self.stage else ""
        return f"{self.status}{at}: {message(self.error)[:500]}"


def _drain(reader, out: Outcome) -> None:
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            return
        if chunk.data is not None:
            out.rows += chunk.data.num_rows
            out.batches.append(chunk.data)


def _finish(out: Outcome) -> Outcome:
    if out.error is None:
        out.table = pa.Table.from_batches(out.batches) if out.batches else pa.table({})
    return out


def run_flight_sql(endpoint: str, sql: str | bytes, token: str | None,
                   header: bytes | None = None) -> Outcome:
    """GetFlightInfo(CommandStatementQuery) then DoGet of each endpoint's ticket. `sql` as bytes
    goes into the query field unchecked (for invalid UTF-8)."""
    out = Outcome()
    opts = options(token, header)
    try:
        raw = sql if isinstance(sql, bytes) else sql.encode()
        cmd = flight_sql._any("CommandStatementQuery", flight_sql._bytes_field(1, raw))
        client = flight.connect(endpoint)
        out.stage = "GetFlightInfo"
        info = client.get_flight_info(flight.FlightDescriptor.for_command(cmd), opts)
        out.stage = "DoGet"
        for ep in info.endpoints:
            _drain(client.do_get(ep.ticket, opts), out)
    except Exception as e:  # noqa: BLE001 - the error is the result
        out.error = e
    return _finish(out)


def run_doget(endpoint: str, sql: str | bytes, token: str | None,
              header: bytes | None = None) -> Outcome:
    """A plain DoGet whose ticket is the SQL text (or the given bytes)."""
    out = Outcome()
    try:
        raw = sql if isinstance(sql, bytes) else sql.encode()
        _drain(flight.connect(endpoint).do_get(flight.Ticket(raw), options(token, header)), out)
    except Exception as e:  # noqa: BLE001
        out.error = e
    return _finish(out)


def run_ticket(endpoint: str, ticket: bytes, token: str | None,
               header: bytes | None = None) -> Outcome:
    return run_doget(endpoint, ticket, token, header)


def adbc_connect(endpoint: str, token: str | None, **extra: str):
    kwargs = {
        adbc_driver_flightsql.DatabaseOptions.TIMEOUT_QUERY.value: str(CALL_TIMEOUT),
        adbc_driver_flightsql.DatabaseOptions.TIMEOUT_FETCH.value: str(CALL_TIMEOUT),
        adbc_driver_flightsql.DatabaseOptions.TIMEOUT_UPDATE.value: str(CALL_TIMEOUT),
        **extra,
    }
    if token is not None:
        kwargs[adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value] = f"Bearer {token}"
    return flightsql.connect(endpoint, autocommit=True, db_kwargs=kwargs)


def run_adbc(endpoint: str, sql: str, token: str | None, params: tuple | None = None,
             **extra: str) -> Outcome:
    """ADBC cursor.execute (with parameters: prepare, bind, execute), reading batch by batch."""
    out = Outcome()
    try:
        out.stage = "connect"
        with adbc_connect(endpoint, token, **extra) as conn, conn.cursor() as cur:
            out.stage = "execute"
            cur.execute(sql, parameters=params)
            out.stage = "fetch"
            reader = cur.fetch_record_batch()
            for batch in reader:
                out.rows += batch.num_rows
                out.batches.append(batch)
    except Exception as e:  # noqa: BLE001
        out.error = e
    return _finish(out)


def run_adbc_prepare(endpoint: str, sql: str, token: str | None) -> Outcome:
    """ADBC adbc_prepare only (CreatePreparedStatement); no row can come back, the outcome says
    whether the statement was refused."""
    out = Outcome()
    try:
        out.stage = "connect"
        with adbc_connect(endpoint, token) as conn, conn.cursor() as cur:
            out.stage = "adbc_prepare"
            cur.adbc_prepare(sql)
    except Exception as e:  # noqa: BLE001
        out.error = e
    return _finish(out)


def run_prepared(endpoint: str, sql: str, token: str | None,
                 params: pa.RecordBatch | None = None, header: bytes | None = None) -> Outcome:
    """Raw Flight SQL prepared statement: DoAction CreatePreparedStatement, DoPut of `params`
    (if any), GetFlightInfo(CommandPreparedStatementQuery), DoGet."""
    out = Outcome()
    opts = options(token, header)
    try:
        client = flight.connect(endpoint)
        out.stage = "CreatePreparedStatement"
        created = flight_sql.create_prepared_statement(client, sql, opts)
        handle = created["handle"]
        if params is not None:
            out.stage = "DoPut (bind)"
            handle = flight_sql.bind_parameters(client, handle, params, opts)
        cmd = flight_sql.prepared_statement_query(handle)
        out.stage = "GetFlightInfo"
        info = client.get_flight_info(flight.FlightDescriptor.for_command(cmd), opts)
        out.stage = "DoGet"
        for ep in info.endpoints:
            _drain(client.do_get(ep.ticket, opts), out)
    except Exception as e:  # noqa: BLE001
        out.error = e
    return _finish(out)


VIA = {
    "flight_sql": lambda ep, sql, token: run_flight_sql(ep, sql, token),
    "doget": lambda ep, sql, token: run_doget(ep, sql, token),
    "adbc": lambda ep, sql, token: run_adbc(ep, sql, token),
    "prepared": lambda ep, sql, token: run_prepared(ep, sql, token),
}


def attempt(fn) -> Outcome:
    """Any other call: `fn()` returns a pyarrow Table, a reader, a list or None."""
    out = Outcome()
    try:
        result = fn()
        if isinstance(result, pa.Table):
            out.batches = result.to_batches()
            out.rows = result.num_rows
        elif isinstance(result, flight.FlightStreamReader):
            _drain(result, out)
        elif isinstance(result, list):
            out.rows = len(result)
    except Exception as e:  # noqa: BLE001
        out.error = e
    return _finish(out)


# ---------------------------------------------------------------------------------------------
# The deployment


class Deployment:
    """A module's `quiver up`, restarted when a test left it broken."""

    def __init__(self, data_dir: Path, logs: Path, config_dir: Path):
        self.data_dir, self.logs = data_dir, logs
        self.config = config_dir / "admission.yaml"
        self.config.write_text(admission_config())
        self.q: Quiver | None = None
        self.restarts: list[str] = []
        self.last_check_ok = False
        self._start()

    def _start(self):
        self.q = Quiver(self.data_dir, 0.01, WORKERS, ["--config", str(self.config)], self.logs)

    @property
    def endpoint(self) -> str:
        return self.q.endpoint

    @property
    def workers(self) -> list[tuple[int, str]]:
        """(pid, endpoint) of the workers announced before the ready line."""
        return self.q.started[:WORKERS]

    @property
    def admin_url(self) -> str:
        return self.q.admin_url

    def pools(self) -> dict[str, dict]:
        with urllib.request.urlopen(self.admin_url + "/v1/pools", timeout=10) as r:
            return {p["pool"]: p for p in json.load(r)["pools"]}

    def processes_problem(self) -> str | None:
        q = self.q
        code = q.proc.poll()
        if code is not None or not alive(q.proc.pid):
            return f"the gateway (`quiver up`, pid {q.proc.pid}) exited with {code}"
        dead = [f"pid {pid} ({ep})" for pid, ep in self.workers if not alive(pid)]
        if dead:
            return f"worker(s) died: {', '.join(dead)}"
        return None

    def select_one_problem(self) -> str | None:
        out = run_doget(self.endpoint, "SELECT 1 AS one", TOKENS["full"])
        if out.error is not None:
            return f"`SELECT 1` through the gateway failed: {out.describe()}"
        values = out.table.column(0).to_pylist() if out.table.num_columns else []
        if values != [1]:
            return f"`SELECT 1` through the gateway answered {values}"
        return None

    def problem(self) -> str | None:
        return self.processes_problem() or self.select_one_problem()

    def check(self):
        """After a test: every process alive and `SELECT 1` answers 1."""
        problem = self.problem()
        self.last_check_ok = problem is None
        if problem:
            pytest.fail(f"after this input the deployment is broken: {problem}\n"
                        f"quiver up stderr tail:\n{self.q.log_tail(40)}", pytrace=False)

    def ensure(self):
        """Before a test: a fresh deployment if an earlier test broke this one."""
        if self.last_check_ok and self.processes_problem() is None:
            return  # the previous test's check just ran the query
        problem = self.problem()
        if problem:
            self.restarts.append(problem)
            self._kill()
            self._start()

    def _kill(self):
        if self.q.proc.poll() is None or any(alive(pid) for pid, _ in self.q.started):
            self.q.kill()
        elif not self.q._log.closed:
            self.q.proc.wait()
            self.q._log.close()

    def close(self):
        if self.processes_problem() is None:
            code = self.q.stop()
            assert code == 0, f"quiver up exited {code} on SIGTERM\n{self.q.log_tail()}"
        else:
            self._kill()


def refused(dep: Deployment, out: Outcome, statuses: set[str] | str, words: str | None = None,
            what: str = "") -> None:
    """`out` is a refusal with one of `statuses`, no row came back, and (if given) the server's
    message matches the regular expression `words` (case-insensitive)."""
    if isinstance(statuses, str):
        statuses = {statuses}
    label = f"{what}: " if what else ""
    assert out.rows == 0, f"{label}{out.rows} row(s) came back: {out.describe()}"
    assert out.error is not None, f"{label}accepted, expected {sorted(statuses)}: {out.describe()}"
    if out.status not in statuses:
        broken = dep.processes_problem()
        note = f"\n(and {broken}; stderr tail:\n{dep.q.log_tail(20)})" if broken else ""
        raise AssertionError(f"{label}expected {sorted(statuses)}, got {out.describe()}{note}")
    if words is not None:
        assert re.search(words, message(out.error), re.I), \
            f"{label}the message should match /{words}/: {message(out.error)[:500]}"


def succeeded(dep: Deployment, out: Outcome, what: str = "") -> pa.Table:
    if out.error is not None:
        broken = dep.processes_problem()
        note = f"\n(and {broken})" if broken else ""
        raise AssertionError(f"{what + ': ' if what else ''}failed: {out.describe()}{note}")
    return out.table


def statement_ticket(endpoint: str, sql: str, token: str) -> bytes:
    """A statement ticket from the gateway's GetFlightInfo."""
    client = flight.connect(endpoint)
    info = client.get_flight_info(
        flight.FlightDescriptor.for_command(flight_sql.statement_query(sql)), options(token))
    assert len(info.endpoints) == 1, info.endpoints
    return info.endpoints[0].ticket.ticket


# ---------------------------------------------------------------------------------------------
# Fixtures: import both into a test module (`from hostile_helpers import dep, healthy`).


@pytest.fixture(scope="module")
def dep(request, data_dir, logs, tmp_path_factory):
    """This module's deployment."""
    d = Deployment(data_dir, logs, tmp_path_factory.mktemp(request.module.__name__))
    yield d
    d.close()


@pytest.fixture(autouse=True)
def healthy(dep):
    """Every test starts on a working deployment and must leave it working."""
    dep.ensure()
    yield
    dep.check()
