"""Metadata the way ADBC and BI tools ask for it."""

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pytest

TPCH = {"region", "nation", "supplier", "part", "partsupp", "customer", "orders", "lineitem"}


@pytest.fixture(scope="module")
def conn(quiver):
    with flightsql.connect(quiver.endpoint, autocommit=True) as c:
        yield c


def test_get_info_names_the_server(conn):
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "Quiver"
    assert info["vendor_version"]


@pytest.mark.parametrize("depth", ["catalogs", "db_schemas", "tables", "columns", "all"])
def test_get_objects_at_every_depth(conn, depth):
    objects = conn.adbc_get_objects(depth=depth).read_all().to_pylist()
    catalogs = {c["catalog_name"]: c for c in objects}
    assert "quiver" in catalogs
    if depth == "catalogs":
        return
    schemas = {s["db_schema_name"]: s for s in catalogs["quiver"]["catalog_db_schemas"]}
    assert "public" in schemas
    if depth == "db_schemas":
        return
    tables = {t["table_name"]: t for t in schemas["public"]["db_schema_tables"]}
    assert set(tables) == TPCH
    assert all(t["table_type"] == "TABLE" for t in tables.values())
    if depth in ("columns", "all"):
        columns = [c["column_name"] for c in tables["nation"]["table_columns"]]
        assert columns == ["n_nationkey", "n_name", "n_regionkey", "n_comment"]


def test_table_schema_and_types(conn):
    schema = conn.adbc_get_table_schema("lineitem")
    assert schema.field("l_shipdate").type == pa.date32()
    assert pa.types.is_decimal(schema.field("l_extendedprice").type)
    assert "TABLE" in conn.adbc_get_table_types()


def test_filtered_objects(conn):
    objects = conn.adbc_get_objects(depth="tables", table_name_filter="line%").read_all().to_pylist()
    names = [t["table_name"] for c in objects for s in c["catalog_db_schemas"] or []
             for t in s["db_schema_tables"] or []]
    assert names == ["lineitem"]
