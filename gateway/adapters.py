"""The adapter plug point: every protocol adapter is a ``twisted.plugin`` plugin.

An adapter plugin provides ``twisted.plugin.IPlugin`` and :class:`IAdapter`.
It declares the top-level configuration table it reads and the attrs section
class that table is validated into (by :func:`gateway.confschema.structure`,
so a bad key is an error naming ``<section>.<key>``), and it builds the
adapter's service from the daemon's :class:`~gateway.context.Context` and its
validated section. The four bundled adapters (``optimaccs``, ``patriot``,
``cti``, ``chat``) are in ``plugins/adapters.py``; an operator adds one by
putting a module in a ``[gateway] plugin_dirs`` directory::

    @implementer(IPlugin, IAdapter)
    class Hello:
        name = section = "hello"
        config_class = HelloConfig          # an @gateway.confschema.section class

        def describe(self, config):
            return f"on (port {config.port})"

        def make_service(self, ctx, config):
            ...                             # ctx.registry is the core's ICallControl
            return service

The configuration accepts a top-level table only when it is a core section
(``gateway``, ``admin``, ``store``, ``pbx``, ``media``, ``extensions``,
``routes``) or some adapter plugin declares it; a section left out, or with
``enabled = false``, leaves its adapter off. The start-up ``adapters:`` line,
``/api/status`` and ``gatewayctl status`` list every adapter plugin with
:func:`adapter_states`.
"""

from __future__ import annotations

import typing

from zope.interface import Attribute, Interface

from gateway.confschema import ConfigError

if typing.TYPE_CHECKING:  # pragma: no cover
    from twisted.application.service import IService

    from gateway.config import Config
    from gateway.context import Context

__all__ = ["CORE_SECTIONS", "IAdapter", "adapter_plugins", "adapter_states", "enabled"]

#: the top-level tables of the gateway itself; every other one belongs to an adapter plugin
CORE_SECTIONS = ("gateway", "admin", "store", "pbx", "media", "extensions", "routes", "cluster", "sip")


class IAdapter(Interface):
    """A protocol adapter: its configuration section and its service factory."""

    name = Attribute("The adapter's name, as the start-up 'adapters:' line and /api/status say it.")
    section = Attribute("The top-level configuration table it reads ([section]), not a core section's name.")
    config_class = Attribute(
        "The attrs section class (gateway.confschema.section) the table is validated into. A section "
        "present is on unless it has enabled = false; extension_references() (key path, extension id) "
        "pairs, if it has that method, are checked against [[extensions]]."
    )

    def describe(config: typing.Any) -> str:
        """What runs for the enabled section ``config``: ``"on"``, or ``"on (detail)"``."""

    def make_service(ctx: Context, config: typing.Any) -> IService:
        """Build the adapter's ``IService`` from the daemon's Context (``ctx.registry``: the core's
        ICallControl; ``ctx.listen``, ``ctx.readiness``, ``ctx.status``, ``ctx.api``...) and its
        validated, enabled section ``config``. A problem found now is a ConfigError naming the key."""


def adapter_plugins() -> list[IAdapter]:
    """Every adapter plugin (bundled first, then those of ``[gateway] plugin_dirs``); a ConfigError
    when two declare the same section or name, or one declares a core section."""
    from gateway.pluginload import plugins

    found: list[IAdapter] = []
    sections: dict[str, IAdapter] = {}
    names: dict[str, IAdapter] = {}
    adapter: IAdapter
    for adapter in plugins(IAdapter):
        if adapter.section in CORE_SECTIONS:
            raise ConfigError("gateway.plugin_dirs",
                              f"adapter plugin {adapter.name!r} declares the core section [{adapter.section}]")
        for kind, seen, key in (("section", sections, adapter.section), ("name", names, adapter.name)):
            other = seen.get(key)
            if other is not None and other is not adapter:
                raise ConfigError("gateway.plugin_dirs", f"adapter plugins {_origin(other)} and "
                                                         f"{_origin(adapter)} both declare the {kind} {key!r}")
            seen[key] = adapter
        found.append(adapter)
    return found


def _origin(adapter: IAdapter) -> str:
    return f"{adapter.name!r} ({type(adapter).__module__})"


def enabled(config: object) -> bool:
    """A section present is on unless it says ``enabled = false``."""
    return config is not None and bool(getattr(config, "enabled", True))


def adapter_states(config: Config, adapters: typing.Sequence[IAdapter] | None = None) -> dict[str, str]:
    """Adapter name -> ``"on"`` (with what runs) or ``"off (why)"``, for every adapter plugin: the
    start-up log, ``/api/status`` and ``gatewayctl status`` say it."""
    states = {}
    for adapter in adapter_plugins() if adapters is None else adapters:
        section = config.adapter_section(adapter.section)
        if section is None:
            states[adapter.name] = f"off (no [{adapter.section}] section)"
        elif not enabled(section):
            states[adapter.name] = "off (enabled = false)"
        else:
            states[adapter.name] = adapter.describe(section)
    return states


def make_services(ctx: Context, adapters: typing.Sequence[IAdapter]) -> list[IService]:
    """The service of every enabled adapter, in plugin order."""
    services = []
    for adapter in adapters:
        section = ctx.config.adapter_section(adapter.section)
        if enabled(section):
            services.append(adapter.make_service(ctx, section))
    return services
