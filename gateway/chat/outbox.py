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

__all__ = ["ClaimedOutbox", "Outbox", "describe_failure"]

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


#: consumers (claims at once, so numbers delivered side by side) per direction of a ClaimedOutbox
CLAIM_CONSUMERS = 2
#: seconds between two claims of a consumer that found nothing (an SMS stored here wakes it at once)
CLAIM_POLL = 1.0


class ClaimedOutbox:
    """One direction's SMS in cluster mode, delivered from the shared PostgreSQL table through claims.

    Instead of lanes filled from ``pending_sms()``, each of ``consumers`` loops takes the next SMS
    with :meth:`gateway.store.postgres.SmsOutbox.claim` (the oldest pending SMS of a number that no
    consumer of any node holds, row-locked with ``FOR UPDATE SKIP LOCKED``), delivers it, then
    ``finish()``es it (delivered, or failed when refused for good) or counts the failed attempt
    (``attempt_failed()``, and the number waits the retry policy's delay on this node: its claims
    leave it out meanwhile, so numbers failing for good never starve the others). So a
    number's SMS go out one at a time, in ``seq`` order, across every node; a node killed -9
    mid-delivery loses nothing (its claim's connection dies, the server rolls the claim back, and
    the SMS is pending again, with the same uid and seq, for the next claim: at least once).

    The same surface as :class:`Outbox` for the connector: :meth:`add`/:meth:`load` wake the
    consumers (what they deliver comes from the table), :meth:`kick`, :meth:`stop`,
    :meth:`resume`, :attr:`pending` (the SMS held or waiting here), :meth:`status`.

    :param claims: makes a consumer: ``PostgresStore.outbox`` (one connection each).
    """

    def __init__(self, clock, claims, direction: str, deliver, *, retry_policy, metrics=None,
                 consumers: int = CLAIM_CONSUMERS, poll_interval: float = CLAIM_POLL):
        self._clock = clock
        self._claims = claims
        self.direction = direction
        self._deliver = deliver
        self._retry_policy = retry_policy
        self._metrics = metrics
        self._poll_interval = poll_interval
        self._count = consumers
        self._consumers: list = []
        self._loops: list[defer.Deferred] = []
        self._stopped = True
        #: number -> (failures, when it may be tried again, last error)
        self._backoff: dict[str, tuple[int, float, str]] = {}
        #: the sleeps under way (woken by add/kick, cancelled by stop)
        self._sleeps: set = set()
        #: seq -> the delivery under way (cancelled by stop)
        self._deliveries: dict[int, defer.Deferred] = {}
        self._held: dict[int, str] = {}
        self._claim_failing = False
        #: id(consumer) -> fires once its loop from before the last stop() has ended
        self._finishing: dict[int, defer.Deferred] = {}
        #: bumped at every stop(): a loop of an older generation ends, even after a quick resume()
        self._generation = 0

    @property
    def pending(self) -> int:
        """SMS held by this node's consumers now, and numbers waiting here after a failure."""
        return len(self._held) + len([n for n in self._backoff if n not in self._held.values()])

    def status(self) -> dict:
        return {"pending": self.pending, "waiting": {number: error for number, (_, _, error) in self._backoff.items()},
                "claims": True}

    # -- the connector's calls ---------------------------------------------------------------

    def load(self, records) -> None:
        self.wake()

    def add(self, record) -> None:
        self.wake()

    def wake(self) -> None:
        """Have the idle consumers claim now (an SMS was stored)."""
        for sleep in list(self._sleeps):
            sleep.wake()

    def kick(self) -> None:
        """Every number waiting after a failure may be tried now."""
        self._backoff.clear()
        self.wake()

    def resume(self) -> None:
        """Start the consumers (at the connector's start, or when this node takes the chat link over)."""
        if not self._stopped:
            return
        self._stopped = False
        self._backoff.clear()
        while len(self._consumers) < self._count:
            self._consumers.append(self._claims())
        # a consumer still finishing its loop from before a stop() is started again only once it has
        # (one operation at a time on its connection)
        finishing = self._finishing
        self._loops = [finishing.get(id(consumer), defer.succeed(None)).addCallback(self._start_loop, consumer)
                       for consumer in self._consumers]

    def _start_loop(self, _, consumer) -> defer.Deferred | None:
        if self._stopped:
            return None
        loop = defer.ensureDeferred(self._run(consumer, self._generation))
        loop.addErrback(lambda f: log.failure("the {direction} SMS outbox's consumer stopped", f,
                                              direction=self.direction))
        return loop

    def stop(self) -> defer.Deferred:
        """No more claims; deliveries under way are cancelled and their SMS let go (pending). Fires
        once every consumer has let its SMS go."""
        self._stopped = True
        self._generation += 1
        for sleep in list(self._sleeps):
            sleep.cancel()
        for delivery in list(self._deliveries.values()):
            delivery.cancel()
        loops, self._loops = self._loops, []
        self._finishing = {}
        for consumer, loop in zip(self._consumers, loops):
            finished = defer.Deferred()
            loop.addBoth(lambda _, finished=finished: finished.callback(None))
            self._finishing[id(consumer)] = finished
        done = [self._finishing[id(consumer)] for consumer in self._consumers[:len(loops)]]
        return defer.DeferredList([_chained(d) for d in done], consumeErrors=True).addCallback(lambda _: None)

    def close(self) -> defer.Deferred:
        """Stop, then close the consumers' connections."""
        consumers, self._consumers = self._consumers, []
        d = self.stop()
        d.addCallback(lambda _: defer.DeferredList([c.close() for c in consumers], consumeErrors=True))
        return d.addCallback(lambda _: None)

    # -- one consumer ------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> defer.Deferred:
        sleep = _Sleep(self._clock, seconds, self._sleeps)
        return sleep.done.addErrback(lambda f: f.trap(defer.CancelledError) and None)

    def _live(self, generation: int) -> bool:
        return not self._stopped and generation == self._generation

    async def _run(self, consumer, generation: int) -> None:
        while self._live(generation):
            now = self._clock.seconds()
            waiting = [number for number, (_, when, _) in self._backoff.items() if when > now]
            try:
                record = await consumer.claim(self.direction, exclude=waiting)
            except defer.CancelledError:
                return
            except Exception as e:
                if not self._claim_failing:
                    self._claim_failing = True
                    log.warn("{direction} SMS: cannot claim the next SMS from the store: {error}; trying again",
                             direction=self.direction, error=str(e))
                await self._sleep(self._poll_interval)
                continue
            if self._claim_failing:
                self._claim_failing = False
                log.info("{direction} SMS: claiming from the store again", direction=self.direction)
            if record is None:
                # nothing free: poll again, or sooner when a number's delay ends
                ends = [when for _, when, _ in self._backoff.values() if when > self._clock.seconds()]
                await self._sleep(min([self._poll_interval, *(when - self._clock.seconds() for when in ends)]))
                continue
            if not self._live(generation):
                await self._let_go(consumer, record)
                return
            backoff = self._backoff.get(record.number)
            if backoff is not None and backoff[1] > self._clock.seconds():
                # it failed on another consumer of this node while this claim was on its way: let it go
                # (pending, its later SMS behind it) and claim again without it, never sleeping on a
                # claim: the other numbers keep flowing
                await self._let_go(consumer, record)
                continue
            self._held[record.seq] = record.number
            try:
                await self._attempt(consumer, record, generation)
            finally:
                self._held.pop(record.seq, None)

    async def _let_go(self, consumer, record) -> None:
        try:
            await consumer.release()
        except Exception as e:
            log.info("{direction} SMS {seq}: letting it go failed ({error}); its claim ends with the connection",
                     direction=self.direction, seq=record.seq, error=str(e))

    async def _attempt(self, consumer, record, generation: int) -> None:
        delivery = self._deliveries[record.seq] = defer.maybeDeferred(self._deliver, record)
        try:
            result = await delivery
        except defer.CancelledError:
            self._deliveries.pop(record.seq, None)
            await self._let_go(consumer, record)
            return
        except SmsRejected as e:
            self._deliveries.pop(record.seq, None)
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            log.warn("{direction} SMS {seq} ({number}) was refused for good: {error}",
                     direction=self.direction, seq=record.seq, number=record.number, error=error)
            self._backoff.pop(record.number, None)
            if self._metrics is not None:
                self._metrics.rejected(self.direction)
            await self._write(consumer.finish("failed", self._now(), error=error), record)
            return
        except Exception as e:
            self._deliveries.pop(record.seq, None)
            if not self._live(generation):
                await self._let_go(consumer, record)
                return
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            failures = self._backoff.get(record.number, (0, 0.0, ""))[0] + 1
            delay = self._retry_policy(failures - 1)
            self._backoff[record.number] = (failures, self._clock.seconds() + delay, error)
            (log.warn if failures == 1 else log.info)(
                "{direction} SMS {seq} ({number}) not delivered (attempt {attempt}): {error};"
                " next attempt in {delay:.1f} s",
                direction=self.direction, seq=record.seq, number=record.number, attempt=failures, error=error,
                delay=delay,
            )
            if self._metrics is not None:
                self._metrics.attempt_failed(self.direction)
            await self._write(consumer.attempt_failed(error), record)
            return
        self._deliveries.pop(record.seq, None)
        self._backoff.pop(record.number, None)
        if self._metrics is not None:
            self._metrics.delivered(self.direction)
        conversation_id = result if isinstance(result, str) else None
        await self._write(consumer.finish("delivered", self._now(), conversation_id=conversation_id), record)

    async def _write(self, d: defer.Deferred, record) -> None:
        try:
            await d
        except Exception as e:
            log.warn("could not record the outcome of {direction} SMS {seq} ({number}): {error}; it is pending"
                     " again and will be sent again (at least once)",
                     direction=self.direction, seq=record.seq, number=record.number, error=str(e))

    def _now(self) -> str:
        return timestamp_from_seconds(self._clock.seconds())


def _chained(d: defer.Deferred) -> defer.Deferred:
    """A Deferred firing when ``d`` does, leaving ``d``'s own result alone (others wait on it too)."""
    mirror: defer.Deferred = defer.Deferred()
    d.addBoth(lambda result: (mirror.callback(None), result)[1])
    return mirror


class _Sleep:
    """``seconds`` on ``clock``, or less when woken; its ``done`` fires with None either way (a
    cancelled one fails with CancelledError)."""

    def __init__(self, clock, seconds: float, registry: set):
        self._registry = registry
        self.done: defer.Deferred = defer.Deferred(lambda d: self._end())
        self._timer = clock.callLater(max(0.0, seconds), self.wake)
        registry.add(self)

    def _end(self) -> None:
        self._registry.discard(self)
        if self._timer.active():
            self._timer.cancel()

    def wake(self) -> None:
        if not self.done.called:
            self._end()
            self.done.callback(None)

    def cancel(self) -> None:
        if not self.done.called:
            self.done.cancel()
