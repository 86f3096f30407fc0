"""The bundled SMS transports as ``twisted.plugin`` plugins: ``sim`` and ``http``.

Found with ``gateway.pluginload.find_plugin(ISmsTransportFactory, name)``; ``[chat] transport``
names one. What each does is in :mod:`gateway.chat.transports`.
"""

from __future__ import annotations

import typing

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.chat import transports
from gateway.chat.interfaces import ISmsTransportFactory


@implementer(IPlugin, ISmsTransportFactory)
@attrs.frozen
class SmsTransportPlugin:
    """An SMS transport: a name, a line of description, and the function that builds it."""

    name: str
    description: str
    _build: typing.Callable

    def build(self, ctx, receive):
        return self._build(ctx, receive)


sim = SmsTransportPlugin("sim", "A simulated phone network: keeps sent SMS for the admin API.", transports.build_sim)
http = SmsTransportPlugin("http", "A webhook: POSTs each SMS as JSON to [chat.http] url.", transports.build_http)
