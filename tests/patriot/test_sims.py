"""The Patriot simulators over real loopback sockets, each against a minimal peer written here.

Client mode: a minimal Dialler Bridge (plain ws) that records what arrives and, when told to,
answers inits and heartbeats. The client simulator's timers run on a ``task.Clock`` where a test
steps them, so init retries and heartbeats are checked without real waiting.
Server mode: a minimal dialler client over TLS that trusts the simulator's certificate file (and
sees it hang when frozen).
Plus unit tests of the script language, the CLI options and the certificate helper.
"""

import json
import os
import tempfile

import pytest
import pytest_twisted
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from cryptography import x509
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.sim import patriot_client, tlsutil
from gateway.sim import patriot_wire as m  # the simulators' own messages, not the adapter's
from gateway.sim.patriot_client import Command, PatriotClientSim, ScriptError, WaitTimeout, parse_script
from gateway.sim.patriot_server import HOSTNAME, INVALID_KEY, PATH, PatriotServerSim

pytestmark = pytest.mark.timeout(30)

#: seconds any single wait in these tests may take before the test fails
WAIT = 5

CREDENTIALS = {"userName": "123456", "password": "ABC123DEF456"}


def reactor():
    from twisted.internet import reactor

    return reactor


def next_item(queue):
    """The next item of a DeferredQueue, failing the test if none comes within WAIT seconds."""
    return queue.get().addTimeout(WAIT, reactor())


class _Tracked:
    """Protocol mixin: a Deferred ``lost`` fired when the connection is gone, for clean teardown."""

    def connectionMade(self):
        super().connectionMade()
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost.callback(None)


async def close_all(protocols):
    for protocol in list(protocols):
        if not protocol.lost.called:
            protocol.dropConnection(abort=True)
            await protocol.lost


# -- client mode: a minimal Dialler Bridge ------------------------------------------------------


class MiniBridgeProtocol(_Tracked, WebSocketServerProtocol):
    def onOpen(self):
        self.factory.open.put(self)

    def onMessage(self, payload, isBinary):
        if isBinary:
            self.factory.inbox.put(("binary", payload))
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            self.factory.inbox.put(("text", payload.decode("utf-8")))
            return
        self.factory.inbox.put(obj)
        reply = self.factory.answers.get(obj.get("type"))
        if reply is not None:
            self.sendMessage(json.dumps(reply).encode("utf-8"))

    def send(self, obj):
        self.sendMessage(json.dumps(obj).encode("utf-8"))


class MiniBridge(WebSocketServerFactory):
    """Records every frame in ``inbox``; answers the types in ``answers`` with the given reply."""

    protocol = MiniBridgeProtocol

    def __init__(self):
        super().__init__("ws://127.0.0.1", reactor=reactor())
        self.inbox = defer.DeferredQueue()
        self.open = defer.DeferredQueue()
        self.answers = {}
        self.protocols = []

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        self.protocols.append(protocol)
        return protocol


@pytest_twisted.async_yield_fixture
async def bridge():
    factory = MiniBridge()
    port = await TCP4ServerEndpoint(reactor(), 0, interface="127.0.0.1").listen(factory)
    factory.url = f"ws://127.0.0.1:{port.getHost().port}/dialler"
    yield factory
    await port.stopListening()
    await close_all(factory.protocols)


@pytest_twisted.async_yield_fixture
async def client_sims():
    """Makes client simulators (``make(url, **options)``) and stops them all afterwards."""
    sims = []

    def make(url, **options):
        sim = PatriotClientSim(reactor(), url, CREDENTIALS, **options)
        sims.append(sim)
        sim.start()
        return sim

    yield make
    for sim in sims:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_client_inits_and_resends_init_until_answered(bridge, client_sims):
    clock = task.Clock()
    sim = client_sims(bridge.url, clock=clock, init_retry_interval=3.0, heartbeat_interval=100.0, reconnect=False)
    assert await next_item(bridge.inbox) == {"type": "init-request", "payload": CREDENTIALS}

    clock.advance(2.9)
    assert sim.inits_sent == 1
    clock.advance(0.1)
    assert await next_item(bridge.inbox) == {"type": "init-request", "payload": CREDENTIALS}
    clock.advance(3.0)
    assert await next_item(bridge.inbox) == {"type": "init-request", "payload": CREDENTIALS}

    (await next_item(bridge.open)).send({"type": "init-response", "payload": {"success": True}})
    assert await sim.wait_for("init-response", timeout=WAIT) == m.InitResponse(True)
    assert sim.init_response == m.InitResponse(True)

    clock.advance(30.0)
    assert sim.inits_sent == 3
    sim.request_status()
    assert await next_item(bridge.inbox) == {"type": "call-status-request"}, "no init-request after the answer"


