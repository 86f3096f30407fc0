"""Assembly of the call core into the daemon: drivers from plugins, routing, media, the registry, its API and metrics.

``gateway.tap.build`` assembles the core in three explicit steps, once the
store and the admin API router exist (:func:`make_service` runs the same
three, for tests):

1. :func:`build_core` builds every driver the configuration names (``[pbx]
   driver`` and the driver of every extension's device) from
   :class:`IDriverFactory` plugins, the router (refusing routes to unknown
   media apps), the media controller and the
   :class:`~gateway.core.registry.Registry` over them, writing CDRs to
   ``ctx.store``. Nothing is connected to the registry yet.
2. :meth:`CoreService.wire` closes the loops: each driver that delivers
   inbound calls (:class:`~gateway.core.interfaces.IInboundDriver`) and the
   media controller are handed the registry, once.
3. :func:`publish` makes the registry ``ctx.registry`` (the adapters'
   ``ICallControl``), adds the calls API to ``ctx.api`` and the registry to
   ``ctx.status``.

The returned service starts the drivers, and on stop ends live calls within
``[gateway] shutdown_grace`` seconds before it stops them.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from gateway.admin.calls import register_calls_api
from gateway.confschema import ConfigError
from gateway.core.interfaces import IDriverFactory, IInboundDriver
from gateway.core.mediactl import MediaController
from gateway.core.metrics import CoreMetrics
from gateway.core.registry import Registry
from gateway.core.routing import Router
from gateway.drivers.sim import SimNetwork
from gateway.media import IMediaApp
from gateway.pluginload import plugins

__all__ = ["CoreService", "build_core", "make_service", "publish"]

log = Logger()


def _driver_names(config) -> dict[str, str]:
    """Driver name -> the configuration key that asks for it."""
    names = {config.pbx.driver: "pbx.driver"}
    for index, ext in enumerate(config.extensions):
        names.setdefault(ext.device.partition(":")[0], f"extensions[{index}].device")
    if getattr(config, "sip", None) is not None:
        names.setdefault("sip", "sip")  # its trunks' inbound calls need the driver even when nothing dials out
    return names


def build_drivers(ctx) -> dict:
    """Every driver the configuration names, built by its plugin; ConfigError for an unknown one."""
    factories = {factory.name: factory for factory in plugins(IDriverFactory)}
    drivers = {}
    for name, path in _driver_names(ctx.config).items():
        factory = factories.get(name)
        if factory is None:
            known = ", ".join(sorted(factories)) or "none"
            raise ConfigError(path, f"no driver plugin named {name!r} (known: {known})")
        drivers[name] = factory.build(ctx)
    return drivers


class CoreService(service.Service):
    """Starts the drivers; on stop, ends the calls (within the grace time) and then stops the drivers."""

    name = "core"

    def __init__(self, registry: Registry, media: MediaController, drivers: dict, grace: float) -> None:
        self.registry = registry
        self.media = media
        self.drivers = drivers
        self.grace = grace

    def wire(self) -> None:
        """The one wiring step of the core: every driver delivering inbound calls gets the registry's
        ``IInboundCalls``, and the media controller tells the registry when a routed app ends."""
        for driver in self.drivers.values():
            if IInboundDriver.providedBy(driver):
                driver.wire(self.registry)
        self.media.wire(self.registry)

    def startService(self) -> None:
        super().startService()
        for driver in self.drivers.values():
            driver.start()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        d = self.registry.shutdown(self.grace)
        d.addErrback(lambda f: log.failure("ending the calls at shutdown failed", f))
        d.addCallback(lambda _: self._stop_drivers())
        return d

    def _stop_drivers(self) -> defer.Deferred:
        stops = []
        for name, driver in self.drivers.items():
            d = defer.maybeDeferred(driver.stop)
            d.addErrback(lambda f, name=name: log.failure("stopping driver {driver} failed", f, driver=name))
            stops.append(d)
        return defer.DeferredList(stops).addCallback(lambda _: None)


def build_core(ctx) -> CoreService:
    """The drivers (from their plugins), the router, the media controller and the registry, not yet wired."""
    config = ctx.config
    drivers = build_drivers(ctx)
    apps = {app.name: app for app in plugins(IMediaApp)}
    router = Router(config.routes, apps)
    media_dir = ctx.state_dir / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    media = MediaController(ctx.reactor, apps, state_dir=media_dir)
    metrics = CoreMetrics(ctx.metrics)
    store = ctx.store
    registry = Registry(
        ctx.reactor,
        drivers,
        extensions=config.extensions,
        router=router,
        media=media,
        pbx_driver=config.pbx.driver,
        node=config.gateway.node,
        cdr_sink=store.add_cdr if store is not None else None,
        provider_cdr_sink=store.attach_provider_cdr if store is not None else None,
        on_command=metrics.command,
        # the store's bounded queue and its observer (gateway.store.guard), when the store has them
        sink_options=getattr(store, "queue_options", None),
    )
    metrics.attach(registry)
    return CoreService(registry, media, drivers, config.gateway.shutdown_grace)


def publish(ctx, core: CoreService) -> None:
    """The registry becomes ``ctx.registry`` (what adapters are built with), the status page's
    ``calls``, and the calls API on ``ctx.api``."""
    ctx.registry = core.registry
    ctx.status["calls"] = core.registry
    if ctx.api is not None:
        sim = core.drivers.get("sim")
        register_calls_api(ctx.api, core.registry, sim if isinstance(sim, SimNetwork) else None)


def make_service(ctx) -> CoreService:
    """The core built, wired and published on ``ctx`` (``gateway.tap.build`` runs these steps itself)."""
    core = build_core(ctx)
    core.wire()
    publish(ctx, core)
    return core
