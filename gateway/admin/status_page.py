"""The status page on the admin site: the page itself, its stream tickets and its event stream.

:func:`add_status_page` adds these to the admin router, except the event
stream, which it returns for the site to serve beside the router:

- ``GET /`` and ``GET /status``: redirect to ``/status/``;
- ``GET /status/`` and ``GET /status/{asset}``: the page, its script and its
  style (files of ``gateway/admin/static``, no external asset, no build step);
- ``POST /api/status/ticket`` (behind the bearer token, no body): ``{"ticket", "expires_in"}``,
  a single-use ticket for the stream, valid :data:`TICKET_TTL` seconds;
- ``GET /status/events?ticket=T``: the live feed as server-sent events
  (:mod:`gateway.admin.status_feed`); 401 without a valid ticket, 503 when
  :data:`~gateway.admin.status_feed.MAX_STREAMS` are open already.

Why tickets: the page keeps the admin token in ``sessionStorage`` and sends it
only in an ``Authorization`` header, but a browser's ``EventSource`` cannot
send headers. Putting the token itself in the stream's URL would leak it into
proxy logs and browser history; a ticket there is worth nothing a moment later,
since it expires in seconds and is spent by the stream it opens. The page asks
for a new one each time it (re)connects.
"""

from __future__ import annotations

import importlib.resources
import secrets

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gateway.admin.api import ApiResponse, _peer, encode
from gateway.admin.status_feed import EventStream, StatusFeed

__all__ = ["STREAM_PATH", "TICKET_TTL", "Tickets", "add_status_page"]

log = Logger()

STREAM_PATH = b"/status/events"
#: seconds a stream ticket stays valid
TICKET_TTL = 30.0
#: tickets outstanding at once; the oldest is dropped for a new one beyond this
MAX_TICKETS = 64

#: asset name -> Content-Type; "" is the page
ASSETS = {
    "": ("status.html", "text/html; charset=utf-8"),
    "status.js": ("status.js", "text/javascript; charset=utf-8"),
    "status.css": ("status.css", "text/css; charset=utf-8"),
}

#: the page loads its own script, style and stream and nothing else, and cannot be framed
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Tickets:
    """Single-use stream tickets that expire ``ttl`` seconds after they were issued."""

    def __init__(self, clock, ttl: float = TICKET_TTL, limit: int = MAX_TICKETS):
        self._clock = clock
        self._ttl = ttl
        self._limit = limit
        self._expiry: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._expiry)

    def issue(self) -> str:
        now = self._clock.seconds()
        self._expiry = {t: until for t, until in self._expiry.items() if until > now}
        while len(self._expiry) >= self._limit:
            del self._expiry[next(iter(self._expiry))]
        ticket = secrets.token_urlsafe(32)
        self._expiry[ticket] = now + self._ttl
        return ticket

    def redeem(self, ticket: str) -> bool:
        """True (once) for a ticket issued here that has not expired."""
        until = self._expiry.pop(ticket, None)
        return until is not None and self._clock.seconds() < until


def _load_assets() -> dict[str, ApiResponse]:
    static = importlib.resources.files(__package__).joinpath("static")
    return {
        name: ApiResponse(200, static.joinpath(filename).read_bytes(), {"Content-Type": kind, **PAGE_HEADERS})
        for name, (filename, kind) in ASSETS.items()
    }


def _redirect(location: str):
    def handler(request) -> ApiResponse:
        return ApiResponse(302, b"", {"Location": location, "Content-Type": "text/plain"})

    return handler


def add_status_page(ctx, router) -> dict[bytes, Resource]:
    """Add the page's routes to ``router``; returns the path the site serves beside it: the event stream."""
    tickets = Tickets(ctx.reactor)
    assets = _load_assets()
    router.route("GET", "/", _redirect("status/"))
    router.route("GET", "/status", _redirect("status/"))
    router.route("GET", "/status/", lambda request: assets[""])
    router.route("GET", "/status/{asset}", lambda request: _asset(assets, request.params["asset"]))
    router.route("POST", "/api/status/ticket", lambda request: _ticket(tickets, request))
    return {STREAM_PATH: StreamResource(StatusFeed(ctx), tickets)}


def _ticket(tickets: Tickets, request) -> dict:
    """A new ticket; the request takes no body (empty or ``{}``: anything else is a 400, no ticket)."""
    request.no_body()
    return {"ticket": tickets.issue(), "expires_in": TICKET_TTL}


def _asset(assets: dict[str, ApiResponse], name: str) -> ApiResponse:
    if name and name in assets:
        return assets[name]
    return ApiResponse(404, {"error": "not_found", "message": f"no asset {name!r}"})


class StreamResource(Resource):
    """``GET /status/events?ticket=T``: opens an :class:`EventStream` on ``feed`` for a valid ticket."""

    isLeaf = True

    def __init__(self, feed: StatusFeed, tickets: Tickets):
        super().__init__()
        self.feed = feed
        self._tickets = tickets

    def render_GET(self, request):
        peer = _peer(request)
        ticket = request.args.get(b"ticket", [b""])[0].decode("ascii", "replace")
        if not self._tickets.redeem(ticket):
            log.warn("status stream refused to {peer}: {reason}", peer=peer,
                     reason="no ticket" if not ticket else "an unknown, spent or expired ticket")
            return self._refuse(request, 401, "unauthorized", "a fresh ticket from POST /api/status/ticket is required")
        if self.feed.full:
            log.warn("status stream refused to {peer}: too many streams open", peer=peer)
            return self._refuse(request, 503, "service_unavailable", "too many status streams are open")
        EventStream(request, self.feed, peer).open()
        return NOT_DONE_YET

    @staticmethod
    def _refuse(request, status: int, code: str, message: str) -> bytes:
        status, headers, body = encode(ApiResponse(status, {"error": code, "message": message}))
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body
