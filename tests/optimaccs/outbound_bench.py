"""A test bench for the outbound driver: the fake provider API (REST through StubTreq, the media
WebSocket over iosim) and a call registry with the ``sim`` and ``optimaccs`` drivers, on one task.Clock."""

from __future__ import annotations

import txaio
from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.test import iosim

from gateway.config import Extension
from gateway.confschema import Secret
from gateway.context import Component
from gateway.core.mediactl import MediaController
from gateway.core.registry import Registry
from gateway.core.routing import Router
from gateway.drivers.config import OptimaccsConfig, OptimaccsOutboundConfig, SimNetworkConfig
from gateway.drivers.optimaccs_out import OutboundDriver
from gateway.drivers.sim import SimNetwork
from gateway.media import IMediaApp
from gateway.pluginload import plugins
from gateway.sim.optimaccs import ApiSettings, FakeProviderApi

TOKEN = "t0ken"
#: the extensions: a simulated phone, and an operator whose own phone is reached through the provider
EXTENSIONS = [Extension(id="1001", device="sim"), Extension(id="2001", device="optimaccs:+62 811 0000 2001"),
              Extension(id="1002", device="sim")]


class Bench:
    def __init__(self, case, settings: ApiSettings = ApiSettings(token=TOKEN), token: str = TOKEN,
                 outbound: dict | None = None, **options) -> None:
        self.clock = task.Clock()
        previous = txaio.config.loop
        txaio.config.loop = self.clock
        case.addCleanup(setattr, txaio.config, "loop", previous)
        self.provider = FakeProviderApi(self.clock, settings)
        self.site = self.provider.site(self.clock)
        self.site.reactor = self.clock  # the HTTP channels' idle timers
        self.config = OptimaccsConfig(
            ping_interval=0.0,
            outbound=OptimaccsOutboundConfig(**{"api_url": "http://provider.test", "token": Secret(token),
                                                "ring_timeout": 30, **(outbound or {})}),
            **options,
        )
        self.readiness = Component("optimaccs:api")
        self.connections = []
        self.metrics = CollectorRegistry()
        self.driver = OutboundDriver(self.clock, self.config, http=StubTreq(self.site.resource),
                                     connect=self._connect, readiness=self.readiness, metrics=self.metrics)
        self.network = SimNetwork(self.clock, SimNetworkConfig(audio="tone", phone_answer_delay=1.0))
        apps = {app.name: app for app in plugins(IMediaApp)}
        self.cdrs, self.provider_cdrs, self.events = [], [], []
        self.registry = Registry(
            self.clock, {"sim": self.network, "optimaccs": self.driver}, extensions=EXTENSIONS,
            router=Router([], apps), media=MediaController(self.clock, apps), pbx_driver="optimaccs",
            cdr_sink=lambda cdr: defer.succeed(self.cdrs.append(cdr)),
            provider_cdr_sink=lambda *record: defer.succeed(self.provider_cdrs.append(record)),
        )
        self.network.wire(self.registry)
        self.registry.subscribe(lambda event, call: self.events.append(event))
        self.driver.start()
        self._pumps = []

    def _connect(self, url, factory):
        """The media WebSocket over iosim; the handshake runs on the next flush."""
        self.connections.append(url)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: self.site.buildProtocol(None), lambda: factory.buildProtocol(None), clock=self.clock, greet=False)
        self._pumps.append(pump)
        self.provider_side = pump.serverIO
        return defer.succeed(client)

    def flush(self) -> None:
        for pump in self._pumps:
            pump.flush()

    def run(self, seconds: float, step: float = 0.01) -> None:
        self.flush()
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.flush()

    def metric(self, name: str, **labels) -> float:
        return self.metrics.get_sample_value(name, labels) or 0.0

    def of(self, cls, call_id=None) -> list:
        return [e for e in self.events if isinstance(e, cls) and (call_id is None or e.call_id == call_id)]

    def session(self, index: int = -1):
        return list(self.provider.sessions.values())[index]

    def talking(self, number: str = "6281234567", extension: str = "1001") -> str:
        """A click-to-dial from ``extension`` to ``number`` that is talking; its call id."""
        call_id = self.registry.originate(extension, number).result.call_id
        self.run(2.5)
        assert self.registry.call(call_id).state == "TALKING", self.registry.call(call_id)
        return call_id

    @property
    def leg(self):
        (leg,) = self.driver.legs
        return leg

