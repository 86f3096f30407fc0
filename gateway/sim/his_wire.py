"""The processor bridge's side of the HIS wire, written from the specification for the simulator alone.

This module shares nothing with the gateway's Bridge Client (``gateway.cti``): it is the simulator's own
reading of spec 004 and the HIS notes in ``shared/protocols/README.md``, so a wire mistake made on one
side shows as a disagreement with the other instead of passing unseen. Where the vendor publishes
nothing (the control status messages, ``channel.interaction``, ready / not ready, the capability keys
and the bodies of the session, channel group and channel init responses), it follows the gateway's
documented choices (``docs/cti.md``, ``etc/gateway.toml [cti.names]``), and every name can be
overridden like ``[cti.names]``.

- Framing: each message is a 4-byte unsigned length (big-endian unless configured) followed by that
  many bytes of UTF-8 JSON text (RFC 8259: no ``NaN``, no ``Infinity``), an object.
- Envelope: ``{"header": {"type", "name", "target", "requestId"?, "result"?, "errorMessage"?}, "body": {}}``;
  ``type`` is ``cti.query``, ``cti.request``, ``cti.response`` or ``cti.event``; queries, requests and
  responses carry a ``requestId``; a response carries ``result`` (``SUCCESS`` or ``FAILURE``) and, on a
  failure, an ``errorMessage``; events carry ``type``, ``name`` and ``target`` only.
- Bodies: the init responses of each destination kind, the control status, the interaction announcement.
"""

from __future__ import annotations

import enum
import json
import math
import uuid
from collections.abc import Mapping

import attrs
from twisted.internet.protocol import Protocol

# -- framing -------------------------------------------------------------------------------------

#: Bytes of the length prefix.
LENGTH_SIZE = 4

#: The largest frame accepted by default (1 MiB); a longer one is skipped by its length.
DEFAULT_MAX_FRAME_SIZE = 1024 * 1024


