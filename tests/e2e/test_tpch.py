"""All 22 TPC-H queries through the gateway (ADBC, which prepares each statement) give the same
answers as DuckDB on the same Parquet files."""

import datetime
import decimal
import math

import adbc_driver_flightsql.dbapi as flightsql
import duckdb
import pyarrow.flight as flight
import pytest

from conftest import QUERIES

TABLES = ["region", "nation", "supplier", "part", "partsupp", "customer", "orders", "lineitem"]


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


def normalise(v):
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, datetime.datetime):
        return v.date() if v.time() == datetime.time() else v
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return v
    return v


def same(a, b) -> bool:
    a, b = normalise(a), normalise(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    return a == b


def rows_of(table):
    cols = [c.to_pylist() for c in table.columns]
    return [tuple(c[i] for c in cols) for i in range(table.num_rows)]


@pytest.mark.parametrize("n", range(1, 23))
def test_tpch_query_matches_duckdb(n, adbc, duck):
    sql = (QUERIES / f"q{n:02d}.sql").read_text()
    with adbc.cursor() as cur:
        cur.execute(sql)
        ours = rows_of(cur.fetch_arrow_table())
    theirs = duck.execute(sql).fetchall()
    assert len(ours) == len(theirs), f"q{n}: {len(ours)} rows, DuckDB {len(theirs)}"
    if "order by" not in sql.lower():
        ours, theirs = sorted(ours, key=repr), sorted(theirs, key=repr)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert len(a) == len(b)
        assert all(same(x, y) for x, y in zip(a, b)), f"q{n} row {i}: {a} != {b}"


def test_tpch_q1_through_flight_sql_and_plain_ticket(quiver, duck):
    sql = (QUERIES / "q01.sql").read_text()
    client = flight.connect(quiver.endpoint)
    plain = client.do_get(flight.Ticket(sql.encode())).read_all()
    info = client.get_flight_info(flight.FlightDescriptor.for_command(sql.encode()))
    via_info = client.do_get(info.endpoints[0].ticket).read_all()
    expected = duck.execute(sql).fetchall()
    for got in (rows_of(plain), rows_of(via_info)):
        assert len(got) == len(expected) == 4
        assert all(same(x, y) for a, b in zip(got, expected) for x, y in zip(a, b))
