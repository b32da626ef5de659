"""Hostile input, part 4: the Flight protocol itself. Workers answer only what a gateway admitted,
so every call made straight to a worker is UNAUTHENTICATED; garbage commands, tickets and actions
sent to the gateway are refused with the caller's error (INVALID_ARGUMENT, or UNAUTHENTICATED
for a forged ticket), never INTERNAL and never a crash; and no call gets past the gateway
without valid credentials. After each test every process is alive and `SELECT 1` answers."""

import base64
import random

import pyarrow as pa
import pyarrow.flight as flight
import pytest

import flight_sql
from hostile_helpers import (TOKENS, attempt, dep, healthy, options, refused, run_adbc,  # noqa: F401
                             statement_ticket, token_hash)

IA = "INVALID_ARGUMENT"
UNAUTH = "UNAUTHENTICATED"
Descriptor = flight.FlightDescriptor
FULL = TOKENS["full"]


def create_prepared_body(sql: str) -> bytes:
    return flight_sql._any("ActionCreatePreparedStatementRequest", flight_sql._bytes_field(1, sql.encode()))


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def randbytes(seed: int, n: int = 64) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture()
def real(dep):
    """Genuine material obtained through the gateway as the `full` tenant."""
    client = flight.connect(dep.endpoint)
    ticket = statement_ticket(dep.endpoint, "SELECT 1 AS x", FULL)
    prepared = flight_sql.create_prepared_statement(client, "SELECT ? AS a", options(FULL))["handle"]
    plain = flight_sql.create_prepared_statement(client, "SELECT 2 AS b", options(FULL))["handle"]
    info = client.get_flight_info(Descriptor.for_command(flight_sql.statement_query("SELECT 3 AS c")),
                                  options(FULL))
    client.close()
    return {"ticket": ticket, "prepared": prepared, "plain_prepared": plain, "info": info}


# ---------------------------------------------------------------------------------------------
# 5. Straight to a worker, bypassing the gateway

WORKER_CALLS = {
    "get_flight_info_statement": lambda c, o, r: c.get_flight_info(
        Descriptor.for_command(flight_sql.statement_query("SELECT 1")), o),
    "get_flight_info_plain_sql": lambda c, o, r: c.get_flight_info(Descriptor.for_command(b"SELECT 1"), o),
    "do_get_plain_sql": lambda c, o, r: c.do_get(flight.Ticket(b"SELECT 1"), o),
    "do_get_replayed_statement_ticket": lambda c, o, r: c.do_get(flight.Ticket(r["ticket"]), o),
    "get_flight_info_replayed_prepared_handle": lambda c, o, r: c.get_flight_info(
        Descriptor.for_command(flight_sql.prepared_statement_query(r["plain_prepared"])), o),
    "do_get_replayed_prepared_handle": lambda c, o, r: c.do_get(
        flight.Ticket(flight_sql.prepared_statement_query(r["plain_prepared"])), o),
    "do_action_create_prepared_statement": lambda c, o, r: list(c.do_action(
        flight.Action("CreatePreparedStatement", create_prepared_body("SELECT 1")), o)),
    "get_flight_info_get_tables": lambda c, o, r: c.get_flight_info(
        Descriptor.for_command(flight_sql.get_tables()), o),
    "do_get_get_tables": lambda c, o, r: c.do_get(flight.Ticket(flight_sql.get_tables()), o),
    "do_get_get_catalogs": lambda c, o, r: c.do_get(flight.Ticket(flight_sql.get_catalogs()), o),
}


@pytest.mark.parametrize("token", [None, FULL], ids=["no_token", "tenant_token"])
@pytest.mark.parametrize("worker", [0, 1])
@pytest.mark.parametrize("call", list(WORKER_CALLS))
def test_worker_refuses_calls_that_bypass_the_gateway(dep, real, call, worker, token):
    pid, endpoint = dep.workers[worker]
    client = flight.connect(endpoint)
    out = attempt(lambda: WORKER_CALLS[call](client, options(token), real))
    refused(dep, out, UNAUTH, what=f"worker {pid} at {endpoint}, {call}")


