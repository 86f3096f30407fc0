"""The Socket.IO client against a scripted in-memory Engine.IO server (iosim, MemoryReactorClock).

Every test drives both ends by hand: the server side is an Autobahn WebSocket server protocol
that records what the client sent and sends exactly the frames the test writes.
"""

import json
import struct

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.boundary import budget_factory
from gateway.chat.socketio import (
    AckTimeout,
    CallbackHandler,
    EventRefused,
    ISocketIOClient,
    LinkLost,
    NotConnected,
    PacketError,
    SocketIOClient,
    UnexpectedEvent,
)
from gateway.chat.testing import FakeSocketIOClient

OPEN = {"sid": "eio-1", "upgrades": [], "pingInterval": 25000, "pingTimeout": 20000, "maxPayload": 1000000}


class ScriptedServer(WebSocketServerProtocol):
    """The server end: records every frame the client sends."""

    def __init__(self):
        super().__init__()
        self.received: list[str | bytes] = []

    def onMessage(self, payload, isBinary):
        self.received.append(payload if isBinary else payload.decode())

    def send_text(self, text: str) -> None:
        self.sendMessage(text.encode(), isBinary=False)


def refuse(value, reason="malformed"):
    """A handler refusing its payload."""
    raise EventRefused(f"field 'refId': not a phone number: {value!r:.40}", reason)


class Harness:
    """A started SocketIOClient on a MemoryReactorClock, and a way to accept its connections."""

    def __init__(self, testcase, registry=None, **options):
        self.reactor = MemoryReactorClock()
        if registry is not None:
            options["budget"] = budget_factory(self.reactor, "chat", registry)
        self.events = []
        self.handler = CallbackHandler(
            events={
                "greet": lambda *args: self.events.append(("greet", args)),
                "question": lambda text: f"answer to {text}",
                "pair": lambda: ("a", 1),
                "later": lambda: self.later,
                "broken": lambda: 1 / 0,
                "refuse": refuse,
                "refuse-later": lambda: self.later,
            },
            connected=lambda client: self.events.append("connected"),
            disconnected=lambda client, reason: self.events.append("disconnected"),
        )
        self.later = defer.Deferred()
        endpoint = TCP4ClientEndpoint(self.reactor, "chat.example", 8080)
        self.client = SocketIOClient(
            self.reactor, endpoint, "http://chat.example:8080", self.handler,
            retry_policy=lambda attempt: 5.0, ack_timeout=10.0, connect_timeout=15.0, **options
        )
        self.client.startService()
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        self.server = self.pump = None

    def accept(self) -> ScriptedServer:
        """Complete the client's latest TCP connection attempt and the WebSocket handshake."""
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        server_address = IPv4Address("TCP", "127.0.0.1", port)
        client_address = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.reactor.tcpClients))
        client_protocol = factory.buildProtocol(server_address)
        server_factory = WebSocketServerFactory(reactor=self.reactor)
        server_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        server_factory.protocol = ScriptedServer
        self.server = server_factory.buildProtocol(None)
        self.pump = iosim.connect(
            self.server, iosim.FakeTransport(self.server, True, server_address, client_address),
            client_protocol, iosim.FakeTransport(client_protocol, False, client_address, server_address),
            clock=self.reactor,
        )
        return self.server

    def send(self, *frames) -> None:
        for frame in frames:
            if isinstance(frame, bytes):
                self.server.sendMessage(frame, isBinary=True)
            else:
                self.server.send_text(frame)
        self.pump.flush()

    def take(self) -> list:
        """Frames the client sent since the last call."""
        self.pump.flush()
        frames, self.server.received[:] = list(self.server.received), []
        return frames

    def connect(self, open_packet=OPEN) -> None:
        """Accept, then play the Engine.IO open and the namespace CONNECT answer."""
        self.accept()
        self.send("0" + json.dumps(open_packet))
        assert self.take() == ["40"], self.server.received
        self.send('40{"sid":"sio-1"}')

    def warnings(self) -> list[str]:
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.logged if e.get("log_level") and e["log_level"].name in ("warn", "error", "critical")]

    @property
    def link_lost(self) -> bool:
        return bool(self.pump.clientIO.disconnected)


