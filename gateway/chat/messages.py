"""The Expertflow Customer Channel API's payloads (spec 003), built and parsed without I/O.

The vendor's sample payloads are not public; the shapes follow the field tables of 003, and every
parser ignores fields it does not know. Malformed input raises :class:`BadPayload` naming the field:
a field 003 types as a String must be one (a number is refused, never converted), and ids are at
most :data:`MAX_ID_LENGTH` characters.

- Participant: ``{"id", "name"}``.
- ChatMessage: ``{"id", "type": "ChatMessage", "conversationId", "from", "to": [Participant],
  "text", "refId", "tag": "" | "whisper", "attachments": [Attachment], "timestamp"}``; ``refId`` is
  the customer's number; a campaign message has no ``conversationId``.
- ActivityMessage: ``{"type": "ActivityMessage", "conversationId", "from", "to", "activityType",
  "info"}``.
- init request: ``firstName, lastName, email, phone, channel, language, refId, url, comment,
  subject, requestId, timestamp``; response: ``{conversationId, participant, requestId, timestamp}``.
"""

from __future__ import annotations

import attrs

__all__ = [
    "BadPayload",
    "IncomingMessage",
    "Participant",
    "customer_message",
    "init_body",
    "parse_init_response",
    "parse_message",
]

CHAT_MESSAGE = "ChatMessage"
ACTIVITY_MESSAGE = "ActivityMessage"
WHISPER = "whisper"
#: the longest id (message, conversation, participant), activity type or tag taken from the chat server
MAX_ID_LENGTH = 256
#: the init request's optional customer fields an admin request may set
CUSTOMER_FIELDS = ("firstName", "lastName", "email", "language", "url", "comment", "subject")


class BadPayload(ValueError):
    """A payload from the chat server that cannot be used.

    ``reason`` is what it is counted as (``malformed``, or ``oversized`` for a value over its cap).
    """

    def __init__(self, problem: str, reason: str = "malformed"):
        super().__init__(problem)
        self.reason = reason


@attrs.frozen
class Participant:
    id: str
    name: str

    @classmethod
    def parse(cls, value, what: str = "participant") -> "Participant":
        if not isinstance(value, dict) or not isinstance(value.get("id"), str) or not value["id"]:
            raise BadPayload(f"{what} is not a participant object with an id: {value!r:.80}")
        if len(value["id"]) > MAX_ID_LENGTH:
            raise BadPayload(f"{what}'s id is longer than {MAX_ID_LENGTH} characters")
        name = value.get("name")
        if name is not None and not isinstance(name, str):
            raise BadPayload(f"{what}'s name is not a string: {name!r:.40}")
        return cls(value["id"], value["id"] if name is None else name)

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name}


@attrs.frozen
class IncomingMessage:
    """A ``messageArrived`` payload: a ChatMessage or an ActivityMessage."""

    type: str
    conversation_id: str | None
    sender: Participant | None
    #: the recipients' participant ids (empty: everyone in the conversation)
    to: tuple[str, ...] = ()
    id: str | None = None
    text: str = ""
    ref_id: str | None = None
    tag: str = ""
    activity_type: str | None = None
    info: dict = attrs.Factory(dict)
    #: the attachments' content URLs
    attachments: tuple[str, ...] = ()

    @property
    def is_chat(self) -> bool:
        return self.type == CHAT_MESSAGE

    @property
    def is_whisper(self) -> bool:
        return self.tag == WHISPER

    def for_participant(self, participant_id: str) -> bool:
        """Whether the message reaches that participant (an empty ``to`` is a broadcast)."""
        return not self.to or participant_id in self.to

    def sms_text(self) -> str:
        """The text of an SMS carrying this message: the text, then one line per attachment URL."""
        return "\n".join(part for part in (self.text, *self.attachments) if part)


