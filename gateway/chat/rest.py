"""The chat server's REST API (spec 003) through treq: ``init`` and ``transcript``.

A request answered 500, 502, 503 or 504, or not answered at all (refused, reset, timed out), is
made again after a backoff delay, up to ``attempts`` times; then it fails with
:class:`ChatServerUnavailable`, which says what happened on the last attempt. Any other answer but
200 fails at once with :class:`ChatServerError` (:class:`TranscriptNotFound` for a transcript's
404). The errors carry ``http_status`` and ``code``, so the admin API answers them as they are.
A JSON reply goes through :func:`gateway.boundary.load_json`: one holding NaN, Infinity, 1e999,
deep nesting or a lone surrogate (which would end up in the store) is a :class:`ChatServerError`
naming the problem.
"""

from __future__ import annotations

import urllib.parse

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gateway.boundary import load_json
from gateway.chat.messages import BadPayload, parse_init_response

__all__ = ["ChatRest", "ChatServerError", "ChatServerUnavailable", "TranscriptNotFound"]

log = Logger()

#: answers that mean "try again later"
RETRY_STATUSES = frozenset({500, 502, 503, 504})
TRANSCRIPT_TYPES = ("pdf", "email")


class ChatServerUnavailable(Exception):
    """The chat server did not answer usefully after every attempt."""

    http_status = 503
    code = "chat_server_unavailable"


class ChatServerError(Exception):
    """The chat server answered, but not with success (``status``: its HTTP status, or None)."""

    http_status = 502
    code = "chat_server_error"

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class TranscriptNotFound(ChatServerError):
    """404: no such conversation, or it has not ended yet (003: transcripts exist once it ended)."""

    http_status = 404
    code = "not_found"


def _excerpt(body: bytes) -> str:
    return body[:200].decode("utf-8", "replace").strip() or "(empty body)"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class ChatRest:
    """The REST client of one chat server.

    :param clock: ``IReactorTime`` for the backoff delays.
    :param http: a :class:`~gateway.chat.web.HttpClient`.
    :param url: the server's base URL (``http(s)://host[:port]``).
    :param timeout: seconds one attempt may take, the body included.
    :param attempts: attempts of a request answered 5xx or not answered.
    :param retry_policy: ``f(failed_attempts) -> seconds`` before the next attempt.
    """

    def __init__(self, clock, http, url: str, *, timeout: float, attempts: int, retry_policy):
        self._clock = clock
        self._http = http
        self._base = url.rstrip("/")
        self._timeout = timeout
        self._attempts = attempts
        self._retry_policy = retry_policy

    @defer.inlineCallbacks
    def init(self, body: dict):
        """``POST /api/customer/init``: fires with ``(conversationId, Participant)``."""
        status, content = yield self._request("POST", "/api/customer/init", json=body)
        if status != 200:
            raise ChatServerError(f"init refused: HTTP {status}: {_excerpt(content)}", status)
        try:
            return parse_init_response(load_json(content))
        except (ValueError, BadPayload) as e:  # PeerDataError is a ValueError
            raise ChatServerError(f"init answered with an unusable body: {e}", status) from None

    @defer.inlineCallbacks
    def transcript(self, conversation_id: str, kind: str):
        """``GET /api/customer/transcript/{id}/{type}``: fires with the body (the pdf; empty for email)."""
        if kind not in TRANSCRIPT_TYPES:
            raise ValueError(f"a transcript is of type pdf or email, not {kind!r}")
        path = f"/api/customer/transcript/{urllib.parse.quote(conversation_id, safe='')}/{kind}"
        status, content = yield self._request("GET", path)
        if status == 404:
            raise TranscriptNotFound(
                f"the chat server has no {kind} transcript of conversation {conversation_id}"
                " (unknown, or not ended yet)",
                status,
            )
        if status != 200:
            raise ChatServerError(f"transcript refused: HTTP {status}: {_excerpt(content)}", status)
        return content

    @defer.inlineCallbacks
    def _request(self, method: str, path: str, **kwargs):
        """``(status, body)`` of the first answer that is not a retryable failure."""
        url = self._base + path
        for attempt in range(1, self._attempts + 1):
            try:
                status, content = yield self._http.request(method, url, timeout=self._timeout, **kwargs)
            except defer.CancelledError:
                raise
            except Exception as e:
                problem = _describe(e)
            else:
                if status not in RETRY_STATUSES:
                    return status, content
                problem = f"HTTP {status}: {_excerpt(content)}"
            if attempt < self._attempts:
                delay = self._retry_policy(attempt - 1)
                log.warn(
                    "chat server {method} {url} failed ({problem}); attempt {next} of {attempts} in {delay:.1f} s",
                    method=method, url=url, problem=problem, next=attempt + 1, attempts=self._attempts, delay=delay,
                )
                yield deferLater(self._clock, delay, lambda: None)
        raise ChatServerUnavailable(f"{method} {url} failed {self._attempts} time(s); last: {problem}")
