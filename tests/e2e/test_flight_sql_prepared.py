"""Prepared statements with parameters, the way the Flight SQL JDBC driver and ADBC run them:
create (parameter and result schemas), bind with DoPut, execute, close; and the same through raw
Flight calls, to check the handle is stateless and bound values are checked."""

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import flight_sql

# TPC-H's nation table is fixed: key 7 is GERMANY, key 12 is JAPAN.
BY_KEY = "SELECT n_name FROM nation WHERE n_nationkey = ?"


@pytest.fixture(scope="module")
def conn(quiver):
    with flightsql.connect(quiver.endpoint, autocommit=True) as c:
        yield c


def test_parameterised_queries_through_adbc(conn):
    with conn.cursor() as cur:
        cur.execute(BY_KEY, parameters=(7,))
        assert cur.fetchall() == [("GERMANY",)]
        # The same statement again with another value, and with two parameters of two types.
        cur.execute(BY_KEY, parameters=(12,))
        assert cur.fetchall() == [("JAPAN",)]
        cur.execute("SELECT count(*) AS n FROM nation WHERE n_regionkey = ? AND n_name LIKE ?",
                    parameters=(3, "%A%"))
        assert cur.fetchall() == [(4,)]  # Europe: FRANCE, GERMANY, ROMANIA, RUSSIA (not UK)


def test_adbc_prepare_reports_the_parameter_schema(conn):
    with conn.cursor() as cur:
        schema = cur.adbc_prepare(
            "SELECT n_name FROM nation WHERE n_nationkey = ? AND n_regionkey < ?")
        assert schema.names == ["$1", "$2"]
        assert schema.field("$1").type == pa.int64()


def test_wrong_parameter_type_is_a_clear_error(conn):
    with conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error) as err:
            cur.execute(BY_KEY, parameters=("seven",))
        assert err.value.status_code == adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT, err.value
        assert "parameter $1 expects" in str(err.value), err.value


def test_raw_prepared_statement_is_stateless(quiver):
    client = flight.connect(quiver.endpoint)
    created = flight_sql.create_prepared_statement(client, BY_KEY)
    assert created["dataset_schema"].names == ["n_name"]
    assert created["parameter_schema"].names == ["$1"]
    unbound = created["handle"]

    # Executing before binding is refused, and says what to do.
    with pytest.raises(pa.ArrowInvalid) as err:
        client.get_flight_info(flight.FlightDescriptor.for_command(
            flight_sql.prepared_statement_query(unbound)))
    assert flight_sql.status_of(err.value) == "INVALID_ARGUMENT"
    assert "bind them with DoPut" in flight_sql.server_message(err.value)

    # Binding answers with a new handle; the old one is not changed by it.
    params = pa.record_batch([pa.array([7], pa.int32())], names=["key"])
    bound = flight_sql.bind_parameters(client, unbound, params)
    assert bound != unbound
    client.close()

    # A fresh connection, as to another gateway replica, runs it; each run may land on either
    # worker, so run it a few times.
    other = flight.connect(quiver.endpoint)
    for _ in range(4):
        _, table = flight_sql.command(other, flight_sql.prepared_statement_query(bound))
        assert table.column("n_name").to_pylist() == ["GERMANY"]

    # An altered handle is refused before anything runs.
    forged = bound.replace(b"SELECT", b"SELEKT")
    with pytest.raises(flight.FlightUnauthenticatedError):
        other.get_flight_info(flight.FlightDescriptor.for_command(
            flight_sql.prepared_statement_query(forged)))

    # Closing is accepted (handles hold no server state).
    close = flight_sql._any("ActionClosePreparedStatementRequest", flight_sql._bytes_field(1, bound))
    list(other.do_action(flight.Action("ClosePreparedStatement", close)))
    other.close()


@pytest.mark.parametrize("params, message", [
    (pa.record_batch([pa.array([1]), pa.array([2])], names=["a", "b"]),
     "takes 1 parameter(s), 2 were bound"),
    (pa.record_batch([pa.array([1, 2])], names=["a"]), "exactly one row"),
    (pa.record_batch([pa.array([1 << 40])], names=["a"]), "parameter $1"),
])
def test_raw_bind_checks_values(quiver, params, message):
    client = flight.connect(quiver.endpoint)
    created = flight_sql.create_prepared_statement(
        client, "SELECT count(*) FROM part WHERE p_size = ?")
    assert created["parameter_schema"].field("$1").type == pa.int32()
    with pytest.raises(pa.ArrowInvalid) as err:
        flight_sql.bind_parameters(client, created["handle"], params)
    assert flight_sql.status_of(err.value) == "INVALID_ARGUMENT", err.value
    assert message in flight_sql.server_message(err.value)
    client.close()
