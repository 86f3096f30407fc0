"""``[gateway] workers = N``: one parent process runs N gateway worker processes.

``workers = 1`` (the default) is the plain daemon: :func:`make_service` then
returns :func:`gateway.tap.build`'s service and no parent exists. With N > 1
the ``twistd`` process becomes the *parent*. It does not serve calls; it

- spawns N workers (``reactor.spawnProcess`` of ``twistd gateway`` with
  ``GATEWAY_WORKER=i`` in the environment, never blocking the reactor);
- keeps ``[admin] listen`` for itself: ``/healthz``, ``/readyz`` (every worker
  ready), ``/metrics`` (the workers' restarts and deaths) and ``/api/workers``
  (token as for the workers' API). A second gateway started on the same
  configuration fails on that port at start, as a single daemon does;
- is the systemd ``Type=notify`` process: ``READY=1`` once every worker said
  it is ready, ``WATCHDOG=1`` only while every worker is alive and ready,
  ``STOPPING=1`` on SIGTERM, then SIGTERM to the workers (each stops as the
  plain daemon does: listeners closed, live calls given ``shutdown_grace``,
  the store flushed), SIGKILL to any still running after the stop timeout;
- restarts a worker that dies, after a backoff (0.5 s doubling to 30 s, back
  to 0.5 s once a worker stayed up a minute), logging its exit status or
  signal and counting it in ``gateway_worker_exits_total{worker,cause}``.
  A worker that dies before every worker was ready for the first time means
  the configuration cannot run (a port taken, the store unreadable): the
  parent stops everything and exits 1.

A worker is a full gateway node (:func:`worker_config`): node id
``<node>-w<i>``, its admin API on the admin port + i, every other TCP
listener shared with the others through ``SO_REUSEPORT`` (the kernel spreads
the connections across the workers), a SQLite store file of its own
(``gateway-w<i>.sqlite``; a PostgreSQL store is shared). Without
``[cluster]``, the links that must exist once (the CTI/HIS link, the chat
link, the Patriot Desktop links) and the SIP socket run in worker 1 only.
A worker tells the parent how it is doing with the ``sd_notify`` lines it
would send systemd, written on a pipe (:class:`gateway.systemd.PipeNotifier`,
file descriptor :data:`NOTIFY_FD`).

:class:`Supervisor` is the logic, on a clock and a spawn function, so that
its tests run on ``task.Clock`` with a fake spawner.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import sys

import attrs
from twisted.application import service
from twisted.internet import defer, error, protocol, task
from twisted.logger import Logger

__all__ = [
    "Backoff",
    "NOTIFY_FD",
    "Supervisor",
    "SupervisorService",
    "make_service",
    "worker_config",
    "worker_count",
    "worker_index",
]

log = Logger()

#: the environment variable naming a worker's number (1..N); absent in the parent and the plain daemon
WORKER_ENV = "GATEWAY_WORKER"
#: the worker's file descriptor on which it writes its sd_notify lines to the parent
NOTIFY_FD = 3
#: what the parent leaves out of a worker's environment: systemd talks to the parent only
_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def worker_count(config, cpu_count=os.cpu_count) -> int:
    """How many workers ``config`` asks for: ``0`` is one per core."""
    n = config.gateway.workers
    return n if n > 0 else max(1, cpu_count() or 1)


def worker_index(environ=os.environ) -> int | None:
    """This process's worker number, or None for the parent or the plain daemon."""
    value = environ.get(WORKER_ENV)
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"gateway: {WORKER_ENV}={value!r} is not a worker number")
    return int(value)


# -- a worker's configuration ---------------------------------------------------


_PORT_RE = re.compile(r"^(tcp6?|ssl):(\d+)(?=:|$)|(?<=:)port=(\d+)(?=:|$)")


def offset_port(description: str, offset: int) -> str:
    """``description`` with its TCP port moved by ``offset`` (port 0 stays 0: any free port).

    Raises ``ValueError`` for an endpoint without a TCP port (``unix:``, ``systemd:``).
    """
    match = _PORT_RE.search(description)
    if match is None:
        raise ValueError(f"{description!r} has no TCP port to give each worker one of its own")
    group = 2 if match.group(2) is not None else 3
    port = int(match.group(group))
    if port == 0:
        return description
    if port + offset > 65535:
        raise ValueError(f"{description!r}: port {port} + worker {offset} is past 65535")
    start, end = match.span(group)
    return description[:start] + str(port + offset) + description[end:]


