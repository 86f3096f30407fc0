"""The real daemon (``twistd -n gateway``) as the Bridge Client of the strict processor-bridge simulator.

The simulator runs in the test's reactor on a loopback port; the gateway connects to it, its agent
alice (extension 1003, a simulated phone that rings until answered) logs in, and calls are placed
through the admin API's simulated network. Every test ends with the simulator's list of protocol
violations empty.
"""

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint

from gateway.cti import envelope as env
from gateway.sim.his import HisBridgeSim
from gateway.sim.tlsutil import generate_self_signed
from gateway.testing import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0
CHANNEL = "alice.cg.tel"

CONFIG = """
[[extensions]]
id = "1003"
name = "Alice"
device = "sim:manual"

[[routes]]
did = "103"
to = "extension:1003"

[pbx.sim]
ring_time = 0.3
audio = "silence"
rules = [{{match = "555000[0-9]", outcome = "busy", after = 0.3}},
         {{match = "555999[0-9]", outcome = "failed", after = 0.3}},
         {{match = "555888[0-9]", outcome = "no-answer", after = 0.3}},
         {{match = "555777[0-9]", outcome = "answer", after = 0.3, hang_up_after = 2.0}}]

[cti]
enabled = true
connect = "{connect}"
tls_ca_file = "{ca_file}"
reconnect_initial = 0.2
reconnect_max = 0.5
agents = [{{agent = "alice", extension = "1003"}}]
"""


def wait(d, seconds=WAIT):
    return d.addTimeout(seconds, reactor)


class Bridge:
    """The simulator listening on loopback, and the daemon connected to it."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.sim = HisBridgeSim(reactor, agents=["alice"])
        self.port = None
        self.daemon = None

    @defer.inlineCallbacks
    def start(self, tls=False):
        ca_file = ""
        if tls:
            certificate = generate_self_signed("localhost", ip_addresses=("127.0.0.1",))
            ca_path = self.tmp_path / "bridge.pem"
            ca_path.write_bytes(certificate.cert_pem)
            ca_file = str(ca_path)
            endpoint = SSL4ServerEndpoint(reactor, 0, certificate.server_options(), interface="127.0.0.1")
        else:
            endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port = yield self.sim.listen(endpoint)
        number = self.port.getHost().port
        connect = f"tls:localhost:{number}" if tls else f"tcp:host=127.0.0.1:port={number}"
        admin = free_port()
        self.daemon = GatewayProcess(reactor, self.tmp_path, GatewayProcess.config(admin, CONFIG.format(
            connect=connect, ca_file=ca_file)))
        yield self.daemon.start(admin)
        yield wait(self.sim.when_ready())

    @defer.inlineCallbacks
    def stop(self):
        if self.daemon is not None:
            yield self.daemon.stop()
        if self.port is not None:
            yield self.port.stopListening()
        self.sim.disconnect()

    @defer.inlineCallbacks
    def send(self, verb, target=None, **properties):
        response = yield wait(self.sim.send(verb, target, **properties))
        return response

    @defer.inlineCallbacks
    def ok(self, verb, target=None, **properties):
        response = yield self.send(verb, target, **properties)
        assert response.ok, response.describe()
        return response

    @defer.inlineCallbacks
    def inbound(self, caller="5551234"):
        """A call to alice's DID: (call id, conversation target), once the conversation is initialised."""
        conversation = self.sim.when_destination("conversation")
        _, call = yield self.daemon.api("POST", "/api/sim/inbound", {"caller_id": caller, "did": "103"}, expect=201)
        destination = yield wait(conversation)
        assert destination.target == f"{CHANNEL}.{call['call_id']}.primary"
        return call["call_id"], destination.target

    @defer.inlineCallbacks
    def call_state(self, call_id):
        code, call = yield self.daemon.api("GET", f"/api/calls/{call_id}")
        return call["state"] if code == 200 else code

    def event(self, name, target):
        return wait(self.sim.when_event(name, target))


@pytest.fixture
def bridge(tmp_path):
    made = Bridge(tmp_path)
    yield made
    pytest_twisted.blockon(made.stop())
    assert made.sim.violations == []


