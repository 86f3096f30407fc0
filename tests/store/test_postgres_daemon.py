"""The real daemon on ``[store] url = "postgresql://..."`` (a real server from tests/engines.py): its
CDRs go to PostgreSQL and survive ``kill -9``; a server that is down at start leaves the daemon
running with ``store`` not ready, naming the server, until it comes."""

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from gateway.testing import GatewayProcess, free_port
from tests.engines import PostgresServer

pytestmark = pytest.mark.timeout(120)

EXTRA = "[[extensions]]\nid = '1001'\n\n[pbx.sim]\nphone_answer_delay = 0.1\nring_time = 0.1\n"


def config(admin, url):
    text = GatewayProcess.config(admin, EXTRA)
    sqlite = 'url = "sqlite:var/gateway.sqlite"'
    assert sqlite in text
    return text.replace(sqlite, f'url = "{url}"')


def gateway(processes, tmp_path, text):
    proc = GatewayProcess(reactor, tmp_path, text)
    processes.append(proc)
    return proc


@pytest_twisted.inlineCallbacks
def one_call(proc):
    """Place a call to 1001, hang it up once talking, wait for its CDR in /api/cdrs; its id."""
    code, call = yield proc.api("POST", "/api/calls", {"extension": "1001", "number": "5551234"})
    assert code == 201, call
    call_id = call["call_id"]
    for _ in range(100):
        _, body = yield proc.api("GET", f"/api/calls/{call_id}")
        if body["state"] == "TALKING":
            break
        yield deferLater(reactor, 0.05, lambda: None)
    yield proc.api("POST", f"/api/calls/{call_id}/hangup", {}, expect=200)
    for _ in range(200):
        _, cdrs = yield proc.api("GET", "/api/cdrs")
        if any(c["call_id"] == call_id for c in cdrs.get("cdrs", [])):
            return call_id
        yield deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"the CDR of {call_id} never came; output:\n{proc.output[-3000:]}")


def causes_in_postgresql(url, call_id):
    with psycopg.connect(url, autocommit=True) as conn:
        return [cause for (cause,) in conn.execute("SELECT cause FROM cdrs WHERE call_id = %s", (call_id,))]


@pytest_twisted.inlineCallbacks
def test_the_daemons_cdrs_go_to_postgresql_and_survive_kill_9(processes, tmp_path, postgres_server):
    admin = free_port()
    proc = gateway(processes, tmp_path, config(admin, postgres_server.url))
    yield proc.start(admin)
    assert f"CDR store gateway@127.0.0.1:{postgres_server.port}/{postgres_server.name} is open" in proc.output
    call_id = yield one_call(proc)
    proc.kill()
    assert (yield proc.ended) == -9
    assert causes_in_postgresql(postgres_server.url, call_id) == ["normal"]


@pytest_twisted.inlineCallbacks
def test_a_daemon_started_while_postgresql_is_down_runs_and_stores_once_it_is_up(processes, tmp_path):
    server = PostgresServer()
    try:
        admin = free_port()
        url = server.url("gateway")
        proc = gateway(processes, tmp_path, config(admin, url))
        yield proc.start(admin)  # /healthz answers: the daemon runs without its store
        code, body = yield proc.api("GET", "/readyz")
        assert code == 503
        assert f"PostgreSQL gateway@127.0.0.1:{server.port}/gateway cannot be reached" in body["not_ready"]["store"]
        server.start()
        server.create_database("gateway")
        deadline = reactor.seconds() + 30
        while (yield proc.api("GET", "/readyz"))[0] != 200:
            assert reactor.seconds() < deadline, proc.output[-3000:]
            yield deferLater(reactor, 0.2, lambda: None)
        call_id = yield one_call(proc)
        assert causes_in_postgresql(url, call_id) == ["normal"]
        assert (yield proc.stop()) == 0
    finally:
        server.cleanup()