def _own_store_url(url: str, index: int) -> str:
    """A SQLite store file per worker (``var/gateway.sqlite`` -> ``var/gateway-w2.sqlite``)."""
    if not url.startswith("sqlite:"):
        return url  # PostgreSQL: one database for every node
    path = url[len("sqlite:"):]
    if path == ":memory:":
        return url
    head, dot, ext = path.rpartition(".")
    if not dot or "/" in ext:
        return f"{url}-w{index}"
    return f"sqlite:{head}-w{index}.{ext}"


def worker_config(config, index: int):
    """The configuration worker ``index`` (1..N) runs: see the module docstring."""
    changes = {
        "gateway": attrs.evolve(config.gateway, node=f"{config.gateway.node}-w{index}", workers=1),
        "admin": attrs.evolve(config.admin, listen=offset_port(config.admin.listen, index)),
        "store": attrs.evolve(config.store, url=_own_store_url(config.store.url, index)),
    }
    if index != 1:
        changes["sip"] = None  # one SIP socket: a UDP dialog cannot move between processes
        if config.cluster is None:  # no leases to share them: the links that must exist once stay in worker 1
            if config.cti is not None:
                changes["cti"] = attrs.evolve(config.cti, enabled=False)
            if config.chat is not None:
                changes["chat"] = attrs.evolve(config.chat, enabled=False)
            if config.patriot is not None and config.patriot.desktop:
                changes["patriot"] = attrs.evolve(config.patriot, desktop=[])
    return attrs.evolve(config, **changes)


def check_workers_config(config) -> None:
    """Refuse what workers cannot share, as a ``ConfigError`` naming the key."""
    from gateway.config import ConfigError

    try:
        offset_port(config.admin.listen, 1)
    except ValueError as e:
        raise ConfigError("admin.listen", f"with [gateway] workers > 1: {e}") from None


# -- the supervisor ---------------------------------------------------------------


@attrs.define
class Backoff:
    """Seconds before restarting a worker: ``initial`` doubling to ``maximum``; reset after ``stable`` s up."""

    initial: float = 0.5
    maximum: float = 30.0
    stable: float = 60.0

    def delay(self, failures: int) -> float:
        return min(self.maximum, self.initial * 2 ** max(0, failures - 1))


@attrs.define(eq=False)
class Worker:
    """What the parent knows of one worker."""

    index: int
    process: object = None
    pid: int | None = None
    #: "starting" (spawned, not ready), "ready", "waiting" (dead, restart pending), "stopped"
    state: str = "starting"
    started_at: float = 0.0
    restarts: int = 0
    #: deaths since it was last up ``Backoff.stable`` seconds
    failures: int = 0
    last_exit: str | None = None
    last_ping: float | None = None
    restart_call: object = None
    ended: defer.Deferred | None = None

    def as_json(self, node: str) -> dict:
        return {"index": self.index, "node": f"{node}-w{self.index}", "pid": self.pid, "state": self.state,
                "restarts": self.restarts, "last_exit": self.last_exit}


def describe_exit(reason) -> tuple[str, str]:
    """``(text, cause)`` of a process end: ``("exit status 1", "exit")``, ``("signal 9 (SIGKILL)", "signal")``."""
    value = getattr(reason, "value", reason)
    sig = getattr(value, "signal", None)
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"signal {sig} ({name})", "signal"
    code = getattr(value, "exitCode", None)
    return f"exit status {code}", ("clean" if code == 0 else "exit")


class _WorkerProtocol(protocol.ProcessProtocol):
    """The parent's end of one worker: its notify lines and its end."""

    def __init__(self, supervisor: "Supervisor", worker: Worker):
        self._supervisor = supervisor
        self._worker = worker
        self._buffer = b""

    def connectionMade(self):
        closer = getattr(self.transport, "closeStdin", None)
        if closer is not None:
            closer()

    def childDataReceived(self, childFD, data):
        if childFD != NOTIFY_FD:
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > 4096:  # a worker never writes such a line; do not grow without end
            self._buffer = b""
        for line in lines:
            self._supervisor.notified(self._worker, line.decode("utf-8", "replace"))

    def processEnded(self, reason):
        self._supervisor.ended(self._worker, reason)


