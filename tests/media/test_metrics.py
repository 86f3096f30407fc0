"""gateway_media_frames_dropped_total: every frame a port's full queue drops, counted once, in /metrics."""

import struct

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.media import PCM16, Frame, MediaPort
from gateway.media.metrics import counted_ports
from gateway.media.mixer import JITTER_FRAMES, Conference
from gateway.media.testing import FrameCollector


def exposed(registry) -> dict[str, float]:
    """where -> the counter's value, read from the /metrics text."""
    values = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("gateway_media_frames_dropped_total{"):
            labels, value = line.split(" ")
            values[labels.split('"')[1]] = float(value)
    return values


class DroppedFramesMetricTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.ports = counted_ports(self.registry, queue_ms=200)  # 10 frames each way

    def overflow(self, port, frames: int) -> None:
        """``frames`` frames each way while nothing drains the port."""
        collector = FrameCollector()
        port.source.connect(collector)
        collector.stop_reading()
        port.receive(bytes(320 * frames))
        port.sink.write(Frame(PCM16, 8000, 0, 0, False, bytes(320 * frames)))  # no wire: all of it queues
        port.source.disconnect()

    def test_every_series_is_there_before_any_drop(self):
        self.assertEqual(exposed(self.registry), {"playout": 0.0, "inbound": 0.0, "mix": 0.0})

    def test_drops_of_every_port_are_counted_once_and_stay_counted_after_close(self):
        first = self.ports.port(self.clock, PCM16, "leg-1")
        second = self.ports.port(self.clock, PCM16, "leg-2")
        self.overflow(first, 25)
        self.overflow(second, 13)
        self.assertEqual((first.playout.frames_dropped, second.playout.frames_dropped), (15, 3))
        expected = {"playout": 18.0, "inbound": float(first.source.frames_dropped + second.source.frames_dropped),
                    "mix": 0.0}
        self.assertEqual(expected["inbound"], 18.0)
        self.assertEqual(exposed(self.registry), expected)
        first.close()  # the call ends: nothing is added, nothing is lost
        second.close()
        self.assertEqual(exposed(self.registry), expected)

    def test_a_port_moved_to_another_consumer_keeps_counting_once(self):
        """A transferred leg keeps its port; its source is reconnected to the new call's media."""
        port = self.ports.port(self.clock, PCM16, "leg-1")
        self.addCleanup(port.close)
        self.overflow(port, 12)
        self.overflow(port, 30)
        self.assertEqual((port.source.frames_dropped, port.playout.frames_dropped), (2 + 20, 2 + 30))
        self.assertEqual(exposed(self.registry), {"inbound": 22.0, "playout": 32.0, "mix": 0.0})

    def test_a_second_factory_on_the_same_registry_shares_the_counter(self):
        again = counted_ports(self.registry, queue_ms=200)
        port = again.port(self.clock, PCM16)
        self.addCleanup(port.close)
        self.overflow(port, 11)
        self.assertEqual(exposed(self.registry), {"playout": 1.0, "inbound": 1.0, "mix": 0.0})


def level(value: int) -> bytes:
    """One pcm16 frame whose every sample is ``value``."""
    return struct.pack("<h", value) * 160


class ConferenceDropsTests(SynchronousTestCase):
    """A party's queue into the mixer reports its drops to the party port's hook, as ``mix``."""

    def setUp(self):
        self.clock = Clock()
        self.registry = CollectorRegistry()
        ports = counted_ports(self.registry, queue_ms=200)  # 10 frames each way
        self.a, self.b = ports.port(self.clock, PCM16, "a"), ports.port(self.clock, PCM16, "b")
        self.heard_by_b = []
        self.b.set_wire(self.heard_by_b.append)
        self.conference = Conference(self.clock)
        for port in (self.a, self.b):
            self.conference.add(port)
            self.addCleanup(port.close)
        self.addCleanup(self.conference.stop)

    def test_a_flooding_party_is_counted_once_where_its_frames_are_dropped(self):
        """The mixer pauses a's source at its high water, so a's port queues and drops the rest: inbound."""
        self.a.receive(bytes(320 * 25))  # 3 wait for the mixer, 10 in a's port, 12 dropped
        self.assertEqual(self.a.source.frames_dropped, 12)
        self.assertEqual(exposed(self.registry), {"playout": 0.0, "inbound": 12.0, "mix": 0.0})
        self.clock.pump([0.02] * 20)  # the mixer drains it all: nothing more is dropped
        self.assertEqual(len(self.heard_by_b), 13)
        self.assertEqual(exposed(self.registry), {"playout": 0.0, "inbound": 12.0, "mix": 0.0})

    def test_the_mixer_queue_overflowing_counts_exactly_its_drops_as_mix(self):
        """A source that ignores being paused overflows the mixer's queue: the oldest frames go, counted."""
        party = self.a.source.consumer  # the mixer's consumer of a's frames
        for value in range(1, 11):
            party.write(Frame(PCM16, 8000, value, 160 * value, False, level(value)))
        self.assertEqual(exposed(self.registry), {"playout": 0.0, "inbound": 0.0, "mix": 10.0 - JITTER_FRAMES})
        self.clock.pump([0.02] * 5)
        self.assertEqual([set(struct.unpack("<160h", pcm)) for pcm in self.heard_by_b], [{8}, {9}, {10}])
        self.assertEqual(exposed(self.registry)["mix"], 10.0 - JITTER_FRAMES)

    def test_a_port_without_a_hook_drops_in_the_mixer_unreported(self):
        plain = MediaPort(self.clock, PCM16, "plain")
        self.addCleanup(plain.close)
        self.conference.add(plain)
        party = plain.source.consumer
        for _ in range(JITTER_FRAMES + 2):
            party.write(Frame(PCM16, 8000, 0, 0, False, level(1)))
        self.assertEqual(party.queue.frames_dropped, 2)
        self.assertEqual(exposed(self.registry), {"playout": 0.0, "inbound": 0.0, "mix": 0.0})
