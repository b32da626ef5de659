"""Pools: a gateway serving two pools of workers by hand (`--pool a=… --pool b=…`), with a
resource group bound to each. A group's queries run only on its pool's workers: with pool a's
worker stopped, the group on pool b is still served, plan and run, while pool a's group is told
UNAVAILABLE. A config naming a pool the gateway does not serve is refused at start."""

import json
import queue
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.flight as flight
import pytest

import flight_sql
from conftest import QUIVER_BIN, START_TIMEOUT, STOP_TIMEOUT, free_port, metric_samples, quiver_env
from flight_sql import server_message, status_of

TICKET_KEY = "e2e-pools-key"
CONFIG = """
resource_groups:
  - {name: interactive, pool: a}
  - {name: etl, pool: b}
selectors:
  - {source: etl, group: etl}
default_group: interactive
"""
QUERY = "SELECT count(*) AS n FROM nation"
ETL = flight.FlightCallOptions(headers=[(b"x-quiver-source", b"etl")])
INTERACTIVE = flight.FlightCallOptions()


class Proc:
    """A `quiver` process with its output in a log file; lines of stdout are kept for waiting."""

    def __init__(self, name: str, args: list[str], log_dir: Path):
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.proc = subprocess.Popen([QUIVER_BIN, *args], stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, env=quiver_env(QUIVER_TICKET_KEY=TICKET_KEY))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"exited ({self.proc.wait()}) before {prefix!r}\n{self.tail()}"
            if line.startswith(prefix):
                return line

    def tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        finally:
            self._log.close()


def start_worker(name: str, data_dir: Path, log_dir: Path) -> tuple[Proc, str]:
    w = Proc(name, ["worker", "--listen", "127.0.0.1:0", "--catalog", str(data_dir / "catalog.yaml")],
             log_dir)
    addr = w.wait_for("listening on ", START_TIMEOUT).removeprefix("listening on ")
    return w, f"grpc://{addr}"


def demand(admin_port: int) -> dict[str, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/v1/pools", timeout=5) as r:
        return {p["pool"]: p for p in json.load(r)["pools"]}


def wait_ready(admin_port: int, gateway: Proc, want: dict[str, int], timeout: float = 120):
    """Polls the demand document (with a deadline) until each pool has `want[pool]` ready workers."""
    deadline = time.monotonic() + timeout
    while True:
        assert gateway.proc.poll() is None, f"gateway exited {gateway.proc.returncode}\n{gateway.tail()}"
        try:
            pools = demand(admin_port)
            if all(pools[p]["ready"] == n for p, n in want.items()):
                return pools
        except OSError:
            pass
        assert time.monotonic() < deadline, f"pools never reached {want}\n{gateway.tail()}"
        time.sleep(0.1)


def run(client, options) -> int:
    """Plans on the gateway (GetFlightInfo) and redeems the ticket (DoGet), as Flight SQL does."""
    info = client.get_flight_info(
        flight.FlightDescriptor.for_command(flight_sql.statement_query(QUERY)), options)
    return client.do_get(info.endpoints[0].ticket, options).read_all().column("n")[0].as_py()


def queries_by_pool(admin_port: int) -> dict[tuple[str, str], float]:
    samples = metric_samples(f"http://127.0.0.1:{admin_port}", "quiver_queries_total")
    return {(labels["pool"], labels["outcome"]): value for labels, value in samples}


@pytest.fixture()
def two_pools(data_dir, tmp_path):
    config = tmp_path / "admission.yaml"
    config.write_text(CONFIG)
    procs = []
    try:
        worker_a, a = start_worker("worker-a", data_dir, tmp_path)
        procs.append(worker_a)
        worker_b, b = start_worker("worker-b", data_dir, tmp_path)
        procs.append(worker_b)
        port, admin = free_port(), free_port()
        gateway = Proc("gateway", ["gateway", "--listen", f"127.0.0.1:{port}",
                                   "--admin-listen", f"127.0.0.1:{admin}",
                                   "--pool", f"a={a}", "--pool", f"b={b}", "--config", str(config)],
                       tmp_path)
        procs.append(gateway)
        pools = wait_ready(admin, gateway, {"a": 1, "b": 1})
        assert [w["endpoint"] for w in pools["a"]["worker_loads"]] == [a.replace("grpc", "http")]
        assert [w["endpoint"] for w in pools["b"]["worker_loads"]] == [b.replace("grpc", "http")]
        yield {"endpoint": f"grpc://127.0.0.1:{port}", "admin": admin, "gateway": gateway,
               "worker_a": worker_a}
    finally:
        codes = [p.stop() for p in reversed(procs)]
    assert all(c in (0, -signal.SIGTERM) for c in codes), codes


def test_each_group_runs_on_its_own_pool(two_pools):
    client = flight.connect(two_pools["endpoint"])
    admin, gateway = two_pools["admin"], two_pools["gateway"]
    for _ in range(3):
        assert run(client, ETL) == 25
    for _ in range(2):
        assert run(client, INTERACTIVE) == 25
    counts = queries_by_pool(admin)
    assert counts.get(("b", "ok")) == 3, counts
    assert counts.get(("a", "ok")) == 2, counts
    assert demand(admin)["b"]["arrivals_per_sec"] >= 0  # the operator's fields are there

    # Pool a's only worker goes: its group is refused, the etl group does not notice.
    worker_a = two_pools["worker_a"]
    assert worker_a.stop() == 0
    wait_ready(admin, gateway, {"a": 0, "b": 1})
    with pytest.raises(flight.FlightUnavailableError) as refused:
        client.do_get(flight.Ticket(QUERY.encode()), INTERACTIVE).read_all()
    assert status_of(refused.value) == "UNAVAILABLE"
    assert 'no ready worker in pool "a"' in server_message(refused.value), refused.value
    for _ in range(3):
        assert run(client, ETL) == 25
    assert client.do_get(flight.Ticket(QUERY.encode()), ETL).read_all().num_rows == 1
    counts = queries_by_pool(admin)
    assert counts.get(("b", "ok")) == 7, counts
    assert counts.get(("a", "unavailable"), 0) >= 1, counts


def test_a_group_on_a_pool_the_gateway_does_not_serve_is_refused(tmp_path):
    config = tmp_path / "admission.yaml"
    config.write_text(CONFIG.replace("pool: b", "pool: gpu"))
    result = subprocess.run(
        [QUIVER_BIN, "gateway", "--listen", f"127.0.0.1:{free_port()}",
         "--admin-listen", f"127.0.0.1:{free_port()}", "--pool", "a=grpc://127.0.0.1:1",
         "--pool", "b=grpc://127.0.0.1:2", "--config", str(config)],
        env=quiver_env(QUIVER_TICKET_KEY=TICKET_KEY), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stderr
    for words in (str(config), "resource_groups[1].pool", '"etl"', '"gpu"', "[a, b]"):
        assert words in result.stderr, f"{words!r} not in: {result.stderr}"