class Supervisor:
    """Runs ``count`` workers through ``spawn(index, process_protocol) -> process``.

    ``process`` has ``pid`` and ``signalProcess(name)``, as a Twisted
    ``IProcessTransport``. ``on_ready()`` is called once, when every worker
    has been ready; ``on_start_failed(text)`` when one died before that;
    ``metrics``: a Prometheus registry or None.
    """

    def __init__(self, count: int, spawn, clock, *, node: str = "gateway", backoff: Backoff | None = None,
                 stop_timeout: float = 30.0, metrics=None, on_ready=None, on_start_failed=None):
        self.count = count
        self._spawn = spawn
        self._clock = clock
        self.node = node
        self.backoff = backoff or Backoff()
        self.stop_timeout = stop_timeout
        self._on_ready = on_ready
        self._on_start_failed = on_start_failed
        self.workers = [Worker(index=i) for i in range(1, count + 1)]
        self.started = False  # every worker was ready once
        self.stopping = False
        self._exits = self._restarts_metric = None
        if metrics is not None:
            from prometheus_client import Counter, Gauge

            from gateway.metrics import define_metric

            self._exits = define_metric(metrics, Counter, "worker_exits",
                                        "worker processes that ended while the parent ran, by cause "
                                        "(signal, exit: a non-zero status, clean: status 0)",
                                        ["worker", "cause"])
            self._restarts_metric = define_metric(metrics, Counter, "worker_restarts",
                                                  "worker processes started again after one ended", ["worker"])
            alive = define_metric(metrics, Gauge, "workers_ready", "worker processes running and ready")
            alive.set_function(lambda: sum(w.state == "ready" for w in self.workers))

    # -- start ------------------------------------------------------------

    def start(self) -> None:
        for worker in self.workers:
            self._start(worker)

    def _start(self, worker: Worker) -> None:
        worker.restart_call = None
        worker.state = "starting"
        worker.started_at = self._clock.seconds()
        worker.last_ping = None
        worker.ended = defer.Deferred()
        try:
            worker.process = self._spawn(worker.index, _WorkerProtocol(self, worker))
        except Exception as e:  # e.g. out of processes: try again later as for a death
            log.error("cannot start worker {index}: {error}", index=worker.index, error=e)
            worker.process = None
            self.ended(worker, e)
            return
        worker.pid = getattr(worker.process, "pid", None)
        log.info("worker {index} started: pid {pid}", index=worker.index, pid=worker.pid)

    # -- what workers say ---------------------------------------------------

    def notified(self, worker: Worker, line: str) -> None:
        key, _, value = line.partition("=")
        if key == "READY" and value == "1" and worker.state == "starting":
            worker.state = "ready"
            worker.last_ping = self._clock.seconds()
            log.info("worker {index} (pid {pid}) is ready", index=worker.index, pid=worker.pid)
            if not self.started and all(w.state == "ready" for w in self.workers):
                self.started = True
                if self._on_ready is not None:
                    self._on_ready()
        elif key == "WATCHDOG" and value == "1":
            worker.last_ping = self._clock.seconds()

    def all_alive(self, ping_within: float | None = None) -> bool:
        """Every worker ready (and, with ``ping_within``, heard from that recently): the watchdog's condition."""
        now = self._clock.seconds()
        for w in self.workers:
            if w.state != "ready":
                return False
            if ping_within is not None and (w.last_ping is None or now - w.last_ping > ping_within):
                return False
        return True

    # -- deaths ---------------------------------------------------------------

    def ended(self, worker: Worker, reason) -> None:
        text, cause = describe_exit(reason)
        worker.last_exit = text
        worker.process = None
        ended, worker.ended = worker.ended, None
        if self.stopping:
            worker.state = "stopped"
            log.info("worker {index} (pid {pid}) stopped: {status}", index=worker.index, pid=worker.pid, status=text)
        else:
            if self._exits is not None:
                self._exits.labels(worker=str(worker.index), cause=cause).inc()
            if not self.started:
                worker.state = "stopped"
                log.critical("worker {index} (pid {pid}) ended during start: {status}; stopping",
                             index=worker.index, pid=worker.pid, status=text)
                if self._on_start_failed is not None:
                    self._on_start_failed(f"worker {worker.index} ended during start: {text}")
            else:
                if self._clock.seconds() - worker.started_at >= self.backoff.stable:
                    worker.failures = 0
                worker.failures += 1
                delay = self.backoff.delay(worker.failures)
                worker.state = "waiting"
                log.error("worker {index} (pid {pid}) died: {status}; restarting it in {delay} s",
                          index=worker.index, pid=worker.pid, status=text, delay=delay)
                worker.restart_call = self._clock.callLater(delay, self._restart, worker)
        if ended is not None:
            ended.callback(text)

    def _restart(self, worker: Worker) -> None:
        worker.restarts += 1
        if self._restarts_metric is not None:
            self._restarts_metric.labels(worker=str(worker.index)).inc()
        self._start(worker)

    # -- stop -------------------------------------------------------------------

    def stop(self) -> defer.Deferred:
        """SIGTERM every worker, SIGKILL those still running after ``stop_timeout``; fires when all ended."""
        self.stopping = True
        waits = []
        for worker in self.workers:
            if worker.restart_call is not None and worker.restart_call.active():
                worker.restart_call.cancel()
            worker.restart_call = None
            if worker.process is None:
                worker.state = "stopped"
                continue
            waits.append(worker.ended)
            self._signal(worker, "TERM")
        if not waits:
            return defer.succeed(None)
        killer = self._clock.callLater(self.stop_timeout, self._kill_all)
        done = defer.DeferredList(waits)

        def finished(result):
            if killer.active():
                killer.cancel()
            return None

        return done.addCallback(finished)

    def _kill_all(self) -> None:
        for worker in self.workers:
            if worker.process is not None:
                log.error("worker {index} (pid {pid}) did not stop in {timeout} s: killing it",
                          index=worker.index, pid=worker.pid, timeout=self.stop_timeout)
                self._signal(worker, "KILL")

    def _signal(self, worker: Worker, name: str) -> None:
        try:
            worker.process.signalProcess(name)
        except error.ProcessExitedAlready:
            pass
        except OSError as e:
            log.warn("cannot send SIG{name} to worker {index}: {error}", name=name, index=worker.index, error=e)


