"""What both OptimaCCS simulators share: hangup causes, the CDR, DTMF schedules, JSON parsing.

The inbound provider client and the outbound fake API report a call the same way (a CDR with the
provider's field names and hangup cause table); they differ only in how ``hangupCauseCode`` is printed:
a string in the inbound API (as in spec 002), an integer in the outbound API.
"""

import datetime
import json

import attrs
from autobahn.websocket.protocol import WebSocketProtocol

#: the provider's hangup cause table (outbound API README, "Hangup Cause Codes")
HANGUP_CAUSES = {
    0: "Call terminated - unknown reason",
    1: "Invalid destination number",
    16: "Call completed successfully",
    17: "Destination busy",
    18: "No response from destination",
    19: "Destination not answering",
    21: "Call declined by user",
    27: "Service unavailable",
    28: "Invalid number format",
    29: "Service not supported",
    34: "Network congestion",
    38: "Network failure",
    44: "Resource unavailable",
    58: "Service not implemented",
    102: "Connection timeout",
    127: "System error",
}
NORMAL_CLEARING = 16
USER_BUSY = 17
NO_ANSWER = 19
CALL_REJECTED = 21
NETWORK_FAILURE = 38
CONNECTION_TIMEOUT = 102

#: digits a phone keypad can send (the provider reports A-D too)
KEYPAD_DIGITS = frozenset("0123456789*#ABCD")
#: digits the provider accepts in a DTMF command
COMMAND_DIGITS = frozenset("0123456789*#")
MAX_COMMAND_DTMF_MS = 1000


def iso_time(seconds):
    """A POSIX time as the provider prints it: ``2025-07-23T03:37:56.000Z``."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.frozen
class CallDetail:
    """A call detail record, in seconds since the epoch; :meth:`as_json` gives the provider's shape."""

    session_id: str
    source: str | None
    destination: str
    start: float
    answer: float | None
    end: float
    #: ANSWERED, NO ANSWER, BUSY, FAILED or CANCEL
    disposition: str
    #: CALLER, CALLEE or None
    hangup_by: str | None
    cause: int = attrs.field(validator=attrs.validators.in_(HANGUP_CAUSES))

    def as_json(self, cause_as_string):
        return {
            "sessionId": self.session_id,
            "source": self.source,
            "destination": self.destination,
            "startTime": iso_time(self.start),
            "answerTime": None if self.answer is None else iso_time(self.answer),
            "endTime": iso_time(self.end),
            "duration": int(self.end - self.start),
            "billableSeconds": 0 if self.answer is None else int(self.end - self.answer),
            "disposition": self.disposition,
            "hangupBy": self.hangup_by,
            "hangupCauseCode": str(self.cause) if cause_as_string else self.cause,
            "hangupCauseText": HANGUP_CAUSES[self.cause],
        }


@attrs.frozen
class TimedDigit:
    """A DTMF digit to send ``at`` seconds after the call was answered."""

    digit: str = attrs.field(validator=attrs.validators.in_(KEYPAD_DIGITS))
    at: float = attrs.field(converter=float, validator=attrs.validators.ge(0))


def parse_dtmf_schedule(text):
    """``"1@2.0,#@3.5"`` -> (TimedDigit("1", 2.0), TimedDigit("#", 3.5)); ``ValueError`` if malformed."""
    schedule = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        digit, at_sign, at = item.partition("@")
        if not at_sign:
            raise ValueError(f"DTMF schedule item {item!r} is not DIGIT@SECONDS")
        try:
            schedule.append(TimedDigit(digit.strip().upper(), at))
        except (TypeError, ValueError) as error:
            raise ValueError(f"DTMF schedule item {item!r}: {error}") from None
    return tuple(schedule)


@attrs.frozen
class ReceivedEvent:
    """A JSON message from the peer and when it arrived."""

    at: float
    event: str
    message: dict


class BadMessage(ValueError):
    """A peer's text frame is not a JSON object with a string ``event``."""


def parse_event(payload):
    """Decode a text frame into (event name, message object); :class:`BadMessage` if it is not one."""
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as error:
        raise BadMessage(f"not JSON: {error}") from None
    if not isinstance(message, dict):
        raise BadMessage(f"not a JSON object: {payload[:80]!r}")
    event = message.get("event")
    if not isinstance(event, str):
        raise BadMessage(f"no string 'event' in {payload[:80]!r}")
    return event, message


def encode_json(message):
    """A message as the UTF-8 JSON text frame payload."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def dtmf_duration_problem(duration):
    """Why ``duration`` (ms) is not a valid DTMF command duration, or None if it is."""
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        return f"duration {duration!r} is not a number"
    if not 0 < duration <= MAX_COMMAND_DTMF_MS:
        return f"duration {duration!r} ms is not in (0, {MAX_COMMAND_DTMF_MS}]"
    return None


def send_if_open(protocol, payload, binary):
    """Send one WebSocket message unless the connection is closing or closed; whether it was sent."""
    if protocol.state != WebSocketProtocol.STATE_OPEN:
        return False
    protocol.sendMessage(payload, isBinary=binary)
    return True
