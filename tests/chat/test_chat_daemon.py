"""The connector in the real daemon (twistd) against the chat server simulator, over loopback.

Each test starts ``python -m gateway.sim chat-server`` and ``twistd -n gateway``; both are killed at
teardown if the test did not stop them.
"""

import datetime
import json
import pathlib
import uuid

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import defer, ssl
from twisted.internet.task import deferLater
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from gateway.testing import GatewayProcess, free_port

from .conftest import ChatSim

pytestmark = pytest.mark.timeout(120)

#: seconds a test waits for one thing to happen
WAIT = 20.0


def reactor():
    from twisted.internet import reactor

    return reactor


def gateway(processes, tmp_path, chat_url, extra=""):
    """A daemon (not started) with the connector enabled toward ``chat_url``, and its admin port."""
    admin = free_port()
    section = (
        f'[chat]\nenabled = true\nurl = "{chat_url}"\nreconnect_initial = 0.2\nreconnect_max = 0.5\n'
        "retry_initial = 0.2\nretry_max = 0.5\nrequest_timeout = 2.0\nrequest_attempts = 2\nack_timeout = 5.0\n" + extra
    )
    proc = GatewayProcess(reactor(), tmp_path, GatewayProcess.config(admin, section))
    proc.admin_port = admin
    processes.append(proc)
    return proc


@defer.inlineCallbacks
def wait_until(probe, what: str, timeout: float = WAIT):
    """Poll ``probe()`` (a Deferred) every 0.1 s until it gives a true value; return that value."""
    deadline = reactor().seconds() + timeout
    while True:
        value = yield probe()
        if value:
            return value
        if reactor().seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last saw {value!r}")
        yield deferLater(reactor(), 0.1, lambda: None)


@defer.inlineCallbacks
def registrations(sim):
    code, body = yield sim.get("/sim/connectors")
    assert code == 200
    return body


@defer.inlineCallbacks
def customer_texts(sim, number):
    """The customer's texts in the sim's conversations of ``number``, in order, per conversation."""
    code, conversations = yield sim.get("/sim/conversations")
    assert code == 200
    return [
        [m["text"] for m in c["messages"] if m["type"] == "ChatMessage" and m["from"]["id"] == c["participant"]["id"]]
        for c in conversations if c["refId"] == number
    ]


@defer.inlineCallbacks
def sent_sms(daemon):
    code, body = yield daemon.api("GET", "/api/sms/sim/sent")
    assert code == 200
    return [(sms["to"], sms["text"]) for sms in body["sent"]]


def inbound(daemon, number, text, **extra):
    return daemon.api("POST", "/api/sms/inbound", {"from": number, "text": text, **extra}, expect=200)


@pytest_twisted.inlineCallbacks
def test_the_connector_registers_and_again_after_the_chat_server_restarts(processes, tmp_path, chat_sim_launcher):
    port = free_port()
    sim = yield chat_sim_launcher(port=port)
    daemon = gateway(processes, tmp_path, f"http://127.0.0.1:{port}")
    yield daemon.start()
    connected = yield wait_until(lambda: registrations(sim).addCallback(lambda r: r["connected"]), "the registration")
    assert [(c["id"], c["name"], c["channel"]) for c in connected] == [("sms", "ExpertFlow SMS Connector", "sms")]
    yield wait_until(lambda: daemon.api("GET", "/readyz", token=None).addCallback(lambda r: r[0] == 200), "readiness")

    yield sim.process.kill()
    code, ready = yield wait_until(
        lambda: daemon.api("GET", "/readyz", token=None).addCallback(lambda r: r if r[0] == 503 else None), "not ready"
    )
    assert "not connected to the chat server" in ready["not_ready"]["chat"]

    again = yield chat_sim_launcher(port=port)
    yield wait_until(lambda: registrations(again).addCallback(lambda r: r["connected"]), "the second registration")
    yield wait_until(lambda: daemon.api("GET", "/readyz", token=None).addCallback(lambda r: r[0] == 200), "readiness again")
    assert (yield daemon.stop()) == 0, daemon.output


