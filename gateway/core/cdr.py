"""Call detail records: the one dict an ended call leaves behind, and its delivery to the store.

:func:`build_cdr` renders a :class:`~gateway.core.model.Call` in the store's
contract (times as ISO 8601 UTC from the registry's clock). A
:class:`RetryingSink` hands records to an asynchronous sink (the store's
``add_cdr`` or ``attach_provider_cdr``, or any other store write) without
ever holding up the caller: while the sink fails, records wait in a bounded
queue in arrival order and the oldest is retried with growing delays; once it
goes through, the rest follow. A record that cannot be kept (the queue is
full, or it still fails when the sink is closed) is logged in full and
counted, so none is lost silently (its caller's Deferred fails with
:class:`NotWritten`). A ``ValueError`` is the sink refusing the record itself
(the store's contract: malformed, or already stored): it is logged in full and
not retried, and, being an answer, ends an outage as a success does.
"""

from __future__ import annotations

import collections
import typing

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.core.model import Call, Leg, iso8601

__all__ = ["PENDING_MAX", "NotWritten", "RetryingSink", "SinkObserver", "build_cdr"]

log = Logger()

#: seconds between attempts; the last value repeats
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
#: records one sink keeps pending by default (``[store] pending_max``)
PENDING_MAX = 10000


def _seconds(start: float | None, end: float | None) -> float:
    if start is None or end is None:
        return 0.0
    return round(max(0.0, end - start), 3)


class SinkObserver(typing.Protocol):
    """What a :class:`RetryingSink` tells its ``observer`` (the store guard's metrics)."""

    def watch(self, what: str, sink: RetryingSink) -> None: ...

    def attempt_failed(self, what: str, error: str) -> None: ...

    def written(self, what: str) -> None: ...

    def not_written(self, what: str, reason: str) -> None: ...


def _leg_record(leg: Leg) -> dict[str, typing.Any]:
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


def build_cdr(call: Call, node: str) -> dict[str, typing.Any]:
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
        # which call consulted which: a consult call names its primary, a primary its consult calls
        "consult_of": call.consult_of,
        "consults": list(call.consults),
        "legs": [_leg_record(leg) for leg in call.legs],
    }


