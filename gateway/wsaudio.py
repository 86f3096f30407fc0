"""A lean data path for binary audio on an Autobahn WebSocket: one frame in, one frame out, no extra objects.

A call's audio is 50 small binary messages a second each way, every one a single
unfragmented frame. Autobahn handles each as a general message: a masker object
per frame, debug-log arguments formatted and thrown away, message assembly
lists, a txaio Deferred per message, and a full ``sendMessage`` per frame on the
way out. Measured, that was 40% of the gateway's CPU per echoed frame
(issue 14). :class:`AudioFastPath` is a mixin for Autobahn's Twisted
protocols that takes the common case off that path, at Autobahn's own
frame-processing seam (``WebSocketProtocol.processData``):

- **In.** While the connection is OPEN and Autobahn is between frames and
  messages, a buffered frame that is FIN, binary, RSV 0, masked from a client
  (unmasked from a server) and within ``maxFramePayloadSize`` and
  ``maxMessagePayloadSize`` is cut from the buffer, unmasked with one integer
  XOR, and handed to ``onMessage(payload, True)`` at once. A partial frame of
  that kind waits for the rest. Anything else (text, control frames,
  fragments, reserved bits or opcodes, oversize, a wrong mask bit, the
  closing state, compression) goes to Autobahn's own ``processData``, which
  keeps the handshake, pings, the close handshake and its codes, UTF-8
  validation, size limits and every protocol error exactly as before.
- **Out.** :meth:`AudioFastPath.sendAudio` writes one binary frame straight to
  the transport: a prebuilt header plus the payload from a server (server
  frames are unmasked); from a client, the payload masked with a fresh key
  from a pool of ``os.urandom`` bytes (RFC 6455 5.3 wants the key
  unpredictable). On a plain TCP transport whose buffer is empty the frame
  goes to the socket at once (:func:`_send_now`), sparing the reactor two
  ``epoll_ctl`` calls per frame; anything the socket does not take goes
  through ``transport.write`` as usual. When Autobahn's own send queue is in
  use, or a compression extension was negotiated, it falls back to
  ``sendMessage``.

The seam is Autobahn's, not ours: the attributes read here (``data``,
``current_frame``, ``inside_message``, ``state``, ``send_queue``,
``_perMessageCompress``, the auto-ping timeout) are named in
:data:`SEAM` and :data:`STATE`, checked when the module is imported and by the
tests, and setup.cfg pins the Autobahn releases this was written against. tests/test_rfc6455.py runs the
same RFC 6455 cases against plain Autobahn and against this path.
"""

from __future__ import annotations

import os
import struct

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp

__all__ = ["AudioFastPath", "SEAM", "STATE", "TRANSPORT", "check_autobahn", "mask"]

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSING = WebSocketProtocol.STATE_CLOSING
#: FIN + opcode 2 (binary), RSV bits clear
_FIN_BINARY = 0x82
#: bytes of masking keys drawn from the OS at once
_KEY_POOL = 4096


def mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the 4-byte ``key`` repeated (masking and unmasking are the same), as one integer XOR."""
    n = len(payload)
    repeated = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def _send_now(transport: tcp.Connection, frame: bytes) -> bool:
    """Send ``frame`` on ``transport``'s socket now if nothing waits in its buffer; True if it all went.

    A frame written through ``transport.write`` costs the reactor two ``epoll_ctl`` calls (start and stop
    writing) and a pass of its loop. When the transport's buffer is empty and the socket takes the whole
    frame (the usual case: a 20 ms frame is a few hundred bytes), sending it at once is the same bytes in
    the same order without those. Otherwise (a partial send, a full socket, the connection closing) the
    caller writes through the transport, which buffers, pauses its producer and reports errors as ever.
    """
    if (transport.dataBuffer or transport._tempDataBuffer or not transport.connected or transport.disconnecting
            or transport._writeDisconnected):
        return False
    try:
        sent = transport.socket.send(frame)
    except OSError:
        return False  # EAGAIN, or an error the transport's own write will meet and report
    if sent == len(frame):
        return True
    transport.write(frame[sent:])
    return True


def _header(length: int, masked: bool) -> bytes:
    """The header of one FIN binary frame carrying ``length`` bytes (without the masking key)."""
    bit = 0x80 if masked else 0
    if length < 126:
        return bytes((_FIN_BINARY, bit | length))
    if length < 1 << 16:
        return bytes((_FIN_BINARY, bit | 126)) + struct.pack("!H", length)
    return bytes((_FIN_BINARY, bit | 127)) + struct.pack("!Q", length)


class AudioFastPath:
    """Mixin (first base) for an Autobahn Twisted WebSocket protocol: binary audio frames on a lean path.

    ``class Server(AudioFastPath, WebSocketServerProtocol)``. Counters for the
    metrics and tests: ``fast_in`` (frames taken by the lean path in),
    ``fast_out`` (frames written by :meth:`sendAudio`).
    """

    fast_in = 0
    fast_out = 0
    _headers: dict[int, bytes] | None = None
    _keys = b""
    _key_at = 0

    # Autobahn's attributes, set by its protocol classes
    data: bytes
    state: int
    current_frame: object
    inside_message: bool

    def connectionLost(self, reason: object) -> None:
        """Autobahn's, then let go of ``is_closed``: Autobahn fires that Deferred with the protocol itself,
        a reference cycle that kept every ended call's protocol (and what hangs on it) until Python's next
        full collection, which comes every few hundred calls and pauses the reactor (issue 18)."""
        super().connectionLost(reason)  # type: ignore[misc]
        closed = self.__dict__.get("is_closed")
        if closed is not None and closed.called:
            self.is_closed = None

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the transport: while OPEN, straight to the frame loop (Autobahn's own way otherwise).

        Autobahn's ``dataReceived`` formats a debug line's arguments, counts traffic statistics nobody
        reads here and calls ``consumeData``, which runs the same loop as below.
        """
        if self.state != _OPEN or self.logOctets:  # type: ignore[attr-defined]
            super().dataReceived(data)  # type: ignore[misc]
            return
        self.data = self.data + data if self.data else data
        while self.processData() and self.state == _OPEN:
            pass
        if self.state == _CLOSING and self.data:
            self.consumeData()  # type: ignore[attr-defined]  # Autobahn's loop finishes the closing handshake

    def processData(self) -> bool:
        """Autobahn's frame processing, with whole binary frames of the open connection taken here first."""
        if self.state != _OPEN or self.current_frame is not None or self.inside_message:
            return super().processData()  # type: ignore[misc]
        data = self.data
        have = len(data)
        if have < 2 or data[0] != _FIN_BINARY:
            return super().processData()  # type: ignore[misc]
        second = data[1]
        masked = second & 0x80
        if bool(masked) != self.factory.isServer or self._perMessageCompress is not None:  # type: ignore[attr-defined]
            return super().processData()  # type: ignore[misc]
        length = second & 0x7F
        start = 2
        if length == 126:
            if have < 4:
                return False
            length = (data[2] << 8) | data[3]
            start = 4
            if length < 126:
                return super().processData()  # type: ignore[misc]  # not the minimal encoding: Autobahn refuses it
        elif length == 127:
            return super().processData()  # type: ignore[misc]  # never an audio frame
        limit_frame = self.maxFramePayloadSize  # type: ignore[attr-defined]
        limit_message = self.maxMessagePayloadSize  # type: ignore[attr-defined]
        if (limit_frame and length > limit_frame) or (limit_message and length > limit_message):
            return super().processData()  # type: ignore[misc]  # Autobahn fails it with 1009
        if masked:
            key = data[start:start + 4]
            start += 4
        end = start + length
        if have < end:
            return False  # the rest of this frame is still on its way
        payload = data[start:end]
        if masked and key != b"\0\0\0\0":
            payload = mask(payload, key)
        self.data = data[end:]
        self.fast_in += 1
        if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:  # type: ignore[attr-defined]
            self._cancelAutoPingTimeoutCall()  # type: ignore[attr-defined]  # as Autobahn does for any data frame
        self.onMessage(payload, True)  # type: ignore[attr-defined]
        return len(self.data) > 0

    def sendAudio(self, payload: bytes) -> None:
        """Send ``payload`` as one binary message, if the connection is open (nothing otherwise)."""
        if self.state != _OPEN:
            return
        if self.send_queue or self._perMessageCompress is not None:  # type: ignore[attr-defined]
            self.sendMessage(payload, isBinary=True)  # type: ignore[attr-defined]
            return
        headers = self._headers
        if headers is None:
            headers = self._headers = {}
        length = len(payload)
        header = headers.get(length)
        server = self.factory.isServer  # type: ignore[attr-defined]
        if header is None:
            header = headers[length] = _header(length, not server)
        if server:
            frame = header + payload
        else:
            key = self._next_key()
            frame = header + key + mask(payload, key)
        transport = self.transport  # type: ignore[attr-defined]
        if not (self._direct and _send_now(transport, frame)):
            transport.write(frame)
        self.fast_out += 1

    @property
    def _direct(self) -> bool:
        """Whether frames may go to the socket at once: a plain TCP transport (not TLS), checked once."""
        direct = self.__dict__.get("_direct_ok")
        if direct is None:
            transport = self.transport  # type: ignore[attr-defined]
            direct = self.__dict__["_direct_ok"] = (isinstance(transport, tcp.Connection)
                                                     and not transport.TLS and hasattr(transport, "socket"))
        return direct

    def _next_key(self) -> bytes:
        at = self._key_at
        if at + 4 > len(self._keys):
            self._keys, at = os.urandom(_KEY_POOL), 0
        self._key_at = at + 4
        return self._keys[at:at + 4]


#: what :class:`AudioFastPath` calls of Autobahn's WebSocketProtocol (its state attributes are checked by the tests)
SEAM = ("processData", "consumeData", "_dataReceived", "sendMessage", "_cancelAutoPingTimeoutCall")
#: the attributes of Twisted's TCP transport :func:`_send_now` reads (checked by the tests)
TRANSPORT = ("dataBuffer", "_tempDataBuffer", "connected", "disconnecting", "_writeDisconnected", "TLS", "socket")
#: the attributes of an open Autobahn protocol it reads
STATE = ("data", "logOctets", "current_frame", "inside_message", "send_queue", "_perMessageCompress", "autoPingTimeoutCall",
         "autoPingRestartOnAnyTraffic", "maxFramePayloadSize", "maxMessagePayloadSize", "factory", "transport")


def check_autobahn() -> None:
    """Fail loudly (ImportError) if this Autobahn lacks the methods :class:`AudioFastPath` is built on."""
    missing = [name for name in SEAM if not callable(getattr(WebSocketProtocol, name, None))]
    if missing:
        raise ImportError(f"gateway.wsaudio: this Autobahn's WebSocketProtocol lacks {', '.join(missing)}; "
                          "the lean audio path was written for autobahn 24.4-26.x (setup.cfg)")


check_autobahn()
