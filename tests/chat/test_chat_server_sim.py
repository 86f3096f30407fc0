"""The Expertflow chat server simulator, driven by the Twisted Socket.IO client and treq.

Each test starts ``python -m gateway.sim chat-server`` on a free loopback port.
"""

import re

import pytest_twisted
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint

from gateway.sim.chat_server import ChatState, Conversation, RequestError, normalise_init, transcript_pdf

CONNECTOR = {"id": "sms", "name": "ExpertFlow SMS Connector", "channel": "sms"}
PHONE = "+4915112345678"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def register(client):
    """The connector's on_connect: register for the SMS channel (every (re)connect)."""
    return client.emit("registerConnector", CONNECTOR)


def connect_connector(sim, socketio_client, **options):
    return socketio_client(sim.url, record=("messageArrived", "conversationInfo"), on_connect=register, **options)


@pytest_twisted.inlineCallbacks
def init_conversation(sim, **fields):
    body = {"firstName": "Ann", "lastName": "Lee", "phone": PHONE, "refId": PHONE, "channel": "sms",
            "language": "en", "subject": "support", "requestId": "req-1", "timestamp": "2024-01-31T12:00:00Z", **fields}
    code, reply = yield sim.post("/api/customer/init", body)
    assert code == 200, reply
    return reply


def assert_valid_pdf(body: bytes):
    assert body.startswith(b"%PDF-1.") and body.rstrip().endswith(b"%%EOF")
    start = int(re.search(rb"startxref\n(\d+)\n", body).group(1))
    assert body[start:].startswith(b"xref\n")
    offsets = [int(o) for o in re.findall(rb"(\d{10}) 00000 n ", body)]
    for number, offset in enumerate(offsets, start=1):
        assert body[offset:].startswith(b"%d 0 obj" % number)


@pytest_twisted.inlineCallbacks
def test_register_connector(chat_sim_launcher, socketio_client):
    sim = yield chat_sim_launcher()
    client, recorder = connect_connector(sim, socketio_client)
    assert (yield recorder.wait("ready")) == [[True]]
    assert (yield client.emit("registerConnector", {"name": "no channel"})) == [False]
    code, connectors = yield sim.get("/sim/connectors")
    assert code == 200
    [connected] = connectors["connected"]
    assert {k: connected[k] for k in ("id", "name", "channel")} == CONNECTOR
    assert len(connectors["registrations"]) == 1


@pytest_twisted.inlineCallbacks
def test_customer_conversation_from_init_to_transcript(chat_sim_launcher, socketio_client):
    sim = yield chat_sim_launcher()
    client, recorder = connect_connector(sim, socketio_client)
    yield recorder.wait("ready")

    reply = yield init_conversation(sim)
    assert set(reply) == {"conversationId", "participant", "requestId", "timestamp"}
    assert reply["requestId"] == "req-1" and ISO.match(reply["timestamp"])
    assert reply["participant"]["name"] == "Ann Lee"
    conversation_id, customer = reply["conversationId"], reply["participant"]

    joined = yield client.emit("joinConversation", {"conversationId": conversation_id, **customer})
    assert joined == [True]
    [(info,)] = recorder.seen["conversationInfo"]
    assert set(info) == {"conversation", "messages", "participant", "role"}
    assert info["conversation"]["conversationId"] == conversation_id
    assert info["participant"] == [customer]
    [(greeting,)] = yield recorder.wait("messageArrived")
    assert (greeting["type"], greeting["activityType"], greeting["conversationId"]) == (
        "ActivityMessage", "greetings", conversation_id)

    message = {"conversationId": conversation_id, "type": "ChatMessage", "from": customer, "text": "hello",
               "refId": PHONE, "vendorExtension": {"kept": True}}
    assert (yield client.emit("sendMessage", message)) == [True]
    code, _ = yield sim.get(f"/api/customer/transcript/{conversation_id}/pdf")
    assert code == 404

    code, posted = yield sim.post(f"/sim/conversations/{conversation_id}/messages", {"text": "Hi Ann"})
    assert code == 200 and posted["deliveredTo"]
    code, _ = yield sim.post(f"/sim/conversations/{conversation_id}/messages", {"text": "VIP", "tag": "whisper"})
    code, _ = yield sim.post(f"/sim/conversations/{conversation_id}/activities", {"activityType": "participantJoined"})
    assert code == 200
    arrived = [args[0] for args in (yield recorder.wait("messageArrived", 4))]
    agent, whisper, joined_activity = arrived[1:]
    assert (agent["type"], agent["text"], agent["refId"], agent["tag"]) == ("ChatMessage", "Hi Ann", PHONE, "")
    assert agent["from"] == {"id": "agent-1", "name": "Agent"} and agent["conversationId"] == conversation_id
    assert (whisper["text"], whisper["tag"]) == ("VIP", "whisper")
    assert joined_activity["activityType"] == "participantJoined"

    assert (yield client.emit("endConversation", {"conversationId": conversation_id})) == [True]
    assert (yield client.emit("sendMessage", message)) == [False]
    code, state = yield sim.get(f"/sim/conversations/{conversation_id}")
    assert state["status"] == "ended"
    texts = [m.get("text") for m in state["messages"] if m["type"] == "ChatMessage"]
    assert texts == ["hello", "Hi Ann", "VIP"]
    assert state["messages"][1]["vendorExtension"] == {"kept": True}
    assert state["messages"][-1]["activityType"] == "endOfConversation"

    code, pdf = yield sim.get(f"/api/customer/transcript/{conversation_id}/pdf")
    assert code == 200
    assert_valid_pdf(pdf)
    assert b"Hi Ann" in pdf
    assert (yield sim.get(f"/api/customer/transcript/{conversation_id}/email")) == (200, b"")


