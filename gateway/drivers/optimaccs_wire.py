"""The OptimaCCS wire: JSON events of both provider APIs, checked and built in one place.

Both the inbound-call WebSocket (spec 002) and the outbound call API's media
WebSocket carry JSON text messages ``{"event": ..., ...}`` beside binary audio.
This module decodes a text message into ``(event, message)`` or raises
:class:`BadMessage`, checks the fields the gateway relies on, and normalises
the provider's CDR (``hangupCauseCode`` is a string in the inbound API and a
number in the outbound one). Nothing here does I/O.

Every text message, on both WebSockets, and every REST reply is decoded by
:func:`gateway.boundary.load_json`: strict UTF-8, no lone UTF-16 surrogate
(the refusal names the field), finite numbers only, nesting at most
:data:`gateway.boundary.MAX_DEPTH` deep. A refusal is a :class:`BadMessage`
whose ``field`` names the offending field.
"""

from __future__ import annotations

import json

import attrs

from gateway.boundary import PeerDataError, load_json, parse_int

__all__ = [
    "BadMessage",
    "CLOSE_INVALID",
    "COMMAND_DIGITS",
    "CallSetup",
    "KEYPAD_DIGITS",
    "MAX_TONE_MS",
    "CAUSE_CODE_INT",
    "SOURCE",
    "clamp_duration",
    "encode",
    "incoming_call",
    "keypad_digit",
    "normalise_cdr",
    "parse_event",
]

#: how the provider's CDRs are labelled beside the gateway's
SOURCE = "optimaccs"
#: digits a caller's keypad sends (the provider reports A-D too)
KEYPAD_DIGITS = frozenset("0123456789*#ABCD")
#: digits the provider can play toward a caller
COMMAND_DIGITS = frozenset("0123456789*#")
#: the longest DTMF tone the provider plays, in milliseconds
MAX_TONE_MS = 1000


#: the WebSocket close code for a text message this module refuses (1007, invalid payload data), on both
#: WebSockets: the inbound-call server's and the outbound call's media connection
CLOSE_INVALID = 1007

#: the field beside the provider's ``hangupCauseCode`` holding it as an integer (when it spells one)
CAUSE_CODE_INT = "hangupCauseCodeInt"


class BadMessage(ValueError):
    """A text message the gateway cannot use; ``str()`` says why, for the log and a close reason.

    ``field`` names the offending field when one is to blame (a lone surrogate in ``callerId``).
    """

    def __init__(self, problem: str, field: str | None = None) -> None:
        super().__init__(problem)
        self.field = field


def load(payload: bytes | str):
    """A JSON document from the provider, checked by the boundary policy; BadMessage otherwise."""
    try:
        return load_json(payload)
    except PeerDataError as error:
        raise BadMessage(str(error), error.field) from None


def parse_event(payload: bytes) -> tuple[str, dict]:
    """A text message as ``(event name, message)``; BadMessage unless it is a JSON object with a string event."""
    message = load(payload)
    if not isinstance(message, dict):
        raise BadMessage(f"not a JSON object but {type(message).__name__}")
    event = message.get("event")
    if not isinstance(event, str) or not event:
        raise BadMessage("no string 'event' field")
    return event, message


def encode(message: dict) -> bytes:
    """A message as compact UTF-8 JSON."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


@attrs.frozen
class CallSetup:
    """What an ``incoming_call`` says about the call."""

    caller_id: str
    did: str
    session_id: str


def incoming_call(message: dict) -> CallSetup:
    """The fields of an ``incoming_call``; BadMessage if one is missing or not a string.

    ``callerId`` may be empty (an anonymous caller); ``didNumber`` and
    ``sessionId`` may not.
    """
    fields = {}
    for name, may_be_empty in (("callerId", True), ("didNumber", False), ("sessionId", False)):
        value = message.get(name)
        if not isinstance(value, str):
            raise BadMessage(f"incoming_call: {name!r} must be a string, not {_kind(value)}")
        if not (value or may_be_empty):
            raise BadMessage(f"incoming_call: {name!r} must not be empty")
        fields[name] = value.strip()
    return CallSetup(fields["callerId"], fields["didNumber"], fields["sessionId"])


def keypad_digit(value) -> str | None:
    """A provider-reported DTMF digit, upper-cased, or None if it is not one of ``0-9 * # A-D``."""
    if isinstance(value, str) and len(value) == 1 and value.upper() in KEYPAD_DIGITS:
        return value.upper()
    return None


def clamp_duration(duration_ms) -> int:
    """A tone duration the provider accepts: whole milliseconds in 1..1000."""
    return max(1, min(MAX_TONE_MS, int(duration_ms)))


def normalise_cdr(data: dict) -> dict:
    """The provider's CDR as it came, plus :data:`CAUSE_CODE_INT` when ``hangupCauseCode`` spells an integer.

    ``hangupCauseCode`` itself is kept verbatim (``"16"`` in the inbound API, ``16`` in the outbound
    one, or whatever a broken provider sent: ``"--16"``, ``"²"``, 5,000 digits); ``hangupCauseCodeInt``
    is :func:`gateway.boundary.parse_int` of it (``"16"`` and ``16`` both give ``16``) and is absent when
    there is no integer to read. Never raises.
    """
    record = dict(data)
    record.pop(CAUSE_CODE_INT, None)  # ours, never the provider's
    code = parse_int(record.get("hangupCauseCode"))
    if code is not None:
        record[CAUSE_CODE_INT] = code
    return record


def _kind(value) -> str:
    return "missing" if value is None else type(value).__name__
