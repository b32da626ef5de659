"""The metadata BI tools read on connect: GetSqlInfo as the JDBC driver's DatabaseMetaData and
ADBC's GetInfo read it, GetXdbcTypeInfo, the key commands (answered, empty), and catalog
browsing limited to what a tenant may read."""

import hashlib
import subprocess

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow.flight as flight
import pytest

import flight_sql
from conftest import TABLES

# SqlInfo codes the Flight SQL JDBC driver's DatabaseMetaData reads (FlightSql.proto numbers).
JDBC_INFO = {
    0, 1, 2, 3, 4, 8, 9,                      # server name, versions, read-only, SQL, txn, cancel
    500, 501, 502, 503, 504, 505, 506, 507,   # DDL, identifier case and quote, null ordering
    508, 509, 510, 511, 512, 513, 514,        # keywords, function lists, escapes
    515, 516, 517, 518, 519, 520, 521, 522, 523, 524, 525, 526, 527, 528,
    529, 530, 531, 532, 533, 534, 535, 536, 537, 538, 539, 540,
    *range(541, 562),                         # limits
    562, 563, 564, 565, 566, 567, 568, 569, 570, 571, 572, 573, 574, 575, 576,
}


@pytest.fixture(scope="module")
def client(quiver):
    c = flight.connect(quiver.endpoint)
    yield c
    c.close()


def test_sql_info_covers_what_jdbc_reads(client):
    _, t = flight_sql.command(client, flight_sql.get_sql_info())
    values = {r["info_name"]: r["value"] for r in t.to_pylist()}
    assert JDBC_INFO <= set(values), sorted(JDBC_INFO - set(values))
    assert values[504] == '"'                   # identifier quote
    assert values[9] is True                    # cancel supported
    assert values[3] is True                    # read-only
    assert "SUBSTRING" in values[510]           # string functions
    assert dict(values[517])                    # SupportsConvert: a non-empty map
    # Asking for some codes answers those only.
    _, some = flight_sql.command(client, flight_sql.get_sql_info(504, 531))
    assert sorted(some.column("info_name").to_pylist()) == [504, 531]


def test_adbc_get_info(quiver):
    with flightsql.connect(quiver.endpoint, autocommit=True) as conn:
        info = conn.adbc_get_info()
    assert info["vendor_name"] == "Quiver"
    assert info["vendor_version"]
    assert info["vendor_arrow_version"] == "59.3"
    assert info["driver_name"]


def test_xdbc_type_info(client):
    _, t = flight_sql.command(client, flight_sql.get_xdbc_type_info())
    names = t.column("type_name").to_pylist()
    for expected in ["BIGINT", "INTEGER", "DOUBLE", "DECIMAL", "VARCHAR", "DATE", "TIMESTAMP", "BOOLEAN"]:
        assert expected in names, names
    # Filtered by JDBC type code: BIGINT is -5.
    _, bigint = flight_sql.command(client, flight_sql.get_xdbc_type_info(-5))
    assert bigint.column("type_name").to_pylist() == ["BIGINT"]


@pytest.mark.parametrize("cmd, first_columns", [
    (flight_sql.get_primary_keys("nation"), ["catalog_name", "db_schema_name", "table_name", "column_name"]),
    (flight_sql.get_exported_keys("nation"), ["pk_catalog_name", "pk_db_schema_name", "pk_table_name"]),
    (flight_sql.get_imported_keys("nation"), ["pk_catalog_name", "pk_db_schema_name", "pk_table_name"]),
    (flight_sql.get_cross_reference("nation", "customer"), ["pk_catalog_name", "pk_db_schema_name"]),
], ids=["primary", "exported", "imported", "cross_reference"])
def test_key_commands_answer_empty(client, cmd, first_columns):
    info, t = flight_sql.command(client, cmd)
    assert t.num_rows == 0
    assert t.schema.names[:len(first_columns)] == first_columns
    assert info.schema.names == t.schema.names


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def password_hash(password: str) -> str:
    """The Argon2 hash `quiver hash-password` prints for `password`."""
    from conftest import QUIVER_BIN
    out = subprocess.run([QUIVER_BIN, "hash-password"], input=password + "\n", text=True,
                         capture_output=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, data_dir, logs):
    from conftest import Quiver
    config = tmp_path_factory.mktemp("tenants") / "admission.yaml"
    config.write_text(f"""
tenants:
  - name: full
    tokens: ["{token_hash('full-token')}"]
    users: [{{name: alice, password: '{password_hash('alice-password')}'}}]
    catalogs: ["quiver.public"]
  - name: outsider
    tokens: ["{token_hash('outsider-token')}"]
    catalogs: ["elsewhere"]
resource_groups:
  - name: all
""")
    q = Quiver(data_dir, 0.01, 1, ["--config", str(config)], logs)
    yield q
    assert q.stop() == 0


def connect_as(q, token):
    return flightsql.connect(q.endpoint, autocommit=True, db_kwargs={
        adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"})


@pytest.mark.parametrize("depth", ["catalogs", "db_schemas", "tables", "columns", "all"])
def test_objects_are_filtered_by_allowed_catalogs(tenants, depth):
    with connect_as(tenants, "full-token") as conn:
        objects = conn.adbc_get_objects(depth=depth).read_all().to_pylist()
    assert [c["catalog_name"] for c in objects] == ["quiver"]
    if depth != "catalogs":
        schemas = [s["db_schema_name"] for s in objects[0]["catalog_db_schemas"]]
        assert schemas == ["public"]
        if depth != "db_schemas":
            tables = {t["table_name"] for t in objects[0]["catalog_db_schemas"][0]["db_schema_tables"]}
            assert tables == set(TABLES)
    with connect_as(tenants, "outsider-token") as conn:
        hidden = conn.adbc_get_objects(depth=depth).read_all().to_pylist()
    # No catalog, schema or table; the driver stands in an unnamed catalog when the server
    # lists none, and it is empty.
    assert all(c["catalog_name"] != "quiver" and not c["catalog_db_schemas"] for c in hidden), hidden


def test_raw_get_tables_is_filtered_and_queries_agree(tenants):
    client = flight.connect(tenants.endpoint)
    full = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer full-token")])
    outsider = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer outsider-token")])

    def tables(options):
        info = client.get_flight_info(flight.FlightDescriptor.for_command(flight_sql.get_tables()), options)
        return client.do_get(info.endpoints[0].ticket, options).read_all()

    assert set(tables(full).column("table_name").to_pylist()) == set(TABLES)
    assert tables(outsider).num_rows == 0
    # What is hidden is also refused.
    with pytest.raises(flight.FlightUnauthorizedError):
        client.do_get(flight.Ticket(b"SELECT * FROM nation"), outsider).read_all()
    client.close()


def test_handshake_basic_to_bearer(tenants):
    """pyarrow's basic-auth Handshake: the session token it returns works like a bearer token."""
    client = flight.connect(tenants.endpoint)
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.authenticate_basic_token("alice", "wrong")
    header, value = client.authenticate_basic_token("alice", "alice-password")
    assert header.lower() == b"authorization" and value.startswith(b"Bearer "), (header, value)
    options = flight.FlightCallOptions(headers=[(header, value)])
    info = client.get_flight_info(flight.FlightDescriptor.for_command(flight_sql.get_tables()), options)
    tables = client.do_get(info.endpoints[0].ticket, options).read_all()
    assert set(tables.column("table_name").to_pylist()) == set(TABLES)
    client.close()
