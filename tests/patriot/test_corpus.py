"""The Patriot bad-input corpora, case by case, over real Autobahn WebSockets in memory (iosim, one clock).

- ``tests/corpus/patriot_bridge.json``: a hostile Patriot client against the Dialler Bridge (user
  ``op1`` / ``secret-pw`` on extension 1001, ``max_init_failures`` high enough for the whole file, as
  in the lead's replay against the real daemon). Each case on a new connection.
- ``tests/corpus/patriot_desktop.json``: a hostile Patriot Desktop API server against a desktop link
  (``ws://``, ``connect`` to it). Each case with a new link; the server sends the case's frames
  instead of its authentication-response (``"stage": "auth"``) or once the link is authenticated
  (``"stage": "session"``), then closes if ``"then": "close"``.

Both check that no traceback is logged, that each case is logged naming the peer, and the case's
outcome (see tests/corpus/README.md).
"""

import json
import pathlib
import sys

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from core.harness import Harness
from gateway.confschema import ClientEndpoint, Secret
from gateway.context import Readiness
from gateway.patriot.bridge import DiallerBridge
from gateway.patriot.config import BridgeConfig, BridgeUser, DesktopConfig
from gateway.patriot.desktop import DesktopLink, desktop_endpoint
from gateway.patriot.line import Lines
from gateway.patriot.session import ReactorTimer

from .support import new_metrics

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from corpus import load  # noqa: E402

BRIDGE_CASES = load("patriot_bridge")
DESKTOP_CASES = load("patriot_desktop")


class LogWatch:
    """Every log event while a test runs; tracebacks are a failure of the test."""

    def __init__(self, test):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def mark(self) -> int:
        return len(self.events)

    def since(self, mark: int) -> list[str]:
        return [formatEvent(event) for event in self.events[mark:]]

    def tracebacks(self, mark: int = 0) -> list[str]:
        return [formatEvent(event) for event in self.events[mark:] if "log_failure" in event]


# -- the Dialler Bridge ------------------------------------------------------------------------


class _Client(WebSocketClientProtocol):
    """A Patriot client that sends what it is told and records what comes back."""

    def onConnect(self, response):
        self.received, self.close_code = [], None

    def onMessage(self, payload, is_binary):
        self.received.append(json.loads(payload))

    def onClose(self, was_clean, code, reason):
        self.close_code = code


class BridgeCorpusTests(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness()
        self.clock = self.harness.clock
        users = [BridgeUser(username="op1", password=Secret("secret-pw"), extension="1001")]
        self.metrics, self.prometheus = new_metrics()
        self.lines = Lines(self.harness.registry)
        self.addCleanup(self.lines.close)
        self.bridge = DiallerBridge(BridgeConfig(users=users, max_init_failures=1000), reactor=self.clock,
                                    lines=self.lines, metrics=self.metrics,
                                    run_blocking=lambda f, *a: defer.maybeDeferred(f, *a))
        self.logs = LogWatch(self)

    def connect(self, port):
        factory = WebSocketClientFactory("ws://127.0.0.1:8765/dialler", reactor=self.clock)
        factory.protocol = _Client
        factory._batched_timer = ReactorTimer(self.clock)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: self.bridge.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port)),
            lambda: factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8765)),
            serverTransportFactory=lambda p: iosim.FakeTransport(p, True, IPv4Address("TCP", "127.0.0.1", 8765),
                                                                 IPv4Address("TCP", "127.0.0.1", port)),
            clock=self.clock)
        self.assertIsNotNone(server.session, "the WebSocket handshake completed")
        return client, server, pump

    def test_the_corpus_is_well_formed(self):
        self.assertGreaterEqual(len(BRIDGE_CASES), 60)
        for case in BRIDGE_CASES:
            self.assertIn(case.outcome, ("init-failure", "dropped", "close"), case.name)

    def test_every_case(self):
        for port, case in enumerate(BRIDGE_CASES, start=40000):
            with self.subTest(case=case.name):
                self.replay(port, case)
        self.assertEqual(self.harness.registry.calls(include_released=True), [])

    def replay(self, port, case):
        mark = self.logs.mark()
        client, server, pump = self.connect(port)
        for data, binary in case.built():
            client.sendMessage(data, isBinary=binary)
        pump.flush()
        where = f"case {case.name!r}"
        if case.outcome == "close":
            self.assertEqual(client.close_code, int(case.detail), where)
        else:
            self.assertIsNone(client.close_code, where)
            answers = [m for m in client.received if m["type"] == "init-response"]
            if case.outcome == "init-failure":
                self.assertTrue(answers, f"{where}: no init-response")
                self.assertEqual(answers[-1]["payload"]["success"], False, where)
                self.assertTrue(answers[-1]["payload"]["error"], where)
            else:
                self.assertTrue(all(a["payload"]["success"] for a in answers), where)
            client.received.clear()
            client.sendMessage(b'{"type":"heartbeat"}')  # the connection carries on
            pump.flush()
            self.assertEqual(client.received, [{"type": "heartbeat-response"}], where)
        self.assertEqual(self.logs.tracebacks(mark), [], where)
        logged = self.logs.since(mark)
        self.assertTrue(any(f"127.0.0.1:{port}" in line for line in logged), f"{where}: the peer is named: {logged}")
        client.sendClose(1000)
        pump.flush()


