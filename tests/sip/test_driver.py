"""The sip driver on task.Clock with in-memory UDP ports: the map between SIP calls and the core's legs,
RTP into and out of the leg, DTMF both ways, the media timeout, drops by address, registrations' status."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet import address, task
from twisted.trial.unittest import SynchronousTestCase

from gateway.drivers.sim import run_clock
from gateway.drivers.sip import SipDriver
from gateway.sip.config import SipConfig, SipTrunk
from gateway.sip.message import Request, Response, parse_datagram
from gateway.sip.rtp import DTMFEvent, RTPPacket

TRUNK = ("192.0.2.5", 5060)


class FakeUDPPort:
    def __init__(self, reactor, port, protocol, interface):
        self.reactor, self.port, self.protocol, self.interface = reactor, port, protocol, interface
        self.sent: list[tuple[bytes, tuple]] = []
        self.listening = True
        protocol.makeConnection(self)

    def write(self, data, addr):
        self.sent.append((data, addr))

    def getHost(self):
        return address.IPv4Address("UDP", self.interface, self.port)

    def stopListening(self):
        self.listening = False
        del self.reactor.ports[self.port]
        self.protocol.doStop()

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


class FakeReactor(task.Clock):
    def __init__(self):
        super().__init__()
        self.ports: dict[int, FakeUDPPort] = {}

    def listenUDP(self, port, protocol, interface=""):
        from twisted.internet.error import CannotListenError

        if port in self.ports:
            raise CannotListenError(interface, port, "in use")
        self.ports[port] = FakeUDPPort(self, port, protocol, interface)
        return self.ports[port]


class Events:
    def __init__(self, leg_id="leg-1", call_id="call-1"):
        self.leg_id, self.call_id = leg_id, call_id
        self.seen = []
        self.cdrs = []

    def __getattr__(self, name):
        if name in ("ringing", "answered", "busy", "no_answer", "failed", "hung_up", "dtmf"):
            return lambda *args: self.seen.append((name, *args))
        raise AttributeError(name)

    def provider_cdr(self, source, data):
        self.cdrs.append((source, data))


class Inbound:
    def __init__(self, then=None):
        self.calls = []
        self.then = then

    def incoming(self, leg, *, caller_id, did, attributes=None):
        events = Events()
        self.calls.append((leg, caller_id, did, attributes, events))
        if self.then is not None:
            self.then(leg)
        return events


def sdp(port=7000, extra=""):
    return (f"v=0\r\no=peer 1 1 IN IP4 {TRUNK[0]}\r\ns=-\r\nc=IN IP4 {TRUNK[0]}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a=ptime:20\r\n{extra}").encode()


def invite(did="600", call_id="c1@peer", branch="z9hG4bKa1", source=TRUNK):
    return (f"INVITE sip:{did}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {source[0]}:{source[1]};branch={branch}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:5550100@{source[0]}>;tag=p1\r\nTo: <sip:{did}@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:peer@{source[0]}:{source[1]}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp())}\r\n\r\n").encode() + sdp()


def rtp(seq, payload=b"\xd5" * 160, pt=8, ts=None, ssrc=77, marker=False):
    return RTPPacket(pt, seq, ts if ts is not None else seq * 160, ssrc, payload, marker).to_bytes()


class DriverTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeReactor()
        self.metrics = CollectorRegistry()
        config = SipConfig(listen="udp:5060:interface=127.0.0.1", rtp_ports="40000-40009", media_timeout=5,
                           trunks=[SipTrunk(name="carrier", proxy=f"udp:{TRUNK[0]}:{TRUNK[1]}")])
        self.driver = SipDriver(self.reactor, config, metrics=self.metrics, resolve=lambda host: host)
        self.inbound = Inbound()
        self.driver.wire(self.inbound)
        self.driver.start()
        self.sip = self.reactor.ports[5060]

    def tearDown(self):
        self.driver.stop()
        self.reactor.advance(40)

    def metric(self, name, **labels):
        return self.metrics.get_sample_value(name, labels) or 0

    def sent(self, since=0):
        return [(parse_datagram(data), addr) for data, addr in self.sip.sent[since:]]

    def statuses(self, since=0):
        return [message.status for message, _ in self.sent(since) if isinstance(message, Response)]

    def answered_call(self):
        self.sip.protocol.datagramReceived(invite(), TRUNK)
        [(leg, caller, did, attributes, events)] = self.inbound.calls
        return self.answered_call_after_invite(leg, events)

    def test_inbound_invite_rings_and_is_delivered_by_did_then_answered_with_sdp(self):
        self.sip.protocol.datagramReceived(invite(did="600"), TRUNK)
        self.assertEqual(self.statuses(), [100, 180])
        [(leg, caller, did, attributes, events)] = self.inbound.calls
        self.assertEqual((caller, did, attributes["trunk"], leg.driver, leg.port.codec), ("5550100", "600",
                                                                                          "carrier", "sip", "alaw"))
        leg, events, response = self.answered_call_after_invite(leg, events)
        body = response.body.decode()
        self.assertIn("m=audio 40000 RTP/AVP 8 101", body)

    def answered_call_after_invite(self, leg, events):
        done = []
        leg.answer().addCallback(done.append)
        response = self.sent()[-1][0]
        self.assertEqual(response.status, 200)
        self.assertEqual(done, [])  # until the ACK
        ack = (f"ACK sip:gateway@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK[0]}:5060;branch=z9hG4bKack\r\n"
               f"From: <sip:5550100@{TRUNK[0]}>;tag=p1\r\nTo: {response.get('To')}\r\nCall-ID: c1@peer\r\n"
               f"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()
        self.sip.protocol.datagramReceived(ack, TRUNK)
        self.assertEqual(done, [None])
        return leg, events, response

    def test_the_cores_refusals_answer_the_invite(self):
        for cause, status in (("busy", 486), ("no_route", 404), ("rejected", 603), ("failed", 480)):
            since = len(self.sip.sent)
            self.sip.protocol.datagramReceived(invite(call_id=f"{cause}@peer", branch=f"z9hG4bK{cause}"), TRUNK)
            leg = self.inbound.calls[-1][0]
            leg.hangup(cause)
            self.assertEqual(self.statuses(since)[-1], status, cause)
            self.assertFalse(leg.media.rtp_port.listening)  # the RTP ports are free again

    def test_an_invite_from_no_trunk_gets_403_and_is_counted(self):
        self.sip.protocol.datagramReceived(invite(source=("198.51.100.1", 5060)), ("198.51.100.1", 5060))
        self.assertEqual(self.statuses(), [403])  # statelessly: no 100, no retransmissions, no transaction
        self.assertEqual(self.inbound.calls, [])
        self.assertEqual(self.metric("gateway_sip_refused_total", reason="unknown_host"), 1)

    def test_rtp_latches_feeds_the_port_and_a_strangers_flood_is_dropped_and_counted(self):
        leg, events, _ = self.answered_call()
        rtp_port = self.reactor.ports[40000]
        frames = []
        leg.port.source.connect(type("C", (), {"write": lambda self, frame: frames.append(frame),
                                                "registerProducer": lambda *a: None,
                                                "unregisterProducer": lambda *a: None})())
        for seq in range(1, 4):
            rtp_port.protocol.datagramReceived(rtp(seq), (TRUNK[0], 7002))  # NAT: another port, the trunk's host
        for seq in range(100):
            rtp_port.protocol.datagramReceived(rtp(seq, ssrc=666), ("203.0.113.9", 9999))
        self.assertEqual(len(frames), 3)
        self.assertEqual(leg.media.session.remote, (TRUNK[0], 7002))
        self.assertEqual(self.metric("gateway_sip_rtp_dropped_total", reason="address"), 100)
        # the playout toward the party goes out as RTP with one SSRC, growing sequence and timestamp
        leg.port.playout.set_wire(None)
        for _ in range(3):
            leg.media._write(b"\xd5" * 160)
        packets = [RTPPacket.parse(data) for data, addr in rtp_port.sent if addr == (TRUNK[0], 7002)
                   and RTPPacket.parse(data).payload_type == 8]
        self.assertEqual(len(packets), 3)
        self.assertEqual({p.ssrc for p in packets}, {leg.media.session.ssrc})
        self.assertEqual([(b.sequence - a.sequence) % 65536 for a, b in zip(packets, packets[1:])], [1, 1])
        self.assertEqual([b.timestamp - a.timestamp for a, b in zip(packets, packets[1:])], [160, 160])

    def capture(self, leg):
        frames = []
        leg.port.source.connect(type("C", (), {"write": lambda self, frame: frames.append(frame.payload[:1]),
                                                "registerProducer": lambda *a: None,
                                                "unregisterProducer": lambda *a: None})())
        return frames

    def test_inbound_rtp_is_delivered_in_sequence_order_and_a_lost_packet_becomes_silence(self):
        leg, events, _ = self.answered_call()
        frames = self.capture(leg)
        receive = self.reactor.ports[40000].protocol.datagramReceived

        def send(*seqs):
            for seq in seqs:
                receive(rtp(seq, bytes([seq]) * 160), (TRUNK[0], 7000))

        send(1, 3, 2, 4)  # reordered: played 1 2 3 4
        self.assertEqual(frames, [bytes([n]) for n in (1, 2, 3, 4)])
        send(6, 7)  # 5 is missing: held
        self.assertEqual(len(frames), 4)
        send(8)  # three held: 5 becomes silence, then 6 7 8
        self.assertEqual(frames[4:], [b"\xd5", b"\x06", b"\x07", b"\x08"])
        send(5, 8)  # too late, and a duplicate
        self.assertEqual(len(frames), 8)
        self.assertEqual((leg.media.late, leg.media.concealed), (2, 1))
        # a telephone-event packet (the same source) takes its sequence number: no gap, no silence
        receive(rtp(9, DTMFEvent(1, True, 10, 800).to_bytes(), pt=101, ts=9999), (TRUNK[0], 7000))
        send(10)
        self.assertEqual(frames[8:], [b"\x0a"])
        self.assertEqual(leg.media.concealed, 1)

    def test_silence_for_media_timeout_ends_the_call_with_bye_cause_and_cdr(self):
        leg, events, _ = self.answered_call()
        rtp_port = self.reactor.ports[40000]
        rtp_port.protocol.datagramReceived(rtp(1), (TRUNK[0], 7000))
        self.reactor.advance(4)
        rtp_port.protocol.datagramReceived(rtp(2), (TRUNK[0], 7000))
        self.reactor.advance(4.5)  # 4.5 s after the last packet: not yet
        self.assertEqual(events.seen, [])
        since = len(self.sip.sent)
        self.reactor.advance(1)
        self.assertEqual(events.seen, [("hung_up", "media_timeout")])
        [(bye, addr)] = [(m, a) for m, a in self.sent(since) if isinstance(m, Request)]
        self.assertEqual((bye.method, addr), ("BYE", TRUNK))
        self.assertEqual(self.metric("gateway_sip_media_timeouts_total"), 1)
        [(source, data)] = events.cdrs
        self.assertEqual((source, data["cause"], data["codec"], data["audio_packets_received"]),
                         ("sip", "media_timeout", "PCMA", 2))

    def test_rfc_4733_digits_in_once_each_and_out_with_the_cores_timing(self):
        leg, events, _ = self.answered_call()
        rtp_port = self.reactor.ports[40000]
        for seq, (end, duration) in enumerate([(False, 160), (False, 320), (True, 800), (True, 800), (True, 800)]):
            payload = DTMFEvent(1, end, 10, duration).to_bytes()
            rtp_port.protocol.datagramReceived(rtp(10 + seq, payload, pt=101, ts=5000, marker=seq == 0),
                                               (TRUNK[0], 7000))
        self.assertEqual(events.seen, [("dtmf", "1", 100)])
        done = []
        before = len(rtp_port.sent)
        leg.send_dtmf("5", 100).addCallback(done.append)
        run_clock(self.reactor, 0.07)  # an update every 20 ms: 160, 320, 480, 640 samples, then the ends at 80 ms
        self.assertEqual(done, [])
        run_clock(self.reactor, 0.011)
        self.assertEqual(done, [None])
        events_out = [DTMFEvent.parse(RTPPacket.parse(data).payload) for data, _ in rtp_port.sent[before:]
                      if RTPPacket.parse(data).payload_type == 101]
        self.assertEqual({e.event for e in events_out}, {5})
        self.assertEqual([e.end for e in events_out][-3:], [True, True, True])
        self.assertEqual(events_out[-1].duration, 800)
        self.assertEqual(self.metric("gateway_sip_dtmf_digits_total", direction="out"), 1)

    def test_outbound_dial_rings_and_maps_busy(self):
        events = Events()
        leg = self.driver.dial("carrier:5551234", events)
        [(request, addr)] = [(m, a) for m, a in self.sent() if isinstance(m, Request)]
        self.assertEqual((request.method, str(request.uri), addr), ("INVITE", "sip:5551234@192.0.2.5", TRUNK))
        self.assertIn(b"m=audio 40000 RTP/AVP 0 8 101", request.body)
        for status in (180, 486):
            response = request.response(status, to_tag="callee")
            self.sip.protocol.datagramReceived(response.to_bytes(), TRUNK)
        self.assertEqual(events.seen, [("ringing",), ("busy",)])
        self.assertFalse(leg.media.rtp_port.listening)

    def test_hanging_up_before_the_answer_cancels(self):
        events = Events()
        leg = self.driver.dial("carrier:5551234", events)
        [(request, _)] = [(m, a) for m, a in self.sent() if isinstance(m, Request)]
        self.sip.protocol.datagramReceived(request.response(180, to_tag="callee").to_bytes(), TRUNK)
        since = len(self.sip.sent)
        leg.hangup("normal")
        [(cancel, addr)] = [(m, a) for m, a in self.sent(since) if isinstance(m, Request)]
        self.assertEqual((cancel.method, addr, cancel.call_id), ("CANCEL", TRUNK, request.call_id))
        self.sip.protocol.datagramReceived(request.response(487, to_tag="callee").to_bytes(), TRUNK)
        self.assertEqual(events.seen, [("ringing",)])  # the core hung up: nothing more is reported
        self.assertEqual(events.cdrs[0][1]["cause"], "cancelled")
        self.assertFalse(leg.media.rtp_port.listening)

    def test_the_driver_refuses_a_bad_number_or_trunk(self):
        from gateway.core.errors import DriverError

        self.assertRaises(DriverError, self.driver.dial, "nowhere:123", Events())
        self.assertRaises(DriverError, self.driver.dial, "carrier:12 3", Events())

    def test_status_names_each_trunk(self):
        status = self.driver.status()
        self.assertEqual(status["trunks"]["carrier"], {"proxy": "192.0.2.5:5060", "registration": "off"})