def _optional_text(payload: dict, key: str, limit: int = MAX_ID_LENGTH) -> str | None:
    """The string ``payload[key]`` (absent or empty: None); BadPayload for any other type or over ``limit``."""
    value = payload.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):  # 003 types it String: a number is refused, not converted
        raise BadPayload(f"{key} is not a string: {value!r:.40}")
    if len(value) > limit:
        raise BadPayload(f"{key} is longer than {limit} characters")
    return value


def _recipients(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadPayload(f"to is not a list: {value!r:.80}")
    return tuple(Participant.parse(item, "a recipient").id for item in value)


def _attachment_urls(value) -> tuple[str, ...]:
    """The http(s) content URLs of the attachments (data: and file: URLs mean nothing in an SMS)."""
    if not isinstance(value, list):
        return ()
    urls = (item.get("contentUrl") for item in value if isinstance(item, dict))
    return tuple(url for url in urls if isinstance(url, str) and url.startswith(("http://", "https://")))


def parse_message(payload) -> IncomingMessage:
    """The message in a ``messageArrived`` payload; :class:`BadPayload` when it is not usable."""
    if not isinstance(payload, dict):
        raise BadPayload(f"the message is not an object: {payload!r:.80}")
    kind = payload.get("type")
    if kind not in (CHAT_MESSAGE, ACTIVITY_MESSAGE):
        raise BadPayload(f"unknown message type {kind!r:.40}")
    sender = payload.get("from")
    common = dict(
        type=kind,
        conversation_id=_optional_text(payload, "conversationId"),
        sender=None if sender is None else Participant.parse(sender, "from"),
        to=_recipients(payload.get("to")),
        id=_optional_text(payload, "id"),
    )
    if kind == ACTIVITY_MESSAGE:
        activity = _optional_text(payload, "activityType")
        if activity is None:
            raise BadPayload("an ActivityMessage without an activityType")
        info = payload.get("info")
        return IncomingMessage(**common, activity_type=activity, info=info if isinstance(info, dict) else {})
    text = payload.get("text", "")
    if not isinstance(text, str):
        raise BadPayload(f"text is not a string: {text!r:.80}")
    return IncomingMessage(
        **common,
        text=text,
        ref_id=_optional_text(payload, "refId"),
        tag=_optional_text(payload, "tag") or "",
        attachments=_attachment_urls(payload.get("attachments")),
    )


def customer_message(
    *, uid: str, conversation_id: str, participant: dict, text: str, number: str, timestamp: str
) -> dict:
    """The ChatMessage ``sendMessage`` carries for an SMS from the customer."""
    return {
        "id": uid,
        "type": CHAT_MESSAGE,
        "conversationId": conversation_id,
        "from": participant,
        "to": [],
        "text": text,
        "refId": number,
        "tag": "",
        "attachments": [],
        "timestamp": timestamp,
    }


def init_body(*, number: str, channel: str, request_id: str, timestamp: str, customer: dict) -> dict:
    """The body of ``POST /api/customer/init`` for the customer at ``number``.

    ``customer`` holds the optional fields of :data:`CUSTOMER_FIELDS` (empty ones are left out);
    the first name defaults to the number.
    """
    body = {"firstName": number}
    body.update({key: value for key, value in customer.items() if key in CUSTOMER_FIELDS and value})
    body.update({"phone": number, "refId": number, "channel": channel, "requestId": request_id, "timestamp": timestamp})
    return body


def parse_init_response(body) -> tuple[str, Participant]:
    """``(conversationId, participant)`` from the init response; :class:`BadPayload` otherwise."""
    if not isinstance(body, dict):
        raise BadPayload(f"the init response is not an object: {body!r:.80}")
    conversation_id = _optional_text(body, "conversationId")
    if conversation_id is None:
        raise BadPayload(f"the init response has no conversationId: {body!r:.120}")
    participant = body.get("participant") or body.get("Participant")
    return conversation_id, Participant.parse(participant, "the init response's participant")
