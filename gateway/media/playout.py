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

The jitter buffer (``jitter_ms`` > 0). A live source (a producer whose
``realtime`` attribute is true: a party's audio through a bridge or an echo)
arrives at the same 50 frames/s that playout plays, so a backlog left by a
stall or a burst would never drain: latency would ratchet up. With a target
depth of ``jitter_ms // 20`` frames (at least one):

- pre-buffer: a fresh schedule (at the start, or after running dry) waits until
  the target depth is queued, or ``jitter_ms`` has passed, before it plays;
- trim: when, at every tick for ``TRIM_WINDOW`` (0.4) seconds, more than
  target + ``TRIM_MARGIN`` (0) frames are queued before the tick plays one
  (a tick more than a frame late, catching up after a stall, is not counted:
  it drains the backlog), one
  frame per tick is removed until it is not: the oldest
  silent frame (RMS below ``SILENCE_RMS``) first, else the oldest. It never
  trims below the target. Each trim is counted (``frames_trimmed``) and told to
  ``on_trim(where, 1)`` with ``where`` ``"trim_silence"`` or ``"trim_oldest"``.

- phase: a live source's frames come at its own phase of the 20 ms, and the
  schedule was anchored on whichever frame started it (a late one, or the
  catch-up after a stall), so every frame could wait most of a tick for ever.
  For every frame that comes to an empty queue the playout notes how long it
  will wait for its tick; when, over a window of ``TRIM_WINDOW`` ticks, the
  least of those waits was ``PHASE_SLACK`` (3 ms) or more, the schedule moves
  that much earlier, less ``PHASE_MARGIN`` (1 ms): the frames then wait about
  1 ms more than their jitter. A frame later than its tick finds the queue
  empty: that tick is an underrun, and the frame starts a fresh schedule at
  its own phase. Shifts are counted (``phase_shifts``, ``phase_shifted``).

Prompts and hold music (a producer that is not ``realtime``, e.g. a
``FrameFeeder``) and frames written with no producer are never trimmed nor
pre-buffered: their backlog is wanted, held in check by pausing the producer.
With ``jitter_ms`` = 0 the playout is the plain paced FIFO.
"""

from __future__ import annotations

import typing

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from gateway.media.buffers import FrameQueue, Reframer
from gateway.media.codecs import FRAME_MS, PCM16, audioop, converters_to, frame_size, silence
from gateway.media.frame import Frame
from gateway.media.interfaces import IFrameConsumer
from gateway.media.pacing import Pacer

__all__ = ["PHASE_MARGIN", "PHASE_SLACK", "Playout", "SILENCE_RMS", "TRIM_MARGIN", "TRIM_WINDOW"]

#: seconds the queue must stay above target + ``TRIM_MARGIN`` frames, at every tick, before trimming starts
TRIM_WINDOW = 0.4
#: frames above the target tolerated for good (the window already absorbs transient bursts)
TRIM_MARGIN = 0
#: a frame whose 16-bit linear RMS is below this (about -50 dBFS) is silence, trimmed first
SILENCE_RMS = 100
#: seconds a live frame may wait for its tick, at the least, before the schedule moves earlier
PHASE_SLACK = 0.003
#: seconds of that wait kept when it does (arrivals jitter by the window's spread already)
PHASE_MARGIN = 0.001

_TO_LINEAR = {PCM16: None, "ulaw": audioop.ulaw2lin, "alaw": audioop.alaw2lin}


def _silent_test(codec: str) -> typing.Callable[[bytes], bool]:
    decode = _TO_LINEAR.get(codec)
    if decode is None:
        return lambda payload: audioop.rms(payload, 2) < SILENCE_RMS
    return lambda payload: audioop.rms(decode(payload, 2), 2) < SILENCE_RMS


@implementer(IFrameConsumer, IPushProducer)
class Playout:
    """Paced playout of frames toward one party, from ``clock``, holding at most ``capacity`` frames.

    Counters: ``frames_played`` (written to the wire), ``frames_dropped``
    (oldest dropped because the queue was full), ``frames_flushed`` (discarded
    by :meth:`flush`), ``underruns`` (times playout ran out of audio and
    stopped), ``frames_trimmed`` (removed by the jitter buffer to bring a live
    backlog back to the target). ``on_drop(count)``, if given, is told of each
    drop as it happens; ``on_trim(where, count)`` of each trim.
    """

    def __init__(self, clock: IReactorTime, codec: str, capacity: int, name: str = "",
                 on_drop: typing.Callable[[int], object] | None = None, jitter_ms: int = 0,
                 on_trim: typing.Callable[[str, int], object] | None = None) -> None:
        if jitter_ms < 0:
            raise ValueError(f"jitter_ms must not be negative, not {jitter_ms}")
        self.codec = codec
        self.name = name
        self.paused = False
        self.closed = False
        self.frames_played = 0
        self.frames_flushed = 0
        self.frames_trimmed = 0
        self.underruns = 0
        self.jitter_ms = jitter_ms
        #: the target depth in frames (0: no jitter buffer)
        self.target = max(1, jitter_ms // FRAME_MS) if jitter_ms else 0
        self._window = round(TRIM_WINDOW * 1000 / FRAME_MS)
        self._high_ticks = 0
        #: phase alignment: ticks in the window, frames that came to an empty queue, the least they waited
        self._phase_ticks = 0
        self._phase_arrivals = 0
        self._phase_wait = 1.0
        #: times the schedule moved earlier to meet a live source's frames (and the seconds it moved in all)
        self.phase_shifts = 0
        self.phase_shifted = 0.0
        self._silent = _silent_test(codec)
        self._on_trim = on_trim
        self._clock = clock
        self._prebuffer: IDelayedCall | None = None
        #: frames played or trimmed: the position checkpoints count in
        self._position = 0
        self._fill = silence(codec)[0]
        self._queue: FrameQueue[bytes] = FrameQueue(capacity, on_drop)
        self._size = frame_size(codec)
        self._reframer = Reframer(self._size, self._queue.push)
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
        payload = frame.payload
        pacer = self._pacer
        if self.target and not self._queue and pacer.running:
            # A frame for the next tick: how long it will wait for it (see _align_phase).
            wait = pacer.next_deadline - self._clock.seconds()
            self._phase_arrivals += 1
            if wait < self._phase_wait:
                self._phase_wait = wait
        if frame.codec == self.codec and len(payload) == self._size and not self._reframer.pending:
            self._queue.push(payload)  # the common case: one whole frame of our codec, queued as it is
        else:
            self._reframer.push(self._convert[frame.codec](payload))
        if not pacer.running and not self.paused and self._wire is not None:
            self._start()

    @property
    def _live(self) -> bool:
        """Whether the jitter buffer applies: it is on and the feeding producer is a live source."""
        return bool(self.target) and getattr(self._queue.producer, "realtime", False)

    def _start(self) -> None:
        """Start a fresh schedule, after the pre-buffer fills (live sources) or at once."""
        if self._live and len(self._queue) < self.target:
            if self._prebuffer is None:
                self._prebuffer = self._clock.callLater(self.jitter_ms / 1000, self._prebuffered)
            return
        self._cancel_prebuffer()
        self._fresh_window()
        self._pacer.start()

    def _prebuffered(self) -> None:
        """The pre-buffer waited ``jitter_ms``: play what there is."""
        self._prebuffer = None
        if self._wire is not None and not self.paused and (self._queue or self._reframer.pending):
            self._fresh_window()
            self._pacer.start()

    def _fresh_window(self) -> None:
        """A fresh schedule: the trim and phase windows start again."""
        self._high_ticks = self._phase_ticks = self._phase_arrivals = 0
        self._phase_wait = 1.0

    def _cancel_prebuffer(self) -> None:
        if self._prebuffer is not None:
            self._prebuffer.cancel()
            self._prebuffer = None

    # -- IPushProducer: toward the wire -------------------------------------

    def set_wire(self, write: typing.Callable[[bytes], object] | None) -> None:
        """Write paced payloads to ``write`` (None: hold them until a wire is set)."""
        self._wire = write
        if write is None:
            self._pacer.stop()
            self._cancel_prebuffer()
        else:
            self._restart()

    def pauseProducing(self) -> None:
        self.paused = True
        self._pacer.stop()
        self._cancel_prebuffer()

    def resumeProducing(self) -> None:
        self.paused = False
        self._restart()

    def stopProducing(self) -> None:
        """The wire's transport is gone: stop writing to it."""
        self.paused = False
        self.set_wire(None)

    def _restart(self) -> None:
        if self._wire is not None and not self.paused and (self._queue or self._reframer.pending) \
                and not self._pacer.running:
            self._start()

    def _tick(self) -> bool:
        wire = self._wire
        if wire is None:  # never: the pacer stops when the wire goes
            return False
        queue = self._queue
        if self.target:
            self._check_backlog()
            self._phase_ticks += 1
            if self._phase_ticks >= self._window:
                self._align_phase()
        if queue:
            payload = queue.pop()
        elif self._reframer.pending:
            payload = self._reframer.take_padded(self._fill)
        else:
            self.underruns += 1
            return False
        self.frames_played += 1
        self._position += 1
        wire(payload)
        if self._checkpoints:
            self._fire_checkpoints(not queue and not self._reframer.pending)
        return True

    def _check_backlog(self) -> None:
        """At a tick, before playing: trim one frame if a live backlog stayed above target + margin for the window."""
        if len(self._queue) <= self.target + TRIM_MARGIN or not self._live:
            self._high_ticks = 0
            return
        if self._clock.seconds() - self._pacer.next_deadline > FRAME_MS / 1000:
            return  # a tick catching up after a stall drains the backlog: not counted
        self._high_ticks += 1
        if self._high_ticks < self._window:
            return
        where = "trim_silence" if self._queue.trim(self._silent) else "trim_oldest"
        self.frames_trimmed += 1
        self._position += 1
        if self._on_trim is not None:
            self._on_trim(where, 1)

    def _align_phase(self) -> None:
        """At the end of a window of ticks: if every live frame that came to an empty queue waited at least
        ``PHASE_SLACK`` for its tick, move the schedule earlier by that least wait less ``PHASE_MARGIN``."""
        wait, arrivals = self._phase_wait, self._phase_arrivals
        self._phase_ticks = self._phase_arrivals = 0
        self._phase_wait = 1.0
        if arrivals * 2 >= self._window and wait >= PHASE_SLACK and self._live:
            shift = min(wait, FRAME_MS / 1000) - PHASE_MARGIN
            self._pacer.shift(shift)
            self.phase_shifts += 1
            self.phase_shifted += shift

    # -- control --------------------------------------------------------------

    def checkpoint(self) -> Deferred[None]:
        """A Deferred firing (with None) once the audio queued so far has been written.

        It also fires when that audio is discarded instead (flush, close) or
        when playout runs dry before (dropped frames are never written).
        """
        d: Deferred[None] = Deferred()
        pending = len(self._queue) + (1 if self._reframer.pending else 0)
        if pending:
            self._checkpoints.append((self._position + pending, d))
        else:
            d.callback(None)
        return d

    def _fire_checkpoints(self, dry: bool) -> None:
        checkpoints = self._checkpoints
        while checkpoints and (dry or checkpoints[0][0] <= self._position):
            checkpoints.pop(0)[1].callback(None)

    def flush(self) -> None:
        """Barge-in: discard the re-framer remainder and every queued frame, stop the schedule.

        A producer paused by the full queue is resumed; the next frame written
        starts a fresh schedule at once.
        """
        self._pacer.stop()
        self._cancel_prebuffer()
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
        self._pacer.release()
        if producer is not None:
            producer.stopProducing()
