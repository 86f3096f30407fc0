"""Engine.IO v4 over a direct WebSocket: the packet codec and the client end of the link.

Socket.IO rides on Engine.IO, which adds a handshake and a heartbeat to a WebSocket. The gateway
skips HTTP long-polling and opens the WebSocket transport straight away
(``/socket.io/?EIO=4&transport=websocket``). On that transport every text frame is one packet: a
digit for the type followed by its data; every binary frame is a message packet carrying raw
bytes (no type prefix in v4).

====  =======  =================================================================================
type  name     meaning here
====  =======  =================================================================================
0     open     server -> client, once: ``{"sid", "upgrades", "pingInterval", "pingTimeout",
               "maxPayload"}`` (milliseconds, bytes)
1     close    either side: the session ends
2     ping     server -> client in v4, every ``pingInterval``; the client answers ``3`` at once
3     pong     client -> server, echoing the ping's data
4     message  the payload for the layer above (Socket.IO)
5     upgrade  only used when upgrading from polling: unexpected here
6     noop     nothing
====  =======  =================================================================================

The client drops a link on which nothing has arrived for ``pingInterval + pingTimeout`` (the
server pings every ``pingInterval``, so a silent link is dead), and one whose handshake has not
completed within ``open_timeout``. All timers run on the injected clock; Autobahn's own timers
(which would use the global reactor) are switched off.

What the server sends is checked at the boundary (:mod:`gateway.boundary`):

- the open packet's ``pingInterval`` and ``pingTimeout`` must be finite numbers of milliseconds,
  above 0 and at most :data:`MAX_HEARTBEAT_MS` (10 minutes), and ``sid`` a non-empty printable
  string of at most :data:`MAX_SID_LENGTH` characters. A bad open packet is logged (naming the
  peer and the field) and the link is dropped; the ``ClientService`` reconnects with its backoff.
  (``NaN`` used to reach ``callLater`` and wedge the link; ``Infinity`` switched the dead-peer
  detection off.)
- every JSON payload goes through :func:`gateway.boundary.load_json` (no NaN/Infinity/1e999, no
  lone surrogates, bounded depth);
- a WebSocket message (and frame) larger than ``max_message_size`` bytes is refused by Autobahn as
  soon as its frame header announces it, before any of it is buffered: the connection fails
  (close code 1009), is logged and reconnects.

The codec is pure (no I/O) and raises :class:`PacketError` on malformed input; the protocol counts
such input as ignored (``gateway_ignored_messages_total{adapter="chat"}``), logs it within the
connection's :class:`~gateway.boundary.IgnoredBudget` with the peer named, and keeps the link.
"""

import enum
import math
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.logger import Logger

from gateway.boundary import PeerDataError, budget_factory, load_json

log = Logger()

#: the Engine.IO protocol revision spoken here
PROTOCOL_REVISION = 4
#: the longest pingInterval or pingTimeout (milliseconds) a server may announce: 10 minutes
MAX_HEARTBEAT_MS = 600_000
#: the longest session id a server may give
MAX_SID_LENGTH = 256
#: the default largest WebSocket message (and frame) accepted from the server, in bytes
MAX_MESSAGE_SIZE = 1 << 20

_URL_SCHEMES = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}


class PacketError(ValueError):
    """A packet that cannot be decoded or encoded (malformed input from the peer).

    ``reason`` is the :data:`gateway.boundary.IGNORED_REASONS` label it is counted under:
    ``malformed``, ``bad_text`` (not UTF-8, a lone surrogate) or ``oversized``.
    """

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.reason = reason


class NotConnected(Exception):
    """The link (or the Socket.IO namespace on it) is not up, so nothing can be sent."""


class PacketType(enum.IntEnum):
    """Engine.IO packet types (the first character of a text frame)."""

    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


@attrs.frozen
class Packet:
    """One Engine.IO packet; ``data`` is bytes only for a binary message."""

    type: PacketType
    data: str | bytes = ""