# -- the Desktop API link ----------------------------------------------------------------------


class _HostileServer(WebSocketServerProtocol):
    """A Patriot Desktop API server that plays one corpus case on its first connection, then behaves."""

    def onOpen(self):
        self.factory.connections.append(self)
        self.index = len(self.factory.connections)

    def onMessage(self, payload, is_binary):
        message = json.loads(payload)
        self.factory.received.append(message)
        if message["type"] != "authentication-request":
            return
        request_id = message["payload"]["requestId"]
        case = self.factory.case if self.index == 1 else None
        if case is None or case.extra.get("stage") != "auth":
            self.send_text(json.dumps({"type": "authentication-response",
                                       "payload": {"requestId": request_id, "success": True}}))
        if case is not None:
            for data, binary in case.built():
                self.sendMessage(data.replace(b"{requestId}", request_id.encode("ascii")), isBinary=binary)
            if case.extra.get("then") == "close":
                self.sendClose(1000, "bye")

    def send_text(self, text):
        self.sendMessage(text.encode("utf-8"))


class DesktopCorpusTests(SynchronousTestCase):
    AUTH_TIMEOUT = 10.0
    RETRY = 2.0

    def setUp(self):
        self.logs = LogWatch(self)

    def start(self, case):
        """A hostile server playing ``case`` and a link to it, connected."""
        self.reactor = MemoryReactorClock()
        factory = WebSocketServerFactory("ws://127.0.0.1:9009/ws/dialler/v1", reactor=self.reactor)
        factory.protocol = _HostileServer
        factory._batched_timer = ReactorTimer(self.reactor)
        factory.case, factory.connections, factory.received = case, [], []
        self.server = factory
        self.successResultOf(TCP4ServerEndpoint(self.reactor, 9009, interface="127.0.0.1").listen(factory))
        config = DesktopConfig(api_key=Secret("k"), extension="1001", url="ws://127.0.0.1:9009/ws/dialler/v1",
                               connect=ClientEndpoint("tcp:host=127.0.0.1:port=9009"),
                               auth_timeout=self.AUTH_TIMEOUT, ping_interval=0)
        self.harness = Harness()
        metrics, self.prometheus = new_metrics()
        lines = Lines(self.harness.registry)
        self.link = DesktopLink(0, config, reactor=self.reactor, endpoint=desktop_endpoint(self.reactor, config),
                                line=lines.get("1001"), metrics=metrics,
                                component=Readiness().register("patriot-desktop:0"))
        self.link._policy = lambda attempt: self.RETRY  # without jitter
        self.reasons = []
        lost = self.link.connection_lost
        self.link.connection_lost = lambda session, reason: (self.reasons.append(reason), lost(session, reason))
        self.link.startService()
        self.pumps = []
        self.connect()

    def connect(self):
        pump = iosim.ConnectionCompleter(self.reactor).succeedOnce()
        self.assertIsNotNone(pump, "the link made a connection attempt")
        self.pumps.append(pump)
        self.flush()

    def flush(self):
        for pump in self.pumps:
            pump.flush()

    def advance(self, seconds):
        for _ in range(int(seconds / 0.5)):
            self.reactor.advance(0.5)
            self.flush()

    def stop(self):
        stopped = self.link.stopService()
        self.flush()
        self.successResultOf(stopped)

    def test_the_corpus_is_well_formed(self):
        self.assertGreaterEqual(len(DESKTOP_CASES), 45)
        for case in DESKTOP_CASES:
            self.assertIn(case.outcome, ("dropped", "reconnect"), case.name)
            self.assertIn(case.extra.get("stage"), ("auth", "session"), case.name)
            self.assertIn(case.extra.get("then"), (None, "close"), case.name)

    def test_every_case(self):
        for case in DESKTOP_CASES:
            with self.subTest(case=case.name):
                self.replay(case)

    def replay(self, case):
        mark = self.logs.mark()
        self.start(case)
        where = f"case {case.name!r}"
        if case.outcome == "dropped":
            self.assertTrue(self.link.component.up, where)
            self.assertEqual(self.reasons, [], where)
            (connection,) = self.server.connections
            del self.server.received[:]
            connection.send_text('{"type":"call-status-request"}')  # the link carries on
            self.flush()
            self.assertEqual(self.server.received, [{"type": "call-status-update", "payload": {"callActive": False}}],
                             where)
            self.assertEqual(self.harness.registry.calls(include_released=True), [], where)
        else:
            self.advance(self.AUTH_TIMEOUT + 2.0)  # an unanswered authentication gives up; closing handshakes
            self.assertEqual(len(self.reasons), 1, f"{where}: the link dropped the connection once: {self.reasons}")
            self.assertFalse(self.link.component.up, where)
            self.assertEqual(self.link.rejections, 0 if case.extra["stage"] == "session" else 1, where)
            self.reactor.advance(self.RETRY)  # the ClientService's retry, after the backoff
            self.connect()
            self.assertEqual(len(self.server.connections), 2, where)
            self.assertTrue(self.link.component.up, f"{where}: authenticated again")
        self.assertEqual(self.logs.tracebacks(mark), [], where)
        logged = self.logs.since(mark)
        named = [line for line in logged if "desktop link 0" in line]
        self.assertTrue(named, f"{where}: the link and its peer are named in the log: {logged}")
        self.stop()