@pytest_twisted.ensureDeferred
async def test_client_heartbeats_and_counts_the_answers(bridge, client_sims):
    bridge.answers = {"init-request": {"type": "init-response", "payload": {"success": True}},
                      "heartbeat": {"type": "heartbeat-response"}}
    clock = task.Clock()
    sim = client_sims(bridge.url, clock=clock, heartbeat_interval=5.0)
    assert (await next_item(bridge.inbox))["type"] == "init-request"
    await sim.wait_for("init-response", timeout=WAIT)

    clock.advance(4.9)
    assert sim.heartbeats_sent == 0
    clock.advance(0.1)
    assert await next_item(bridge.inbox) == {"type": "heartbeat"}
    await sim.wait_for("heartbeat-response", timeout=WAIT)
    assert (sim.heartbeats_sent, sim.heartbeat_responses, sim.last_heartbeat_response) == (1, 1, 5.0)

    clock.advance(5.0)
    assert await next_item(bridge.inbox) == {"type": "heartbeat"}
    await sim.wait_for("heartbeat-response", timeout=WAIT)
    assert (sim.heartbeats_sent, sim.heartbeat_responses, sim.last_heartbeat_response) == (2, 2, 10.0)

    sim.stop_heartbeats()
    clock.advance(60.0)
    sim.hangup()
    assert await next_item(bridge.inbox) == {"type": "hangup-request"}, "no heartbeat once stopped"
    assert sim.heartbeats_sent == 2


@pytest_twisted.ensureDeferred
async def test_client_reconnects_and_inits_again_when_the_link_breaks(bridge, client_sims):
    sim = client_sims(bridge.url, retry_policy=lambda attempt: 0.01)
    first = await next_item(bridge.open)
    assert (await next_item(bridge.inbox))["type"] == "init-request"

    first.dropConnection(abort=True)
    second = await next_item(bridge.open)
    assert second is not first
    assert await next_item(bridge.inbox) == {"type": "init-request", "payload": CREDENTIALS}
    assert sim.connections == 2
    assert sim.inits_sent == 2
    assert len(sim.closes) == 1


@pytest_twisted.ensureDeferred
async def test_client_call_control_raw_frames_and_bad_input(bridge, client_sims):
    sim = client_sims(bridge.url, clock=task.Clock(), reconnect=False)
    peer = await next_item(bridge.open)
    await next_item(bridge.inbox)  # init-request

    sim.dial("+0123456789", "+01 (2) 3-456-789")
    assert await next_item(bridge.inbox) == {
        "type": "dial-request", "payload": {"phoneNo": "+0123456789", "rawPhoneNo": "+01 (2) 3-456-789"}}
    sim.dial("555")
    assert (await next_item(bridge.inbox))["payload"] == {"phoneNo": "555", "rawPhoneNo": "555"}
    sim.send_raw("not json {")
    assert await next_item(bridge.inbox) == ("text", "not json {")
    sim.send_raw(b"\x00\x01")
    assert await next_item(bridge.inbox) == ("binary", b"\x00\x01")

    peer.sendMessage(b"garbage")
    peer.sendMessage(b"\xff", isBinary=True)
    peer.send({"type": "call-status-update", "payload": {"callActive": "yes"}})
    peer.send({"type": "call-status-update", "payload": {"callActive": True, "outbound": True}})
    update = await sim.wait_for("call-status-update", lambda u: u.call_active, timeout=WAIT)
    assert update == m.CallStatusUpdate(True, outbound=True)
    assert [r.error is not None for r in sim.received] == [True, True, True, False]
    assert "invalid JSON" in sim.received[0].error
    assert sim.received[1].error == "binary frame"
    assert sim.received[2].type == "call-status-update"
    assert sim.messages() == [update]


@pytest_twisted.ensureDeferred
async def test_client_runs_a_script(bridge, client_sims):
    clock = task.Clock()
    sim = client_sims(bridge.url, clock=clock, reconnect=False)
    peer = await next_item(bridge.open)
    await next_item(bridge.inbox)  # init-request
    script = parse_script(["# a call", "dial 0123 01 23", "wait 2", "hangup", "expect call-status-update 5", "status"])

    done = sim.run_script(script)
    assert (await next_item(bridge.inbox))["type"] == "dial-request"
    clock.advance(2.0)
    assert await next_item(bridge.inbox) == {"type": "hangup-request"}
    assert not done.called
    peer.send({"type": "call-status-update", "payload": {"callActive": False}})
    assert await next_item(bridge.inbox) == {"type": "call-status-request"}
    await done


