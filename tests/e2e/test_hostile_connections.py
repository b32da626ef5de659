"""Connections are a resource a client can make the gateway hold. One that sends nothing is
closed once it has not begun (the HTTP/2 preface) within 10 s; past `--max-connections`, a new
connection is closed at once and counted, while connections already open keep working, and a
place comes back when a connection closes."""

import socket
import time
import urllib.request

import pyarrow.flight as flight
import pytest

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
QUERY = b"SELECT count(*) AS n FROM nation"


def address(q) -> tuple[str, int]:
    return "127.0.0.1", q.port


def wait_closed(sock: socket.socket, timeout: float) -> None:
    """Reads until the gateway closes `sock`; fails if it is still open after `timeout`."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


def accepted(q) -> socket.socket | None:
    """A connection that sent the preface, if the gateway kept it: a kept one gets the
    server's SETTINGS frame, a refused one is closed at once."""
    sock = socket.create_connection(address(q))
    sock.sendall(PREFACE)
    sock.settimeout(10)
    try:
        if sock.recv(9):
            return sock
    except ConnectionResetError:
        pass
    sock.close()
    return None


def refused_total(q) -> float:
    with urllib.request.urlopen(f"{q.admin_url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("quiver_client_connections_refused_total "):
                return float(line.split()[1])
    return 0.0


def count(client) -> int:
    return client.do_get(flight.Ticket(QUERY)).read_all().column("n")[0].as_py()


def test_a_connection_that_sends_nothing_is_closed(start_quiver):
    q = start_quiver()
    silent = [socket.create_connection(address(q)) for _ in range(20)]
    for sock in silent:
        # Closed by the gateway (10 s after it was taken), not left open for the client to end.
        wait_closed(sock, 30)
        sock.close()
    client = flight.connect(q.endpoint)
    assert count(client) == 25
    client.close()


def test_connections_past_the_maximum_are_closed_at_once(start_quiver):
    q = start_quiver("--max-connections", "4")
    working = flight.connect(q.endpoint)
    assert count(working) == 25
    held = []
    while (sock := accepted(q)) is not None:
        held.append(sock)
        assert len(held) <= 4, "more connections kept than the maximum"
    assert refused_total(q) >= 1
    # A new client is turned away at once...
    started = time.monotonic()
    newcomer = flight.connect(q.endpoint)
    try:
        count(newcomer)
        raise AssertionError("a connection past the maximum was served")
    except flight.FlightUnavailableError:
        pass
    assert time.monotonic() - started < 10, "refused, not left waiting"
    newcomer.close()
    # ...while the connection already open goes on.
    assert count(working) == 25
    # Closed connections give their places back.
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 30
    while True:
        newcomer = flight.connect(q.endpoint)
        try:
            assert count(newcomer) == 25
            break
        except flight.FlightUnavailableError:
            assert time.monotonic() < deadline, "no place came back"
        finally:
            newcomer.close()
    working.close()


def test_a_bad_maximum_is_refused(start_quiver):
    with pytest.raises(RuntimeError, match="max-connections"):
        start_quiver("--max-connections", "0")