# -- the parent process -------------------------------------------------------------


def _numbered(path: str, index: int) -> str:
    """``var/gateway.log`` -> ``var/gateway-w2.log``: a file of worker ``index``'s own."""
    head, dot, ext = path.rpartition(".")
    if not dot or "/" in ext or not head or head.endswith("/"):
        return f"{path}-w{index}"
    return f"{head}-w{index}.{ext}"


def worker_argv(argv=None, executable=None, index: int = 1) -> list[str]:
    """The command of worker ``index``: this ``twistd``'s, in the foreground, without a pid file.

    Of twistd's own options only ``--logger`` and ``--logfile`` are kept: a
    worker logs to the parent's standard output/error, which it inherits (the
    journal under systemd), or, when the parent has ``--logfile PATH``, to a
    file of its own beside it (``gateway.log`` -> ``gateway-w1.log``).
    """
    argv = list(sys.argv if argv is None else argv)
    executable = executable or sys.executable
    kept: list[str] = []
    rest = argv[1:]
    try:
        at = rest.index("gateway")
    except ValueError:
        at = -1
    options, plugin = (rest[:at], rest[at + 1:]) if at >= 0 else ([], rest)
    i = 0
    while i < len(options):
        opt = options[i]
        if opt == "--logger" and i + 1 < len(options):
            kept += [opt, options[i + 1]]
            i += 2
            continue
        if opt in ("--logfile", "-l") and i + 1 < len(options):
            opt, i = "--logfile=" + options[i + 1], i + 1
        if opt.startswith("--logger="):
            kept.append(opt)
        elif opt.startswith("--logfile=") and opt != "--logfile=-":
            kept.append("--logfile=" + _numbered(os.path.abspath(opt[len("--logfile="):]), index))
        i += 1
    plugin = [os.path.abspath(plugin[j]) if j > 0 and plugin[j - 1] in ("--config", "-c") else plugin[j]
              for j in range(len(plugin))]
    plugin = [("--config=" + os.path.abspath(p[len("--config="):])) if p.startswith("--config=") else p
              for p in plugin]
    return [executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", *kept, "gateway", *plugin]


def reactor_spawner(reactor, argv_for, environ=os.environ, watchdog_usec: int | None = None):
    """A ``spawn`` for :class:`Supervisor` starting real workers with ``reactor.spawnProcess``.

    ``argv_for(index)``: worker ``index``'s command line (:func:`worker_argv`).
    """
    base = {k: v for k, v in environ.items() if k not in _SYSTEMD_ENV}
    if watchdog_usec:
        base["WATCHDOG_USEC"] = str(watchdog_usec)  # the worker pings the parent as often as it pings systemd

    def spawn(index, proto):
        env = dict(base, **{WORKER_ENV: str(index), "GATEWAY_PARENT_PID": str(os.getpid())})
        argv = argv_for(index)
        return reactor.spawnProcess(proto, argv[0], argv, env=env,
                                    childFDs={0: "w", 1: 1, 2: 2, NOTIFY_FD: "r"})

    return spawn


def parent_site(supervisor: Supervisor, metrics, admin, token, reactor):
    """The parent's own admin site on ``[admin] listen``: the admin API's router, limits and errors."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from gateway.admin.api import ApiResponse, ApiRouter
    from gateway.admin.site import AdminSite

    def workers():
        return [w.as_json(supervisor.node) for w in supervisor.workers]

    def readyz(request):
        if supervisor.all_alive() and not supervisor.stopping:
            return ApiResponse(200, {"ready": True})
        return ApiResponse(503, {"ready": False, "not_ready": [f"worker {w['index']}: {w['state']}"
                                                               for w in workers() if w["state"] != "ready"]})

    router = ApiRouter(token)
    router.route("GET", "/healthz", lambda request: {"status": "ok", "role": "parent"})
    router.route("GET", "/readyz", readyz)
    router.route("GET", "/metrics", lambda request: ApiResponse(200, generate_latest(metrics),
                                                                {"Content-Type": CONTENT_TYPE_LATEST}))
    router.route("GET", "/api/workers", lambda request: {"node": supervisor.node, "workers": workers()})
    return AdminSite(router, reactor=reactor, max_body_size=admin.max_body_size,
                     request_timeout=admin.request_timeout, max_connections=admin.max_connections, metrics=metrics)


class _NoReadiness:
    def set_up(self):
        pass

    def stopped(self):
        pass


class SupervisorService(service.Service):
    """The parent: its admin listener, the :class:`Supervisor`, systemd notifications and the exit status."""

    name = "workers"

    def __init__(self, supervisor: Supervisor, notifier, reactor, *, listener=None, source: str | None = None,
                 take_signals: bool = True):
        """``take_signals``: SIGTERM/SIGINT stop the reactor (False in unit tests)."""
        self.supervisor = supervisor
        self._take_signals = take_signals
        self.notifier = notifier
        self._reactor = reactor
        self.listener = listener
        self.source = source
        self.exit_code = 0
        self._watchdog: task.LoopingCall | None = None
        self._interval = None
        supervisor._on_ready = self._all_ready
        supervisor._on_start_failed = self._start_failed

    def _bind(self):
        from gateway.listeners import StartupError

        if self.listener is None:
            return
        try:
            self.listener.bind()
        except StartupError as e:
            from gateway.tap import in_use_hint

            message = f"{e}; {in_use_hint(e.listener, self.source)}" if e.in_use else str(e)
            log.critical("{error}", error=message)
            raise SystemExit(f"gateway: {message}") from None

    def privilegedStartService(self):
        self._bind()
        super().privilegedStartService()

    def startService(self):
        self._bind()
        if self.listener is not None:
            self.listener.startService()
        super().startService()
        if self._take_signals:
            self._reactor.callWhenRunning(self._take_over_stop_signals)
        self._reactor.callWhenRunning(self.supervisor.start)
        self._reactor.addSystemEventTrigger("after", "shutdown", self._exit)
        self._interval = self.notifier.watchdog_interval()
        if self._interval is not None:
            self._watchdog = task.LoopingCall(self._ping)
            self._watchdog.clock = self._reactor
            self._watchdog.start(self._interval, now=False).addErrback(
                lambda f: log.failure("systemd watchdog pings stopped", f))

    def _take_over_stop_signals(self):
        """SIGTERM/SIGINT stop the parent normally (exit 0), as they stop the plain daemon (gateway.tap)."""

        from gateway.tap import stop_reactor

        def on_stop_signal(signum, frame):
            self._reactor.callFromThread(stop_reactor, self._reactor)

        signal.signal(signal.SIGTERM, on_stop_signal)
        signal.signal(signal.SIGINT, on_stop_signal)

    def _ping(self):
        # A worker pings every interval; two missed pings and the parent stops pinging systemd for everyone.
        if self.supervisor.all_alive(ping_within=2 * self._interval + 1):
            self.notifier.watchdog()

    def _all_ready(self):
        n = self.supervisor.count
        log.info("gateway {node}: all {count} workers ready", node=self.supervisor.node, count=n)
        self.notifier.ready(f"{n} workers ready")

    def _start_failed(self, text):
        from gateway.tap import stop_reactor

        self.exit_code = 1
        self._reactor.callWhenRunning(stop_reactor, self._reactor)

    def stopService(self):
        super().stopService()
        self.notifier.stopping()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        log.info("gateway {node} stopping: SIGTERM to {count} workers", node=self.supervisor.node,
                 count=self.supervisor.count)
        d = self.supervisor.stop()
        if self.listener is not None:
            d.addCallback(lambda _: self.listener.stopService())
        d.addCallback(lambda _: log.info("gateway {node}: every worker stopped", node=self.supervisor.node))
        return d

    def _exit(self):
        if self.exit_code:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(self.exit_code)


def stop_timeout(config) -> float:
    """Seconds the parent gives its workers after SIGTERM before SIGKILL: their drain (``[cluster]``),
    their ``shutdown_grace``, and 25 s to flush their stores and exit."""
    drain = config.cluster.drain_timeout if config.cluster is not None else 0.0
    return drain + config.gateway.shutdown_grace + 25.0


def make_parent(config, reactor, source: str | None = None, *, argv=None, environ=os.environ):
    """The parent's service for ``config`` (its ``workers`` > 1)."""
    from gateway.admin.metrics import make_metrics_registry
    from gateway.admin.token import resolve_token
    from gateway.listeners import Listener
    from gateway.systemd import Notifier
    from gateway.tlspolicy import TlsPolicy

    check_workers_config(config)
    state_dir = pathlib.Path(config.gateway.state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    count = worker_count(config)
    notifier = Notifier(environ)
    interval = notifier.watchdog_interval()
    metrics = make_metrics_registry()
    spawn = reactor_spawner(reactor, lambda index: worker_argv(argv, index=index), environ,
                            watchdog_usec=int(interval * 1_000_000) if interval else None)
    supervisor = Supervisor(count, spawn, reactor, node=config.gateway.node, metrics=metrics,
                            stop_timeout=stop_timeout(config))
    site = parent_site(supervisor, metrics, config.admin, resolve_token(config.admin.token, state_dir), reactor)
    listener = Listener(reactor, "admin", config.admin.listen, site, _NoReadiness(), tls=TlsPolicy.from_config(config))
    log.info("gateway {node}: parent of {count} workers", node=config.gateway.node, count=count)
    return SupervisorService(supervisor, notifier, reactor, listener=listener, source=source)


def as_worker(root, index: int, environ=os.environ) -> None:
    """Make the built daemon ``root`` worker ``index``: shared listeners, notifications to the parent."""
    from gateway.systemd import PipeNotifier

    for listener in root.ctx.listeners:
        if listener.name != "admin":
            listener.reuse_port = True
    root.systemd.notifier = PipeNotifier(NOTIFY_FD, environ)
    _die_with_parent(environ)


def _die_with_parent(environ) -> None:
    """SIGTERM to this worker when the parent ends, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = environ.get("GATEWAY_PARENT_PID")
    if parent and parent.isdigit() and os.getppid() != int(parent):  # it died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def make_service(config, reactor, source: str | None, build, environ=os.environ):
    """The daemon's top service: the plain daemon, a worker (``GATEWAY_WORKER``) or the parent."""
    index = worker_index(environ)
    if index is not None:
        root = build(worker_config(config, index), reactor, source)
        as_worker(root, index, environ)
        return root
    if worker_count(config) > 1:
        return make_parent(config, reactor, source, environ=environ)
    return build(config, reactor, source)
