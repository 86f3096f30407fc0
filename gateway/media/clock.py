"""One media clock per reactor: every paced schedule of the process on one timer, with no drift.

Every leg's playout, every paced source and every conference mixer ticks once
per 20 ms. With a ``DelayedCall`` of its own per frame, a process carrying
hundreds of legs made and sorted hundreds of timers every 20 ms. A
:class:`MediaClock` holds every schedule of one reactor instead:

- each schedule (a :class:`Beat`) keeps its own anchor and fires its tick ``n``
  at ``anchor + n * interval``, so schedules join in any phase and never drift;
- the clock keeps the schedules in a heap by next deadline and holds ONE
  ``DelayedCall``, at the earliest deadline; when it fires, every schedule that
  is due by then ticks, in deadline order, so legs whose deadlines fall
  together (the reactor wakes at millisecond granularity) tick in one batch,
  and their writes go out together in the reactor's next write pass;
- a schedule behind its deadlines (a stalled reactor) ticks again at once
  until it has caught up, as before; when the timer fires more than
  :data:`STALL` late, the catch-up waits for one pass of the reactor's I/O
  first, so that the frames which arrived during the stall are read and the
  missed ticks play them (in a burst that ends the stall's delay) instead of
  finding the queues empty and leaving the frames as a backlog;
- a schedule started during a firing (a mixer's tick starting a leg's
  playout) first ticks in the next firing, as a fresh ``callLater(0)`` would;
- a schedule whose tick returns false, or that is stopped, leaves the heap;
  when none is left, the clock cancels its timer: an ended call leaves
  nothing scheduled.

:func:`media_clock` gives the one clock of a reactor (or of a ``task.Clock``
in tests); :class:`gateway.media.pacing.Pacer` is a schedule on it.
"""

from __future__ import annotations

import heapq
import itertools
import typing

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["Beat", "MediaClock", "STALL", "media_clock"]

log = Logger()

#: a deadline this close past ``now`` counts as due (float rounding of ``anchor + n * interval``)
_EPSILON = 1e-9
#: seconds a firing may be late before it counts as a stall of the reactor (two frames)
STALL = 0.040


def _stopped() -> bool:
    return False


class Beat:
    """One paced schedule on a :class:`MediaClock`: ``tick()`` at ``anchor + n * interval`` while it returns true."""

    __slots__ = ("name", "interval", "running", "_media", "_tick", "_anchor", "_n", "_generation")

    def __init__(self, media: MediaClock, tick: typing.Callable[[], bool], interval: float, name: str = "") -> None:
        self.name = name
        self.interval = interval
        self.running = False
        self._media = media
        self._tick = tick
        self._anchor = 0.0
        self._n = 0
        #: bumped by every start and stop: heap entries of an older generation are stale
        self._generation = 0

    def start(self) -> None:
        """Begin a fresh schedule whose first tick is due now (no-op if running)."""
        if self.running:
            return
        self.running = True
        self._generation += 1
        self._anchor = self._media.seconds()
        self._n = 0
        self._media.add(self, self._anchor)

    def stop(self) -> None:
        """Stop ticking (safe from inside a tick, and when not running)."""
        if self.running:
            self.running = False
            self._generation += 1
            self._media.removed()

    @property
    def next_deadline(self) -> float:
        """The deadline of the tick queued (outside a tick) or running (inside it)."""
        return self._anchor + self._n * self.interval

    def release(self) -> None:
        """Stop for good and let go of the tick (whose owner usually holds this schedule: a cycle)."""
        self.stop()
        self._tick = _stopped

    def shift(self, seconds: float) -> None:
        """From inside its own tick: move the rest of the schedule ``seconds`` earlier (its phase; no tick is lost)."""
        self._anchor -= seconds


