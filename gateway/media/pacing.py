"""Deadline pacing: one callback every 20 ms, without accumulating drift, on the process's one media clock.

A :class:`Pacer` anchors a schedule at ``start`` and fires tick ``n`` at
``start + n * interval``. It is a schedule (a :class:`~gateway.media.clock.Beat`)
on the :class:`~gateway.media.clock.MediaClock` of its clock, which runs every
schedule of the reactor on one timer: a late tick shortens the next wait
instead of pushing every later tick back, and after a stall the missed ticks
run at once to catch up. The tick's return value says whether to go on: a
pacer with nothing to do stops (leaves the media clock) and a later
:meth:`Pacer.start` anchors a fresh schedule.
"""

from __future__ import annotations

import typing

from twisted.internet.interfaces import IReactorTime

from gateway.media.clock import Beat, media_clock
from gateway.media.codecs import FRAME_MS

__all__ = ["Pacer"]


class Pacer:
    """Calls ``tick()`` on deadlines ``start + n * interval`` of ``clock`` while it returns true.

    ``clock`` is an ``IReactorTime`` (the reactor, or ``task.Clock`` in tests);
    the schedule runs on that clock's one media clock (:func:`gateway.media.clock.media_clock`).
    A tick that raises is logged and stops the pacer.
    """

    __slots__ = ("_beat",)

    def __init__(self, clock: IReactorTime, tick: typing.Callable[[], bool], interval: float = FRAME_MS / 1000,
                 name: str = "") -> None:
        self._beat: Beat = media_clock(clock).beat(tick, interval, name)

    @property
    def name(self) -> str:
        return self._beat.name

    @property
    def interval(self) -> float:
        return self._beat.interval

    @property
    def running(self) -> bool:
        return self._beat.running

    def start(self) -> None:
        """Begin a fresh schedule whose first tick is due now (no-op if running)."""
        self._beat.start()

    def stop(self) -> None:
        """Stop ticking (safe from inside a tick, and when not running)."""
        self._beat.stop()

    def release(self) -> None:
        """Stop for good, letting go of the tick (no reference cycle is left with its owner)."""
        self._beat.release()

    @property
    def next_deadline(self) -> float:
        """When the next tick is due (while running, outside a tick)."""
        return self._beat.next_deadline

    def shift(self, seconds: float) -> None:
        """From inside a tick: move the rest of the schedule ``seconds`` earlier."""
        self._beat.shift(seconds)
