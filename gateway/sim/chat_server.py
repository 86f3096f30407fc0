"""An Expertflow Hybrid Chat server stand-in (Customer Channel API, spec 003) for tests and demos.

Run it as its own process (it is built on python-socketio's AsyncServer and aiohttp, not Twisted,
so it needs the ``test`` extras installed)::

    python -m gateway.sim chat-server --port 8080 [--host 127.0.0.1] [--ping-interval 25]
                                      [--ping-timeout 20] [--tls [--cert-out cert.pem]]

It prints ``... listening on <host>:<port>`` once it accepts connections (``--port 0`` picks a free
port). The vendor's sample payloads are not public; the shapes below are built from the field
tables of 003. Every parser ignores fields it does not know.

Shapes
------
Participant: ``{"id", "name"}``.

ChatMessage: ``{"id", "type": "ChatMessage", "conversationId", "from": Participant, "to": [],
"text", "refId", "tag": "" | "whisper", "attachments": [], "timestamp"}`` -- ``refId`` is the
customer's account (the phone number for SMS); a campaign SMS has no ``conversationId``.

ActivityMessage: ``{"id", "type": "ActivityMessage", "conversationId", "from", "to": [],
"activityType", "info": {}, "timestamp"}`` with ``activityType`` one of :data:`ACTIVITY_TYPES`.
The server sends as ``from`` the agent (``{"id": "agent-1", "name": "Agent"}`` unless given) or
``SYSTEM`` for its own notices.

Timestamps are ISO 8601 UTC (``2024-01-31T12:00:00.000Z``); ids are UUID strings.

Socket.IO (default namespace, path ``/socket.io``), client -> server, acknowledged:

- ``registerConnector {id, name, channel}`` -> ack ``true`` (``false`` without a channel). The
  connector's socket is remembered per channel until it disconnects or another registers.
- ``joinConversation {conversationId, id, name}`` -> ack ``true`` (``false`` if unknown); the
  socket then gets ``conversationInfo {conversation, messages, participant: [Participant],
  role: "customer"}`` and ``messageArrived`` with an ActivityMessage ``greetings``.
- ``sendMessage <ChatMessage|ActivityMessage>`` -> ack ``true`` once stored (``false`` if the
  conversation is unknown or ended, or the type is neither); other members get ``messageArrived``.
- ``endConversation {conversationId}`` -> ack ``true``; the conversation ends and the other
  members get ``messageArrived`` with an ActivityMessage ``endOfConversation``.

Server -> client: ``messageArrived <message>`` (to the members of the conversation and the
connector registered for its channel) and ``conversationInfo``.

REST (JSON):

- ``POST /api/customer/init`` with ``firstName, lastName, email, phone, channel (required),
  language, refId, url, comment, subject, requestId, timestamp`` (capitalised keys such as
  ``Channel`` and the spec's ``reqestId`` are accepted too) -> ``{conversationId, participant,
  requestId, timestamp}``; 400 without a channel; 500/503 when failures were injected.
- ``GET /api/customer/transcript/{id}/{pdf|email}`` -> 404 while the conversation is open (or
  unknown), then a small PDF (``application/pdf``) or an empty 200.

Control API for tests and agents (JSON, under ``/sim/``):

- ``GET /sim/conversations`` -> ``[Conversation]``; ``GET /sim/conversations/{id}`` -> one, with
  ``{conversationId, status: open|ended, channel, refId, customer, participant, messages, members}``.
- ``POST /sim/conversations/{id}/messages {text, tag?, from?}`` -> an agent ChatMessage with
  ``refId`` = the customer's, delivered as ``messageArrived``; reply ``{message, deliveredTo}``.
- ``POST /sim/conversations/{id}/activities {activityType, info?, from?}`` -> the same for an
  ActivityMessage (e.g. participantJoined, participantLeft, noAgentAvailable).
- ``POST /sim/conversations/{id}/end`` -> ends it (an ``endOfConversation`` activity is delivered).
- ``POST /sim/sms {to, text, channel?: "sms", from?}`` -> a campaign ChatMessage (``refId`` = ``to``,
  no ``conversationId``) to the connector of that channel; 409 if none is registered.
  ``GET /sim/sms`` lists those sent.
- ``POST /sim/init-failures {count, status: 500|503}`` -> the next ``count`` inits fail so.
- ``GET /sim/connectors`` -> ``{"connected": [registration], "registrations": [every one],
  "connections": N, "open_frames_served": [n]}``: N counts the Engine.IO connections accepted so far
  (those a client refused at a hostile open packet included); each registration's ``connection``
  and each ``n`` is such a connection's number (1, 2, ...): the one it was made on, and those
  that got open frames.
- ``POST /sim/connectors/{channel}/emit {event, args?: []}`` -> any event to that channel's
  connector (to see how it copes with events it does not expect); 409 if none is registered.
- ``POST /sim/connectors/{channel}/raw {data}`` -> ``data`` as one raw Engine.IO message to the
  connector, e.g. a malformed Socket.IO packet such as ``"2[oops"``.
- ``POST /sim/connectors/{channel}/frames {frames: [frame]}`` -> each frame as one raw WebSocket
  frame to the connector, exactly as given (the Engine.IO type digit included), for replaying the
  bad-input corpus (``tests/corpus/chat.json``). A frame is written as in the corpus: a string is
  a text frame; ``{"hex": "00 ff"}`` a binary frame of those bytes; ``{"text", "repeat", "times",
  "then"}`` the text prefix + repeat x times + then (at most :data:`MAX_BUILT_FRAME` characters).
- ``POST /sim/open-frames {frames: [frame]}`` -> the next Engine.IO connection gets these frames
  instead of its open packet (once), e.g. an open packet with ``"pingInterval": NaN``; posted
  again before a connection took them, they queue: each later connection gets the next set.
  ``GET`` shows how many frames are still waiting.
"""

