"""Tenants, rate limits and resource groups with the documented example config: a noisy tenant
sending 10x its quota is held to it and told why, while a quiet tenant is unaffected."""

import threading
import time
from pathlib import Path

import pyarrow.flight as flight
import pytest

from conftest import ROOT, Quiver

CONFIG = ROOT / "examples" / "admission.yaml"
QUERY = b"SELECT n_name FROM nation WHERE n_nationkey = 7"


def options(token: str | None) -> flight.FlightCallOptions:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return flight.FlightCallOptions(headers=headers)


def query(client, token):
    return client.do_get(flight.Ticket(QUERY), options(token)).read_all()


@pytest.fixture(scope="module")
def tenants(data_dir, logs):
    q = Quiver(data_dir, 0.01, 2, ["--config", str(CONFIG)], logs)
    yield q
    assert q.stop() == 0


def test_credentials_are_required(tenants):
    client = flight.connect(tenants.endpoint)
    with pytest.raises(flight.FlightUnauthenticatedError, match="authentication required"):
        query(client, None)
    with pytest.raises(flight.FlightUnauthenticatedError, match="invalid or expired"):
        query(client, "wrong-token")
    assert query(client, "quiet-token-1").num_rows == 1


def paced(client, token, qps: float, seconds: float, latencies: list, outcomes: list):
    """Open-loop load: sends at fixed times, whatever the previous answer took."""
    start = time.monotonic()
    n = int(qps * seconds)
    for i in range(n):
        due = start + i / qps
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the offered load, not waiting for an event
        t = time.monotonic()
        try:
            query(client, token)
            latencies.append(time.monotonic() - t)
            outcomes.append("ok")
        except Exception as e:  # RESOURCE_EXHAUSTED arrives as a generic Arrow error
            outcomes.append(str(e))


def p99(xs):
    xs = sorted(xs)
    return xs[max(0, int(len(xs) * 0.99) - 1)]


def test_noisy_tenant_is_held_to_its_quota(tenants):
    seconds = 4.0
    # The quiet tenant alone, at 20 qps (under its 50 qps policy).
    alone, alone_out = [], []
    paced(flight.connect(tenants.endpoint), "quiet-token-1", 20, seconds, alone, alone_out)
    assert set(alone_out) == {"ok"}

    # Now with the noisy tenant offering 10x its 20 qps quota from 4 connections.
    quiet, quiet_out = [], []
    noisy_lat, noisy_out = [], []
    threads = [threading.Thread(target=paced, args=(flight.connect(tenants.endpoint), "noisy-token-1",
                                                   50, seconds, noisy_lat, noisy_out)) for _ in range(4)]
    for t in threads:
        t.start()
    paced(flight.connect(tenants.endpoint), "quiet-token-1", 20, seconds, quiet, quiet_out)
    for t in threads:
        t.join()

    assert set(quiet_out) == {"ok"}, "the quiet tenant must never be rejected"
    admitted = noisy_out.count("ok")
    rejected = [o for o in noisy_out if o != "ok"]
    quota = 20 * seconds + 5  # sustained rate plus burst
    print(f"\nnoisy: offered {len(noisy_out)}, admitted {admitted} (quota {quota:.0f}); "
          f"quiet p99 alone {p99(alone) * 1000:.1f} ms, with noisy neighbour {p99(quiet) * 1000:.1f} ms")
    assert 0.8 * quota <= admitted <= 1.1 * quota
    unexplained = [r for r in rejected if not ("noisy-cap" in r and "retry in" in r)]
    assert rejected and not unexplained, unexplained[:3]
    # The quiet tenant's tail latency holds (small absolute slack for a 2-core CI machine).
    assert p99(quiet) <= 1.2 * p99(alone) + 0.010


# One flooding client: an ADBC connection of the noisy tenant executing `rate` statements a second
# (most refused by its rate limit) while the file `on` exists, until the file `stop` does. It runs
# at the lowest CPU priority, standing in for clients on other machines: what the quiet tenant may
# feel is the gateway's cost of each refusal, not the flooders' own CPU on this 2-core machine.
FLOODER = r"""
import os, sys, time
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
os.environ["GOMAXPROCS"] = "1"
import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
endpoint, token, sql, on, stop, rate = sys.argv[1:6] + [float(sys.argv[6])]
conn = flightsql.connect(endpoint, autocommit=True, db_kwargs={
    adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"})
cur = conn.cursor()
print("ready", flush=True)
ok = refused = 0
due = time.monotonic()
while not os.path.exists(stop):
    due = max(due + 1 / rate, time.monotonic() - 1)
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)  # pacing the offered load
    if not os.path.exists(on):
        continue
    try:
        cur.execute(sql)
        cur.fetchall()
        ok += 1
    except Exception:
        refused += 1
print(ok, refused, flush=True)
"""
FLOODERS = 6
FLOOD_RATE = 100  # per client: 600 statements a second in all
QUIET_QPS = 40  # under its 50 qps policy; enough samples for a steady p99


