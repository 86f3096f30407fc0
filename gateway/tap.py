"""``twistd gateway``: command-line options and the assembly of the daemon.

:func:`makeService` loads the configuration and :func:`build` assembles the
daemon from it, in dependency order: the store, the admin HTTP server (its
router is ``ctx.api``), the call core (built, wired once, published as
``ctx.registry``), then every enabled adapter, each an
:class:`~gateway.adapters.IAdapter` plugin (bundled: ``plugins/adapters.py``;
an operator's: ``[gateway] plugin_dirs``). :class:`GatewayService` starts them
in that order and stops them so that nothing is lost:

1. stop accepting (every listener closes),
2. end live calls with cause ``shutdown`` within ``[gateway] shutdown_grace``
   (the call core), while the adapters can still tell their peers,
3. stop the adapters, newest first,
4. close the store, which flushes pending CDR writes.

A bad configuration or a listener that cannot be bound ends the process with
status 1 and one line on stderr, before anything is served.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

import gateway
from gateway.adapters import adapter_plugins, adapter_states, make_services
from gateway.config import DEFAULTS_NAME, ConfigError, load
from gateway.context import Context
from gateway.listeners import StartupError

log = Logger()

__all__ = ["GatewayService", "Options", "adapter_states", "build", "makeService"]


#: listener name -> the configuration key of its endpoint, for the message when its port is taken
LISTEN_KEYS = {"admin": "[admin] listen", "optimaccs": "[optimaccs] listen", "patriot-bridge": "[patriot.bridge] listen"}


def in_use_hint(listener: str | None, source: str | None) -> str:
    """What to do when ``listener``'s port is taken, naming its key and the file (``source``; None: the defaults)."""
    key = LISTEN_KEYS.get(listener, f"the {listener} listener's endpoint")
    if source:
        change = f"change {key} in {source}"
    else:
        change = (f"copy etc/gateway.toml, change {key} in the copy and start with --config PATH"
                  " (make run ARGS='--config PATH')")
    if listener == "admin":
        return f"a gateway may already be running (stop it, or, to run a second one, {change})"
    return f"another program uses that port (stop it, or {change})"


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "Run the telephony gateway. Without --config it runs on the embedded defaults, "
        "which are the packaged copy of etc/gateway.toml."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: the embedded etc/gateway.toml)."],
    ]


class GatewayService(service.MultiService):
    """The daemon: listeners, then rooms in start order; stopped in phases."""

    def __init__(self, ctx: Context, systemd, source: str | None = None):
        super().__init__()
        self.ctx = ctx
        self.systemd = systemd
        #: the configuration file (None: the embedded defaults), named in start-up errors
        self.source = source
        self.store_service = None
        self.core_service = None
        self.adapter_services: list = []
        #: cluster mode: the cluster's ICallControl and the ClusterNode, stopped after the adapters
        self.cluster_services: list = []

    # -- start -----------------------------------------------------------

    def _bind_listeners(self) -> None:
        try:
            for listener in self.ctx.listeners:
                listener.bind()
        except StartupError as e:
            for listener in self.ctx.listeners:
                if listener.port is not None:
                    listener.stopService()
            message = f"{e}; {in_use_hint(e.listener, self.source)}" if getattr(e, "in_use", False) else str(e)
            log.critical("{error}", error=message)
            raise SystemExit(f"gateway: {message}") from None

    def privilegedStartService(self):
        self._bind_listeners()
        super().privilegedStartService()

    def startService(self):
        self._bind_listeners()
        for listener in self.ctx.listeners:
            listener.startService()
        super().startService()
        self.ctx.reactor.callWhenRunning(self._take_over_stop_signals)
        opened = self.store_service.opened if self.store_service else defer.succeed(None)
        opened.addCallback(lambda _: self._started())
        opened.addErrback(self._fatal, "the store could not be opened")

    def _take_over_stop_signals(self):
        """SIGTERM and SIGINT (Ctrl-C) are the gateway's normal stop: exit 0 once everything is flushed.

        Twisted's own SIGTERM handler makes twistd re-raise the signal after
        the reactor stopped, so the process would end by the signal (status
        143). Twisted installs a SIGINT handler only over Python's default
        one, which a process started with SIGINT ignored (a shell's background
        job, ``nohup``) does not have: Ctrl-C would be ignored for good.
        """
        reactor = self.ctx.reactor

        def on_stop_signal(signum, frame):
            reactor.callFromThread(stop_reactor, reactor)

        signal.signal(signal.SIGTERM, on_stop_signal)
        signal.signal(signal.SIGINT, on_stop_signal)

    def _started(self):
        log.info(
            "gateway {node} started: {listeners}",
            node=self.ctx.config.gateway.node,
            listeners=", ".join(f"{l.name}={l.description}" for l in self.ctx.listeners),
        )
        self.systemd.mark_ready()

    def _fatal(self, failure, what):
        log.failure("{what}: {error}; stopping", failure, what=what, error=failure.getErrorMessage())
        self.ctx.exit_code = 1
        # This can happen during start, before the reactor runs.
        self.ctx.reactor.callWhenRunning(self.ctx.reactor.stop)

    # -- stop ------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        stop_retrying = getattr(self.ctx.store, "stop_retrying", None)
        retried = None
        if stop_retrying is not None:  # from now on a failing store write is logged in full, not retried
            retried = defer.maybeDeferred(stop_retrying)
            retried.addErrback(lambda f: log.failure("the store's last try at its waiting writes failed: {error}",
                                                     f, error=f.getErrorMessage()))
        yield defer.maybeDeferred(self.systemd.stopService)  # STOPPING=1 first
        if self.ctx.drain is not None:  # cluster: drain first ([cluster] drain_timeout, then drain_forced)
            try:
                yield self.ctx.drain()
            except Exception:
                log.failure("draining the node failed")
        log.info("gateway stopping: no new connections; live calls get {grace} s",
                 grace=self.ctx.config.gateway.shutdown_grace)
        yield defer.DeferredList([defer.maybeDeferred(l.stopService) for l in self.ctx.listeners])
        for svc in [self.core_service, *reversed(self.adapter_services), *reversed(self.cluster_services),
                    self.store_service]:
            if svc is self.store_service and retried is not None:
                yield retried  # the waiting writes' last try has settled (none of it held up the adapters)
            if svc is not None and svc.running:
                try:
                    yield defer.maybeDeferred(svc.stopService)
                except Exception:
                    log.failure("stopping {service} failed", service=getattr(svc, "name", svc))
        log.info("gateway stopped")