class MediaClock:
    """The paced schedules of one reactor on one timer (see the module docstring).

    Counters: ``firings`` (times the timer fired), ``ticks`` (schedule ticks run),
    ``stalls`` (firings later than :data:`STALL`); ``beats`` is the number of running schedules.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.seconds = clock.seconds
        #: (deadline, order, beat, generation)
        self._heap: list[tuple[float, int, Beat, int]] = []
        self._order = itertools.count()
        self._call: IDelayedCall | None = None
        self._due = 0.0
        self._firing = False
        #: schedules started during a firing, added to the heap after it
        self._started: list[tuple[float, int, Beat, int]] = []
        self.beats = 0
        self.firings = 0
        self.ticks = 0
        self.stalls = 0
        self._after_stall = False

    def beat(self, tick: typing.Callable[[], bool], interval: float, name: str = "") -> Beat:
        """A new (stopped) schedule calling ``tick`` every ``interval`` seconds once started."""
        return Beat(self, tick, interval, name)

    @property
    def scheduled(self) -> bool:
        """Whether the clock holds a timer (it does exactly while a schedule runs)."""
        return self._call is not None

    # -- for Beat ------------------------------------------------------------------

    def add(self, beat: Beat, deadline: float) -> None:
        self.beats += 1
        entry = (deadline, next(self._order), beat, beat._generation)
        if self._firing:
            self._started.append(entry)  # ticks from the next firing on, as a fresh callLater(0) would
        else:
            heapq.heappush(self._heap, entry)
            self._schedule()

    def removed(self) -> None:
        self.beats -= 1
        if self.beats == 0:
            self._heap.clear()  # every entry left is stale
            self._started.clear()
            if self._call is not None and not self._firing:
                self._call.cancel()
                self._call = None

    # -- the one timer -------------------------------------------------------------

    def _schedule(self) -> None:
        """Hold the timer at the earliest live deadline (none when no schedule runs)."""
        heap = self._heap
        while heap and heap[0][3] != heap[0][2]._generation:
            heapq.heappop(heap)  # stale: its schedule was stopped or restarted
        if not heap:
            if self._call is not None:
                self._call.cancel()
                self._call = None
            return
        deadline = heap[0][0]
        if self._call is not None:
            if self._due <= deadline:
                return
            self._call.cancel()
        delay = deadline - self._clock.seconds()
        self._due = deadline
        self._call = self._clock.callLater(delay if delay > 0 else 0, self._fire)

    def _fire(self) -> None:
        self._call = None
        heap = self._heap
        now = self._clock.seconds() + _EPSILON
        if heap and now - heap[0][0] > STALL and not self._after_stall:
            # The reactor was stalled: let it read what came meanwhile before the schedules catch up, so
            # the missed ticks play the frames that arrived during the stall instead of finding empty queues.
            self._after_stall = True
            self.stalls += 1
            self._due = now
            self._call = self._clock.callLater(0, self._fire)
            return
        self._after_stall = False
        self.firings += 1
        self._firing = True
        try:
            while heap and heap[0][0] <= now:
                _, _, beat, generation = heapq.heappop(heap)
                if generation != beat._generation:
                    continue  # stopped or restarted since
                self.ticks += 1
                try:
                    more = beat._tick()
                except Exception:
                    log.failure("{pacer}: a paced tick failed; pacing stopped", pacer=beat.name or "pacer")
                    more = False
                if generation != beat._generation:
                    continue  # stopped (or stopped and restarted) during its tick
                if not more:
                    beat.stop()
                    continue
                beat._n += 1
                heapq.heappush(heap, (beat._anchor + beat._n * beat.interval, next(self._order), beat, generation))
        finally:
            self._firing = False
            for entry in self._started:
                heapq.heappush(heap, entry)
            self._started.clear()
            self._schedule()


#: the attribute of a reactor (or task.Clock) holding its MediaClock, so the two live and die together
_ATTRIBUTE = "_gateway_media_clock"


def media_clock(clock: IReactorTime) -> MediaClock:
    """The one :class:`MediaClock` of ``clock`` (a reactor, or a ``task.Clock``), made on first use.

    It is kept on ``clock`` itself (a reactor lives as long as the process; a
    test's ``task.Clock`` takes its media clock with it). A clock that takes no
    attributes gets a new media clock each time.
    """
    media: MediaClock | None = getattr(clock, _ATTRIBUTE, None)
    if media is None:
        media = MediaClock(clock)
        try:
            setattr(clock, _ATTRIBUTE, media)
        except AttributeError:
            pass
    return media
