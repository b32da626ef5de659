"""All 22 TPC-H queries through the gateway give the same answers as DuckDB on the same Parquet
files: through ADBC (which prepares every statement), through the raw Flight SQL statement flow
(GetFlightInfo(CommandStatementQuery) -> DoGet) and through a plain DoGet whose ticket is the SQL."""

import datetime
import decimal
import math
import re

import adbc_driver_flightsql.dbapi as flightsql
import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import flight_sql
from conftest import QUERIES, TABLES

ALL = range(1, 23)
# The other two paths run a sample that covers subqueries, CTEs, outer joins, LIMIT and strings.
SAMPLE = [1, 2, 3, 6, 13, 15, 18, 22]


def sql_of(n: int) -> str:
    return (QUERIES / f"q{n:02d}.sql").read_text()


@pytest.fixture(scope="module")
def duck(data_dir):
    con = duckdb.connect()
    for t in TABLES:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data_dir / (t + '.parquet')}')")
    return con


@pytest.fixture(scope="module")
def adbc(quiver):
    with flightsql.connect(quiver.endpoint, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def client(quiver):
    c = flight.connect(quiver.endpoint)
    yield c
    c.close()


# --- comparing two results ------------------------------------------------------------------


def normalise(v):
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, datetime.datetime) and v.time() == datetime.time():
        return v.date()
    return v


def resolution(v) -> float:
    """The smallest step a value's type can show: a decimal's last digit, else nothing.

    DataFusion's avg of a DECIMAL(15,2) is a DECIMAL(19,6) (truncated to 6 places) where DuckDB
    returns a DOUBLE, so a decimal may differ from the exact value by one unit of its scale."""
    if isinstance(v, decimal.Decimal) and v.is_finite():
        return 10.0 ** v.as_tuple().exponent
    return 0.0


def same(a, b) -> bool:
    tol = max(resolution(a), resolution(b), 1e-12)
    a, b = normalise(a), normalise(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=tol)
    return a == b


def same_row(a, b) -> bool:
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


def order_keys(sql: str) -> list[str]:
    """Output columns of the outermost ORDER BY (the last one in these files), without ASC/DESC."""
    parts = re.split(r"\border\s+by\b", sql, flags=re.IGNORECASE)
    if len(parts) == 1:
        return []
    clause = re.split(r"\blimit\b", parts[-1], flags=re.IGNORECASE)[0]
    return [k.split()[0] for k in clause.split(",")]


def runs(rows: list[tuple], key_idx: list[int]) -> list[list[tuple]]:
    """Consecutive rows with equal sort keys (the whole result when there is no ORDER BY)."""
    if not key_idx:
        return [rows]
    out: list[list[tuple]] = []
    for r in rows:
        if out and same_row([out[-1][-1][i] for i in key_idx], [r[i] for i in key_idx]):
            out[-1].append(r)
        else:
            out.append([r])
    return out


def assert_same_result(label: str, sql: str, ours: pa.Table, duck: duckdb.DuckDBPyConnection):
    cur = duck.execute(sql)
    names = [d[0] for d in cur.description]
    theirs = cur.fetchall()
    assert ours.column_names == names, f"{label}: columns {ours.column_names}, DuckDB {names}"
    cols = [c.to_pylist() for c in ours.columns]
    mine = [tuple(c[i] for c in cols) for i in range(ours.num_rows)]
    assert len(mine) == len(theirs), f"{label}: {len(mine)} rows, DuckDB {len(theirs)}"

    keys = order_keys(sql)
    assert all(k in names for k in keys), f"{label}: ORDER BY keys {keys} are not all output columns"
    key_idx = [names.index(k) for k in keys]
    # 1. The order: the sequence of sort keys is DuckDB's.
    for i, (a, b) in enumerate(zip(mine, theirs)):
        ka, kb = [a[j] for j in key_idx], [b[j] for j in key_idx]
        assert same_row(ka, kb), f"{label} row {i}: sort keys {ka}, DuckDB {kb}"
    # 2. The rows: within each run of equal keys (rows a database may return in any order), the
    #    same multiset of rows, values compared with a relative tolerance of 1e-6.
    start = 0
    for run in runs(theirs, key_idx):
        candidates = mine[start:start + len(run)]
        for row in run:
            match = next((j for j, c in enumerate(candidates) if same_row(c, row)), None)
            assert match is not None, \
                f"{label}: DuckDB row {row} is missing; rows here {candidates[:5]}"
            candidates.pop(match)
        start += len(run)


# --- the tests --------------------------------------------------------------------------------


def test_query_files_are_single_statements():
    for n in ALL:
        sql = sql_of(n).strip()
        assert sql and not sql.endswith(";") and ";" not in sql, f"q{n:02d}.sql"


@pytest.mark.parametrize("n", ALL)
def test_tpch_adbc_matches_duckdb(n, adbc, duck):
    sql = sql_of(n)
    with adbc.cursor() as cur:
        cur.execute(sql)
        ours = cur.fetch_arrow_table()
    assert_same_result(f"q{n}", sql, ours, duck)


@pytest.mark.parametrize("n", SAMPLE)
def test_tpch_flight_sql_statement_matches_duckdb(n, client, duck, quiver):
    sql = sql_of(n)
    info, ours = flight_sql.command(client, flight_sql.statement_query(sql))
    # The schema announced by GetFlightInfo is the one streamed.
    assert info.schema.names == ours.schema.names
    assert [f.type for f in info.schema] == [f.type for f in ours.schema], (info.schema, ours.schema)
    # Results come through the gateway: no endpoint sends the client elsewhere (a worker).
    for e in info.endpoints:
        for loc in e.locations:
            assert loc.uri.decode() in (quiver.endpoint, "arrow-flight-reuse-connection://?"), loc
    assert_same_result(f"q{n} (Flight SQL)", sql, ours, duck)


@pytest.mark.parametrize("n", SAMPLE)
def test_tpch_plain_sql_ticket_matches_duckdb(n, client, duck):
    sql = sql_of(n)
    ours = client.do_get(flight.Ticket(sql.encode())).read_all()
    assert_same_result(f"q{n} (plain ticket)", sql, ours, duck)


def test_prepared_statement_runs_twice(adbc, duck):
    sql = sql_of(6)
    with adbc.cursor() as cur:
        cur.adbc_prepare(sql)
        cur.execute(sql)
        first = cur.fetch_arrow_table()
        cur.execute(sql)
        second = cur.fetch_arrow_table()
    assert first.equals(second)
    assert_same_result("q6 (prepared twice)", sql, first, duck)


@pytest.mark.parametrize("name", ["nation", "public.nation", "quiver.public.nation"])
def test_default_catalog_and_schema(name, client):
    t = client.do_get(flight.Ticket(f"SELECT count(*) AS n FROM {name}".encode())).read_all()
    assert t.column("n").to_pylist() == [25]


def test_comparison_detects_a_wrong_answer(adbc, duck):
    """The comparison is not vacuous: a result that differs in one value, or in order, fails."""
    sql = sql_of(1)
    with adbc.cursor() as cur:
        cur.execute(sql)
        ours = cur.fetch_arrow_table()
    wrong_value = ours.set_column(2, "sum_qty", pa.array([float(v.as_py()) * 1.001 for v in ours.column(2)]))
    with pytest.raises(AssertionError, match="missing"):
        assert_same_result("q1 altered", sql, wrong_value, duck)
    with pytest.raises(AssertionError, match="sort keys"):
        assert_same_result("q1 reversed", sql, pa.concat_tables([ours.slice(i, 1) for i in reversed(range(ours.num_rows))]), duck)
