"""The admin HTTP server's router: JSON handlers by method and path, a bearer token on ``/api``.

The admin site serves every path through one :class:`ApiRouter`, which it
stores as ``ctx.api`` so that rooms add their own routes::

    ctx.api.route("POST", "/api/calls/{id}/{action}", handle_call_action)

A handler takes an :class:`ApiRequest` and returns a JSON-able value (sent
with 200), an :class:`ApiResponse` (another status, headers, or raw bytes
such as a page or metrics text), or a Deferred or coroutine of one. It
refuses a request by raising :class:`ApiError` or any exception carrying
``http_status`` and ``code`` (the call core's errors do); the client gets
``{"error": code, "message": ...}``. Anything else is a bug: the client gets
a JSON 500 naming an error id and the traceback is logged under that id.

Every path under ``/api`` needs ``Authorization: Bearer <token>``, checked
before anything else, so a client without the token learns nothing, not even
which paths exist. Other paths (health, readiness, metrics) are open. The
admin site asks :meth:`ApiRouter.screen` as soon as a request's headers are
in, so that a body sent without the token is refused before it is read.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gateway.boundary import PeerDataError, bad_text_field, load_json, sanitise
from gateway.confschema import Secret

__all__ = ["ApiError", "ApiRequest", "ApiResponse", "ApiRouter"]

log = Logger()

JSON_CONTENT_TYPE = "application/json; charset=utf-8"

#: the paths that need the bearer token: /api and everything below it
PROTECTED_PREFIX = "api"

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")


def error_code(status: int) -> str:
    """The short code for an HTTP status: 404 -> ``not_found``."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


class ApiError(Exception):
    """A request the API refuses: rendered as ``{"error": code, "message": message, **details}``.

    ``code`` defaults to the status's name (``bad_request``, ``not_found``);
    ``headers`` go into the response (``Allow``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **details: Any,
    ):
        super().__init__(message)
        self.http_status = status
        self.code = code or error_code(status)
        self.message = message
        self.headers = dict(headers or {})
        self.details = details


@attrs.frozen
class ApiResponse:
    """A response other than "200 with this JSON": a status, and bytes when the body is not JSON.

    A ``bytes`` body is sent as it is, with the ``Content-Type`` of ``headers``.
    """

    status: int
    body: Any
    headers: Mapping[str, str] = attrs.field(factory=dict)


_UNREAD = object()


@attrs.define
class ApiRequest:
    """What a handler gets: the method, the decoded path, its parameters and query, the raw request."""

    method: str
    path: str
    #: the ``{name}`` segments of the route's pattern, percent-decoded
    params: dict[str, str]
    #: the first value of each query argument (the body's form fields are not mixed in)
    query: dict[str, str]
    #: the :class:`twisted.web.server.Request`
    raw: Any
    _json: Any = attrs.field(default=_UNREAD, init=False, repr=False)

    def json(self, known: Iterable[str] | None = None) -> dict:
        """The body as a JSON object; ``ApiError`` 400 if it is not one. The Content-Type is not checked.

        The body goes through :func:`gateway.boundary.load_json` (strict UTF-8,
        no lone surrogates, finite numbers, bounded depth): a refusal names the
        field. ``known``: the keys the endpoint reads; any other key is a 400
        naming it, the same rule as the configuration's (a typo such as
        ``duration`` for ``duration_ms`` must not be silently ignored).
        """
        if self._json is _UNREAD:
            self.raw.content.seek(0)
            try:
                value = load_json(self.raw.content.read())
            except PeerDataError as e:
                raise ApiError(400, f"the body is not acceptable JSON: {e}", **_field(e.field)) from None
            if not isinstance(value, dict):
                raise ApiError(400, f"the body must be a JSON object, got {type(value).__name__}")
            self._json = value
        if known is not None:
            known = set(known)
            unknown = sorted(key for key in self._json if key not in known)
            if unknown:
                raise ApiError(
                    400,
                    f"unknown key {unknown[0]!r} (known keys here: {', '.join(sorted(known)) or 'none'})",
                    field=unknown[0],
                )
        return self._json

    def no_body(self) -> None:
        """For an endpoint that takes no body: none, or an empty JSON object; a 400 naming any key otherwise."""
        self.raw.content.seek(0)
        if self.raw.content.read().strip():
            self.json(known=())


def _field(name: str | None) -> dict:
    return {"field": name} if name else {}


Handler = Callable[[ApiRequest], Any]


@attrs.frozen
class _Route:
    method: str
    pattern: str
    #: literal segments, and None where the pattern has a parameter
    segments: tuple[str | None, ...]
    names: tuple[str, ...]
    handler: Handler

    @classmethod
    def parse(cls, method: str, pattern: str, handler: Handler) -> "_Route":
        if not pattern.startswith("/"):
            raise ValueError(f"a route pattern starts with '/', got {pattern!r}")
        segments, names = [], []
        for part in pattern[1:].split("/"):
            param = _PARAM.match(part)
            if param:
                names.append(param.group(1))
            elif "{" in part or "}" in part:
                raise ValueError(f"bad parameter {part!r} in route pattern {pattern!r}")
            segments.append(None if param else part)
        if len(set(names)) != len(names):
            raise ValueError(f"a parameter name repeats in route pattern {pattern!r}")
        return cls(method.upper(), pattern, tuple(segments), tuple(names), handler)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The parameters if ``segments`` (a decoded path) fits this pattern, else None."""
        if len(segments) != len(self.segments):
            return None
        values = []
        for want, got in zip(self.segments, segments):
            if want is None and got:
                values.append(got)
            elif want != got:
                return None
        return dict(zip(self.names, values))