# ---------------------------------------------------------------------------------------------
# 7. Garbage commands, tickets and actions

SQL_TYPE = "type.googleapis.com/arrow.flight.protocol.sql."


def any_of(type_url: str, value: bytes = b"") -> bytes:
    return flight_sql._bytes_field(1, type_url.encode()) + flight_sql._bytes_field(2, value)


STATEMENT = flight_sql.statement_query("SELECT 1")
GARBAGE_COMMANDS = {
    # id: (command bytes, accepted statuses)
    "random_bytes_1": (randbytes(1), {IA}),
    "random_bytes_2": (randbytes(2, 512), {IA}),
    "random_bytes_3": (randbytes(3, 7), {IA}),
    # A well-formed Flight SQL message of a type the gateway does not serve: UNIMPLEMENTED.
    "unknown_flight_sql_type": (any_of(SQL_TYPE + "CommandNoSuchThing"), {IA, "UNIMPLEMENTED"}),
    "foreign_type_url": (any_of("type.googleapis.com/google.protobuf.Empty"), {IA}),
    "empty_type_url": (any_of("", b"SELECT 1"), {IA}),
    "truncated_any_1": (STATEMENT[:1], {IA}),
    "truncated_any_10": (STATEMENT[:10], {IA}),
    "truncated_any_minus_3": (STATEMENT[:-3], {IA}),
    "garbage_in_a_known_type": (any_of(SQL_TYPE + "CommandStatementQuery", b"\xff\xff\xff\xff"), {IA}),
    # Known Flight SQL messages in the wrong place: refused as invalid or as not supported.
    "ticket_type_as_command": (any_of(SQL_TYPE + "TicketStatementQuery", flight_sql._bytes_field(1, b"x")),
                               {IA, UNAUTH, "UNIMPLEMENTED"}),
    "forged_prepared_handle": (flight_sql.prepared_statement_query(b"QV1" + b"\x00" * 32 + b"{}"), {IA, UNAUTH}),
    "update_command": (any_of(SQL_TYPE + "CommandStatementUpdate", flight_sql._bytes_field(1, b"DELETE FROM nation")),
                       {IA, "UNIMPLEMENTED"}),
    "empty_command": (b"", {IA}),
}


@pytest.mark.parametrize("case", list(GARBAGE_COMMANDS))
def test_garbage_command_is_refused(dep, case):
    cmd, statuses = GARBAGE_COMMANDS[case]
    client = flight.connect(dep.endpoint)
    out = attempt(lambda: client.get_flight_info(Descriptor.for_command(cmd), options(FULL)))
    refused(dep, out, statuses)


def test_path_descriptor_is_refused(dep):
    client = flight.connect(dep.endpoint)
    out = attempt(lambda: client.get_flight_info(Descriptor.for_path("lineitem"), options(FULL)))
    refused(dep, out, IA)


def forged_statement_ticket() -> bytes:
    handle = b"QV1" + b"\x00" * 32 + b'{"kind":"statement","sql":"SELECT * FROM lineitem","issued_at_ms":0}'
    return flight_sql._any("TicketStatementQuery", flight_sql._bytes_field(1, handle))


