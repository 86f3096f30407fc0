"""The admin HTTP site: health, readiness and metrics for probes, and the JSON API for people and tools.

:func:`make_site` builds the :class:`~twisted.web.server.Site` the daemon
listens with on ``[admin] listen``; its router becomes ``ctx.api`` so that
other rooms add their routes. Open to anyone who reaches the port:

- ``GET /healthz``: 200 ``{"status": "ok"}`` while the process runs;
- ``GET /readyz``: 200 ``{"ready": true}``, or 503 with what is not ready and why;
- ``GET /metrics``: ``ctx.metrics`` in the Prometheus text format.

Behind the bearer token:

- ``GET /api/status``: ``{name: obj.status()}`` for each entry of ``ctx.status``, plus ``adapters``
  (each adapter ``"on ..."`` or ``"off (why)"``), ``node`` and ``version``;
- ``GET /api/cdrs?since=ISO8601&limit=N``: ``{"cdrs": [...]}`` ended at or after ``since``, oldest first;
- ``GET /api/cdrs/{call_id}``: one CDR.

With ``[store] url = "postgresql://..."`` the store is the cluster's shared PostgreSQL database, so
``/api/cdrs`` on any node lists every node's CDRs. ``/api/cluster`` and the drain of a node are
added by :func:`gateway.admin.cluster.add_cluster_api`.

The live status page (``/status/``, its stream and ``POST /api/status/ticket``)
is added by :func:`gateway.admin.status_page.add_status_page`.

Before a request reaches the router, the site bounds what it reads
(:class:`AdminChannel`; ``[admin] max_body_size``, ``request_timeout``,
``max_connections``): once a request's headers are in, a body for ``/api``
without the bearer token is a 401 and a declared body over the cap a 413,
both before any of the body is read; a chunked body is cut with a 413 when it
passes the cap; a request whose line, headers and body have not all arrived
within ``request_timeout`` of its first byte is a 408; a connection past
``max_connections`` is a 503. Each of these closes the connection, and is
counted in ``gateway_admin_refused_total{reason}`` and logged rate-limited.
A body that is taken is kept in memory (it is at most ``max_body_size``),
never in a temporary file.
"""

from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO

from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

import gateway
from gateway.admin.api import ApiError, ApiRequest, ApiResponse, ApiRouter, error_response
from gateway.admin.cluster import add_cluster_api
from gateway.admin.status_page import add_status_page
from gateway.boundary import RateLimitedLog
from gateway.confschema import Secret
from gateway.metrics import define_metric
from gateway.store import MAX_LIMIT, normalize_timestamp

__all__ = ["AdminChannel", "AdminRequest", "AdminSite", "make_site"]

log = Logger()

DEFAULT_LIMIT = 100

#: seconds a refused request's connection is kept half-closed, its input read and dropped, before it is cut
REFUSAL_LINGER = 5.0

#: the reasons of ``gateway_admin_refused_total``
REFUSED_REASONS = ("unauthorized_body", "bad_path", "body_too_large", "request_timeout", "too_many_connections")


def refused_counter(registry) -> Counter:
    return define_metric(
        registry, Counter, "admin_refused",
        "Admin HTTP requests refused before they were read whole, and connections refused, by reason.",
        ("reason",),
    )


class AdminRequest(Request):
    """A request whose body is kept in memory: the channel never lets more than the site's cap in."""

    _received = 0

    def gotLength(self, length):
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        limit = self.channel.site.max_body_size
        if self._received > limit:  # a chunked body (a declared length over the cap never gets here)
            self.channel.refuse(
                ApiError(413, f"the request body is larger than {limit} bytes"),
                "body_too_large", f"a chunked body past {limit} bytes",
            )
            return
        self.content.write(data)


