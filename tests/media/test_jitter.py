"""The playout's jitter buffer: pre-buffer, no latency ratchet after a stall, bounded latency under clock drift.

Two ports bridged (the party's audio into the other leg's playout), a
simulated network delivering numbered 20 ms frames on a ``task.Clock``; each
played frame's latency is the time from when its frame was due at the source
to when it reached the wire.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.media import PCM16, FrameFeeder, MediaPorts, silence, tone
from gateway.media.playout import TRIM_WINDOW

FRAME = 0.020


def numbered(n: int) -> bytes:
    """A loud (not silent) 20 ms frame whose first two bytes say ``n``."""
    return n.to_bytes(2, "little") + b"\xff\x3f" * 159


class Bridge:
    """Leg A's party talks into leg B's playout; B's wire records (seq, time played)."""

    def __init__(self, testcase, jitter_ms=40):
        self.clock = Clock()
        self.trims = []
        self.ports = MediaPorts(queue_ms=1000, on_drop=lambda where, count: self.trims.append((where, count)),
                                jitter_ms=jitter_ms)
        self.a = self.ports.port(self.clock, PCM16, "leg-a")
        self.b = self.ports.port(self.clock, PCM16, "leg-b")
        self.played = []  # (seq, played at)
        self.b.set_wire(lambda payload: self.played.append((int.from_bytes(payload[:2], "little"),
                                                            self.clock.seconds())))
        self.a.source.connect(self.b.sink)
        testcase.addCleanup(self.close, testcase)

    def close(self, testcase):
        self.a.close()
        self.b.close()
        testcase.assertEqual(self.clock.getDelayedCalls(), [])

    def at(self, when: float) -> None:
        self.clock.advance(max(0.0, when - self.clock.seconds()))

    def run(self, frames: range, period: float = FRAME, hold: tuple[float, float] | None = None) -> None:
        """Deliver ``frames``, frame n due at ``n * period``; those due within ``hold`` arrive at its end."""
        held = []
        for n in frames:
            due = n * period
            if hold is not None and hold[0] <= due < hold[1]:
                held.append(n)
                continue
            if held:
                self.at(hold[1])
                for m in held:
                    self.a.receive(numbered(m))
                held = []
            self.at(due)
            self.a.receive(numbered(n))
        for _ in range(50):  # play out what is left, in steps (task.Clock runs a long advance's calls late)
            self.clock.advance(FRAME / 4)

    def latencies(self, period: float = FRAME, after: float = 0.0) -> list[float]:
        return [when - seq * period for seq, when in self.played if when >= after]


