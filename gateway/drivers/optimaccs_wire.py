"""The OptimaCCS wire: JSON events of both provider APIs, checked and built in one place.

Both the inbound-call WebSocket (spec 002) and the outbound call API's media
WebSocket carry JSON text messages ``{"event": ..., ...}`` beside binary audio.
This module decodes a text message into ``(event, message)`` or raises
:class:`BadMessage`, checks the fields the gateway relies on, and normalises
the provider's CDR (``hangupCauseCode`` is a string in the inbound API and a
number in the outbound one). Nothing here does I/O.
"""

from __future__ import annotations

import json

import attrs

__all__ = [
    "BadMessage",
    "COMMAND_DIGITS",
    "CallSetup",
    "KEYPAD_DIGITS",
    "MAX_TONE_MS",
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


class BadMessage(ValueError):
    """A text message the gateway cannot use; ``str()`` says why, for the log and a close reason."""


def parse_event(payload: bytes) -> tuple[str, dict]:
    """A text message as ``(event name, message)``; BadMessage unless it is a JSON object with a string event."""
    try:
        message = json.loads(payload)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise BadMessage(f"not JSON ({error})") from None
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
    """The provider's CDR as it came, but for ``hangupCauseCode``: an integer when it is one written as text."""
    record = dict(data)
    code = record.get("hangupCauseCode")
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        record["hangupCauseCode"] = int(code)
    return record


def _kind(value) -> str:
    return "missing" if value is None else type(value).__name__