class ConnectTests(SynchronousTestCase):
    def test_handshake_then_namespace_connect(self):
        h = Harness(self)
        self.assertFalse(h.client.connected)
        waiting = h.client.when_connected()
        h.connect()
        self.assertTrue(h.client.connected)
        self.assertEqual(h.events, ["connected"])
        self.assertIs(self.successResultOf(waiting), h.client)
        self.assertEqual(h.server.http_request_uri, "/socket.io/?EIO=4&transport=websocket")
        self.assertEqual(h.server.http_headers["host"], "chat.example:8080")

    def test_auth_and_custom_namespace(self):
        h = Harness(self, namespace="/chat", auth={"token": "t"})
        h.accept()
        h.send("0" + json.dumps(OPEN))
        self.assertEqual(h.take(), ['40/chat,{"token":"t"}'])
        h.send('40{"sid":"wrong-namespace"}')
        self.assertFalse(h.client.connected)
        h.send('40/chat,{"sid":"s"}')
        self.assertTrue(h.client.connected)

    def test_connect_error_closes_the_link_and_retries(self):
        h = Harness(self)
        h.accept()
        h.send("0" + json.dumps(OPEN))
        h.take()
        h.send('44{"message":"Not authorized"}')
        self.assertEqual(h.take(), ["1"])
        self.assertTrue(h.link_lost)
        self.assertIn("refused namespace", " ".join(h.warnings()))
        self.assertEqual(h.events, [])
        h.reactor.advance(5.0)
        self.assertEqual(len(h.reactor.tcpClients), 2)

    def test_server_disconnect_packet_closes_the_link(self):
        h = Harness(self)
        h.connect()
        h.send("41")
        self.assertTrue(h.link_lost)
        self.assertEqual(h.events, ["connected", "disconnected"])
        self.assertFalse(h.client.connected)

    def test_reconnects_and_connects_again(self):
        h = Harness(self)
        h.connect()
        h.server.dropConnection(abort=True)
        h.pump.flush()
        self.assertEqual(h.events, ["connected", "disconnected"])
        h.reactor.advance(5.0)
        h.connect()
        self.assertEqual(h.events, ["connected", "disconnected", "connected"])
        self.assertEqual(len(h.reactor.tcpClients), 2)

    def test_stop_leaves_the_namespace(self):
        h = Harness(self)
        h.connect()
        stopped = h.client.stopService()
        self.assertEqual(h.take(), ["41", "1"])
        h.pump.flush()
        self.successResultOf(stopped)
        self.assertEqual(h.events, ["connected", "disconnected"])
        h.reactor.advance(60)
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_stop_fails_waiters(self):
        h = Harness(self)
        waiting = h.client.when_connected()
        h.client.stopService()
        self.failureResultOf(waiting, NotConnected)


class HeartbeatTests(SynchronousTestCase):
    def test_ping_is_answered_with_pong(self):
        h = Harness(self)
        h.connect()
        h.send("2")
        self.assertEqual(h.take(), ["3"])

    def test_pings_keep_the_link_alive(self):
        h = Harness(self)
        h.connect()
        for _ in range(5):
            h.reactor.advance(25.0)
            h.send("2")
        self.assertFalse(h.link_lost)
        self.assertEqual(h.take(), ["3"] * 5)

    def test_silent_link_is_dropped_after_interval_plus_timeout(self):
        h = Harness(self)
        h.connect()
        h.reactor.advance(44.9)
        h.pump.flush()
        self.assertFalse(h.link_lost)
        h.reactor.advance(0.2)
        h.pump.flush()
        self.assertTrue(h.link_lost)
        self.assertEqual(h.events, ["connected", "disconnected"])
        self.assertIn("no ping from the server in time", " ".join(h.warnings()))

    def test_missing_handshake_is_dropped(self):
        h = Harness(self)
        h.accept()
        h.reactor.advance(15.0)
        h.pump.flush()
        self.assertTrue(h.link_lost)
        self.assertEqual(h.events, [])

    def test_missing_namespace_answer_is_dropped(self):
        h = Harness(self)
        h.accept()
        h.send("0" + json.dumps({**OPEN, "pingInterval": 5000, "pingTimeout": 5000}))
        for _ in range(3):
            h.reactor.advance(5.0)
            h.send("2")
        self.assertTrue(h.link_lost)

    def test_server_close_packet(self):
        h = Harness(self)
        h.connect()
        h.send("1")
        self.assertTrue(h.link_lost)
        self.assertEqual(h.events, ["connected", "disconnected"])


class EventTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness(self)
        self.h.connect()

    def test_emit_with_ack(self):
        d = self.h.client.emit("registerConnector", {"id": "sms"})
        self.assertEqual(self.h.take(), ['420["registerConnector",{"id":"sms"}]'])
        self.assertNoResult(d)
        self.h.send("430[true]")
        self.assertEqual(self.successResultOf(d), [True])

    def test_ack_ids_increase(self):
        first, second = self.h.client.emit("a"), self.h.client.emit("b")
        self.assertEqual(self.h.take(), ['420["a"]', '421["b"]'])
        self.h.send('431["second"]', '430["first"]')
        self.assertEqual(self.successResultOf(first), ["first"])
        self.assertEqual(self.successResultOf(second), ["second"])

    def test_ack_timeout(self):
        d = self.h.client.emit("slow")
        self.h.reactor.advance(10.0)
        failure = self.failureResultOf(d, AckTimeout)
        self.assertEqual(failure.value.event, "slow")
        self.h.send("430[true]")
        self.assertIn("acked unknown id 0", " ".join(self.h.warnings()))
        self.assertFalse(self.h.link_lost)

    def test_cancelled_emit_forgets_its_timer(self):
        d = self.h.client.emit("x")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(
            [c for c in self.h.reactor.getDelayedCalls() if c.func.__name__ == "_ack_expired"], []
        )

    def test_link_lost_fails_pending_acks(self):
        d = self.h.client.emit("x")
        self.h.server.dropConnection(abort=True)
        self.h.pump.flush()
        self.failureResultOf(d, LinkLost)

    def test_emit_when_not_connected(self):
        self.h.send("41")
        self.failureResultOf(self.h.client.emit("x"), NotConnected)
        with self.assertRaises(NotConnected):
            self.h.client.send("x")

    def test_emit_unencodable(self):
        self.failureResultOf(self.h.client.emit("x", object()), PacketError)

    def test_send_without_ack(self):
        self.h.client.send("typing", {"on": True})
        self.assertEqual(self.h.take(), ['42["typing",{"on":true}]'])

    def test_emit_binary(self):
        self.h.client.emit("upload", b"\x00\xff")
        self.assertEqual(self.h.take(), ['451-0["upload",{"_placeholder":true,"num":0}]', b"\x00\xff"])

    def test_server_event_without_ack(self):
        self.h.send('42["greet","hi",{"n":1}]')
        self.assertEqual(self.h.events[-1], ("greet", ("hi", {"n": 1})))
        self.assertEqual(self.h.take(), [])

    def test_server_event_with_ack(self):
        self.h.send('4212["question","life"]', '4213["pair"]', '4214["greet"]')
        self.assertEqual(self.h.take(), ['4312["answer to life"]', '4313["a",1]', "4314[]"])

    def test_ack_from_a_deferred(self):
        self.h.send('427["later"]')
        self.assertEqual(self.h.take(), [])
        self.h.later.callback({"ok": True})
        self.assertEqual(self.h.take(), ['437[{"ok":true}]'])

    def test_binary_event_is_reassembled(self):
        self.h.send('452-["greet",{"_placeholder":true,"num":0},{"b":{"_placeholder":true,"num":1}}]', b"\x01", b"\x02")
        self.assertEqual(self.h.events[-1], ("greet", (b"\x01", {"b": b"\x02"})))

    def test_binary_ack_is_reassembled(self):
        d = self.h.client.emit("fetch")
        self.h.send('461-0[{"_placeholder":true,"num":0}]', b"data")
        self.assertEqual(self.successResultOf(d), [b"data"])


