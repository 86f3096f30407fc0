"""A test bench for the inbound server: the real server and call registry on one task.Clock, and the
OptimaCCS provider simulator connected to it over iosim (no sockets, no real time)."""

from __future__ import annotations

import txaio
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.test import iosim

from core.harness import Harness
from gateway.config import Route
from gateway.drivers.config import OptimaccsConfig
from gateway.drivers.optimaccs import InboundServer, _Metrics
from gateway.sim.optimaccs import CallScript, InboundCall, provider_factory

ECHO_DID, EXTENSION_DID, MANUAL_DID = "200", "100", "103"
#: the echo DID of the corpus (tests/corpus/optimaccs_inbound.json) and of its replay against the daemon
CORPUS_DID = "0210000200"
ROUTES = [
    Route(did=ECHO_DID, to="app:echo"),
    Route(did=CORPUS_DID, to="app:echo"),
    Route(did=EXTENSION_DID, to="extension:1001"),
    Route(did=MANUAL_DID, to="extension:1003"),
]


class RecordingTransport(iosim.FakeTransport):
    """The server's side of a connection, counting how often it was told to stop and resume reading."""

    pauses = resumes = 0

    def pauseProducing(self):
        self.pauses += 1

    def resumeProducing(self):
        self.resumes += 1


class Bench:
    """``connect()`` a simulated provider call; ``run(seconds)`` lets time pass with data flowing."""

    def __init__(self, case, **options) -> None:
        self.h = Harness(routes=ROUTES, audio="tone")
        self.clock = self.h.clock
        previous = txaio.config.loop
        txaio.config.loop = self.clock  # Autobahn's timers (handshake, pings, close) on the same clock
        case.addCleanup(setattr, txaio.config, "loop", previous)
        self.config = OptimaccsConfig(**{"ping_interval": 0.0, **options})
        self.metrics_registry = CollectorRegistry()
        self.server = InboundServer(self.clock, self.config, self.h.registry, _Metrics(self.metrics_registry))
        self.factory = self.server.factory(self.clock)
        self._pumps: list = []
        self._next_port = 40000

    def connect(self, script: CallScript = CallScript(did=ECHO_DID), *, query: str = "", headers=None,
                host: str = "127.0.0.1"):
        """A provider call over iosim: (the simulator's InboundCall, the server protocol)."""
        call = InboundCall(script, self.clock)
        client_factory = provider_factory(self.clock, f"ws://127.0.0.1:4143/{query}", call)
        if headers:
            client_factory.headers = headers
        self._next_port += 1
        peer = IPv4Address("TCP", host, self._next_port)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: self.factory.buildProtocol(peer),
            lambda: client_factory.buildProtocol(None),
            serverTransportFactory=lambda protocol: RecordingTransport(protocol, True, peerAddress=peer),
            clock=self.clock,
        )
        self._pumps.append(pump)
        return call, server

    def flush(self) -> None:
        for pump in self._pumps:
            pump.flush()

    def run(self, seconds: float, step: float = 0.01) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.flush()

    def metric(self, name: str, **labels) -> float:
        return self.metrics_registry.get_sample_value(name, labels) or 0.0

    def ignored(self, reason: str) -> float:
        """gateway_ignored_messages_total{adapter="optimaccs",reason}."""
        return self.metric("gateway_ignored_messages_total", adapter="optimaccs", reason=reason)

    def call_of(self, sim_call):
        """The registry's snapshot of the call the simulator placed."""
        (found,) = [c for c in self.h.registry.calls(include_released=True)
                    if c.attributes.get("session_id") == sim_call.session_id]
        return found