class AdminChannel(HTTPChannel):
    """An HTTP/1.1 channel that screens each request at its headers and gives it a deadline.

    ``site`` (an :class:`AdminSite`) is set by the site when it builds the channel.
    """

    _deadline = None
    _refused = False
    _counted = False
    _dropped = 0
    _paused = False

    def connectionMade(self):
        super().connectionMade()
        self.site.open_channels += 1
        self._counted = True

    def connectionLost(self, reason):
        self._cancel_deadline()
        if self._counted:
            self._counted = False
            self.site.open_channels -= 1
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            self._drop(data)
            return
        if data and self._deadline is None and not self._handlingRequest:
            # the first byte of a request: its line, headers and body must all be in by the deadline
            self._deadline = self.callLater(self.site.request_timeout, self._too_slow)
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:  # the rest of a refused request's body is dropped unread
            self._drop(data)
            return
        super().rawDataReceived(data)

    def _drop(self, data: bytes) -> None:
        """Input after a refusal: dropped; past ``max_body_size`` of it, reading stops until the cut."""
        self._dropped += len(data)
        if self._dropped > self.site.max_body_size and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def allHeadersReceived(self):
        if self.length != 0:  # a body follows (a length, or chunked: None)
            if self._screen():
                return
        super().allHeadersReceived()

    def allContentReceived(self):
        self._cancel_deadline()
        super().allContentReceived()

    def _screen(self) -> bool:
        """Refuse a request with a body that will not be taken anyway; True if refused."""
        request = self.requests[-1]
        authorization = request.requestHeaders.getRawHeaders(b"authorization", [None])[0]
        try:
            self.site.resource.screen(self._command, self._path, authorization, self.site.peer_of(self))
        except ApiError as error:
            self.refuse(error, "unauthorized_body" if error.http_status == 401 else "bad_path", None)
            return True
        limit = self.site.max_body_size
        if self.length is not None and self.length > limit:
            self.refuse(ApiError(413, f"the request body is larger than {limit} bytes"), "body_too_large",
                        f"a declared body of {self.length} bytes, over {limit}")
            return True
        return False

    def _too_slow(self) -> None:
        self._deadline = None
        timeout = self.site.request_timeout
        self.refuse(ApiError(408, f"the request did not arrive whole within {timeout:g} seconds"),
                    "request_timeout", f"the request was not in whole within {timeout:g} s")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def refuse(self, error: ApiError, reason: str, problem: str | None) -> None:
        """Answer ``error`` and close the connection.

        ``problem`` (logged rate-limited, naming the peer) is None when the router logged it already
        (a refused token). Over TCP the gateway closes its side after the answer and, for
        :data:`REFUSAL_LINGER` seconds, reads and drops what the peer still sends, up to
        ``max_body_size`` bytes (so that a peer busy sending a body gets the answer rather than a
        reset, without making the gateway read a flood), then cuts the connection.
        """
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        self.setTimeout(None)
        self.site.refused(reason, self.site.peer_of(self), problem)
        status, headers, body = error_response(error)
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, RESPONSES.get(status, b"Error"))]
        headers = {**headers, "Content-Length": str(len(body)), "Connection": "close"}
        lines += [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items()]
        self.transport.writeSequence([*lines, b"\r\n", body])
        self._networkProducer.unregisterProducer()
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
        else:
            self.transport.loseConnection()
        self._abortingCall = self.callLater(REFUSAL_LINGER, self._cut)

    def _cut(self) -> None:
        """The end of a refused connection's linger (logged with the refusal already, not again)."""
        self._abortingCall = None
        self.transport.abortConnection()


class _Busy(Protocol):
    """A connection past ``max_connections``: one 503, then closed."""

    def connectionMade(self):
        status, headers, body = error_response(ApiError(503, "too many connections are open; try again later"))
        headers = {**headers, "Content-Length": str(len(body)), "Connection": "close", "Retry-After": "5"}
        lines = [b"HTTP/1.1 503 Service Unavailable\r\n"]
        lines += [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items()]
        self.transport.writeSequence([*lines, b"\r\n", body])
        self.transport.loseConnection()


