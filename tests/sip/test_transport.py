"""The SIP transports and the endpoint at the door: refusals, 403 for unknown hosts, OPTIONS, framing."""

import itertools

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from gateway.boundary import budget_factory
from gateway.sip.message import parse_datagram
from gateway.sip.transport import SIPEndpoint, TCPTransportFactory, TrunkMatcher, UDPTransport, parse_listen
from tests.sip.torture import BADINV01, BIGCODE, ESC02, INVUT, TORTURE, UNKSCM, wire

TRUNK = ("10.0.0.5", 5060)
STRANGER = ("203.0.113.66", 5060)


def invite(branch="z9hG4bKi1", via="10.0.0.5:5060"):
    return wire(f"""INVITE sip:+15551234@gw.example.com SIP/2.0
Via: SIP/2.0/UDP {via};branch={branch}
Max-Forwards: 70
From: <sip:+15559876@carrier.example.net>;tag=c1
To: <sip:+15551234@gw.example.com>
Call-ID: {branch}@carrier
CSeq: 1 INVITE
Contact: <sip:carrier@{via}>
Content-Type: application/sdp
Content-Length: {{CL}}

""", "v=0\no=- 1 1 IN IP4 10.0.0.5\ns=-\nc=IN IP4 10.0.0.5\nt=0 0\nm=audio 4000 RTP/AVP 0\n")


def request(method, branch="z9hG4bKo1"):
    return wire(f"""{method} sip:gw@gw.example.com SIP/2.0
Via: SIP/2.0/UDP 10.0.0.5:5060;branch={branch}
Max-Forwards: 70
From: <sip:carrier@carrier.example.net>;tag=c1
To: <sip:gw@gw.example.com>
Call-ID: {branch}@carrier
CSeq: 1 {method}
Content-Length: 0

""")


class FakeUDP:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))


class EndpointTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.logged = []
        counter = itertools.count()
        self.endpoint = SIPEndpoint(self.clock, TrunkMatcher([("carrier", "10.0.0.5"), ("pbx", "192.168.7.0/24")]),
                                    lambda transport: "192.0.2.1:5060", registry=self.registry,
                                    random=lambda n: next(counter).to_bytes(n, "big"))
        budgets = budget_factory(self.clock, "sip", self.registry, logger=Logger(observer=self.logged.append))
        self.udp = UDPTransport(self.endpoint, budgets("udp"))
        self.wire = FakeUDP()
        self.udp.makeConnection(self.wire)
        self.endpoint.add_transport("UDP", self.udp)
        self.invites = []
        self.endpoint.handlers["INVITE"] = lambda req, tx, src, trunk: self.invites.append((req, tx, src, trunk))

    def tearDown(self):
        self.endpoint.close()

    def answers(self):
        return [(parse_datagram(data), addr) for data, addr in self.wire.written]

    def statuses(self):
        """The status codes sent, read from the status line (a 400 to a message whose Via is broken copies
        that Via as it came, so it does not parse as a whole)."""
        return [int(data.split(b" ", 2)[1]) for data, _ in self.wire.written]

    def metric(self, name, **labels):
        return self.registry.get_sample_value(name, labels) or 0