def _peer(request) -> str:
    address = request.getClientAddress()
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


def _split_path(raw_path: bytes) -> list[str]:
    """``/api/calls/a%2Fb`` -> ``["api", "calls", "a/b"]``; ApiError 400 when not UTF-8."""
    try:
        return [urllib.parse.unquote_to_bytes(part).decode("utf-8") for part in raw_path.split(b"/")[1:]]
    except UnicodeDecodeError:
        raise ApiError(400, "the request path is not UTF-8") from None


def _parse_query(uri: bytes) -> dict[str, str]:
    query = {}
    try:
        pairs = urllib.parse.parse_qsl(uri.partition(b"?")[2].decode("ascii"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, "the query string is not UTF-8") from None
    for key, value in pairs:
        query.setdefault(key, value)
    return query


def encode(response: ApiResponse, **json_options: Any) -> tuple[int, dict[str, str], bytes]:
    """A response as status, headers and body bytes; raises if the body is not JSON-able.

    The body is always valid UTF-8 JSON: content that cannot be encoded as it
    is (a lone surrogate or a NaN that got into a call's data somehow) is sent
    through :func:`gateway.boundary.sanitise` (visibly escaped) and logged,
    rather than turning a listing of every call into a 500.
    """
    headers = {"Cache-Control": "no-store", **response.headers}
    if isinstance(response.body, bytes):
        headers.setdefault("Content-Type", "application/octet-stream")
        return response.status, headers, response.body
    try:
        body = _dumps(response.body, json_options)
    except (UnicodeEncodeError, ValueError):
        clean, changed = sanitise(response.body)
        if not changed:
            raise
        log.warn(
            "admin API: a response held text or numbers JSON cannot carry (first at {field}); sent escaped",
            field=bad_text_field(response.body) or "a non-finite number",
        )
        body = _dumps(clean, json_options)
    headers["Content-Type"] = JSON_CONTENT_TYPE
    return response.status, headers, body


def error_response(error) -> tuple[int, dict[str, str], bytes]:
    """The response for a refusal (an :class:`ApiError`, or an error with ``http_status`` and ``code``)."""
    body = {**getattr(error, "details", {}), "error": error.code, "message": getattr(error, "message", str(error))}
    return encode(ApiResponse(error.http_status, body, getattr(error, "headers", {})), default=repr)


def _dumps(value: Any, json_options: dict) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, **json_options).encode("utf-8")