class BadInputTests(SynchronousTestCase):
    """Malformed or unexpected input is logged with the peer named and the link is kept."""

    def setUp(self):
        self.h = Harness(self)
        self.h.connect()

    def assertKeptAndLogged(self, text):
        self.assertFalse(self.h.link_lost)
        self.assertTrue(self.h.client.connected)
        warnings = " ".join(self.h.warnings())
        self.assertIn(text, warnings)
        self.assertIn("127.0.0.1", warnings)
        self.h.send("2")
        self.assertEqual(self.h.take()[-1], "3")

    def test_malformed_engine_packet(self):
        self.h.send("9garbage")
        self.assertKeptAndLogged("malformed packet")

    def test_malformed_socketio_packet(self):
        self.h.send('42{"not":"a list"}')
        self.assertKeptAndLogged("malformed packet")

    def test_bad_json(self):
        self.h.send("42[oops")
        self.assertKeptAndLogged("not valid JSON")

    def test_unexpected_event_gets_no_ack(self):
        self.h.send('425["nobody-handles-this",1]')
        self.assertKeptAndLogged("unexpected event 'nobody-handles-this'")
        self.assertEqual(self.h.take(), [])

    def test_failing_handler(self):
        self.h.send('425["broken"]')
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.h.take(), [])
        self.assertFalse(self.h.link_lost)

    def test_stray_binary_frame(self):
        self.h.send(b"\x00")
        self.assertKeptAndLogged("binary frame nobody expected")

    def test_text_while_attachments_missing(self):
        self.h.send('452-["greet",{"_placeholder":true,"num":0}]', b"\x01", '42["greet","next"]')
        self.assertEqual(self.h.events[-1], ("greet", ("next",)))
        self.assertKeptAndLogged("lacked 1 attachment(s)")

    def test_bad_placeholder(self):
        self.h.send('451-["greet",{"_placeholder":true,"num":4}]', b"\x01")
        self.assertKeptAndLogged("malformed binary packet")

    def test_other_namespace(self):
        self.h.send('42/elsewhere,["greet"]')
        self.assertKeptAndLogged("namespace /elsewhere")

    def test_message_before_handshake(self):
        h = Harness(self)
        h.accept()
        h.send('42["greet"]')
        self.assertIn("before the handshake", " ".join(h.warnings()))
        self.assertFalse(h.link_lost)

    def test_event_before_namespace_connect(self):
        h = Harness(self)
        h.accept()
        h.send("0" + json.dumps(OPEN), '42["greet"]')
        self.assertIn("before CONNECT", " ".join(h.warnings()))
        self.assertEqual(h.events, [])

    def test_bad_handshake_drops_the_link(self):
        h = Harness(self)
        h.accept()
        h.send('0{"sid":1}')
        self.assertTrue(h.link_lost)


class FakeClientTests(SynchronousTestCase):
    """FakeSocketIOClient drives a handler like the real client, without I/O."""

    def setUp(self):
        self.acks = []
        self.handler = CallbackHandler(
            events={"question": lambda text: f"answer to {text}", "pair": lambda: ("a", 1)},
            connected=lambda client: client.emit("registerConnector", {"id": "sms"}).addCallback(self.acks.append),
            disconnected=lambda client, reason: self.acks.append("disconnected"),
        )
        self.fake = FakeSocketIOClient(self.handler)

    def test_both_clients_provide_the_interface(self):
        verifyObject(ISocketIOClient, self.fake)
        verifyObject(ISocketIOClient, Harness(self).client)

    def test_connect_runs_on_connect_and_acks_reach_it(self):
        waiting = self.fake.when_connected()
        registered = self.fake.connect()
        self.assertIs(self.successResultOf(waiting), self.fake)
        [entry] = self.fake.emitted
        self.assertEqual((entry.event, entry.args), ("registerConnector", ({"id": "sms"},)))
        entry.ack(True)
        self.successResultOf(registered)
        self.assertEqual(self.acks, [[True]])

    def test_receive_returns_the_ack_arguments(self):
        self.fake.connect()
        self.assertEqual(self.successResultOf(self.fake.receive("question", "life")), ["answer to life"])
        self.assertEqual(self.successResultOf(self.fake.receive("pair")), ["a", 1])
        self.failureResultOf(self.fake.receive("unknown"), UnexpectedEvent)

    def test_a_refused_payload_gets_the_negative_ack_and_is_noted(self):
        fake = FakeSocketIOClient(CallbackHandler(events={"refuse": refuse}))
        fake.connect()
        self.assertEqual(self.successResultOf(fake.receive("refuse", 5)), [False, "field 'refId': not a phone number: 5"])
        self.assertEqual(fake.refused, [("refuse", "malformed", "field 'refId': not a phone number: 5")])

    def test_disconnect_fails_pending_emits(self):
        self.fake.connect()
        self.fake.disconnect()
        self.failureResultOf(self.fake.emitted[0].deferred, LinkLost)
        self.assertEqual(self.acks, ["disconnected"])
        self.failureResultOf(self.fake.emit("x"), NotConnected)
        with self.assertRaises(NotConnected):
            self.fake.send("x")


