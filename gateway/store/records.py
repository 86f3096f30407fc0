"""How CDRs are checked, turned into rows and back: the part every store backend shares.

Timestamps are compared as text, so every time a store indexes (a CDR's
``started_at``/``answered_at``/``ended_at``, a ``since`` bound, a provider
CDR's ``received_at``) is first normalized to one form:
``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC. The CDR document itself is kept
exactly as the call core wrote it.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import attrs

from gateway.boundary import check_text

__all__ = [
    "MAX_LIMIT",
    "CdrRow",
    "ProviderRow",
    "check_limit",
    "decode_cdr",
    "encode_cdr",
    "encode_provider_cdr",
    "normalize_timestamp",
    "query_bounds",
    "timestamp_from_seconds",
]

#: the most CDRs one :meth:`ICdrStore.cdrs` or :meth:`ICdrStore.recent_cdrs` call returns
MAX_LIMIT = 1000

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def normalize_timestamp(value: Any) -> str:
    """An ISO 8601 time as sortable UTC text; a time without an offset is taken as UTC.

    Raises ``ValueError`` naming the value when it is not an ISO 8601 time.
    """
    try:
        moment = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected an ISO 8601 time, got {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime(_FORMAT)


def timestamp_from_seconds(seconds: float) -> str:
    """A POSIX time (``clock.seconds()``) in the normalized form."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(_FORMAT)


def check_limit(limit: Any) -> int:
    """``limit`` capped at :data:`MAX_LIMIT`; ``ValueError`` unless it is an int of at least 1."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a whole number of at least 1, got {limit!r}")
    return min(limit, MAX_LIMIT)


def query_bounds(since: Any, limit: Any) -> tuple[str, int]:
    """The checked ``(since, limit)`` of a CDR query; ``""`` (before any time) when ``since`` is None."""
    return ("" if since is None else normalize_timestamp(since)), check_limit(limit)


def _check_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return check_text(value, name)


def _to_json(what: str, value: Any) -> str:
    """``value`` as JSON text a UTF-8 database takes: ``ValueError`` for a non-finite number, a value
    JSON cannot hold, or a lone surrogate (every backend refuses these alike; see :mod:`gateway.store.guard`)."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
        raise ValueError(f"{what} is not JSON-able: {e}") from None
    return text


#: the CDR's indexed text columns: a value of another type could not be bound (SQLite and PostgreSQL
#: would fail the write with an error that is no ValueError, taken for an outage and retried forever)
TEXT_COLUMNS = ("node", "direction", "extension", "cause", "hangup_by")


def _optional_text(cdr: dict, key: str) -> str | None:
    value = cdr.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"the CDR's {key} must be text, got {type(value).__name__}")
    return value


def _optional_number(cdr: dict, key: str) -> Any:
    """A number column: a number, or the text the guard leaves of a non-finite one (``"NaN"``)."""
    value = cdr.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
        raise ValueError(f"the CDR's {key} must be a number, got {type(value).__name__}")
    return value


def _optional_time(cdr: dict, key: str) -> str | None:
    value = cdr.get(key)
    return None if value is None else normalize_timestamp(value)


@attrs.frozen
class CdrRow:
    """A CDR as a store keeps it: the indexed columns plus the whole JSON document."""

    call_id: str
    node: str | None
    direction: str | None
    extension: str | None
    started_at: str | None
    answered_at: str | None
    ended_at: str
    duration: float | None
    billable_seconds: float | None
    cause: str | None
    hangup_by: str | None
    document: str


@attrs.frozen
class ProviderRow:
    """A provider's own CDR as a store keeps it."""

    call_id: str
    source: str
    data: str
    received_at: str

    def to_dict(self) -> dict:
        return {"source": self.source, "data": json.loads(self.data), "received_at": self.received_at}


def encode_cdr(cdr: Any) -> CdrRow:
    """Check a CDR from the call core and build its row; ``ValueError`` says what is wrong."""
    if not isinstance(cdr, dict):
        raise ValueError(f"a CDR must be a dict, got {type(cdr).__name__}")
    return CdrRow(
        call_id=_check_id("call_id", cdr.get("call_id")),
        node=_optional_text(cdr, "node"),
        direction=_optional_text(cdr, "direction"),
        extension=_optional_text(cdr, "extension"),
        started_at=_optional_time(cdr, "started_at"),
        answered_at=_optional_time(cdr, "answered_at"),
        ended_at=normalize_timestamp(cdr.get("ended_at")),
        duration=_optional_number(cdr, "duration"),
        billable_seconds=_optional_number(cdr, "billable_seconds"),
        cause=_optional_text(cdr, "cause"),
        hangup_by=_optional_text(cdr, "hangup_by"),
        document=_to_json("the CDR", cdr),
    )


def encode_provider_cdr(call_id: Any, source: Any, data: Any, received_seconds: float) -> ProviderRow:
    """Check a provider CDR and build its row, stamped with when it was received."""
    if not isinstance(data, dict):
        raise ValueError(f"a provider CDR must be a dict, got {type(data).__name__}")
    return ProviderRow(
        call_id=_check_id("call_id", call_id),
        source=_check_id("source", source),
        data=_to_json("the provider CDR", data),
        received_at=timestamp_from_seconds(received_seconds),
    )


def decode_cdr(document: str, providers: list[ProviderRow]) -> dict:
    """The CDR dict callers get back: the stored document plus its provider CDRs."""
    cdr = json.loads(document)
    cdr["provider_cdrs"] = [p.to_dict() for p in providers]
    return cdr
