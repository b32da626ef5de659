"""Runs started at planning time: the gateway starts a planned statement's run when it answers
GetFlightInfo, and the DoGet that redeems the ticket claims it. The run happens once; a plan
nobody redeems is cancelled after the claim window and frees its group's slot; a late DoGet
still runs; a tenant whose plans mostly go unredeemed gets no runs for a while; `--eager-runs
false` turns it off. Every check is through pyarrow.flight and the
gateway's own metrics."""

import time

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.flight as flight
import pytest

import flight_sql
from conftest import metric_samples

COUNT_SQL = "SELECT count(*) AS n FROM orders"
# Long enough for the claim window (2 s) to close on a plan nobody redeems.
WINDOW_WAIT = 20.0

ONE_SLOT = """\
resource_groups:
  - {name: only, hard_concurrency: 1, max_queued: 10, queue_timeout: 30s}
selectors:
  - {group: only}
"""


def total(admin_url: str, name: str, **labels: str) -> float:
    return sum(v for l, v in metric_samples(admin_url, name)
               if all(l.get(k) == want for k, want in labels.items()))


def plan(client, sql: str) -> flight.FlightInfo:
    info = client.get_flight_info(flight.FlightDescriptor.for_command(flight_sql.statement_query(sql)))
    assert len(info.endpoints) == 1, info.endpoints
    return info


def wait_metric(admin_url: str, name: str, at_least: float, **labels: str) -> float:
    """Polls `/metrics` until the labelled total reaches `at_least`; fails at the deadline."""
    deadline = time.monotonic() + WINDOW_WAIT
    while (value := total(admin_url, name, **labels)) < at_least:
        assert time.monotonic() < deadline, f"{name}{labels} stayed at {value}, expected {at_least}"
        time.sleep(0.05)
    return value


@pytest.fixture()
def one_slot(start_quiver, tmp_path):
    """A deployment whose only group runs one query at a time."""
    config = tmp_path / "admission.yaml"
    config.write_text(ONE_SLOT)

    def start(*extra: str):
        return start_quiver("--config", str(config), *extra)
    return start


def test_the_doget_claims_the_run_started_by_its_plan(start_quiver):
    q = start_quiver()
    client = flight.connect(q.endpoint)
    expected = client.do_get(flight.Ticket(COUNT_SQL.encode())).read_all().column("n")[0].as_py()
    ok = total(q.admin_url, "quiver_queries_total", outcome="ok")
    for _ in range(3):
        dispatched = total(q.admin_url, "quiver_dispatch_do_get_total")
        info = plan(client, COUNT_SQL)
        # The run reaches a worker before any DoGet is sent ...
        wait_metric(q.admin_url, "quiver_dispatch_do_get_total", dispatched + 1)
        table = client.do_get(info.endpoints[0].ticket).read_all()
        assert table.column("n")[0].as_py() == expected
        # ... and the DoGet is served by it, not run a second time.
        assert total(q.admin_url, "quiver_dispatch_do_get_total") == dispatched + 1
    assert total(q.admin_url, "quiver_queries_total", outcome="ok") == ok + 3
    assert total(q.admin_url, "quiver_eager_runs_total", outcome="claimed") == 3
    assert total(q.admin_url, "quiver_queries_total", outcome="cancelled") == 0
    client.close()


