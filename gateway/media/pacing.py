"""Deadline pacing: one callback every 20 ms from one clock, without accumulating drift.

A :class:`Pacer` anchors a schedule at ``start`` and fires tick ``n`` at
``start + n * interval``, each time scheduling the next with
``clock.callLater(max(0, deadline - now))``. A late tick therefore shortens
the next wait instead of pushing every later tick back, and after a stall the
missed ticks run at once to catch up. The tick's return value says whether to
go on: a pacer with nothing to do stops scheduling (no busy timer) and a later
:meth:`Pacer.start` anchors a fresh schedule.
"""

from __future__ import annotations

import typing

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gateway.media.codecs import FRAME_MS

__all__ = ["Pacer"]

log = Logger()


class Pacer:
    """Calls ``tick()`` on deadlines ``start + n * interval`` of ``clock`` while it returns true.

    ``clock`` is an ``IReactorTime`` (the reactor, or ``task.Clock`` in tests);
    the schedule's deadlines and the delays given to ``callLater`` come from
    its ``seconds()``, one clock for the whole schedule.
    """

    __slots__ = ("name", "interval", "running", "_clock", "_tick", "_start", "_n", "_call")

    def __init__(self, clock: IReactorTime, tick: typing.Callable[[], bool], interval: float = FRAME_MS / 1000,
                 name: str = "") -> None:
        self.name = name
        self.interval = interval
        self.running = False
        self._clock = clock
        self._tick = tick
        self._start = 0.0
        self._n = 0
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """Begin a fresh schedule whose first tick is due now (no-op if running)."""
        if self.running:
            return
        self.running = True
        self._start = self._clock.seconds()
        self._n = 0
        self._call = self._clock.callLater(0, self._fire)

    def stop(self) -> None:
        """Stop ticking (safe from inside a tick, and when not running)."""
        self.running = False
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _fire(self) -> None:
        self._call = None
        try:
            more = self._tick()
        except Exception:
            log.failure("{pacer}: a paced tick failed; pacing stopped", pacer=self.name or "pacer")
            more = False
        if not self.running or self._call is not None:
            return  # stopped, or stopped and restarted, during the tick
        if not more:
            self.running = False
            return
        self._n += 1
        delay = self._start + self._n * self.interval - self._clock.seconds()
        self._call = self._clock.callLater(delay if delay > 0 else 0, self._fire)
