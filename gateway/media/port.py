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
"""

from __future__ import annotations

from gateway.media.buffers import Reframer
from gateway.media.codecs import FRAME_MS, PCM16, check_codec, frame_size
from gateway.media.errors import PortBusy
from gateway.media.playout import Playout
from gateway.media.producers import FrameSource

__all__ = ["MediaPort", "check_free"]


class MediaPort:
    """The media of one call leg: inbound frames from the party, paced playout toward it.

    ``queue_ms`` bounds each direction's buffer (whole 20 ms frames; default
    one second of audio).
    """

    def __init__(self, clock, codec: str = PCM16, name: str = "", queue_ms: int = 1000) -> None:
        check_codec(codec)
        if queue_ms < FRAME_MS:
            raise ValueError(f"queue_ms must be at least one frame ({FRAME_MS} ms), not {queue_ms}")
        capacity = queue_ms // FRAME_MS
        self.codec = codec
        self.name = name
        self.closed = False
        self._muted = False
        self.source = FrameSource(codec, capacity, name)
        self.playout = Playout(clock, codec, capacity, name)
        self._inbound = Reframer(frame_size(codec), self.source.deliver)

    def __repr__(self) -> str:
        return f"<MediaPort {self.name or hex(id(self))} {self.codec}>"

    @property
    def sink(self) -> Playout:
        """Frames written here are played to the party (``IConsumer``)."""
        return self.playout

    @property
    def upstream(self):
        return self.source.upstream

    @upstream.setter
    def upstream(self, producer) -> None:
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

    def set_wire(self, write) -> None:
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


def check_free(user: str, ports, source: bool, sink: bool) -> None:
    """Raise PortBusy (naming ``user``) unless every port is open and the named sides are unclaimed."""
    for port in ports:
        if port.closed:
            raise PortBusy(f"{user}: {port!r} is closed")
        if (source and port.source.consumer is not None) or (sink and port.sink.producer is not None):
            raise PortBusy(f"{user}: {port!r} is in use by another media session")