@pytest_twisted.ensureDeferred
async def test_client_waits_for_connection_and_disconnection(bridge, client_sims):
    sim = client_sims(bridge.url, clock=task.Clock(), reconnect=False)
    protocol = await sim.wait_connected(timeout=WAIT)
    assert sim.protocol is protocol
    (await next_item(bridge.open)).sendClose(code=4000, reason="go away")
    await sim.wait_disconnected(timeout=WAIT)
    assert sim.closes == [(4000, "go away")]
    with pytest.raises(patriot_client.Disconnected):
        sim.hangup()


class WaitTests(SynchronousTestCase):
    def test_wait_for_fails_after_its_timeout(self):
        clock = MemoryReactorClock()
        sim = PatriotClientSim(clock, "ws://127.0.0.1:1/dialler", {})
        waiting = sim.wait_for("dial-request", timeout=2.0)
        clock.advance(1.9)
        self.assertNoResult(waiting)
        clock.advance(0.1)
        failure = self.failureResultOf(waiting, WaitTimeout)
        self.assertIn("no dial-request within 2.0 s", failure.getErrorMessage())
        self.assertEqual(clock.getDelayedCalls(), [])


class ScriptTests(SynchronousTestCase):
    def test_commands_and_their_arguments(self):
        self.assertEqual(
            parse_script(["", "  # comment", "wait 1.5", "dial 123", "dial +1*2# +1 (2) 3", "hangup",
                          "status", 'raw {"type": "heartbeat"}', "expect heartbeat-response", "expect init-response 3"]),
            [
                Command("wait", (1.5,), 3),
                Command("dial", ("123", "123"), 4),
                Command("dial", ("+1*2#", "+1 (2) 3"), 5),
                Command("hangup", (), 6),
                Command("status", (), 7),
                Command("raw", ('{"type": "heartbeat"}',), 8),
                Command("expect", ("heartbeat-response", patriot_client.DEFAULT_TIMEOUT), 9),
                Command("expect", ("init-response", 3.0), 10),
            ],
        )

    def test_bad_lines_name_their_line_number(self):
        cases = [
            ("jump", "line 1: unknown command 'jump'"),
            ("wait", "line 1: wait:"),
            ("wait -1", "line 1: wait:"),
            ("wait soon", "line 1: wait:"),
            ("dial", "line 1: dial: needs a phone number"),
            ("hangup now", "line 1: hangup: takes no argument"),
            ("raw", "line 1: raw: needs the text"),
            ("expect coffee", "line 1: expect: needs a message type"),
            ("expect heartbeat 1 2", "line 1: expect: needs a message type"),
        ]
        for line, message in cases:
            with self.subTest(line=line):
                with self.assertRaises(ScriptError) as caught:
                    parse_script([line])
                self.assertIn(message, str(caught.exception))

    def test_cli_options_become_a_script(self):
        args = patriot_client._arguments(
            ["--url", "ws://h:1/d", "--payload", '{"userName": "u"}', "--dial", "0123", "--hangup-after", "4"])
        self.assertEqual(args.payload, {"userName": "u"})
        self.assertEqual([(c.name, c.args) for c in args.commands],
                         [("dial", ("0123", "0123")), ("wait", (4.0,)), ("hangup", ())])

    def test_cli_rejects_hangup_without_dial_and_a_payload_that_is_not_an_object(self):
        for argv in (["--url", "ws://h:1/d", "--hangup-after", "4"], ["--url", "ws://h:1/d", "--payload", "[1]"]):
            with self.subTest(argv=argv):
                with self.assertRaises(SystemExit):
                    patriot_client._arguments(argv)


# -- server mode: a minimal dialler client ------------------------------------------------------


class MiniClientProtocol(_Tracked, WebSocketClientProtocol):
    def __init__(self):
        super().__init__()
        self.inbox = defer.DeferredQueue()
        self.pongs = defer.DeferredQueue()
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()

    def onOpen(self):
        self.opened.callback(self)

    def onPong(self, payload):
        self.pongs.put(payload)

    def onMessage(self, payload, isBinary):
        self.inbox.put(json.loads(payload))

    def onClose(self, wasClean, code, reason):
        self.closed.callback(reason)

    def send(self, obj):
        self.sendMessage(json.dumps(obj).encode("utf-8"))


@pytest.fixture
def certificate(tmp_path):
    return tlsutil.load_or_create(tmp_path / "cert", HOSTNAME)


