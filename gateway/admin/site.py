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

The live status page (``/status/``, its stream and ``POST /api/status/ticket``)
is added by :func:`gateway.admin.status_page.add_status_page`.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Site

import gateway
from gateway.admin.api import ApiError, ApiRequest, ApiResponse, ApiRouter
from gateway.admin.status_page import add_status_page
from gateway.confschema import Secret
from gateway.store import MAX_LIMIT, normalize_timestamp

__all__ = ["make_site"]

DEFAULT_LIMIT = 100


class AdminSite(Site):
    """A Site without twisted.web's access log line per request (probes and scrapes would flood the log).

    The router logs what matters itself: refused tokens (with the peer) and errors.
    ``streams`` (exact path -> resource) are served beside the router, which
    answers each request once: the status page's event stream stays open.
    """

    def __init__(self, router, streams: Mapping[bytes, Resource] | None = None, **kwargs):
        super().__init__(router, **kwargs)
        self.streams = dict(streams or {})

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
    ctx.api = router
    return AdminSite(router, add_status_page(ctx, router), reactor=ctx.reactor)


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


def _found(value, message: str):
    if value is None:
        raise ApiError(404, message)
    return value
