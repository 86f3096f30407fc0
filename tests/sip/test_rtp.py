"""RTP for the SIP leg: packets, RFC 3550 statistics, RTCP SR/RR, RFC 4733 DTMF, symmetric RTP, media timeout."""

import random
import struct

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.sip.rtp import (
    DTMFEvent,
    DTMFReceiver,
    RTPError,
    RTPPacket,
    RTPSession,
    ReceiveStats,
    ReportBlock,
    dtmf_packets,
    parse_rtcp,
    receiver_report,
    sender_report,
)


def packet(seq, ts=None, pt=0, ssrc=0x1234, payload=b"\xff" * 160, marker=False):
    return RTPPacket(pt, seq & 0xFFFF, (ts if ts is not None else seq * 160) & 0xFFFFFFFF, ssrc, payload, marker)


class PacketTests(SynchronousTestCase):
    def test_round_trip(self):
        original = RTPPacket(8, 65535, 4294967295, 0xDEADBEEF, b"abc", True, (1, 2))
        self.assertEqual(RTPPacket.parse(original.to_bytes()), original)

    def test_extension_and_padding_are_skipped(self):
        header = struct.pack("!BBHII", 0x80 | 0x10 | 0x20, 0, 1, 2, 3)
        extension = struct.pack("!HH", 0xBEDE, 1) + b"\0\0\0\0"
        parsed = RTPPacket.parse(header + extension + b"data" + b"\0\0\x03")
        self.assertEqual(parsed.payload, b"data")

    def test_malformed(self):
        good = packet(1).to_bytes()
        for bad in (b"", good[:11], b"\x40" + good[1:], b"\x8f" + good[1:20], b"\x90" + good[1:13],
                    b"\xa0" + good[1:-1] + b"\x00", b"\xa0" + good[1:12] + b"\xff", good + b"x" * 1500):
            with self.assertRaises(RTPError, msg=bad[:16]):
                RTPPacket.parse(bad)

    def test_fuzz_only_rtp_errors(self):
        rng = random.Random(3550)
        for _ in range(3000):
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60)))
            for parse in (RTPPacket.parse, parse_rtcp, DTMFEvent.parse):
                try:
                    parse(data)
                except RTPError:
                    pass


class StatsTests(SynchronousTestCase):
    def feed(self, stats, seqs, spacing=0.02, jitter=None):
        for i, seq in enumerate(seqs):
            arrival = i * spacing + (jitter[i] if jitter else 0)
            stats.update(packet(seq, ts=seq * 160), arrival)

    def test_in_order_no_loss_no_jitter(self):
        stats = ReceiveStats()
        self.feed(stats, range(1000, 1100))
        self.assertEqual((stats.received, stats.expected, stats.lost, stats.jitter), (100, 100, 0, 0.0))

    def test_loss_and_the_fraction_per_report(self):
        stats = ReceiveStats()
        self.feed(stats, [s for s in range(100) if s % 10 != 5])
        block = stats.report_block()
        self.assertEqual((block.cumulative_lost, block.fraction_lost, block.highest_seq), (10, 25, 99))  # 10/100 * 256
        self.feed(stats, range(100, 200))
        self.assertEqual(stats.report_block().fraction_lost, 0)

    def test_sequence_wrap_counts_a_cycle(self):
        stats = ReceiveStats()
        self.feed(stats, [(65530 + i) % 65536 for i in range(12)])
        self.assertEqual((stats.cycles, stats.extended_max, stats.lost), (65536, 65536 + 5, 0))

    def test_jitter_follows_rfc_3550_a8(self):
        stats = ReceiveStats()
        delays = [0, 0.010, 0, 0.005]
        self.feed(stats, range(4), jitter=delays)
        expected = 0.0
        for previous, current in zip(delays, delays[1:]):
            expected += (abs(int(current * 8000) - int(previous * 8000)) - expected) / 16
        self.assertAlmostEqual(stats.jitter, expected, places=3)
        self.assertAlmostEqual(stats.jitter_ms, expected / 8, places=3)

    def test_a_big_jump_is_discarded_unless_the_source_goes_on_from_there(self):
        stats = ReceiveStats()
        self.feed(stats, range(10))
        self.assertFalse(stats.update(packet(30000), 1.0))
        self.assertTrue(stats.update(packet(10), 1.02))
        self.assertFalse(stats.update(packet(40000), 1.04))
        self.assertTrue(stats.update(packet(40001), 1.06))  # a restart: two in sequence
        self.assertEqual(stats.received, 1)

    def test_a_new_ssrc_starts_over(self):
        stats = ReceiveStats()
        self.feed(stats, range(10))
        stats.update(packet(500, ssrc=99), 1.0)
        self.assertEqual((stats.ssrc, stats.received, stats.lost), (99, 1, 0))