class ApiRouter(Resource):
    """The admin site's only resource: dispatches every request to the route that matches it."""

    isLeaf = True

    def __init__(self, token: Secret):
        super().__init__()
        if not token:
            raise ValueError("the admin API needs a non-empty token")
        self._token = token.reveal().encode("utf-8")
        self._routes: list[_Route] = []

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """Serve ``method`` on ``pattern`` (``/api/calls/{id}``; a ``{name}`` is one path segment).

        Routes are tried in the order they were added; the same method and
        pattern twice is a ``ValueError``.
        """
        new = _Route.parse(method, pattern, handler)
        if any((r.method, r.segments) == (new.method, new.segments) for r in self._routes):
            raise ValueError(f"{new.method} {pattern} is routed already")
        self._routes.append(new)

    def render(self, request) -> object:
        lost: list = []
        request.notifyFinish().addErrback(lost.append)
        d = maybeDeferred(self._respond, request)
        d.addCallback(encode)
        d.addErrback(self._refusal, request)
        d.addCallback(self._send, request, lost)
        d.addErrback(self._send_failed, request)
        return NOT_DONE_YET

    def _respond(self, request) -> Deferred:
        segments = _split_path(request.path)
        if segments[0] == PROTECTED_PREFIX:
            self._authenticate(request.method, request.path, request.getHeader(b"authorization"), _peer(request))
        route, params = self._resolve(request.method.decode("ascii", "replace"), segments)
        api_request = ApiRequest(
            method=route.method,
            path="/" + "/".join(segments),
            params=params,
            query=_parse_query(request.uri),
            raw=request,
        )
        d = maybeDeferred(route.handler, api_request)
        d.addCallback(lambda value: value if isinstance(value, ApiResponse) else ApiResponse(200, value))
        return d

    def screen(self, method: bytes, path: bytes, authorization: bytes | None, peer: str) -> None:
        """What the site asks before it reads a request's body: ApiError 401 (logged) for a path under
        ``/api`` without the bearer token, 400 for a path that is not UTF-8; None when the body may come.

        ``path``: the request target as sent (its query is ignored); ``authorization``: the header's value.
        """
        segments = _split_path(path.partition(b"?")[0])
        if segments[0] == PROTECTED_PREFIX:
            self._authenticate(method, path.partition(b"?")[0], authorization, peer)

    def _authenticate(self, method: bytes, path: bytes, header: bytes | None, peer: str) -> None:
        if header is None:
            reason = "no bearer token"
        else:
            scheme, _, credentials = header.strip().partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token):
                return
            reason = "a wrong bearer token"
        log.warn(
            "admin API refused {method} {path} from {peer}: {reason}",
            method=method.decode("ascii", "replace"),
            path=path.decode("ascii", "replace"),
            peer=peer,
            reason=reason,
        )
        raise ApiError(401, "a valid bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="gateway"'})

    def _resolve(self, method: str, segments: list[str]) -> tuple[_Route, dict[str, str]]:
        allowed = []
        for route in self._routes:
            params = route.match(segments)
            if params is None:
                continue
            if route.method == method:
                return route, params
            allowed.append(route.method)
        if allowed:
            raise ApiError(405, f"{method} is not allowed here", headers={"Allow": ", ".join(sorted(set(allowed)))})
        raise ApiError(404, "no such path")

    def _refusal(self, failure, request) -> tuple[int, dict[str, str], bytes]:
        """The response for a failed request: the error's own status, or 500 with a logged id."""
        error = failure.value
        status, code = getattr(error, "http_status", None), getattr(error, "code", None)
        if not (isinstance(status, int) and isinstance(code, str)):
            return self._internal_error(failure, request)
        if status >= 500:
            log.warn(
                "admin API {method} {path} from {peer} failed: {error}",
                method=request.method.decode("ascii", "replace"),
                path=request.path.decode("ascii", "replace"),
                peer=_peer(request),
                error=error,
            )
        return error_response(error)

    def _internal_error(self, failure, request) -> tuple[int, dict[str, str], bytes]:
        error_id = secrets.token_hex(6)
        log.failure(
            "admin API {method} {path} from {peer} failed (error id {error_id})",
            failure,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
            peer=_peer(request),
            error_id=error_id,
        )
        body = {"error": "internal", "message": f"internal error, see the log (id {error_id})"}
        return encode(ApiResponse(500, body))

    def _send(self, response: tuple[int, dict[str, str], bytes], request, lost: list) -> None:
        if lost:  # the client has gone; there is nobody to answer
            return
        status, headers, body = response
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        request.setHeader("Content-Length", str(len(body)))
        request.write(body)
        request.finish()

    def _send_failed(self, failure, request) -> None:
        log.failure("admin API could not answer {peer}", failure, peer=_peer(request))
        request.loseConnection()
