"""The connector's admin API routes (behind the admin bearer token, like all of ``/api``).

=======================================================  ==============================================
``POST /api/sms/inbound {from, text, id?}``              an SMS from a customer (any transport's webhook);
                                                         200 ``{"sms", "duplicate"}`` once stored
``POST /api/sms/outbound {to, text}``                    an operator's SMS to a number; 200 ``{"sms"}`` once
                                                         stored, then the transport sends it
``GET /api/sms?direction=&number=&after=&limit=``        ``{"sms": [...]}`` oldest first, ``seq > after``
``GET /api/chat/conversations``                          ``{"conversations": [...]}`` the open ones
``POST /api/chat/conversations {number, firstName?...}`` init + join for a number (or its open one);
                                                         the customer fields are strings when given
``POST /api/chat/conversations/{id}/end``                ``endConversation``, then closed here (no body)
``POST /api/chat/transcript/{id}/{type}``                ``type`` pdf: saved to a file, ``{"path", "bytes"}``;
                                                         email: the chat server mails it (no body)
=======================================================  ==============================================

Bodies are read through :meth:`~gateway.admin.api.ApiRequest.json` (``no_body`` for the routes
taking none: empty or ``{}``): an unknown key, a value of the wrong type, bad text or a body that
is not a JSON object is a 400 naming the field or key.

A chat server that cannot be reached answers 503 ``chat_server_unavailable``; one that refuses
answers 502 ``chat_server_error`` (404 for a transcript it does not have).
"""

from __future__ import annotations

import pathlib
import re

from twisted.internet import defer

from gateway.admin.api import ApiError, ApiRequest
from gateway.boundary import PeerDataError
from gateway.chat.connector import Connector
from gateway.chat.engineio import NotConnected
from gateway.chat.messages import CUSTOMER_FIELDS
from gateway.chat.rest import TRANSCRIPT_TYPES
from gateway.chat.socketio import AckTimeout, LinkLost
from gateway.store import MAX_LIMIT
from gateway.store.files import write_private

__all__ = ["Transcripts", "add_routes"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _write_file(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 whatever the umask (runs in a thread)."""
    write_private(path, data)


class Transcripts:
    """Fetches transcripts; pdfs are saved in ``directory`` as ``<conversation id>.pdf``.

    :param run_in_thread: ``f(function, *args) -> Deferred`` (file writes stay off the reactor thread).
    """

    def __init__(self, rest, directory: pathlib.Path, run_in_thread):
        self._rest = rest
        self._directory = pathlib.Path(directory)
        self._run_in_thread = run_in_thread

    @defer.inlineCallbacks
    def fetch(self, conversation_id: str, kind: str):
        body = yield self._rest.transcript(conversation_id, kind)
        result = {"conversationId": conversation_id, "type": kind}
        if kind == "email":
            return {**result, "requested": True}
        path = self._directory / f"{_UNSAFE.sub('_', conversation_id)}.pdf"
        yield self._run_in_thread(_write_file, path, body)
        return {**result, "path": str(path), "bytes": len(body)}


def _unavailable(failure):
    """The chat server link was down or lost: 503."""
    failure.trap(NotConnected, AckTimeout, LinkLost)
    raise ApiError(503, f"the chat server cannot be reached: {failure.getErrorMessage()}",
                   code="chat_server_unavailable")


def _refused(error: ValueError) -> ApiError:
    """400 for an SMS the connector refused; a PeerDataError (bad text) names its field."""
    field = error.field if isinstance(error, PeerDataError) else None
    return ApiError(400, str(error), **({"field": field} if field else {}))


def _int_query(request: ApiRequest, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if not text:
        return default
    if text.isascii() and text.isdigit() and low <= int(text) <= high:
        return int(text)
    raise ApiError(400, f"{name} must be a whole number from {low} to {high}, got {text!r}", field=name)


class _Routes:
    def __init__(self, connector: Connector, store, transcripts: Transcripts):
        self._connector = connector
        self._store = store
        self._transcripts = transcripts

    def inbound(self, request: ApiRequest):
        body = request.json(known=("from", "text", "id"))
        try:
            d = self._connector.receive_sms(body.get("from"), body.get("text"), body.get("id"))
        except ValueError as e:
            raise _refused(e) from None
        return d.addCallback(lambda result: {"sms": result[0].to_dict(), "duplicate": not result[1]})

    def outbound(self, request: ApiRequest):
        body = request.json(known=("to", "text"))
        try:
            d = self._connector.send_sms(body.get("to"), body.get("text"))
        except ValueError as e:
            raise _refused(e) from None
        return d.addCallback(lambda result: {"sms": result[0].to_dict()})

    def list_sms(self, request: ApiRequest):
        direction = request.query.get("direction") or None
        if direction not in (None, "inbound", "outbound"):
            raise ApiError(400, f"direction is inbound or outbound, got {direction!r}", field="direction")
        d = self._store.list_sms(
            direction=direction,
            number=request.query.get("number") or None,
            after=_int_query(request, "after", 0, 0, 2**62),
            limit=_int_query(request, "limit", 100, 1, MAX_LIMIT),
        )
        return d.addCallback(lambda records: {"sms": [r.to_dict() for r in records]})

    def conversations(self, request: ApiRequest) -> dict:
        return {"conversations": [c.to_json() for c in self._connector.conversations]}

    def open(self, request: ApiRequest):
        body = request.json(known=("number", *CUSTOMER_FIELDS))
        for key in CUSTOMER_FIELDS:
            if key in body and not isinstance(body[key], str):
                raise ApiError(400, f"{key!r} must be a string, got {type(body[key]).__name__}", field=key)
        customer = {key: body[key] for key in CUSTOMER_FIELDS if key in body}
        try:
            d = self._connector.open_conversation(body.get("number"), customer)
        except ValueError as e:
            raise _refused(e) from None
        return d.addCallbacks(lambda conversation: {"conversation": conversation.to_json()}, _unavailable)

    def end(self, request: ApiRequest):
        request.no_body()
        conversation_id = request.params["id"]
        d = self._connector.end_conversation(conversation_id)
        return d.addCallback(lambda _: {"ended": conversation_id})

    def transcript(self, request: ApiRequest):
        kind = request.params["type"]
        if kind not in TRANSCRIPT_TYPES:
            raise ApiError(404, f"a transcript is of type pdf or email, not {kind!r}")
        request.no_body()
        return self._transcripts.fetch(request.params["id"], kind)


def add_routes(api, connector: Connector, store, transcripts: Transcripts) -> None:
    """Serve the routes of the module docstring on ``api`` (an :class:`~gateway.admin.api.ApiRouter`)."""
    routes = _Routes(connector, store, transcripts)
    api.route("POST", "/api/sms/inbound", routes.inbound)
    api.route("POST", "/api/sms/outbound", routes.outbound)
    api.route("GET", "/api/sms", routes.list_sms)
    api.route("GET", "/api/chat/conversations", routes.conversations)
    api.route("POST", "/api/chat/conversations", routes.open)
    api.route("POST", "/api/chat/conversations/{id}/end", routes.end)
    api.route("POST", "/api/chat/transcript/{id}/{type}", routes.transcript)