class DoorTests(EndpointTestCase):
    def test_an_invite_from_no_trunk_gets_403_and_is_counted(self):
        self.udp.datagramReceived(invite(via="203.0.113.66:5060"), STRANGER)
        self.assertEqual(self.statuses(), [403])
        self.assertEqual(self.answers()[-1][1], STRANGER)
        self.assertEqual(self.invites, [])
        self.assertEqual(self.metric("gateway_sip_refused_total", reason="unknown_host"), 1)
        self.assertEqual(self.endpoint.refused, {"unknown_host": 1})

    def test_a_strangers_invite_is_refused_statelessly_once_and_holds_no_transaction(self):
        """No 100, no 403 retransmitted until timer H (an amplifier toward a forged source), no transaction
        kept: a flood from strangers never takes the places the trunks' INVITEs need."""
        for i in range(50):
            self.udp.datagramReceived(invite(branch=f"z9hG4bKs{i}", via="203.0.113.66:5060"), STRANGER)
        self.assertEqual(self.endpoint.layer.count, 0)
        self.clock.advance(40)
        self.assertEqual(self.statuses(), [403] * 50)
        self.assertEqual(self.metric("gateway_sip_refused_total", reason="unknown_host"), 50)
        self.udp.datagramReceived(invite(), TRUNK)
        self.assertEqual(len(self.invites), 1)

    def test_a_flood_of_strangers_invites_leaves_the_trunks_invite_a_place(self):
        endpoint = SIPEndpoint(self.clock, TrunkMatcher([("carrier", "10.0.0.5")]), lambda t: "192.0.2.1:5060",
                               max_transactions=3)
        udp = UDPTransport(endpoint, budget_factory(self.clock, "sip", CollectorRegistry())("udp"))
        wire_ = FakeUDP()
        udp.makeConnection(wire_)
        endpoint.add_transport("UDP", udp)
        taken = []
        endpoint.handlers["INVITE"] = lambda req, tx, src, trunk: taken.append(trunk)
        for i in range(10):
            udp.datagramReceived(invite(branch=f"z9hG4bKf{i}", via="203.0.113.66:5060"), STRANGER)
        udp.datagramReceived(invite(), TRUNK)
        self.assertEqual(taken, ["carrier"])
        self.assertNotIn(b"SIP/2.0 503", b"".join(d for d, _ in wire_.written))
        endpoint.close()

    def test_an_invite_from_a_trunk_reaches_the_handler_with_the_trunk_name(self):
        self.udp.datagramReceived(invite(), TRUNK)
        self.udp.datagramReceived(invite(branch="z9hG4bKi2", via="192.168.7.20:5060"), ("192.168.7.20", 5060))
        self.assertEqual([trunk for *_, trunk in self.invites], ["carrier", "pbx"])
        self.assertEqual(self.statuses(), [100, 100])

    def test_options_is_answered_200_with_allow(self):
        self.udp.datagramReceived(request("OPTIONS"), STRANGER)
        [(response, addr)] = self.answers()
        self.assertEqual((response.status, addr), (200, STRANGER))
        self.assertEqual(response.get_all("Allow"), ["INVITE", "OPTIONS"])
        self.assertIsNotNone(response.to.tag)

    def test_a_known_method_without_handler_is_405_and_an_unknown_one_501(self):
        self.udp.datagramReceived(request("REGISTER"), TRUNK)
        self.udp.datagramReceived(request("FROB", branch="z9hG4bKo2"), TRUNK)
        self.assertEqual(self.statuses(), [405, 501])
        self.assertEqual(self.answers()[0][0].get_all("Allow"), ["INVITE", "OPTIONS"])

    def test_uas_checks_answer_416_and_415(self):
        self.udp.datagramReceived(UNKSCM, TRUNK)
        self.udp.datagramReceived(INVUT.replace(b"somehost.example.com", b"10.0.0.5"), TRUNK)
        self.assertEqual(self.statuses(), [416, 100, 415])

    def test_an_ack_for_a_2xx_goes_to_the_ack_handler(self):
        acks = []
        self.endpoint.handlers["ACK"] = lambda req, tx, src, trunk: acks.append((req.method, tx, trunk))
        self.udp.datagramReceived(request("ACK", branch="z9hG4bKack"), TRUNK)
        self.assertEqual(acks, [("ACK", None, "carrier")])


