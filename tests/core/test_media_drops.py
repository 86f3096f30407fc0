"""Dropped media frames in the daemon: every leg's port comes from ctx.media_ports and is counted once."""

import pathlib

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import loads
from gateway.core import events as ev
from gateway.media import PCM16, Frame
from gateway.media.metrics import counted_ports
from gateway.tap import build

from .harness import Harness


def counted(registry) -> dict[str, float]:
    """where -> gateway_media_frames_dropped_total, as /metrics shows it."""
    values = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("gateway_media_frames_dropped_total{"):
            labels, value = line.split(" ")
            values[labels.split('"')[1]] = float(value)
    return values


def burst(port, frames: int) -> None:
    """``frames`` frames written toward the party at once: the playout queue must drop."""
    port.sink.write(Frame(PCM16, 8000, 0, 0, False, bytes(320 * frames)))


class TransferredLegTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.metrics = CollectorRegistry()
        self.h.network.ports = counted_ports(self.metrics, queue_ms=200)
        self.call_id = self.h.talking_call()
        self.remote = self.h.network.party("5551234")

    def dropped_by_ports(self) -> dict[str, float]:
        ports = [party.leg.port for party in self.h.network.parties()]
        return {"playout": float(sum(p.playout.frames_dropped for p in ports)),
                "inbound": float(sum(p.source.frames_dropped for p in ports)), "mix": 0.0}

    def test_every_drop_is_counted_once_before_and_after_a_transfer_and_after_the_end(self):
        port = self.remote.leg.port
        burst(port, 40)
        self.h.advance(0.5)
        before = port.playout.frames_dropped
        self.assertGreaterEqual(before, 30)
        self.assertEqual(counted(self.metrics), self.dropped_by_ports())

        self.successResultOf(self.h.registry.transfer(self.call_id, "5552222"))
        self.h.advance(2.0)
        [created] = self.h.of(ev.CallCreated)[1:]
        self.assertEqual(self.h.state(created.call_id), "TALKING")
        self.assertIs(self.remote.leg.port, port)  # the transferred leg kept its port
        burst(port, 40)
        self.h.advance(0.5)
        self.assertGreaterEqual(port.playout.frames_dropped, before + 30)
        self.assertEqual(counted(self.metrics), self.dropped_by_ports())

        self.remote.hang_up()
        self.h.advance(1.0)
        self.assertEqual(self.h.network.live, [])
        self.assertEqual(counted(self.metrics), self.dropped_by_ports())


class DaemonTests(SynchronousTestCase):
    def test_the_daemon_makes_ports_of_the_configured_size_counted_in_its_metrics(self):
        tmp = pathlib.Path(self.mktemp())
        config = loads(f'[gateway]\nstate_dir = "{tmp}/var"\n[store]\nurl = "sqlite:{tmp}/cdr.sqlite"\n'
                       '[media]\nqueue_ms = 300\n[[extensions]]\nid = "1001"\n', "test.toml")
        root = build(config, MemoryReactorClock())
        ctx = root.ctx
        self.assertEqual(ctx.media_ports.queue_ms, 300)
        network = root.core_service.drivers["sim"]
        self.assertIs(network.ports, ctx.media_ports)
        leg = network.dial("5551234", None)
        burst(leg.port, 20)  # 15 frames fit
        self.assertEqual(leg.port.playout.frames_dropped, 5)
        self.assertEqual(counted(ctx.metrics), {"playout": 5.0, "inbound": 0.0, "mix": 0.0})
        self.successResultOf(network.stop())
        self.assertTrue(leg.port.closed)