@attrs.frozen
class Handshake:
    """The server's open packet: session id, heartbeat timing (seconds) and payload limit (bytes)."""

    sid: str
    ping_interval: float
    ping_timeout: float
    max_payload: int | None = None
    upgrades: tuple[str, ...] = ()

    @property
    def liveness(self) -> float:
        """Seconds of silence after which the link is considered dead."""
        return self.ping_interval + self.ping_timeout

    @classmethod
    def from_json(cls, text: str) -> "Handshake":
        """Parse the data of an open packet; raise :class:`PacketError` if it is malformed.

        ``pingInterval`` and ``pingTimeout`` must be finite, above 0 and at most
        :data:`MAX_HEARTBEAT_MS`; ``sid`` a non-empty printable string of at most
        :data:`MAX_SID_LENGTH` characters; ``maxPayload`` (optional) a finite number >= 0.
        """
        doc = loads_json(text, "open packet")
        if not isinstance(doc, dict):
            raise PacketError(f"open packet is not a JSON object: {text[:80]!r}")
        sid = doc.get("sid")
        if not isinstance(sid, str) or not sid:
            raise PacketError(f"open packet without a session id: {text[:80]!r}")
        if len(sid) > MAX_SID_LENGTH or not sid.isprintable():
            raise PacketError(
                f"open packet field sid is not a printable string of at most {MAX_SID_LENGTH} characters: {sid[:40]!r}"
            )
        upgrades = doc.get("upgrades", [])
        if not isinstance(upgrades, list) or not all(isinstance(u, str) for u in upgrades):
            raise PacketError(f"open packet with bad upgrades: {upgrades!r:.80}")
        max_payload = doc.get("maxPayload")
        if max_payload is not None:
            max_payload = _number(doc, "maxPayload", low=0, high=None)
        return cls(
            sid=sid,
            ping_interval=_number(doc, "pingInterval", low=None, high=MAX_HEARTBEAT_MS) / 1000.0,
            ping_timeout=_number(doc, "pingTimeout", low=None, high=MAX_HEARTBEAT_MS) / 1000.0,
            max_payload=max_payload,
            upgrades=tuple(upgrades),
        )


def _number(doc: dict, key: str, *, low: float | None, high: float | None) -> int | float:
    """``doc[key]``: a finite number, above 0 when ``low`` is None (else >= low), at most ``high``."""
    value = doc.get(key)
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (isinstance(value, int) or math.isfinite(value))  # math.isfinite(10**4000) overflows
    ok = ok and (value > 0 if low is None else value >= low) and (high is None or value <= high)
    if not ok:
        bounds = "above 0" if low is None else f"at least {low}"
        bounds += f" and at most {high}" if high is not None else ""
        raise PacketError(f"open packet field {key} is not a finite number {bounds}: {value!r:.40}")
    return value


def loads_json(text: str, what: str):
    """:func:`gateway.boundary.load_json` raising :class:`PacketError` (naming ``what``) on refused JSON.

    The error's ``reason`` is the boundary's (``bad_text`` for a lone surrogate, ``malformed`` otherwise).
    """
    try:
        return load_json(text)
    except PeerDataError as error:
        if error.reason == "bad_text":
            raise PacketError(f"{what} holds bad text: {error}", "bad_text") from None
        raise PacketError(f"{what} is not valid JSON: {error}") from None


def encode_packet(packet: Packet) -> tuple[bytes, bool]:
    """Return ``(frame payload, is_binary)`` for one packet."""
    if isinstance(packet.data, bytes):
        if packet.type is not PacketType.MESSAGE:
            raise PacketError(f"only message packets carry binary data, not {packet.type.name}")
        return packet.data, True
    return f"{int(packet.type)}{packet.data}".encode("utf-8"), False


def decode_packet(payload: bytes, is_binary: bool) -> Packet:
    """Decode one WebSocket frame; raise :class:`PacketError` if it is not an Engine.IO packet."""
    if is_binary:
        return Packet(PacketType.MESSAGE, bytes(payload))
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PacketError(f"text frame is not UTF-8: {error}", "bad_text") from None
    if not text:
        raise PacketError("empty packet")
    kind = "0123456".find(text[0])
    if kind < 0:
        raise PacketError(f"unknown packet type {text[0]!r}")
    return Packet(PacketType(kind), text[1:])


