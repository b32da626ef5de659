"""Just enough Flight SQL for pyarrow.flight, which has no Flight SQL client of its own.

Flight SQL commands are protobuf messages wrapped in `google.protobuf.Any` and sent as the command
of a FlightDescriptor. The few messages the tests need are encoded by hand here (field numbers from
the Flight SQL `FlightSql.proto`), so the tests depend on nothing but pyarrow.

It also says which gRPC status a pyarrow.flight exception stands for. pyarrow maps the codes to
exception classes like this (arrow/cpp/src/arrow/flight/transport/grpc/util_internal.cc and
transport.cc):

    INVALID_ARGUMENT   -> pa.ArrowInvalid                 "Flight returned invalid argument error, with message: ..."
    NOT_FOUND          -> pa.ArrowKeyError                "Flight returned not found error, with message: ..."
    RESOURCE_EXHAUSTED -> pa.ArrowInvalid                 "gRPC returned resource exhausted error, with message: ..."
    DEADLINE_EXCEEDED  -> flight.FlightTimedOutError
    UNAVAILABLE        -> flight.FlightUnavailableError
    UNAUTHENTICATED    -> flight.FlightUnauthenticatedError
    PERMISSION_DENIED  -> flight.FlightUnauthorizedError
    INTERNAL           -> flight.FlightInternalError
    CANCELLED          -> flight.FlightCancelledError
    UNIMPLEMENTED      -> pa.ArrowNotImplementedError

so INVALID_ARGUMENT and RESOURCE_EXHAUSTED share a class and differ only in the message prefix.
"""

import pyarrow as pa
import pyarrow.flight as flight

_TYPE_PREFIX = b"type.googleapis.com/arrow.flight.protocol.sql."


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _bool_field(number: int, value: bool) -> bytes:
    return _varint(number << 3 | 0) + _varint(int(value))


def _any(message: str, body: bytes) -> bytes:
    return _bytes_field(1, _TYPE_PREFIX + message.encode()) + _bytes_field(2, body)


def statement_query(sql: str) -> bytes:
    """CommandStatementQuery { string query = 1; }"""
    return _any("CommandStatementQuery", _bytes_field(1, sql.encode()))


def get_catalogs() -> bytes:
    return _any("CommandGetCatalogs", b"")


def get_db_schemas() -> bytes:
    return _any("CommandGetDbSchemas", b"")


def get_table_types() -> bytes:
    return _any("CommandGetTableTypes", b"")


def get_tables(table_name_filter: str | None = None, include_schema: bool = False) -> bytes:
    """CommandGetTables { catalog = 1; db_schema_filter_pattern = 2;
    table_name_filter_pattern = 3; repeated table_types = 4; bool include_schema = 5; }"""
    body = b""
    if table_name_filter is not None:
        body += _bytes_field(3, table_name_filter.encode())
    if include_schema:
        body += _bool_field(5, True)
    return _any("CommandGetTables", body)


def get_sql_info(*codes: int) -> bytes:
    """CommandGetSqlInfo { repeated uint32 info = 1; } (packed)"""
    packed = b"".join(_varint(c) for c in codes)
    return _any("CommandGetSqlInfo", _bytes_field(1, packed) if codes else b"")


# SqlInfo codes
FLIGHT_SQL_SERVER_NAME = 0
FLIGHT_SQL_SERVER_VERSION = 1
FLIGHT_SQL_SERVER_ARROW_VERSION = 2


def command(client: flight.FlightClient, cmd: bytes) -> tuple[flight.FlightInfo, pa.Table]:
    """GetFlightInfo(command) then DoGet of every endpoint's ticket, on the same connection."""
    info = client.get_flight_info(flight.FlightDescriptor.for_command(cmd))
    assert info.endpoints, "GetFlightInfo returned no endpoint"
    tables = [client.do_get(e.ticket).read_all() for e in info.endpoints]
    return info, pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def status_of(exc: BaseException) -> str:
    """The gRPC status code a pyarrow.flight exception stands for (see the module docstring)."""
    msg = str(exc)
    if isinstance(exc, flight.FlightTimedOutError):
        return "DEADLINE_EXCEEDED"
    if isinstance(exc, flight.FlightUnavailableError):
        return "UNAVAILABLE"
    if isinstance(exc, flight.FlightUnauthenticatedError):
        return "UNAUTHENTICATED"
    if isinstance(exc, flight.FlightUnauthorizedError):
        return "PERMISSION_DENIED"
    if isinstance(exc, flight.FlightCancelledError):
        return "CANCELLED"
    if isinstance(exc, flight.FlightInternalError):
        return "INTERNAL"
    if isinstance(exc, pa.ArrowInvalid):
        if msg.startswith("gRPC returned resource exhausted error"):
            return "RESOURCE_EXHAUSTED"
        if msg.startswith("Flight returned invalid argument error"):
            return "INVALID_ARGUMENT"
        return "INVALID_ARGUMENT?"  # an Invalid raised on the client side, not by the server
    if isinstance(exc, pa.ArrowKeyError) and msg.startswith("Flight returned not found error"):
        return "NOT_FOUND"
    if isinstance(exc, pa.ArrowNotImplementedError):
        return "UNIMPLEMENTED"
    return f"other ({type(exc).__name__})"


def server_message(exc: BaseException) -> str:
    """The status message the server sent, without pyarrow's prefix and client debug context."""
    msg = str(exc)
    if ", with message: " in msg:
        msg = msg.split(", with message: ", 1)[1]
    return msg.split(". gRPC client debug context:", 1)[0]