import argparse
import asyncio
import datetime
import functools
import os
import signal
import ssl
import sys
import tempfile
import uuid

import attrs
import socketio
from aiohttp import web
from engineio import packet
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

log = Logger()

ACTIVITY_TYPES = frozenset(
    {
        "greetings",
        "typing",
        "handOff",
        "noAgentAvailable",
        "participantAdded",
        "participantRemoved",
        "participantJoined",
        "participantLeft",
        "endOfConversation",
    }
)
MESSAGE_TYPES = frozenset({"ChatMessage", "ActivityMessage"})
SYSTEM = {"id": "system", "name": "Chat Server"}
DEFAULT_AGENT = {"id": "agent-1", "name": "Agent"}
INIT_FIELDS = (
    "firstName",
    "lastName",
    "email",
    "phone",
    "channel",
    "language",
    "refId",
    "url",
    "comment",
    "subject",
    "requestId",
    "timestamp",
)
_FIELD_ALIASES = {"reqestId": "requestId"}
INJECTABLE_STATUSES = frozenset({500, 503})
#: the longest frame the control API builds from a repeat object
MAX_BUILT_FRAME = 256 << 20


def now_iso() -> str:
    """The current UTC time in ISO 8601 with milliseconds and a ``Z``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


def participant(value, default: dict) -> dict:
    """A Participant from loose input (``{"id", "name"}``), or ``default``."""
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return {"id": value["id"], "name": str(value.get("name", value["id"]))}
    return dict(default)


def chat_message(conversation_id, sender: dict, text: str, *, ref_id=None, tag: str = "") -> dict:
    """A ChatMessage; ``conversation_id`` None makes a campaign message (no conversationId)."""
    message = {"id": new_id(), "type": "ChatMessage"}
    if conversation_id is not None:
        message["conversationId"] = conversation_id
    message.update(
        {"from": sender, "to": [], "text": text, "refId": ref_id, "tag": tag, "attachments": [], "timestamp": now_iso()}
    )
    return message


def activity_message(conversation_id: str, sender: dict, activity_type: str, info=None) -> dict:
    """An ActivityMessage of ``activity_type``."""
    return {
        "id": new_id(),
        "type": "ActivityMessage",
        "conversationId": conversation_id,
        "from": sender,
        "to": [],
        "activityType": activity_type,
        "info": info if isinstance(info, dict) else {},
        "timestamp": now_iso(),
    }


def normalise_init(body: dict) -> dict:
    """The init request's known fields, accepting ``Channel``-style capitals and ``reqestId``."""
    fields = {}
    for key, value in body.items():
        if not isinstance(key, str) or not key:
            continue
        key = key[0].lower() + key[1:]
        fields[_FIELD_ALIASES.get(key, key)] = value
    return {key: fields[key] for key in INIT_FIELDS if key in fields}