def websocket_url(base_url: str, path: str = "/socket.io") -> str:
    """The WebSocket URL of the Engine.IO endpoint behind an http(s) or ws(s) base URL.

    ``https`` maps to ``wss``. The base URL's query is kept (servers may read tokens from it); its
    path must be empty: the Engine.IO path is ``path`` and the Socket.IO namespace is chosen
    separately.
    """
    parts = urlsplit(base_url)
    scheme = _URL_SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ValueError(f"not an http(s) or ws(s) URL with a host: {base_url!r}")
    if parts.path not in ("", "/"):
        raise ValueError(
            f"the base URL {base_url!r} has a path; give the Engine.IO path separately"
            " (default /socket.io) and the namespace as its own option"
        )
    query = parse_qsl(parts.query) + [("EIO", str(PROTOCOL_REVISION)), ("transport", "websocket")]
    resource = "/" + path.strip("/") + "/" if path.strip("/") else "/"
    return urlunsplit((scheme, parts.netloc, resource, urlencode(query), ""))


class EngineIOClientProtocol(WebSocketClientProtocol):
    """The client end of one Engine.IO WebSocket link.

    Subclasses receive the session through three hooks: :meth:`engineOpened` (the handshake),
    :meth:`engineMessageReceived` (each message packet's data, ``str`` or ``bytes``) and
    :meth:`engineClosed` (the link is gone). They send with :meth:`sendEngineMessage`.
    """

    handshake: Handshake | None = None
    _deadline = None
    #: the connection's :class:`~gateway.boundary.IgnoredBudget` (from ``factory.budget``)
    ignored = None

    # -- hooks ---------------------------------------------------------------------------------

    def engineOpened(self, handshake: Handshake) -> None:
        """The server's open packet arrived."""

    def engineMessageReceived(self, data: str | bytes) -> None:
        """A message packet arrived after the handshake."""

    def engineClosed(self, reason) -> None:
        """The link is gone (``reason`` is the connection-lost Failure)."""

    # -- sending -------------------------------------------------------------------------------

    @property
    def linkOpen(self) -> bool:
        """True between the handshake and the start of closing."""
        return self.handshake is not None and self.state == self.STATE_OPEN

    def sendEngineMessage(self, data: str | bytes) -> None:
        """Send one message packet; raise :class:`NotConnected` if the link is not open."""
        self._sendPacket(Packet(PacketType.MESSAGE, data))

    def closeLink(self, why: str) -> None:
        """End the session politely: Engine.IO close, then the WebSocket closing handshake.

        If the server does not answer, the silence deadline still drops the connection.
        """
        log.info("closing the Engine.IO link to {peer}: {why}", peer=self.peer, why=why)
        if self.state == self.STATE_OPEN:
            self._sendPacket(Packet(PacketType.CLOSE))
            self.sendClose(code=1000)
        else:
            self.dropConnection(abort=True)

    def _sendPacket(self, packet: Packet) -> None:
        if self.state != self.STATE_OPEN:
            raise NotConnected(f"the WebSocket to {self.peer} is not open")
        payload, is_binary = encode_packet(packet)
        self.sendMessage(payload, isBinary=is_binary)

    # -- Twisted / Autobahn callbacks ----------------------------------------------------------

    def connectionMade(self):
        super().connectionMade()
        self.ignored = self.factory.budget(self.peer)
        self._deadline = self.factory.clock.callLater(
            self.factory.open_timeout, self._expire, "no Engine.IO handshake in time"
        )

    def onMessage(self, payload, isBinary):
        if self.handshake is not None and self._deadline.active():
            self._deadline.reset(self.handshake.liveness)
        try:
            packet = decode_packet(payload, isBinary)
        except PacketError as error:
            self.ignored.ignored(error.reason, f"malformed packet: {error}")
            return
        getattr(self, "_on_" + packet.type.name.lower())(packet.data)

    def connectionLost(self, reason):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if getattr(self, "failedByMe", False):
            # Autobahn failed the connection: a message over max_message_size, a text frame that
            # is not UTF-8, a WebSocket protocol violation.
            oversized = self.wasMaxMessagePayloadSizeExceeded or self.wasMaxFramePayloadSizeExceeded
            if oversized and self.ignored is not None:
                self.ignored.ignored(
                    "oversized", f"message over max_message_size ({self.factory.max_message_size} bytes)"
                )
            log.error(
                "the WebSocket to Engine.IO peer {peer} failed: {why}",
                peer=self.peer,
                why=self.wasNotCleanReason or "protocol error",
            )
        if self.ignored is not None:
            self.ignored.close()
        super().connectionLost(reason)
        self.engineClosed(reason)

    # -- packet handlers -----------------------------------------------------------------------

    def _on_open(self, data):
        if self.handshake is not None:
            self.ignored.ignored("out_of_state", "a second open packet")
            return
        try:
            handshake = Handshake.from_json(data)
        except PacketError as error:
            # Not a session we can keep alive: drop it; the ClientService reconnects (backoff).
            log.error(
                "Engine.IO peer {peer} sent a bad handshake, dropping the link: {error}", peer=self.peer, error=error
            )
            self.dropConnection(abort=True)
            return
        self.handshake = handshake
        self._deadline.cancel()
        self._deadline = self.factory.clock.callLater(
            handshake.liveness, self._expire, "no ping from the server in time"
        )
        log.debug("Engine.IO session {sid} open with {peer}", sid=handshake.sid, peer=self.peer)
        self.engineOpened(handshake)

    def _on_close(self, data):
        log.info("Engine.IO peer {peer} closed the session", peer=self.peer)
        self.sendClose(code=1000)

    def _on_ping(self, data):
        if self.state == self.STATE_OPEN:
            self._sendPacket(Packet(PacketType.PONG, data))

    def _on_pong(self, data):
        log.debug("Engine.IO peer {peer} sent an unsolicited pong", peer=self.peer)

    def _on_message(self, data):
        if self.handshake is None:
            self.ignored.ignored("out_of_state", "a message before the handshake")
            return
        self.engineMessageReceived(data)

    def _on_upgrade(self, data):
        self.ignored.ignored("out_of_state", "an upgrade packet on a WebSocket")

    def _on_noop(self, data):
        pass

    def _expire(self, why: str) -> None:
        log.warn("dropping the Engine.IO link to {peer}: {why}", peer=self.peer, why=why)
        self.dropConnection(abort=True)


