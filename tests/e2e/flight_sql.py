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


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | 0) + _varint(value & 0xFFFFFFFFFFFFFFFF)


def parse_message(data: bytes) -> dict[int, list]:
    """A protobuf message's fields by number: varints as ints, length-delimited as bytes."""
    fields: dict[int, list] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 2:
            n = varint()
            value, i = data[i:i + n], i + n
        else:
            raise ValueError(f"wire type {wire} not handled")
        fields.setdefault(number, []).append(value)
    return fields


def unpack_any(data: bytes) -> tuple[str, bytes]:
    """google.protobuf.Any { string type_url = 1; bytes value = 2; }"""
    f = parse_message(data)
    return f[1][0].decode(), f.get(2, [b""])[0]


def create_prepared_statement(client: flight.FlightClient, sql: str, options=None) -> dict:
    """DoAction CreatePreparedStatement; returns the handle and both schemas."""
    body = _any("ActionCreatePreparedStatementRequest", _bytes_field(1, sql.encode()))
    results = list(client.do_action(flight.Action("CreatePreparedStatement", body), options))
    type_url, value = unpack_any(results[0].body.to_pybytes())
    assert type_url.endswith("ActionCreatePreparedStatementResult"), type_url
    f = parse_message(value)
    read = lambda n: pa.ipc.read_schema(pa.py_buffer(f[n][0])) if n in f else pa.schema([])
    return {"handle": f[1][0], "dataset_schema": read(2), "parameter_schema": read(3)}


def prepared_statement_query(handle: bytes) -> bytes:
    """CommandPreparedStatementQuery { bytes prepared_statement_handle = 1; }"""
    return _any("CommandPreparedStatementQuery", _bytes_field(1, handle))


def bind_parameters(client: flight.FlightClient, handle: bytes, params: pa.RecordBatch,
                    options=None) -> bytes:
    """DoPut of the parameter batch; returns the handle from DoPutPreparedStatementResult."""
    descriptor = flight.FlightDescriptor.for_command(prepared_statement_query(handle))
    writer, reader = client.do_put(descriptor, params.schema, options)
    writer.write_batch(params)
    writer.done_writing()
    metadata = reader.read()
    writer.close()
    return parse_message(metadata.to_pybytes())[1][0]


def get_xdbc_type_info(data_type: int | None = None) -> bytes:
    """CommandGetXdbcTypeInfo { optional int32 data_type = 1; }"""
    return _any("CommandGetXdbcTypeInfo", b"" if data_type is None else _int_field(1, data_type))


def get_primary_keys(table: str) -> bytes:
    """CommandGetPrimaryKeys { catalog = 1; db_schema = 2; string table = 3; }"""
    return _any("CommandGetPrimaryKeys", _bytes_field(3, table.encode()))


def get_exported_keys(table: str) -> bytes:
    return _any("CommandGetExportedKeys", _bytes_field(3, table.encode()))


def get_imported_keys(table: str) -> bytes:
    return _any("CommandGetImportedKeys", _bytes_field(3, table.encode()))


def get_cross_reference(pk_table: str, fk_table: str) -> bytes:
    """CommandGetCrossReference { pk_catalog = 1; pk_db_schema = 2; string pk_table = 3;
    fk_catalog = 4; fk_db_schema = 5; string fk_table = 6; }"""
    return _any("CommandGetCrossReference",
                _bytes_field(3, pk_table.encode()) + _bytes_field(6, fk_table.encode()))


def cancel_flight_info(client: flight.FlightClient, info: flight.FlightInfo, options=None) -> int:
    """DoAction CancelFlightInfo { FlightInfo info = 1; }; returns the CancelStatus
    (0 unspecified, 1 cancelled, 2 cancelling, 3 not cancellable)."""
    body = _bytes_field(1, info.serialize())
    results = list(client.do_action(flight.Action("CancelFlightInfo", body), options))
    return parse_message(results[0].body.to_pybytes()).get(1, [0])[0]


def cancel_query(client: flight.FlightClient, info: flight.FlightInfo, options=None) -> int:
    """The older DoAction CancelQuery { bytes info = 1; } in an Any; returns the CancelResult."""
    body = _any("ActionCancelQueryRequest", _bytes_field(1, info.serialize()))
    results = list(client.do_action(flight.Action("CancelQuery", body), options))
    _, value = unpack_any(results[0].body.to_pybytes())
    return parse_message(value).get(1, [0])[0]


# CancelStatus
CANCEL_STATUS_CANCELLED = 1
CANCEL_STATUS_NOT_CANCELLABLE = 3

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
        if "precondition" in msg.split(",", 1)[0]:
            return "FAILED_PRECONDITION"
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
