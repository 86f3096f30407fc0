"""The durable outbox: stored SMS delivered in order per number, retried until they are delivered.

An :class:`Outbox` serves one direction (inbound: to the chat server; outbound: to the SMS
transport). Records reach it only once they are stored (:meth:`Outbox.add`), or from the store at
start (:meth:`Outbox.load`). Each number has a lane, processed head-first: the next SMS of a
number is tried only once the previous one is delivered, so the order per conversation holds.

A failed delivery is counted in the store and tried again after the retry policy's delay (the
lane waits meanwhile; other numbers do not); :meth:`Outbox.kick` tries every waiting lane at once
(the connector calls it when the chat server is back). A delivery that fails with
:class:`~gateway.chat.interfaces.SmsRejected` is marked failed and the lane moves on. A delivered
SMS is marked delivered; if that mark cannot be written, the SMS is sent again after a restart
(at least once, never lost).
"""

from __future__ import annotations

import collections

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from gateway.chat.interfaces import SmsRejected
from gateway.store.records import timestamp_from_seconds

__all__ = ["Outbox", "describe_failure"]

log = Logger()

#: how many delivered (or refused) seqs an outbox remembers, so as not to queue them again
RECENT = 10_000


def describe_failure(failure) -> str:
    """One line saying what went wrong."""
    message = failure.getErrorMessage()
    name = failure.type.__name__ if failure.type else "error"
    return f"{name}: {message}" if message and message != name else name


@attrs.define(eq=False)
class _Lane:
    """The pending SMS of one number, head first."""

    number: str
    queue: collections.deque = attrs.Factory(collections.deque)
    seqs: set = attrs.Factory(set)
    #: the delivery attempt under way (cancelled at stop)
    delivery: defer.Deferred | None = None
    #: the attempt and its bookkeeping (waited for at stop)
    chain: defer.Deferred | None = None
    #: the delayed retry after a failure
    timer: object = None
    failures: int = 0
    last_error: str | None = None
    #: inside :meth:`Outbox._pump` (a delivery that settles at once loops there, not recursing)
    pumping: bool = False

    @property
    def idle(self) -> bool:
        return self.chain is None and self.timer is None


