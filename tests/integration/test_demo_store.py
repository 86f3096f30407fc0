"""``make demo`` twice in the same directory: the second run's store holds its own records only, so the
status page's recent calls (and the API's CDRs and SMS) never mix in an earlier run's."""

import os
import signal
import sqlite3
import subprocess
import sys

import pytest

#: seconds one ``--once`` run may take (it needs about 10)
DEMO_TIMEOUT = 100

pytestmark = pytest.mark.timeout(2 * DEMO_TIMEOUT + 20)


def _run_once(workdir) -> str:
    proc = subprocess.Popen([sys.executable, "-m", "gateway.demo", "--once", "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=DEMO_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    return out


def _stored(workdir) -> dict:
    with sqlite3.connect(workdir / "var" / "gateway.sqlite") as db:
        return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("cdrs", "sms")}


def test_each_demo_run_starts_with_an_empty_store(tmp_path):
    _run_once(tmp_path)
    first = _stored(tmp_path)
    assert first["cdrs"] > 0 and first["sms"] > 0, first
    token = (tmp_path / "var" / "admin-token").read_text()

    _run_once(tmp_path)
    assert _stored(tmp_path) == first, "the second run's store holds the first run's records too"
    assert (tmp_path / "var" / "admin-token").read_text() == token, "the admin token is kept across runs"