def flood_round(endpoint: str, client, tmp_path) -> tuple[float, float, float]:
    """Alternates quiet-only and flooded windows; returns the quiet tenant's p99 alone, its p99
    under the flood, and the refusals a second the flood got."""
    import subprocess
    import sys
    rounds, window = 4, 3.0
    on, stop = tmp_path / "flood-on", tmp_path / "flood-stop"
    on.unlink(missing_ok=True)
    stop.unlink(missing_ok=True)
    flooders = [subprocess.Popen([sys.executable, "-c", FLOODER, endpoint, "noisy-token-1",
                                  QUERY.decode(), str(on), str(stop), str(FLOOD_RATE)],
                                 stdout=subprocess.PIPE, text=True)
                for _ in range(FLOODERS)]
    alone, flooded, outcomes = [], [], []
    flood_seconds = 0.0
    try:
        for f in flooders:
            assert f.stdout.readline().strip() == "ready"
        for _ in range(rounds):
            paced(client, "quiet-token-1", QUIET_QPS, window, alone, outcomes)
            on.touch()
            started = time.monotonic()
            paced(client, "quiet-token-1", QUIET_QPS, window, flooded, outcomes)
            flood_seconds += time.monotonic() - started
            on.unlink()
        stop.touch()
        counts = [tuple(map(int, f.communicate(timeout=60)[0].split())) for f in flooders]
    finally:
        stop.touch()
        for f in flooders:
            if f.poll() is None:
                f.kill()
    assert set(outcomes) == {"ok"}, "the quiet tenant must never be rejected"
    refused = sum(r for _, r in counts)
    print(f"\nflood: {refused / flood_seconds:.0f} refusals/s, {sum(o for o, _ in counts)} admitted; "
          f"quiet p99 alone {p99(alone) * 1000:.1f} ms, under the flood {p99(flooded) * 1000:.1f} ms "
          f"({p99(flooded) / p99(alone):.2f}x)")
    return p99(alone), p99(flooded), refused / flood_seconds


def test_a_flood_of_refusals_leaves_the_quiet_tenant_alone(tenants, tmp_path):
    """Six ADBC clients of the noisy tenant flood the gateway with about 600 statements a second,
    nearly all refused (the issue measured 340 refusals a second, all its clients could get
    through when each refusal was expensive). A refusal is decided on identity and the tenant's
    limit before any parsing and involves no worker, so the quiet tenant barely notices: on an
    idle 2-core machine its p99 under the flood is 1.3-1.6x its p99 alone (printed), against
    3.6x when refusals were expensive. Quiet windows alternate with flooded ones, so drift on
    the machine falls on both alike. A p99 beside six flooding clients on two cores is noisy, so
    the measurement runs up to three times and the best must be within 2x: a refusal path that
    parsed or reached a worker fails all three."""
    client = flight.connect(tenants.endpoint)
    query(client, "quiet-token-1")  # warm the connection and the statement cache
    ratios = []
    for _ in range(3):
        alone, flooded, refusals = flood_round(tenants.endpoint, client, tmp_path)
        assert refusals >= 340, "the flood must be at least as hard as the issue's"
        ratios.append(flooded / alone)
        if flooded <= 2.0 * alone:
            return
    pytest.fail(f"quiet p99 under the flood was {', '.join(f'{r:.2f}x' for r in ratios)} its p99 alone")


QUIET_HASH = "sha256:3a37d32950429821feecb61998c7f203aaeec5ca4625db0c35d19a03d8ed6ee5"
NOISY_HASH = "sha256:0a140a21213665182a7308eabafbba7b7053a9c8986854fc83685688f043f5d3"


def wait_log(q, text: str, count: int, timeout: float = 60) -> None:
    """Waits until the gateway has logged `text` `count` times (the reload is polled every 2 s)."""
    deadline = time.monotonic() + timeout
    while q.log_path.read_text(errors="replace").count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} x{count} in the log:\n{q.log_tail()}"
        time.sleep(0.1)  # polling a file for a line: there is no event to await


def test_tenants_file_and_config_reload(start_quiver, tmp_path):
    config = tmp_path / "admission.yaml"
    tenants = tmp_path / "tenants.yaml"
    config.write_text("resource_groups: [{name: dashboards, hard_concurrency: 4}]\n"
                      "selectors: [{group: dashboards}]\n")
    tenants.write_text(f"tenants: [{{name: quiet, tokens: ['{QUIET_HASH}']}}]\n")
    q = start_quiver("--config", str(config), "--tenants-file", str(tenants))
    client = flight.connect(q.endpoint)
    assert query(client, "quiet-token-1").num_rows == 1
    with pytest.raises(flight.FlightUnauthenticatedError):
        query(client, "noisy-token-1")

    # A new tenant in the tenants file (as when its Secret changes) is picked up without a restart.
    tenants.write_text(f"tenants: [{{name: quiet, tokens: ['{QUIET_HASH}']}},"
                       f" {{name: noisy, tokens: ['{NOISY_HASH}']}}]\n")
    wait_log(q, "admission config reloaded", 1)
    assert query(client, "noisy-token-1").num_rows == 1

    # A broken config is refused with the file, field and reason, and the running one stays.
    config.write_text("resource_groups: [{name: dashboards}]\nselectors: [{group: nowhere}]\n")
    wait_log(q, "reload failed", 1)
    log = q.log_path.read_text(errors="replace")
    assert "selectors[0].group" in log and str(config) in log, q.log_tail()
    assert query(client, "noisy-token-1").num_rows == 1
    assert query(client, "quiet-token-1").num_rows == 1

    # Removing a tenant revokes its token at the next reload.
    config.write_text("resource_groups: [{name: dashboards}]\nselectors: [{group: dashboards}]\n")
    wait_log(q, "admission config reloaded", 2)
    tenants.write_text(f"tenants: [{{name: quiet, tokens: ['{QUIET_HASH}']}}]\n")
    wait_log(q, "admission config reloaded", 3)
    with pytest.raises(flight.FlightUnauthenticatedError):
        query(client, "noisy-token-1")
    assert query(client, "quiet-token-1").num_rows == 1