class HostileInputTests(EndpointTestCase):
    def test_every_torture_message_is_answered_or_dropped_and_the_endpoint_lives_on(self):
        for name, _, data, expected in TORTURE:
            del self.wire.written[:]
            self.udp.datagramReceived(data, TRUNK)
            if isinstance(expected, int):
                self.assertEqual(self.statuses()[-1:], [expected], name)
            elif expected == "drop":
                self.assertEqual(self.wire.written, [], name)
        self.assertGreater(self.metric("gateway_ignored_messages_total", adapter="sip", reason="malformed"), 15)
        del self.wire.written[:]
        self.udp.datagramReceived(request("OPTIONS", branch="z9hG4bKafter"), TRUNK)
        self.assertEqual(self.statuses(), [200])

    def test_refusals_are_logged_naming_the_peer_and_the_problem_rate_limited(self):
        self.udp.datagramReceived(BADINV01, STRANGER)
        self.assertIn("203.0.113.66:5060", self.logged[0]["detail"])
        self.assertIn("empty element", self.logged[0]["detail"])
        self.assertIn("answered 400", self.logged[0]["detail"])
        for _ in range(20):
            self.udp.datagramReceived(BIGCODE, STRANGER)
        self.assertLess(len(self.logged), 10)

    def test_junk_and_keepalives(self):
        for data in (b"\r\n\r\n", b"\r\n", b"\x00" * 50, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff\xfe"):
            self.udp.datagramReceived(data, STRANGER)
        self.assertEqual(self.wire.written, [])
        self.assertEqual(self.udp.keepalives, 2)

    def test_an_escaped_method_is_not_register(self):
        self.udp.datagramReceived(ESC02.replace(b"host.example.com;rport", b"10.0.0.5;rport"), TRUNK)
        self.assertEqual(self.statuses(), [501])


class TCPTests(EndpointTestCase):
    def connect(self):
        factory = TCPTransportFactory(self.endpoint, budget_factory(self.clock, "sip", self.registry))
        self.endpoint.add_transport("TCP", factory)
        connection = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=_Address("10.0.0.5", 40001))
        connection.makeConnection(transport)
        return factory, connection, transport

    def test_messages_in_pieces_are_answered_on_the_same_connection(self):
        factory, connection, transport = self.connect()
        data = request("OPTIONS").replace(b"UDP", b"TCP") * 2
        data = data.replace(b"z9hG4bKo1", b"z9hG4bKo2", 1)
        for i in range(0, len(data), 13):
            connection.dataReceived(data[i:i + 13])
        self.assertEqual(transport.value().count(b"SIP/2.0 200 OK\r\n"), 2)
        self.assertIn(("10.0.0.5", 40001), factory.connections)
        connection.connectionLost()
        self.assertEqual(factory.connections, {})

    def test_a_framing_error_is_answered_and_the_connection_closed(self):
        _, connection, transport = self.connect()
        connection.dataReceived(request("OPTIONS").replace(b"Content-Length: 0\r\n", b""))
        self.assertTrue(transport.value().startswith(b"SIP/2.0 400 Bad Request"))
        self.assertTrue(transport.disconnecting)


class _Address:
    def __init__(self, host, port):
        self.host, self.port = host, port


class ConfigTests(SynchronousTestCase):
    def test_parse_listen(self):
        self.assertEqual(parse_listen("udp:5060:interface=127.0.0.1"), ("udp", 5060, "127.0.0.1"))
        self.assertEqual(parse_listen("tcp:5070"), ("tcp", 5070, ""))
        for bad in ("sctp:5060", "udp:x", "udp:5060:foo=1", "udp", "udp:99999"):
            with self.assertRaises(ValueError, msg=bad):
                parse_listen(bad)

    def test_trunk_matching_by_address_or_network(self):
        trunks = TrunkMatcher([("a", "10.0.0.5"), ("b", "2001:db8::/64")])
        self.assertEqual([trunks.match(h) for h in ("10.0.0.5", "10.0.0.6", "2001:db8::9", "x", "::1")],
                         ["a", None, "b", None, None])