class NotWritten(Exception):
    """A record was given up, logged in full instead of written.

    ``reason``: ``"overflow"`` (``pending_max`` records were pending already) or ``"shutdown"`` (it
    still failed once the sink was closed).
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@attrs.define(eq=False)
class _Pending:
    seq: int
    args: tuple[typing.Any, ...]
    #: what :meth:`RetryingSink.submit` returned
    done: defer.Deferred[typing.Any]


class RetryingSink:
    """Delivers records to ``sink(*args) -> Deferred``, retrying on failure, never blocking the caller.

    While the sink works, each record is handed to it at once. Once an attempt fails (with anything
    but a ``ValueError``), the sink is taken as down: only the oldest waiting record is tried again,
    after a growing delay (``delays``; the last one repeats), and later records wait behind it in
    arrival order, so an outage costs one attempt per delay, not one per record. The first attempt
    that succeeds sends every waiting record at once.

    At most ``pending_max`` records are pending (being written or waiting). One more is not kept:
    it is logged in full at critical level, counted, and its :meth:`submit` fails with
    :class:`NotWritten`; nothing is dropped silently. So is a record still failing at :meth:`close`.

    ``ordered``: at most one record is with the sink at a time, so records reach it strictly in
    arrival order even when an attempt fails (SMS, whose sequence numbers order each number's
    messages); otherwise records are handed over as they come (CDRs).

    ``observer`` (or None) is told, with this sink's ``what``: ``watch(what, sink)`` once (to read
    :attr:`pending`), ``attempt_failed(what, error)`` after every failed attempt, ``written(what)``
    after every record the sink took, and ``not_written(what, reason)`` (``refused``, ``overflow``
    or ``shutdown``) for every record given up.
    """

    def __init__(self, clock: IReactorTime, sink: typing.Callable[..., defer.Deferred[typing.Any]], what: str,
                 delays: typing.Sequence[float] = RETRY_DELAYS, *, pending_max: int = PENDING_MAX,
                 observer: SinkObserver | None = None, ordered: bool = False) -> None:
        if pending_max < 1:
            raise ValueError(f"pending_max must be at least 1, got {pending_max!r}")
        self._clock = clock
        self._sink = sink
        self._what = what
        self._delays = delays
        self._pending_max = pending_max
        self._observer = observer
        self._ordered = ordered
        self._seq = 0
        self._in_flight = 0
        #: records waiting for the sink to work again, oldest (lowest seq) first
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._down = False
        self._rounds = 0  # retries scheduled in this outage
        self._timer: IDelayedCall | None = None
        self._probing = False
        self._draining = False
        self._closed = False
        self._on_settled: list[defer.Deferred[None]] = []
        if observer is not None:
            observer.watch(what, self)

    @property
    def pending(self) -> int:
        """Records not yet accepted by the sink."""
        return self._in_flight + len(self._waiting)

    @property
    def down(self) -> bool:
        """Whether records wait because the last attempt failed."""
        return self._down

    def write(self, *args: typing.Any) -> None:
        """Hand ``args`` to the sink now (or queue them while it is down); retry later if it fails."""
        self.submit(*args).addErrback(lambda _: None)  # every record given up is logged in full already

    def submit(self, *args: typing.Any) -> defer.Deferred[typing.Any]:
        """Like :meth:`write`; fires with the sink's result once it took the record.

        Fails with the sink's ``ValueError`` when it refuses the record itself, and with
        :class:`NotWritten` when the record was given up (queue full, or still failing at close).
        """
        self._seq += 1
        record = _Pending(self._seq, args, defer.Deferred())
        if self.pending >= self._pending_max:
            self._give_up(record, "overflow", f"{self.pending} {self._what} records are pending already "
                          f"(pending_max {self._pending_max})")
        else:
            self._waiting.append(record)
            self._drain()
        return record.done

    def _attempt(self, record: _Pending, probe: bool = False) -> None:
        self._in_flight += 1
        self._probing = self._probing or probe
        d = defer.maybeDeferred(self._sink, *record.args)
        d.addCallbacks(self._succeeded, self._failed, (record, probe), errbackArgs=(record, probe))

    def _succeeded(self, result: object, record: _Pending, probe: bool) -> None:
        self._in_flight -= 1
        if probe:
            self._probing = False
        if self._down:
            log.info("{what} records are written again; the {waiting} waiting go now",
                     what=self._what, waiting=len(self._waiting))
            self._down, self._rounds = False, 0
            self._cancel_timer()
        if self._observer is not None:
            self._observer.written(self._what)
        record.done.callback(result)
        self._drain()
        self._check_settled()

    def _failed(self, failure: Failure, record: _Pending, probe: bool) -> None:
        self._in_flight -= 1
        if probe:
            self._probing = False
        error = failure.getErrorMessage()
        if failure.check(ValueError):
            # the sink refused the record itself (the store's contract: malformed, or a duplicate)
            log.error("{what} {record_id} was refused ({error}); not retried: {record!r}", what=self._what,
                      record_id=_record_id(record.args), error=error, record=record.args)
            # A refusal is an answer: the sink works (a retried write whose commit was not reported
            # comes back as a duplicate). Were it taken for a failure, nothing would retry the records
            # behind it: the next ones go now, as after a success.
            if self._down:
                log.info("{what} records are answered again; the {waiting} waiting go now",
                         what=self._what, waiting=len(self._waiting))
                self._down, self._rounds = False, 0
                self._cancel_timer()
            if self._observer is not None:
                self._observer.not_written(self._what, "refused")
            record.done.errback(failure)
            self._drain()
        else:
            if self._observer is not None:
                self._observer.attempt_failed(self._what, error)
            if self._closed:
                self._give_up(record, "shutdown", error)
                self._drain()
            else:
                self._down = True
                self._wait(record)
                self._schedule(error)
        self._check_settled()

    def _wait(self, record: _Pending) -> None:
        """Put a failed record back among the waiting ones, in arrival order."""
        if not self._waiting or self._waiting[-1].seq < record.seq:
            self._waiting.append(record)
            return
        for index, other in enumerate(self._waiting):
            if other.seq > record.seq:
                self._waiting.insert(index, record)
                return

    def _schedule(self, error: str) -> None:
        """Retry the oldest waiting record after the delay for this round of the outage."""
        if self._timer is not None or self._probing:
            return
        delay = self._delays[min(self._rounds, len(self._delays) - 1)]
        self._rounds += 1
        # the first failure of an outage is worth a warning; its retries are not
        (log.warn if self._rounds == 1 else log.info)(
            "writing {what} records failed (attempt {attempt}): {error}; {waiting} waiting, next attempt in {delay} s",
            what=self._what, attempt=self._rounds, error=error, waiting=len(self._waiting), delay=delay,
        )
        self._timer = self._clock.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._timer = None
        # With an older attempt still under way, the oldest record is not known yet: that attempt's
        # end schedules the next retry (it failed) or sends everything (it went through).
        if self._waiting and not self._in_flight:
            self._attempt(self._waiting.popleft(), probe=True)

    def _drain(self) -> None:
        """Send the waiting records (all of them, or one at a time when ``ordered``) unless the sink is
        down; a loop, so a sink that answers at once does not recurse once per record."""
        if self._draining:
            return
        self._draining = True
        try:
            while self._waiting and (self._closed or not self._down) and not (self._ordered and self._in_flight):
                self._attempt(self._waiting.popleft())
        finally:
            self._draining = False

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _give_up(self, record: _Pending, reason: str, error: str) -> None:
        log.critical(
            "{what} {record_id} could not be written ({error}); here it is in full: {record!r}",
            what=self._what, record_id=_record_id(record.args), error=error, record=record.args,
        )
        if self._observer is not None:
            self._observer.not_written(self._what, reason)
        record.done.errback(NotWritten(f"{self._what} {_record_id(record.args)} was not written: {error}", reason))

    def close(self) -> defer.Deferred[None]:
        """Stop retrying: try every waiting record once more now, and fire when all attempts have settled
        (a record that still fails is logged in full)."""
        self._closed = True
        self._down = False
        self._cancel_timer()
        self._drain()
        d: defer.Deferred[None] = defer.Deferred()
        self._on_settled.append(d)
        self._check_settled()
        return d

    def _check_settled(self) -> None:
        if self._closed and not self.pending:
            waiting, self._on_settled = self._on_settled, []
            for d in waiting:
                d.callback(None)


def _record_id(args: tuple[typing.Any, ...]) -> str:
    first = args[0] if args else None
    if isinstance(first, dict):
        return str(first.get("call_id", "?"))
    return str(first)
