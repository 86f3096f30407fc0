"""RFC 6455 by hand for tests/test_rfc6455.py: a frame builder, a strict frame parser, and one Autobahn
WebSocket connection (server or client side) on a StringTransport with its timers on a task.Clock.

The builder and parser are written from the RFC, independently of Autobahn and of
:mod:`gateway.wsaudio`, so that a frame one of them gets wrong does not cancel out.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import NamedTuple

from autobahn.twisted.websocket import (WebSocketClientFactory, WebSocketClientProtocol, WebSocketServerFactory,
                                        WebSocketServerProtocol)
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.wsaudio import AudioFastPath
from gateway.wstimers import use_reactor

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: RFC 6455 5.2: RSV1, RSV2, RSV3 as the 3-bit value after FIN
RSV1, RSV2, RSV3 = 4, 2, 1
OPEN, CLOSING, CLOSED = WebSocketProtocol.STATE_OPEN, WebSocketProtocol.STATE_CLOSING, WebSocketProtocol.STATE_CLOSED

#: a masking key with every byte different and the high bits set, so a wrong byte order shows
KEY = b"\x37\xfa\x21\x3d"
ZERO_KEY = b"\0\0\0\0"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CLIENT_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
CLIENT_HANDSHAKE = (b"GET /media HTTP/1.1\r\nHost: gateway.test:9000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: " + _CLIENT_KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


def xor(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 5.3 masking (and unmasking), byte by byte."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, key: bytes | None = None,
          length: int | None = None, form: int | None = None) -> bytes:
    """One frame. ``key``: the masking key (None: unmasked). ``length``: the length the header claims
    (default: the payload's). ``form``: the length encoding, 7, 16 or 64 bits (default: the minimal one)."""
    n = len(payload) if length is None else length
    if form is None:
        form = 7 if n < 126 else 16 if n < 1 << 16 else 64
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    bit = 0x80 if key is not None else 0
    if form == 7:
        header = bytes((first, bit | n))
    elif form == 16:
        header = bytes((first, bit | 126)) + struct.pack("!H", n)
    else:
        header = bytes((first, bit | 127)) + struct.pack("!Q", n)
    if key is None:
        return header + payload
    return header + key + xor(payload, key)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class Frame(NamedTuple):
    fin: bool
    rsv: int
    opcode: int
    key: bytes | None  # None: unmasked
    payload: bytes  # unmasked

    @property
    def code(self) -> int | None:
        """A close frame's status code (None without one)."""
        assert self.opcode == CLOSE, self
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


def parse_frames(data: bytes) -> list[Frame]:
    """Every frame in ``data``, which must hold whole frames only."""
    frames = []
    at = 0
    while at < len(data):
        assert len(data) - at >= 2, f"a partial frame header at the end: {data[at:]!r}"
        first, second = data[at], data[at + 1]
        n, at = second & 0x7F, at + 2
        if n == 126:
            n, at = struct.unpack("!H", data[at:at + 2])[0], at + 2
        elif n == 127:
            n, at = struct.unpack("!Q", data[at:at + 8])[0], at + 8
        key = None
        if second & 0x80:
            key, at = data[at:at + 4], at + 4
        payload = data[at:at + n]
        assert len(payload) == n, f"a frame claims {n} bytes and {len(payload)} follow"
        at += n
        frames.append(Frame(bool(first & 0x80), (first >> 4) & 7, first & 0x0F, key,
                            payload if key is None else xor(payload, key)))
    return frames


class Recorder:
    """What the application sees, as a first base before the protocol under test; ``on_message``, if
    set, is what the application then does (``on_message(protocol)``)."""

    on_message = None

    def onOpen(self):
        self.opened = True

    def onMessage(self, payload, isBinary):
        self.messages.append((payload, isBinary))
        if self.on_message is not None:
            self.on_message(self)

    def onPong(self, payload):
        self.pongs.append(payload)

    def onClose(self, wasClean, code, reason):
        self.closes.append((wasClean, code, reason))


class PlainSendAudio:
    """The reference for :meth:`gateway.wsaudio.AudioFastPath.sendAudio` on plain Autobahn: one binary
    message through ``sendMessage`` when open, nothing otherwise."""

    def sendAudio(self, payload: bytes) -> None:
        if self.state == OPEN:
            self.sendMessage(payload, isBinary=True)


class Path(NamedTuple):
    """A data path under test: the protocol classes for each side."""

    name: str
    server: type
    client: type
    lean: bool


PLAIN = Path("Autobahn",
             type("PlainServer", (Recorder, PlainSendAudio, WebSocketServerProtocol), {}),
             type("PlainClient", (Recorder, PlainSendAudio, WebSocketClientProtocol), {}), lean=False)
LEAN = Path("Lean",
            type("LeanServer", (Recorder, AudioFastPath, WebSocketServerProtocol), {}),
            type("LeanClient", (Recorder, AudioFastPath, WebSocketClientProtocol), {}), lean=True)
PATHS = (PLAIN, LEAN)
SERVER, CLIENT = "Server", "Client"


class TCPLikeTransport(StringTransport):
    """A StringTransport that, like Twisted's TCP transport, takes a second ``unregisterProducer`` (Autobahn
    unregisters at every drop)."""

    def unregisterProducer(self):
        self.producer = None


class Connection:
    """One WebSocket connection of ``path`` on ``side`` (SERVER: the test is its client; CLIENT: the
    test is its server), on a StringTransport, Autobahn's timers on ``clock``; options as the gateway's
    OptimaCCS factories set them (failByDrop=False: a violation is a close frame with its code)."""

    def __init__(self, path: Path, side: str, clock, **options) -> None:
        self.side = side
        options.setdefault("failByDrop", False)
        if side == SERVER:
            factory = WebSocketServerFactory(reactor=clock)
            factory.protocol = path.server
            options.setdefault("webStatus", False)
        else:
            factory = WebSocketClientFactory("ws://gateway.test:9000/media", reactor=clock)
            factory.protocol = path.client
            # else Autobahn waits for the server's TCP close on txaio's global reactor
            options.setdefault("serverConnectionDropTimeout", 0)
        use_reactor(factory, clock)
        factory.setProtocolOptions(**options)
        address = IPv4Address("TCP", "10.0.0.7", 50000)
        self.protocol = factory.buildProtocol(address)
        self.protocol.messages, self.protocol.pongs, self.protocol.closes = [], [], []
        self.transport = TCPLikeTransport(peerAddress=address)
        self.protocol.makeConnection(self.transport)
        self.lost = False

    @property
    def messages(self) -> list:
        return self.protocol.messages

    @property
    def state(self) -> int:
        return self.protocol.state

    def handshake(self) -> Connection:
        """Complete the opening handshake as the peer would; the transport is then empty."""
        if self.side == SERVER:
            self.protocol.dataReceived(CLIENT_HANDSHAKE)
            assert self.transport.value().startswith(b"HTTP/1.1 101 "), self.transport.value()
        else:
            request = self.transport.value()
            key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            self.transport.clear()
            self.protocol.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                       b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.transport.clear()
        assert self.protocol.state == OPEN and getattr(self.protocol, "opened", False), self.protocol.state
        return self

    def peer(self, opcode: int, payload: bytes = b"", *, masked: bool | None = None, key: bytes = KEY,
             **kwargs) -> bytes:
        """A frame as this connection's peer sends it: masked (with ``key``) from a client, unmasked from a
        server, unless ``masked`` says otherwise."""
        if masked is None:
            masked = self.side == SERVER
        return frame(opcode, payload, key=key if masked else None, **kwargs)

    def feed(self, *chunks: bytes) -> None:
        """Each chunk as one read."""
        for chunk in chunks:
            self.protocol.dataReceived(chunk)

    def sent(self) -> list[Frame]:
        """The frames written since the last call, checked for the RFC's masking direction (5.1, 5.3)."""
        frames = parse_frames(self.transport.value())
        self.transport.clear()
        for each in frames:
            if self.side == SERVER:
                assert each.key is None, f"a server sent a masked frame: {each}"
            else:
                assert each.key is not None, f"a client sent an unmasked frame: {each}"
        return frames

    def lose(self) -> None:
        """The TCP connection ends (as the reactor reports it after a loseConnection or abort)."""
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))