@pytest_twisted.async_yield_fixture
async def server(certificate):
    sim = PatriotServerSim(reactor(), "ABC123DEF456", certificate)
    await sim.listen(TCP4ServerEndpoint(reactor(), 0, interface="127.0.0.1"))
    yield sim
    await sim.stop()


@pytest_twisted.async_yield_fixture
async def connect(certificate):
    """``await connect(port, path=PATH)``: a minimal dialler client trusting the certificate file."""
    protocols = []
    with open(certificate.cert_path, "rb") as f:
        trust = Certificate.loadPEM(f.read())

    async def make(port, path=PATH, wait_open=True):
        factory = WebSocketClientFactory(f"wss://{HOSTNAME}:{port}{path}", reactor=reactor())
        factory.protocol = MiniClientProtocol
        endpoint = wrapClientTLS(optionsForClientTLS(HOSTNAME, trustRoot=trust),
                                 TCP4ClientEndpoint(reactor(), "127.0.0.1", port))
        protocol = await endpoint.connect(factory)
        protocols.append(protocol)
        if wait_open:
            await protocol.opened.addTimeout(WAIT, reactor())
        return protocol

    yield make
    await close_all(protocols)


def port_of(sim):
    return sim.port.getHost().port


@pytest_twisted.ensureDeferred
async def test_server_accepts_a_good_key_then_controls_the_call(server, connect):
    client = await connect(port_of(server))
    client.send({"type": "authentication-request", "payload": {"requestId": "123456", "apiKey": "ABC123DEF456"}})
    assert await next_item(client.inbox) == {
        "type": "authentication-response", "payload": {"requestId": "123456", "success": True}}
    assert (server.auth_attempts, server.auth_successes, server.auth_failures) == (1, 1, 0)
    assert await server.wait_authenticated(timeout=WAIT) == [server.clients[0]]

    assert server.dial("+0123456789", "+01 (2) 3-456-789") == 1
    assert await next_item(client.inbox) == {
        "type": "dial-request", "payload": {"phoneNo": "+0123456789", "rawPhoneNo": "+01 (2) 3-456-789"}}
    client.send({"type": "call-status-update", "payload": {"callActive": True, "outbound": True, "callerId": "1"}})
    server.hangup()
    assert await next_item(client.inbox) == {"type": "hangup-request"}
    server.request_status()
    assert await next_item(client.inbox) == {"type": "call-status-request"}
    client.send({"type": "call-status-update", "payload": {"callActive": False}})
    await server.wait_for("call-status-update", lambda u: not u.call_active, timeout=WAIT)
    assert server.status_updates == [m.CallStatusUpdate(True, True, "1"), m.CallStatusUpdate(False)]


@pytest_twisted.ensureDeferred
async def test_server_presents_the_certificate_it_exposes(server, connect, certificate):
    client = await connect(port_of(server))
    presented = Certificate(client.transport.getPeerCertificate())
    assert presented.digest("sha256").decode("ascii") == certificate.fingerprint == server.certificate.fingerprint
    assert os.path.samefile(server.certificate.cert_path, certificate.cert_path)


@pytest_twisted.ensureDeferred
async def test_server_generates_a_request_id_when_the_request_has_none(server, connect):
    client = await connect(port_of(server))
    client.send({"type": "authentication-request", "payload": {"apiKey": "ABC123DEF456"}})
    response = await next_item(client.inbox)
    assert response["payload"]["success"] is True
    assert isinstance(response["payload"]["requestId"], str) and response["payload"]["requestId"]


@pytest_twisted.ensureDeferred
async def test_server_refuses_a_bad_key_and_a_malformed_request(server, connect):
    client = await connect(port_of(server))
    client.send({"type": "authentication-request", "payload": {"requestId": "1", "apiKey": "WRONG"}})
    assert await next_item(client.inbox) == {
        "type": "authentication-response", "payload": {"requestId": "1", "success": False, "error": INVALID_KEY}}
    client.send({"type": "authentication-request", "payload": {"requestId": "2"}})
    response = await next_item(client.inbox)
    assert response["payload"]["success"] is False
    assert "'apiKey' missing" in response["payload"]["error"]
    assert (server.auth_attempts, server.auth_successes, server.auth_failures) == (2, 0, 2)
    assert server.dial("123") == 0, "nothing is sent to an unauthenticated client"

    client.send({"type": "authentication-request", "payload": {"requestId": "3", "apiKey": "ABC123DEF456"}})
    assert (await next_item(client.inbox))["payload"] == {"requestId": "3", "success": True}
    assert (server.auth_attempts, server.auth_successes, server.auth_failures) == (3, 1, 2)