@pytest_twisted.inlineCallbacks
def test_an_sms_conversation_from_first_message_to_transcript_over_tls(processes, tmp_path, chat_sim_launcher):
    cert = tmp_path / "chat-cert.pem"
    launched = yield chat_sim_launcher("--tls", "--cert-out", str(cert))
    trust = ssl.Certificate.loadPEM(cert.read_bytes())
    agent = Agent(reactor(), contextFactory=BrowserLikePolicyForHTTPS(trust), pool=HTTPConnectionPool(reactor(), persistent=False))
    sim = ChatSim(launched.process, HTTPClient(agent), scheme="https")
    number = "+4915100000001"
    daemon = gateway(processes, tmp_path, f"https://localhost:{sim.port}", f'tls_ca_file = "{cert}"\n')
    yield daemon.start()
    yield wait_until(lambda: registrations(sim).addCallback(lambda r: r["connected"]), "the registration")

    # an inbound SMS opens a conversation and reaches the agent
    code, reply = yield inbound(daemon, number, "Hello, my alarm is beeping", id="provider-1")
    assert reply["sms"]["status"] == "pending" and not reply["duplicate"]
    yield wait_until(lambda: customer_texts(sim, number).addCallback(lambda t: t == [["Hello, my alarm is beeping"]]), "the message at the agent")
    code, [conversation] = yield sim.get("/sim/conversations")
    conversation_id = conversation["conversationId"]
    customer = conversation["customer"]  # the init body as the chat server got it
    assert (customer["channel"], customer["refId"], customer["phone"]) == ("sms", number, number)
    assert str(uuid.UUID(customer["requestId"])) == customer["requestId"].lower()  # a GUID
    assert datetime.datetime.fromisoformat(customer["timestamp"]).tzinfo is not None  # ISO 8601 with its zone

    # the agent's reply leaves as an SMS; a whisper does not
    yield sim.post(f"/sim/conversations/{conversation_id}/messages", {"text": "internal: call the tech", "tag": "whisper"})
    yield sim.post(f"/sim/conversations/{conversation_id}/messages", {"text": "We are on it."})
    yield wait_until(lambda: sent_sms(daemon).addCallback(lambda s: (number, "We are on it.") in s), "the reply as SMS")
    assert (yield sent_sms(daemon)) == [(number, "We are on it.")]

    # ending the conversation closes it; then the transcript is there
    code, body = yield daemon.api("GET", "/api/chat/conversations")
    assert [c["conversationId"] for c in body["conversations"]] == [conversation_id]
    code, body = yield daemon.api("POST", f"/api/chat/transcript/{conversation_id}/pdf")
    assert (code, body["error"]) == (404, "not_found")
    yield sim.post(f"/sim/conversations/{conversation_id}/end")
    yield wait_until(lambda: daemon.api("GET", "/api/chat/conversations").addCallback(lambda r: r[1]["conversations"] == []), "the close")
    code, body = yield daemon.api("POST", f"/api/chat/transcript/{conversation_id}/pdf", expect=200)
    pdf = pathlib.Path(body["path"]).read_bytes()
    assert pdf.startswith(b"%PDF-") and b"We are on it." in pdf, pdf.decode("latin-1")
    code, body = yield daemon.api("POST", f"/api/chat/transcript/{conversation_id}/email", expect=200)
    assert body["requested"] is True

    # the next SMS opens a new conversation; a campaign message goes out as SMS too
    yield inbound(daemon, number, "Thanks!")
    yield wait_until(lambda: customer_texts(sim, number).addCallback(lambda t: len(t) == 2 and t[1] == ["Thanks!"]), "a new conversation")
    yield sim.post("/sim/sms", {"to": "+4917000000009", "text": "Maintenance tonight"})
    yield wait_until(lambda: sent_sms(daemon).addCallback(lambda s: ("+4917000000009", "Maintenance tonight") in s), "the campaign SMS")
    assert (yield daemon.stop()) == 0, daemon.output