class OverloadTests(SynchronousTestCase):
    def test_past_the_cap_new_requests_get_503_statelessly_and_are_counted(self):
        clock, registry = Clock(), CollectorRegistry()
        endpoint = SIPEndpoint(clock, TrunkMatcher([("carrier", "10.0.0.5")]), lambda t: "192.0.2.1:5060",
                               registry=registry, max_transactions=3)
        udp = UDPTransport(endpoint, budget_factory(clock, "sip", registry)("udp"))
        wire_ = FakeUDP()
        udp.makeConnection(wire_)
        endpoint.add_transport("UDP", udp)
        endpoint.handlers["REGISTER"] = lambda req, tx, src, trunk: None  # keeps its transactions open
        for i in range(5):
            udp.datagramReceived(request("REGISTER", branch=f"z9hG4bKr{i}"), TRUNK)
        self.assertEqual([int(d.split(b" ", 2)[1]) for d, _ in wire_.written], [503, 503])
        self.assertEqual(parse_datagram(wire_.written[0][0]).get("Retry-After"), "5")
        self.assertEqual(endpoint.layer.count, 3)
        self.assertEqual(registry.get_sample_value("gateway_sip_refused_total", {"reason": "overloaded"}), 2)
        endpoint.close()


class FuzzThroughTheDoorTests(EndpointTestCase):
    def test_mutated_messages_never_raise_past_the_parser(self):
        """Mutated torture messages through the UDP transport, endpoint and transaction layer: every one is
        refused, answered or handled, and none ends in the transport's last-resort failure log."""
        import random

        from gateway.sip import transport as transport_module

        failures = []
        self.patch(transport_module, "log", Logger(observer=lambda event: failures.append(event)
                                                   if "log_failure" in event else None))
        self.endpoint.handlers["BYE"] = lambda req, tx, src, trunk: self.endpoint.respond(tx, 481)
        self.endpoint.handlers["INVITE"] = lambda req, tx, src, trunk: self.endpoint.respond(tx, 486)
        rng = random.Random(17)
        corpus = [data for _, _, data, _ in TORTURE] + [invite(), request("OPTIONS"), request("BYE"),
                                                        request("CANCEL")]
        for _ in range(3000):
            data = bytearray(rng.choice(corpus))
            for _ in range(rng.randrange(1, 4)):
                pos = rng.randrange(len(data))
                data[pos] = rng.choice(b"\r\n :;,<>\"%@\tz9hG4bK0123456789")
            self.udp.datagramReceived(bytes(data), rng.choice([TRUNK, STRANGER]))
        self.assertEqual([event.get("log_failure") for event in failures], [])
        self.clock.advance(64)
        self.assertEqual(self.endpoint.layer.count, 0)