@pytest_twisted.inlineCallbacks
def test_init_validation_and_injected_failures(chat_sim_launcher):
    sim = yield chat_sim_launcher()
    code, reply = yield sim.post("/api/customer/init", {"firstName": "Ann"})
    assert (code, reply) == (400, {"error": "channel is required"})
    assert (yield sim.post("/api/customer/init", [1]))[0] == 400
    assert (yield sim.post("/sim/init-failures", {"count": 2, "status": 503})) == (200, {"pending": [503, 503]})
    assert (yield sim.post("/sim/init-failures", {"count": 1, "status": 500}))[0] == 200
    assert (yield sim.post("/sim/init-failures", {"count": 1, "status": 404}))[0] == 400
    codes = []
    for _ in range(4):
        codes.append((yield sim.post("/api/customer/init", {"channel": "sms", "phone": PHONE}))[0])
    assert codes == [503, 503, 500, 200]


@pytest_twisted.inlineCallbacks
def test_campaign_sms_goes_to_the_registered_connector(chat_sim_launcher, socketio_client):
    sim = yield chat_sim_launcher()
    code, reply = yield sim.post("/sim/sms", {"to": PHONE, "text": "Your appointment is tomorrow"})
    assert code == 409
    client, recorder = connect_connector(sim, socketio_client)
    assert (yield recorder.wait("ready")) == [[True]]
    code, reply = yield sim.post("/sim/sms", {"to": PHONE, "text": "Your appointment is tomorrow"})
    assert code == 200, reply
    [(sms,)] = yield recorder.wait("messageArrived")
    assert sms["type"] == "ChatMessage" and "conversationId" not in sms
    assert (sms["refId"], sms["text"]) == (PHONE, "Your appointment is tomorrow")
    assert (yield sim.get("/sim/sms")) == (200, [sms])


@pytest_twisted.inlineCallbacks
def test_agent_ends_the_conversation(chat_sim_launcher, socketio_client):
    sim = yield chat_sim_launcher()
    client, recorder = connect_connector(sim, socketio_client)
    yield recorder.wait("ready")
    conversation_id = (yield init_conversation(sim))["conversationId"]
    code, reply = yield sim.post(f"/sim/conversations/{conversation_id}/activities", {"activityType": "dancing"})
    assert code == 400
    code, reply = yield sim.post(f"/sim/conversations/{conversation_id}/activities", {"activityType": "noAgentAvailable"})
    assert code == 200
    assert (yield sim.post(f"/sim/conversations/{conversation_id}/end"))[0] == 200
    activities = yield recorder.wait("messageArrived", 2)
    assert [args[0]["activityType"] for args in activities] == ["noAgentAvailable", "endOfConversation"]
    assert activities[1][0]["conversationId"] == conversation_id
    assert (yield sim.post(f"/sim/conversations/{conversation_id}/end"))[0] == 409
    assert (yield sim.post(f"/sim/conversations/{conversation_id}/messages", {"text": "late"}))[0] == 409