class RTCPTests(SynchronousTestCase):
    def test_sender_and_receiver_reports_round_trip(self):
        block = ReportBlock(ssrc=7, fraction_lost=26, cumulative_lost=-3, highest_seq=70000, jitter=12,
                            last_sr=0x12345678, delay_since_sr=65536)
        compound = sender_report(1, unix_seconds=1700000000.5, rtp_timestamp=160, packets=50, octets=8000,
                                 blocks=(block,)) + receiver_report(2, (block,)) + b"\x81\xca\x00\x01\x00\x00\x00\x01"
        sr, rr = parse_rtcp(compound)
        self.assertEqual((sr.kind, sr.ssrc, sr.packets, sr.octets, sr.blocks), ("SR", 1, 50, 8000, (block,)))
        self.assertEqual(sr.ntp_middle, ((1700000000 + 2208988800) & 0xFFFF) << 16 | 0x8000)
        self.assertEqual((rr.kind, rr.ssrc, rr.blocks), ("RR", 2, (block,)))

    def test_malformed_rtcp(self):
        rr = receiver_report(2, (ReportBlock(7, 0, 0, 0, 0),))
        for bad in (rr[:3], b"\x40" + rr[1:], rr[:-4], b"\x81\xc9\x00\x01\x00\x00\x00\x02"):
            with self.assertRaises(RTPError, msg=bad[:8]):
                parse_rtcp(bad)


class DTMFTests(SynchronousTestCase):
    def test_a_digit_is_sent_as_growing_updates_and_three_ends(self):
        sent = list(dtmf_packets("5", duration_ms=100, timestamp=8000))
        self.assertEqual([(e.event, e.end, e.duration, m, ts) for e, m, ts in sent], [
            (5, False, 160, True, 8000), (5, False, 320, False, 8000), (5, False, 480, False, 8000),
            (5, False, 640, False, 8000), (5, True, 800, False, 8000), (5, True, 800, False, 8000),
            (5, True, 800, False, 8000)])
        self.assertEqual(DTMFEvent.parse(sent[-1][0].to_bytes()), sent[-1][0])

    def test_the_receiver_reports_each_digit_once_with_its_duration(self):
        digits = []
        receiver = DTMFReceiver(lambda d, ms: digits.append((d, ms)))
        seq = 0
        for digit, ts in (("1", 1000), ("#", 5000), ("1", 9000)):
            for event, marker, stamp in dtmf_packets(digit, duration_ms=120, timestamp=ts):
                seq += 1
                receiver.packet(RTPPacket(101, seq, stamp, 1, event.to_bytes(), marker))
        self.assertEqual(digits, [("1", 120), ("#", 120), ("1", 120)])

    def test_lost_end_packets_report_the_digit_when_the_next_starts_or_at_flush(self):
        digits = []
        receiver = DTMFReceiver(lambda d, ms: digits.append(d))
        receiver.packet(RTPPacket(101, 1, 100, 1, DTMFEvent(7, False, 10, 160).to_bytes()))
        receiver.packet(RTPPacket(101, 2, 900, 1, DTMFEvent(8, False, 10, 160).to_bytes()))
        self.assertEqual(digits, ["7"])
        receiver.flush()
        self.assertEqual(digits, ["7", "8"])


