"""The paced path toward a party: re-framing, a bounded queue, and deadline-scheduled writes.

A :class:`Playout` is both faces of one leg's outbound audio:

- an ``IConsumer`` of frames (``port.sink``): frames of any codec and any
  length go in; a frame of another codec is transcoded to the port's codec,
  then re-framed into exact 20 ms payloads and queued. The producer registered
  here is paused at the queue's high-water mark; if frames still come, the
  oldest are dropped and counted.
- an ``IPushProducer`` toward the wire (``port.playout``): every 20 ms of one
  clock it writes one payload to the wire function. The driver registers it
  with its transport, so a transport that cannot keep up pauses playout (and
  through the queue, whatever feeds it).

When it runs out of audio, a remainder shorter than a frame is padded with
silence and played; then playout stops scheduling and the next frame starts a
fresh deadline schedule. Counters are plain attributes for the metrics layer.
"""

from __future__ import annotations

import typing

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from zope.interface import implementer

from gateway.media.buffers import FrameQueue, Reframer
from gateway.media.codecs import converters_to, frame_size, silence
from gateway.media.frame import Frame
from gateway.media.interfaces import IFrameConsumer
from gateway.media.pacing import Pacer

__all__ = ["Playout"]


@implementer(IFrameConsumer, IPushProducer)
class Playout:
    """Paced playout of frames toward one party, from ``clock``, holding at most ``capacity`` frames.

    Counters: ``frames_played`` (written to the wire), ``frames_dropped``
    (oldest dropped because the queue was full), ``frames_flushed`` (discarded
    by :meth:`flush`), ``underruns`` (times playout ran out of audio and
    stopped). ``on_drop(count)``, if given, is told of each drop as it happens.
    """

    def __init__(self, clock: IReactorTime, codec: str, capacity: int, name: str = "",
                 on_drop: typing.Callable[[int], object] | None = None) -> None:
        self.codec = codec
        self.name = name
        self.paused = False
        self.closed = False
        self.frames_played = 0
        self.frames_flushed = 0
        self.underruns = 0
        self._fill = silence(codec)[0]
        self._queue: FrameQueue[bytes] = FrameQueue(capacity, on_drop)
        self._reframer = Reframer(frame_size(codec), self._queue.push)
        self._pacer = Pacer(clock, self._tick, name=name)
        self._wire: typing.Callable[[bytes], object] | None = None
        self._convert = converters_to(codec)
        #: (frames_played value at which it fires, Deferred) in firing order
        self._checkpoints: list[tuple[int, Deferred[None]]] = []

    @property
    def frames_dropped(self) -> int:
        return self._queue.frames_dropped

    @property
    def queued(self) -> int:
        """Whole frames waiting to be played."""
        return len(self._queue)

    @property
    def producer(self) -> IPushProducer | None:
        """The producer registered to feed this playout, or None."""
        return self._queue.producer

    # -- IConsumer: frames toward the party ---------------------------------

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        if not streaming:
            raise ValueError(f"playout {self.name!r} accepts push producers (streaming=True) only")
        if self._queue.producer is not None:
            raise RuntimeError(f"playout {self.name!r} is already fed by {self._queue.producer!r}")
        self._queue.set_producer(producer)

    def unregisterProducer(self) -> None:
        self._queue.set_producer(None)

    def write(self, frame: Frame) -> None:
        """Queue ``frame`` (any codec, any payload length) for paced playout."""
        if self.closed:
            return
        self._reframer.push(self._convert[frame.codec](frame.payload))
        if not self._pacer.running and not self.paused and self._wire is not None:
            self._pacer.start()

    # -- IPushProducer: toward the wire -------------------------------------

    def set_wire(self, write: typing.Callable[[bytes], object] | None) -> None:
        """Write paced payloads to ``write`` (None: hold them until a wire is set)."""
        self._wire = write
        if write is None:
            self._pacer.stop()
        else:
            self._restart()

    def pauseProducing(self) -> None:
        self.paused = True
        self._pacer.stop()

    def resumeProducing(self) -> None:
        self.paused = False
        self._restart()

    def stopProducing(self) -> None:
        """The wire's transport is gone: stop writing to it."""
        self.paused = False
        self.set_wire(None)

    def _restart(self) -> None:
        if self._wire is not None and not self.paused and (self._queue or self._reframer.pending):
            self._pacer.start()

    def _tick(self) -> bool:
        wire = self._wire
        if wire is None:  # never: the pacer stops when the wire goes
            return False
        queue = self._queue
        if queue:
            payload = queue.pop()
        elif self._reframer.pending:
            payload = self._reframer.take_padded(self._fill)
        else:
            self.underruns += 1
            return False
        self.frames_played += 1
        wire(payload)
        if self._checkpoints:
            self._fire_checkpoints(not queue and not self._reframer.pending)
        return True

    # -- control --------------------------------------------------------------

    def checkpoint(self) -> Deferred[None]:
        """A Deferred firing (with None) once the audio queued so far has been written.

        It also fires when that audio is discarded instead (flush, close) or
        when playout runs dry before (dropped frames are never written).
        """
        d: Deferred[None] = Deferred()
        pending = len(self._queue) + (1 if self._reframer.pending else 0)
        if pending:
            self._checkpoints.append((self.frames_played + pending, d))
        else:
            d.callback(None)
        return d

    def _fire_checkpoints(self, dry: bool) -> None:
        checkpoints = self._checkpoints
        while checkpoints and (dry or checkpoints[0][0] <= self.frames_played):
            checkpoints.pop(0)[1].callback(None)

    def flush(self) -> None:
        """Barge-in: discard the re-framer remainder and every queued frame, stop the schedule.

        A producer paused by the full queue is resumed; the next frame written
        starts a fresh schedule at once.
        """
        self._pacer.stop()
        checkpoints, self._checkpoints = self._checkpoints, []
        # The queue last: clearing it resumes the producer, which may write again at once.
        self.frames_flushed += (1 if self._reframer.clear() else 0) + self._queue.clear()
        for _, d in checkpoints:
            d.callback(None)

    def close(self) -> None:
        """Discard everything, stop the feeding producer and the schedule; later writes are ignored."""
        self.closed = True
        producer = self._queue.producer
        self._queue.set_producer(None)
        self.flush()
        self._wire = None
        if producer is not None:
            producer.stopProducing()
