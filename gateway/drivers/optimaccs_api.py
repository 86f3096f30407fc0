"""The OptimaCCS outbound call API's REST side: placing and hanging up calls, with typed failures.

:class:`ProviderApi` speaks ``POST /pbx/call`` and ``POST /pbx/hangup`` with
the Bearer token through a treq ``HTTPClient`` (``treq.testing.StubTreq`` in
tests). A refusal becomes a :class:`ProviderError` carrying the HTTP status
and the provider's own message: :class:`Unauthorized` (401),
:class:`ValidationFailed` (422, with the provider's per-field ``errors``),
:class:`ProviderFailure` (500 and any other refusal), and :class:`BadReply` (a
reply the gateway cannot read: larger than :data:`MAX_REPLY_BYTES`, not JSON by
the boundary policy of :func:`gateway.boundary.load_json` -- lone surrogates,
``NaN``, nesting -- or not an object of the documented shape). They are
:class:`~gateway.core.errors.DriverError` subclasses, so the call core and the
admin API treat them like any driver failure.
"""

from __future__ import annotations

import urllib.parse

import attrs
import treq
from twisted.internet import defer

from gateway.core.errors import DriverError
from gateway.drivers import optimaccs_wire as wire

__all__ = [
    "BadReply",
    "MAX_REPLY_BYTES",
    "PlacedCall",
    "ProviderApi",
    "ProviderError",
    "ProviderFailure",
    "Unauthorized",
    "ValidationFailed",
    "digits_only",
    "media_url",
]

NAME = "optimaccs"
#: how much of an unexpected reply body goes into an error message
_EXCERPT = 200
#: the longest provider message kept in an error
_MAX_MESSAGE = 300
#: the largest reply body read (the API's replies are a few hundred bytes); a larger one is a BadReply
MAX_REPLY_BYTES = 65536


class ProviderError(DriverError):
    """The provider's API refused a request: ``status`` (HTTP) and the provider's ``provider_message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(NAME, f"the provider answered {status}: {message}")
        self.status = status
        self.provider_message = message


class Unauthorized(ProviderError):
    """401: the token is missing or wrong."""


class ValidationFailed(ProviderError):
    """422: the provider rejected the request's fields; ``errors`` maps each field to its messages."""

    def __init__(self, status: int, message: str, errors: dict) -> None:
        super().__init__(status, message)
        self.errors = errors


class ProviderFailure(ProviderError):
    """500, or any other answer the gateway cannot use."""


class BadReply(ProviderFailure):
    """A reply that breaks the boundary policy or the documented shape (too big, not JSON, bad text, wrong types)."""


class _TooBig(Exception):
    pass


@attrs.frozen
class PlacedCall:
    """What ``POST /pbx/call`` answered."""

    phone_number: str
    session_id: str
    endpoint_url: str


def digits_only(number: str) -> str:
    """The number as the API wants it: digits only (``+62 811-23`` -> ``6281123``)."""
    return "".join(c for c in number if c.isdigit())


def media_url(endpoint_url: str, session_id: str) -> str:
    """The call's media WebSocket: ``/ws/{sessionId}`` on the host of ``endpointUrl`` (ws for http, wss for https)."""
    parts = urllib.parse.urlsplit(endpoint_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise BadReply(200, f"endpointUrl {endpoint_url!r} is not a ws(s):// or http(s):// URL")
    return urllib.parse.urlunsplit((scheme, parts.netloc, f"/ws/{urllib.parse.quote(session_id, safe='')}", "", ""))


class ProviderApi:
    """``POST /pbx/call`` and ``POST /pbx/hangup`` of one account."""

    def __init__(self, http, clock, config, codec: str) -> None:
        """``http``: a treq HTTPClient (or StubTreq); ``config``: ``OptimaccsOutboundConfig``;
        ``codec``: the audio format asked for in both directions."""
        self._http = http
        self._clock = clock
        self._config = config
        self._codec = codec
        self._base = config.api_url.rstrip("/")

    @property
    def headers(self) -> dict:
        """The Authorization header, for the media WebSocket too."""
        return {"Authorization": f"Bearer {self._config.token.reveal()}"}

    def place_call(self, number: str, caller_id: str | None = None) -> defer.Deferred:
        """Ask the provider to call ``number``; fires with a :class:`PlacedCall` or fails with ProviderError."""
        body = {
            "phoneNumber": digits_only(number),
            "timeout": self._config.ring_timeout,
            "audio": {"input": self._codec, "output": self._codec},
        }
        caller_id = caller_id or self._config.caller_id
        if caller_id:
            body["callerId"] = caller_id
        return self._post("/pbx/call", body).addCallback(_placed)

    def hangup(self, session_id: str) -> defer.Deferred:
        """Ask the provider to end the call; fires with None or fails with ProviderError."""
        return self._post("/pbx/hangup", {"sessionId": session_id}).addCallback(lambda _: None)

    def _post(self, path: str, body: dict) -> defer.Deferred:
        d = self._http.request(
            "POST", self._base + path, json=body,
            headers={**self.headers, "Accept": "application/json"},
            timeout=self._config.request_timeout, reactor=self._clock,
        )
        d.addCallback(lambda response: _body(response).addCallback(_decoded, response.code))
        return d


def _body(response) -> defer.Deferred:
    """The reply's body, at most MAX_REPLY_BYTES (a larger one: BadReply, the connection dropped)."""
    parts: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > MAX_REPLY_BYTES:
            raise _TooBig()
        parts.append(data)

    def too_big(failure):
        failure.trap(_TooBig)
        raise BadReply(response.code, f"a reply larger than {MAX_REPLY_BYTES} bytes")

    return treq.collect(response, collect).addCallbacks(lambda _: b"".join(parts), too_big)


def _decoded(content: bytes, status: int) -> dict:
    """A reply's JSON object if the status is 2xx; the matching ProviderError otherwise."""
    try:
        reply = wire.load(content)
    except wire.BadMessage as error:
        excerpt = content[:_EXCERPT].decode("utf-8", "replace")
        raise BadReply(status, f"a reply that is not valid JSON ({error}): {excerpt!r}") from None
    if not isinstance(reply, dict):
        excerpt = content[:_EXCERPT].decode("utf-8", "replace")
        raise BadReply(status, f"a reply that is not a JSON object: {excerpt!r}")
    if 200 <= status < 300:
        return reply
    message = _message(reply)
    if status == 401:
        raise Unauthorized(status, message)
    if status == 422:
        errors = reply.get("errors")
        raise ValidationFailed(status, message, errors if isinstance(errors, dict) else {})
    raise ProviderFailure(status, message)


def _message(reply: dict) -> str:
    """The provider's readable reason: ``errors`` when it is text, else ``message`` and the field errors."""
    errors, message = reply.get("errors"), reply.get("message")
    if isinstance(errors, str) and errors:
        return _short(errors)
    text = message if isinstance(message, str) and message else "no message"
    if isinstance(errors, dict) and errors:
        fields = "; ".join(f"{name}: {' '.join(map(str, problems)) if isinstance(problems, list) else problems}"
                           for name, problems in errors.items())
        text = f"{text} ({fields})"
    return _short(text)


def _short(text: str) -> str:
    """The provider's message, cut to a length a log line and a leg's failure reason can carry."""
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def _placed(reply: dict) -> PlacedCall:
    data = reply.get("data")
    fields = {}
    for name in ("phoneNumber", "sessionId", "endpointUrl"):
        value = data.get(name) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise BadReply(200, f"the call was placed but the reply has no {name} string")
        fields[name] = value
    return PlacedCall(fields["phoneNumber"], fields["sessionId"], fields["endpointUrl"])
