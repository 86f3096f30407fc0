"""The bundled protocol adapters as ``twisted.plugin`` plugins: optimaccs, patriot, cti, chat.

Found with ``gateway.adapters.adapter_plugins()`` (``getPlugins(IAdapter, gateway.plugins)``),
in this order. Each declares its configuration section and section class; its
service factory (``make_service(ctx, config)`` in its room) is imported only
when the adapter is enabled, so loading the configuration imports no adapter.
"""

from __future__ import annotations

import importlib
import typing

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.adapters import IAdapter
from gateway.chat.config import ChatConfig
from gateway.cti.config import CtiConfig
from gateway.drivers.config import OptimaccsConfig
from gateway.patriot.config import PatriotConfig


def _on(config) -> str:
    return "on"


def _patriot(config: PatriotConfig) -> str:
    bridge = config.bridge is not None and config.bridge.enabled
    links = len(config.desktop)
    return f"on (bridge {'on' if bridge else 'off'}, {links} desktop link{'' if links == 1 else 's'})"


@implementer(IPlugin, IAdapter)
@attrs.frozen
class BundledAdapter:
    """An adapter of this package: its section is named after it."""

    name: str
    config_class: type
    #: "module:function" of ``make_service(ctx, config)``
    factory: str
    _describe: typing.Callable[[typing.Any], str] = _on

    @property
    def section(self) -> str:
        return self.name

    def describe(self, config) -> str:
        return self._describe(config)

    def make_service(self, ctx, config):
        module, _, function = self.factory.partition(":")
        return getattr(importlib.import_module(module), function)(ctx, config)


optimaccs = BundledAdapter("optimaccs", OptimaccsConfig, "gateway.drivers.optimaccs:make_service")
patriot = BundledAdapter("patriot", PatriotConfig, "gateway.patriot.service:make_service", _patriot)
cti = BundledAdapter("cti", CtiConfig, "gateway.cti.service:make_service")
chat = BundledAdapter("chat", ChatConfig, "gateway.chat.service:make_service")
