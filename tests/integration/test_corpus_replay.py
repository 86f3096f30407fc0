"""The bad-input corpus (``tests/corpus``) replayed against the real daemon, over loopback.

Each test starts ``twistd -n gateway`` with the ingresses or links of one group, places a **canary**
call (an OptimaCCS caller to the echo DID, streaming audio all along), then replays every case of the
group's corpus files. After each file (a batch) it checks:

- the daemon is alive (``/healthz``);
- the canary still hears its own audio, frames still flowing;
- no traceback is in the daemon's output;
- its resident memory stayed within :data:`RSS_GROWTH_LIMIT` of what it was before the batch.

At the end every call the registry ended has its CDR in the store (``gateway_calls_ended_total``
against ``/api/cdrs``), the canary's echo matches, and SIGTERM stops the daemon with status 0.

Ingresses (the daemon is the server): OptimaCCS inbound, the Patriot Dialler Bridge, the admin API, one
new connection or request per case. Outgoing links (the daemon is the client of a hostile peer run by
the test): the HIS processor bridge (``HisBridgeSim.send_hostile`` on the ``[cti]`` link), the chat
server (``python -m gateway.sim chat-server`` and its ``/sim/`` controls), the Patriot Desktop API
(``PatriotServerSim`` over wss, hostile answers to authentication queued), and the OptimaCCS outbound
provider (REST replies from the test, media frames from ``FakeProviderApi`` sessions) on click-to-dial
calls. Hostile handshakes (chat open packets, Patriot authentications) are queued in a row so each
costs the link one reconnect; the simulators say which connection got which case, so a handshake the
gateway accepted is named by its case.
"""

from __future__ import annotations

import os
import re
import sys

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from corpus import Case, his_stream, load
from gateway.sim import tlsutil
from gateway.sim.his import HisBridgeSim, SimulatorError
from gateway.sim.optimaccs import ApiSettings, CallScript, FakeProviderApi, place_call
from gateway.sim.patriot_server import HOSTNAME, PatriotServerSim
from gateway.testing import TOKEN, GatewayProcess, free_port
from optimaccs.support import Reply

pytestmark = pytest.mark.timeout(240)

ECHO_DID = "0210000200"
#: how much a batch may grow the daemon's resident memory
RSS_GROWTH_LIMIT = 48 * 1024 * 1024
#: how long a case's connection is watched for the expected outcome
OUTCOME_WAIT = 5.0
#: how long a connection must stay open to count as "dropped, link goes on"
STAYS_OPEN = 0.4


def sleep(seconds: float) -> defer.Deferred:
    return deferLater(reactor, seconds, lambda: None)


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class RawWebSocket:
    """A WebSocket client that sends whatever frames it is told to and records what comes back."""

    def __init__(self, url: str):
        self.url = url
        self.received: list[tuple[bytes, bool]] = []
        self.close_code = self.close_reason = None
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        self._protocol = None

    @defer.inlineCallbacks
    def connect(self):
        peer = self
        host, port = re.match(r"wss?://([^:/]+):(\d+)", self.url).groups()

        class Protocol(WebSocketClientProtocol):
            def onOpen(self):
                peer._protocol = self
                peer.opened.callback(None)

            def onMessage(self, payload, is_binary):
                peer.received.append((payload, is_binary))

            def onClose(self, was_clean, code, reason):
                peer.close_code, peer.close_reason = code, reason
                if not peer.opened.called:
                    peer.opened.errback(ConnectionError(f"refused at the handshake: {code} {reason}"))
                if not peer.closed.called:
                    peer.closed.callback(code)

        factory = WebSocketClientFactory(self.url, reactor=reactor)
        factory.protocol = Protocol
        factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0, openHandshakeTimeout=5)
        yield TCP4ClientEndpoint(reactor, host, int(port), timeout=5).connect(factory)
        yield self.opened.addTimeout(OUTCOME_WAIT, reactor)
        return self

    @property
    def is_open(self) -> bool:
        return self._protocol is not None and not self.closed.called

    def send(self, data: bytes, binary: bool) -> None:
        if self.is_open:
            self._protocol.sendMessage(data, isBinary=binary)

    def texts(self) -> list[str]:
        return [payload.decode("utf-8") for payload, binary in self.received if not binary]

    @defer.inlineCallbacks
    def close(self):
        if self.is_open:
            self._protocol.sendClose(1000)
            try:
                yield self.closed.addTimeout(OUTCOME_WAIT, reactor)
            except defer.TimeoutError:
                self._protocol.transport.abortConnection()


