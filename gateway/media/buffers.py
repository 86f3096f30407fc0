"""The two buffers of the media plane: exact 20 ms re-framing, and the bounded frame queue.

:class:`Reframer` cuts a byte stream written in pieces of any length (7 bytes,
5000 bytes) into payloads of exactly one frame, keeping the remainder.

:class:`FrameQueue` is the one bounded buffer policy used everywhere: when it
reaches its high-water mark it pauses the producer feeding it; if items still
arrive (real-time sources ignore pauses) it drops the OLDEST, counts it and
tells its ``on_drop`` hook (for the metrics); once drained to its low-water
mark it resumes the producer.
"""

from __future__ import annotations

import collections
import typing

from twisted.internet.interfaces import IPushProducer

__all__ = ["FrameQueue", "Reframer"]

_Item = typing.TypeVar("_Item")


class Reframer:
    """Re-frames a byte stream into ``size``-byte payloads passed to ``emit``."""

    __slots__ = ("size", "_emit", "_rest")

    def __init__(self, size: int, emit: typing.Callable[[bytes], object]) -> None:
        if size <= 0:
            raise ValueError(f"frame size must be positive, not {size}")
        self.size = size
        self._emit = emit
        self._rest = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back until a whole frame is there."""
        return len(self._rest)

    def push(self, data: bytes) -> None:
        """Add ``data``; emit every whole frame it completes.

        A payload of exactly one frame with nothing held back is emitted as it
        is (the common case: no copy). Otherwise the remainder is completed in
        place, the rest of ``data`` is cut through a memoryview (one copy per
        frame emitted), and only the new remainder is kept.
        """
        size = self.size
        rest = self._rest
        if rest:
            need = size - len(rest)
            if len(data) < need:
                rest += data
                return
            with memoryview(data) as view:
                rest += view[:need]
                frame = bytes(rest)
                rest.clear()
                self._emit(frame)
                if len(data) > need:
                    self._cut(view[need:])
            return
        if len(data) == size:
            self._emit(data if type(data) is bytes else bytes(data))
            return
        with memoryview(data) as view:
            self._cut(view)

    def _cut(self, view: memoryview) -> None:
        """Emit the whole frames of ``view`` (nothing is held back on entry); keep its remainder."""
        size = self.size
        end = len(view) - len(view) % size
        for offset in range(0, end, size):
            self._emit(view[offset : offset + size].tobytes())
        if end != len(view):
            self._rest += view[end:]

    def take_padded(self, fill: int) -> bytes:
        """The held-back remainder as one whole frame, padded with byte ``fill``."""
        rest = self._rest
        rest += bytes([fill]) * (self.size - len(rest))
        frame = bytes(rest)
        rest.clear()
        return frame

    def clear(self) -> int:
        """Discard the remainder; return how many bytes were discarded."""
        discarded = len(self._rest)
        self._rest.clear()
        return discarded


class FrameQueue(typing.Generic[_Item]):
    """A bounded FIFO that pauses ``producer`` at its high-water mark and drops the oldest when full.

    ``producer`` (an ``IPushProducer`` or None) is resumed when the queue drains
    to its low-water mark. ``frames_dropped`` counts items dropped because the
    queue was full; ``on_drop(count)``, if given, is called with each drop.
    """

    __slots__ = ("capacity", "high_water", "low_water", "producer", "producer_paused", "frames_dropped", "on_drop",
                 "_items")

    def __init__(self, capacity: int, on_drop: typing.Callable[[int], object] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be at least one frame, not {capacity}")
        self.capacity = capacity
        self.high_water = capacity - capacity // 4
        self.low_water = capacity // 4
        self.producer: IPushProducer | None = None
        self.producer_paused = False
        self.frames_dropped = 0
        self.on_drop = on_drop
        self._items: collections.deque[_Item] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def push(self, item: _Item) -> None:
        items = self._items
        if len(items) >= self.capacity:
            items.popleft()
            self.frames_dropped += 1
            if self.on_drop is not None:
                self.on_drop(1)
        items.append(item)
        if len(items) >= self.high_water:
            self._pause_producer()

    def pop(self) -> _Item:
        """The oldest item (the queue must not be empty)."""
        item = self._items.popleft()
        if self.producer_paused and len(self._items) <= self.low_water:
            self._resume_producer()
        return item

    def trim(self, prefer: typing.Callable[[_Item], bool]) -> bool:
        """Remove one item: the oldest for which ``prefer`` is true, else the oldest (the queue must not be empty).

        Return whether a preferred item was found. Not counted in ``frames_dropped``
        (that counts overflow): the caller counts its own trims.
        """
        items = self._items
        for index, item in enumerate(items):
            if prefer(item):
                del items[index]
                found = True
                break
        else:
            items.popleft()
            found = False
        if self.producer_paused and len(items) <= self.low_water:
            self._resume_producer()
        return found

    def clear(self) -> int:
        """Discard every item, resume the producer; return how many were discarded."""
        discarded = len(self._items)
        self._items.clear()
        if self.producer_paused:
            self._resume_producer()
        return discarded

    def set_producer(self, producer: IPushProducer | None) -> None:
        """Feed from ``producer`` (None: no producer); it is paused at once if the queue is high."""
        self.producer = producer
        self.producer_paused = False
        if len(self._items) >= self.high_water:
            self._pause_producer()

    def _pause_producer(self) -> None:
        if self.producer is not None and not self.producer_paused:
            self.producer_paused = True
            self.producer.pauseProducing()

    def _resume_producer(self) -> None:
        # Cleared first: resuming may synchronously push again and pause again.
        self.producer_paused = False
        if self.producer is not None:
            self.producer.resumeProducing()
