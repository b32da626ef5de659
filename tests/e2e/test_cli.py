"""The command-line client and the life cycle of `quiver up`."""

import subprocess

from conftest import QUIVER_BIN, children_of


def test_sql_prints_a_table(quiver):
    out = subprocess.run([QUIVER_BIN, "sql", "--endpoint", quiver.endpoint,
                          "SELECT r_name FROM region ORDER BY r_regionkey"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "| AFRICA" in out.stdout and "(5 rows)" in out.stdout


def test_sql_reports_errors(quiver):
    out = subprocess.run([QUIVER_BIN, "sql", "--endpoint", quiver.endpoint, "SELECT * FROM nowhere"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr and "nowhere" in out.stderr


def test_up_stops_cleanly_on_sigterm(start_quiver):
    q = start_quiver(workers=2)
    workers = children_of(q.proc.pid)
    assert len(workers) == 2
    assert q.stop() == 0