class Replay:
    """A daemon under replay: its canary call, and the checks made after each batch."""

    def __init__(self, gateway: GatewayProcess, optimaccs_url: str):
        self.gateway = gateway
        self.optimaccs_url = optimaccs_url
        self.canary = None
        self.rss = None

    @property
    def pid(self) -> int:
        return self.gateway.transport.pid

    @defer.inlineCallbacks
    def start_canary(self, cleanup):
        self.canary = place_call(reactor, self.optimaccs_url,
                                 CallScript(caller_id="0811000000", did=ECHO_DID, hangup_after=600.0))
        cleanup(lambda: self.canary.close(1000, "test over"))
        yield self.canary.wait_for("audio").addTimeout(10, reactor)
        self.rss = rss_of(self.pid)

    @defer.inlineCallbacks
    def checkpoint(self, batch: str):
        """The checks after a batch: alive, canary hearing itself, no traceback, memory bounded."""
        code, _ = yield self.gateway.api("GET", "/healthz")
        assert code == 200, f"after {batch}: /healthz answered {code}"
        heard = self.canary.frames_received
        yield sleep(0.5)
        assert not self.canary.ended.called, f"after {batch}: the canary call ended ({self.canary.close_code})"
        assert self.canary.frames_received >= heard + 10, f"after {batch}: the canary's audio stalled"
        assert "Traceback" not in self.gateway.output, f"after {batch}:\n{self.gateway.output}"
        rss = rss_of(self.pid)
        assert rss - self.rss < RSS_GROWTH_LIMIT, f"after {batch}: RSS grew from {self.rss} to {rss} bytes"
        self.rss = max(self.rss, rss)

    @defer.inlineCallbacks
    def finish(self):
        """The canary hangs up and hears itself; every ended call has its CDR; SIGTERM exits 0."""
        self.canary.hangup()
        yield self.canary.ended.addTimeout(10, reactor)
        # the echo may lack only the frames a jitter buffer trimmed (counted by the daemon), no more
        trimmed = yield self.gateway.frames_trimmed()
        echo = self.canary.echo(max_skipped=trimmed)
        assert echo.matched, f"canary echo: {echo.skipped_frames} frame(s) missing, {trimmed} trimmed: {echo}"
        for _ in range(100):
            code, body = yield self.gateway.api("GET", "/api/calls")
            if not body["calls"]:
                break
            yield sleep(0.1)
        ended = yield self.metric_sum("gateway_calls_ended_total")
        for _ in range(100):
            _, body = yield self.gateway.api("GET", "/api/cdrs?limit=1000")
            if len(body["cdrs"]) >= ended:
                break
            yield sleep(0.1)
        assert len(body["cdrs"]) == ended >= 1, f"{ended} calls ended, {len(body['cdrs'])} CDRs stored"
        assert (yield self.gateway.stop()) == 0
        assert "Traceback" not in self.gateway.output, self.gateway.output

    def metric_sum(self, name: str, **labels) -> defer.Deferred:
        """The sum of the samples of ``name`` whose labels include ``labels`` (the daemon's own helper)."""
        return self.gateway.metric_sum(name, **labels)

    @defer.inlineCallbacks
    def calls(self) -> list:
        """The live calls (``/api/calls``)."""
        _, body = yield self.gateway.api("GET", "/api/calls")
        return body["calls"]


@defer.inlineCallbacks
def until(probe, what: str, timeout: float = OUTCOME_WAIT, every: float = 0.05):
    """Poll ``probe()`` (a value or a Deferred) until it is true; that value, or AssertionError naming ``what``."""
    deadline = reactor.seconds() + timeout
    while True:
        value = yield defer.maybeDeferred(probe)
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last saw {value!r})")
        yield sleep(every)


def base_config(admin: int, optimaccs: int, extra: str = "") -> str:
    return GatewayProcess.config(admin, (
        f'[optimaccs]\nlisten = "tcp:{optimaccs}:interface=127.0.0.1"\ncdr_wait = 1.0\n\n'
        '[[extensions]]\nid = "1001"\nname = "Operator 1"\ndevice = "sim"\n\n'
        f'[[routes]]\ndid = "{ECHO_DID}"\nto = "app:echo"\n\n'
        '[[routes]]\ndid = "*"\nto = "extension:1001"\n\n' + extra
    ))