def test_a_plan_redeemed_on_another_connection(start_quiver):
    """A client may plan on one connection and redeem on another, which the gateway serves on
    another io thread: the DoGet still claims the run, every answer is right, and each thread's
    connections to the workers stay counted right (DoGets keep going by the fetch exchange)."""
    q = start_quiver("--io-threads", "2", workers=2)
    # Connections are spread over the io threads in turn. (gRPC shares one connection between
    # clients of the same target unless each keeps its own.)
    a, b = (flight.connect(q.endpoint, generic_options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(2))
    expected = a.do_get(flight.Ticket(COUNT_SQL.encode())).read_all().column("n")[0].as_py()
    assert b.do_get(flight.Ticket(COUNT_SQL.encode())).read_all().column("n")[0].as_py() == expected
    # More rounds than a thread keeps fetch connections to a worker, so places not given back
    # would show as DoGets over gRPC.
    rounds = 300
    for n in range(rounds):
        planner, redeemer = (a, b) if n % 2 else (b, a)
        info = plan(planner, COUNT_SQL)
        assert redeemer.do_get(info.endpoints[0].ticket).read_all().column("n")[0].as_py() == expected
    assert total(q.admin_url, "quiver_eager_runs_total", outcome="claimed") == rounds
    assert total(q.admin_url, "quiver_queries_total", outcome="ok") == rounds + 2
    assert total(q.admin_url, "quiver_dispatch_do_get_total", transport="grpc") == 0
    a.close()
    b.close()


def test_adbc_queries_and_prepared_statements_claim_their_runs(start_quiver):
    q = start_quiver()
    with flightsql.connect(q.endpoint, autocommit=True) as conn, conn.cursor() as cur:
        for key in (1, 2, 3):
            cur.execute("SELECT o_orderkey FROM orders WHERE o_orderkey = $1", parameters=(key,))
            assert cur.fetch_arrow_table().num_rows == 1
        for _ in range(3):
            cur.execute("SELECT count(*) AS n FROM lineitem")
            assert cur.fetch_arrow_table().column("n")[0].as_py() > 0
    # ADBC plans (GetFlightInfo) and redeems each ticket at once: every query's DoGet claimed
    # the run its plan started instead of running it again. (The dispatch count also has the
    # driver's own metadata call on connecting.)
    assert total(q.admin_url, "quiver_eager_runs_total", outcome="claimed") == 6
    assert total(q.admin_url, "quiver_queries_total", outcome="cancelled") == 0


def test_an_unredeemed_plan_is_cancelled_and_frees_its_slot(one_slot):
    q = one_slot()
    client = flight.connect(q.endpoint)
    info = plan(client, COUNT_SQL)
    # Its run holds the group's only slot until the claim window closes, then is cancelled.
    wait_metric(q.admin_url, "quiver_eager_runs_total", 1, outcome="unclaimed")
    # No query happened from the client's side: the run counts as none.
    assert total(q.admin_url, "quiver_queries_total") == 0
    other = client.do_get(flight.Ticket(b"SELECT 42 AS x")).read_all()
    assert other.column("x")[0].as_py() == 42
    # Redeemed late, the ticket still runs (as a DoGet of its own).
    late = client.do_get(info.endpoints[0].ticket).read_all()
    assert late.column("n")[0].as_py() > 0
    client.close()


def test_a_tenant_whose_plans_go_unredeemed_is_paused(start_quiver):
    """A client that plans without fetching (or whose DoGets reach another gateway replica) has
    runs started for its plans until 8 of its last 16 went unclaimed; then its plans start
    none, so the workers do no work for nothing, and its DoGets still run as their own."""
    q = start_quiver()
    client = flight.connect(q.endpoint)
    for _ in range(8):
        plan(client, COUNT_SQL)
    wait_metric(q.admin_url, "quiver_eager_runs_total", 8, outcome="unclaimed")
    info = plan(client, COUNT_SQL)
    assert total(q.admin_url, "quiver_eager_runs_total", outcome="paused") == 1
    assert client.do_get(info.endpoints[0].ticket).read_all().column("n")[0].as_py() > 0
    assert total(q.admin_url, "quiver_eager_runs_total", outcome="claimed") == 0
    assert wait_metric(q.admin_url, "quiver_queries_total", 1, outcome="ok") == 1
    log = q.log_path.read_text(errors="replace")
    assert log.count("went unclaimed; its plans start no run") == 1, q.log_tail()
    client.close()


def test_eager_runs_can_be_turned_off(one_slot):
    q = one_slot("--eager-runs", "false")
    client = flight.connect(q.endpoint)
    dispatched = total(q.admin_url, "quiver_dispatch_do_get_total")
    info = plan(client, COUNT_SQL)
    # Nothing runs for the plan, so the only slot is free for another query at once, and no
    # run is left to cancel.
    assert client.do_get(flight.Ticket(b"SELECT 42 AS x")).read_all().column("x")[0].as_py() == 42
    assert client.do_get(info.endpoints[0].ticket).read_all().column("n")[0].as_py() > 0
    assert total(q.admin_url, "quiver_dispatch_do_get_total") == dispatched + 2
    assert total(q.admin_url, "quiver_queries_total", outcome="cancelled") == 0
    assert total(q.admin_url, "quiver_eager_runs_total") == 0
    client.close()


def test_a_bad_flag_value_is_refused(start_quiver):
    with pytest.raises(RuntimeError, match="eager-runs"):
        start_quiver("--eager-runs", "maybe")