@pytest_twisted.inlineCallbacks
def test_login_and_a_call_through_every_request(bridge):
    yield bridge.start()
    assert bridge.sim.status == "STARTED"
    code, status = yield bridge.daemon.api("GET", "/api/status")
    assert code == 200 and status["cti"]["agents"][0]["agent"] == "alice"

    call_id, conversation = yield bridge.inbound()
    assert bridge.sim.destinations[conversation].init.state == "RINGING"
    talking = bridge.event("conversation.talking", conversation)
    yield bridge.ok("accept")
    yield talking
    for verb, event in [("hold", "conversation.held"), ("retrieve", "conversation.talking"),
                        ("mute", "conversation.mute"), ("unmute", "conversation.talking")]:
        raised = bridge.event(event, conversation)
        yield bridge.ok(verb)
        yield raised

    started = reactor.seconds()
    yield bridge.ok("senddtmf", digits="12#")
    assert reactor.seconds() - started >= 0.4, "three 100 ms tones and two 50 ms gaps"

    failed = bridge.event("conversation.transfer.failed", conversation)
    yield bridge.ok("transfer", destination="5550001")
    assert (yield failed).body == {"reason": "busy"}
    assert (yield bridge.call_state(call_id)) == "TALKING"

    added = bridge.event("conversation.partyadded", conversation)
    yield bridge.ok("conference", destination="5557777")
    assert (yield added).body == {"number": "5557777", "name": ""}
    removed = bridge.event("conversation.partyremoved", conversation)
    yield bridge.ok("removeparty", number="5557777")
    assert (yield removed).body == {"number": "5557777"}

    ended = bridge.event("conversation.ended", conversation)
    yield bridge.ok("release")
    yield ended
    yield bridge.ok("dispose")
    assert (yield bridge.call_state(call_id)) == 404
    assert bridge.sim.event_names(conversation) == [
        "conversation.started", "conversation.ringing", "conversation.talking", "conversation.partyadded",
        "conversation.held", "conversation.talking", "conversation.mute", "conversation.talking",
        "conversation.transfer.failed", "conversation.partyadded", "conversation.partyremoved",
        "conversation.ended",
    ]


@pytest_twisted.inlineCallbacks
def test_a_blind_transfer_ends_the_agents_call(bridge):
    yield bridge.start()
    call_id, conversation = yield bridge.inbound()
    yield bridge.ok("accept")
    ended = bridge.event("conversation.ended", conversation)
    yield bridge.ok("transfer", destination="5552222")
    yield ended
    _, listed = yield bridge.daemon.api("GET", "/api/calls")
    calls = listed["calls"]
    assert [(c["state"], c["attributes"]["transferred_from"]) for c in calls] == [("TALKING", call_id)]


@pytest_twisted.inlineCallbacks
def test_the_link_dropped_and_reestablished_keeps_the_call(bridge):
    yield bridge.start()
    call_id, conversation = yield bridge.inbound()
    yield bridge.ok("accept")
    logged_before = len(bridge.sim.event_log)

    bridge.sim.disconnect()
    reinitialised = bridge.sim.when_destination("conversation")
    yield wait(bridge.sim.when_ready())
    assert (yield wait(reinitialised)).target == conversation
    assert list(bridge.sim.destinations[CHANNEL].init.interactions) == [call_id]
    assert bridge.sim.destinations[conversation].init.state == "TALKING"
    assert not [e for e in bridge.sim.event_log[logged_before:] if e.name == "channel.interaction"]
    _, listed = yield bridge.daemon.api("GET", "/api/calls")
    calls = listed["calls"]
    assert [c["call_id"] for c in calls] == [call_id]

    ended = bridge.event("conversation.ended", conversation)
    yield bridge.ok("release", target=conversation)
    yield ended