@pytest_twisted.inlineCallbacks
def test_sms_that_arrive_while_the_chat_server_is_down_are_delivered_in_order_across_a_restart(
    processes, tmp_path, chat_sim_launcher
):
    port = free_port()
    number = "+4915100000002"
    sim = yield chat_sim_launcher(port=port)
    first = gateway(processes, tmp_path, f"http://127.0.0.1:{port}")
    yield first.start()
    yield inbound(first, number, "before")
    yield wait_until(lambda: customer_texts(sim, number).addCallback(lambda t: t == [["before"]]), "the first SMS")

    yield sim.process.kill()
    for text in ("one", "two"):
        yield inbound(first, number, text)
    code, status = yield first.api("GET", "/api/status")
    assert status["chat"]["inbound"]["pending"] == 2
    assert (yield first.stop()) == 0, first.output

    second = gateway(processes, tmp_path, f"http://127.0.0.1:{port}")
    yield second.start()
    yield inbound(second, number, "three")
    code, body = yield second.api("GET", "/api/sms?direction=inbound")
    assert [(r["text"], r["status"]) for r in body["sms"]] == [
        ("before", "delivered"), ("one", "pending"), ("two", "pending"), ("three", "pending")]

    returned = yield chat_sim_launcher(port=port)  # it has forgotten the first conversation
    texts = yield wait_until(lambda: customer_texts(returned, number).addCallback(lambda t: t if t and len(t[0]) == 3 else None), "the backlog")
    assert texts == [["one", "two", "three"]]
    yield inbound(second, number, "four")
    yield wait_until(lambda: customer_texts(returned, number).addCallback(lambda t: t == [["one", "two", "three", "four"]]), "the next SMS")
    code, body = yield second.api("GET", "/api/sms?direction=inbound")
    assert {r["status"] for r in body["sms"]} == {"delivered"}
    assert (yield second.stop()) == 0, second.output


@pytest_twisted.inlineCallbacks
def test_malformed_packets_and_unexpected_events_are_logged_and_the_link_kept(processes, tmp_path, chat_sim_launcher):
    sim = yield chat_sim_launcher()
    daemon = gateway(processes, tmp_path, sim.url)
    yield daemon.start()
    yield wait_until(lambda: registrations(sim).addCallback(lambda r: r["connected"]), "the registration")

    for data in ("2[oops", "7what", '2["messageArrived",{"type":"Poll"}]'):
        code, _ = yield sim.post("/sim/connectors/sms/raw", {"data": data})
        assert code == 200
    yield sim.post("/sim/connectors/sms/emit", {"event": "surprise", "args": [{"x": 1}]})
    yield sim.post("/sim/sms", {"to": "+4917000000001", "text": "still here"})
    yield wait_until(lambda: sent_sms(daemon).addCallback(lambda s: s == [("+4917000000001", "still here")]), "the SMS after the noise")

    assert len((yield registrations(sim))["registrations"]) == 1  # never reconnected
    yield daemon.wait_for_output("ignored a message (malformed): 'messageArrived' refused: unknown message type 'Poll'")
    for needle in ("ignored a message (malformed): malformed packet", "unknown Socket.IO packet type '7'",
                   "ignored a message (unknown): unexpected event 'surprise'"):
        assert needle in daemon.output
    assert (yield daemon.stop()) == 0, daemon.output


class Webhook(Resource):
    """An SMS provider's webhook: answers 503 to the first ``failures`` POSTs, then 200."""

    isLeaf = True

    def __init__(self, failures):
        super().__init__()
        self.failures = failures
        self.received = []

    def render_POST(self, request):
        self.received.append((request.getHeader("authorization"), json.loads(request.content.read())))
        if len(self.received) <= self.failures:
            request.setResponseCode(503)
            return b"try later"
        return b"{}"