@defer.inlineCallbacks
def start(cleanup, tmp_path, extra: str = "", **ports) -> Replay:
    admin, optimaccs = free_port(), free_port()
    gateway = GatewayProcess(reactor, tmp_path, base_config(admin, optimaccs, extra.format(**ports)))
    cleanup(gateway.kill)
    yield gateway.start(admin)
    replay = Replay(gateway, f"ws://127.0.0.1:{optimaccs}/")
    yield replay.start_canary(cleanup)
    return replay


@defer.inlineCallbacks
def expect_on_websocket(client: RawWebSocket, case: Case, *, init_failure=None):
    """Wait for ``case``'s outcome on ``client``; fails the test naming the case otherwise."""
    where = f"case {case.name!r}"
    if case.outcome == "close":
        try:
            yield client.closed.addTimeout(OUTCOME_WAIT, reactor)
        except defer.TimeoutError:
            raise AssertionError(f"{where}: still open, expected close {case.detail}") from None
        assert client.close_code == int(case.detail), f"{where}: closed {client.close_code} {client.close_reason}"
    elif case.outcome == "dropped":
        yield sleep(STAYS_OPEN)
        assert client.is_open, f"{where}: closed {client.close_code} {client.close_reason}, expected to stay open"
    elif case.outcome in ("init-failure", "failure-response"):
        for _ in range(int(OUTCOME_WAIT / 0.05)):
            if any(init_failure(text) for text in client.texts()):
                break
            yield sleep(0.05)
        else:
            raise AssertionError(f"{where}: no {case.outcome} among {client.texts()[:5]}")
    else:
        raise AssertionError(f"{where}: this replay does not know the outcome {case.expect!r}")


@defer.inlineCallbacks
def replay_websocket_file(replay: Replay, url: str, corpus: str, *, init_failure=None):
    cases = load(corpus)
    assert cases, f"{corpus}.json has no cases"
    for case in cases:
        client = yield RawWebSocket(url).connect()
        for data, binary in case.built():
            client.send(data, binary)
        yield expect_on_websocket(client, case, init_failure=init_failure)
        yield client.close()
    yield replay.checkpoint(corpus)


@pytest_twisted.inlineCallbacks
def test_the_optimaccs_inbound_corpus(cleanup, tmp_path):
    replay = yield start(cleanup, tmp_path)
    yield replay_websocket_file(replay, replay.optimaccs_url, "optimaccs_inbound")
    yield replay.finish()


def _patriot_refusal(text: str) -> bool:
    import json

    message = json.loads(text)
    payload = message.get("payload") or {}
    return payload.get("success") is False or message.get("type", "").endswith("error")


@pytest_twisted.inlineCallbacks
def test_the_patriot_bridge_corpus(cleanup, tmp_path):
    bridge = free_port()
    replay = yield start(cleanup, tmp_path, (
        '[patriot.bridge]\nenabled = true\nlisten = "tcp:{bridge}:interface=127.0.0.1"\n'
        'max_init_failures = 1000\n'
        'users = [{{username = "op1", password = "secret-pw", extension = "1001"}}]\n'
    ), bridge=bridge)
    yield replay_websocket_file(replay, f"ws://127.0.0.1:{bridge}/dialler", "patriot_bridge",
                                init_failure=_patriot_refusal)
    yield replay.finish()