def raw_frame(frame) -> str | bytes:
    """A corpus frame (a string, ``{"hex"}`` or ``{"text", "repeat", "times", "then"}``): str = text, bytes = binary."""
    if isinstance(frame, str):
        return frame
    if isinstance(frame, dict) and isinstance(frame.get("hex"), str):
        try:
            return bytes.fromhex(frame["hex"].replace(" ", ""))
        except ValueError:
            raise RequestError(400, f"not hex: {frame['hex'][:40]!r}") from None
    if isinstance(frame, dict) and isinstance(frame.get("repeat"), str):
        times, prefix, suffix = frame.get("times"), frame.get("text", ""), frame.get("then", "")
        if isinstance(times, bool) or not isinstance(times, int) or times < 0 or not isinstance(prefix, str) \
                or not isinstance(suffix, str):
            raise RequestError(400, "a repeat frame needs times (an int >= 0), and text and then as strings")
        if len(prefix) + len(frame["repeat"]) * times + len(suffix) > MAX_BUILT_FRAME:
            raise RequestError(400, f"a built frame is at most {MAX_BUILT_FRAME} characters")
        return prefix + frame["repeat"] * times + suffix
    raise RequestError(400, f"a frame is a string, {{'hex'}} or {{'text', 'repeat', 'times', 'then'}}, not {frame!r:.80}")


def raw_packet(frame: str | bytes) -> packet.Packet:
    """An Engine.IO packet whose encoding is exactly ``frame`` (python-engineio sends ``encode()``)."""
    raw = packet.Packet(packet.MESSAGE, frame)
    raw.encode_cache = frame
    return raw


class RequestError(Exception):
    """A control or REST request that cannot be served: HTTP ``status`` and a message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@attrs.define
class Conversation:
    """One customer conversation and everything said in it."""

    id: str
    channel: str
    customer: dict
    participant: dict
    ref_id: str | None
    created: str = attrs.field(factory=now_iso)
    status: str = "open"
    ended: str | None = None
    messages: list = attrs.field(factory=list)
    members: set = attrs.field(factory=set)

    @property
    def open(self) -> bool:
        return self.status == "open"

    def info(self) -> dict:
        """The ``conversation`` object of ``conversationInfo``."""
        return {
            "conversationId": self.id,
            "channel": self.channel,
            "status": self.status,
            "refId": self.ref_id,
            "customer": self.customer,
            "createdAt": self.created,
            "endedAt": self.ended,
        }

    def describe(self) -> dict:
        """The control API's view."""
        return {
            **self.info(),
            "participant": self.participant,
            "messages": self.messages,
            "members": sorted(self.members),
        }


