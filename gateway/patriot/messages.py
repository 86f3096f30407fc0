"""The Patriot dialler messages, shared by both Patriot modes: parse, validate and encode.

Patriot speaks the same small protocol whether it is the WebSocket client (connecting to the
gateway's Dialler Bridge) or the server (hosting the Desktop API the gateway connects to): a text
frame holding a JSON object with a string ``type`` and, for some types, an object ``payload``.

:func:`parse` turns one frame into a frozen value object, or raises :class:`PatriotMessageError`
whose ``reason`` says, readably, what was wrong (invalid JSON, not an object, missing or ill-typed
``type``, unknown type, missing or ill-typed payload field, bad phone number, bad text) and whose
``kind`` is the reason an ignored message is counted under (:data:`gateway.boundary.IGNORED_REASONS`).
:func:`encode` turns a value object back into compact JSON text.

Every frame is decoded by :func:`gateway.boundary.load_json` (strict UTF-8, no lone UTF-16
surrogate, finite numbers, bounded nesting). A frame that is sound JSON but holds a lone surrogate
in some field is refused as that message type (``message_type`` set, ``kind`` ``bad_text``, the
field named), so that the session can give that message its own error: an ``init-request`` with a
surrogate in its password is an init failure, a ``dial-request`` is answered with the call status.

The reader is tolerant where the vendor's interfaces allow it: unknown payload fields are ignored,
a payload on a type that has none is ignored, and ``null`` in an optional field reads as absent.
An ``init-request`` payload may also be a *string* holding a JSON object (Patriot's
``WebSocketClientDiallerConfig`` setting is a JSON string): it is read as that object, through
``load_json`` too. Pure code: no I/O, no reactor.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import attrs
from attrs.validators import instance_of, optional

from gateway.boundary import PeerDataError, load_json

#: Characters Patriot leaves in a sanitised phone number (``phoneNo`` of a dial request).
PHONE_CHARACTERS = frozenset("0123456789+*#")

#: The longest ``phoneNo`` :func:`parse` accepts unless told otherwise.
DEFAULT_MAX_PHONE_LENGTH = 32

_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


class PatriotMessageError(ValueError):
    """A frame that is not a valid Patriot message.

    :ivar reason: what was wrong, readable enough to log or send back to the peer.
    :ivar message_type: the frame's ``type`` when it was a known one, else ``None`` (so a server
        can still answer, for instance, a malformed ``authentication-request``).
    :ivar kind: why it is ignored, one of :data:`gateway.boundary.IGNORED_REASONS`: ``malformed``
        (not JSON, not an object, a missing or ill-typed field), ``bad_text`` (not UTF-8, a lone
        surrogate) or ``unknown`` (an unknown ``type``).
    :ivar field: the offending field's path (``payload.password``) when one is to blame.
    :ivar unreadable: the frame could not be read as JSON under the boundary policy (not UTF-8, not
        JSON, ``NaN``, an overflowing number, nesting too deep, bad text where its ``type`` would be),
        so what it was meant to be is unknown: a Dialler Bridge answers it as a failed init before
        a login. ``False`` for a readable document that is not a valid message.
    """

    def __init__(self, reason: str, message_type: str | None = None, *, kind: str = "malformed",
                 field: str | None = None, unreadable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.message_type = message_type
        self.kind = kind
        self.field = field
        self.unreadable = unreadable


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters (a peer's unknown type may be 64 KiB long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _json_name(value: Any) -> str:
    """How a JSON reader would name the type of ``value`` ("a string", "an array", ...)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _wire(name: str, kind: type, *, required: bool = True):
    """An attrs field carried in the payload as ``name``, a JSON value of Python type ``kind``."""
    metadata = {"wire": name, "kind": kind}
    if required:
        return attrs.field(validator=instance_of(kind), metadata=metadata)
    return attrs.field(default=None, validator=optional(instance_of(kind)), metadata=metadata)


@attrs.frozen
class PatriotMessage:
    """Base of every Patriot message: ``TYPE`` is the wire ``type``; fields map to the payload."""

    TYPE: ClassVar[str]

    @classmethod
    def from_payload(cls, payload: dict | None) -> PatriotMessage:
        """Build the message from its payload object (``None`` when the frame had none)."""
        fields = attrs.fields(cls)
        if fields and payload is None:
            raise PatriotMessageError(f"{cls.TYPE}: payload missing", cls.TYPE)
        values = {}
        for field in fields:
            wire, kind = field.metadata["wire"], field.metadata["kind"]
            value = payload.get(wire)
            if value is None:
                if field.default is attrs.NOTHING:
                    raise PatriotMessageError(f"{cls.TYPE}: payload field {wire!r} missing", cls.TYPE)
                continue
            if not isinstance(value, kind):
                raise PatriotMessageError(
                    f"{cls.TYPE}: payload field {wire!r} must be {_JSON_NAMES[kind]}, not {_json_name(value)}",
                    cls.TYPE,
                )
            values[field.name] = value
        return cls(**values)

    def to_payload(self) -> dict | None:
        """The payload object to send, or ``None`` for a type without one; absent optionals are left out."""
        fields = attrs.fields(type(self))
        if not fields:
            return None
        return {
            field.metadata["wire"]: getattr(self, field.name)
            for field in fields
            if getattr(self, field.name) is not None
        }