class RatchetTests(SynchronousTestCase):
    def test_latency_returns_to_target_within_one_second_of_a_stall(self):
        bridge = Bridge(self)
        # 2 s of audio, then the network holds 200 ms of it and delivers it at once, then 2 s more
        bridge.run(range(200), hold=(2.0, 2.2))
        before = [when - seq * FRAME for seq, when in bridge.played if when < 2.0]
        self.assertLessEqual(max(before), 0.040 + 1e-9)
        # within one second of the stall's end, latency is back within target + one frame
        settled = bridge.latencies(after=2.2 + 1.0)
        self.assertTrue(settled)
        self.assertLessEqual(max(settled), 0.040 + FRAME + 1e-9)
        trimmed = bridge.b.playout.frames_trimmed
        self.assertGreaterEqual(trimmed, 7)
        self.assertEqual(sum(count for _, count in bridge.trims), trimmed)
        self.assertEqual({where for where, _ in bridge.trims}, {"trim_oldest"})
        self.assertEqual(len(bridge.played) + trimmed, 200)

    def test_without_a_jitter_target_the_backlog_stands(self):
        """jitter_ms = 0 is the plain FIFO: the ratchet the jitter buffer removes."""
        bridge = Bridge(self, jitter_ms=0)
        bridge.run(range(200), hold=(2.0, 2.2))
        self.assertGreaterEqual(min(bridge.latencies(after=3.2)), 0.180)
        self.assertEqual(bridge.b.playout.frames_trimmed, 0)

    def test_trims_silence_first_and_never_below_target(self):
        bridge = Bridge(self)
        speech = numbered(1)
        bridge.at(1.0)
        for n in range(50):  # a burst of one second: every third frame silent
            bridge.a.receive(silence(PCM16) if n % 3 == 0 else speech)
        depths = []
        for _ in range(120):
            bridge.at(bridge.clock.seconds() + FRAME)
            depths.append(bridge.b.playout.queued)
            bridge.a.receive(speech)
        wheres = [where for where, _ in bridge.trims]
        silent_trims = wheres.count("trim_silence")
        self.assertGreaterEqual(silent_trims, 5)
        # silence went first: every trim of speech comes after the last trim of silence
        self.assertEqual(wheres, ["trim_silence"] * silent_trims + ["trim_oldest"] * (len(wheres) - silent_trims))
        silent_played = sum(1 for seq, _ in bridge.played if seq == 0)
        self.assertEqual(silent_played + silent_trims, len(range(0, 50, 3)))
        self.assertGreaterEqual(min(depths[int(TRIM_WINDOW / FRAME):]), bridge.b.playout.target - 1)
        self.assertLessEqual(depths[-1], bridge.b.playout.target + 1)


class ReactorClock(Clock):
    """A ``task.Clock`` that runs, per step, only the calls already scheduled when the step began, as a reactor
    does (a ``callLater(0)`` made by a timed call runs after the reactor's next pass over I/O, not at once)."""

    def advance(self, amount):
        self.rightNow += amount
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            if call in self.calls:
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


class OwnStallTests(SynchronousTestCase):
    def test_after_a_stall_of_the_process_the_frames_that_came_meanwhile_play_in_the_catch_up(self):
        from gateway.media.clock import media_clock

        bridge = Bridge(self, jitter_ms=20)
        clock = bridge.clock = ReactorClock()
        bridge.a = bridge.ports.port(clock, PCM16, "leg-a")
        bridge.b = bridge.ports.port(clock, PCM16, "leg-b")
        bridge.b.set_wire(lambda payload: bridge.played.append((int.from_bytes(payload[:2], "little"),
                                                                clock.seconds())))
        bridge.a.source.connect(bridge.b.sink)
        for n in range(100):  # 2 s of audio on time
            while clock.seconds() + 0.001 < n * FRAME:
                clock.advance(0.001)
            bridge.a.receive(numbered(n))
            clock.advance(0)
        clock.advance(0.001)
        # the process stalls for 200 ms: the reactor's first pass is the late timer, then I/O brings the
        # ten frames sent meanwhile, then the timer's catch-up
        clock.advance(0.2)
        for n in range(100, 110):
            bridge.a.receive(numbered(n))
        clock.advance(0)
        self.assertEqual([seq for seq, _ in bridge.played][-10:], list(range(100, 110)))
        self.assertEqual(media_clock(clock).stalls, 1)
        for n in range(110, 200):
            while clock.seconds() + 0.001 < n * FRAME:
                clock.advance(0.001)
            bridge.a.receive(numbered(n))
            clock.advance(0)
        for _ in range(100):
            clock.advance(0.001)
        self.assertEqual([seq for seq, _ in bridge.played], list(range(200)))  # none trimmed, none lost
        self.assertEqual(bridge.b.playout.frames_trimmed, 0)
        self.assertLessEqual(max(bridge.latencies(after=2.3)), 0.0025)


