"""The ``optimaccs`` driver plugin: calls placed through the provider's outbound API
(see :mod:`gateway.drivers.optimaccs_out`), for ``[pbx] driver = "optimaccs"`` and ``optimaccs:<number>`` devices."""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.core.interfaces import IDriverFactory


@implementer(IPlugin, IDriverFactory)
class OptimaccsDriverFactory:
    name = "optimaccs"

    def build(self, ctx):
        from gateway.drivers.optimaccs_out import build_driver

        return build_driver(ctx)


optimaccs = OptimaccsDriverFactory()