@attrs.define
class ChatState:
    """Conversations, connector registrations and injected failures; no I/O."""

    conversations: dict = attrs.field(factory=dict)
    connectors: dict = attrs.field(factory=dict)
    registrations: list = attrs.field(factory=list)
    campaigns: list = attrs.field(factory=list)
    init_failures: list = attrs.field(factory=list)

    def conversation(self, conversation_id) -> Conversation:
        conversation = self.conversations.get(conversation_id) if isinstance(conversation_id, str) else None
        if conversation is None:
            raise RequestError(404, f"no conversation {conversation_id!r}")
        return conversation

    def open_conversation(self, conversation_id) -> Conversation:
        conversation = self.conversation(conversation_id)
        if not conversation.open:
            raise RequestError(409, f"conversation {conversation_id} has ended")
        return conversation

    def register(self, sid: str, data) -> dict:
        if not isinstance(data, dict) or not isinstance(data.get("channel"), str) or not data["channel"]:
            raise RequestError(400, f"registerConnector without a channel: {data!r}")
        channel = data["channel"]
        registration = {
            "id": str(data.get("id", channel)),
            "name": str(data.get("name", channel)),
            "channel": channel,
            "sid": sid,
            "registeredAt": now_iso(),
        }
        self.connectors[channel] = registration
        self.registrations.append(registration)
        return registration

    def connector_sid(self, channel: str) -> str | None:
        registration = self.connectors.get(channel)
        return registration["sid"] if registration else None

    def socket_gone(self, sid: str) -> None:
        for channel in [c for c, r in self.connectors.items() if r["sid"] == sid]:
            del self.connectors[channel]
        for conversation in self.conversations.values():
            conversation.members.discard(sid)

    def init(self, body) -> dict:
        if self.init_failures:
            status = self.init_failures.pop(0)
            raise RequestError(status, "injected failure")
        if not isinstance(body, dict):
            raise RequestError(400, "the request body is not a JSON object")
        fields = normalise_init(body)
        channel = fields.get("channel")
        if not isinstance(channel, str) or not channel:
            raise RequestError(400, "channel is required")
        ref_id = fields.get("refId") or fields.get("phone")
        name = " ".join(str(fields[k]) for k in ("firstName", "lastName") if fields.get(k)) or ref_id or "Customer"
        conversation = Conversation(
            id=new_id(),
            channel=channel,
            customer=fields,
            participant={"id": new_id(), "name": str(name)},
            ref_id=None if ref_id is None else str(ref_id),
        )
        self.conversations[conversation.id] = conversation
        return {
            "conversationId": conversation.id,
            "participant": conversation.participant,
            "requestId": fields.get("requestId"),
            "timestamp": now_iso(),
        }

    def end(self, conversation: Conversation, sender: dict) -> dict:
        conversation.status = "ended"
        conversation.ended = now_iso()
        message = activity_message(conversation.id, sender, "endOfConversation")
        conversation.messages.append(message)
        return message

    def inject_init_failures(self, body) -> list:
        if not isinstance(body, dict):
            raise RequestError(400, "the request body is not a JSON object")
        count, status = body.get("count", 1), body.get("status", 503)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1 or status not in INJECTABLE_STATUSES:
            raise RequestError(400, f"need count >= 1 and status in {sorted(INJECTABLE_STATUSES)}")
        self.init_failures.extend([status] * count)
        return self.init_failures

    def recipients(self, conversation: Conversation, *, skip=None) -> list[str]:
        """The sockets that hear about a conversation: its members and its channel's connector."""
        targets = set(conversation.members)
        connector = self.connector_sid(conversation.channel)
        if connector is not None:
            targets.add(connector)
        targets.discard(skip)
        return sorted(targets)


def transcript_pdf(conversation: Conversation) -> bytes:
    """A one-page PDF listing the conversation's chat messages."""
    lines = [f"Transcript of conversation {conversation.id}", ""]
    lines += [
        f"{m.get('from', {}).get('name', '?')}: {m.get('text', '')}"
        for m in conversation.messages
        if m.get("type") == "ChatMessage"
    ]
    text = " T* ".join(f"({_pdf_escape(line)}) Tj" for line in lines[:50])
    content = f"BT /F1 11 Tf 14 TL 50 800 Td {text} ET".encode("latin-1", errors="replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
    ]
    pdf = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    pdf += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    pdf += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(pdf)


def _pdf_escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


@web.middleware
async def _request_errors(request, handler):
    """Turn a :class:`RequestError` into a JSON error response."""
    try:
        return await handler(request)
    except RequestError as error:
        log.info("{method} {path}: {status} {error}", method=request.method, path=request.path, status=error.status, error=error)
        return web.json_response({"error": str(error)}, status=error.status)


def _field(payload, key: str):
    """``payload[key]`` when the payload is an object, else None (payloads come from peers)."""
    return payload.get(key) if isinstance(payload, dict) else None


def _logging_failures(event: str, handler):
    """Wrap a Socket.IO handler so that a failure is logged (python-socketio keeps it quiet)."""

    @functools.wraps(handler)
    async def handle(sid, *args):
        try:
            return await handler(sid, *args)
        except Exception:
            log.failure("handling {event} from socket {sid} failed", event=event, sid=sid)
            return False

    return handle