@implementer(IPushProducer)
class HeartbeatFlood(Protocol):
    """A Patriot connection that floods heartbeats as fast as TCP takes them, without an init, and never
    reads a byte (attack finding 1). ``lost`` fires with the number of frames written once it is gone."""

    FRAME = b"\x81\x94" + b"\x00" * 4 + b'{"type":"heartbeat"}'  # a masked text frame (a zero mask)
    BATCH = FRAME * 2000

    def __init__(self, port: int):
        self.port = port
        self.lost = defer.Deferred()
        self.sent = 0
        self._paused = False
        self._call = None

    def connectionMade(self):
        self.transport.pauseProducing()  # read nothing, ever
        self.transport.registerProducer(self, True)
        self.transport.write(b"GET /dialler HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             b"Sec-WebSocket-Version: 13\r\n\r\n" % self.port)
        self._more()

    def _more(self):
        self._call = None
        if not self._paused and not self.lost.called:
            self.transport.write(self.BATCH)
            self.sent += 2000
            self._call = reactor.callLater(0, self._more)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        if self._call is None:
            self._call = reactor.callLater(0, self._more)

    def stopProducing(self):
        pass

    def connectionLost(self, reason):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self.lost.callback(self.sent)


@pytest_twisted.inlineCallbacks
def test_a_patriot_heartbeat_flood_is_closed_and_costs_the_canary_nothing(cleanup, tmp_path):
    """Attack findings 1 and 9: one unauthenticated connection flooding heartbeats without reading is closed
    within seconds past max_message_rate, the daemon's memory stays bounded and the canary's audio flows; a
    polite connection sending only heartbeats is closed by init_timeout (4008)."""
    bridge = free_port()
    replay = yield start(cleanup, tmp_path, (
        '[patriot.bridge]\nenabled = true\nlisten = "tcp:{bridge}:interface=127.0.0.1"\ninit_timeout = 6.0\n'
        'users = [{{username = "op1", password = "secret-pw", extension = "1001"}}]\n'
    ), bridge=bridge)
    polite = yield RawWebSocket(f"ws://127.0.0.1:{bridge}/dialler").connect()
    cleanup(lambda: pytest_twisted.blockon(polite.close()))
    def heartbeat():
        if polite.is_open and polite._protocol.state == polite._protocol.STATE_OPEN:
            polite.send(b'{"type":"heartbeat"}', False)

    beats = task.LoopingCall(heartbeat)
    beats.start(0.5)
    cleanup(lambda: beats.running and beats.stop())
    flood = HeartbeatFlood(bridge)
    connected = yield TCP4ClientEndpoint(reactor, "127.0.0.1", bridge, timeout=5).connect(
        protocol.Factory.forProtocol(lambda: flood))
    cleanup(connected.transport.abortConnection)
    started = reactor.seconds()
    sent = yield flood.lost.addTimeout(10, reactor)
    # closed by the message rate (the counter says which), before init_timeout would have closed it; about
    # 1 s on a quiet machine (Autobahn drops the connection 1 s after its close), more on a loaded one
    assert reactor.seconds() - started < 6, f"the flood went on for {reactor.seconds() - started:.1f} s"
    assert (yield replay.metric_sum("gateway_patriot_bridge_refused_total", reason="rate_limited")) == 1
    refused = yield replay.metric_sum("gateway_ignored_messages_total", adapter="patriot", reason="rate_limited")
    assert 0 < refused < sent, (refused, sent)
    yield replay.checkpoint("a Patriot heartbeat flood")
    assert rss_of(replay.pid) - replay.rss < 16 * 1024 * 1024
    yield polite.closed.addTimeout(8, reactor)
    assert polite.close_code == 4008, (polite.close_code, polite.close_reason)
    assert polite.texts()[:2] == ['{"type":"heartbeat-response"}'] * 2
    assert (yield replay.metric_sum("gateway_patriot_bridge_refused_total", reason="init_timeout")) == 1
    yield replay.finish()


@pytest_twisted.inlineCallbacks
def test_the_admin_api_corpus(cleanup, tmp_path):
    replay = yield start(cleanup, tmp_path, (
        '[chat]\nenabled = true\nurl = "http://127.0.0.1:{chat}"\nreconnect_initial = 5.0\n'
    ), chat=free_port())
    _, calls = yield replay.gateway.api("GET", "/api/calls")
    (canary,) = [call["call_id"] for call in calls["calls"]]
    for case in load("admin"):
        (body, _), = case.built()
        path = case.extra["path"].replace("{canary}", canary)
        response = yield treq.request(
            case.extra["method"], f"http://127.0.0.1:{replay.gateway.admin_port}{path}", data=body,
            headers={"Authorization": [f"Bearer {TOKEN}"], "Content-Type": ["application/json"]}, timeout=10)
        text = yield response.text()
        assert case.outcome == "http"
        assert response.code == int(case.detail), f"case {case.name!r}: {response.code} {text}"
        assert "error" in text, f"case {case.name!r}: {text}"
    for path in ("/api/calls", "/api/status", "/api/cdrs"):
        code, _ = yield replay.gateway.api("GET", path)
        assert code == 200, path
    yield replay.checkpoint("admin")
    yield replay.finish()


# -- the outgoing links: the daemon is the client of a hostile peer ----------------------------------


HIS_AGENT = (
    '[[extensions]]\nid = "1003"\nname = "Alice"\ndevice = "sim:manual"\n\n'
    '[[routes]]\ndid = "103"\nto = "extension:1003"\n\n'
    '[cti]\nenabled = true\nconnect = "tcp:host=127.0.0.1:port={his}"\nreconnect_initial = 0.1\n'
    'reconnect_max = 0.3\nagents = [{{agent = "alice", extension = "1003"}}]\n'
)


@defer.inlineCallbacks
def his_talking_call(replay: Replay, sim: HisBridgeSim):
    """Alice's talking call (an inbound call to her DID, accepted by the bridge): (call id, conversation target)."""
    initialised = sim.when_destination("conversation")
    _, call = yield replay.gateway.api("POST", "/api/sim/inbound", {"caller_id": "5551234", "did": "103"},
                                       expect=201)
    conversation = (yield initialised.addTimeout(OUTCOME_WAIT, reactor)).target
    talking = sim.when_event("conversation.talking", conversation)
    response = yield sim.send("accept").addTimeout(OUTCOME_WAIT, reactor)
    assert response.ok, response.describe()
    yield talking.addTimeout(OUTCOME_WAIT, reactor)
    return call["call_id"], conversation


@pytest_twisted.inlineCallbacks
def test_the_his_bridge_corpus(cleanup, tmp_path):
    sim = HisBridgeSim(reactor, agents=["alice"])
    port = yield sim.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    cleanup(sim.disconnect)
    cleanup(port.stopListening)
    replay = yield start(cleanup, tmp_path, HIS_AGENT, his=port.getHost().port)
    yield sim.when_ready().addTimeout(15, reactor)
    call_id = conversation = None
    for case in load("his"):
        where = f"case {case.name!r}"
        if case.extra.get("setup") == "talking" and conversation is None:
            call_id, conversation = yield his_talking_call(replay, sim)
        ignored = yield replay.metric_sum("gateway_ignored_messages_total", adapter="cti")
        sent = sim.send_hostile(his_stream(case, conversation)).addTimeout(OUTCOME_WAIT, reactor)
        try:
            answers = yield sent
        except SimulatorError as lost:
            assert case.outcome == "reconnect", f"{where}: the gateway dropped the link ({lost})"
            yield until(lambda: sim.connected, f"{where}: the gateway connecting again")
            yield sim.when_ready().addTimeout(OUTCOME_WAIT, reactor)
            continue
        assert case.outcome != "reconnect", f"{where}: the link carried on (answers {answers}), expected a reconnect"
        assert sim.connected, f"{where}: the link is gone"
        if case.outcome == "dropped":
            assert answers == [], f"{where}: answered {answers}"
            counted = yield replay.metric_sum("gateway_ignored_messages_total", adapter="cti")
            assert counted > ignored, f"{where}: not counted in gateway_ignored_messages_total"
        else:
            assert case.outcome == "failure-response", f"{where}: this replay does not know {case.expect!r}"
            assert len(answers) == 1, f"{where}: {len(answers)} answers: {answers}"
            header = answers[0]
            assert (header["type"], header["result"]) == ("cti.response", "FAILURE"), f"{where}: {header}"
            assert header["requestId"] == case.extra["requestId"], f"{where}: {header}"
            assert case.extra.get("error", "") in header["errorMessage"], f"{where}: {header}"
        if case.extra.get("setup") == "talking":
            (call,) = [c for c in (yield replay.calls()) if c["call_id"] == call_id]
            assert call["state"] == "TALKING", f"{where}: alice's call is {call['state']}"
    assert sim.violations == []
    assert call_id is not None, "no case had alice's talking call"
    yield sim.send_hostile(b"").addTimeout(OUTCOME_WAIT, reactor)  # the link, connected again, still answers
    yield replay.gateway.api("POST", f"/api/calls/{call_id}/hangup", expect=200)
    yield replay.checkpoint("his")
    yield replay.finish()


CHAT = (
    '[chat]\nenabled = true\nurl = "{chat}"\nreconnect_initial = 0.05\nreconnect_max = 0.2\n'
    'retry_initial = 0.2\nretry_max = 0.5\nrequest_timeout = 2.0\nack_timeout = 5.0\n'
)


@defer.inlineCallbacks
def chat_server(cleanup):
    """``python -m gateway.sim chat-server`` on a free port, killed at the end: a ``ChatSim``."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from chat.conftest import ChatSim, ServerProcess

    argv = [sys.executable, "-u", "-m", "gateway.sim", "chat-server", "--port", "0"]
    process = ServerProcess(argv)
    reactor.spawnProcess(process, argv[0], argv, env=dict(os.environ))
    cleanup(lambda: pytest_twisted.blockon(process.kill()))
    yield process.ready.addTimeout(30, reactor)
    return ChatSim(process, HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))))


@pytest_twisted.inlineCallbacks
def test_the_chat_server_corpus(cleanup, tmp_path):
    sim = yield chat_server(cleanup)
    replay = yield start(cleanup, tmp_path, CHAT, chat=sim.url)

    @defer.inlineCallbacks
    def connectors():
        code, body = yield sim.get("/sim/connectors")
        assert code == 200, body
        return body

    @defer.inlineCallbacks
    def sent():
        _, body = yield replay.gateway.api("GET", "/api/sms/sim/sent")
        return [(sms["to"], sms["text"]) for sms in body["sent"]]

    def registered(count):
        return lambda: connectors().addCallback(
            lambda c: c if len(c["registrations"]) == count and c["connected"] else None)

    before = yield until(registered(1), "the first registration", timeout=15)
    cases = load("chat")
    # The open cases in a row: each of the next Engine.IO connections gets one case's frames instead of its
    # open packet, which the gateway must refuse and connect again; it registers on the first one after them.
    opening = [case for case in cases if case.extra.get("stage") == "open"]
    for case in opening:
        assert case.outcome == "reconnect", f"case {case.name!r}: this replay does not know {case.expect!r}"
        code, body = yield sim.post("/sim/open-frames", {"frames": list(case.frames)})
        assert code == 200, f"case {case.name!r}: {body}"
    first = before["connections"] + 1
    code, body = yield sim.post("/sim/connectors/sms/frames", {"frames": ["1"]})  # an Engine.IO close
    assert code == 200, body

    def accepted(connectors):
        """The open case whose connection the gateway registered on, or None."""
        for registration in connectors["registrations"]:
            if registration["connection"] in range(first, first + len(opening)):
                return opening[registration["connection"] - first]
        return None

    def chain_done():
        return connectors().addCallback(lambda c: c if accepted(c) or len(c["registrations"]) > 1 else None)

    try:
        after = yield until(chain_done, "the registration after the open cases", timeout=2.0 * len(opening) + 5)
    except AssertionError:
        served = (yield connectors())["open_frames_served"]
        stuck = opening[len(served) - 1].name if served else "(none served)"
        raise AssertionError(f"case {stuck!r}: the gateway neither refused the open packet nor connected again")
    case = accepted(after)
    assert case is None, f"case {case.name!r}: the gateway registered on the connection with the hostile open packet"
    assert after["open_frames_served"] == list(range(first, first + len(opening))), after["open_frames_served"]
    assert [r["connection"] for r in after["registrations"][1:]] == [first + len(opening)], after["registrations"]
    assert (yield sim.get("/sim/open-frames"))[1] == {"waiting": 0}
    before = yield until(registered(2), "the registration after the open cases")

    for number, case in enumerate(case for case in cases if case.extra.get("stage") != "open"):
        where = f"case {case.name!r}"
        ignored = yield replay.metric_sum("gateway_ignored_messages_total", adapter="chat")
        registrations, connections = len(before["registrations"]), before["connections"]
        code, body = yield sim.post("/sim/connectors/sms/frames", {"frames": list(case.frames)})
        assert code == 200, f"{where}: {body}"
        if case.outcome == "reconnect":
            after = yield until(registered(registrations + 1), f"{where}: the gateway registering again")
            assert after["connections"] == connections + 1, f"{where}: {after['connections'] - connections} connections"
        else:
            assert case.outcome == "dropped", f"{where}: this replay does not know {case.expect!r}"
            to, text = f"+49170{number:08d}", f"after {case.name}"
            code, body = yield sim.post("/sim/sms", {"to": to, "text": text})
            assert code == 200, f"{where}: the SMS after the case: {body}"
            yield until(lambda: sent().addCallback(lambda s: (to, text) in s), f"{where}: the SMS after the case")
            after = yield connectors()
            assert (len(after["registrations"]), after["connections"]) == (registrations, connections), \
                f"{where}: the link was dropped ({after})"
            counted = yield replay.metric_sum("gateway_ignored_messages_total", adapter="chat")
            assert counted > ignored, f"{where}: not counted in gateway_ignored_messages_total"
        before = after
    yield replay.checkpoint("chat")
    yield replay.finish()


DESKTOP_KEY = "desk-k3y"
DESKTOP = (
    '[[extensions]]\nid = "1003"\n\n'
    '[[patriot.desktop]]\nurl = "wss://{host}:{port}/ws/dialler/v1"\nconnect = "tcp:host=127.0.0.1:port={port}"\n'
    'fingerprint = "{fingerprint}"\napi_key = "{key}"\nextension = "1003"\nretry_initial = 0.05\n'
    'retry_max = 0.2\nauth_timeout = 0.5\n'
)


def desktop_frames(case: Case) -> list:
    """The case's frames as the simulator sends them: ``str`` text frames, ``bytes`` binary ones."""
    return [data if binary else data.decode("utf-8") for data, binary in case.built()]


@pytest_twisted.inlineCallbacks
def test_the_patriot_desktop_corpus(cleanup, tmp_path):
    certificate = tlsutil.load_or_create(tmp_path / "patriot-cert", HOSTNAME)
    sim = PatriotServerSim(reactor, DESKTOP_KEY, certificate)
    port = yield sim.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    cleanup(lambda: pytest_twisted.blockon(sim.stop()))
    replay = yield start(cleanup, tmp_path, DESKTOP, host=HOSTNAME, port=port.getHost().port,
                         fingerprint=certificate.fingerprint, key=DESKTOP_KEY)
    yield sim.wait_authenticated(timeout=15)

    def logins():
        return replay.metric_sum("gateway_patriot_logins_total", mode="desktop", result="success")

    @defer.inlineCallbacks
    def link_up(where):
        yield until(lambda: sim.authenticated_clients, f"{where}: the link authenticated again")
        yield until(lambda: replay.metric_sum("gateway_patriot_desktop_up", link="0"), f"{where}: the link up")
        code, ready = yield replay.gateway.api("GET", "/readyz", token=None)
        assert code == 200, f"{where}: {ready}"

    cases = load("patriot_desktop")
    # The authentication cases in a row: each of the next connections gets one case's frames instead of its
    # authentication-response, and the gateway must leave it (or see it closed) and try again; the first
    # connection after them is answered properly.
    auth = [case for case in cases if case.extra["stage"] == "auth"]
    for case in auth:
        sim.answer_authentication_with(desktop_frames(case), then_close=case.extra.get("then") == "close")
    successes = yield logins()
    (first,) = sim.clients
    first.sendClose(1000, "next: the authentication cases")
    for index, case in enumerate(auth):
        where = f"case {case.name!r}"
        assert case.outcome == "reconnect", f"{where}: this replay does not know {case.expect!r} at the auth stage"
        yield until(lambda: len(sim.hostile_connections) > index, f"{where}: the gateway connecting again")
        hostile = sim.hostile_connections[index]
        yield until(lambda: hostile not in sim.clients, f"{where}: the gateway leaving the connection")
        assert not (yield replay.metric_sum("gateway_patriot_desktop_up", link="0")), f"{where}: the link is up"
    yield link_up("after the authentication cases")
    assert (yield logins()) == successes + 1, "the link authenticated on a hostile connection"

    for case in [case for case in cases if case.extra["stage"] == "session"]:
        where = f"case {case.name!r}"
        (client,) = sim.authenticated_clients
        request_id = [r.message.request_id for r in sim.received if r.type == "authentication-request"][-1]
        successes, mark = (yield logins()), len(sim.received)
        for frame in desktop_frames(case):
            sim.send_raw(frame.replace("{requestId}", request_id) if isinstance(frame, str) else frame)
        if case.extra.get("then") == "close":
            client.sendClose(1000, "bye")
        if case.outcome == "reconnect":
            yield until(lambda: client not in sim.clients, f"{where}: the gateway leaving the connection")
            yield link_up(where)
            assert (yield logins()) == successes + 1, where
            continue
        assert case.outcome == "dropped", f"{where}: this replay does not know {case.expect!r}"
        sim.request_status()
        updates = yield until(lambda: [r.message for r in sim.received[mark:] if r.type == "call-status-update"],
                              f"{where}: the answer to a call-status-request")
        assert all(not update.call_active for update in updates), f"{where}: {updates}"
        assert sim.authenticated_clients == [client], f"{where}: the link was dropped"
        assert (yield logins()) == successes, where
        assert len((yield replay.calls())) == 1, f"{where}: a call was placed"
    yield replay.checkpoint("patriot_desktop")
    yield replay.finish()


PROVIDER_TOKEN = "sim-token"
OUTBOUND = (
    '[pbx]\ndriver = "optimaccs"\n\n[pbx.sim]\nphone_answer_delay = 0.05\n\n'
    '[optimaccs.outbound]\napi_url = "http://127.0.0.1:{provider}"\ntoken = "%s"\nring_timeout = 30\n'
    'request_timeout = 3.0\n' % PROVIDER_TOKEN
)
ANSWERED = "+6281234567"
RINGS_ON = "+6281118888"  # the fake provider lets it ring until the ring timeout


class HostileProvider(Resource):
    """``POST /pbx/call`` answered with :attr:`reply` (status, body) while it is set; the rest by the fake provider."""

    def __init__(self, provider_root: Resource):
        super().__init__()
        self.provider_root = provider_root
        self.reply = None

    def getChildWithDefault(self, name, request):
        if self.reply is not None and request.method == b"POST" and request.path == b"/pbx/call":
            return Reply(*self.reply)
        return self.provider_root.getChildWithDefault(name, request)


@pytest_twisted.inlineCallbacks
def test_the_optimaccs_outbound_corpus(cleanup, tmp_path):
    provider = FakeProviderApi(reactor, ApiSettings(token=PROVIDER_TOKEN, dial_time=0.05, ring_time=0.1))
    hostile = HostileProvider(provider.site(reactor).resource)
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(hostile))
    cleanup(port.stopListening)
    cleanup(lambda: pytest_twisted.blockon(provider.shutdown().addTimeout(10, reactor)))
    replay = yield start(cleanup, tmp_path, OUTBOUND, provider=port.getHost().port)

    def failed(kind):
        return replay.metric_sum("gateway_optimaccs_outbound_failed_total", kind=kind)

    def ignored():
        return replay.metric_sum("gateway_ignored_messages_total", adapter="optimaccs-outbound")

    @defer.inlineCallbacks
    def state_of(call_id):
        code, call = yield replay.gateway.api("GET", f"/api/calls/{call_id}")
        return call["state"] if code == 200 else code

    @defer.inlineCallbacks
    def cdr_of(call_id, where):
        def stored():
            return replay.gateway.api("GET", f"/api/cdrs/{call_id}").addCallback(
                lambda reply: reply[1] if reply[0] == 200 else None)
        return (yield until(stored, f"{where}: the call's CDR"))

    sessions = 0
    cases = load("optimaccs_outbound")
    for batch in ("rest", "media"):
        for case in [case for case in cases if case.extra["kind"] == batch]:
            where = f"case {case.name!r}"
            before_failed, before_ignored = (yield failed(case.detail)), (yield ignored())
            if batch == "rest":
                ((body, _),) = case.built()
                hostile.reply = (case.extra["status"], body)
                number = ANSWERED
            else:
                hostile.reply = None
                number = RINGS_ON if case.extra["when"] == "dialing" else ANSWERED
            _, call = yield replay.gateway.api("POST", "/api/calls", {"extension": "1001", "number": number},
                                               expect=201)
            call_id = call["call_id"]
            if batch == "media":
                sessions += 1
                session = yield provider.wait_for_session(sessions).addTimeout(OUTCOME_WAIT, reactor)
                if case.extra["when"] == "dialing":
                    yield until(lambda: session.state == "ringing", f"{where}: the provider's Ringing")
                else:
                    yield until(lambda: state_of(call_id).addCallback(lambda state: state == "TALKING"),
                                f"{where}: the call talking")
                for data, binary in case.built():
                    session.send_raw(data, binary)
                if "binary_bytes" in case.extra:
                    session.send_raw(bytes(case.extra["binary_bytes"]), True)
                then = case.extra.get("then")
                if then == "drop":
                    session.drop()
                elif then:
                    session.close(int(then.partition(":")[2]))
            if case.outcome == "dropped":
                yield sleep(STAYS_OPEN)
                assert (yield state_of(call_id)) == "TALKING", f"{where}: the call did not go on"
                assert (yield ignored()) == before_ignored + len(case.frames), f"{where}: not counted as ignored"
                yield replay.gateway.api("POST", f"/api/calls/{call_id}/hangup", expect=200)
                cdr = yield cdr_of(call_id, where)
                assert cdr["cause"] == "normal", f"{where}: {cdr}"
                continue
            cdr = yield cdr_of(call_id, where)
            if case.outcome == "call-failed":
                assert cdr["cause"] == "failed", f"{where}: {cdr['cause']}"
                assert (yield failed(case.detail)) == before_failed + 1, \
                    f"{where}: not counted in gateway_optimaccs_outbound_failed_total{{kind={case.detail!r}}}"
            else:
                assert case.outcome == "call-ended", f"{where}: this replay does not know {case.expect!r}"
                assert cdr["cause"] == case.detail, f"{where}: {cdr['cause']}"
        hostile.reply = None
        yield replay.checkpoint(f"optimaccs_outbound ({batch})")
    yield replay.finish()
