"""Frame producers: push producers of :class:`~gateway.media.frame.Frame` objects.

Every producer here is an ``IPushProducer`` that is connected to one
``IConsumer`` (whose ``write`` takes a Frame) with :meth:`FrameProducer.connect`,
which registers it with the consumer so that a slow consumer can pause it.

- :class:`FrameSource`: a port's audio from its party. Frames arrive when the
  driver receives them; while paused they wait in a bounded queue, which
  pauses the driver's transport (``upstream``) at its high-water mark.
- :class:`FrameFeeder`: frames from an iterable, written as fast as the
  consumer accepts them (it pauses at the consumer's high-water mark), for
  prompts and hold music: the consumer's playout does the pacing.
- :class:`PacedSource`: frames from an iterable, one every 20 ms on a clock,
  honouring pause/resume: a real-time audio source for simulated parties.

:class:`BytesConsumer` is the way back to bytes: an ``IConsumer`` handing each
frame's payload to a function, e.g. a simulated party's audio into
``port.receive``.
"""

from __future__ import annotations

import typing

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.media.buffers import FrameQueue
from gateway.media.frame import Frame, Stamper
from gateway.media.interfaces import IFrameConsumer
from gateway.media.pacing import Pacer

__all__ = ["BytesConsumer", "FrameFeeder", "FrameProducer", "FrameSource", "PacedSource"]

log = Logger()


@implementer(IPushProducer)
class FrameProducer:
    """The common part: one consumer at a time, pause state, frame numbering."""

    def __init__(self, codec: str, name: str = "") -> None:
        self.codec = codec
        self.name = name
        self.consumer: IFrameConsumer | None = None
        self.paused = False
        self._stamp = Stamper(codec)

    def connect(self, consumer: IFrameConsumer) -> None:
        """Start producing frames into ``consumer`` (registering with it as a push producer)."""
        if self.consumer is not None:
            raise RuntimeError(f"{self!r} is already connected to {self.consumer!r}")
        consumer.registerProducer(self, True)
        self.consumer = consumer
        self._stamp.restart()
        self._connected()

    def disconnect(self) -> None:
        """Stop producing into the consumer and unregister from it (no-op if not connected)."""
        consumer = self.consumer
        if consumer is not None:
            self._detach()
            consumer.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        """The consumer is going away: forget it."""
        if self.consumer is not None:
            self._detach()

    def _detach(self) -> None:
        self.consumer = None
        self.paused = False
        self._disconnected()

    def _connected(self) -> None:
        """Hook: the consumer is set and production may begin."""

    def _disconnected(self) -> None:
        """Hook: the consumer is gone."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name or hex(id(self))} {self.codec}>"


class FrameSource(FrameProducer):
    """A port's frames from its party: buffered while paused, pausing ``upstream`` when full.

    It is ``realtime``: a playout it feeds keeps its backlog near the jitter target.

    Frames delivered while nothing is connected are discarded (nobody is
    listening; stale audio must not play later). ``frames_dropped`` counts
    frames lost because the queue was full; ``on_drop(count)``, if given, is
    told of each such loss as it happens.
    """

    def __init__(self, codec: str, capacity: int, name: str = "",
                 on_drop: typing.Callable[[int], object] | None = None) -> None:
        super().__init__(codec, name)
        self._queue: FrameQueue[Frame] = FrameQueue(capacity, on_drop)

    #: frames arrive at the party's pace (see gateway.media.playout: the jitter buffer)
    realtime = True

    @property
    def upstream(self) -> IPushProducer | None:
        """The driver's producer (its transport), paused when frames back up here."""
        return self._queue.producer

    @upstream.setter
    def upstream(self, producer: IPushProducer | None) -> None:
        self._queue.set_producer(producer)

    @property
    def frames_dropped(self) -> int:
        return self._queue.frames_dropped

    @property
    def queued(self) -> int:
        """Frames waiting for the consumer to resume."""
        return len(self._queue)

    def deliver(self, payload: bytes) -> None:
        """One 20 ms payload from the party."""
        consumer = self.consumer
        if consumer is None:
            return
        frame = self._stamp(payload)
        if self.paused or self._queue:
            self._queue.push(frame)
        else:
            consumer.write(frame)

    def resumeProducing(self) -> None:
        self.paused = False
        queue = self._queue
        while queue and not self.paused and self.consumer is not None:
            self.consumer.write(queue.pop())

    def _disconnected(self) -> None:
        self._queue.clear()


class _IterableProducer(FrameProducer):
    """Frames from an iterable of payloads; ``done`` fires (with None) when it is exhausted.

    When the iterable ends or fails, the producer disconnects itself; a failure
    is logged and ``done`` errbacks with it.
    """

    def __init__(self, payloads: typing.Iterable[bytes], codec: str, name: str = "") -> None:
        super().__init__(codec, name)
        self._payloads = iter(payloads)
        self.done: Deferred[None] = Deferred()

    def _next_payload(self) -> bytes | None:
        """The next payload, or None once the iterable is exhausted (or failed)."""
        try:
            return next(self._payloads)
        except StopIteration:
            self._finish(None)
        except Exception:
            failure = Failure()
            log.failure("{producer}: audio source failed", failure, producer=self)
            self._finish(failure)
        return None

    def _finish(self, result: Failure | None) -> None:
        self.disconnect()
        if self.done.called:
            return
        if result is None:
            self.done.callback(None)
        else:
            self.done.errback(result)


class FrameFeeder(_IterableProducer):
    """Writes frames from ``payloads`` as fast as the consumer takes them, until paused."""

    def __init__(self, payloads: typing.Iterable[bytes], codec: str, name: str = "") -> None:
        super().__init__(payloads, codec, name)
        self._feeding = False

    def _connected(self) -> None:
        self._feed()

    def resumeProducing(self) -> None:
        self.paused = False
        self._feed()

    def _feed(self) -> None:
        if self._feeding:
            return  # a write pausing and resuming us re-enters here
        self._feeding = True
        try:
            while not self.paused and self.consumer is not None:
                payload = self._next_payload()
                if payload is None:
                    break
                self.consumer.write(self._stamp(payload))
        finally:
            self._feeding = False


class PacedSource(_IterableProducer):
    """Writes one frame from ``payloads`` every 20 ms of ``clock`` while connected and not paused."""

    #: frames come at 20 ms pace (see gateway.media.playout: the jitter buffer)
    realtime = True

    def __init__(self, clock: IReactorTime, payloads: typing.Iterable[bytes], codec: str, name: str = "") -> None:
        super().__init__(payloads, codec, name)
        self._pacer = Pacer(clock, self._tick, name=name)

    def _connected(self) -> None:
        if not self.paused:
            self._pacer.start()

    def pauseProducing(self) -> None:
        self.paused = True
        self._pacer.stop()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.consumer is not None:
            self._pacer.start()

    def _disconnected(self) -> None:
        self._pacer.stop()

    def _tick(self) -> bool:
        payload = self._next_payload()
        if payload is None or self.consumer is None:
            return False
        self.consumer.write(self._stamp(payload))
        return True


@implementer(IFrameConsumer)
class BytesConsumer:
    """Passes the payload of every frame written to it to ``write(bytes)``; never pauses its producer."""

    def __init__(self, write: typing.Callable[[bytes], object]) -> None:
        self._write = write
        self.producer: IPushProducer | None = None

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, frame: Frame) -> None:
        self._write(frame.payload)