@attrs.frozen
class InitRequest(PatriotMessage):
    """Patriot (client mode) -> bridge: the administrator's ``WebSocketClientDiallerConfig`` object."""

    TYPE: ClassVar[str] = "init-request"
    payload: dict = attrs.field(factory=dict, validator=instance_of(dict))

    @classmethod
    def from_payload(cls, payload):
        if payload is None:
            raise PatriotMessageError(f"{cls.TYPE}: payload missing", cls.TYPE)
        if isinstance(payload, str):
            payload = _payload_from_string(payload)
        if not isinstance(payload, dict):
            raise PatriotMessageError(f"{cls.TYPE}: payload must be an object, not {_json_name(payload)}", cls.TYPE)
        return cls(payload)

    def to_payload(self):
        return self.payload


@attrs.frozen
class InitResponse(PatriotMessage):
    """Bridge -> Patriot: whether the init request was accepted."""

    TYPE: ClassVar[str] = "init-response"
    success: bool = _wire("success", bool)
    error: str | None = _wire("error", str, required=False)


@attrs.frozen
class Heartbeat(PatriotMessage):
    """Patriot (client mode) -> bridge, every five seconds."""

    TYPE: ClassVar[str] = "heartbeat"


@attrs.frozen
class HeartbeatResponse(PatriotMessage):
    """Bridge -> Patriot: the answer to a heartbeat."""

    TYPE: ClassVar[str] = "heartbeat-response"


@attrs.frozen
class DialRequest(PatriotMessage):
    """Patriot -> dialler: place a call to ``phone_no`` (sanitised) typed by the operator as ``raw_phone_no``."""

    TYPE: ClassVar[str] = "dial-request"
    phone_no: str = _wire("phoneNo", str)
    raw_phone_no: str = _wire("rawPhoneNo", str)


@attrs.frozen
class HangupRequest(PatriotMessage):
    """Patriot -> dialler: end the current call."""

    TYPE: ClassVar[str] = "hangup-request"


@attrs.frozen
class CallStatusRequest(PatriotMessage):
    """Patriot -> dialler: send a call-status-update now."""

    TYPE: ClassVar[str] = "call-status-request"


@attrs.frozen
class CallStatusUpdate(PatriotMessage):
    """Dialler -> Patriot: the call state, on every change and on request."""

    TYPE: ClassVar[str] = "call-status-update"
    call_active: bool = _wire("callActive", bool)
    outbound: bool | None = _wire("outbound", bool, required=False)
    caller_id: str | None = _wire("callerId", str, required=False)


@attrs.frozen
class AuthenticationRequest(PatriotMessage):
    """Dialler client -> Patriot (server mode): the API key, with an optional id to echo."""

    TYPE: ClassVar[str] = "authentication-request"
    api_key: str = _wire("apiKey", str)
    request_id: str | None = _wire("requestId", str, required=False)


@attrs.frozen
class AuthenticationResponse(PatriotMessage):
    """Patriot (server mode) -> dialler client: the verdict, always with a ``request_id``."""

    TYPE: ClassVar[str] = "authentication-response"
    request_id: str = _wire("requestId", str)
    success: bool = _wire("success", bool)
    error: str | None = _wire("error", str, required=False)


#: wire ``type`` -> message class
MESSAGE_TYPES: dict[str, type[PatriotMessage]] = {
    cls.TYPE: cls
    for cls in (
        InitRequest,
        InitResponse,
        Heartbeat,
        HeartbeatResponse,
        DialRequest,
        HangupRequest,
        CallStatusRequest,
        CallStatusUpdate,
        AuthenticationRequest,
        AuthenticationResponse,
    )
}


def check_phone_number(number: str, max_length: int = DEFAULT_MAX_PHONE_LENGTH) -> str:
    """Return ``number`` if it is a dialable sanitised number, else raise :class:`PatriotMessageError`.

    Dialable: not empty, at most ``max_length`` characters, only ``0-9``, ``+``, ``*`` and ``#``.
    """
    if not number:
        raise PatriotMessageError("phone number is empty", DialRequest.TYPE)
    if len(number) > max_length:
        raise PatriotMessageError(
            f"phone number has {len(number)} characters, more than {max_length}", DialRequest.TYPE
        )
    bad = sorted(set(number) - PHONE_CHARACTERS)
    if bad:
        raise PatriotMessageError(
            f"phone number {number!r} has characters other than 0-9 + * #: {''.join(bad)!r}", DialRequest.TYPE
        )
    return number