@pytest.fixture
def webhook():
    """A Webhook (503 twice, then 200) listening on a loopback port; ``(resource, url)``."""
    resource = Webhook(failures=2)
    port = reactor().listenTCP(0, Site(resource), interface="127.0.0.1")
    yield resource, f"http://127.0.0.1:{port.getHost().port}/sms"
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest_twisted.inlineCallbacks
def test_the_http_transport_posts_each_sms_until_the_provider_takes_it(processes, tmp_path, chat_sim_launcher, webhook):
    resource, url = webhook
    sim = yield chat_sim_launcher()
    daemon = gateway(processes, tmp_path, sim.url, f'transport = "http"\n\n[chat.http]\nurl = "{url}"\ntoken = "hook-t0ken"\n')
    yield daemon.start()
    yield wait_until(lambda: registrations(sim).addCallback(lambda r: r["connected"]), "the registration")
    yield sim.post("/sim/sms", {"to": "+4917000000002", "text": "first"})
    yield sim.post("/sim/sms", {"to": "+4917000000002", "text": "second"})
    yield wait_until(lambda: defer.succeed(len(resource.received) == 4), "the webhook calls")
    assert [(auth, body["to"], body["text"]) for auth, body in resource.received] == [
        ("Bearer hook-t0ken", "+4917000000002", "first")] * 3 + [("Bearer hook-t0ken", "+4917000000002", "second")]
    assert len({body["id"] for _, body in resource.received[:3]}) == 1  # the same id on every attempt
    code, body = yield daemon.api("GET", "/api/sms?direction=outbound")
    yield wait_until(
        lambda: daemon.api("GET", "/api/sms?direction=outbound").addCallback(lambda r: [s["status"] for s in r[1]["sms"]] == ["delivered"] * 2),
        "both delivered",
    )
    assert "hook-t0ken" not in daemon.output
    assert (yield daemon.stop()) == 0, daemon.output


@pytest_twisted.inlineCallbacks
def test_a_hostile_chat_server_is_refused_and_counted_and_the_daemon_reconnects(processes, tmp_path, chat_sim_launcher):
    """The corpus's worst: a NaN heartbeat reconnects, bad text and a 4300-digit ack id are dropped, 2 MiB reconnects."""
    sim = yield chat_sim_launcher()
    daemon = gateway(processes, tmp_path, sim.url)
    yield sim.post("/sim/open-frames", {"frames": ['0{"sid":"x","upgrades":[],"pingInterval":NaN,"pingTimeout":20000}']})
    yield daemon.start()
    yield wait_until(lambda: registrations(sim).addCallback(lambda r: r["connected"]), "the registration after the NaN open")
    yield daemon.wait_for_output("NaN is not a JSON number")

    frames = ['42["messageArrived","\\ud800"]', {"text": "42", "repeat": "9", "times": 4300, "then": '["messageArrived",{}]'}]
    code, _ = yield sim.post("/sim/connectors/sms/frames", {"frames": frames})
    assert code == 200
    yield sim.post("/sim/sms", {"to": "+4917000000001", "text": "still here"})
    yield wait_until(lambda: sent_sms(daemon).addCallback(lambda s: s == [("+4917000000001", "still here")]), "the SMS after the noise")
    assert len((yield registrations(sim))["registrations"]) == 1  # the dropped packets did not cost the link

    code, _ = yield sim.post("/sim/connectors/sms/frames", {"frames": [
        {"text": '42["messageArrived","', "repeat": "a", "times": 2 << 20, "then": '"]'}]})
    assert code == 200
    yield wait_until(lambda: registrations(sim).addCallback(lambda r: len(r["registrations"]) == 2), "the reconnect")
    code, body = yield daemon.api("GET", "/api/sms?direction=outbound")
    assert [sms["text"] for sms in body["sms"]] == ["still here"]  # nothing half-broken stored
    for needle in ("ignored a message (bad_text)", "ack id of 4300 digits", "exceeds payload limit of 1048576"):
        assert needle in daemon.output, needle
    metrics = yield treq_get(f"http://127.0.0.1:{daemon.admin_port}/metrics")
    assert 'gateway_ignored_messages_total{adapter="chat",reason="bad_text"} 1.0' in metrics
    assert 'gateway_ignored_messages_total{adapter="chat",reason="oversized"} 1.0' in metrics
    assert "Traceback" not in daemon.output
    assert (yield daemon.stop()) == 0, daemon.output


@defer.inlineCallbacks
def treq_get(url):
    client = HTTPClient(Agent(reactor(), pool=HTTPConnectionPool(reactor(), persistent=False)))
    response = yield client.get(url)
    return (yield response.text())
