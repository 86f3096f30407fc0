"""Assembly of the Patriot adapter: the Dialler Bridge listener and one link per Desktop API.

:func:`make_service` is the ``patriot`` adapter plugin's factory (``plugins/adapters.py``). It asks
for the bridge's listener (``listener:patriot-bridge``), registers a readiness component per desktop link
(``patriot-desktop:<index>``), puts the adapter's metrics on ``ctx.metrics`` and its live status
at ``ctx.status["patriot"]``. Calls go through ``ctx.registry`` only, on one
:class:`~gateway.patriot.line.Line` per extension shared by both modes.

The Desktop mode's links are the ones the gateway originates and keeps up. In cluster mode
(``ctx.cluster``) each is a singleton link (:class:`~gateway.cluster.singleton.SingletonLink`, lease
``patriot-desktop:<index>``): only the node holding the lease connects and logs in; the others stand by
and take it over when the holder dies or drains. The Dialler Bridge is a listener (Patriot connects
to us), so every node serves it.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer, threads

from gateway.cluster.singleton import SingletonLink
from gateway.confschema import ConfigError
from gateway.patriot.bridge import DiallerBridge
from gateway.patriot.config import PatriotConfig
from gateway.patriot.desktop import DesktopLink, desktop_endpoint
from gateway.patriot.line import Lines
from gateway.patriot.metrics import PatriotMetrics
from gateway.patriot.tls import load_ca_file


class PatriotService(service.MultiService):
    """The desktop links as child services; the bridge's connections closed at stop."""

    name = "patriot"

    def __init__(self, lines: Lines, bridge: DiallerBridge | None):
        super().__init__()
        self.lines = lines
        self.bridge = bridge

    @property
    def links(self) -> list[DesktopLink]:
        children = [child.link if isinstance(child, SingletonLink) else child for child in self]
        return [child for child in children if isinstance(child, DesktopLink)]

    @defer.inlineCallbacks
    def stopService(self):
        if self.bridge is not None:
            yield self.bridge.close_all()
        yield super().stopService()
        self.lines.close()

    def status(self) -> dict:
        return {
            "bridge": self.bridge.status() if self.bridge is not None else None,
            "desktop": [link.status() for link in self.links],
            "lines": self.lines.to_dict(),
        }


def _thread_runner(reactor):
    """Run a blocking function (a password hash check) in the reactor's thread pool."""

    def run(function, *args):
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return run


def _ca_certificates(index: int, path: str):
    if not path:
        return None
    try:
        return load_ca_file(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"patriot.desktop[{index}].ca", f"cannot read certificates from {path!r}: {e}") from None


def make_service(ctx, config: PatriotConfig | None = None) -> PatriotService:
    """The ``[patriot]`` adapter for its validated section ``config`` (by default ``ctx.config.patriot``)."""
    config = config if config is not None else ctx.config.patriot
    metrics = PatriotMetrics.on(ctx.metrics)
    lines = Lines(ctx.registry)
    bridge = None
    if config.bridge is not None and config.bridge.enabled:
        bridge = DiallerBridge(config.bridge, reactor=ctx.reactor, lines=lines, metrics=metrics,
                               run_blocking=_thread_runner(ctx.reactor))
        ctx.listen("patriot-bridge", config.bridge.listen, bridge.factory)
    svc = PatriotService(lines, bridge)
    cluster = getattr(ctx, "cluster", None)
    for index, link_config in enumerate(config.desktop):
        endpoint = desktop_endpoint(ctx.reactor, link_config, _ca_certificates(index, link_config.ca), tls=ctx.tls)
        component = ctx.readiness.register(f"patriot-desktop:{index}")
        link = DesktopLink(index, link_config, reactor=ctx.reactor, endpoint=endpoint,
                           line=lines.get(link_config.extension), metrics=metrics, component=component)
        if cluster is not None:
            # a singleton link: one node of the cluster holds it under a lease; the others stand by
            link = SingletonLink(cluster, f"patriot-desktop:{index}", link, component=component,
                                 metrics=ctx.metrics)
        link.setServiceParent(svc)
    ctx.status["patriot"] = svc
    return svc