class EngineIOClientFactory(WebSocketClientFactory):
    """A WebSocket client factory for Engine.IO links, with every timer on ``reactor``.

    ``reactor`` provides ``IReactorTime`` (a ``task.Clock`` in tests); ``open_timeout`` bounds the
    WebSocket plus Engine.IO handshake. ``max_message_size`` (bytes) is Autobahn's limit on one
    incoming WebSocket message and frame: a larger one fails the connection as soon as its frame
    header announces it, before it is buffered. ``budget`` makes the per-connection
    :class:`~gateway.boundary.IgnoredBudget` (by peer), by default one of adapter ``chat`` that
    counts nothing.
    """

    protocol = EngineIOClientProtocol
    noisy = False  # no "Starting factory" line on every reconnect

    def __init__(
        self,
        url: str,
        *,
        reactor,
        open_timeout: float = 20.0,
        headers=None,
        max_message_size: int = MAX_MESSAGE_SIZE,
        budget=None,
    ):
        super().__init__(url=url, reactor=reactor, headers=headers)
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be positive, got {max_message_size!r}")
        self.clock = reactor
        self.open_timeout = open_timeout
        self.max_message_size = max_message_size
        self.budget = budget if budget is not None else budget_factory(reactor, "chat")
        # Autobahn's timers run on txaio's global loop; our own deadlines replace them.
        self.setProtocolOptions(
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            serverConnectionDropTimeout=0,
            autoPingInterval=0,
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
        )
