"""What both OptimaCCS WebSockets do with a call's media and timing: one open Autobahn connection as a leg's link.

A :class:`Link` carries one leg: JSON events and binary audio out, the leg's
:class:`~gateway.media.MediaPort` attached to the TCP transport in both
directions (the port's paced playout is the transport's producer, so a peer
that stops reading pauses it; the transport is the port's upstream, so a full
inbound path stops reading from the socket), and closing with any code.
:class:`Tones` keeps the Deferreds of DTMF tones being played, so they can
fail together when the connection goes.
"""

from __future__ import annotations

from autobahn.util import encode_truncate
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer, task
from twisted.python.failure import Failure

from gateway.core.errors import DriverError
from gateway.drivers import optimaccs_wire as wire

__all__ = ["CLOSE_GRACE", "Link", "Tones"]

NAME = "optimaccs"
#: seconds the peer is given to close by itself once the call and its cdr are over (the provider closes
#: after its cdr; both sides closing at once can lose the close frames to a reset)
CLOSE_GRACE = 1.0
#: the longest close reason a close frame can carry, in bytes
_MAX_REASON = 123


class Link:
    """An Autobahn protocol (either side) as the link of one call."""

    def __init__(self, protocol: WebSocketProtocol) -> None:
        self.protocol = protocol
        self.frames_out = 0

    @property
    def open(self) -> bool:
        return self.protocol.state == WebSocketProtocol.STATE_OPEN

    def send(self, message: dict) -> None:
        """A JSON event, if the connection is still open."""
        if self.open:
            self.protocol.sendMessage(wire.encode(message), isBinary=False)

    def send_audio(self, payload: bytes) -> None:
        if self.open:
            self.frames_out += 1
            self.protocol.sendMessage(payload, isBinary=True)

    def attach(self, port) -> None:
        """Play ``port``'s audio to the peer, and pause reading while its inbound path is full."""
        transport = self.protocol.transport
        port.set_wire(self.send_audio)
        transport.registerProducer(port.playout, True)
        port.upstream = transport

    def detach(self, port) -> None:
        """Close ``port`` and let go of the transport."""
        if port.closed:
            return
        port.close()
        if self.protocol.transport is not None:
            self.protocol.transport.unregisterProducer()

    def close(self, code: int, reason: str) -> bool:
        """Start the closing handshake with ``code`` (any, 1003/1007/... too); False if not open."""
        if not self.open:
            return False
        # Autobahn's sendClose() allows only 1000 and 3000-4999; the protocol's own codes go through here.
        self.protocol.sendCloseFrame(code, encode_truncate(reason, _MAX_REASON), isReply=False)
        return True


class Tones:
    """DTMF tones being played: each Deferred fires when its tone has ended, or fails if cancelled."""

    def __init__(self, clock) -> None:
        self._clock = clock
        self._playing: list[defer.Deferred] = []

    def play(self, duration_ms: int) -> defer.Deferred:
        tone = task.deferLater(self._clock, duration_ms / 1000)
        self._playing.append(tone)
        return tone.addBoth(self._ended, tone)

    def cancel(self) -> None:
        """The connection is gone: every tone still playing fails with DriverError."""
        for tone in list(self._playing):
            tone.cancel()

    def _ended(self, result, tone: defer.Deferred):
        self._playing.remove(tone)
        if isinstance(result, Failure) and result.check(defer.CancelledError):
            raise DriverError(NAME, "the connection closed while the DTMF tone played")
        return result