class Outbox:
    """One direction's lanes.

    :param clock: ``IReactorTime``.
    :param store: an :class:`~gateway.store.ISmsStore`.
    :param direction: ``inbound`` or ``outbound`` (for logs and metrics).
    :param deliver: ``f(record) -> Deferred`` (or a value): delivered when it succeeds; its result,
        if a string, is the conversation the SMS went to.
    :param retry_policy: ``f(failures_so_far) -> seconds`` before the next attempt.
    :param metrics: an object with ``delivered(direction)``, ``attempt_failed(direction)`` and
        ``rejected(direction)``, or None.
    """

    def __init__(self, clock, store, direction: str, deliver, *, retry_policy, metrics=None):
        self._clock = clock
        self._store = store
        self.direction = direction
        self._deliver = deliver
        self._retry_policy = retry_policy
        self._metrics = metrics
        self._lanes: dict[str, _Lane] = {}
        self._stopped = False
        #: the seqs delivered or refused lately (at most RECENT): a store read that began before their
        #: outcome was written (the cluster's poll of the pending SMS) does not queue them again
        self._recent: collections.deque = collections.deque(maxlen=RECENT)
        self._recent_seqs: set = set()

    @property
    def pending(self) -> int:
        """SMS not yet delivered (the one being tried included)."""
        return sum(len(lane.queue) for lane in self._lanes.values())

    def status(self) -> dict:
        waiting = {lane.number: lane.last_error for lane in self._lanes.values() if lane.timer is not None}
        return {"pending": self.pending, "waiting": waiting}

    def load(self, records) -> None:
        """Queue stored pending records (in ``seq`` order); records queued already are skipped."""
        for record in records:
            self.add(record)

    def add(self, record) -> None:
        """Queue a stored record behind the other SMS of its number."""
        if self._stopped:
            return  # it stays pending in the store: delivered after the next start
        if record.seq in self._recent_seqs:
            return
        lane = self._lanes.get(record.number)
        if lane is None:
            lane = self._lanes[record.number] = _Lane(record.number)
        if record.seq in lane.seqs:
            return
        lane.queue.append(record)
        lane.seqs.add(record.seq)
        self._pump(lane)

    def kick(self) -> None:
        """Try every lane waiting after a failure now, as if it had never failed."""
        for lane in list(self._lanes.values()):
            if lane.timer is not None:
                lane.timer.cancel()
                lane.timer = None
                lane.failures = 0
                self._pump(lane)

    def resume(self) -> None:
        """Take records again after :meth:`stop`, from scratch (in cluster mode, a node taking the
        chat link over loads the pending SMS from the store next)."""
        self._lanes.clear()
        self._stopped = False

    def stop(self) -> defer.Deferred:
        """No more attempts; the ones under way are cancelled. Fires once they have settled."""
        self._stopped = True
        chains = []
        for lane in self._lanes.values():
            if lane.timer is not None:
                lane.timer.cancel()
                lane.timer = None
            if lane.delivery is not None:
                lane.delivery.cancel()
            if lane.chain is not None:
                chains.append(lane.chain)
        return defer.DeferredList(chains, consumeErrors=True).addCallback(lambda _: None)

    # -- one lane ----------------------------------------------------------------------------

    def _pump(self, lane: _Lane) -> None:
        """Try the lane's head while the lane is idle.

        A loop, not a recursion: with a transport and a store that answer at once, a long queue is
        delivered here one record after the other instead of one stack frame deeper each time.
        """
        if lane.pumping:
            return  # the loop below goes on once the attempt that called us is over
        lane.pumping = True
        try:
            while not self._stopped and lane.idle:
                if not lane.queue:
                    del self._lanes[lane.number]
                    return
                self._attempt(lane, lane.queue[0])
        finally:
            lane.pumping = False

    def _attempt(self, lane: _Lane, record) -> None:
        lane.delivery = defer.maybeDeferred(self._deliver, record)
        chain = lane.chain = lane.delivery
        chain.addCallbacks(self._delivered, self._failed, (lane, record), errbackArgs=(lane, record))
        chain.addErrback(self._bookkeeping_failed, lane, record)
        chain.addBoth(self._attempt_over, lane, chain)

    def _now(self) -> str:
        return timestamp_from_seconds(self._clock.seconds())

    def _delivered(self, result, lane: _Lane, record):
        lane.delivery = None
        self._finish(lane, record)
        lane.failures, lane.last_error = 0, None
        if self._metrics is not None:
            self._metrics.delivered(self.direction)
        conversation_id = result if isinstance(result, str) else None
        return self._store.finish_sms(record.seq, "delivered", self._now(), conversation_id=conversation_id)

    def _failed(self, failure, lane: _Lane, record):
        lane.delivery = None
        if self._stopped and failure.check(defer.CancelledError):
            return None
        error = describe_failure(failure)
        if failure.check(SmsRejected):
            log.warn(
                "{direction} SMS {seq} ({number}) was refused for good: {error}",
                direction=self.direction, seq=record.seq, number=record.number, error=error,
            )
            self._finish(lane, record)
            if self._metrics is not None:
                self._metrics.rejected(self.direction)
            return self._store.finish_sms(record.seq, "failed", self._now(), error=error)
        lane.failures += 1
        lane.last_error = error
        delay = self._retry_policy(lane.failures - 1)
        # the first failure is worth a warning; the retries of a long outage are not
        (log.warn if lane.failures == 1 else log.info)(
            "{direction} SMS {seq} ({number}) not delivered (attempt {attempt}): {error};"
            " next attempt in {delay:.1f} s",
            direction=self.direction, seq=record.seq, number=record.number, attempt=lane.failures, error=error,
            delay=delay,
        )
        if self._metrics is not None:
            self._metrics.attempt_failed(self.direction)
        if not self._stopped:
            lane.timer = self._clock.callLater(delay, self._retry, lane)
        return self._store.sms_attempt_failed(record.seq, error)

    def _finish(self, lane: _Lane, record) -> None:
        lane.queue.popleft()
        lane.seqs.discard(record.seq)
        if len(self._recent) == self._recent.maxlen:
            self._recent_seqs.discard(self._recent[0])
        self._recent.append(record.seq)
        self._recent_seqs.add(record.seq)

    def _bookkeeping_failed(self, failure, lane: _Lane, record) -> None:
        log.failure(
            "could not record the outcome of {direction} SMS {seq} ({number}); it may be sent again after a restart",
            failure, direction=self.direction, seq=record.seq, number=record.number,
        )

    def _attempt_over(self, result, lane: _Lane, chain) -> None:
        if lane.chain is chain:
            lane.chain = None
        self._pump(lane)

    def _retry(self, lane: _Lane) -> None:
        lane.timer = None
        self._pump(lane)
