"""The one media clock: one timer for every schedule, any phase, no drift, nothing left scheduled."""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.media import MediaPort
from gateway.media.clock import media_clock
from gateway.media.codecs import PCM16, frame_size
from gateway.media.pacing import Pacer
from gateway.media.producers import BytesConsumer, PacedSource


class MediaClockTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.media = media_clock(self.clock)
        self.log = []
        self.by_name = {}

    def pacer(self, name, limit=None):
        count = [0]
        times = self.by_name[name] = []

        def tick():
            count[0] += 1
            self.log.append((name, round(self.clock.seconds(), 6)))
            times.append(self.clock.seconds())
            return limit is None or count[0] < limit

        return Pacer(self.clock, tick, name=name)

    def test_one_clock_per_reactor(self):
        self.assertIs(media_clock(self.clock), self.media)
        self.assertIsNot(media_clock(Clock()), self.media)

    def test_many_schedules_in_any_phase_hold_one_timer_and_keep_their_own_grids(self):
        rng = random.Random(3)
        pacers = []
        for index in range(200):
            self.clock.advance(rng.uniform(0, 0.0013))  # joining in every phase of the 20 ms
            pacer = self.pacer(index)
            pacer.start()
            pacers.append((pacer, self.clock.seconds()))
            self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)  # the last one's first tick
        for times in self.by_name.values():
            times.clear()
        for _ in range(3000):  # one simulated minute in 20 ms steps
            self.clock.advance(0.020)
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        # every schedule ticked once per deadline of its own grid (anchor + n * 20 ms), never early
        for index, (_, anchor) in enumerate(pacers):
            steps = [int((t - anchor) / 0.020 + 1e-6) for t in self.by_name[index]]
            self.assertGreaterEqual(len(steps), 2999)
            self.assertEqual(steps, list(range(steps[0], steps[0] + len(steps))), index)
        # far fewer firings than ticks: legs due together tick in one batch
        self.assertLess(self.media.firings * 10, self.media.ticks)

    def test_no_drift_over_ten_minutes_of_irregular_steps(self):
        rng = random.Random(11)
        a, b = self.pacer("a"), self.pacer("b")
        a.start()
        self.clock.advance(0.0071)
        b.start()
        while self.clock.seconds() < 600:
            self.clock.advance(rng.uniform(0.0005, 0.05))
        for name, anchor in (("a", 0.0), ("b", 0.0071)):
            times = self.by_name[name]
            expected = int((self.clock.seconds() - anchor) / 0.020) + 1
            self.assertLessEqual(abs(len(times) - expected), 1)
            lateness = [t - (anchor + n * 0.020) for n, t in enumerate(times)]
            self.assertGreaterEqual(min(lateness), -1e-6)
            self.assertLess(max(lateness), 0.05 + 1e-6)

    def test_nothing_is_scheduled_once_every_schedule_ends(self):
        a, b = self.pacer("a", limit=3), self.pacer("b")
        a.start()
        b.start()
        self.clock.advance(0.1)
        self.assertFalse(a.running)
        self.assertTrue(self.media.scheduled)
        b.stop()
        self.assertEqual((self.clock.getDelayedCalls(), self.media.beats, self.media.scheduled), ([], 0, False))
        b.start()  # and it starts again from nothing
        self.clock.advance(0)
        self.assertEqual(self.log[-1], ("b", 0.1))

    def test_a_schedule_restarted_inside_its_tick_starts_afresh_from_the_next_firing(self):
        fired = []

        def tick():
            fired.append(self.clock.seconds())
            if len(fired) == 2:
                pacer.stop()
                pacer.start()  # a fresh anchor at now: due in the next firing, then every 20 ms
            return True

        pacer = Pacer(self.clock, tick)
        pacer.start()
        self.clock.advance(0)
        self.clock.advance(0.015)
        self.assertEqual(fired, [0.0])
        self.clock.advance(0.005)
        self.assertEqual(fired, [0.0, 0.020, 0.020])  # tick 2 restarted it: its first tick ran at once after
        self.assertEqual(self.media.beats, 1)
        self.clock.advance(0.019)
        self.assertEqual(len(fired), 3)
        self.clock.advance(0.001)
        self.assertEqual(len(fired), 4)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_a_stall_catches_up_then_keeps_the_grid(self):
        a = self.pacer("a")
        a.start()
        self.clock.advance(0)
        self.clock.advance(0.2)  # a stalled reactor: ten deadlines passed
        self.assertEqual(len(self.log), 11)
        self.clock.advance(0.019)
        self.assertEqual(len(self.log), 11)
        self.clock.advance(0.001)
        self.assertEqual(len(self.log), 12)

    def test_a_failing_tick_stops_only_its_schedule(self):
        def failing():
            raise ZeroDivisionError()

        broken = Pacer(self.clock, failing, name="broken")
        good = self.pacer("good")
        broken.start()
        good.start()
        self.clock.advance(0.04)
        self.assertFalse(broken.running)
        self.assertTrue(good.running)
        self.assertEqual(len(self.log), 3)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class CallsOnTheMediaClockTests(SynchronousTestCase):
    """Legs of whole calls: their playouts and paced sources share the clock, and leave nothing behind."""

    def test_a_hundred_echo_legs_run_on_one_timer_and_leave_nothing_scheduled(self):
        clock = Clock()
        size = frame_size(PCM16)
        ports, sources, heard = [], [], []
        for index in range(100):
            clock.advance(0.00017 * index)  # every leg in its own phase
            port = MediaPort(clock, PCM16, name=f"leg{index}", jitter_ms=20)
            port.source.connect(port.sink)  # the echo app: the party hears itself
            received = []
            port.set_wire(received.append)
            party = PacedSource(clock, [bytes([index % 256]) * size] * 100, PCM16)
            party.connect(BytesConsumer(port.receive))
            ports.append(port)
            sources.append(party)
            heard.append(received)
        for _ in range(300):
            clock.advance(0.010)
            self.assertLessEqual(len(clock.getDelayedCalls()), 1)
        for index, received in enumerate(heard):
            self.assertEqual(len(received), 100, index)
            self.assertEqual(set(received), {bytes([index % 256]) * size})
        for port in ports:
            port.close()
        clock.advance(1)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(media_clock(clock).beats, 0)
