"""One call leg's attachment to the media plane: a :class:`MediaPort`.

The driver side (the wire):

- ``port.receive(data)``: raw audio from the party, any length; re-framed to
  20 ms frames and produced by ``port.source``.
- ``port.set_wire(write)``: where paced outbound audio goes (a function taking
  bytes, e.g. the driver's ``transport.write`` or a WebSocket send).
- ``port.playout``: the ``IPushProducer`` the driver registers with its
  transport (``transport.registerProducer(port.playout, True)``), so a
  transport that cannot keep up pauses playout.
- ``port.upstream = transport``: the driver's producer, paused while the
  party's frames back up (the consumer of ``port.source`` is slow).

The core/app side:

- ``port.source``: ``IPushProducer`` of frames from the party;
  ``port.source.connect(consumer)``.
- ``port.sink``: ``IConsumer`` of frames toward the party (into the paced
  playout queue); the same object as ``port.playout``.
- ``port.flush()`` (barge-in), ``port.muted``, ``port.close()``.

Drops (a full queue losing its oldest frame) are counted on the port and, when
the port has an ``on_drop(where, count)`` hook, reported as they happen:
``where`` is ``"playout"`` (toward the party) or ``"inbound"`` (from it). An
app that queues the port's frames itself reports its drops to the same hook
through ``port.drop_hook(where)`` (the conference mixer: ``"mix"``).

The daemon makes every port through one :class:`MediaPorts` factory
(``ctx.media_ports``), which carries the configured queue size and the
metrics hook, so drivers need not know either.
"""

from __future__ import annotations

import functools
import typing

import attrs
from twisted.internet.interfaces import IPushProducer, IReactorTime

from gateway.media.buffers import Reframer
from gateway.media.codecs import FRAME_MS, PCM16, check_codec, frame_size
from gateway.media.errors import PortBusy
from gateway.media.playout import Playout
from gateway.media.producers import FrameSource

__all__ = ["MediaPort", "MediaPorts", "check_free"]

#: ``on_drop(where, count)``: ``count`` frames were just dropped on the ``where`` side of a port
DropHook = typing.Callable[[str, int], object]


class MediaPort:
    """The media of one call leg: inbound frames from the party, paced playout toward it.

    ``queue_ms`` bounds each direction's buffer (whole 20 ms frames; default
    one second of audio). ``on_drop(where, count)``, if given, is called
    whenever a full queue drops frames, with ``where`` ``"playout"`` or
    ``"inbound"``, and whenever the playout's jitter buffer trims a live
    backlog, with ``"trim_silence"`` or ``"trim_oldest"``; nothing extra
    happens while nothing is dropped. ``jitter_ms`` is the playout's jitter
    target (0: none, the plain FIFO; see :mod:`gateway.media.playout`).
    """

    #: the ``on_drop(where, count)`` hook this port reports its drops to, or None
    on_drop: DropHook | None

    def __init__(self, clock: IReactorTime, codec: str = PCM16, name: str = "", queue_ms: int = 1000,
                 on_drop: DropHook | None = None, jitter_ms: int = 0) -> None:
        check_codec(codec)
        if queue_ms < FRAME_MS:
            raise ValueError(f"queue_ms must be at least one frame ({FRAME_MS} ms), not {queue_ms}")
        capacity = queue_ms // FRAME_MS
        self.codec = codec
        self.name = name
        self.closed = False
        self.on_drop = on_drop
        self._muted = False
        self.source = FrameSource(codec, capacity, name, self.drop_hook("inbound"))
        if not 0 <= jitter_ms < queue_ms:
            raise ValueError(f"jitter_ms must be at least 0 and below queue_ms ({queue_ms}), not {jitter_ms}")
        self.playout = Playout(clock, codec, capacity, name, self.drop_hook("playout"), jitter_ms, on_drop)
        self._inbound = Reframer(frame_size(codec), self.source.deliver)

    def __repr__(self) -> str:
        return f"<MediaPort {self.name or hex(id(self))} {self.codec}>"

    def drop_hook(self, where: str) -> typing.Callable[[int], object] | None:
        """``on_drop`` bound to ``where``, for a queue of this port's frames: ``hook(count)`` (None: no hook)."""
        return None if self.on_drop is None else functools.partial(self.on_drop, where)

    @property
    def sink(self) -> Playout:
        """Frames written here are played to the party (``IConsumer``)."""
        return self.playout

    @property
    def upstream(self) -> IPushProducer | None:
        return self.source.upstream

    @upstream.setter
    def upstream(self, producer: IPushProducer | None) -> None:
        self.source.upstream = producer

    @property
    def muted(self) -> bool:
        """While true, the party's audio is discarded (nothing is produced by ``source``)."""
        return self._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        self._muted = bool(value)
        self._inbound.clear()

    def receive(self, data: bytes) -> None:
        """Raw audio from the party, in the port's codec, of any length."""
        if not self._muted and not self.closed:
            self._inbound.push(data)

    def set_wire(self, write: typing.Callable[[bytes], object] | None) -> None:
        """Send paced outbound audio to ``write(bytes)`` (None: stop sending)."""
        self.playout.set_wire(write)

    def flush(self) -> None:
        """Barge-in: discard all audio buffered toward the party (see :meth:`Playout.flush`)."""
        self.playout.flush()

    def close(self) -> None:
        """Detach from everything: the source's consumer, the sink's producer, the wire, upstream."""
        if self.closed:
            return
        self.closed = True
        self._inbound.clear()
        self.source.disconnect()
        self.source.upstream = None
        self.playout.close()


@attrs.frozen
class MediaPorts:
    """Makes the ports of every call leg alike: the configured queue size, the drop hook (metrics).

    Drivers take one (``ctx.media_ports`` in the daemon); the default,
    ``MediaPorts()``, makes plain one-second ports without a jitter buffer
    that report to nobody.
    """

    queue_ms: int = 1000
    on_drop: DropHook | None = None
    jitter_ms: int = 0

    def port(self, clock: IReactorTime, codec: str = PCM16, name: str = "") -> MediaPort:
        """A new port for one call leg."""
        return MediaPort(clock, codec, name, self.queue_ms, self.on_drop, self.jitter_ms)


def check_free(user: str, ports: typing.Iterable[MediaPort], source: bool, sink: bool) -> None:
    """Raise PortBusy (naming ``user``) unless every port is open and the named sides are unclaimed."""
    for port in ports:
        if port.closed:
            raise PortBusy(f"{user}: {port!r} is closed")
        if (source and port.source.consumer is not None) or (sink and port.sink.producer is not None):
            raise PortBusy(f"{user}: {port!r} is in use by another media session")
