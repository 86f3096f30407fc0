"""The ``sim`` driver plugin: the simulated phone network (see :mod:`gateway.drivers.sim`)."""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.core.interfaces import IDriverFactory


@implementer(IPlugin, IDriverFactory)
class SimDriverFactory:
    name = "sim"

    def build(self, ctx):
        from gateway.drivers.sim import SimNetwork

        return SimNetwork(ctx.reactor, ctx.config.pbx.sim, registry=lambda: ctx.registry, ports=ctx.media_ports)


sim = SimDriverFactory()
