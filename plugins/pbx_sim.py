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

        return SimNetwork(ctx.reactor, ctx.config.pbx.sim, ports=ctx.media_ports)  # wired to the registry later


sim = SimDriverFactory()
