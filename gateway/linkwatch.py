"""Why an outgoing link is down: one watcher shared by every ``ClientService`` link.

A link that cannot connect used to show ``not started`` on ``/readyz`` for
ever, and the log said nothing an operator could act on. :class:`LinkWatch`
sits between a ``ClientService`` and its endpoint and retry policy::

    watch = LinkWatch(reactor, component, peer="127.0.0.1:9500", adapter="cti")
    service = watch.client_service(endpoint, factory, retryPolicy=policy, clock=reactor)

(or, where another class builds the ``ClientService``, hand it ``watch.endpoint``
and ``watch.retry_policy`` of a watch made with ``endpoint=`` and ``retry_policy=``)

and keeps the link's readiness :class:`~gateway.context.Component` saying
what is going on, e.g. ``connecting to 127.0.0.1:8081: connection refused;
retry 3 in 4 s``. Every failed attempt is logged with the endpoint and the
error: the first :data:`FIRST_LOGGED` of a run of failures one by one, then
at most one line per ``log_interval`` seconds saying how many more failed
(:class:`gateway.boundary.RateLimitedLog`; after a quiet ``log_interval`` the
failures are logged one by one again, and a made connection ends the run).
A connection that was made and then lost is the adapter's to explain (its
protocol knows why); the watcher only counts the attempts that follow.
"""

from __future__ import annotations

import urllib.parse

from twisted.internet import error as neterror
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from gateway.boundary import RateLimitedLog

__all__ = ["FIRST_LOGGED", "LinkWatch", "describe_error", "endpoint_peer", "url_peer"]

log = Logger()

#: the failed attempts of a run that are each logged before the log is rate-limited
FIRST_LOGGED = 3

_ERRORS = [
    ((neterror.ConnectionRefusedError, ConnectionRefusedError), "connection refused"),
    (neterror.TCPTimedOutError, "timed out"),
    ((neterror.TimeoutError, TimeoutError), "timed out"),
    (neterror.DNSLookupError, "host name not found"),
    (neterror.NoRouteError, "no route to host"),
    (neterror.ConnectionLost, "connection lost"),
]


def describe_error(failure) -> str:
    """A short phrase for a failed connection attempt: ``connection refused``, ``timed out``..."""
    for kind, phrase in _ERRORS:
        if failure.check(*(kind if isinstance(kind, tuple) else (kind,))):
            return phrase
    message = failure.getErrorMessage().strip().rstrip(".")
    return message or failure.type.__name__


def endpoint_peer(description: str) -> str:
    """``host:port`` of a ``tcp:``/``tls:`` client endpoint string; the string itself otherwise."""
    from twisted.internet.endpoints import _parse

    try:
        args, kwargs = _parse(description)
    except Exception:
        return description
    kind, args = str(args[0]).lower(), args[1:]
    if kind not in ("tcp", "tls"):
        return description
    host = args[0] if args else kwargs.get("host")
    port = args[1] if len(args) > 1 else kwargs.get("port")
    return f"{host}:{port}" if host and port else description


def url_peer(url: str) -> str:
    """``host:port`` of an http(s)/ws(s) URL, with the scheme's default port when it has none."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme in ("https", "wss")
    host = parts.hostname or url
    return f"{host}:{parts.port or (443 if secure else 80)}"


class LinkWatch:
    """Wraps one ``ClientService``'s endpoint and retry policy, explaining the link's state.

    :param clock: ``IReactorTime``, for the log's rate limit.
    :param component: the link's readiness component (``set_down``/``set_up`` are the adapter's
        too: the watcher sets the reason while no connection is made).
    :param endpoint: the real client endpoint (or given to :meth:`client_service`).
    :param peer: how the endpoint is named in the reason and the log (``127.0.0.1:8081``).
    :param adapter: the adapter's name, first in each log line.
    :param retry_policy: ``f(failed attempts) -> seconds``, as ``ClientService`` takes it (or given
        to :meth:`client_service`).
    :param log_interval: seconds between two log lines once the first :data:`FIRST_LOGGED` of a
        run of failures have been logged.
    """

    def __init__(self, clock, component, endpoint=None, *, peer: str, adapter: str, retry_policy=None,
                 log_interval: float = 60.0, logger: Logger | None = None):
        self._clock = clock
        self.component = component
        self._endpoint = endpoint
        self.peer = peer
        self.adapter = adapter
        self._policy = retry_policy
        self._failures = RateLimitedLog(clock, logger or log, first=FIRST_LOGGED, interval=log_interval,
                                        more="; further failures are summarised")
        self._log = logger or log
        self.endpoint = _WatchedEndpoint(self)
        #: connection attempts since the last connection was made
        self.attempts = 0
        #: the last attempt's error (None once a connection is made)
        self.error: str | None = None

    def client_service(self, endpoint, factory, *, retryPolicy, **kwargs):
        """A ``ClientService`` for ``endpoint`` and ``retryPolicy`` (``kwargs`` as it takes them), watched."""
        from twisted.application.internet import ClientService

        self._endpoint, self._policy = endpoint, retryPolicy
        return ClientService(self.endpoint, factory, retryPolicy=self.retry_policy, **kwargs)

    def retry_policy(self, failed: int) -> float:
        """The wrapped policy's delay; the component says why and when the next attempt is."""
        delay = self._policy(failed)
        if self.error is not None:
            reason = f"connecting to {self.peer}: {self.error}; retry {self.attempts} in {_seconds(delay)} s"
            self.component.set_down(reason)
            self._note_failure(delay)
        return delay

    # -- from the endpoint -------------------------------------------------------------------

    def _attempt(self) -> None:
        self.attempts += 1
        reason = self.component.reason
        ours = reason == "not started" or reason.startswith("connecting to")
        if self.error is None and not self.component.up and ours:
            # The first attempt, or one after the adapter's own reason was replaced: say what is going on.
            self.component.set_down(f"connecting to {self.peer} (attempt {self.attempts})")

    def _connected(self) -> None:
        self._failures.close()  # what is still unsaid of this run of failures, then a new run
        if self.attempts > 1 and self.error is not None:
            self._log.info("{adapter}: connected to {peer} after {attempts} attempts",
                           adapter=self.adapter, peer=self.peer, attempts=self.attempts)
        self.attempts, self.error = 0, None

    def _failed(self, failure) -> None:
        self.error = describe_error(failure)

    def _note_failure(self, delay: float) -> None:
        self._failures.emit(
            "{adapter}: cannot connect to {peer}: {error} (attempt {attempt}); next attempt in {delay} s{more}",
            summary="{adapter}: still cannot connect to {peer}: {error}; {count} more failed attempts in the last"
                    " {seconds:.0f} s (attempt {attempt}); next attempt in {delay} s",
            adapter=self.adapter, peer=self.peer, error=self.error, attempt=self.attempts, delay=_seconds(delay),
        )


def _seconds(delay: float) -> str:
    """``4``, ``0.5``, ``2.4``: a delay to one decimal, without a trailing ``.0``."""
    return f"{round(delay, 1):g}"


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """The endpoint the ``ClientService`` connects through: the real one, with each attempt watched."""

    def __init__(self, watch: LinkWatch):
        self._watch = watch

    def connect(self, factory):
        watch = self._watch
        watch._attempt()
        d = watch._endpoint.connect(factory)

        def made(protocol):
            watch._connected()
            return protocol

        def failed(failure):
            watch._failed(failure)
            return failure

        return d.addCallbacks(made, failed)