def ignored(registry, reason):
    return registry.get_sample_value("gateway_ignored_messages_total", {"adapter": "chat", "reason": reason}) or 0


class HostileServerTests(SynchronousTestCase):
    """A hostile or broken server: bad handshakes reconnect, oversized input is refused, bad packets are dropped."""

    def test_a_payload_the_handler_refuses_gets_a_negative_ack_naming_the_problem_and_is_counted(self):
        registry = CollectorRegistry()
        h = Harness(self, registry)
        h.connect()
        h.send('4221["refuse",5]', '42["refuse","+1555\\n"]', '4222["refuse","x","oversized"]', '4223["refuse-later"]')
        h.later.errback(EventRefused("field 'text': longer than 1600 characters", "oversized"))
        self.assertEqual(h.take(), [
            '4321[false,"field \'refId\': not a phone number: 5"]',
            '4322[false,"field \'refId\': not a phone number: \'x\'"]',
            '4323[false,"field \'text\': longer than 1600 characters"]',
        ])
        self.assertEqual((ignored(registry, "malformed"), ignored(registry, "oversized")), (2, 2))
        warnings = " ".join(h.warnings())
        self.assertIn("'refuse' refused: field 'refId': not a phone number: '+1555\\n'", warnings)
        self.assertIn("127.0.0.1", warnings)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertFalse(h.link_lost)
        h.send("2")
        self.assertEqual(h.take(), ["3"])

    def test_a_refusal_names_a_known_reason(self):
        self.assertRaises(ValueError, EventRefused, "x", "nonsense")

    def assertReconnects(self, h):
        h.reactor.advance(5.0)  # the retry policy's delay
        self.assertEqual(len(h.reactor.tcpClients), 2)
        h.connect()
        self.assertEqual(h.events, ["connected"])

    def test_a_non_finite_or_unbounded_heartbeat_is_logged_dropped_and_retried(self):
        for field, value, problem in (
            ("pingInterval", "NaN", "NaN is not a JSON number"),
            ("pingTimeout", "Infinity", "Infinity is not a JSON number"),
            ("pingInterval", "1e999", "out of range"),
            ("pingInterval", "0", "pingInterval is not a finite number above 0"),
            ("pingTimeout", "600001", "pingTimeout is not a finite number above 0 and at most 600000"),
            ("sid", '""', "without a session id"),
        ):
            with self.subTest(field=field, value=value):
                h = Harness(self)
                h.accept()
                h.send("0" + json.dumps(OPEN).replace(json.dumps(OPEN[field]), value, 1))
                self.assertTrue(h.link_lost)
                warnings = " ".join(h.warnings())
                self.assertIn("bad handshake", warnings)
                self.assertIn(problem, warnings)
                self.assertIn("127.0.0.1", warnings)
                self.assertEqual(h.events, [])
                self.assertReconnects(h)

    def test_a_message_over_max_message_size_fails_the_link_which_reconnects(self):
        h = Harness(self, max_message_size=1024)
        h.connect()
        h.send('42["greet","%s"]' % ("x" * 1024))
        self.assertTrue(h.link_lost)
        self.assertEqual(h.events, ["connected", "disconnected"])
        self.assertIn("exceeds payload limit of 1024", " ".join(h.warnings()))
        h.reactor.advance(5.0)
        h.connect()
        self.assertEqual(h.events, ["connected", "disconnected", "connected"])

    def test_a_150_mib_message_is_refused_from_its_frame_header_before_anything_is_buffered(self):
        registry = CollectorRegistry()
        h = Harness(self, registry)  # the default limit: 1 MiB
        h.connect()
        # Only the header of a 150 MiB text frame (unmasked, server to client): no payload at all.
        h.server.transport.write(b"\x81\x7f" + struct.pack("!Q", 150 << 20))
        h.pump.flush()
        self.assertTrue(h.link_lost)
        self.assertIn("exceeds payload limit of 1048576", " ".join(h.warnings()))
        self.assertEqual(ignored(registry, "oversized"), 1)

    def test_attachments_over_the_size_cap_drop_the_packet_and_keep_the_link(self):
        registry = CollectorRegistry()
        h = Harness(self, registry, max_message_size=150)
        h.connect()
        h.send('452-["greet",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]', b"x" * 80, b"y" * 80)
        h.send('42["greet","next"]')
        self.assertEqual(h.events, ["connected", ("greet", ("next",))])
        self.assertEqual((ignored(registry, "oversized"), ignored(registry, "out_of_state")), (1, 0))
        self.assertIn("attachments over max_message_size", " ".join(h.warnings()))
        self.assertFalse(h.link_lost)

    def test_too_many_attachments_drop_the_packet_and_its_binary_frames_quietly(self):
        registry = CollectorRegistry()
        h = Harness(self, registry, max_attachments=2)
        h.connect()
        h.send('453-["greet",1]', b"a", b"b", b"c", '42["greet","next"]')
        self.assertEqual(h.events, ["connected", ("greet", ("next",))])
        self.assertEqual((ignored(registry, "oversized"), ignored(registry, "out_of_state")), (1, 0))
        self.assertFalse(h.link_lost)

    def test_a_4300_digit_ack_id_or_attachment_count_is_a_dropped_packet(self):
        registry = CollectorRegistry()
        h = Harness(self, registry)
        h.connect()
        h.send("42" + "9" * 4300 + '["greet"]', "45" + "9" * 4300 + '-["greet"]', b"stray", '42["greet","after"]')
        self.assertFalse(h.link_lost)
        self.assertEqual(h.events, ["connected", ("greet", ("after",))])
        self.assertEqual(ignored(registry, "malformed"), 2)
        self.assertEqual(ignored(registry, "out_of_state"), 0)  # the dropped packet's binary frame goes quietly
        self.assertIn("ack id of 4300 digits", " ".join(h.warnings()))
        h.send("2")
        self.assertEqual(h.take(), ["3"])

    def test_an_event_with_a_lone_surrogate_is_dropped_counted_and_logged(self):
        registry = CollectorRegistry()
        h = Harness(self, registry)
        h.connect()
        h.send('4212["question","\\ud800"]', '42["greet",{"name":"\\udfff"}]', '42["greet",NaN]')
        self.assertEqual(h.events, ["connected"])
        self.assertEqual(h.take(), [])  # not acknowledged either
        self.assertEqual((ignored(registry, "bad_text"), ignored(registry, "malformed")), (2, 1))
        warnings = " ".join(h.warnings())
        self.assertIn("bad text", warnings)
        self.assertIn("127.0.0.1", warnings)
        self.assertFalse(h.link_lost)
        h.send('42["greet","\\ud83d\\ude00"]')
        self.assertEqual(h.events[-1], ("greet", ("\U0001f600",)))

    def test_a_flood_of_unknown_events_is_counted_but_logs_a_bounded_number_of_lines(self):
        registry = CollectorRegistry()
        h = Harness(self, registry)
        h.connect()
        h.send(*['42["nobody-handles-%d"]' % i for i in range(500)])
        self.assertEqual(ignored(registry, "unknown"), 500)
        self.assertLessEqual(len([w for w in h.warnings() if "ignored" in w]), 5)
        for _ in range(3):  # a minute later, the pings having kept the link
            h.reactor.advance(20.5)
            h.send("2")
        h.send('42["one-more"]')
        summaries = [w for w in h.warnings() if "more messages" in w]
        self.assertEqual(len(summaries), 1)
        # after a quiet minute: the 495 unsaid are summarised and the next one is logged by itself
        self.assertIn("ignored 495 more messages", summaries[0])
        self.assertIn("one-more", h.warnings()[-1])
        self.assertFalse(h.link_lost)
