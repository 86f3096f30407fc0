"""Patriot's Autodialler API messages, written from the specification for the simulators alone.

This module shares nothing with the gateway's Patriot adapter (``gateway.patriot``): it is the
simulators' own reading of specs 000 (*Patriot as Client*) and 001 (*Patriot as Server*), so a wire
mistake made on one side shows as a disagreement with the other instead of passing unseen.

Every message is one WebSocket text frame holding a JSON object ``{"type": ..., "payload": {...}}``;
the messages without fields (``heartbeat``, ``heartbeat-response``, ``hangup-request``,
``call-status-request``) have no payload. Optional fields (``?`` in the spec) are left out when unset.
"""

from __future__ import annotations

import json
import math

import attrs


class PatriotWireError(ValueError):
    """A frame that is not a valid message.

    :ivar reason: what is wrong, readable.
    :ivar message_type: the frame's ``type`` when it names a known message (the rest being wrong), else ``None``.
    """

    def __init__(self, reason: str, message_type: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.message_type = message_type


def _string(payload, key, required=True):
    value = payload.get(key)
    if value is None and not required:
        return None
    if value is None:
        raise ValueError(f"{key!r} missing")
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, not {value!r}")
    return value


def _boolean(payload, key, required=True):
    value = payload.get(key)
    if value is None and not required:
        return None
    if value is None:
        raise ValueError(f"{key!r} missing")
    if not isinstance(value, bool):
        raise ValueError(f"{key!r} must be a boolean, not {value!r}")
    return value


def _drop_none(fields: dict) -> dict:
    return {key: value for key, value in fields.items() if value is not None}


class PatriotMessage:
    """A message of the API: its wire ``TYPE``, its payload, and how it is read back."""

    TYPE = ""
    #: whether the message has a ``payload`` object
    HAS_PAYLOAD = True

    def wire_payload(self) -> dict:
        return {}

    @classmethod
    def from_payload(cls, payload: dict):
        return cls()

    def to_json(self) -> dict:
        if not self.HAS_PAYLOAD:
            return {"type": self.TYPE}
        return {"type": self.TYPE, "payload": self.wire_payload()}


# -- connection messages (000, Patriot as Client) ------------------------------------------------


@attrs.frozen
class InitRequest(PatriotMessage):
    """Patriot -> bridge: ``payload`` is whatever the administrator configured (server specific)."""

    TYPE = "init-request"
    payload: dict = attrs.field(factory=dict)

    def wire_payload(self):
        return dict(self.payload)

    @classmethod
    def from_payload(cls, payload):
        return cls(payload)


@attrs.frozen
class InitResponse(PatriotMessage):
    """Bridge -> Patriot: ``{success, error?}``."""

    TYPE = "init-response"
    success: bool
    error: str | None = None

    def wire_payload(self):
        return _drop_none({"success": self.success, "error": self.error})

    @classmethod
    def from_payload(cls, payload):
        return cls(_boolean(payload, "success"), _string(payload, "error", required=False))


@attrs.frozen
class Heartbeat(PatriotMessage):
    TYPE = "heartbeat"
    HAS_PAYLOAD = False


@attrs.frozen
class HeartbeatResponse(PatriotMessage):
    TYPE = "heartbeat-response"
    HAS_PAYLOAD = False


# -- authentication (001, Patriot as Server) -----------------------------------------------------


@attrs.frozen
class AuthenticationRequest(PatriotMessage):
    """Dialler client -> Patriot: ``{requestId?, apiKey}``."""

    TYPE = "authentication-request"
    api_key: str
    request_id: str | None = None

    def wire_payload(self):
        return _drop_none({"requestId": self.request_id, "apiKey": self.api_key})

    @classmethod
    def from_payload(cls, payload):
        return cls(_string(payload, "apiKey"), _string(payload, "requestId", required=False))


@attrs.frozen
class AuthenticationResponse(PatriotMessage):
    """Patriot -> dialler client: ``{requestId, success, error?}`` (``requestId`` always there)."""

    TYPE = "authentication-response"
    request_id: str
    success: bool
    error: str | None = None

    def wire_payload(self):
        return _drop_none({"requestId": self.request_id, "success": self.success, "error": self.error})

    @classmethod
    def from_payload(cls, payload):
        return cls(_string(payload, "requestId"), _boolean(payload, "success"), _string(payload, "error", required=False))


# -- call control (both modes) --------------------------------------------------------------------


@attrs.frozen
class DialRequest(PatriotMessage):
    """Patriot -> dialler: ``{phoneNo, rawPhoneNo}`` (``phoneNo`` sanitised to 0-9 + * #)."""

    TYPE = "dial-request"
    phone_no: str
    raw_phone_no: str

    def wire_payload(self):
        return {"phoneNo": self.phone_no, "rawPhoneNo": self.raw_phone_no}

    @classmethod
    def from_payload(cls, payload):
        return cls(_string(payload, "phoneNo"), _string(payload, "rawPhoneNo"))


@attrs.frozen
class HangupRequest(PatriotMessage):
    TYPE = "hangup-request"
    HAS_PAYLOAD = False


@attrs.frozen
class CallStatusRequest(PatriotMessage):
    TYPE = "call-status-request"
    HAS_PAYLOAD = False


@attrs.frozen
class CallStatusUpdate(PatriotMessage):
    """Dialler -> Patriot: ``{callActive, outbound?, callerId?}``."""

    TYPE = "call-status-update"
    call_active: bool
    outbound: bool | None = None
    caller_id: str | None = None

    def wire_payload(self):
        return _drop_none({"callActive": self.call_active, "outbound": self.outbound, "callerId": self.caller_id})

    @classmethod
    def from_payload(cls, payload):
        return cls(_boolean(payload, "callActive"), _boolean(payload, "outbound", required=False),
                   _string(payload, "callerId", required=False))


#: wire type -> message class, every message of specs 000 and 001
MESSAGE_TYPES = {
    cls.TYPE: cls
    for cls in (InitRequest, InitResponse, Heartbeat, HeartbeatResponse, AuthenticationRequest,
                AuthenticationResponse, DialRequest, HangupRequest, CallStatusRequest, CallStatusUpdate)
}


def encode(message: PatriotMessage) -> str:
    """The text of the frame carrying ``message``."""
    return json.dumps(message.to_json(), allow_nan=False)


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _finite(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def parse(data: bytes | str) -> PatriotMessage:
    """The message a text frame holds, or :class:`PatriotWireError` saying what is wrong with it."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PatriotWireError(f"invalid JSON: not UTF-8 ({e})") from None
    try:
        obj = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as e:
        raise PatriotWireError(f"invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise PatriotWireError("the message is not a JSON object")
    type_ = obj.get("type")
    if type_ is None:
        raise PatriotWireError("'type' missing")
    if not isinstance(type_, str) or type_ not in MESSAGE_TYPES:
        raise PatriotWireError(f"unknown message type {type_!r}")
    cls = MESSAGE_TYPES[type_]
    payload = obj.get("payload")
    if cls.HAS_PAYLOAD:
        if payload is None:
            raise PatriotWireError(f"{type_}: 'payload' missing", type_)
        if not isinstance(payload, dict):
            raise PatriotWireError(f"{type_}: 'payload' must be an object", type_)
    try:
        return cls.from_payload(payload if isinstance(payload, dict) else {})
    except ValueError as e:
        raise PatriotWireError(f"{type_}: {e}", type_) from None
