"""Metadata the way ADBC and BI tools ask for it, checked against the Parquet files it describes."""

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

import flight_sql
from conftest import TABLES


@pytest.fixture(scope="module")
def conn(quiver):
    with flightsql.connect(quiver.endpoint, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def client(quiver):
    c = flight.connect(quiver.endpoint)
    yield c
    c.close()


@pytest.fixture(scope="module")
def parquet_schemas(data_dir) -> dict[str, pa.Schema]:
    return {t: pq.read_schema(data_dir / f"{t}.parquet") for t in TABLES}


def logical(t: pa.DataType) -> pa.DataType:
    """Strings are strings whatever their layout (utf8, large_utf8, utf8_view)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    return t


def test_get_info_names_the_server(conn, client):
    info = conn.adbc_get_info()
    assert info["vendor_name"] and "quiver" in info["vendor_name"].lower(), info
    assert info["vendor_version"], info
    # The same values as GetSqlInfo answers a raw Flight SQL client.
    _, t = flight_sql.command(client, flight_sql.get_sql_info(
        flight_sql.FLIGHT_SQL_SERVER_NAME, flight_sql.FLIGHT_SQL_SERVER_VERSION))
    values = {r["info_name"]: r["value"] for r in t.to_pylist()}
    assert values[flight_sql.FLIGHT_SQL_SERVER_NAME] == info["vendor_name"]
    assert values[flight_sql.FLIGHT_SQL_SERVER_VERSION] == info["vendor_version"]


@pytest.mark.parametrize("depth", ["catalogs", "db_schemas", "tables", "columns", "all"])
def test_get_objects_at_every_depth(conn, depth, parquet_schemas):
    objects = conn.adbc_get_objects(depth=depth).read_all().to_pylist()
    catalogs = {c["catalog_name"]: c for c in objects}
    assert "quiver" in catalogs, objects
    if depth == "catalogs":
        return
    schemas = {s["db_schema_name"]: s for s in catalogs["quiver"]["catalog_db_schemas"] or []}
    assert "public" in schemas, catalogs["quiver"]
    if depth == "db_schemas":
        return
    tables = {t["table_name"]: t for t in schemas["public"]["db_schema_tables"] or []}
    assert set(tables) == set(TABLES)
    assert all(t["table_type"] == "TABLE" for t in tables.values()), tables
    if depth in ("columns", "all"):
        for name, table in tables.items():
            columns = sorted(table["table_columns"] or [], key=lambda c: c["ordinal_position"])
            assert [c["column_name"] for c in columns] == parquet_schemas[name].names, name
            assert [c["ordinal_position"] for c in columns] == list(range(1, len(columns) + 1))


def test_filtered_objects(conn):
    objects = conn.adbc_get_objects(depth="tables", table_name_filter="line%").read_all().to_pylist()
    names = [t["table_name"] for c in objects for s in c["catalog_db_schemas"] or []
             for t in s["db_schema_tables"] or []]
    assert names == ["lineitem"]


@pytest.mark.parametrize("qualified", [False, True])
def test_table_schema(conn, parquet_schemas, qualified):
    kwargs = {"catalog_filter": "quiver", "db_schema_filter": "public"} if qualified else {}
    schema = conn.adbc_get_table_schema("lineitem", **kwargs)
    expected = parquet_schemas["lineitem"]
    assert schema.names == expected.names
    assert [logical(f.type) for f in schema] == [logical(f.type) for f in expected]
    # What tpchgen-arrow writes: money as Decimal128(15, 2), dates as Date32.
    assert schema.field("l_extendedprice").type == pa.decimal128(15, 2)
    assert schema.field("l_shipdate").type == pa.date32()
    assert schema.field("l_orderkey").type == pa.int64()


def test_table_schema_of_unknown_table(conn):
    with pytest.raises(adbc_driver_manager.Error) as err:
        conn.adbc_get_table_schema("no_such_table")
    assert err.value.status_code == adbc_driver_manager.AdbcStatusCode.NOT_FOUND, err.value


def test_table_types(conn, client):
    assert "TABLE" in conn.adbc_get_table_types()
    _, t = flight_sql.command(client, flight_sql.get_table_types())
    assert t.schema.names == ["table_type"]
    assert "TABLE" in t.column("table_type").to_pylist()


def test_raw_catalogs_and_schemas(client):
    _, catalogs = flight_sql.command(client, flight_sql.get_catalogs())
    assert catalogs.column("catalog_name").to_pylist() == ["quiver"]
    _, schemas = flight_sql.command(client, flight_sql.get_db_schemas())
    assert ("quiver", "public") in zip(schemas.column("catalog_name").to_pylist(),
                                       schemas.column("db_schema_name").to_pylist())


def test_raw_get_tables_with_schemas(client, parquet_schemas):
    _, t = flight_sql.command(client, flight_sql.get_tables(include_schema=True))
    assert t.schema.names == ["catalog_name", "db_schema_name", "table_name", "table_type", "table_schema"]
    rows = {r["table_name"]: r for r in t.to_pylist()}
    assert set(rows) == set(TABLES)
    for name, r in rows.items():
        assert (r["catalog_name"], r["db_schema_name"], r["table_type"]) == ("quiver", "public", "TABLE")
        schema = pa.ipc.read_schema(pa.py_buffer(r["table_schema"]))
        assert schema.names == parquet_schemas[name].names, name
        assert [logical(f.type) for f in schema] == [logical(f.type) for f in parquet_schemas[name]], name
    # Without include_schema there is no schema column; a name filter selects.
    _, t = flight_sql.command(client, flight_sql.get_tables(table_name_filter="nation"))
    assert "table_schema" not in t.schema.names
    assert t.column("table_name").to_pylist() == ["nation"]
