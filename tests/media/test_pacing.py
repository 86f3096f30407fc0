"""Deadline pacing: no drift over 10 simulated minutes, idle stop, fresh restart, stall catch-up."""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.media.pacing import Pacer


class PacerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.times = []
        self.pacer = Pacer(self.clock, self.tick)
        self.limit = None

    def tick(self):
        self.times.append(self.clock.seconds())
        return self.limit is None or len(self.times) < self.limit

    def test_ten_minutes_irregular_steps_no_drift(self):
        rng = random.Random(7)
        self.pacer.start()
        while self.clock.seconds() < 600:
            self.clock.advance(rng.uniform(0.001, 0.097))
            expected = int(self.clock.seconds() / 0.020) + 1  # tick 0 is at t=0
            self.assertLessEqual(abs(len(self.times) - expected), 1)
        # every tick n ran at the first clock step at or after its deadline n * 20 ms
        lateness = [t - n * 0.020 for n, t in enumerate(self.times)]
        self.assertGreaterEqual(min(lateness), -1e-9)
        self.assertLess(max(lateness), 0.097 + 1e-9)

    def test_stops_when_tick_says_so_and_restarts_fresh(self):
        self.limit = 3
        self.pacer.start()
        self.clock.advance(1)
        self.assertEqual(self.times, [1.0, 1.0, 1.0])  # one advance: all due ticks ran
        self.assertFalse(self.pacer.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(0.013)
        self.limit = 6
        self.pacer.start()
        self.clock.pump([0, 0.0201, 0.0201])
        # anchored at the restart, not on the old schedule's grid
        self.assertEqual(len(self.times), 6)
        for n, t in enumerate(self.times[3:]):
            self.assertAlmostEqual(t, 1.013 + n * 0.0201)

    def test_stall_catches_up_then_keeps_the_grid(self):
        self.pacer.start()
        self.clock.advance(0)
        self.clock.advance(0.1)  # a stalled reactor: four deadlines passed
        self.assertEqual(len(self.times), 6)
        self.clock.advance(0.019)
        self.assertEqual(len(self.times), 6)
        self.clock.advance(0.001)
        self.assertEqual(len(self.times), 7)

    def test_stop_inside_tick_and_exceptions(self):
        def failing():
            raise ZeroDivisionError()

        pacer = Pacer(self.clock, failing, name="broken")
        pacer.start()
        self.clock.advance(0)
        self.assertFalse(pacer.running)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

        def stopping():
            self.times.append(None)
            stopper.stop()
            return True

        stopper = Pacer(self.clock, stopping)
        stopper.start()
        self.clock.advance(1)
        self.assertEqual((self.times, stopper.running, self.clock.getDelayedCalls()), ([None], False, []))
