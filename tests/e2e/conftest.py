"""Fixtures that run the real `quiver` binary and wait on what it prints, never on sleeps.

The binary comes from $QUIVER_BIN (default: target/debug/quiver). Every process a fixture starts
is stopped again, and the fixture fails if the process did not exit cleanly or left a child behind.
"""

import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUIVER_BIN = os.environ.get("QUIVER_BIN", str(ROOT / "target" / "debug" / "quiver"))
QUERIES = ROOT / "query-service" / "queries" / "tpch"
TABLES = ["region", "nation", "supplier", "part", "partsupp", "customer", "orders", "lineitem"]
START_TIMEOUT = 300  # generous: a debug build on a busy 2-core machine
STOP_TIMEOUT = 60

WORKER_LINE = re.compile(r"^worker started: pid=(\d+) endpoint=(grpc://127\.0\.0\.1:\d+)$")
READY_LINE = re.compile(r"^quiver ready: (grpc://\S+)$")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes a minute or more (deselect with -m 'not slow')")


def quiver_env(**overrides: str) -> dict[str, str]:
    """This environment without any QUIVER_* variable (every flag of `quiver up` reads one), plus
    `overrides`, so a developer's shell settings cannot change what a test runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    env.update(overrides)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """Live direct children of `pid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and int(st[1]) == pid and st[0] not in ("Z", "X"):
                out.append(int(entry.name))
    return out


def descendants_of(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def wait_tcp(port: int, timeout: float) -> None:
    """Waits until something accepts TCP connections on 127.0.0.1:port (polled, with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")
            time.sleep(0.05)


class Quiver:
    """A running `quiver up` and what it announced on stdout. stderr goes to a log file whose
    tail is shown when something about the process fails."""

    def __init__(self, data_dir: Path, scale_factor: float, workers: int | None, extra: list[str],
                 log_dir: Path, expected_workers: int | None = None):
        """`workers`: a fixed pool (`--workers N`); None leaves sizing to `extra` (autoscaling
        flags), with `expected_workers` started before the ready line."""
        self.port = free_port()
        self.endpoint = f"grpc://127.0.0.1:{self.port}"
        self.expected_workers = workers if workers is not None else expected_workers
        self.started: list[tuple[int, str]] = []  # every `worker started:` line, in order
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.stdout: list[str] = []
        self.log_path = log_dir / f"quiver-up-{self.port}.log"
        self.args = [
            QUIVER_BIN, "up",
            "--listen", f"127.0.0.1:{self.port}",
            "--data-dir", str(data_dir),
            "--scale-factor", str(scale_factor),
            *(["--workers", str(workers)] if workers is not None else []),
            *extra,
        ]
        self._log = open(self.log_path, "w")
        # Own session and process group, so a failed test can still kill the whole tree.
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env=quiver_env(), start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.ready_line = self.wait_for("quiver ready:", START_TIMEOUT)
            self._check_ready()
        except BaseException:
            self.kill()
            raise

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _check_ready(self):
        m = READY_LINE.match(self.ready_line)
        assert m, f"malformed ready line {self.ready_line!r}"
        assert m.group(1) == self.endpoint, f"ready on {m.group(1)}, asked for {self.endpoint}"
        assert len(self.started) == self.expected_workers, \
            f"{len(self.started)} `worker started:` lines before ready, expected {self.expected_workers}: {self.stdout}"
        kids = set(children_of(self.proc.pid))
        for pid, _ in self.started:
            assert pid in kids, f"announced worker {pid} is not a live child of quiver up ({kids})"

    def log_tail(self, n: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def wait_for(self, prefix: str, timeout: float) -> str:
        """Blocks until a stdout line starting with `prefix` arrives; fails at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"quiver up did not print {prefix!r} within {timeout}s; "
                                   f"stdout so far {self.stdout}\nstderr tail:\n{self.log_tail()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)  # stay at end of stream for later callers
                raise RuntimeError(f"quiver up exited ({self.proc.wait()}) before printing {prefix!r}; "
                                   f"stdout {self.stdout}\nstderr tail:\n{self.log_tail()}")
            self.stdout.append(line)
            if line.startswith("worker started:"):
                m = WORKER_LINE.match(line)
                assert m, f"malformed worker line {line!r}"
                self.started.append((int(m.group(1)), m.group(2)))
            if line.startswith(prefix):
                return line

    @property
    def admin_url(self) -> str:
        """The admin port's URL, from the `quiver admin:` line."""
        for line in self.stdout:
            if line.startswith("quiver admin: "):
                return line.removeprefix("quiver admin: ").strip()
        raise AssertionError(f"no `quiver admin:` line in {self.stdout}")

    @property
    def worker_pids(self) -> list[int]:
        """Announced workers that are still running."""
        return [pid for pid, _ in self.started if alive(pid)]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signals `quiver up`, waits for it, and asserts it left no process behind."""
        tree = descendants_of(self.proc.pid) + [pid for pid, _ in self.started]
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"quiver up did not exit within {STOP_TIMEOUT}s of signal {sig}\n"
                                 f"{self.log_tail()}")
        leftover = sorted({pid for pid in tree if alive(pid)})
        if leftover:
            for pid in leftover:
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"quiver up exited ({code}) but left processes behind: {leftover}")
        self._log.close()
        return code

    def kill(self):
        """Emergency stop of the whole process group (used only when a test already failed)."""
        tree = descendants_of(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in tree:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        self._log.close()


def datagen(scale_factor: float, out: Path) -> Path:
    result = subprocess.run([QUIVER_BIN, "datagen", "--scale-factor", str(scale_factor), "--out", str(out)],
                            capture_output=True, text=True, env=quiver_env(), timeout=900)
    assert result.returncode == 0, f"quiver datagen failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """TPC-H SF 0.01, generated once by `quiver datagen`."""
    return datagen(0.01, tmp_path_factory.mktemp("tpch-sf0.01"))


@pytest.fixture(scope="session")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def quiver(data_dir, logs):
    """One `quiver up` for the session: SF 0.01, 2 workers."""
    q = Quiver(data_dir, 0.01, 2, [], logs)
    yield q
    assert q.proc.poll() is None, f"quiver up died during the session ({q.proc.returncode})\n{q.log_tail()}"
    code = q.stop()
    assert code == 0, f"quiver up exited {code} on SIGTERM\n{q.log_tail()}"


@pytest.fixture()
def start_quiver(data_dir, logs):
    """Starts extra, short-lived deployments with their own flags; stops them afterwards."""
    started = []

    def start(*extra: str, workers: int | None = 1, data: Path | None = None,
              scale_factor: float = 0.01, expected_workers: int | None = None):
        q = Quiver(data or data_dir, scale_factor, workers, list(extra), logs, expected_workers)
        started.append(q)
        return q

    yield start
    failures = []
    for q in started:
        if q.proc.poll() is None:
            code = q.stop()
            if code != 0:
                failures.append(f"{q.args}: exit {code}\n{q.log_tail()}")
    assert not failures, failures


def metric_samples(admin_url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric `name` on the admin port's `/metrics`, as (labels, value)."""
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            pairs = re.findall(r'(\w+)="([^"]*)"', labels)
            samples.append((dict(pairs), float(value)))
    return samples
