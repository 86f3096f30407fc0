"""What one Patriot connection may cost: the message rate (max_message_rate, max_message_burst) and
the unsent output of a peer that does not read (max_output_buffer), through Autobahn's real
protocol on a transport that behaves like Twisted's TCP one, and on a task.Clock."""

import json
import os
import struct

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from core.harness import Harness
from gateway.confschema import Secret
from gateway.patriot.bridge import DiallerBridge
from gateway.patriot.config import BridgeConfig, BridgeUser, DesktopConfig
from gateway.patriot.line import Lines
from gateway.patriot.session import CLOSE_POLICY, TOO_MANY_MESSAGES

from .support import FakeConnection, frame, new_metrics
from .test_desktop import API_KEY, make_link

HANDSHAKE = (b"GET /dialler HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
ALICE = {"userName": "alice", "password": "pw-alice"}


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked client-to-server WebSocket frame (FIN set)."""
    mask = os.urandom(4)
    length = len(payload)
    header = bytes([0x80 | opcode])
    if length < 126:
        header += bytes([0x80 | length])
    elif length < 1 << 16:
        header += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", length)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each unmasked server-to-client frame in ``data``."""
    frames = []
    while data:
        opcode, length, at = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            length, at = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, at = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((opcode, data[at:at + length]))
        data = data[at + length:]
    return frames


class PeerThatDoesNotRead(StringTransport):
    """A TCP transport to a peer that reads nothing.

    Like ``twisted.internet.abstract.FileDescriptor``: once more than ``bufferSize`` bytes wait
    unsent it pauses its streaming producer, and :meth:`drain` (the peer reads at last) resumes
    it. ``producerState`` says whether the protocol paused the transport's reading.
    """

    bufferSize = 65536

    def __init__(self, address):
        super().__init__(peerAddress=address)
        self.producer_paused = False
        self.aborted = False

    def write(self, data):
        super().write(data)
        if (self.producer is not None and self.streaming and not self.producer_paused
                and len(self.value()) > self.bufferSize):
            self.producer_paused = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()
        return data

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()

    def unregisterProducer(self):
        self.producer = None  # as a TCP transport: twice is no error (Autobahn unregisters at every drop)


class BridgeCapsTestCase(SynchronousTestCase):
    config_overrides: dict = {}

    def setUp(self):
        self.harness = Harness()
        self.clock = self.harness.clock
        users = [BridgeUser(username="alice", password=Secret("pw-alice"), extension="1001")]
        self.config = BridgeConfig(users=users, **self.config_overrides)
        self.metrics, self.prometheus = new_metrics()
        self.lines = Lines(self.harness.registry)
        self.addCleanup(self.lines.close)
        from twisted.internet import defer
        self.bridge = DiallerBridge(self.config, reactor=self.clock, lines=self.lines, metrics=self.metrics,
                                    run_blocking=lambda f, *a: defer.maybeDeferred(f, *a))
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def open(self, port=50000, host="10.0.0.7"):
        address = IPv4Address("TCP", host, port)
        protocol = self.bridge.factory.buildProtocol(address)
        transport = PeerThatDoesNotRead(address)
        protocol.makeConnection(transport)
        protocol.dataReceived(HANDSHAKE)
        self.assertTrue(transport.drain().startswith(b"HTTP/1.1 101 "))
        self.addCleanup(lambda: protocol.connectionLost(Failure(ConnectionDone())) if protocol.session.open else None)
        return protocol, transport

    def sample(self, name, **labels):
        return self.prometheus.get_sample_value(name, labels) or 0

    def lines_like(self, text):
        return [e for e in self.events if text in e.get("log_format", "")]


class MessageRateTests(BridgeCapsTestCase):
    """20 messages a second, 50 at once, by default."""

    def test_a_flood_of_heartbeats_is_refused_after_the_burst_and_the_connection_closed(self):
        protocol, transport = self.open()
        flood = client_frame(b'{"type":"heartbeat"}') * 100_000
        read = 0
        while read < len(flood) and transport.producerState == "producing":  # as TCP reads: 64 KiB at a time
            protocol.dataReceived(flood[read:read + 65536])
            read += 65536
        self.assertEqual(read, 65536)  # reading stopped with the close: the rest of the flood is never read
        frames = server_frames(transport.drain())
        self.assertEqual(frames[:50], [(1, b'{"type":"heartbeat-response"}')] * 50)
        self.assertEqual(frames[50:], [(8, struct.pack("!H", CLOSE_POLICY) + TOO_MANY_MESSAGES.encode())])
        # every frame read past the burst is counted, none handled
        self.assertEqual(self.sample("gateway_ignored_messages_total", adapter="patriot", reason="rate_limited"),
                         65536 // len(client_frame(b'{"type":"heartbeat"}')) - 50)
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="rate_limited"), 1)
        self.assertEqual(self.sample("gateway_patriot_messages_total", mode="bridge", type="heartbeat"), 50)
        # one log line, not one per frame
        self.assertEqual(len(self.lines_like("closing {who} (4008 too many messages)")), 1)
        self.assertEqual(self.lines_like("ignored"), [])
        # the peer does not answer the close: dropped after Autobahn's close handshake timeout
        self.assertFalse(transport.aborted)
        self.clock.advance(protocol.closeHandshakeTimeout)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.bridge.sessions, [])
        self.assertEqual(self.bridge.unauthenticated, 0)

    def test_many_flooding_connections_are_logged_within_a_budget(self):
        heartbeats = client_frame(b'{"type":"heartbeat"}') * 100
        for port in range(40):
            protocol, _ = self.open(host=f"10.0.1.{port}")
            protocol.dataReceived(heartbeats)
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="rate_limited"), 40)
        self.assertEqual(len(self.lines_like("closing {who} (4008 too many messages)")), 5)
        self.clock.advance(60)
        protocol, _ = self.open(host="10.0.2.1")
        protocol.dataReceived(heartbeats)
        (summary,) = self.lines_like("closed {count} more connections past max_message_rate")
        self.assertEqual(summary["count"], 35)

    def test_pings_count_toward_the_rate(self):
        protocol, transport = self.open()
        protocol.dataReceived(client_frame(b"", opcode=9) * 1000)
        frames = server_frames(transport.drain())
        self.assertEqual([opcode for opcode, _ in frames], [10] * 50 + [8])
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="rate_limited"), 1)

    def test_patriot_within_the_rate_is_never_refused(self):
        protocol, transport = self.open()
        protocol.dataReceived(client_frame(json.dumps({"type": "init-request", "payload": ALICE}).encode()))
        frames = client_frame(b'{"type":"heartbeat"}') + client_frame(b'{"type":"call-status-request"}')
        for _ in range(2000):  # 10,000 s: a heartbeat and a status request every 5 s
            protocol.dataReceived(frames)
            self.clock.advance(5)
        self.assertTrue(protocol.session.open)
        self.assertEqual(self.sample("gateway_ignored_messages_total", adapter="patriot", reason="rate_limited"), 0)
        self.assertNotIn(8, [opcode for opcode, _ in server_frames(transport.drain())])

    def test_a_burst_then_the_rate(self):
        protocol, transport = self.open()
        heartbeat = client_frame(b'{"type":"heartbeat"}')
        protocol.dataReceived(heartbeat * 50)
        for _ in range(100):  # then 20 a second, for 10 s
            self.clock.advance(0.05)
            protocol.dataReceived(heartbeat)
        self.assertEqual(server_frames(transport.drain()), [(1, b'{"type":"heartbeat-response"}')] * 150)
        protocol.dataReceived(heartbeat)  # one more at once: past it
        self.assertEqual(server_frames(transport.drain())[-1][0], 8)


