"""Client hints that reach the resource-group selectors: ADBC `rpc.call_header.*` options (the
gRPC headers JDBC URI parameters also become), and session options (SetSessionOptions,
GetSessionOptions, CloseSession) carried in the session cookie."""

import json
import re
import urllib.request

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow.flight as flight
import pytest

from conftest import Quiver

CONFIG = """
resource_groups:
  - name: etl
  - name: dashboards
  - name: interactive
selectors:
  - {tags: [etl], group: etl}
  - {source: "superset.*", group: dashboards}
  - {group: interactive}
"""
QUERY = "SELECT count(*) FROM nation"
COOKIES = "adbc.flight.sql.rpc.with_cookie_middleware"
OPTION = "adbc.flight.sql.session.option."
LIST_OPTION = "adbc.flight.sql.session.optionstringlist."
ALL_OPTIONS = "adbc.flight.sql.session.options"


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, data_dir, logs):
    config = tmp_path_factory.mktemp("groups") / "admission.yaml"
    config.write_text(CONFIG)
    q = Quiver(data_dir, 0.01, 1, ["--config", str(config)], logs)
    yield q
    assert q.stop() == 0


def admitted(q) -> dict[str, int]:
    admin = next(l.split(": ", 1)[1] for l in q.stdout if l.startswith("quiver admin: "))
    text = urllib.request.urlopen(admin + "/metrics", timeout=5).read().decode()
    return {g: int(float(v)) for g, v in
            re.findall(r'^quiver_admission_admitted_total\{group="([^"]+)"\} (\S+)$', text, re.M)}


def ran_in(q, run) -> str:
    """The one group whose admitted count rose while `run` ran a query."""
    before = admitted(q)
    run()
    after = admitted(q)
    rose = [g for g in after if after[g] > before.get(g, 0)]
    assert len(rose) == 1, (before, after)
    return rose[0]


def query(conn):
    with conn.cursor() as cur:
        cur.execute(QUERY)
        assert cur.fetchone() == (25,)


def test_adbc_call_headers_reach_selectors(grouped):
    with flightsql.connect(grouped.endpoint, autocommit=True) as plain:
        assert ran_in(grouped, lambda: query(plain)) == "interactive"
    headers = {"adbc.flight.sql.rpc.call_header.x-quiver-tags": "nightly, etl"}
    with flightsql.connect(grouped.endpoint, autocommit=True, db_kwargs=headers) as tagged:
        assert ran_in(grouped, lambda: query(tagged)) == "etl"
    headers = {"adbc.flight.sql.rpc.call_header.x-quiver-source": "superset-sales"}
    with flightsql.connect(grouped.endpoint, autocommit=True, db_kwargs=headers) as sourced:
        assert ran_in(grouped, lambda: query(sourced)) == "dashboards"


def test_adbc_session_options_reach_selectors(grouped):
    with flightsql.connect(grouped.endpoint, autocommit=True, db_kwargs={COOKIES: "true"}) as conn:
        assert ran_in(grouped, lambda: query(conn)) == "interactive"
        conn.adbc_connection.set_options(**{OPTION + "quiver.source": "superset-finance"})
        assert ran_in(grouped, lambda: query(conn)) == "dashboards"
        conn.adbc_connection.set_options(**{LIST_OPTION + "quiver.tags": json.dumps(["etl"])})
        assert ran_in(grouped, lambda: query(conn)) == "etl"
        options = json.loads(conn.adbc_connection.get_option(ALL_OPTIONS))
        assert options["quiver.source"] == "superset-finance", options
        assert options["quiver.tags"] == ["etl"], options
        assert options["catalog"] == "quiver" and options["schema"] == "public", options
        # Only Quiver's own catalog can be chosen, and unknown names are refused.
        with pytest.raises(adbc_driver_manager.Error):
            conn.adbc_connection.set_options(**{OPTION + "catalog": "elsewhere"})
        with pytest.raises(adbc_driver_manager.Error):
            conn.adbc_connection.set_options(**{OPTION + "colour": "blue"})
    # A new connection starts a new session.
    with flightsql.connect(grouped.endpoint, autocommit=True, db_kwargs={COOKIES: "true"}) as fresh:
        assert ran_in(grouped, lambda: query(fresh)) == "interactive"


class Cookies(flight.ClientMiddlewareFactory):
    """Keeps the cookie the server sets and sends it back, as a browser or the JDBC driver does."""

    def __init__(self):
        self.jar: dict[str, str] = {}

    def start_call(self, info):
        return _CookieCall(self)


class _CookieCall(flight.ClientMiddleware):
    def __init__(self, factory):
        self.factory = factory

    def sending_headers(self):
        if not self.factory.jar:
            return {}
        return {"cookie": "; ".join(f"{k}={v}" for k, v in self.factory.jar.items())}

    def received_headers(self, headers):
        for line in headers.get("set-cookie", []):
            pair = line.split(";", 1)[0]
            name, _, value = pair.partition("=")
            if "Max-Age=0" in line or not value:
                self.factory.jar.pop(name, None)
            else:
                self.factory.jar[name] = value


def _string_option(name: str, value: str) -> bytes:
    import flight_sql
    inner = flight_sql._bytes_field(1, value.encode())  # SessionOptionValue.string_value
    entry = flight_sql._bytes_field(1, name.encode()) + flight_sql._bytes_field(2, inner)
    return flight_sql._bytes_field(1, entry)  # SetSessionOptionsRequest.session_options


def test_raw_session_actions_and_close(grouped):
    import flight_sql
    cookies = Cookies()
    client = flight.connect(grouped.endpoint, middleware=[cookies])
    list(client.do_action(flight.Action("SetSessionOptions", _string_option("quiver.tags", "etl"))))
    assert "arrow_flight_session_id" in cookies.jar

    def run():
        client.do_get(flight.Ticket(QUERY.encode())).read_all()

    assert ran_in(grouped, run) == "etl"
    # An altered cookie is ignored, not trusted.
    real = cookies.jar["arrow_flight_session_id"]
    cookies.jar["arrow_flight_session_id"] = real[:-2] + ("AA" if real[-2:] != "AA" else "BB")
    assert ran_in(grouped, run) == "interactive"
    cookies.jar["arrow_flight_session_id"] = real
    result = list(client.do_action(flight.Action("GetSessionOptions", b"")))[0].body.to_pybytes()
    names = [flight_sql.parse_message(e)[1][0] for e in flight_sql.parse_message(result).get(1, [])]
    assert b"quiver.tags" in names
    closed = list(client.do_action(flight.Action("CloseSession", b"")))[0].body.to_pybytes()
    assert flight_sql.parse_message(closed)[1][0] == 1  # CLOSED
    assert cookies.jar == {}
    assert ran_in(grouped, run) == "interactive"
    client.close()