class TCPBoundsTests(EndpointTestCase):
    """Anyone may connect to the SIP TCP port: connections are capped, per address and in all, a message must
    be complete within message_timeout and a silent connection ends after idle_timeout."""

    def factory(self, **options):
        factory = TCPTransportFactory(self.endpoint, budget_factory(self.clock, "sip", self.registry), **options)
        self.endpoint.add_transport("TCP", factory)
        return factory

    def connect(self, factory, host="203.0.113.66", port=40001):
        connection = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=_Address(host, port))
        connection.makeConnection(transport)
        return connection, transport

    def test_past_the_caps_a_new_connection_is_closed_at_once_and_counted(self):
        factory = self.factory(max_connections=5, max_per_host=3)
        opened = [self.connect(factory, port=40000 + i) for i in range(4)]
        self.assertEqual([t.disconnecting or t.disconnected for _, t in opened], [False, False, False, True])
        opened[3][0].dataReceived(request("OPTIONS"))  # a refused connection's bytes go nowhere
        self.assertEqual(opened[3][1].value(), b"")
        others = [self.connect(factory, host=f"198.51.100.{i}") for i in range(3)]
        self.assertEqual([t.disconnecting or t.disconnected for _, t in others], [False, False, True])
        self.assertEqual(self.metric("gateway_sip_refused_total", reason="tcp_connections"), 2)
        opened[0][0].connectionLost()  # a place is free again
        self.assertFalse(self.connect(factory, host="198.51.100.9")[1].disconnecting)

    def test_a_message_trickled_past_message_timeout_closes_the_connection(self):
        factory = self.factory(message_timeout=10.0, idle_timeout=600.0)
        connection, transport = self.connect(factory)
        data = request("OPTIONS").replace(b"UDP", b"TCP")
        for i in range(9):  # a byte a second: never a complete message
            connection.dataReceived(data[i:i + 1])
            self.clock.advance(1.0)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.metric("gateway_sip_refused_total", reason="tcp_message_timeout"), 1)
        connection.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_complete_messages_keep_a_busy_connection_and_silence_ends_it(self):
        factory = self.factory(message_timeout=10.0, idle_timeout=60.0)
        connection, transport = self.connect(factory, host="10.0.0.5")
        data = request("OPTIONS").replace(b"UDP", b"TCP")
        messages = [data.replace(b"z9hG4bKo1", f"z9hG4bKp{i:03d}".encode()) for i in range(31)]
        stream = b"".join(messages)
        cuts = [sum(len(m) for m in messages[:i + 1]) + 20 for i in range(30)]
        for start, end in zip([0] + cuts, cuts):  # pipelined: each read ends inside the next message, for 30 s
            connection.dataReceived(stream[start:end])
            self.clock.advance(1.0)
        self.assertFalse(transport.disconnecting)
        connection.dataReceived(stream[cuts[-1]:])
        self.assertEqual(transport.value().count(b"SIP/2.0 200 OK\r\n"), 31)
        self.clock.advance(59.0)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.metric("gateway_sip_refused_total", reason="tcp_idle_timeout"), 1)
        connection.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class StrangerShareTests(SynchronousTestCase):
    """Requests other than INVITE from hosts that are no trunk (OPTIONS, REGISTER, a BYE) are still served, each
    holding a transaction for timer J (32 s over UDP): strangers together hold at most half the places, so
    their flood never leaves a trunk's INVITE without one."""

    def test_a_strangers_flood_of_options_leaves_the_trunks_half_of_the_places(self):
        clock, registry = Clock(), CollectorRegistry()
        endpoint = SIPEndpoint(clock, TrunkMatcher([("carrier", "10.0.0.5")]), lambda t: "192.0.2.1:5060",
                               registry=registry, max_transactions=10)
        udp = UDPTransport(endpoint, budget_factory(clock, "sip", registry)("udp"))
        wire_ = FakeUDP()
        udp.makeConnection(wire_)
        endpoint.add_transport("UDP", udp)
        taken = []
        endpoint.handlers["INVITE"] = lambda req, tx, src, trunk: taken.append(trunk)
        for i in range(20):
            udp.datagramReceived(request("OPTIONS", branch=f"z9hG4bKs{i}").replace(b"10.0.0.5", b"203.0.113.66"),
                                 STRANGER)
        statuses = [int(d.split(b" ", 2)[1]) for d, _ in wire_.written]
        self.assertEqual(statuses, [200] * 5 + [503] * 15)
        self.assertEqual(registry.get_sample_value("gateway_sip_refused_total", {"reason": "overloaded"}), 15)
        for i in range(4):
            udp.datagramReceived(invite(branch=f"z9hG4bKt{i}"), TRUNK)
        self.assertEqual(taken, ["carrier"] * 4)
        clock.advance(33)  # timer J: the strangers' places are free again
        udp.datagramReceived(request("OPTIONS", branch="z9hG4bKlater").replace(b"10.0.0.5", b"203.0.113.66"),
                             STRANGER)
        self.assertEqual(int(wire_.written[-1][0].split(b" ", 2)[1]), 200)
        endpoint.close()
