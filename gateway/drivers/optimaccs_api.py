"""The OptimaCCS outbound call API's REST side: placing and hanging up calls, with typed failures.

:class:`ProviderApi` speaks ``POST /pbx/call`` and ``POST /pbx/hangup`` with
the Bearer token through a treq ``HTTPClient`` (``treq.testing.StubTreq`` in
tests). A refusal becomes a :class:`ProviderError` carrying the HTTP status
and the provider's own message: :class:`Unauthorized` (401),
:class:`ValidationFailed` (422, with the provider's per-field ``errors``),
:class:`ProviderFailure` (500 and any other refusal), and :class:`BadReply` (a
reply the gateway cannot read: larger than :data:`MAX_REPLY_BYTES`, not JSON by
the boundary policy of :func:`gateway.boundary.load_json` -- lone surrogates,
``NaN``, nesting -- or not an object of the documented shape).

Each request, reply body included, has ``request_timeout`` seconds on the
given clock: a provider that answers the headers and then trickles (or stalls)
the body cannot hold a call in its request. Past it the connection is dropped
and the request fails with :class:`RequestTimedOut`.

All of them are :class:`ApiError` errors, whose ``kind`` (snake_case: ``unauthorized``,
``validation_failed``, ``provider_failure``, ``bad_reply``, ``timeout``) labels
``gateway_optimaccs_outbound_failed_total``, and
:class:`~gateway.core.errors.DriverError` subclasses, so the call core and the
admin API treat them like any driver failure.
"""

from __future__ import annotations

import urllib.parse

import attrs
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from gateway.core.errors import DriverError
from gateway.drivers import optimaccs_wire as wire

__all__ = [
    "ApiError",
    "BadReply",
    "MAX_REPLY_BYTES",
    "PlacedCall",
    "ProviderApi",
    "ProviderError",
    "ProviderFailure",
    "RequestTimedOut",
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


class ApiError(DriverError):
    """A request to the provider's API failed; ``kind`` labels it in ``gateway_optimaccs_outbound_failed_total``."""

    kind = "api_error"


class ProviderError(ApiError):
    """The provider's API refused a request: ``status`` (HTTP) and the provider's ``provider_message``."""

    kind = "provider_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(NAME, f"the provider answered {status}: {message}")
        self.status = status
        self.provider_message = message


class Unauthorized(ProviderError):
    """401: the token is missing or wrong."""

    kind = "unauthorized"


class ValidationFailed(ProviderError):
    """422: the provider rejected the request's fields; ``errors`` maps each field to its messages."""

    kind = "validation_failed"

    def __init__(self, status: int, message: str, errors: dict) -> None:
        super().__init__(status, message)
        self.errors = errors


class ProviderFailure(ProviderError):
    """500, or any other answer the gateway cannot use."""

    kind = "provider_failure"


class BadReply(ProviderFailure):
    """A reply that breaks the boundary policy or the documented shape (too big, not JSON, bad text, wrong types)."""

    kind = "bad_reply"


class RequestTimedOut(ApiError):
    """No complete reply (headers and body) within ``request_timeout``; ``status`` is the reply's HTTP status
    when its headers had come, else None."""

    kind = "timeout"

    def __init__(self, path: str, seconds: float, status: int | None) -> None:
        if status is None:
            what = "no reply"
        else:
            what = f"the provider answered {status} but its body did not end"
        super().__init__(NAME, f"POST {path}: no complete reply within {seconds:g} s ({what})")
        self.status = status


@attrs.frozen
class PlacedCall:
    """What ``POST /pbx/call`` answered."""

    phone_number: str
    session_id: str
    endpoint_url: str


def digits_only(number: str) -> str:
    """The number as the API wants it: ASCII digits only (``+62 811-23`` -> ``6281123``; ``"٣"``, ``"²"`` dropped)."""
    return "".join(c for c in number if c in "0123456789")


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
        """The request and its whole reply, body included, within ``request_timeout`` (RequestTimedOut)."""
        status: list[int] = []  # the reply's status, once its headers came

        def reply(response):
            status.append(response.code)
            return _body(response).addCallback(_decoded, response.code)

        def timed_out(result, seconds):
            if isinstance(result, Failure):  # cancelled by the timeout: the connection is dropped
                raise RequestTimedOut(path, seconds, status[0] if status else None)
            return result

        d = self._http.request("POST", self._base + path, json=body,
                               headers={**self.headers, "Accept": "application/json"})
        d.addCallback(reply)
        return d.addTimeout(self._config.request_timeout, self._clock, onTimeoutCancel=timed_out)


class _BodyReader(Protocol):
    """A reply's body into memory, at most MAX_REPLY_BYTES (a larger one: BadReply); cancelling ``done``
    drops the connection."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.parts: list[bytes] = []
        self.size = 0
        self.done = defer.Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > MAX_REPLY_BYTES:
            self.done.errback(BadReply(self.status, f"a reply larger than {MAX_REPLY_BYTES} bytes"))
            self._drop()
            return
        self.parts.append(data)

    def connectionLost(self, reason=None) -> None:
        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)

    def _cancel(self, done: defer.Deferred) -> None:
        done.errback(defer.CancelledError("the reply's body was not read in time"))
        self._drop()

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


def _body(response) -> defer.Deferred:
    """The reply's body, at most MAX_REPLY_BYTES (a larger one: BadReply, the connection dropped)."""
    reader = _BodyReader(response.code)
    response.deliverBody(reader)
    return reader.done


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
