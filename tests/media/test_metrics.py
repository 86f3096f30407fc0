"""gateway_media_frames_dropped_total: every frame a port's full queue drops, counted once, in /metrics."""

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.media import PCM16, Frame
from gateway.media.metrics import counted_ports
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

    def test_both_series_are_there_before_any_drop(self):
        self.assertEqual(exposed(self.registry), {"playout": 0.0, "inbound": 0.0})

    def test_drops_of_every_port_are_counted_once_and_stay_counted_after_close(self):
        first = self.ports.port(self.clock, PCM16, "leg-1")
        second = self.ports.port(self.clock, PCM16, "leg-2")
        self.overflow(first, 25)
        self.overflow(second, 13)
        self.assertEqual((first.playout.frames_dropped, second.playout.frames_dropped), (15, 3))
        expected = {"playout": 18.0, "inbound": float(first.source.frames_dropped + second.source.frames_dropped)}
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
        self.assertEqual(exposed(self.registry), {"inbound": 22.0, "playout": 32.0})

    def test_a_second_factory_on_the_same_registry_shares_the_counter(self):
        again = counted_ports(self.registry, queue_ms=200)
        port = again.port(self.clock, PCM16)
        self.addCleanup(port.close)
        self.overflow(port, 11)
        self.assertEqual(exposed(self.registry), {"playout": 1.0, "inbound": 1.0})
