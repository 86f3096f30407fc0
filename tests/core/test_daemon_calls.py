"""Click-to-dial and an inbound call through the real daemon: twistd, the admin HTTP API, SQLite CDRs."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from gateway.testing import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(60)

CALLS = """
[pbx.sim]
phone_answer_delay = 0.2
ring_time = 0.3
audio = "tone"

[[extensions]]
id = "1001"
name = "Alice"

[[routes]]
did = "100"
to = "extension:1001"

[[routes]]
did = "200"
to = "app:echo"
"""


@pytest.fixture
def daemon(tmp_path):
    made = []

    @defer.inlineCallbacks
    def start():
        admin = free_port()
        proc = GatewayProcess(reactor, tmp_path, GatewayProcess.config(admin, CALLS))
        made.append(proc)
        yield proc.start(admin)
        return proc

    yield start
    for proc in made:
        proc.kill()


@defer.inlineCallbacks
def state_becomes(proc, call_id, state, timeout=10.0):
    for _ in range(int(timeout / 0.05)):
        code, call = yield proc.api("GET", f"/api/calls/{call_id}", expect=200)
        if call["state"] == state:
            return call
        yield deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"call {call_id} never became {state}: {call}")


@pytest_twisted.inlineCallbacks
def test_click_to_dial_talks_and_ends_with_a_cdr(daemon):
    proc = yield daemon()
    code, call = yield proc.api("POST", "/api/calls", {"extension": "1001", "number": "5551234"})
    assert (code, call["state"]) == (201, "DIALING")
    call = yield state_becomes(proc, call["call_id"], "TALKING")
    assert [p["number"] for p in call["parties"]] == ["5551234"]
    code, call = yield proc.api("POST", f"/api/calls/{call['call_id']}/hangup", expect=200)
    assert (call["state"], call["cause"]) == ("RELEASED", "normal")
    for _ in range(100):  # the CDR is written through the store's thread
        code, body = yield proc.api("GET", f"/api/cdrs/{call['call_id']}")
        if code == 200:
            break
        yield deferLater(reactor, 0.05, lambda: None)
    assert (code, body["cause"], body["extension"]) == (200, "normal", "1001")
    assert [leg["role"] for leg in body["legs"]] == ["device", "party"]
    yield proc.stop()
    assert "Traceback" not in proc.output


@pytest_twisted.inlineCallbacks
def test_a_live_call_is_ended_with_cause_shutdown_on_sigterm(daemon, tmp_path):
    proc = yield daemon()
    code, call = yield proc.api("POST", "/api/sim/inbound", {"caller_id": "0811222333", "did": "200"}, expect=201)
    assert (call["state"], call["app"]) == ("TALKING", "echo")
    yield proc.stop()
    restarted = yield daemon()
    code, cdr = yield restarted.api("GET", f"/api/cdrs/{call['call_id']}", expect=200)
    assert (cdr["cause"], cdr["app"], cdr["did"]) == ("shutdown", "echo", "200")
    yield restarted.stop()