class ChatServerSim:
    """The Socket.IO and HTTP faces of a :class:`ChatState` (python-socketio + aiohttp)."""

    def __init__(self, state: ChatState | None = None, *, ping_interval: float = 25, ping_timeout: float = 20):
        self.state = state or ChatState()
        self.sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=ping_interval, ping_timeout=ping_timeout)
        self.app = web.Application(middlewares=[_request_errors])
        self.sio.attach(self.app)
        #: sets of frames the next Engine.IO connections get instead of their open packet, one set each
        #: (POST /sim/open-frames)
        self.open_frames: list[list] = []
        #: Engine.IO connections accepted so far
        self.connections = 0
        self._connection_number: dict = {}
        self._open_frames_served: list[int] = []
        self.sio.eio.on("connect", self._on_eio_connect)
        for event in ("connect", "disconnect", "registerConnector", "joinConversation", "sendMessage", "endConversation"):
            self.sio.on(event, _logging_failures(event, getattr(self, "_on_" + event)))
        routes = [
            web.post("/api/customer/init", self._init),
            web.get("/api/customer/transcript/{id}/{type}", self._transcript),
            web.get("/sim/conversations", self._list_conversations),
            web.get("/sim/conversations/{id}", self._get_conversation),
            web.post("/sim/conversations/{id}/messages", self._agent_message),
            web.post("/sim/conversations/{id}/activities", self._agent_activity),
            web.post("/sim/conversations/{id}/end", self._end_conversation),
            web.get("/sim/sms", self._list_campaigns),
            web.post("/sim/sms", self._campaign_sms),
            web.post("/sim/init-failures", self._inject_failures),
            web.get("/sim/connectors", self._list_connectors),
            web.post("/sim/connectors/{channel}/emit", self._emit_to_connector),
            web.post("/sim/connectors/{channel}/raw", self._raw_to_connector),
            web.post("/sim/connectors/{channel}/frames", self._frames_to_connector),
            web.post("/sim/open-frames", self._set_open_frames),
            web.get("/sim/open-frames", self._get_open_frames),
        ]
        self.app.add_routes(routes)

    async def _deliver(self, message: dict, sids) -> list[str]:
        for sid in sids:
            await self.sio.emit("messageArrived", message, to=sid)
        return list(sids)

    # -- Socket.IO -----------------------------------------------------------------------------

    async def _on_eio_connect(self, eio_sid, environ):
        """A new Engine.IO connection: its open packet is queued; swap it for the open frames if any wait."""
        self.connections += 1
        self._connection_number[eio_sid] = self.connections
        if self.open_frames:
            frames = self.open_frames.pop(0)
            self._open_frames_served.append(self.connections)
            queue = self.sio.eio.sockets[eio_sid].queue
            while not queue.empty():  # the open packet, not yet written
                queue.get_nowait()
            for frame in frames:
                queue.put_nowait(raw_packet(frame))
            log.info("Engine.IO connection {sid} gets {count} frame(s) instead of its open packet", sid=eio_sid, count=len(frames))
        return await self.sio._handle_eio_connect(eio_sid, environ)

    async def _on_connect(self, sid, environ, auth=None):
        log.info("socket {sid} connected from {peer}", sid=sid, peer=environ.get("REMOTE_ADDR"))

    async def _on_disconnect(self, sid, *reason):
        log.info("socket {sid} disconnected", sid=sid)
        self.state.socket_gone(sid)

    async def _on_registerConnector(self, sid, data=None, *extra):
        try:
            registration = self.state.register(sid, data)
        except RequestError as error:
            log.warn("socket {sid}: {error}", sid=sid, error=error)
            return False
        registration["connection"] = self._connection_number.get(self.sio.manager.eio_sid_from_sid(sid, "/"))
        log.info("connector {id} registered for channel {channel} on socket {sid}", **registration)
        return True

    async def _on_joinConversation(self, sid, data=None, *extra):
        try:
            conversation = self.state.conversation(_field(data, "conversationId"))
        except RequestError as error:
            log.warn("socket {sid} cannot join: {error}", sid=sid, error=error)
            return False
        conversation.members.add(sid)
        await self.sio.emit(
            "conversationInfo",
            {
                "conversation": conversation.info(),
                "messages": conversation.messages,
                "participant": [participant(data, conversation.participant)],
                "role": "customer",
            },
            to=sid,
        )
        greeting = activity_message(conversation.id, SYSTEM, "greetings")
        conversation.messages.append(greeting)
        await self._deliver(greeting, [sid])
        return True

    async def _on_sendMessage(self, sid, message=None, *extra):
        if not isinstance(message, dict) or message.get("type") not in MESSAGE_TYPES:
            log.warn("socket {sid} sent a message of no known type: {message!r}", sid=sid, message=message)
            return False
        try:
            conversation = self.state.open_conversation(_field(message, "conversationId"))
        except RequestError as error:
            log.warn("socket {sid} cannot send: {error}", sid=sid, error=error)
            return False
        stored = {"id": new_id(), "timestamp": now_iso(), **message}
        conversation.messages.append(stored)
        await self._deliver(stored, [s for s in conversation.members if s != sid])
        return True

    async def _on_endConversation(self, sid, data=None, *extra):
        try:
            conversation = self.state.open_conversation(_field(data, "conversationId"))
        except RequestError as error:
            log.warn("socket {sid} cannot end: {error}", sid=sid, error=error)
            return False
        message = self.state.end(conversation, SYSTEM)
        await self._deliver(message, [s for s in conversation.members if s != sid])
        return True

    # -- HTTP ----------------------------------------------------------------------------------

    async def _json(self, request):
        try:
            return await request.json()
        except ValueError:
            raise RequestError(400, "the request body is not JSON") from None

    async def _init(self, request):
        return web.json_response(self.state.init(await self._json(request)))

    async def _transcript(self, request):
        conversation = self.state.conversation(request.match_info["id"])
        if conversation.open:
            raise RequestError(404, "the transcript is available once the conversation has ended")
        kind = request.match_info["type"]
        if kind == "pdf":
            return web.Response(body=transcript_pdf(conversation), content_type="application/pdf")
        if kind == "email":
            return web.Response(status=200)
        raise RequestError(404, f"no transcript type {kind!r} (pdf or email)")

    async def _list_conversations(self, request):
        return web.json_response([c.describe() for c in self.state.conversations.values()])

    async def _get_conversation(self, request):
        return web.json_response(self.state.conversation(request.match_info["id"]).describe())

    async def _agent_message(self, request):
        body = await self._body_object(request)
        conversation = self.state.open_conversation(request.match_info["id"])
        if not isinstance(body.get("text"), str):
            raise RequestError(400, "text is required")
        tag = body.get("tag", "")
        if tag not in ("", "whisper"):
            raise RequestError(400, "tag is '' or 'whisper'")
        sender = participant(body.get("from"), DEFAULT_AGENT)
        message = chat_message(conversation.id, sender, body["text"], ref_id=conversation.ref_id, tag=tag)
        return await self._post(conversation, message)

    async def _agent_activity(self, request):
        body = await self._body_object(request)
        conversation = self.state.open_conversation(request.match_info["id"])
        activity_type = body.get("activityType")
        if activity_type not in ACTIVITY_TYPES:
            raise RequestError(400, f"activityType is one of {sorted(ACTIVITY_TYPES)}")
        sender = participant(body.get("from"), DEFAULT_AGENT)
        return await self._post(conversation, activity_message(conversation.id, sender, activity_type, body.get("info")))

    async def _post(self, conversation: Conversation, message: dict):
        conversation.messages.append(message)
        delivered = await self._deliver(message, self.state.recipients(conversation))
        return web.json_response({"message": message, "deliveredTo": delivered})

    async def _end_conversation(self, request):
        conversation = self.state.open_conversation(request.match_info["id"])
        message = self.state.end(conversation, SYSTEM)
        delivered = await self._deliver(message, self.state.recipients(conversation))
        return web.json_response({"message": message, "deliveredTo": delivered})

    async def _list_campaigns(self, request):
        return web.json_response(self.state.campaigns)

    async def _campaign_sms(self, request):
        body = await self._body_object(request)
        to, text, channel = body.get("to"), body.get("text"), body.get("channel", "sms")
        if not isinstance(to, str) or not to or not isinstance(text, str):
            raise RequestError(400, "to and text are required")
        sid = self.state.connector_sid(channel)
        if sid is None:
            raise RequestError(409, f"no connector registered for channel {channel!r}")
        message = chat_message(None, participant(body.get("from"), SYSTEM), text, ref_id=to)
        self.state.campaigns.append(message)
        delivered = await self._deliver(message, [sid])
        return web.json_response({"message": message, "deliveredTo": delivered})

    async def _inject_failures(self, request):
        pending = self.state.inject_init_failures(await self._json(request))
        return web.json_response({"pending": pending})

    async def _list_connectors(self, request):
        return web.json_response(
            {"connected": list(self.state.connectors.values()), "registrations": self.state.registrations,
             "connections": self.connections, "open_frames_served": self._open_frames_served}
        )

    def _connector_of(self, request) -> str:
        channel = request.match_info["channel"]
        sid = self.state.connector_sid(channel)
        if sid is None:
            raise RequestError(409, f"no connector registered for channel {channel!r}")
        return sid

    async def _emit_to_connector(self, request):
        body = await self._body_object(request)
        sid = self._connector_of(request)
        event, args = body.get("event"), body.get("args", [])
        if not isinstance(event, str) or not event or not isinstance(args, list):
            raise RequestError(400, "event (a string) is required; args is a list")
        await self.sio.emit(event, tuple(args), to=sid)
        return web.json_response({"deliveredTo": [sid]})

    async def _raw_to_connector(self, request):
        body = await self._body_object(request)
        sid = self._connector_of(request)
        if not isinstance(body.get("data"), str):
            raise RequestError(400, "data (a string) is required")
        await self.sio.eio.send(self.sio.manager.eio_sid_from_sid(sid, "/"), body["data"])
        return web.json_response({"deliveredTo": [sid]})

    async def _frames_of(self, request) -> list:
        frames = (await self._body_object(request)).get("frames")
        if not isinstance(frames, list) or not frames:
            raise RequestError(400, "frames (a non-empty list) is required")
        return [raw_frame(frame) for frame in frames]

    async def _frames_to_connector(self, request):
        frames = await self._frames_of(request)
        sid = self._connector_of(request)
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        for frame in frames:
            await self.sio.eio.send_packet(eio_sid, raw_packet(frame))
        return web.json_response({"deliveredTo": [sid], "frames": len(frames)})

    async def _set_open_frames(self, request):
        self.open_frames.append(await self._frames_of(request))
        return web.json_response({"waiting": sum(map(len, self.open_frames))})

    async def _get_open_frames(self, request):
        return web.json_response({"waiting": sum(map(len, self.open_frames))})

    async def _body_object(self, request) -> dict:
        body = await self._json(request)
        if not isinstance(body, dict):
            raise RequestError(400, "the request body is not a JSON object")
        return body