@pytest_twisted.ensureDeferred
async def test_server_ignores_everything_before_authentication(server, connect):
    client = await connect(port_of(server))
    client.send({"type": "call-status-update", "payload": {"callActive": True}})
    client.sendMessage(b"not json")
    client.send({"type": "authentication-request", "payload": {"apiKey": "ABC123DEF456"}})
    await next_item(client.inbox)
    client.send({"type": "call-status-update", "payload": {"callActive": False}})
    await server.wait_for("call-status-update", timeout=WAIT)

    assert [(r.type, r.ignored) for r in server.received] == [
        ("call-status-update", True), (None, True), ("authentication-request", False), ("call-status-update", False)]
    assert server.status_updates == [m.CallStatusUpdate(False)]


@pytest_twisted.ensureDeferred
async def test_server_refuses_another_path_at_the_handshake(server, connect):
    client = await connect(port_of(server), path="/dialler", wait_open=False)
    reason = await client.closed.addTimeout(WAIT, reactor())
    assert not client.opened.called
    assert "404" in reason
    assert server.refused_paths == ["/dialler"]
    assert server.clients == [] and server.auth_attempts == 0


@pytest_twisted.ensureDeferred
async def test_server_stops_and_listens_again_on_the_same_port(server, connect):
    port = port_of(server)
    first = await connect(port)
    first.send({"type": "authentication-request", "payload": {"apiKey": "ABC123DEF456"}})
    await server.wait_authenticated(timeout=WAIT)

    await server.stop()
    await first.closed.addTimeout(WAIT, reactor())
    assert server.clients == [] and server.port is None

    await server.listen(TCP4ServerEndpoint(reactor(), port, interface="127.0.0.1"))
    second = await connect(port)
    second.send({"type": "authentication-request", "payload": {"apiKey": "ABC123DEF456"}})
    assert (await next_item(second.inbox))["payload"]["success"] is True
    assert (server.auth_attempts, server.auth_successes) == (2, 2)


@pytest_twisted.ensureDeferred
async def test_server_sends_raw_frames_to_every_open_connection(server, connect):
    client = await connect(port_of(server))
    assert server.send_raw('{"type":"heartbeat"}') == 1
    assert await next_item(client.inbox) == {"type": "heartbeat"}


@pytest_twisted.ensureDeferred
async def test_server_freeze_hangs_the_open_connections_and_serves_later_ones(server, connect):
    hung = await connect(port_of(server))
    assert server.freeze() == 1
    hung.sendPing(b"hung")
    hung.send({"type": "authentication-request", "payload": {"apiKey": "ABC123DEF456"}})
    later = await connect(port_of(server))  # hung's frames were written before this connection began
    later.sendPing(b"later")
    later.send({"type": "authentication-request", "payload": {"apiKey": "ABC123DEF456"}})
    assert (await next_item(later.inbox))["payload"]["success"] is True
    assert await next_item(later.pongs) == b"later"  # answered before the authentication-response
    assert (hung.pongs.pending, hung.inbox.pending, hung.closed.called) == ([], [], False)
    assert [r.type for r in server.received] == ["authentication-request"] and server.auth_attempts == 1


# -- certificates -------------------------------------------------------------------------------


class CertificateTests(SynchronousTestCase):
    def test_generated_certificate_names_the_host_and_addresses(self):
        cert = tlsutil.generate_self_signed("example.test", ip_addresses=("127.0.0.1",))
        parsed = x509.load_pem_x509_certificate(cert.cert_pem)
        names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["example.test"])
        self.assertEqual([str(a) for a in names.get_values_for_type(x509.IPAddress)], ["127.0.0.1"])
        self.assertEqual(parsed.subject, parsed.issuer)
        self.assertIsNone(cert.cert_path)
        self.assertRegex(cert.fingerprint, r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")

    def test_load_or_create_keeps_the_certificate(self):
        scratch = tempfile.TemporaryDirectory()
        self.addCleanup(scratch.cleanup)
        directory = os.path.join(scratch.name, "cert")
        first = tlsutil.load_or_create(directory, HOSTNAME)
        self.assertEqual(os.stat(first.key_path).st_mode & 0o777, 0o600)
        again = tlsutil.load_or_create(directory, HOSTNAME)
        self.assertEqual((again.fingerprint, again.key_pem), (first.fingerprint, first.key_pem))
        self.assertEqual(tlsutil.fingerprint_sha256(again.cert_pem), first.fingerprint)