class ClosingTests(BridgeCapsTestCase):
    def test_a_heartbeat_while_the_gateway_closes_gets_no_answer_and_no_error(self):
        """Autobahn raises Disconnected for a message sent while closing; the frame is just not answered."""
        protocol, transport = self.open()
        heartbeat = client_frame(b'{"type":"heartbeat"}')
        for _ in range(6):
            self.clock.advance(5)
            protocol.dataReceived(heartbeat)
        self.assertEqual(server_frames(transport.drain())[-1][0], 8)  # init_timeout: closing, 4008
        protocol.dataReceived(heartbeat)
        self.assertEqual(transport.drain(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.lines_like("handling {type} failed"), [])


class ConfiguredRateTests(BridgeCapsTestCase):
    config_overrides = {"max_message_rate": 1.0, "max_message_burst": 3}

    def test_the_keys_set_it(self):
        protocol, transport = self.open()
        protocol.dataReceived(client_frame(b'{"type":"heartbeat"}') * 4)
        self.assertEqual([opcode for opcode, _ in server_frames(transport.drain())], [1, 1, 1, 8])
        self.assertEqual(transport.producerState, "paused")


class SlowReaderTests(BridgeCapsTestCase):
    """A peer that reads nothing: its frames are no longer read once the transport's buffer is full,
    and what is still queued for it (line events) is capped by max_output_buffer (64 KiB here)."""

    config_overrides = {"max_output_buffer": 65536, "max_message_burst": 100_000}

    def logged_in(self):
        protocol, transport = self.open()
        protocol.dataReceived(client_frame(json.dumps({"type": "init-request", "payload": ALICE}).encode()))
        self.assertEqual(protocol.session.user.username, "alice")
        return protocol, transport

    def test_reading_stops_while_the_buffer_is_full_and_starts_again_once_it_drained(self):
        protocol, transport = self.logged_in()
        status_request = client_frame(b'{"type":"call-status-request"}')
        while not transport.producer_paused:
            self.assertEqual(transport.producerState, "producing")
            protocol.dataReceived(status_request * 100)
        self.assertEqual(transport.producerState, "paused")  # the peer's frames are not read
        transport.drain()
        self.assertEqual(transport.producerState, "producing")
        self.assertTrue(protocol.session.open)
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="slow_reader"), 0)

    def test_a_peer_that_never_reads_cannot_make_the_gateway_hold_more_than_the_cap(self):
        protocol, transport = self.logged_in()
        network = self.harness.network
        most = 0
        for call in range(5000):  # calls to alice's extension: two call-status-updates each
            if transport.aborted:
                break
            network.place_inbound(f"02999{call:05d}", "100")
            network.party(f"02999{call:05d}").hang_up()
            most = max(most, len(transport.value()))
        self.assertTrue(transport.aborted, "the connection was dropped")
        self.assertLessEqual(most, transport.bufferSize + self.config.max_output_buffer + 200)
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="slow_reader"), 1)
        (line,) = self.lines_like("it does not read what it is sent")
        self.assertGreater(line["unsent"], self.config.max_output_buffer)
        self.assertIn("10.0.0.7:50000", line["who"])
        held = len(transport.value())
        network.place_inbound("0299900001", "100")  # nothing more is queued for it
        self.assertEqual(len(transport.value()), held)

    def test_a_peer_that_stops_reading_is_dropped_as_dead_by_heartbeat_timeout(self):
        protocol, transport = self.logged_in()
        while not transport.producer_paused:
            protocol.dataReceived(client_frame(b'{"type":"call-status-request"}') * 100)
        self.clock.advance(self.config.heartbeat_timeout)  # nothing read meanwhile
        self.assertTrue(transport.aborted)


class DesktopRateTests(SynchronousTestCase):
    """The desktop link caps what Patriot's Desktop API sends it the same way."""

    def test_a_flood_from_the_server_closes_the_connection(self):
        harness = Harness()
        link, prometheus, _ = make_link(harness, DesktopConfig(api_key=Secret(API_KEY), extension="1001"),
                                        reactor=harness.clock)
        connection = FakeConnection("127.0.0.1", 9009)
        session = link.session_opened(connection)
        connection.take()
        for _ in range(10_000):
            session.frame_received(frame("call-status-request"), False)
        self.assertEqual(connection.closes, [(CLOSE_POLICY, TOO_MANY_MESSAGES)])
        self.assertFalse(connection.reading)
        self.assertEqual(prometheus.get_sample_value("gateway_ignored_messages_total",
                                                     {"adapter": "patriot", "reason": "unauthenticated"}), 50)
        self.assertEqual(prometheus.get_sample_value("gateway_ignored_messages_total",
                                                     {"adapter": "patriot", "reason": "rate_limited"}), 10_000 - 50)
        session.closed("gone")