@pytest_twisted.inlineCallbacks
def test_a_call_arriving_while_the_link_is_down_is_not_lost(bridge):
    yield bridge.start()
    number = bridge.port.getHost().port
    yield bridge.port.stopListening()
    bridge.port = None
    bridge.sim.disconnect()
    yield bridge.daemon.wait_for_output("link lost")
    _, call = yield bridge.daemon.api("POST", "/api/sim/inbound", {"caller_id": "5551234", "did": "103"}, expect=201)
    logged_before = len(bridge.sim.event_log)

    reinitialised = bridge.sim.when_destination("conversation")
    bridge.port = yield bridge.sim.listen(TCP4ServerEndpoint(reactor, number, interface="127.0.0.1"))
    conversation = (yield wait(reinitialised)).target
    assert conversation == f"{CHANNEL}.{call['call_id']}.primary"
    assert list(bridge.sim.destinations[CHANNEL].init.interactions) == [call["call_id"]]
    assert bridge.sim.destinations[conversation].init.state == "RINGING"
    assert not [e for e in bridge.sim.event_log[logged_before:] if e.name == "channel.interaction"]
    talking = bridge.event("conversation.talking", conversation)
    yield bridge.ok("accept")
    yield talking
    assert (yield bridge.call_state(call["call_id"])) == "TALKING"


@pytest_twisted.inlineCallbacks
def test_bad_input_gets_failure_responses_and_the_link_carries_on(bridge):
    yield bridge.start()
    bridge.sim.send_bytes(b"\x00\x00\x00\x03{{{")  # not JSON
    bridge.sim.send_bytes(b"\x00\x00\x00\x02\xff\xfe")  # not UTF-8
    header = {"type": "cti.request", "name": "conversation.request.hold", "target": "x", "requestId": "r-1"}
    response = yield wait(bridge.sim.request_malformed({"header": header, "body": "not an object"}))
    assert not response.ok and "malformed message" in response.header.error_message

    response = yield wait(bridge.sim.request(env.query("conversation.query.init", f"{CHANNEL}.nope.primary")))
    assert not response.ok and "unknown target" in response.header.error_message

    call_id, conversation = yield bridge.inbound()
    response = yield bridge.send("hold")
    assert not response.ok and response.header.error_message == "cannot hold: the call is RINGING"
    response = yield bridge.send("removeparty", number="999")
    assert not response.ok
    ended = bridge.event("conversation.ended", conversation)
    yield bridge.ok("reject")
    yield ended
    assert "link lost" not in bridge.daemon.output, "bad input never drops the link"


@pytest_twisted.inlineCallbacks
def test_hostile_frames_are_answered_or_dropped_counted_and_the_link_carries_on(bridge):
    yield bridge.start()
    frame = (b'{"header":{"type":"cti.request","name":"conversation.request.hold","target":"PROC.CONTROL",'
             b'"requestId":"r-\\ud800"}}')
    (header,) = yield wait(bridge.sim.send_hostile(len(frame).to_bytes(4, "big") + frame))
    assert (header["requestId"], header["result"]) == ("r-\\ud800", "FAILURE")
    assert "'header.requestId'" in header["errorMessage"]
    nan = b'{"header":{"type":"cti.request","name":"x","target":"y","requestId":"r-2"},"body":{"x":NaN}}'
    assert (yield wait(bridge.sim.send_hostile(len(nan).to_bytes(4, "big") + nan))) == []
    event = b'{"header":{"type":"cti.event","name":"conversation.held","target":"x"}}'
    assert (yield wait(bridge.sim.send_hostile(len(event).to_bytes(4, "big") + event))) == []
    response = yield treq.get(f"http://127.0.0.1:{bridge.daemon.admin_port}/metrics", timeout=10)
    metrics = yield response.text()
    for reason in ("bad_text", "malformed", "unknown"):
        assert f'gateway_ignored_messages_total{{adapter="cti",reason="{reason}"}} 1.0' in metrics, reason
    assert "refused: field 'header.requestId'" in bridge.daemon.output
    assert "link lost" not in bridge.daemon.output


@pytest_twisted.inlineCallbacks
def test_tls_with_the_bridges_certificate_and_stopped_on_shutdown(bridge):
    yield bridge.start(tls=True)
    assert bridge.sim.status == "STARTED"
    stopped = bridge.sim.when_event("control.status", "PROC.CONTROL")
    yield bridge.daemon.stop()
    assert (yield wait(stopped)).body == {"status": "STOPPED"}
    assert "gateway stopped" in bridge.daemon.output