@pytest_twisted.inlineCallbacks
def test_unknown_conversations(chat_sim_launcher, socketio_client):
    sim = yield chat_sim_launcher()
    client, recorder = connect_connector(sim, socketio_client)
    yield recorder.wait("connected")
    assert (yield client.emit("joinConversation", {"conversationId": "nope", "id": "p", "name": "n"})) == [False]
    assert (yield client.emit("endConversation", {"conversationId": "nope"})) == [False]
    assert (yield client.emit("sendMessage", {"type": "Poke", "conversationId": "nope"})) == [False]
    assert (yield sim.get("/sim/conversations/nope"))[0] == 404
    assert (yield sim.get("/api/customer/transcript/nope/pdf"))[0] == 404
    assert (yield sim.post("/sim/conversations/nope/messages", {"text": "x"}))[0] == 404
    assert (yield sim.get("/sim/conversations")) == (200, [])


@pytest_twisted.inlineCallbacks
def test_connector_registers_again_after_the_server_restarts(chat_sim_launcher, socketio_client):
    sim = yield chat_sim_launcher()
    client, recorder = connect_connector(sim, socketio_client)
    yield recorder.wait("ready")
    yield sim.process.kill()
    yield recorder.wait("disconnected")
    restarted = yield chat_sim_launcher(port=sim.port)
    assert (yield recorder.wait("ready", 2)) == [[True], [True]]
    code, connectors = yield restarted.get("/sim/connectors")
    assert [c["channel"] for c in connectors["connected"]] == ["sms"]


@pytest_twisted.inlineCallbacks
def test_wss_with_a_trusted_self_signed_certificate(chat_sim_launcher, socketio_client, tmp_path):
    cert = tmp_path / "cert.pem"
    sim = yield chat_sim_launcher("--tls", "--cert-out", str(cert))
    trust = ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate.loadPEM(cert.read_bytes()))
    client, recorder = socketio_client(
        f"https://localhost:{sim.port}", endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", sim.port), tls=trust
    )
    yield recorder.wait("connected")
    assert (yield client.emit("registerConnector", CONNECTOR)) == [True]


class TestStateWithoutIO:
    """The pure parts: init field normalisation, failures, recipients, the PDF."""

    def test_normalise_init_accepts_the_spec_spellings(self):
        assert normalise_init({"Channel": "sms", "Email": "a@b", "reqestId": "r", "other": 1}) == {
            "email": "a@b", "channel": "sms", "requestId": "r"}

    def test_failures_come_before_validation(self):
        state = ChatState()
        state.inject_init_failures({"count": 1, "status": 500})
        try:
            state.init({})
        except RequestError as error:
            assert error.status == 500
        else:
            raise AssertionError("no injected failure")

    def test_recipients_are_members_and_the_channel_connector(self):
        state = ChatState()
        state.register("connector", {"channel": "sms"})
        conversation = Conversation("c", "sms", {}, {"id": "p", "name": "n"}, PHONE, members={"member"})
        assert state.recipients(conversation) == ["connector", "member"]
        assert state.recipients(conversation, skip="member") == ["connector"]
        state.socket_gone("connector")
        assert state.recipients(conversation) == ["member"]

    def test_pdf_escapes_text(self):
        conversation = Conversation("c", "sms", {}, {}, None, messages=[
            {"type": "ChatMessage", "from": {"name": "A"}, "text": "(x) \\ ünï"}])
        pdf = transcript_pdf(conversation)
        assert_valid_pdf(pdf)
        assert b"A: \\(x\\) \\\\ " in pdf