class AdminSite(Site):
    """A Site without twisted.web's access log line per request (probes and scrapes would flood the log).

    The router logs what matters itself: refused tokens (with the peer) and errors.
    ``streams`` (exact path -> resource) are served beside the router, which
    answers each request once: the status page's event stream stays open.
    """

    protocol = AdminChannel
    requestFactory = AdminRequest

    def __init__(self, router, streams: Mapping[bytes, Resource] | None = None, *, max_body_size: int = 1048576,
                 request_timeout: float = 30.0, max_connections: int = 256, metrics=None, **kwargs):
        super().__init__(router, **kwargs)
        self.streams = dict(streams or {})
        self.max_body_size = max_body_size
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        #: channels open now (each AdminChannel counts itself in and out)
        self.open_channels = 0
        self._refused_total = refused_counter(metrics) if metrics is not None else None
        self._refusals = RateLimitedLog(self.reactor, log)

    def buildProtocol(self, addr):
        if self.open_channels >= self.max_connections:
            self.refused("too_many_connections", _address(addr), f"{self.max_connections} connections are open")
            return _Busy()
        return super().buildProtocol(addr)

    @staticmethod
    def peer_of(channel) -> str:
        return _address(channel.transport.getPeer())

    def refused(self, reason: str, peer: str, problem: str | None) -> None:
        """Count a refusal; log it (rate-limited) unless ``problem`` is None (logged already)."""
        if self._refused_total is not None:
            self._refused_total.labels(reason=reason).inc()
        if problem is not None:
            self._refusals.emit(
                "admin HTTP refused {peer}: {problem}{more}", peer=peer, problem=problem,
                summary="admin HTTP refused {count} more requests or connections in {seconds:.0f} s "
                        "(the latest from {peer}: {problem})",
            )

    def stopFactory(self):
        self._refusals.close()
        super().stopFactory()

    def getResourceFor(self, request):
        resource = super().getResourceFor(request)
        return self.streams.get(request.path, resource)

    def log(self, request) -> None:
        """No access log line."""


def make_site(ctx, token: Secret) -> Site:
    """The admin site for ``ctx``; its router is stored as ``ctx.api``."""
    router = ApiRouter(token)
    endpoints = _Endpoints(ctx)
    router.route("GET", "/healthz", endpoints.healthz)
    router.route("GET", "/readyz", endpoints.readyz)
    router.route("GET", "/metrics", endpoints.metrics)
    router.route("GET", "/api/status", endpoints.status)
    router.route("GET", "/api/cdrs", endpoints.cdrs)
    router.route("GET", "/api/cdrs/{call_id}", endpoints.cdr)
    add_cluster_api(ctx, router)
    ctx.api = router
    admin = ctx.config.admin
    return AdminSite(router, add_status_page(ctx, router), reactor=ctx.reactor, max_body_size=admin.max_body_size,
                     request_timeout=admin.request_timeout, max_connections=admin.max_connections,
                     metrics=ctx.metrics)


class _Endpoints:
    """The handlers of the admin site's own routes, reading ``ctx`` at request time."""

    def __init__(self, ctx):
        self._ctx = ctx

    def healthz(self, request: ApiRequest) -> dict:
        return {"status": "ok"}

    def readyz(self, request: ApiRequest) -> ApiResponse:
        not_ready = self._ctx.readiness.not_ready()
        if not_ready:
            return ApiResponse(503, {"ready": False, "not_ready": not_ready})
        return ApiResponse(200, {"ready": True})

    def metrics(self, request: ApiRequest) -> ApiResponse:
        return ApiResponse(200, generate_latest(self._ctx.metrics), {"Content-Type": CONTENT_TYPE_LATEST})

    def status(self, request: ApiRequest) -> dict:
        adapters = {name: obj.status() for name, obj in self._ctx.status.items()}
        return {**adapters, "adapters": dict(self._ctx.adapters), "node": self._ctx.config.gateway.node,
                "version": gateway.__version__}

    def cdrs(self, request: ApiRequest):
        since, limit = _since(request.query.get("since")), _limit(request.query.get("limit"))
        return self._ctx.store.cdrs(since=since, limit=limit).addCallback(lambda cdrs: {"cdrs": cdrs})

    def cdr(self, request: ApiRequest):
        call_id = request.params["call_id"]
        return self._ctx.store.cdr(call_id).addCallback(_found, f"no CDR for call {call_id!r}")


def _since(text: str | None) -> str | None:
    if not text:
        return None
    try:
        normalize_timestamp(text)
    except ValueError as e:
        raise ApiError(400, str(e), field="since") from None
    return text


def _limit(text: str | None) -> int:
    if not text:
        return DEFAULT_LIMIT
    if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT:
        return int(text)
    raise ApiError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}, got {text!r}", field="limit")


def _address(address) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


def _found(value, message: str):
    if value is None:
        raise ApiError(404, message)
    return value
