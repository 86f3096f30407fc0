"""Durable SMS records and chat conversations: the records and checks every store backend shares.

The Expertflow connector (:mod:`gateway.chat`) stores every SMS before it acknowledges it, and
marks it once it has been delivered (to the chat server for an inbound SMS, to the SMS transport
for an outbound one). Pending records are read back at start, oldest first, so nothing is lost
across a restart and the order per number is kept: ``seq`` grows with every record and is never
reused.

A record's ``external_id`` (the provider's message id for an inbound SMS, the chat server's
message id for an outbound one) makes storing idempotent: a second record with the same
direction and ``external_id`` is not stored, the first one is returned instead.

Conversations are the chat server's conversations opened for a customer's number; at most one per
number is open, and opening another closes the previous one.
"""

from __future__ import annotations

import json
import typing

import attrs

from gateway.boundary import check_text
from gateway.store.records import check_limit

__all__ = [
    "DIRECTIONS",
    "ConversationRecord",
    "SmsRecord",
    "check_conversation",
    "check_finish",
    "check_query",
    "check_sms",
    "matches",
]

Direction = typing.Literal["inbound", "outbound"]
DIRECTIONS = ("inbound", "outbound")


@attrs.frozen
class SmsRecord:
    """One SMS, inbound (customer -> chat server) or outbound (chat server -> customer)."""

    #: our GUID for the message (also its id toward the chat server or the transport)
    uid: str
    direction: Direction
    #: the customer's number: the sender of an inbound SMS, the recipient of an outbound one
    number: str
    text: str
    #: ISO 8601 UTC
    created_at: str
    #: inbound: "sms"; outbound: "reply" (an agent's message), "campaign", "auto-reply", "operator"
    kind: str = "sms"
    external_id: str | None = None
    conversation_id: str | None = None
    #: pending until delivered; failed when the far end refused it for good
    status: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    finished_at: str | None = None
    #: the store's sequence number, None until stored
    seq: int | None = None

    def to_dict(self) -> dict:
        return attrs.asdict(self)


@attrs.frozen
class ConversationRecord:
    """A chat server conversation opened for a customer's number."""

    conversation_id: str
    number: str
    #: the customer's participant ({"id", "name"}) from the init response
    participant: dict
    opened_at: str
    status: str = "open"
    closed_at: str | None = None
    close_reason: str | None = None


def _text(name: str, value, *, empty: bool = False) -> None:
    if not isinstance(value, str) or not (empty or value):
        raise ValueError(f"{name} must be a {'' if empty else 'non-empty '}string, got {value!r}")
    check_text(value, name)  # a lone surrogate: no UTF-8 database takes it


def check_sms(record: SmsRecord) -> SmsRecord:
    """``record`` if it can be stored as a new record; ``ValueError`` says what is wrong."""
    if not isinstance(record, SmsRecord):
        raise ValueError(f"expected an SmsRecord, got {type(record).__name__}")
    if record.direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {record.direction!r}")
    if record.status != "pending" or record.seq is not None:
        raise ValueError("a new SMS record is pending and has no seq yet")
    for name in ("uid", "number", "created_at", "kind"):
        _text(name, getattr(record, name))
    _text("text", record.text, empty=True)
    for name in ("external_id", "conversation_id"):
        if getattr(record, name) is not None:
            _text(name, getattr(record, name))
    return record


def check_conversation(record: ConversationRecord) -> ConversationRecord:
    """``record`` if it can be stored as an open conversation; ``ValueError`` otherwise."""
    if not isinstance(record, ConversationRecord):
        raise ValueError(f"expected a ConversationRecord, got {type(record).__name__}")
    for name in ("conversation_id", "number", "opened_at"):
        _text(name, getattr(record, name))
    if record.status != "open":
        raise ValueError("a conversation is stored open; close it with close_conversation")
    if not isinstance(record.participant, dict):
        raise ValueError(f"participant must be a dict, got {record.participant!r}")
    try:
        json.dumps(record.participant, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ValueError(f"participant is not JSON-able: {e}") from None
    return record


def check_finish(status: str) -> str:
    """``status`` if an SMS may finish with it; ``ValueError`` otherwise."""
    if status not in ("delivered", "failed"):
        raise ValueError(f"an SMS finishes delivered or failed, not {status!r}")
    return status


def matches(record: SmsRecord, direction: str | None, number: str | None, after: int) -> bool:
    """Whether ``record`` is selected by a :meth:`list_sms` query."""
    return (
        record.seq > after
        and (direction is None or record.direction == direction)
        and (number is None or record.number == number)
    )


def check_query(direction, number, after, limit) -> int:
    """The capped ``limit`` of a :meth:`list_sms` query; ``ValueError`` for a bad query."""
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if number is not None:
        _text("number", number)
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValueError(f"after must be a whole number of at least 0, got {after!r}")
    return check_limit(limit)
