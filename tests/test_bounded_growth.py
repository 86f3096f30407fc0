"""What the daemon keeps of its calls stays bounded however many calls it has taken (issue 18).

Each test drives a few thousand calls (or the events concerned) through the real parts on a
``task.Clock`` and asserts that the structures that could grow with traffic stay within their bound:
the simulated network's history of ended parties and what they heard, the registry's released calls
(kept ``retention`` seconds), the timers left on the clock, and the memory all of it holds
(``tracemalloc``, after a garbage collection).
"""

from __future__ import annotations

import gc
import tracemalloc

from twisted.trial.unittest import SynchronousTestCase

from core.harness import Harness
from gateway.drivers import sim

#: calls placed at once, and the seconds each lasts once the echo answered
BATCH = 20
TALK = 4.5


def echo_calls(h: Harness, calls: int) -> None:
    """``calls`` inbound calls to the echo app (DID 200), ``BATCH`` at a time, each hung up by its caller
    after ``TALK`` seconds; then past the registry's retention, so that only what is kept for good is left."""
    for _ in range(calls // BATCH):
        for _ in range(BATCH):
            h.network.place_inbound("0811", "200", hang_up_after=TALK)
        h.advance(TALK + 0.5)
        h.events.clear()  # the harness's own record, not the daemon's
        h.cdrs.clear()
        h.commands.clear()
    h.advance(61.0)


class SimNetworkHistoryTests(SynchronousTestCase):
    def test_ended_parties_keep_what_they_heard_only_for_the_most_recent_few(self):
        h = Harness(audio="silence")
        echo_calls(h, 2000)
        self.assertEqual(len(h.network.history), sim.HISTORY)
        self.assertEqual(h.network.live, [])
        heard = [len(party.heard) for party in h.network.history]
        full = sim._HEARING_BYTES
        self.assertEqual(heard[-sim.HEARD_HISTORY:], [full] * sim.HEARD_HISTORY)  # the recent ones: all of it
        self.assertEqual(sum(heard), sim.HEARD_HISTORY * full)  # the older ones: nothing
        self.assertTrue(all(party._payloads is None for party in h.network.history))

    def test_a_recent_ended_party_still_tells_what_it_heard(self):
        h = Harness(audio="tone")
        leg = h.network.place_inbound("0811", "200", hang_up_after=1.0)
        h.advance(2.0)
        self.assertEqual(leg.party.state, sim.ENDED)
        self.assertTrue(leg.party.heard_tone(sim.TONE_HZ))


class RegistryRetentionTests(SynchronousTestCase):
    def test_thousands_of_calls_leave_no_call_and_no_timer_behind(self):
        h = Harness(audio="silence")
        timers_before = len(h.clock.getDelayedCalls())
        echo_calls(h, 2000)
        self.assertEqual(h.registry.calls(include_released=True), [])
        self.assertEqual(h.registry._forget_timers, {})
        self.assertLessEqual(len(h.clock.getDelayedCalls()), timers_before + 1)  # at most the media clock


class RetainedMemoryTests(SynchronousTestCase):
    def test_the_memory_kept_after_thousands_of_calls_is_small_and_flat(self):
        """The history of 200 ended parties costs about 10 KB each (their closed ports), plus the
        ``HEARD_HISTORY`` most recent ones' audio: about 3 MB in all, reached once the history is full and
        then flat (under 100 bytes per call). Before the bound each party kept up to 64 KB of audio: 15 MB."""
        h = Harness(audio="silence")
        echo_calls(h, 100)  # imports, caches and the media clock made once
        gc.collect()
        if not tracemalloc.is_tracing():
            tracemalloc.start(1)
            self.addCleanup(tracemalloc.stop)
        start = tracemalloc.get_traced_memory()[0]
        echo_calls(h, 200)  # the history fills up
        gc.collect()
        full = tracemalloc.get_traced_memory()[0]
        echo_calls(h, 600)
        gc.collect()
        end = tracemalloc.get_traced_memory()[0]
        self.assertLess(full - start, 4_000_000, f"{(full - start) / 1e6:.1f} MB kept after 300 calls")
        self.assertLess(end - full, 600 * 100, f"{(end - full) / 600:.0f} bytes per call more after 600 calls")