class PhaseTests(SynchronousTestCase):
    """The schedule meets a live source's frames: a frame does not wait most of a tick for ever."""

    def deliver(self, bridge, frames, offset):
        """Frame n arrives at ``n * FRAME + offset(n)``; the clock moves in 0.5 ms steps, so ticks run on time."""
        clock = bridge.clock
        for n in frames:
            when = n * FRAME + offset(n)
            while clock.seconds() + 0.0005 < when:
                clock.advance(0.0005)
            bridge.at(when)
            bridge.a.receive(numbered(n))
            clock.advance(0)
        for _ in range(400):
            clock.advance(0.0005)

    def test_a_schedule_anchored_on_a_late_frame_moves_to_meet_the_others(self):
        bridge = Bridge(self, jitter_ms=20)
        # the first frame is 15 ms late, so the schedule's phase is 15 ms behind every later frame
        self.deliver(bridge, range(150), lambda n: 0.015 if n == 0 else 0.0)
        self.assertGreaterEqual(max(bridge.latencies(after=0.1)[:5]), 0.014)  # at first each frame waits 15 ms
        settled = bridge.latencies(after=1.0)
        self.assertLessEqual(max(settled), 0.0015 + 1e-9)
        playout = bridge.b.playout
        self.assertEqual(([seq for seq, _ in bridge.played], playout.frames_trimmed), (list(range(150)), 0))
        self.assertEqual(playout.phase_shifts, 1)

    def test_jittery_frames_wait_no_longer_than_the_jitter_and_none_is_lost(self):
        import random

        rng = random.Random(5)
        bridge = Bridge(self, jitter_ms=20)
        offsets = [rng.uniform(0, 0.005) for _ in range(1500)]  # 30 s, each frame 0-5 ms late
        self.deliver(bridge, range(1500), offsets.__getitem__)
        settled = bridge.latencies(after=1.0)
        self.assertLessEqual(max(settled), 0.005 + 0.0015 + 1e-9)
        self.assertEqual([seq for seq, _ in bridge.played], list(range(1500)))
        self.assertEqual(bridge.b.playout.frames_trimmed, 0)


class ConferenceFeedTests(SynchronousTestCase):
    def test_a_conference_feed_is_live_its_backlog_after_a_stalled_wire_is_trimmed(self):
        from gateway.media.mixer import Conference
        from gateway.media.producers import BytesConsumer, PacedSource

        clock = Clock()
        ports = MediaPorts(queue_ms=1000, jitter_ms=20)
        a, b = ports.port(clock, PCM16, "a"), ports.port(clock, PCM16, "b")
        wire = []
        a.set_wire(lambda payload: None)
        b.set_wire(wire.append)
        conference = Conference(clock)
        conference.add(a)
        conference.add(b)
        talker = PacedSource(clock, (numbered(n) for n in range(400)), PCM16)
        talker.connect(BytesConsumer(a.receive))
        clock.pump([FRAME / 2] * 100)
        b.playout.pauseProducing()  # b's transport stops taking data for 0.6 s: the mix backs up in b's playout
        clock.pump([FRAME / 2] * 60)
        backlog = b.playout.queued
        self.assertGreater(backlog, 20)
        b.playout.resumeProducing()
        clock.pump([FRAME / 2] * 200)
        self.assertLessEqual(b.playout.queued, b.playout.target + 1)  # back near the target, not 0.6 s behind
        self.assertGreater(b.playout.frames_trimmed, backlog - 5)
        conference.stop()
        talker.disconnect()
        a.close()
        b.close()
        self.assertEqual(clock.getDelayedCalls(), [])


