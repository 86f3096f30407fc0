"""Codecs pinned with G.711 test vectors, frame sizes, silence, transcoding, and frame numbering."""

import struct

from twisted.trial.unittest import SynchronousTestCase

from gateway.media import ALAW, PCM16, ULAW, Frame, converter, frame_size, silence, transcode
from gateway.media.codecs import converters_to
from gateway.media.frame import Stamper


def pcm(*samples):
    return struct.pack(f"<{len(samples)}h", *samples)


class VectorTests(SynchronousTestCase):
    # (linear sample, u-law byte, A-law byte), from the public G.711 tables
    ENCODE = [
        (0, 0xFF, 0xD5),
        (-1, 0x7E, 0x55),
        (100, 0xF2, 0xD3),
        (-100, 0x72, 0x53),
        (1000, 0xCE, 0xFA),
        (-1000, 0x4E, 0x7A),
        (4096, 0xAF, 0x85),
        (32767, 0x80, 0xAA),
        (-32768, 0x00, 0x2A),
    ]
    # (u-law byte, linear) and (A-law byte, linear): decoding, on the 16-bit scale
    ULAW_DECODE = [(0xFF, 0), (0x7F, 0), (0xEF, 132), (0x8F, 16764), (0x80, 32124), (0x00, -32124)]
    ALAW_DECODE = [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256)]

    def test_encode(self):
        linear = pcm(*(sample for sample, _, _ in self.ENCODE))
        self.assertEqual(transcode(linear, PCM16, ULAW), bytes(u for _, u, _ in self.ENCODE))
        self.assertEqual(transcode(linear, PCM16, ALAW), bytes(a for _, _, a in self.ENCODE))

    def test_decode(self):
        self.assertEqual(
            transcode(bytes(b for b, _ in self.ULAW_DECODE), ULAW, PCM16), pcm(*(v for _, v in self.ULAW_DECODE))
        )
        self.assertEqual(
            transcode(bytes(b for b, _ in self.ALAW_DECODE), ALAW, PCM16), pcm(*(v for _, v in self.ALAW_DECODE))
        )

    def test_law_to_law_goes_through_linear(self):
        every = bytes(range(256))
        self.assertEqual(transcode(every, ULAW, ALAW), transcode(transcode(every, ULAW, PCM16), PCM16, ALAW))
        self.assertEqual(transcode(every, ALAW, ULAW), transcode(transcode(every, ALAW, PCM16), PCM16, ULAW))
        self.assertEqual(transcode(b"\xff\x80\x00", ULAW, ALAW), b"\xd5\xaa\x2a")

    def test_same_codec_is_untouched(self):
        payload = pcm(1, 2, 3)
        self.assertIs(transcode(payload, PCM16, PCM16), payload)
        self.assertIs(converter(ULAW, ULAW)(payload), payload)

    def test_converters_to_one_codec_from_each(self):
        every = bytes(range(256))
        to_ulaw = converters_to(ULAW)
        self.assertEqual(set(to_ulaw), {PCM16, ULAW, ALAW})
        self.assertEqual(to_ulaw[ALAW](every), transcode(every, ALAW, ULAW))
        self.assertEqual(to_ulaw[PCM16](every), transcode(every, PCM16, ULAW))
        self.assertIs(to_ulaw[ULAW](every), every)
        self.assertRaises(ValueError, converters_to, "opus")

    def test_unknown_codec(self):
        with self.assertRaises(ValueError) as caught:
            transcode(b"", "opus", PCM16)
        self.assertIn("alaw, pcm16, ulaw", str(caught.exception))


class SizeTests(SynchronousTestCase):
    def test_frame_sizes(self):
        self.assertEqual((frame_size(PCM16), frame_size(ULAW), frame_size(ALAW)), (320, 160, 160))
        self.assertEqual(frame_size(PCM16, 160), 2560)

    def test_odd_duration_refused(self):
        self.assertRaises(ValueError, frame_size, PCM16, 0.1)

    def test_silence(self):
        self.assertEqual(silence(PCM16), bytes(320))
        self.assertEqual(silence(ULAW), b"\xff" * 160)
        self.assertEqual(silence(ALAW, 40), b"\xd5" * 320)
        self.assertEqual(transcode(silence(ULAW), ULAW, PCM16), bytes(320))
        # A-law has no code for 0: its silence is the smallest positive step
        self.assertEqual(transcode(silence(ALAW), ALAW, PCM16), pcm(8) * 160)


class StamperTests(SynchronousTestCase):
    def test_numbering_and_marker(self):
        stamp = Stamper(ULAW)
        first, second = stamp(b"a"), stamp(b"b")
        self.assertEqual(first, Frame(ULAW, 8000, 0, 0, True, b"a"))
        self.assertEqual(second, Frame(ULAW, 8000, 1, 160, False, b"b"))
        stamp.restart()
        self.assertTrue(stamp(b"c").marker)

    def test_wraps_like_rtp(self):
        stamp = Stamper(PCM16)
        stamp.seq, stamp.ts = 0xFFFF, 0xFFFFFFFF - 100
        stamp(b"")
        self.assertEqual((stamp.seq, stamp.ts), (0, 59))

    def test_frame_is_slotted(self):
        frame = Frame(PCM16, 8000, 0, 0, False, b"")
        self.assertFalse(hasattr(frame, "__dict__"))
