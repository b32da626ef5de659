"""Starting and stopping `quiver up` for a load test, and what its binary supports.

The runner starts Quiver on a free loopback port, waits for the `quiver ready:` line on its
stdout (never a sleep), remembers the admin URL and the worker pids it prints, and stops it with
SIGTERM (SIGKILL only if it has not exited within the grace period).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

READY = re.compile(r"^quiver ready: (\S+)")
ADMIN = re.compile(r"^quiver admin: (\S+)")
WORKER = re.compile(r"^worker (?:started|claimed): pid=(\d+) endpoint=(\S+)")
# Lines about the pool's size, kept with the wall time they were read (for scenario gates).
TIMED = re.compile(r"^(scale: |worker |standby )")


def find_binary(root: Path) -> Path:
    """$QUIVER_BIN, else a release build, else a debug build."""
    env = os.environ.get("QUIVER_BIN")
    if env:
        return Path(env)
    for profile in ("release", "debug"):
        p = root / "target" / profile / "quiver"
        if p.exists():
            return p
    raise SystemExit(
        "no quiver binary: build it (cargo build --bin quiver) or set QUIVER_BIN"
    )


def supported_flags(binary: Path) -> set[str]:
    """The long flags `quiver up --help` lists, e.g. {"--config", "--admin-listen"}."""
    out = subprocess.run(
        [str(binary), "up", "--help"], capture_output=True, text=True, timeout=30
    )
    return set(re.findall(r"(--[a-z][a-z0-9-]+)", out.stdout + out.stderr))



@dataclass
class Quiver:
    """A running `quiver up`; use as a context manager."""

    binary: Path
    args: list[str]
    log_path: Path
    ready_timeout: float = 600.0
    endpoint: str | None = None
    admin: str | None = None
    workers: dict[int, str] = field(default_factory=dict)
    exited_workers: list[int] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)  # (unix s, line)
    proc: subprocess.Popen | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _lines: list[str] = field(default_factory=list)

    def __enter__(self) -> "Quiver":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w", buffering=1)
        self._log.write("$ " + " ".join([str(self.binary), *self.args]) + "\n")
        self.proc = subprocess.Popen(
            [str(self.binary), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(self.ready_timeout) or self.endpoint is None:
            tail = "".join(self._lines[-20:])
            self.stop()
            raise RuntimeError(
                f"quiver up did not print 'quiver ready' (exit code {self.proc.poll()}); "
                f"last output:\n{tail}\nfull log: {self.log_path}"
            )
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self._log.write(line)
            self._lines.append(line)
            del self._lines[:-200]
            if TIMED.match(line):
                self.timeline.append((time.time(), line.rstrip("\n")))
            if m := ADMIN.match(line):
                self.admin = m.group(1)
            elif m := WORKER.match(line):
                self.workers[int(m.group(1))] = m.group(2)
            elif m := READY.match(line):
                self.endpoint = m.group(1)
                self._ready.set()
        # stdout closed: the process is gone; wake a waiter that is still waiting.
        self._ready.set()

    def alive_workers(self) -> list[int]:
        """Worker pids printed so far whose processes still exist."""
        return [p for p in self.workers if Path(f"/proc/{p}").exists()
                and "\tZ" not in _state(p)]

    def stop(self, grace: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._log.write(f"quiver up did not stop within {grace}s: SIGKILL\n")
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        self._log.close()
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        self.stop()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _state(pid: int) -> str:
    try:
        return next((ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("State:")), "")
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def children(p: int) -> list[int]:
    """Child processes of `p`, whichever of its threads spawned them."""
    kids: set[int] = set()
    for task in Path(f"/proc/{p}/task").glob("*"):
        try:
            kids.update(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return sorted(kids)


def process_tree_rss(pid: int) -> dict[str, float]:
    """RSS in bytes and CPU seconds of `pid` (the gateway and supervisor) and of its children."""
    def rss(p: int) -> int:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    kids = children(pid)
    return {"gateway": rss(pid), "workers": sum(rss(c) for c in kids), "worker_count": len(kids),
            "cpu_gateway": cpu_seconds(pid), "cpu_workers": sum(cpu_seconds(c) for c in kids)}


def wait_for(pred, timeout: float, poll: float = 0.1) -> bool:
    """Polls `pred` until true or `timeout`; for conditions that have no event to wait on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(poll)
    return pred()