class PrebufferTests(SynchronousTestCase):
    def test_a_live_source_waits_for_the_target_depth_or_jitter_ms(self):
        bridge = Bridge(self)
        bridge.a.receive(numbered(0))
        bridge.clock.advance(0)
        self.assertEqual(bridge.played, [])  # one frame of a two-frame target: wait
        bridge.clock.advance(0.010)
        bridge.a.receive(numbered(1))
        bridge.clock.advance(0)
        self.assertEqual([seq for seq, _ in bridge.played], [0])  # the target is there: play
        bridge.clock.advance(0.020)
        bridge.clock.advance(0.020)  # dry: an underrun
        self.assertEqual(bridge.b.playout.underruns, 1)
        bridge.a.receive(numbered(2))  # a lone frame plays once jitter_ms has passed
        bridge.clock.advance(0.039)
        self.assertEqual(len(bridge.played), 2)
        bridge.clock.advance(0.001)
        self.assertEqual([seq for seq, _ in bridge.played], [0, 1, 2])

    def test_a_prompt_is_neither_prebuffered_nor_trimmed(self):
        clock = Clock()
        port = MediaPorts(jitter_ms=40).port(clock, PCM16, "leg")
        wire = []
        port.set_wire(wire.append)
        feeder = FrameFeeder((payload for _, payload in zip(range(150), tone(425))), PCM16)
        feeder.connect(port.sink)
        clock.advance(0)
        self.assertEqual(len(wire), 1)
        clock.pump([FRAME] * 200)
        self.assertEqual((len(wire), port.playout.frames_trimmed), (150, 0))
        port.close()
        self.assertEqual(clock.getDelayedCalls(), [])


class DriftTests(SynchronousTestCase):
    """Ten simulated minutes with a provider clock 0.5% off: latency stays bounded."""

    def test_a_fast_source_is_trimmed_and_latency_stays_bounded(self):
        bridge = Bridge(self)
        period = FRAME / 1.005
        frames = int(600 / period)
        bridge.run(range(frames), period=period)
        latencies = bridge.latencies(period)
        self.assertLessEqual(max(latencies), 0.040 + 2 * FRAME + 1e-9)
        # the surplus (0.5%, about 150 frames) is trimmed and counted; nothing else is lost
        trimmed = bridge.b.playout.frames_trimmed
        self.assertLessEqual(abs(trimmed - frames * 0.005 / 1.005), 5)
        self.assertEqual(sum(count for _, count in bridge.trims), trimmed)
        self.assertEqual(len(bridge.played) + trimmed, frames)
        self.assertEqual(bridge.b.playout.frames_dropped, 0)

    def test_a_slow_source_underruns_and_prebuffers_without_growth(self):
        bridge = Bridge(self)
        period = FRAME / 0.995
        frames = int(600 / period)
        bridge.run(range(frames), period=period)
        latencies = bridge.latencies(period)
        self.assertLessEqual(max(latencies), 0.040 + FRAME + 1e-9)
        self.assertEqual([seq for seq, _ in bridge.played], list(range(frames)))
        self.assertEqual(bridge.b.playout.frames_trimmed, 0)
        self.assertGreater(bridge.b.playout.underruns, 100)


class TrimMetricTests(SynchronousTestCase):
    def test_trims_are_counted_under_their_own_where_in_the_daemons_factory(self):
        from prometheus_client import CollectorRegistry

        from tests.media.test_metrics import exposed
        from gateway.media.metrics import counted_ports

        registry = CollectorRegistry()
        ports = counted_ports(registry, queue_ms=1000, jitter_ms=40)
        self.assertEqual(exposed(registry), {"playout": 0.0, "inbound": 0.0, "mix": 0.0})  # trims: on first use
        clock = Clock()
        a, b = ports.port(clock, PCM16, "a"), ports.port(clock, PCM16, "b")
        b.set_wire(lambda payload: None)
        a.source.connect(b.sink)
        a.receive(b"".join(numbered(n) for n in range(25)) + silence(PCM16, 100))  # 600 ms at once, silence last
        for _ in range(50):
            clock.advance(FRAME)
            a.receive(numbered(0))
        # back to the two-frame target: the 5 silent frames went first, then the oldest
        self.assertEqual((b.playout.frames_trimmed, b.playout.queued), (27, 2))
        self.assertEqual(exposed(registry), {"playout": 0.0, "inbound": 0.0, "mix": 0.0,
                                             "trim_silence": 5.0, "trim_oldest": 22.0})
        a.close()
        b.close()
        self.assertEqual(clock.getDelayedCalls(), [])
