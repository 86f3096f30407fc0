"""Re-framing of odd sizes, and the bounded queue's water marks and drop-oldest policy."""

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.media.buffers import FrameQueue, Reframer


class ReframerTests(SynchronousTestCase):
    def setUp(self):
        self.frames = []
        self.reframer = Reframer(320, self.frames.append)

    def test_exact_frame_passes_through(self):
        payload = bytes(range(256)) + bytes(64)
        self.reframer.push(payload)
        self.assertEqual(self.frames, [payload])
        self.assertIs(self.frames[0], payload)

    def test_seven_byte_writes(self):
        stream = bytes(i % 251 for i in range(7 * 100))
        for offset in range(0, len(stream), 7):
            self.reframer.push(stream[offset : offset + 7])
        self.assertEqual(self.frames, [stream[0:320], stream[320:640]])
        self.assertEqual(self.reframer.pending, 60)

    def test_five_thousand_byte_write(self):
        stream = bytes(i % 253 for i in range(5000))
        self.reframer.push(stream)
        self.assertEqual(len(self.frames), 15)
        self.assertTrue(all(len(frame) == 320 for frame in self.frames))
        self.assertEqual(b"".join(self.frames), stream[:4800])
        self.reframer.push(stream[:120])
        self.assertEqual(self.frames[-1], stream[4800:] + stream[:120])

    def test_mixed_sizes_keep_the_stream_in_order(self):
        stream = bytes(i % 256 for i in range(320 * 9))
        offset = 0
        for size in (1, 319, 500, 7, 5, 1000, 8, 320, 720):
            self.reframer.push(memoryview(stream)[offset : offset + size])
            offset += size
        self.assertEqual(b"".join(self.frames), stream)
        self.assertTrue(all(type(frame) is bytes and len(frame) == 320 for frame in self.frames))

    def test_every_split_of_the_stream_gives_the_same_frames(self):
        stream = bytes(i % 249 for i in range(320 * 3 + 17))
        for first in range(len(stream) + 1):
            for second in (first, min(len(stream), first + 1), min(len(stream), first + 333)):
                frames = []
                reframer = Reframer(320, frames.append)
                for piece in (stream[:first], stream[first:second], stream[second:]):
                    reframer.push(piece)
                self.assertEqual(frames, [stream[0:320], stream[320:640], stream[640:960]], (first, second))
                self.assertEqual(reframer.pending, 17)

    def test_padding_and_clear(self):
        self.reframer.push(b"\x01\x02\x03")
        self.assertEqual(self.reframer.take_padded(0xAA), b"\x01\x02\x03" + b"\xaa" * 317)
        self.assertEqual(self.reframer.pending, 0)
        self.reframer.push(b"abc")
        self.assertEqual(self.reframer.clear(), 3)
        self.reframer.push(bytes(320))
        self.assertEqual(self.frames, [bytes(320)])


class FrameQueueTests(SynchronousTestCase):
    def setUp(self):
        self.queue = FrameQueue(8)  # high water 6, low water 2
        self.upstream = StringTransport()
        self.queue.set_producer(self.upstream)

    def test_pauses_at_high_water_resumes_at_low_water(self):
        for n in range(5):
            self.queue.push(n)
        self.assertEqual(self.upstream.producerState, "producing")
        self.queue.push(5)
        self.assertEqual(self.upstream.producerState, "paused")
        for expected in range(3):
            self.assertEqual(self.queue.pop(), expected)
        self.assertEqual(self.upstream.producerState, "paused")
        self.queue.pop()
        self.assertEqual((len(self.queue), self.upstream.producerState), (2, "producing"))

    def test_drops_oldest_when_full_and_counts(self):
        for n in range(20):
            self.queue.push(n)
        self.assertEqual(len(self.queue), 8)
        self.assertEqual(self.queue.frames_dropped, 12)
        self.assertEqual([self.queue.pop() for _ in range(8)], list(range(12, 20)))

    def test_on_drop_is_told_of_each_drop_and_only_of_drops(self):
        drops = []
        queue = FrameQueue(4, drops.append)
        for n in range(4):
            queue.push(n)
        queue.pop()
        queue.push(4)
        self.assertEqual(drops, [])  # never full: never called
        for n in range(5, 8):
            queue.push(n)
        self.assertEqual((drops, queue.frames_dropped), ([1, 1, 1], 3))
        self.assertEqual([queue.pop() for _ in range(4)], [4, 5, 6, 7])

    def test_clear_resumes(self):
        for n in range(7):
            self.queue.push(n)
        self.assertEqual(self.queue.clear(), 7)
        self.assertEqual((len(self.queue), self.upstream.producerState), (0, "producing"))

    def test_late_producer_is_paused_if_already_high(self):
        queue = FrameQueue(4)
        for n in range(3):
            queue.push(n)
        upstream = StringTransport()
        queue.set_producer(upstream)
        self.assertEqual(upstream.producerState, "paused")

    def test_capacity_must_be_positive(self):
        self.assertRaises(ValueError, FrameQueue, 0)
        self.assertRaises(ValueError, Reframer, 0, print)