class FakeUDP:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append((RTPPacket.parse(data), addr))


class SessionTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.audio, self.digits, self.timeouts = [], [], []
        self.session = RTPSession(self.clock, audio_pt=0, dtmf_pt=101, remote=("10.0.0.9", 4000),
                                  on_audio=lambda payload, p: self.audio.append(p.sequence),
                                  on_digit=lambda d, ms: self.digits.append(d),
                                  on_media_timeout=lambda: self.timeouts.append(self.clock.seconds()),
                                  media_timeout=10, random=lambda n: b"\x01" * n)
        self.wire = FakeUDP()
        self.session.makeConnection(self.wire)

    def tearDown(self):
        self.session.stop()

    def test_it_latches_onto_the_first_source_and_drops_every_other_address(self):
        nat = ("203.0.113.9", 31000)
        self.session.send_audio(b"\x00" * 160)
        self.assertEqual(self.wire.written[-1][1], ("10.0.0.9", 4000))
        for seq in range(5):
            self.session.datagramReceived(packet(seq).to_bytes(), nat)
        for seq in range(5, 500):  # a flood from elsewhere
            self.session.datagramReceived(packet(seq).to_bytes(), ("198.51.100.66", 4000))
        self.assertEqual(self.audio, [0, 1, 2, 3, 4])
        self.assertEqual(self.session.dropped, {"address": 495})
        self.session.send_audio(b"\x00" * 160)
        sent, addr = self.wire.written[-1]
        self.assertEqual(addr, nat)
        self.assertEqual(sent.sequence, self.wire.written[0][0].sequence + 1)
        self.assertEqual(sent.timestamp, self.wire.written[0][0].timestamp + 160)

    def test_junk_and_other_payload_types_are_dropped(self):
        src = ("10.0.0.9", 4000)
        self.session.datagramReceived(b"junk", src)
        self.session.datagramReceived(packet(1, pt=18).to_bytes(), src)
        self.assertEqual(self.session.dropped, {"malformed": 1, "payload_type": 1})
        self.assertFalse(self.session.latched)

    def test_dtmf_packets_become_digits(self):
        src = ("10.0.0.9", 4000)
        seq = 0
        for event, marker, ts in dtmf_packets("9", duration_ms=60, timestamp=777):
            seq += 1
            self.session.datagramReceived(packet(seq, ts=ts, pt=101, payload=event.to_bytes(), marker=marker)
                                          .to_bytes(), src)
        self.assertEqual((self.digits, self.audio), (["9"], []))

    def test_media_timeout_after_silence_and_not_while_packets_flow(self):
        self.session.startProtocol()
        for step in range(30):
            self.clock.advance(1)
            self.session.datagramReceived(packet(step).to_bytes(), ("10.0.0.9", 4000))
        self.assertEqual(self.timeouts, [])
        self.clock.advance(9.9)
        self.assertEqual(self.timeouts, [])
        self.clock.advance(0.1)
        self.assertEqual(self.timeouts, [40.0])
        self.clock.advance(100)
        self.assertEqual(self.timeouts, [40.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sending_a_digit(self):
        for event, marker, ts in dtmf_packets("*", duration_ms=40, timestamp=self.session.timestamp):
            self.session.send_digit_packet(event, marker, ts)
        sent = [p for p, _ in self.wire.written]
        self.assertEqual([p.payload_type for p in sent], [101] * 4)  # one update, three ends
        self.assertEqual([p.marker for p in sent], [True, False, False, False])
        self.assertEqual(len({p.sequence for p in sent}), 4)
        self.assertEqual(DTMFEvent.parse(sent[-1].payload).digit, "*")