def _payload_from_string(text: str) -> dict:
    """An init-request payload sent as a string: the JSON object it holds (boundary policy applies)."""
    try:
        value = load_json(text)
    except PeerDataError as error:
        if error.document is not None:
            raise _refused_text(error, InitRequest.TYPE, prefix="payload.") from None
        raise PatriotMessageError(f"{InitRequest.TYPE}: payload is a string but not a JSON object: {error.problem}",
                                  InitRequest.TYPE) from None
    if not isinstance(value, dict):
        raise PatriotMessageError(f"{InitRequest.TYPE}: payload is a string holding {_json_name(value)}, "
                                  "not a JSON object", InitRequest.TYPE)
    return value


def _refused_text(error: PeerDataError, known: str | None = None, prefix: str = "") -> PatriotMessageError:
    """A frame that is sound JSON but for a lone surrogate in ``error.field``: refused as its own type.

    ``prefix`` is the path of the part ``error.document`` was read from (``payload.`` for an init
    payload sent as a string).
    """
    document = error.document
    unreadable = False
    if known is None:
        type_ = document.get("type") if isinstance(document, dict) else None
        known = type_ if isinstance(type_, str) and type_ in MESSAGE_TYPES else None
        unreadable = not isinstance(type_, str)  # what it was meant to be cannot be told
    path = f"{prefix}{error.field}"
    field = _short(path)
    if not error.in_key:
        where = f"field {field}"
    elif _top_level_key(document, error.field):  # the boundary names such a key itself, escaped
        where = f"the key {field}"
    else:  # and any other by the object holding it
        where = f"a key in field {field}"
    type_prefix = f"{known}: " if known else ""
    return PatriotMessageError(f"{type_prefix}{where} holds a lone UTF-16 surrogate (not valid Unicode text)",
                               known, kind="bad_text", field=path, unreadable=unreadable)


def _top_level_key(document: Any, field: str) -> bool:
    """Whether the boundary's ``field`` for a bad key names a key of ``document`` itself (not an object in it)."""
    if not isinstance(document, dict):
        return False
    first = field.split(".", 1)[0].split("[", 1)[0]
    return field not in document and first not in document


def _load_object(data: str | bytes) -> dict:
    """Decode one frame into a JSON object through the boundary policy, or raise :class:`PatriotMessageError`."""
    try:
        obj = load_json(data)
    except PeerDataError as error:
        if error.document is not None:
            raise _refused_text(error) from None
        if error.reason == "bad_text":
            raise PatriotMessageError(f"invalid text: {error}", kind="bad_text", unreadable=True) from None
        raise PatriotMessageError(f"invalid JSON: {error}", unreadable=True) from None
    if not isinstance(obj, dict):
        raise PatriotMessageError(f"message must be a JSON object, not {_json_name(obj)}")
    return obj


def parse(data: str | bytes, *, max_phone_length: int = DEFAULT_MAX_PHONE_LENGTH) -> PatriotMessage:
    """Parse one frame (text, or UTF-8 bytes) into a message object.

    :param max_phone_length: the longest ``phoneNo`` accepted in a dial request.
    :raises PatriotMessageError: with a readable ``reason`` for anything that is not a valid message.
    """
    obj = _load_object(data)
    if "type" not in obj:
        raise PatriotMessageError("message has no 'type'")
    type_ = obj["type"]
    if not isinstance(type_, str):
        raise PatriotMessageError(f"'type' must be a string, not {_json_name(type_)}")
    cls = MESSAGE_TYPES.get(type_)
    if cls is None:
        raise PatriotMessageError(f"unknown message type {_short(type_)}", kind="unknown")
    payload = obj.get("payload")
    if payload is not None and not isinstance(payload, dict) and cls is not InitRequest:
        raise PatriotMessageError(f"{type_}: payload must be an object, not {_json_name(payload)}", type_)
    message = cls.from_payload(payload)
    if isinstance(message, DialRequest):
        check_phone_number(message.phone_no, max_phone_length)
    return message


def encode(message: PatriotMessage) -> str:
    """The compact JSON text of ``message``: ``type`` first, ``payload`` only when the type has one."""
    obj: dict[str, Any] = {"type": message.TYPE}
    payload = message.to_payload()
    if payload is not None:
        obj["payload"] = payload
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