GARBAGE_TICKETS = {
    # id: (function of the genuine material -> ticket bytes, accepted statuses)
    "random_binary_1": (lambda r: randbytes(11), {IA}),
    "random_binary_2": (lambda r: randbytes(12, 4096), {IA}),
    "unknown_flight_sql_type": (lambda r: any_of(SQL_TYPE + "TicketNoSuchThing"), {IA, "UNIMPLEMENTED"}),
    "truncated_real_ticket": (lambda r: r["ticket"][:len(r["ticket"]) // 2], {IA, UNAUTH}),
    "real_ticket_last_byte_flipped": (lambda r: flip(r["ticket"], len(r["ticket"]) - 1), {IA, UNAUTH}),
    "real_ticket_middle_byte_flipped": (lambda r: flip(r["ticket"], len(r["ticket"]) // 2), {IA, UNAUTH}),
    "real_ticket_signature_byte_flipped": (lambda r: flip(r["ticket"], r["ticket"].index(b"QV1") + 5)
                                           if b"QV1" in r["ticket"] else flip(r["ticket"], 80), {IA, UNAUTH}),
    "real_ticket_type_url_byte_flipped": (lambda r: flip(r["ticket"], 5), {IA, UNAUTH}),
    "real_ticket_with_trailing_garbage": (lambda r: r["ticket"] + b"\xff\x00garbage", {IA, UNAUTH}),
    "forged_statement_ticket": (lambda r: forged_statement_ticket(), {IA, UNAUTH}),
    "forged_prepared_handle": (lambda r: flight_sql.prepared_statement_query(flip(r["plain_prepared"], 40)),
                               {IA, UNAUTH}),
}


@pytest.mark.parametrize("case", list(GARBAGE_TICKETS))
def test_garbage_ticket_is_refused(dep, real, case):
    make, statuses = GARBAGE_TICKETS[case]
    ticket = make(real)
    client = flight.connect(dep.endpoint)
    out = attempt(lambda: client.do_get(flight.Ticket(ticket), options(FULL)))
    refused(dep, out, statuses)


GARBAGE_ACTIONS = {
    # id: (action type, body, accepted statuses)
    "unknown_action": ("NoSuchAction", b"", {"UNIMPLEMENTED", IA}),
    "empty_action_type": ("", b"", {"UNIMPLEMENTED", IA}),
    "unknown_action_with_binary_type": ("\x00\xff", b"x", {"UNIMPLEMENTED", IA}),
    "create_prepared_random_body": ("CreatePreparedStatement", randbytes(21), {IA}),
    "create_prepared_wrong_message": ("CreatePreparedStatement", flight_sql.get_tables(), {IA}),
    "create_prepared_empty_body": ("CreatePreparedStatement", b"", {IA}),
    "close_prepared_forged_handle": ("ClosePreparedStatement", flight_sql._any(
        "ActionClosePreparedStatementRequest", flight_sql._bytes_field(1, b"QV1" + b"\x00" * 40)), {IA, UNAUTH}),
    "cancel_flight_info_random_body": ("CancelFlightInfo", randbytes(22), {IA}),
    "cancel_query_random_body": ("CancelQuery", randbytes(23), {IA}),
    "set_session_options_random_body": ("SetSessionOptions", randbytes(24), {IA}),
}


@pytest.mark.parametrize("case", list(GARBAGE_ACTIONS))
def test_garbage_action_is_refused(dep, case):
    kind, body, statuses = GARBAGE_ACTIONS[case]
    client = flight.connect(dep.endpoint)
    out = attempt(lambda: list(client.do_action(flight.Action(kind, body), options(FULL))))
    refused(dep, out, statuses)


HUGE = 8 << 20
TOO_BIG = {UNAUTH, "RESOURCE_EXHAUSTED", IA}


@pytest.mark.parametrize("header", [None, b"Bearer wrong-token-0123456789abcdef"], ids=["no_token", "wrong_token"])
@pytest.mark.parametrize("kind", ["CreatePreparedStatement", "NoSuchAction"])
def test_huge_unauthenticated_action_is_refused(dep, kind, header):
    client = flight.connect(dep.endpoint)
    body = create_prepared_body("SELECT 1 -- " + "x" * HUGE) if kind == "CreatePreparedStatement" else b"x" * HUGE
    out = attempt(lambda: list(client.do_action(flight.Action(kind, body), options(header=header))))
    refused(dep, out, TOO_BIG)


def test_huge_unauthenticated_command_is_refused(dep):
    client = flight.connect(dep.endpoint)
    cmd = flight_sql.statement_query("SELECT 1 -- " + "x" * HUGE)
    out = attempt(lambda: client.get_flight_info(Descriptor.for_command(cmd), options()))
    refused(dep, out, TOO_BIG)


def test_huge_authenticated_prepare_is_refused(dep):
    client = flight.connect(dep.endpoint)
    body = create_prepared_body("SELECT 1 -- " + "x" * HUGE)
    out = attempt(lambda: list(client.do_action(flight.Action("CreatePreparedStatement", body), options(FULL))))
    # Past the request size limit the transport refuses the message before it is decoded.
    refused(dep, out, {"RESOURCE_EXHAUSTED", IA, "OUT_OF_RANGE"})


# ---------------------------------------------------------------------------------------------
# 8. Authentication on every RPC

CREDENTIALS = {
    "none": None,
    "wrong_bearer": b"Bearer wrong-token-0123456789abcdef",
    "empty_bearer": b"Bearer ",
    "basic_garbage": b"Basic garbage",
    "basic_with_a_tenant_token": b"Basic " + base64.b64encode(f"full:{FULL}".encode()),
    "token_without_scheme": FULL.encode(),
    "other_scheme": b"Token " + FULL.encode(),
    "token_prefix": b"Bearer " + FULL[:-1].encode(),
    "token_with_suffix": b"Bearer " + FULL.encode() + b"x",
    "stored_hash_as_token": b"Bearer " + token_hash(FULL).encode(),
    "forged_session_token": b"Bearer qvs2.eyJ0ZW5hbnQiOiJmdWxsIn0AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
}


def bind(client, handle, o):
    return flight_sql.bind_parameters(client, handle, pa.record_batch([pa.array([1])], names=["a"]), o)


RPCS = {
    "get_flight_info_statement": lambda c, o, r: c.get_flight_info(Descriptor.for_command(STATEMENT), o),
    "get_flight_info_get_tables": lambda c, o, r: c.get_flight_info(
        Descriptor.for_command(flight_sql.get_tables()), o),
    "get_flight_info_prepared": lambda c, o, r: c.get_flight_info(
        Descriptor.for_command(flight_sql.prepared_statement_query(r["plain_prepared"])), o),
    "do_get_plain_sql": lambda c, o, r: c.do_get(flight.Ticket(b"SELECT 1"), o),
    "do_get_statement_ticket": lambda c, o, r: c.do_get(flight.Ticket(r["ticket"]), o),
    "do_get_get_tables": lambda c, o, r: c.do_get(flight.Ticket(flight_sql.get_tables()), o),
    "do_action_create_prepared_statement": lambda c, o, r: list(c.do_action(
        flight.Action("CreatePreparedStatement", create_prepared_body("SELECT 1")), o)),
    "do_action_cancel_flight_info": lambda c, o, r: flight_sql.cancel_flight_info(c, r["info"], o),
    "do_put_bind_parameters": lambda c, o, r: bind(c, r["prepared"], o),
}


@pytest.mark.parametrize("rpc", list(RPCS))
@pytest.mark.parametrize("credentials", list(CREDENTIALS))
def test_every_rpc_needs_valid_credentials(dep, real, credentials, rpc):
    client = flight.connect(dep.endpoint)
    out = attempt(lambda: RPCS[rpc](client, options(header=CREDENTIALS[credentials]), real))
    refused(dep, out, UNAUTH)


def test_the_genuine_material_works_with_the_right_token(dep, real):
    """The calls above are refused for their credentials, not because they are malformed."""
    client = flight.connect(dep.endpoint)
    for rpc, call in RPCS.items():
        out = attempt(lambda: call(client, options(FULL), real))
        assert out.error is None, f"{rpc}: {out.describe()}"


@pytest.mark.parametrize("credentials", ["none", "wrong_bearer", "basic_handshake"])
def test_adbc_needs_valid_credentials(dep, credentials):
    if credentials == "basic_handshake":
        out = run_adbc(dep.endpoint, "SELECT 1", None, username="full", password=FULL)
    else:
        out = run_adbc(dep.endpoint, "SELECT 1", None if credentials == "none" else "wrong-token-0123456789abcdef")
    refused(dep, out, UNAUTH)
