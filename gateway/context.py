"""What every room of the gateway is handed when the daemon is assembled.

:func:`gateway.tap.build` builds one :class:`Context`, the explicit, typed set
of the daemon's shared services, and passes it to the driver plugins and to
each adapter's ``make_service(ctx, section)``. Rooms take what they need from
it instead of importing globals: the reactor, the validated configuration, the
metrics registry, the readiness board, the listeners (:meth:`Context.listen`),
the TLS policy, the media port factory, the store, the call core's
``ICallControl`` (``registry``), the admin API router and the status board.
``build`` fills the parts in dependency order: the store, then the admin
router, then (once the core is built and wired) the registry; only then are
the adapters built.
"""

from __future__ import annotations

import pathlib
import typing

import attrs
from twisted.logger import Logger

from gateway.media.port import MediaPorts

if typing.TYPE_CHECKING:  # pragma: no cover
    from prometheus_client import CollectorRegistry

    from twisted.internet.defer import Deferred

    from gateway.admin.api import ApiRouter
    from gateway.cluster.node import ClusterNode
    from gateway.config import Config
    from gateway.core.interfaces import ICallControl
    from gateway.listeners import Listener
    from gateway.store.interfaces import ICdrStore
    from gateway.tlspolicy import TlsPolicy


class StatusSource(typing.Protocol):
    """What the status board holds: anything that reports its live status as a JSON-able dict."""

    def status(self) -> dict: ...

log = Logger()


@attrs.define(eq=False)
class Component:
    """One thing readiness depends on: a listener or an outgoing link."""

    name: str
    up: bool = False
    reason: str = "not started"

    def set_up(self) -> None:
        if not self.up:
            log.info("{component} is up", component=self.name)
        self.up, self.reason = True, ""

    def set_down(self, reason: str) -> None:
        if self.up:
            log.warn("{component} is down: {reason}", component=self.name, reason=reason)
        self.up, self.reason = False, reason

    def stopped(self) -> None:
        """Down because the gateway is stopping: expected, so not a warning."""
        self.up, self.reason = False, "stopped"


@attrs.define
class Readiness:
    """The board behind ``/readyz``: every listener bound, every configured link up."""

    components: dict[str, Component] = attrs.Factory(dict)

    def register(self, name: str) -> Component:
        if name in self.components:
            raise ValueError(f"readiness component {name!r} registered twice")
        component = self.components[name] = Component(name)
        return component

    def unregister(self, name: str) -> None:
        self.components.pop(name, None)

    def not_ready(self) -> dict[str, str]:
        """Name -> reason for every component that is not up."""
        return {c.name: c.reason for c in self.components.values() if not c.up}

    @property
    def ready(self) -> bool:
        return not self.not_ready()


@attrs.define(eq=False)
class Context:
    #: the reactor (a clock, and endpoints for listeners and links); never the global one in library code
    reactor: typing.Any
    config: Config
    state_dir: pathlib.Path
    metrics: CollectorRegistry
    readiness: Readiness = attrs.Factory(Readiness)
    #: makes every call leg's MediaPort (``[media] queue_ms``, drops counted in the metrics); drivers use it
    media_ports: MediaPorts = attrs.Factory(MediaPorts)
    #: the store of CDRs (``ICdrStore``), SMS and conversations (``ISmsStore``): gateway.store
    store: ICdrStore | None = None
    #: the call core's door for adapters and the admin API (the registry), set by ``gateway.tap.build``
    #: once the core is built and wired, before any adapter is built
    registry: ICallControl | None = None
    #: the admin HTTP API router, where rooms add their routes (``gateway.admin.site.make_site`` makes it)
    api: ApiRouter | None = None
    #: name -> object for the live status of each adapter (status page, /api/status)
    status: dict[str, StatusSource] = attrs.Factory(dict)
    #: adapter name -> "on ..." or "off (why)", as the start-up log and /api/status say (gateway.tap)
    adapters: dict[str, str] = attrs.Factory(dict)
    #: listeners to bind at start, in order (see :meth:`listen`)
    listeners: list[Listener] = attrs.Factory(list)
    #: the process exit status once the reactor stops (set by a fatal error)
    exit_code: int = 0
    #: the cluster node (``gateway.cluster.ClusterNode``) when ``[cluster]`` is set, else None
    cluster: ClusterNode | None = None
    #: cluster mode: ``drain()`` drains this node (see ``gateway.cluster.control.ClusterDrain``) and
    #: returns a Deferred fired once its live calls are gone; None without ``[cluster]``
    drain: typing.Callable[[], Deferred[None]] | None = None
    #: True once this node drains: listeners refuse new calls (OptimaCCS: close 1013)
    draining: bool = False

    @property
    def tls(self) -> TlsPolicy:
        """The TLS policy of every listener and link (``[gateway] tls_minimum``): a ``gateway.tlspolicy.TlsPolicy``."""
        from gateway.tlspolicy import TlsPolicy

        return TlsPolicy.from_config(self.config)

    def listen(self, name: str, description: str, factory) -> None:
        """Ask for ``factory`` to be served on the endpoint ``description``.

        Every listener is bound before the daemon reports itself started; one
        that cannot be bound stops the start with an error naming it. An
        ``ssl:`` listener follows :attr:`tls`.
        """
        from gateway.listeners import Listener

        self.listeners.append(Listener(self.reactor, name, description, factory, self.readiness.register(f"listener:{name}"),
                                       tls=self.tls))