def _arguments(argv):
    parser = argparse.ArgumentParser(
        prog="python -m gateway.sim chat-server", description="Run an Expertflow chat server simulator."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=25.0,
        help="Engine.IO ping interval, seconds (python-engineio advertises it truncated to whole seconds,"
        " so with fractions keep --ping-timeout well above the interval)",
    )
    parser.add_argument("--ping-timeout", type=float, default=20.0, help="Engine.IO ping timeout, seconds")
    parser.add_argument("--tls", action="store_true", help="serve https/wss with a new self-signed certificate")
    parser.add_argument("--cert-out", help="with --tls: write the certificate (PEM) here for clients to trust")
    return parser.parse_args(argv)


def _tls_context(host: str, cert_out: str | None) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for localhost (and ``host``)."""
    import ipaddress

    from gateway.sim.tlsutil import generate_self_signed

    try:
        ip_addresses = (str(ipaddress.ip_address(host)),)
    except ValueError:
        ip_addresses = ()
    certificate = generate_self_signed("localhost", ip_addresses=ip_addresses)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        with open(cert_path, "wb") as c, open(key_path, "wb") as k:
            c.write(certificate.cert_pem)
            k.write(certificate.key_pem)
        context.load_cert_chain(cert_path, key_path)
    if cert_out:
        with open(cert_out, "wb") as f:
            f.write(certificate.cert_pem)
    print(f"TLS certificate SHA-256 {certificate.fingerprint}", flush=True)
    return context


async def serve(sim: ChatServerSim, host: str, port: int, ssl_context=None) -> None:
    """Serve ``sim`` until SIGINT or SIGTERM."""
    runner = web.AppRunner(sim.app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        address = runner.addresses[0]
        print(f"Expertflow chat server simulator listening on {address[0]}:{address[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv=None):
    """Run the simulator until interrupted; 1 if it cannot listen."""
    args = _arguments(sys.argv[1:] if argv is None else argv)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.info)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    ssl_context = _tls_context(args.host, args.cert_out) if args.tls else None
    sim = ChatServerSim(ping_interval=args.ping_interval, ping_timeout=args.ping_timeout)
    try:
        asyncio.run(serve(sim, args.host, args.port, ssl_context))
    except OSError as error:
        print(f"chat-server: cannot listen: {error}", file=sys.stderr)
        return 1
    return 0
