"""Call detail records: the one dict an ended call leaves behind, and its delivery to the store.

:func:`build_cdr` renders a :class:`~gateway.core.model.Call` in the store's
contract (times as ISO 8601 UTC from the registry's clock). A
:class:`RetryingSink` hands records to an asynchronous sink (the store's
``add_cdr`` or ``attach_provider_cdr``) without ever holding up the caller: a
failure is logged and retried with growing delays, and a record still
undelivered when the sink is closed is logged in full, so none is lost
silently. A ``ValueError`` is the sink refusing the record itself (the
store's contract: malformed, or already stored): it is logged in full and not
retried.
"""

from __future__ import annotations

import typing

from twisted.internet import defer
from twisted.logger import Logger

from gateway.core.model import Call, Leg, iso8601

__all__ = ["RetryingSink", "build_cdr"]

log = Logger()

#: seconds between attempts; the last value repeats
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


def _seconds(start: float | None, end: float | None) -> float:
    if start is None or end is None:
        return 0.0
    return round(max(0.0, end - start), 3)


def _leg_record(leg: Leg) -> dict:
    return {
        "leg_id": leg.leg_id,
        "role": leg.role,
        "direction": leg.direction,
        "number": leg.number,
        "caller_id": leg.caller_id,
        "driver": leg.driver,
        "started_at": iso8601(leg.started_at),
        "answered_at": iso8601(leg.answered_at),
        "ended_at": iso8601(leg.ended_at),
        "cause": leg.cause,
        "attributes": dict(leg.attributes),
    }


def build_cdr(call: Call, node: str) -> dict:
    """The CDR of an ended ``call`` (``duration`` and ``billable_seconds`` in seconds, ms precision)."""
    return {
        "call_id": call.call_id,
        "node": node,
        "direction": call.direction,
        "extension": call.extension,
        "caller": call.caller,
        "number": call.number,
        "did": call.did,
        "started_at": iso8601(call.created_at),
        "answered_at": iso8601(call.answered_at),
        "ended_at": iso8601(call.ended_at),
        "duration": _seconds(call.created_at, call.ended_at),
        "billable_seconds": _seconds(call.answered_at, call.ended_at),
        "cause": call.cause,
        "hangup_by": call.hangup_by,
        "dtmf_count": call.dtmf_count,
        "app": call.app,
        "attributes": dict(call.attributes),
        "legs": [_leg_record(leg) for leg in call.legs],
    }


class RetryingSink:
    """Delivers records to ``sink(*args) -> Deferred``, retrying on failure, never blocking the caller."""

    def __init__(self, clock, sink: typing.Callable[..., defer.Deferred], what: str, delays=RETRY_DELAYS) -> None:
        self._clock = clock
        self._sink = sink
        self._what = what
        self._delays = delays
        self._in_flight: set[defer.Deferred] = set()
        self._waiting: dict[object, tuple] = {}  # DelayedCall -> args
        self._closed = False

    @property
    def pending(self) -> int:
        """Records not yet accepted by the sink."""
        return len(self._in_flight) + len(self._waiting)

    def write(self, *args) -> None:
        """Hand ``args`` to the sink now; retry later if it fails."""
        self._attempt(args, 0)

    def _attempt(self, args: tuple, attempt: int) -> None:
        d = defer.maybeDeferred(self._sink, *args)
        self._in_flight.add(d)
        d.addErrback(self._failed, args, attempt)
        d.addBoth(self._settled, d)

    def _settled(self, _, d) -> None:
        self._in_flight.discard(d)

    def _failed(self, failure, args: tuple, attempt: int) -> None:
        if failure.check(ValueError):
            # the sink refused the record itself (the store's contract: malformed, or a duplicate)
            log.error("{what} {record_id} was refused ({error}); not retried: {record!r}", what=self._what,
                      record_id=_record_id(args), error=failure.getErrorMessage(), record=args)
            return
        if self._closed:
            self._lost(args, failure.getErrorMessage())
            return
        delay = self._delays[min(attempt, len(self._delays) - 1)]
        log.warn(
            "writing {what} {record_id} failed (attempt {attempt}): {error}; retrying in {delay} s",
            what=self._what, record_id=_record_id(args), attempt=attempt + 1,
            error=failure.getErrorMessage(), delay=delay,
        )
        call = None

        def retry():
            del self._waiting[call]
            self._attempt(args, attempt + 1)

        call = self._clock.callLater(delay, retry)
        self._waiting[call] = args

    def _lost(self, args: tuple, error: str) -> None:
        log.critical(
            "{what} {record_id} could not be written ({error}); here it is in full: {record!r}",
            what=self._what, record_id=_record_id(args), error=error, record=args,
        )

    def close(self) -> defer.Deferred:
        """Stop retrying: try every waiting record once more now, and fire when all attempts have settled
        (a record that still fails is logged in full)."""
        self._closed = True
        for call, args in list(self._waiting.items()):
            call.cancel()
            del self._waiting[call]
            self._attempt(args, 0)
        return defer.DeferredList(list(self._in_flight)).addCallback(lambda _: None)


def _record_id(args: tuple) -> str:
    first = args[0] if args else None
    if isinstance(first, dict):
        return str(first.get("call_id", "?"))
    return str(first)
