"""The ``sip`` driver plugin: SIP trunks (see :mod:`gateway.drivers.sip`), for ``[pbx] driver = "sip"``,
``sip:<trunk>:<number>`` devices, and inbound calls from the ``[[sip.trunks]]`` of ``[sip]``."""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.core.interfaces import IDriverFactory


@implementer(IPlugin, IDriverFactory)
class SipDriverFactory:
    name = "sip"

    def build(self, ctx):
        from gateway.drivers.sip import build_driver

        return build_driver(ctx)


sip = SipDriverFactory()
