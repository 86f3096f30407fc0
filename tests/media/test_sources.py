"""Generated audio (tones, cadences, DTMF, speech-like noise) and the paced / feeding producers."""

import itertools

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.media import (
    ALAW,
    PCM16,
    ULAW,
    BytesConsumer,
    Frame,
    FrameFeeder,
    MediaPort,
    PacedSource,
    cadence,
    dtmf_frames,
    silence,
    silence_payloads,
    speech_like,
    tone,
)
from gateway.media.testing import FrameCollector, tone_power
from gateway.media.tones import DTMF_FREQUENCIES, synthesize

ALL_DTMF = sorted({f for pair in DTMF_FREQUENCIES.values() for f in pair})


class DtmfTests(SynchronousTestCase):
    def test_each_digit_is_its_two_standard_frequencies(self):
        for digit, (low, high) in DTMF_FREQUENCIES.items():
            for codec in (PCM16, ULAW, ALAW):
                collector = FrameCollector()
                collector.frames = dtmf_frames(digit, 100, codec)
                power = {f: tone_power(collector.pcm(), f) for f in ALL_DTMF}
                weakest_of_pair = min(power[low], power[high])
                strongest_other = max(p for f, p in power.items() if f not in (low, high))
                self.assertGreater(weakest_of_pair, 100 * strongest_other, (digit, codec))

    def test_standard_pairs(self):
        self.assertEqual(DTMF_FREQUENCIES["1"], (697, 1209))
        self.assertEqual(DTMF_FREQUENCIES["5"], (770, 1336))
        self.assertEqual(DTMF_FREQUENCIES["0"], (941, 1336))
        self.assertEqual(DTMF_FREQUENCIES["#"], (941, 1477))
        self.assertEqual(DTMF_FREQUENCIES["D"], (941, 1633))

    def test_frames(self):
        frames = dtmf_frames("7", 90, ULAW)
        self.assertEqual(len(frames), 5)  # rounded up to whole 20 ms frames
        self.assertEqual([(f.codec, f.seq, f.ts, f.marker, len(f.payload)) for f in frames[:2]],
                         [(ULAW, 0, 0, True, 160), (ULAW, 1, 160, False, 160)])
        self.assertEqual(len(dtmf_frames("a", 20)), 1)

    def test_bad_digit_or_duration(self):
        self.assertRaises(ValueError, dtmf_frames, "E")
        self.assertRaises(ValueError, dtmf_frames, "12")
        self.assertRaises(ValueError, dtmf_frames, "1", 0)


class ToneTests(SynchronousTestCase):
    def test_cycled_tone_is_one_continuous_sine(self):
        frames = list(itertools.islice(tone(440), 60))  # its cycle is 5 frames
        self.assertEqual(b"".join(frames), synthesize([440], 60 * 160))

    def test_tone_frequency_and_codec(self):
        collector = FrameCollector()
        collector.frames = [Frame(ALAW, 8000, 0, 0, False, p) for p in itertools.islice(tone(425, ALAW), 10)]
        self.assertTrue(all(len(f.payload) == 160 for f in collector.frames))
        pcm = collector.pcm()
        self.assertGreater(tone_power(pcm, 425), 100 * tone_power(pcm, 600))

    def test_cadence(self):
        payloads = list(itertools.islice(cadence([425], 40, 60, PCM16), 10))
        on = [p != silence(PCM16) for p in payloads]
        self.assertEqual(on, [True, True, False, False, False] * 2)
        self.assertRaises(ValueError, cadence, [425], 0, 100)
        self.assertRaises(ValueError, tone, 5000)

    def test_speech_like_has_bursts_and_pauses(self):
        payloads = list(itertools.islice(speech_like(ULAW, seed=1), 500))
        self.assertEqual(payloads, list(itertools.islice(speech_like(ULAW, seed=1), 500)))
        self.assertTrue(all(len(p) == 160 for p in payloads))
        quiet = sum(p == silence(ULAW) for p in payloads)
        self.assertTrue(50 < quiet < 450, quiet)

    def test_silence(self):
        self.assertEqual(next(silence_payloads(ULAW)), b"\xff" * 160)


class PacedSourceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.collector = FrameCollector()

    def test_one_frame_per_20_ms_with_pause_and_resume(self):
        source = PacedSource(self.clock, tone(425), PCM16, name="caller")
        source.connect(self.collector)
        self.clock.pump([0] + [0.02] * 9)
        self.assertEqual(len(self.collector.frames), 10)
        self.collector.stop_reading()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1)
        self.assertEqual(len(self.collector.frames), 10)
        self.collector.resume_reading()
        self.clock.pump([0] + [0.02] * 4)
        self.assertEqual(len(self.collector.frames), 15)
        self.assertEqual([f.seq for f in self.collector.frames], list(range(15)))
        self.assertEqual([f.ts for f in self.collector.frames[:3]], [0, 160, 320])
        source.disconnect()
        self.assertEqual((self.clock.getDelayedCalls(), self.collector.producer), ([], None))

    def test_finite_source_ends_and_disconnects(self):
        source = PacedSource(self.clock, [b"a" * 320, b"b" * 320], PCM16)
        source.connect(self.collector)
        self.clock.pump([0, 0.02, 0.02])
        self.assertIsNone(self.successResultOf(source.done))
        self.assertEqual([f.payload[:1] for f in self.collector.frames], [b"a", b"b"])
        self.assertIsNone(self.collector.producer)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_simulated_party_into_a_port(self):
        port = MediaPort(self.clock, ULAW)
        port.source.connect(self.collector)
        PacedSource(self.clock, speech_like(ULAW, seed=2), ULAW).connect(BytesConsumer(port.receive))
        self.clock.pump([0] + [0.02] * 49)
        self.assertEqual(len(self.collector.frames), 50)
        port.close()


class FrameFeederTests(SynchronousTestCase):
    def test_feeds_until_paused_then_on_resume(self):
        class Pausing(FrameCollector):
            def write(self, frame):
                super().write(frame)
                if len(self.frames) % 3 == 0:
                    self.stop_reading()

        collector = Pausing()
        feeder = FrameFeeder(iter([b"x"] * 7), ULAW)
        feeder.connect(collector)
        self.assertEqual(len(collector.frames), 3)
        collector.resume_reading()
        collector.resume_reading()
        self.assertEqual(len(collector.frames), 7)
        self.assertIsNone(self.successResultOf(feeder.done))
        self.assertIsNone(collector.producer)

    def test_failing_iterable_errbacks_done(self):
        def broken():
            yield b"x"
            raise OSError("disk gone")

        feeder = FrameFeeder(broken(), PCM16, name="prompt")
        collector = FrameCollector()
        feeder.connect(collector)
        self.failureResultOf(feeder.done, OSError)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual((len(collector.frames), collector.producer), (1, None))
