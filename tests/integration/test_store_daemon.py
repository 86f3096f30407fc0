"""The real daemon's durable records: private files whatever the umask, and a store that goes away."""

import os
import sqlite3
import stat

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from gateway.testing import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(90)

CALLS = "[[extensions]]\nid = '1001'\n\n[pbx.sim]\nphone_answer_delay = 0.1\nring_time = 0.1\n"


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_every_file_the_daemon_creates_is_0600_even_under_umask_0(processes, tmp_path):
    """Under umask 0, with a state directory left 0755: the database, its -wal and -shm, the
    generated admin token and the recordings' directory are the gateway's alone, and the open
    state directory is warned about (its path and mode)."""
    state = tmp_path / "var"
    state.mkdir()
    os.chmod(state, 0o755)
    admin = free_port()
    config = GatewayProcess.config(admin, CALLS, token="")
    proc = GatewayProcess(reactor, tmp_path, config)
    processes.append(proc)
    proc.admin_port = admin
    proc.spawn(wrapper=["sh", "-c", 'umask 000 && exec "$@"', "sh"])
    yield proc.wait_for_output("gateway gateway started")
    token = (state / "admin-token").read_text().strip()
    code, call = yield proc.api("POST", "/api/calls", {"extension": "1001", "number": "5551234"}, token=token)
    assert code == 201, call
    assert f"the state directory {state} is mode 0755" in proc.output
    created = {}
    for directory, dirs, files in os.walk(state):
        for name in dirs + files:
            path = os.path.join(directory, name)
            created[os.path.relpath(path, state)] = stat.S_IMODE(os.lstat(path).st_mode)
    assert {"gateway.sqlite", "gateway.sqlite-wal", "gateway.sqlite-shm", "admin-token"} <= set(created)
    for name, mode in created.items():
        expected = 0o700 if os.path.isdir(state / name) else 0o600
        assert mode == expected, f"{name} is {mode:04o}, not {expected:04o}"
    assert (yield proc.stop()) == 0


@pytest_twisted.inlineCallbacks
def test_calls_go_on_while_the_database_is_locked_and_their_cdrs_are_there_after(processes, tmp_path):
    """A real lock: this test holds the database's write lock (BEGIN EXCLUSIVE), as another process
    would. Calls go on, /readyz names the store with SQLite's error, the metrics count the failed
    writes and show the waiting CDRs; once the lock goes, every CDR is in the database."""
    admin = free_port()
    proc = GatewayProcess(reactor, tmp_path, GatewayProcess.config(admin, CALLS))
    processes.append(proc)
    yield proc.start(admin)
    other = sqlite3.connect(tmp_path / "var" / "gateway.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        call_ids = []
        for _ in range(3):
            code, call = yield proc.api("POST", "/api/calls", {"extension": "1001", "number": "5551234"})
            assert code == 201, call
            call_ids.append(call["call_id"])
            yield sleep(0.5)
            code, _ = yield proc.api("POST", f"/api/calls/{call['call_id']}/hangup", {})
            assert code in (200, 202), code
        # the first write waits for SQLite's busy timeout (5 s), then fails
        for _ in range(150):
            code, ready = yield proc.api("GET", "/readyz", token=None)
            if code == 503:
                break
            yield sleep(0.1)
        assert (code, ready["not_ready"]) == (503, {"store": "database is locked"}), ready
        _, metrics = yield _metrics(proc)
        assert 'gateway_store_write_failures_total{kind="cdr"}' in metrics
        assert 'gateway_store_pending{kind="cdr"} 3.0' in metrics
    finally:
        other.execute("COMMIT")
        other.close()
    for _ in range(300):
        code, ready = yield proc.api("GET", "/readyz", token=None)
        if code == 200:
            break
        yield sleep(0.1)
    assert code == 200, ready
    _, body = yield proc.api("GET", "/api/cdrs")
    assert sorted(c["call_id"] for c in body["cdrs"]) == sorted(call_ids)
    assert (yield proc.stop()) == 0


@pytest_twisted.inlineCallbacks
def _metrics(proc):
    import treq

    response = yield treq.get(f"http://127.0.0.1:{proc.admin_port}/metrics", timeout=10)
    text = yield response.text()
    return response.code, text