class WireError(ValueError):
    """Bytes that are not a frame of the HIS wire (not UTF-8, not JSON, not an object)."""


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _finite(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def decode_json(payload: bytes) -> dict:
    """The JSON object in ``payload``, or :class:`WireError` saying why it is not one."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError(f"not UTF-8: {e}") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as e:
        raise WireError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise WireError(f"not a JSON object but {_json_kind(value)}")
    return value


def encode_json(obj) -> bytes:
    """``obj`` as compact JSON text in UTF-8 (ASCII escapes, so any Python string can be sent)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")


def encode_frame(obj, byteorder: str = "big") -> bytes:
    """One frame: the length prefix and ``obj`` as JSON."""
    data = encode_json(obj)
    return len(data).to_bytes(LENGTH_SIZE, byteorder) + data


class FramedJSON(Protocol):
    """Length-prefixed JSON objects over a stream.

    Subclasses get :meth:`messageReceived` for each object and :meth:`frameRejected` for each frame that
    is not one (it is skipped; the stream carries on, since its length is known).
    """

    def __init__(self, byteorder: str = "big", max_frame_size: int = DEFAULT_MAX_FRAME_SIZE):
        if byteorder not in ("big", "little"):
            raise ValueError(f"byte order {byteorder!r} is neither 'big' nor 'little'")
        self.byteorder = byteorder
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._skipping = 0

    @property
    def peer(self) -> str:
        address = self.transport.getPeer() if self.transport is not None else None
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else str(address)

    def sendMessage(self, obj) -> None:
        self.transport.write(encode_frame(obj, self.byteorder))

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while self.transport is not None:
            if self._skipping:
                dropped = min(self._skipping, len(self._buffer))
                del self._buffer[:dropped]
                self._skipping -= dropped
                if self._skipping:
                    return
            if len(self._buffer) < LENGTH_SIZE:
                return
            length = int.from_bytes(self._buffer[:LENGTH_SIZE], self.byteorder)
            if length > self.max_frame_size:
                del self._buffer[:LENGTH_SIZE]
                self._skipping = length
                self.frameRejected(f"a frame of {length} bytes is longer than the {self.max_frame_size} allowed")
                continue
            if len(self._buffer) < LENGTH_SIZE + length:
                return
            payload = bytes(self._buffer[LENGTH_SIZE:LENGTH_SIZE + length])
            del self._buffer[:LENGTH_SIZE + length]
            try:
                obj = decode_json(payload)
            except WireError as e:
                self.frameRejected(str(e))
                continue
            self.messageReceived(obj)

    def messageReceived(self, obj: dict) -> None:
        raise NotImplementedError

    def frameRejected(self, reason: str) -> None:
        raise NotImplementedError


# -- envelope ------------------------------------------------------------------------------------


class MessageType(str, enum.Enum):
    QUERY = "cti.query"
    REQUEST = "cti.request"
    RESPONSE = "cti.response"
    EVENT = "cti.event"


#: The message types that must be answered with a response.
ANSWERABLE = frozenset({MessageType.QUERY, MessageType.REQUEST})

SUCCESS, FAILURE = "SUCCESS", "FAILURE"
RESULTS = (SUCCESS, FAILURE)


class EnvelopeError(ValueError):
    """A JSON object that is not a valid envelope; the text says what is wrong."""


@attrs.frozen
class Header:
    type: MessageType = attrs.field(converter=MessageType)
    name: str
    target: str
    request_id: str | None = None
    result: str | None = None
    error_message: str | None = None


@attrs.frozen
class Envelope:
    """One message: its header and its body (an object, ``{}`` when there is nothing to say)."""

    header: Header
    body: dict = attrs.field(factory=dict)

    type = property(lambda self: self.header.type)
    name = property(lambda self: self.header.name)
    target = property(lambda self: self.header.target)
    request_id = property(lambda self: self.header.request_id)

    @property
    def ok(self) -> bool:
        return self.header.result == SUCCESS

    def to_json(self) -> dict:
        h = self.header
        header = {"type": h.type.value, "name": h.name, "target": h.target}
        for key, value in (("requestId", h.request_id), ("result", h.result), ("errorMessage", h.error_message)):
            if value is not None:
                header[key] = value
        return {"header": header, "body": self.body}

    def describe(self) -> str:
        h = self.header
        text = f"{h.type.value} {h.name} on {h.target}"
        if h.request_id is not None:
            text += f" [{h.request_id}]"
        if h.result is not None:
            text += f" {h.result}"
        if h.error_message:
            text += f": {h.error_message}"
        if self.body:
            text += f" {json.dumps(self.body, separators=(',', ':'))}"
        return text

    @classmethod
    def from_json(cls, obj) -> Envelope:
        """The envelope ``obj`` holds, or :class:`EnvelopeError` naming the first thing wrong with it."""
        if not isinstance(obj, dict):
            raise EnvelopeError(f"the message is {_json_kind(obj)}, not an object")
        header = obj.get("header")
        if header is None:
            raise EnvelopeError("no header")
        if not isinstance(header, dict):
            raise EnvelopeError(f"header is {_json_kind(header)}, not an object")
        kind = _header_text(header, "type")
        try:
            type_ = MessageType(kind)
        except ValueError:
            raise EnvelopeError(
                f"header.type {kind!r} is not one of {', '.join(t.value for t in MessageType)}"
            ) from None
        name, target = _header_text(header, "name"), _header_text(header, "target")
        request_id = result = error_message = None
        if type_ is MessageType.EVENT:
            extra = [key for key in ("requestId", "result", "errorMessage") if key in header]
            if extra:
                raise EnvelopeError(f"an event carries type, name and target only, not {', '.join(extra)}")
        else:
            request_id = _header_text(header, "requestId")
        if type_ is MessageType.RESPONSE:
            result = _header_text(header, "result")
            if result not in RESULTS:
                raise EnvelopeError(f"header.result {result!r} is neither {SUCCESS} nor {FAILURE}")
            error_message = header.get("errorMessage")
            if error_message is not None and not isinstance(error_message, str):
                raise EnvelopeError(f"header.errorMessage is {_json_kind(error_message)}, not a string")
        body = obj.get("body", {})
        if not isinstance(body, dict):
            raise EnvelopeError(f"body is {_json_kind(body)}, not an object")
        return cls(Header(type_, name, target, request_id, result, error_message), body)

    @classmethod
    def coerce(cls, message) -> Envelope:
        """``message`` as an :class:`Envelope`: one already, its wire form (a dict), or any object with ``to_json()``."""
        if isinstance(message, cls):
            return message
        obj = message if isinstance(message, dict) else message.to_json()
        return cls.from_json(obj)


def _header_text(header, key):
    value = header.get(key)
    if value is None:
        raise EnvelopeError(f"header.{key} is missing")
    if not isinstance(value, str) or not value:
        raise EnvelopeError(f"header.{key} is {_json_kind(value)}, not a non-empty string")
    return value


def new_request_id() -> str:
    return str(uuid.uuid4())


def query(name, target, body=None, request_id=None) -> Envelope:
    return Envelope(Header(MessageType.QUERY, name, target, request_id or new_request_id()), dict(body or {}))


def request(name, target, body=None, request_id=None) -> Envelope:
    return Envelope(Header(MessageType.REQUEST, name, target, request_id or new_request_id()), dict(body or {}))


def event(name, target, body=None) -> Envelope:
    return Envelope(Header(MessageType.EVENT, name, target), dict(body or {}))


def response(original: Envelope, result: str, body=None, error_message=None) -> Envelope:
    """The response to ``original``: its name, target and requestId, with ``result``."""
    header = Header(MessageType.RESPONSE, original.name, original.target, original.request_id, result, error_message)
    return Envelope(header, dict(body or {}))


def failure(original: Envelope, error_message: str) -> Envelope:
    return response(original, FAILURE, error_message=error_message)


# -- names ---------------------------------------------------------------------------------------

#: Every configurable name (``[cti.names]``) and its default. The conversation names are spec 004's;
#: the README's HIS notes give the other published ones; the rest follow the published pattern.
DEFAULT_NAMES = {
    "control_query_status": "control.query.status",
    "control_status": "control.status",
    "status_started": "STARTED",
    "status_stopped": "STOPPED",
    "status_degraded": "DEGRADED",
    "cti_query_capabilities": "cti.query.capabilities",
    "capability_channel_groups": "channel-groups-supported",
    "capability_telephony": "telephony",
    "capability_answer": "answer",
    "capability_hold": "hold",
    "capability_mute": "mute",
    "capability_dtmf": "dtmf",
    "capability_blind_transfer": "blind-transfer",
    "capability_blind_conference": "blind-conference",
    "capability_consult": "consult",
    "capability_alternate": "alternate",
    "capability_transfer_to_consult": "transfer-to-consult",
    "capability_conference_in_consult": "conference-in-consult",
    "session_query_init": "session.query.init",
    "session_request_ready": "session.request.ready",
    "session_request_notready": "session.request.notready",
    "session_request_logout": "session.request.logout",
    "session_request_dispose": "session.request.dispose",
    "channelgroup_query_init": "channelgroup.query.init",
    "channel_query_init": "channel.query.init",
    "channel_request_dial": "channel.request.dial",
    "channel_request_dispose": "channel.request.dispose",
    "channel_activated": "channel.activated",
    "channel_deactivated": "channel.deactivated",
    "channel_available": "channel.available",
    "channel_unavailable": "channel.unavailable",
    "channel_disposed": "channel.disposed",
    "channel_interaction": "channel.interaction",
    "interaction_query_init": "interaction.query.init",
    "interaction_request_accept": "interaction.request.accept",
    "interaction_request_reject": "interaction.request.reject",
    "interaction_request_complete": "interaction.request.complete",
    "interaction_request_dispose": "interaction.request.dispose",
    "interaction_request_register": "interaction.request.register",
    "interaction_request_consult": "interaction.request.consult",
    "interaction_request_alternate": "interaction.request.alternate",
    "interaction_request_transfertoconsult": "interaction.request.transfertoconsult",
    "interaction_request_conferenceinconsult": "interaction.request.conferenceinconsult",
    "interaction_alerting": "interaction.alerting",
    "interaction_dialing": "interaction.dialing",
    "interaction_started": "interaction.started",
    "interaction_ended": "interaction.ended",
    "interaction_completed": "interaction.completed",
    "interaction_focuschanged": "interaction.focuschanged",
    "conversation_query_init": "conversation.query.init",
    "conversation_request_answer": "conversation.request.answer",
    "conversation_request_release": "conversation.request.release",
    "conversation_request_removeparty": "conversation.request.removeparty",
    "conversation_request_hold": "conversation.request.hold",
    "conversation_request_retrieve": "conversation.request.retrieve",
    "conversation_request_mute": "conversation.request.mute",
    "conversation_request_unmute": "conversation.request.unmute",
    "conversation_request_transfer": "conversation.request.transfer",
    "conversation_request_conference": "conversation.request.conference",
    "conversation_request_senddtmf": "conversation.request.senddtmf",
    "conversation_request_dispose": "conversation.request.dispose",
    "conversation_ringing": "conversation.ringing",
    "conversation_dialing": "conversation.dialing",
    "conversation_busy": "conversation.busy",
    "conversation_failed": "conversation.failed",
    "conversation_held": "conversation.held",
    "conversation_mute": "conversation.mute",
    "conversation_talking": "conversation.talking",
    "conversation_partyadded": "conversation.partyadded",
    "conversation_partyremoved": "conversation.partyremoved",
    "conversation_started": "conversation.started",
    "conversation_ended": "conversation.ended",
    "conversation_transfer_failed": "conversation.transfer.failed",
    "conversation_conference_failed": "conversation.conference.failed",
    "conversation_disposed": "conversation.disposed",
}

#: Destination kind -> the key of its init query.
INIT_QUERY_KEYS = {
    "control": "control_query_status",
    "session": "session_query_init",
    "channelgroup": "channelgroup_query_init",
    "channel": "channel_query_init",
    "interaction": "interaction_query_init",
    "conversation": "conversation_query_init",
}

#: Destination kind -> the keys of the events the client may raise on it.
EVENT_KEYS = {
    "control": ("control_status",),
    "session": (),
    "channelgroup": (),
    "channel": ("channel_activated", "channel_deactivated", "channel_available", "channel_unavailable",
                "channel_disposed", "channel_interaction"),
    "interaction": ("interaction_alerting", "interaction_dialing", "interaction_started", "interaction_ended",
                    "interaction_completed", "interaction_focuschanged"),
    "conversation": ("conversation_ringing", "conversation_dialing", "conversation_busy", "conversation_failed",
                     "conversation_held", "conversation_mute", "conversation_talking", "conversation_partyadded",
                     "conversation_partyremoved", "conversation_started", "conversation_ended",
                     "conversation_transfer_failed", "conversation_conference_failed", "conversation_disposed"),
}

#: Key of a request or event -> the body properties spec 004 (and the README) make required.
REQUIRED_PROPERTIES = {
    "channel_request_dial": ("destination",),
    "interaction_request_consult": ("destination",),
    "interaction_request_register": ("id",),
    "interaction_focuschanged": ("id",),
    "conversation_request_removeparty": ("number",),
    "conversation_request_transfer": ("destination",),
    "conversation_request_conference": ("destination",),
    "conversation_request_senddtmf": ("digits",),
    "conversation_failed": ("reason",),
    "conversation_partyadded": ("number", "name"),
    "conversation_partyremoved": ("number",),
    "conversation_transfer_failed": ("reason",),
    "conversation_conference_failed": ("reason",),
}

_STATUS_KEYS = ("status_started", "status_stopped", "status_degraded")


class HisNames:
    """The message names, status values and capability keys, each overridable like ``[cti.names]``."""

    def __init__(self, **overrides):
        unknown = sorted(set(overrides) - set(DEFAULT_NAMES))
        if unknown:
            raise ValueError(f"unknown name key(s): {', '.join(unknown)}")
        values = {**DEFAULT_NAMES, **overrides}
        for key, value in values.items():
            if not isinstance(value, str) or not value:
                raise ValueError(f"name {key} must be a non-empty string, not {value!r}")
        for group in ("capability_", "status_", None):
            keys = [k for k in values if (k.startswith(group) if group else not k.startswith(("capability_", "status_")))]
            seen = {}
            for key in keys:
                if values[key] in seen:
                    raise ValueError(f"{key} and {seen[values[key]]} are both {values[key]!r}")
                seen[values[key]] = key
        self.__dict__.update(values)
        self._by_name = {value: key for key, value in values.items()
                         if not key.startswith(("capability_", "status_"))}

    def __eq__(self, other):
        return isinstance(other, HisNames) and self.as_dict() == other.as_dict()

    def __repr__(self):
        changed = {k: v for k, v in self.as_dict().items() if DEFAULT_NAMES[k] != v}
        return f"HisNames({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def as_dict(self) -> dict:
        return {key: getattr(self, key) for key in DEFAULT_NAMES}

    @classmethod
    def from_mapping(cls, mapping) -> HisNames:
        if not isinstance(mapping, Mapping):
            raise ValueError(f"names must be an object of name keys, not {_json_kind(mapping)}")
        return cls(**mapping)

    @classmethod
    def coerce(cls, names) -> HisNames:
        """``names`` as :class:`HisNames`: ``None`` (the defaults), a mapping, or any object with the name keys as attributes."""
        if names is None:
            return cls()
        if isinstance(names, cls):
            return names
        if isinstance(names, Mapping):
            return cls.from_mapping(names)
        return cls(**{key: getattr(names, key) for key in DEFAULT_NAMES if hasattr(names, key)})

    @property
    def statuses(self) -> tuple:
        return tuple(getattr(self, key) for key in _STATUS_KEYS)

    def init_query(self, kind: str) -> str:
        return getattr(self, INIT_QUERY_KEYS[kind])

    def events(self, kind: str) -> frozenset:
        return frozenset(getattr(self, key) for key in EVENT_KEYS[kind])

    def required_properties(self, name: str) -> tuple:
        return REQUIRED_PROPERTIES.get(self._by_name.get(name), ())


# -- bodies --------------------------------------------------------------------------------------


class BodyError(ValueError):
    """A body that does not have the shape the specification gives it."""


def _object(body, what="the body"):
    if not isinstance(body, dict):
        raise BodyError(f"{what} must be an object, not {_json_kind(body)}")
    return body


def _text(obj, key, required=True, default=None):
    value = obj.get(key)
    if value is None and not required:
        return default
    if value is None:
        raise BodyError(f"{key!r} is missing")
    if not isinstance(value, str) or not value:
        raise BodyError(f"{key!r} must be a non-empty string, not {value!r}")
    return value


def _one_of(obj, key, allowed):
    value = obj.get(key)
    if value is None:
        raise BodyError(f"{key!r} is missing")
    if value not in allowed:
        raise BodyError(f"{key!r} is {value!r}, not one of {', '.join(allowed)}")
    return value


def _array(obj, key, required=True):
    value = obj.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise BodyError(f"{key!r} must be an array, not {_json_kind(value)}")
    return value


@attrs.frozen
class ControlStatus:
    """The client's status (control status response and event): ``{"status", "reason"?}``."""

    status: str
    reason: str | None = None

    @classmethod
    def from_body(cls, body, names: HisNames, where: str = "status") -> ControlStatus:
        body = _object(body, where)
        status = _one_of(body, "status", names.statuses)
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise BodyError(f"'reason' must be a string, not {reason!r}")
        return cls(status, reason)


@attrs.frozen
class SessionLogin:
    """The body of ``session.query.init`` (README): the agent's name and the media it may use."""

    name: str
    chat: bool = False
    email: bool = False
    callback: bool = False

    def to_body(self) -> dict:
        return {"name": self.name, "chat": self.chat, "email": self.email, "callback": self.callback}


@attrs.frozen
class SessionInit:
    """The session init response: the session's single channel group, ``{"channelgroup": {"id"}}``."""

    channelgroup: str

    @classmethod
    def from_body(cls, body) -> SessionInit:
        group = _object(_object(body).get("channelgroup"), "'channelgroup'")
        return cls(_text(group, "id"))


@attrs.frozen
class Channel:
    id: str
    end_point: str
    type: str


@attrs.frozen
class ChannelGroupInit:
    """The channel group init response: ``{"channels": [{"id", "end-point", "type"}]}`` (the array always there)."""

    channels: list

    @classmethod
    def from_body(cls, body) -> ChannelGroupInit:
        channels = []
        for index, item in enumerate(_array(_object(body), "channels")):
            item = _object(item, f"channel {index}")
            channels.append(Channel(_text(item, "id"), _text(item, "end-point"), _text(item, "type")))
        return cls(channels)


@attrs.frozen
class ChannelInit:
    """The channel init response: ``{"state", "interactions": [<interaction id>, ...]}``."""

    state: str
    interactions: list

    @classmethod
    def from_body(cls, body) -> ChannelInit:
        body = _object(body)
        interactions = _array(body, "interactions", required=False)
        for item in interactions:
            if not isinstance(item, str) or not item:
                raise BodyError(f"'interactions' holds {item!r}, not an interaction id")
        return cls(_text(body, "state"), list(interactions))


#: Interaction states (README) and those in which the primary conversation must be named.
INTERACTION_STATES = ("ALERTING", "DIALING", "STARTED", "ENDED", "COMPLETED")
PRIMARY_REQUIRED = frozenset({"ALERTING", "DIALING", "STARTED"})
#: The only state in which the interaction init may name a consult ("and the agent has an active consult").
CONSULT_STATE = "STARTED"
#: States in which ``conversations`` must be empty (vendor's telephony interaction page).
EMPTY_CONVERSATIONS_STATES = frozenset({"ENDED", "COMPLETED"})


@attrs.frozen
class InteractionInit:
    """The telephony interaction init response (README): state, data and its conversations' ids."""

    state: str
    data: dict
    primary: str | None
    consult: str | None

    @classmethod
    def from_body(cls, body) -> InteractionInit:
        body = _object(body)
        state = _one_of(body, "interaction-state", INTERACTION_STATES)
        data = _object(body.get("interaction-data", {}), "'interaction-data'")
        conversations = body.get("conversations")
        if conversations is None:
            raise BodyError("'conversations' is missing")
        conversations = _object(conversations, "'conversations'")
        ids = {}
        for role in ("primary", "consult"):
            if conversations.get(role) is not None:
                ids[role] = _text(_object(conversations[role], f"'{role}'"), "id")
        if state in PRIMARY_REQUIRED and "primary" not in ids:
            raise BodyError(f"no 'primary' in state {state}")
        if "consult" in ids and state != CONSULT_STATE:
            raise BodyError(f"a 'consult' in state {state}: only a {CONSULT_STATE} interaction has a consult")
        if ids and state in EMPTY_CONVERSATIONS_STATES:
            raise BodyError(f"'conversations' must be empty in state {state}, not name {', '.join(ids)}")
        if ids.get("consult") is not None and ids.get("consult") == ids.get("primary"):
            raise BodyError(f"'primary' and 'consult' are both {ids['primary']!r}")
        return cls(state, data, ids.get("primary"), ids.get("consult"))


@attrs.frozen
class ConsultStarted:
    """The body of the SUCCESS response to ``interaction.request.consult``: the consult conversation's
    id, ``{"id"}``, which the bridge then registers (this project's choice: the vendor names no body)."""

    id: str

    @classmethod
    def from_body(cls, body) -> ConsultStarted:
        conversation_id = _text(_object(body), "id")
        if "." in conversation_id:
            raise BodyError(f"'id' {conversation_id!r} contains a dot")
        return cls(conversation_id)


@attrs.frozen
class Party:
    number: str
    name: str = ""


#: Conversation states (spec 004).
CONVERSATION_STATES = ("RINGING", "DIALING", "TALKING", "HELD", "RELEASED")


@attrs.frozen
class ConversationInit:
    """The conversation init response (spec 004): ``{"conversation-state", "parties": [{"number", "name"}]}``."""

    state: str
    parties: list

    @classmethod
    def from_body(cls, body) -> ConversationInit:
        body = _object(body)
        state = _one_of(body, "conversation-state", CONVERSATION_STATES)
        items = _array(body, "parties")
        if not items:
            raise BodyError("'parties' must not be empty")
        parties = []
        for index, item in enumerate(items):
            item = _object(item, f"party {index}")
            number = item.get("number")
            if not isinstance(number, str):
                raise BodyError(f"party {index}: 'number' must be a string, not {number!r}")
            name = item.get("name", "")
            if not isinstance(name, str):
                raise BodyError(f"party {index}: 'name' must be a string, not {name!r}")
            parties.append(Party(number, name))
        return cls(state, parties)


@attrs.frozen
class InteractionAnnouncement:
    """The body of the event announcing a new interaction on a channel: ``{"id"}``."""

    id: str

    @classmethod
    def from_body(cls, body) -> InteractionAnnouncement:
        return cls(_text(_object(body), "id"))


# -- targets -------------------------------------------------------------------------------------


def control_target(processor: str) -> str:
    """The control destination's target: ``<ProcessorName>.CONTROL``."""
    return f"{processor}.CONTROL"


def child_target(parent: str, child_id: str) -> str:
    """A destination's target: its parent's target and its own id, dot-joined."""
    return f"{parent}.{child_id}"


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
