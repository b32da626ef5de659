"""Fixtures that run the real `quiver` binary and wait on what it prints, never on sleeps."""

import os
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUIVER_BIN = os.environ.get("QUIVER_BIN", str(ROOT / "target" / "debug" / "quiver"))
QUERIES = ROOT / "query-service" / "queries" / "tpch"
START_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append(int(entry.name))
    return out


class Quiver:
    """A running `quiver up` and what it announced."""

    def __init__(self, data_dir: Path, scale_factor: float, workers: int, extra: list[str]):
        self.port = free_port()
        self.endpoint = f"grpc://127.0.0.1:{self.port}"
        self.admin = None
        self.workers: dict[int, str] = {}
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        args = [
            QUIVER_BIN, "up",
            "--listen", f"127.0.0.1:{self.port}",
            "--data-dir", str(data_dir),
            "--scale-factor", str(scale_factor),
            "--workers", str(workers),
            *extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("quiver ready:", START_TIMEOUT)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _note(self, line: str):
        if line.startswith("quiver admin: "):
            self.admin = line.split(": ", 1)[1]
        elif line.startswith("worker started: "):
            fields = dict(f.split("=", 1) for f in line.split(": ", 1)[1].split())
            self.workers[int(fields["pid"])] = fields["endpoint"]
        elif line.startswith("worker exited: "):
            fields = dict(f.split("=", 1) for f in line.split(": ", 1)[1].split()[:2])
            self.workers.pop(int(fields["pid"]), None)

    def wait_for(self, prefix: str, timeout: float) -> str:
        """Blocks until a stdout line starting with `prefix` arrives (or fails at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"quiver up did not print {prefix!r} within {timeout}s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"quiver up exited ({self.proc.wait()}) before {prefix!r}")
            self._note(line)
            if line.startswith(prefix):
                return line

    def stop(self) -> int:
        children = children_of(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        leftover = [c for c in children if Path(f"/proc/{c}").exists()
                    and "Z" not in Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[0]]
        assert not leftover, f"worker processes left behind: {leftover}"
        return code


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """TPC-H SF 0.01, generated once by `quiver datagen`."""
    out = tmp_path_factory.mktemp("tpch-sf0.01")
    subprocess.run([QUIVER_BIN, "datagen", "--scale-factor", "0.01", "--out", str(out)],
                   check=True, stderr=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="session")
def quiver(data_dir):
    q = Quiver(data_dir, 0.01, 2, [])
    yield q
    assert q.stop() == 0


@pytest.fixture()
def start_quiver(data_dir):
    """Starts extra, short-lived deployments with their own flags; stops them afterwards."""
    started = []

    def start(*extra: str, workers: int = 1, data: Path | None = None, scale_factor: float = 0.01):
        q = Quiver(data or data_dir, scale_factor, workers, list(extra))
        started.append(q)
        return q

    yield start
    for q in started:
        if q.proc.poll() is None:
            assert q.stop() == 0