def _publish_cluster(ctx: Context, core, root: GatewayService) -> None:
    """``[cluster]``: the ClusterNode and the cluster's ICallControl over the core, published as
    ``ctx.registry`` (see gateway.cluster.control); ``ctx.cluster`` and ``ctx.drain`` are set."""
    from gateway.admin.calls import register_calls_api
    from gateway.cluster.control import build_cluster
    from gateway.drivers.sim import SimNetwork

    control, node, _ = build_cluster(ctx, core.registry)
    ctx.registry = control
    ctx.status["calls"] = control
    if ctx.api is not None:
        sim = core.drivers.get("sim")
        register_calls_api(ctx.api, control, sim if isinstance(sim, SimNetwork) else None)
    root.cluster_services = [control, node]
    node.setServiceParent(root)
    control.setServiceParent(root)


def stop_reactor(reactor) -> None:
    """Stop the reactor; a second stop signal (Ctrl-C reaches a parent and its workers alike) is no error."""
    from twisted.internet.error import ReactorNotRunning

    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def _exit_code_trigger(ctx: Context):
    """After the reactor stopped, leave with ``ctx.exit_code`` when it is not 0."""
    code = ctx.exit_code
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def build(config, reactor, source: str | None = None) -> GatewayService:
    """Assemble the daemon for a validated ``config`` (used by tests too); ``source``: its file, None for the defaults."""
    from gateway.admin.metrics import make_metrics_registry
    from gateway.admin.site import make_site
    from gateway.admin.token import resolve_token
    from gateway.callservice import build_core, publish
    from gateway.context import Readiness
    from gateway.media.metrics import counted_ports
    from gateway.store import StoreHealth, open_store
    from gateway.store.files import check_private_dir
    from gateway.systemd import Notifier, SystemdService

    state_dir = pathlib.Path(config.gateway.state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private_dir(state_dir)  # warns, naming it and its mode, when others may enter it
    # [gateway] plugin_dirs are on the plugin path already: loading the configuration put them there

    # 1. the shared services, the store first (everything after may write to it)
    metrics = make_metrics_registry()
    readiness = Readiness()
    store = open_store(config.store.url, reactor, pending_max=config.store.pending_max,
                       health=StoreHealth(metrics, readiness.register("store")))
    ctx = Context(reactor=reactor, config=config, state_dir=state_dir, metrics=metrics, readiness=readiness,
                  media_ports=counted_ports(metrics, config.media.queue_ms, config.media.jitter_ms), store=store)
    root = GatewayService(ctx, SystemdService(Notifier(), reactor), source)
    root.store_service = _StoreService(store)
    root.store_service.setServiceParent(root)

    # 2. the admin site; its router is ctx.api, where the core and the adapters add their routes
    ctx.listen("admin", config.admin.listen, make_site(ctx, resolve_token(config.admin.token, state_dir)))

    # 3. the call core: built (drivers, media, registry), then wired once (the drivers and the media
    #    controller deliver to the registry), then published as ctx.registry, the adapters' ICallControl
    core = build_core(ctx)
    core.wire()
    root.core_service = core
    root.core_service.setServiceParent(root)
    if config.cluster is None:
        publish(ctx, core)
    else:
        # cluster mode: the adapters' ICallControl is the cluster's (remote calls seen and routed)
        _publish_cluster(ctx, core, root)

    # 4. the adapters: every enabled adapter plugin, built with ctx and its validated section
    adapters = adapter_plugins()
    ctx.adapters = adapter_states(config, adapters)
    log.info("adapters: {adapters}", adapters=", ".join(f"{name} {state}" for name, state in ctx.adapters.items()))
    for svc in make_services(ctx, adapters):
        svc.setServiceParent(root)
        root.adapter_services.append(svc)
    root.systemd.setServiceParent(root)
    reactor.addSystemEventTrigger("after", "shutdown", _exit_code_trigger, ctx)
    return root


class _StoreService(service.Service):
    """Opens the store at start and closes (flushes) it last at stop."""

    name = "store"

    def __init__(self, store):
        self.store = store
        self.opened = None

    def startService(self):
        super().startService()
        self.opened = self.store.open()

    def stopService(self):
        super().stopService()
        return self.store.close()


def makeService(options: Options):
    from twisted.internet import reactor

    os.umask(0o077)  # whatever the daemon creates (database, token, transcripts, recordings, logs) is its own

    try:
        config = load(options["config"])
    except ConfigError as e:
        raise SystemExit(f"gateway: configuration error: {e}") from None
    log.info(
        "gateway {version} configuring node {node} from {source}",
        version=gateway.__version__,
        node=config.gateway.node,
        source=options["config"] or DEFAULTS_NAME,
    )
    try:
        from gateway.workers import make_service  # [gateway] workers: the plain daemon, a worker or their parent

        return make_service(config, reactor, options["config"], build)
    except (ConfigError, StartupError) as e:
        raise SystemExit(f"gateway: {e}") from None
