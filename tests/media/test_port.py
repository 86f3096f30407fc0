"""MediaPort: paced playout, bounded queues, backpressure both ways, flush, checkpoints, mute, close."""

import random

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.media import PCM16, ULAW, Frame, FrameFeeder, MediaPort, MediaPorts, silence, tone, transcode
from gateway.media.testing import FrameCollector


def frame(payload, codec=PCM16):
    return Frame(codec, 8000, 0, 0, False, payload)


def numbered(n, codec=PCM16):
    """A 20 ms payload whose first two bytes say ``n``."""
    size = 320 if codec == PCM16 else 160
    return n.to_bytes(2, "little") + bytes(size - 2)


class PortTestCase(SynchronousTestCase):
    queue_ms = 200  # 10 frames: high water 8, low water 2

    def setUp(self):
        self.clock = Clock()
        self.port = MediaPort(self.clock, PCM16, name="leg-1", queue_ms=self.queue_ms)
        self.wire = []
        self.port.set_wire(self.wire.append)

    def tearDown(self):
        self.port.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PlayoutPacingTests(PortTestCase):
    queue_ms = 1000
    def test_ten_minutes_stay_within_one_frame_of_the_clock(self):
        feeder = FrameFeeder(tone(425), PCM16)
        feeder.connect(self.port.sink)
        rng = random.Random(3)
        while self.clock.seconds() < 600:
            self.clock.advance(rng.uniform(0.0005, 0.061))
            expected = int(self.clock.seconds() / 0.020) + 1
            self.assertLessEqual(abs(len(self.wire) - expected), 1)
            self.assertLessEqual(self.port.playout.queued, 50)
        self.assertEqual(self.port.playout.frames_played, len(self.wire))
        self.assertEqual((self.port.playout.frames_dropped, self.port.playout.underruns), (0, 0))
        self.assertTrue(all(len(payload) == 320 for payload in self.wire))

    def test_an_echoed_frame_is_one_frame_object_and_its_payload_is_never_copied(self):
        payload = numbered(7)
        frames = []
        self.port.source.connect(self.port.sink)  # the echo app
        original = self.port.sink.write
        self.port.sink.write = lambda f: (frames.append(f), original(f))
        self.port.receive(payload)
        self.clock.advance(0)
        self.assertEqual(len(frames), 1)
        self.assertIs(frames[0].payload, payload)
        self.assertIs(self.wire[0], payload)
        del self.port.sink.write
        self.port.source.disconnect()

    def test_idle_playout_schedules_nothing_and_restarts_fresh(self):
        self.port.sink.write(frame(numbered(1)))
        self.port.sink.write(frame(numbered(2)))
        self.clock.advance(0)
        self.assertEqual(self.wire, [numbered(1)])
        self.clock.advance(0.02)
        self.clock.advance(0.02)  # finds the queue empty: an underrun, and it stops
        self.assertEqual((len(self.wire), self.port.playout.underruns), (2, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5.007)
        self.port.sink.write(frame(numbered(3) + numbered(4)))
        self.clock.advance(0)
        self.assertEqual(self.wire[2:], [numbered(3)])  # at once, not on the old 20 ms grid
        self.clock.advance(0.02)
        self.assertEqual(self.wire[3:], [numbered(4)])

    def test_odd_sizes_reframed_and_remainder_padded_when_dry(self):
        self.port.sink.write(frame(b"\x01" * 7))
        self.port.sink.write(frame(b"\x02" * 5000))
        self.clock.pump([0] + [0.02] * 17)
        self.assertEqual(len(self.wire), 16)
        self.assertEqual(b"".join(self.wire), b"\x01" * 7 + b"\x02" * 5000 + bytes(5120 - 5007))
        self.assertEqual(self.port.playout.underruns, 1)

    def test_frames_of_another_codec_are_transcoded(self):
        ulaw = transcode(numbered(1000), PCM16, ULAW)
        self.port.sink.write(frame(ulaw, ULAW))
        self.port.sink.write(frame(numbered(7)))
        self.clock.pump([0, 0.02])
        self.assertEqual(self.wire, [transcode(ulaw, ULAW, PCM16), numbered(7)])

    def test_no_wire_holds_frames_until_one_is_set(self):
        self.port.set_wire(None)
        self.port.sink.write(frame(numbered(1)))
        self.clock.advance(1)
        self.assertEqual((self.wire, self.clock.getDelayedCalls()), ([], []))
        self.port.set_wire(self.wire.append)
        self.clock.advance(0)
        self.assertEqual(self.wire, [numbered(1)])


class BoundedQueueTests(PortTestCase):
    def test_full_queue_drops_oldest_and_counts(self):
        self.port.playout.pauseProducing()  # the wire's transport cannot keep up
        for n in range(25):
            self.port.sink.write(frame(numbered(n)))
        self.assertEqual((self.port.playout.queued, self.port.playout.frames_dropped), (10, 15))
        self.port.playout.resumeProducing()
        self.clock.pump([0] + [0.02] * 12)
        self.assertEqual(self.wire, [numbered(n) for n in range(15, 25)])

    def test_feeding_producer_is_paused_at_high_water_and_resumed(self):
        collector_wire = StringTransport()
        collector_wire.registerProducer(self.port.playout, True)
        upstream = StringTransport()
        self.port.sink.registerProducer(upstream, True)
        for n in range(8):  # high water of 10 frames is 8
            self.port.sink.write(frame(numbered(n)))
        self.assertEqual(upstream.producerState, "paused")
        self.clock.pump([0] + [0.02] * 5)  # plays 6: down to the low-water mark of 2
        self.assertEqual(upstream.producerState, "producing")
        self.port.sink.unregisterProducer()

    def test_only_one_push_producer(self):
        self.port.sink.registerProducer(StringTransport(), True)
        self.assertRaises(RuntimeError, self.port.sink.registerProducer, StringTransport(), True)
        self.port.sink.unregisterProducer()
        self.assertRaises(ValueError, self.port.sink.registerProducer, StringTransport(), False)


class InboundBackpressureTests(PortTestCase):
    def test_stalled_consumer_pauses_upstream_and_memory_stays_bounded(self):
        upstream = StringTransport()
        self.port.upstream = upstream
        collector = FrameCollector()
        self.port.source.connect(collector)
        self.port.receive(numbered(0) + numbered(1)[:100])
        self.port.receive(numbered(1)[100:])
        self.assertEqual([f.seq for f in collector.frames], [0, 1])
        collector.stop_reading()
        for _ in range(200):  # 200 x 5000 bytes, arriving although upstream is paused
            self.port.receive(bytes(5000))
        self.assertEqual(upstream.producerState, "paused")
        self.assertEqual(self.port.source.queued, 10)
        self.assertEqual(self.port.source.frames_dropped, 200 * 5000 // 320 - 10)
        self.assertEqual(len(collector.frames), 2)
        collector.resume_reading()
        self.assertEqual(upstream.producerState, "producing")
        self.assertEqual(len(collector.frames), 12)
        # the oldest were dropped: the gap shows in the sequence numbers, as in RTP
        self.assertEqual([f.seq for f in collector.frames[2:]], list(range(3117, 3127)))

    def test_slow_wire_pauses_the_other_legs_transport_through_a_bridge(self):
        other = MediaPort(self.clock, ULAW, name="leg-2", queue_ms=200)
        self.addCleanup(other.close)
        upstream = StringTransport()
        other.upstream = upstream
        other.source.connect(self.port.sink)
        transport = StringTransport()
        transport.registerProducer(self.port.playout, True)
        self.port.playout.pauseProducing()  # what the transport does when its buffer is full
        for _ in range(30):
            other.receive(silence(ULAW, 100))
        self.assertEqual(upstream.producerState, "paused")
        # the playout paused the source at its high water; the source holds what came since
        self.assertEqual((self.port.playout.queued, other.source.queued), (8, 10))
        self.assertEqual(other.source.frames_dropped, 30 * 5 - 18)
        self.port.playout.resumeProducing()
        self.clock.pump([0] + [0.02] * 30)
        self.assertEqual(upstream.producerState, "producing")
        self.assertEqual(self.wire, [transcode(silence(ULAW), ULAW, PCM16)] * 18)
        other.source.disconnect()

    def test_unconnected_source_discards(self):
        self.port.receive(bytes(3200))
        collector = FrameCollector()
        self.port.source.connect(collector)
        self.port.receive(bytes(320))
        self.assertEqual([(f.seq, f.marker) for f in collector.frames], [(0, True)])


class DropReportTests(SynchronousTestCase):
    """A port tells its on_drop hook of every frame its full queues drop, with the side it was on."""

    def setUp(self):
        self.clock = Clock()
        self.drops = []
        self.ports = MediaPorts(200, lambda where, count: self.drops.append((where, count)))
        self.port = self.ports.port(self.clock, PCM16, "leg-1")
        self.addCleanup(self.port.close)

    def reported(self, where):
        return sum(count for side, count in self.drops if side == where)

    def test_playout_overflow_is_reported_as_counted(self):
        self.port.set_wire([].append)
        self.port.playout.pauseProducing()  # the wire's transport cannot keep up
        for n in range(25):
            self.port.sink.write(frame(numbered(n)))
        self.port.sink.write(frame(bytes(320 * 7 + 5)))  # several drops from one write
        self.assertEqual(self.port.playout.frames_dropped, 22)
        self.assertEqual((self.reported("playout"), self.reported("inbound")), (22, 0))
        self.port.close()
        self.assertEqual(self.reported("playout"), 22)  # what close discards is flushed, not dropped

    def test_inbound_overflow_is_reported_as_counted(self):
        collector = FrameCollector()
        self.port.source.connect(collector)
        collector.stop_reading()
        for _ in range(40):
            self.port.receive(bytes(5000))
        self.assertEqual(self.port.source.frames_dropped, 40 * 5000 // 320 - 10)
        self.assertEqual((self.reported("inbound"), self.reported("playout")), (self.port.source.frames_dropped, 0))
        collector.resume_reading()
        self.port.source.disconnect()

    def test_nothing_is_reported_while_nothing_is_dropped(self):
        wire = []
        self.port.set_wire(wire.append)
        self.port.source.connect(FrameCollector())
        FrameFeeder(tone(425), PCM16).connect(self.port.sink)  # paused at high water, never dropped
        for _ in range(100):
            self.port.receive(bytes(320))
            self.clock.advance(0.02)
        self.assertEqual((len(wire), self.drops), (101, []))
        self.port.sink.unregisterProducer()
        self.port.source.disconnect()

    def test_the_default_factory_makes_one_second_ports_reporting_to_nobody(self):
        port = MediaPorts().port(self.clock, ULAW, "leg-2")
        self.addCleanup(port.close)
        self.assertEqual((port.codec, port.name), (ULAW, "leg-2"))
        port.sink.write(Frame(ULAW, 8000, 0, 0, False, bytes(160 * 60)))  # no wire yet: all of it queues
        self.assertEqual((port.playout.queued, port.playout.frames_dropped), (50, 10))
        self.assertEqual(self.drops, [])


class FlushTests(PortTestCase):
    def test_flush_empties_every_layer(self):
        upstream = StringTransport()
        self.port.sink.registerProducer(upstream, True)
        self.port.sink.write(frame(bytes(320 * 9 + 100)))  # 9 frames and a remainder
        self.assertEqual(upstream.producerState, "paused")
        played = self.port.playout.checkpoint()
        self.clock.advance(0)
        self.assertEqual(len(self.wire), 1)
        self.port.flush()
        self.assertEqual(self.port.playout.queued, 0)
        self.assertEqual(self.port.playout.frames_flushed, 9)  # 8 whole frames and the remainder
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no pending write
        self.assertEqual(upstream.producerState, "producing")
        self.assertIsNone(self.successResultOf(played))
        self.clock.advance(1)
        self.assertEqual(len(self.wire), 1)
        self.port.sink.write(frame(numbered(5)))
        self.clock.advance(0)
        self.assertEqual(self.wire[1:], [numbered(5)])
        self.port.sink.unregisterProducer()


class CheckpointTests(PortTestCase):
    def test_fires_when_queued_audio_has_been_written(self):
        self.assertIsNone(self.successResultOf(self.port.playout.checkpoint()))  # nothing queued
        self.port.sink.write(frame(bytes(640)))
        first = self.port.playout.checkpoint()
        self.port.sink.write(frame(bytes(660)))
        second = self.port.playout.checkpoint()
        self.clock.advance(0)
        self.assertNoResult(first)
        self.clock.advance(0.02)
        self.successResultOf(first)
        self.clock.pump([0.02, 0.02])
        self.assertNoResult(second)
        self.clock.advance(0.02)  # the padded remainder
        self.successResultOf(second)


class MuteAndCloseTests(PortTestCase):
    def test_muted_audio_is_discarded(self):
        collector = FrameCollector()
        self.port.source.connect(collector)
        self.port.receive(bytes(100))
        self.port.muted = True
        self.port.receive(bytes(640))
        self.port.muted = False
        self.port.receive(bytes(320))
        self.assertEqual(len(collector.frames), 1)
        self.assertTrue(self.port.muted is False)

    def test_close_detaches_everything(self):
        collector = FrameCollector()
        self.port.source.connect(collector)
        feeder = FrameFeeder(tone(425), PCM16)
        feeder.connect(self.port.sink)
        upstream = StringTransport()
        self.port.upstream = upstream
        self.clock.advance(0)
        self.port.close()
        self.assertIsNone(collector.producer)
        self.assertIsNone(feeder.consumer)
        self.assertIsNone(self.port.upstream)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.port.receive(bytes(320))
        self.port.sink.write(frame(bytes(320)))
        self.clock.advance(1)
        self.assertEqual((len(collector.frames), len(self.wire)), (0, 1))

    def test_bad_arguments(self):
        self.assertRaises(ValueError, MediaPort, self.clock, "gsm")
        self.assertRaises(ValueError, MediaPort, self.clock, PCM16, queue_ms=10)
