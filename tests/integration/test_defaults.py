"""Issue 3's acceptance test: the daemon on its embedded defaults places a call end to end.

`twistd -n gateway` with no --config, exactly as `make run` starts it: admin on
127.0.0.1:8080 with a generated token, the simulated phone network, extension
1001 a simulated phone.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from gateway.testing import GatewayProcess

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def daemon(tmp_path):
    proc = GatewayProcess(reactor, tmp_path)  # no config: the embedded defaults
    yield proc
    proc.kill()


@pytest_twisted.inlineCallbacks
def test_click_to_dial_on_the_defaults_goes_dialing_talking_released_with_a_cdr(daemon, tmp_path):
    yield daemon.start(admin_port=8080)
    token = (tmp_path / "var" / "admin-token").read_text().strip()

    code, call = yield daemon.api("POST", "/api/calls", {"extension": "1001", "number": "5551234"}, token=token)
    assert code == 201, call
    call_id = call["call_id"]

    seen = [call["state"]]
    for _ in range(200):  # the phone answers after 1 s, the number after 2 s more
        _, listing = yield daemon.api("GET", "/api/calls", token=token)
        states = [c["state"] for c in listing["calls"] if c["call_id"] == call_id]
        if states and states[0] != seen[-1]:
            seen.append(states[0])
        if seen[-1] == "TALKING":
            break
        yield deferLater(reactor, 0.05, lambda: None)
    assert seen == ["DIALING", "TALKING"]

    code, ended = yield daemon.api("POST", f"/api/calls/{call_id}/hangup", {}, token=token)
    assert (code, ended["state"]) == (200, "RELEASED")
    _, listing = yield daemon.api("GET", "/api/calls", token=token)
    assert call_id not in [c["call_id"] for c in listing["calls"]]  # live calls only
    _, listing = yield daemon.api("GET", "/api/calls?extension=1001", token=token)  # and the recently released
    assert [c["state"] for c in listing["calls"] if c["call_id"] == call_id] == ["RELEASED"]

    for _ in range(100):
        _, cdrs = yield daemon.api("GET", "/api/cdrs", token=token)
        mine = [c for c in cdrs["cdrs"] if c["call_id"] == call_id]
        if mine:
            break
        yield deferLater(reactor, 0.05, lambda: None)
    (cdr,) = mine
    assert cdr["cause"] == "normal" and cdr["extension"] == "1001"
    assert cdr["answered_at"] is not None and cdr["billable_seconds"] >= 0
    assert {leg["number"] for leg in cdr["legs"]} >= {"5551234"}
    assert (yield daemon.stop()) == 0


@pytest_twisted.inlineCallbacks
def test_a_second_make_run_says_a_gateway_may_be_running_and_what_to_change(daemon, tmp_path):
    yield daemon.start(admin_port=8080)
    # The start-up log says which adapters run on the defaults, and which are off.
    assert ("adapters: optimaccs on, patriot on (bridge on, 0 desktop links), cti off (enabled = false),"
            " chat off (enabled = false)") in daemon.output
    (tmp_path / "second").mkdir()
    second = GatewayProcess(reactor, tmp_path / "second")
    try:
        second.spawn()
        code = yield second.ended.addTimeout(60, reactor)
    finally:
        second.kill()
    assert code != 0
    assert ("a gateway may already be running (stop it, or, to run a second one, copy etc/gateway.toml, change"
            " [admin] listen in the copy and start with --config PATH (make run ARGS='--config PATH'))") in second.output
    assert "Traceback" not in second.output
