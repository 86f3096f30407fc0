"""A Twisted Socket.IO v5 client (over Engine.IO v4 WebSockets) for the Expertflow chat server.

The codec (pure, raising :class:`PacketError`) encodes one Socket.IO packet as the data of an
Engine.IO message::

    <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]

====  =============  ===============================================================
type  name           data
====  =============  ===============================================================
0     CONNECT        client: optional auth object; server: ``{"sid": ...}``
1     DISCONNECT     none
2     EVENT          ``["event", arg, ...]``; an ack id asks for an ACK
3     ACK            ``[arg, ...]`` with the ack id of the event answered
4     CONNECT_ERROR  ``{"message": ..., "data"?: ...}`` (the namespace refused us)
5     BINARY_EVENT   an EVENT whose bytes were replaced by ``{"_placeholder": true, "num": i}``;
                     the ``<attachments>`` binary frames that follow carry them in order
6     BINARY_ACK     the same for an ACK
====  =============  ===============================================================

:class:`SocketIOClient` is a ``twisted.application`` service that keeps one link up through a
``ClientService`` (with a backoff retry policy), joins one namespace on every (re)connect, then
calls the handler's ``on_connect`` (where the Expertflow connector emits ``registerConnector``).
``emit`` returns a Deferred firing with the acknowledgement's arguments, or failing with
:class:`AckTimeout` / :class:`LinkLost`; an incoming event with an ack id is answered with the
handler's return value.

Bad input from the server is a dropped packet, never a dropped link: every decode error is a
:class:`PacketError` (an ack id longer than :data:`MAX_ACK_ID_DIGITS` digits, an attachment count
that is not 1 to ``max_attachments``, JSON the boundary refuses: NaN, lone surrogates, deep
nesting). Malformed packets, bad text, packets whose attachments are too many or together larger
than ``max_message_size`` (the rest of their binary frames are discarded), packets out of state
and unexpected events are counted in ``gateway_ignored_messages_total{adapter="chat",reason}``
(``malformed``, ``bad_text``, ``oversized``, ``out_of_state``, ``unknown``) and logged with the
peer named within the connection's :class:`~gateway.boundary.IgnoredBudget`. A handler that
refuses an event's payload raises :class:`EventRefused`: the event is answered with the negative
ack ``[false, "<problem>"]`` (when it asked for an ack) and counted and logged the same way, with
the reason the handler gives (``malformed``, ``bad_text``, ``oversized``).

:class:`gateway.chat.testing.FakeSocketIOClient` is an in-memory :class:`ISocketIOClient` for handlers'
unit tests.
"""

import enum
import json
from urllib.parse import urlsplit

import attrs
from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from gateway.boundary import IGNORED_REASONS, parse_int
from gateway.chat.engineio import (
    MAX_MESSAGE_SIZE,
    EngineIOClientFactory,
    EngineIOClientProtocol,
    NotConnected,
    PacketError,
    loads_json,
    websocket_url,
)
from gateway.tlspolicy import DEFAULT as DEFAULT_TLS

__all__ = [
    "AckTimeout",
    "CallbackHandler",
    "EventRefused",
    "ISocketIOClient",
    "ISocketIOHandler",
    "LinkLost",
    "NotConnected",
    "Packet",
    "PacketError",
    "PacketType",
    "SocketIOClient",
    "UnexpectedEvent",
    "decode_packet",
    "encode_packet",
    "reassemble",
]

log = Logger()

#: the longest ack id read (JavaScript's safe integers have 16 digits)
MAX_ACK_ID_DIGITS = 16
#: the default most binary attachments one packet may announce
MAX_ATTACHMENTS = 10


class PacketType(enum.IntEnum):
    """Socket.IO packet types (the first character of an Engine.IO message)."""

    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


_BINARY_OF = {PacketType.EVENT: PacketType.BINARY_EVENT, PacketType.ACK: PacketType.BINARY_ACK}
_BINARY_TYPES = frozenset(_BINARY_OF.values())
_EVENT_TYPES = frozenset({PacketType.EVENT, PacketType.BINARY_EVENT})
_ACK_TYPES = frozenset({PacketType.ACK, PacketType.BINARY_ACK})


@attrs.frozen
class Packet:
    """One Socket.IO packet.

    ``attachments`` is the number of binary frames still to come (decoded packets only); for
    encoding, bytes anywhere in ``data`` become attachments by themselves.
    """

    type: PacketType
    namespace: str = "/"
    data: object = None
    id: int | None = None
    attachments: int = 0


class AckTimeout(Exception):
    """No acknowledgement arrived in time; the peer may or may not have handled the event."""

    def __init__(self, event: str, seconds: float):
        super().__init__(f"no ack for {event!r} within {seconds} s")
        self.event = event
        self.seconds = seconds


class LinkLost(Exception):
    """The link went down before the acknowledgement; the peer may or may not have the event."""


class UnexpectedEvent(Exception):
    """Raised by a handler for an event it does not know (logged, no ack sent, link kept)."""


class EventRefused(Exception):
    """Raised by a handler for an event whose payload it refuses.

    The event is answered with the negative ack ``[false, problem]`` (if it asked for an ack), and
    counted and logged within the connection's IgnoredBudget as ``reason`` (one of
    :data:`gateway.boundary.IGNORED_REASONS`); the link is kept. ``problem`` is one sentence
    naming the field at fault, short enough for an ack and a log line.
    """

    def __init__(self, problem: str, reason: str = "malformed"):
        if reason not in IGNORED_REASONS:
            raise ValueError(f"unknown ignored-message reason {reason!r}")
        super().__init__(problem)
        self.problem = problem
        self.reason = reason

    @property
    def ack(self) -> tuple:
        """The arguments of the negative ack."""
        return (False, self.problem)


# -- codec -------------------------------------------------------------------------------------


def encode_packet(packet: Packet) -> list[str | bytes]:
    """Encode a packet as Engine.IO message data: the text packet, then any binary attachments."""
    data, buffers = _deconstruct(packet.data, [])
    kind = packet.type
    if buffers:
        if kind not in _BINARY_OF and kind not in _BINARY_TYPES:
            raise PacketError(f"{kind.name} packets cannot carry binary data")
        kind = _BINARY_OF.get(kind, kind)
    head = str(int(kind))
    if kind in _BINARY_TYPES:
        head += f"{len(buffers)}-"
    if packet.namespace != "/":
        head += packet.namespace + ","
    if packet.id is not None:
        head += str(packet.id)
    if data is not None:
        try:
            head += json.dumps(data, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise PacketError(f"cannot encode {kind.name} data as JSON: {error}") from None
    return [head, *buffers]


def _deconstruct(data, buffers: list[bytes]):
    if isinstance(data, (bytes, bytearray, memoryview)):
        buffers.append(bytes(data))
        return {"_placeholder": True, "num": len(buffers) - 1}, buffers
    if isinstance(data, (list, tuple)):
        return [_deconstruct(item, buffers)[0] for item in data], buffers
    if isinstance(data, dict):
        return {key: _deconstruct(value, buffers)[0] for key, value in data.items()}, buffers
    return data, buffers


def decode_packet(text: str, *, max_attachments: int = MAX_ATTACHMENTS) -> Packet:
    """Decode the text part of a packet; raise :class:`PacketError` (and nothing else) if it is malformed.

    A binary packet comes back with its placeholders and ``attachments`` set; complete it with
    :func:`reassemble` once the binary frames have arrived. An attachment count above
    ``max_attachments`` is a PacketError with reason ``oversized``.
    """
    if not text:
        raise PacketError("empty Socket.IO packet")
    kind = "0123456".find(text[0])
    if kind < 0:
        raise PacketError(f"unknown Socket.IO packet type {text[0]!r}")
    kind = PacketType(kind)
    rest = text[1:]
    attachments = 0
    if kind in _BINARY_TYPES:
        count, dash, rest = rest.partition("-")
        attachments = parse_int(count) if dash and _is_ascii_number(count) else None
        if attachments is None or attachments < 1:
            raise PacketError(f"{kind.name} packet without an attachment count: {text[:40]!r}")
        if attachments > max_attachments:
            raise PacketError(
                f"{kind.name} packet announces {attachments} attachments (at most {max_attachments})", "oversized"
            )
    namespace = "/"
    if rest.startswith("/"):
        namespace, _, rest = rest.partition(",")
        namespace = namespace.partition("?")[0]
    digits = len(rest) - len(rest.lstrip("0123456789"))
    if digits > MAX_ACK_ID_DIGITS:
        raise PacketError(f"{kind.name} packet with an ack id of {digits} digits (at most {MAX_ACK_ID_DIGITS})")
    ack_id = parse_int(rest[:digits], max_digits=MAX_ACK_ID_DIGITS) if digits else None
    body = rest[digits:]
    data = loads_json(body, f"{kind.name} data") if body else None
    packet = Packet(kind, namespace, data, ack_id, attachments)
    _validate(packet)
    return packet


def _is_ascii_number(text: str) -> bool:
    return bool(text) and text.isascii() and text.isdigit()


def _validate(packet: Packet) -> None:
    kind, data = packet.type, packet.data
    if kind in _EVENT_TYPES:
        if not (isinstance(data, list) and data and isinstance(data[0], str)):
            raise PacketError(f"{kind.name} data is not [name, args...]: {data!r:.80}")
    elif kind in _ACK_TYPES:
        if packet.id is None or not isinstance(data, list):
            raise PacketError(f"{kind.name} without an ack id or an argument list: {data!r:.80}")
    elif packet.id is not None:
        raise PacketError(f"{kind.name} packet with an ack id")
    elif kind is PacketType.CONNECT and not isinstance(data, (dict, type(None))):
        raise PacketError(f"CONNECT data is not an object: {data!r:.80}")
    elif kind is PacketType.DISCONNECT and data is not None:
        raise PacketError("DISCONNECT packet with data")
    elif kind is PacketType.CONNECT_ERROR and not isinstance(data, (dict, str)):
        raise PacketError(f"CONNECT_ERROR data is not an object: {data!r:.80}")


def reassemble(packet: Packet, buffers: list[bytes]) -> Packet:
    """Put the binary frames of a BINARY_EVENT/BINARY_ACK back in place of its placeholders."""
    if len(buffers) != packet.attachments:
        raise PacketError(f"{packet.type.name} expects {packet.attachments} attachments, got {len(buffers)}")
    return attrs.evolve(packet, data=_reconstruct(packet.data, buffers), attachments=0)


def _reconstruct(data, buffers: list[bytes]):
    if isinstance(data, list):
        return [_reconstruct(item, buffers) for item in data]
    if not isinstance(data, dict):
        return data
    if data.get("_placeholder") is True:
        num = data.get("num")
        if isinstance(num, bool) or not isinstance(num, int) or not 0 <= num < len(buffers):
            raise PacketError(f"binary placeholder with a bad index: {data!r:.80}")
        return buffers[num]
    return {key: _reconstruct(value, buffers) for key, value in data.items()}


# -- the handler and the client, as interfaces ---------------------------------------------------


class ISocketIOClient(Interface):
    """What a handler (the Expertflow connector) uses: :class:`SocketIOClient` or the fake."""

    connected = Attribute("True while the namespace session is up.")

    def emit(event, *args):
        """Send an event asking for an ack: a Deferred firing with the ack's argument list."""

    def send(event, *args):
        """Send an event without an ack; raises :class:`NotConnected` when down."""

    def when_connected():
        """A Deferred firing with the client once the namespace session is (or next gets) up."""


class ISocketIOHandler(Interface):
    """What a :class:`SocketIOClient` reports to: one object for the life of the service."""

    def on_connect(client):
        """The namespace accepted us (again): emit the registration events here.

        May return a Deferred; a failure is logged.
        """

    def on_disconnect(client, reason):
        """The namespace session that ``on_connect`` announced is over (``reason``: a Failure)."""

    def on_event(client, event, args):
        """An event from the server; ``args`` is a list (binary attachments as bytes).

        The return value (or a Deferred's result) is the acknowledgement when the server asked
        for one: ``None`` -> no arguments, a tuple -> those arguments, anything else -> one
        argument. Raise :class:`UnexpectedEvent` for an event you do not handle.
        """


def _no_op(*args):
    return None


@implementer(ISocketIOHandler)
@attrs.define
class CallbackHandler:
    """A handler made of callables: ``events`` maps an event name to ``f(*args) -> ack``.

    ``connected(client)`` and ``disconnected(client, reason)`` are called on (re)connect and
    disconnect; events not in ``events`` are reported as unexpected.
    """

    events: dict = attrs.field(factory=dict)
    connected: object = _no_op
    disconnected: object = _no_op

    def on_connect(self, client):
        return self.connected(client)

    def on_disconnect(self, client, reason):
        return self.disconnected(client, reason)

    def on_event(self, client, event, args):
        callback = self.events.get(event)
        if callback is None:
            raise UnexpectedEvent(event)
        return callback(*args)


def _ack_arguments(result) -> list:
    if result is None:
        return []
    if isinstance(result, tuple):
        return list(result)
    return [result]


# -- one link ----------------------------------------------------------------------------------


@attrs.define
class _PendingAck:
    deferred: defer.Deferred
    timer: object
    event: str


class SocketIOClientProtocol(EngineIOClientProtocol):
    """One Socket.IO session on one Engine.IO link, reporting to ``factory.client``."""

    def __init__(self):
        super().__init__()
        self.sid = None
        self._acks: dict[int, _PendingAck] = {}
        self._next_ack_id = 0
        # a binary packet waiting for its attachments: (packet, buffers, their total size)
        self._partial: tuple[Packet, list[bytes], int] | None = None
        # the binary frames of a refused binary packet are dropped until the next text packet
        self._discarding = False
        self._connect_timer = None

    @property
    def _client(self) -> "SocketIOClient":
        return self.factory.client

    @property
    def namespaceConnected(self) -> bool:
        return self.sid is not None and self.linkOpen

    # -- sending -------------------------------------------------------------------------------

    def emit(self, event: str, args, ack_timeout: float) -> defer.Deferred:
        """Send an event asking for an ack; the Deferred fires with the ack's arguments."""
        ack_id = self._next_ack_id
        self._next_ack_id += 1
        try:
            self.sendPacket(Packet(PacketType.EVENT, self._client.namespace, [event, *args], ack_id))
        except (PacketError, NotConnected) as error:
            return defer.fail(error)
        deferred = defer.Deferred(lambda d: self._forget_ack(ack_id))
        timer = self.factory.clock.callLater(ack_timeout, self._ack_expired, ack_id, ack_timeout)
        self._acks[ack_id] = _PendingAck(deferred, timer, event)
        return deferred

    def sendPacket(self, packet: Packet) -> None:
        """Encode and send one packet (raises :class:`PacketError` or :class:`NotConnected`)."""
        frames = encode_packet(packet)
        if not self.linkOpen:
            raise NotConnected(f"the Socket.IO link to {self.peer} is not open")
        for frame in frames:
            self.sendEngineMessage(frame)

    def leave(self) -> None:
        """Disconnect from the namespace and close the link (on service stop)."""
        if self.linkOpen:
            self.sendPacket(Packet(PacketType.DISCONNECT, self._client.namespace))
        self.closeLink("the client is stopping")

    # -- Engine.IO hooks -----------------------------------------------------------------------

    def engineOpened(self, handshake):
        client = self._client
        self.sendPacket(Packet(PacketType.CONNECT, client.namespace, client.auth))
        self._connect_timer = self.factory.clock.callLater(
            self.factory.open_timeout, self._connect_expired
        )

    def engineMessageReceived(self, data):
        if isinstance(data, bytes):
            self._attachment_received(data)
            return
        if self._partial is not None:
            missing = self._partial[0].attachments - len(self._partial[1])
            self.ignored.ignored(
                "malformed",
                f"a text packet while a binary packet lacked {missing} attachment(s); the binary packet is dropped",
            )
            self._partial = None
        self._discarding = False
        try:
            packet = decode_packet(data, max_attachments=self.factory.max_attachments)
        except PacketError as error:
            self.ignored.ignored(error.reason, f"malformed packet: {error}")
            self._discarding = data[:1] in ("5", "6")  # its attachments, if any, follow
            return
        if packet.attachments:
            self._partial = (packet, [], 0)
            return
        self._packet_received(packet)

    def engineClosed(self, reason):
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        acks, self._acks = self._acks, {}
        for pending in acks.values():
            pending.timer.cancel()
            pending.deferred.errback(LinkLost(f"link to {self.peer} lost before the ack for {pending.event!r}"))
        if self.sid is not None:
            self._client._session_ended(self, reason)

    # -- incoming packets ----------------------------------------------------------------------

    def _attachment_received(self, data: bytes) -> None:
        if self._partial is None:
            if not self._discarding:
                self.ignored.ignored("out_of_state", "a binary frame nobody expected")
            return
        packet, buffers, size = self._partial
        buffers.append(data)
        size += len(data)
        if size > self.factory.max_message_size:
            self.ignored.ignored(
                "oversized",
                f"{packet.type.name} attachments over max_message_size ({self.factory.max_message_size} bytes);"
                " the packet is dropped",
            )
            self._partial = None
            self._discarding = True
            return
        if len(buffers) < packet.attachments:
            self._partial = (packet, buffers, size)
            return
        self._partial = None
        try:
            packet = reassemble(packet, buffers)
        except PacketError as error:
            self.ignored.ignored(error.reason, f"malformed binary packet: {error}")
            return
        self._packet_received(packet)

    def _packet_received(self, packet: Packet) -> None:
        if packet.namespace != self._client.namespace:
            self.ignored.ignored(
                "out_of_state", f"{packet.type.name} for namespace {packet.namespace}, which we did not join"
            )
            return
        if packet.type in _EVENT_TYPES:
            self._event_received(packet)
        elif packet.type in _ACK_TYPES:
            self._ack_received(packet)
        else:
            getattr(self, "_on_" + packet.type.name.lower())(packet)

    def _on_connect(self, packet: Packet) -> None:
        sid = (packet.data or {}).get("sid")
        if self.sid is not None or not isinstance(sid, str):
            self.ignored.ignored("out_of_state", f"an unexpected CONNECT {packet.data!r:.120}")
            return
        self._connect_timer.cancel()
        self.sid = sid
        log.info("joined Socket.IO namespace {namespace} at {peer} as {sid}", namespace=packet.namespace,
                 peer=self.peer, sid=sid)
        self._client._session_started(self)

    def _on_connect_error(self, packet: Packet) -> None:
        log.error(
            "Socket.IO peer {peer} refused namespace {namespace}: {error!r}",
            peer=self.peer,
            namespace=packet.namespace,
            error=packet.data,
        )
        self.closeLink("namespace refused")

    def _on_disconnect(self, packet: Packet) -> None:
        self.closeLink("the server disconnected us from the namespace")

    def _event_received(self, packet: Packet) -> None:
        event, args = packet.data[0], packet.data[1:]
        if self.sid is None:
            self.ignored.ignored("out_of_state", f"event {event!r:.80} before CONNECT")
            return
        handler = self._client.handler
        d = defer.maybeDeferred(handler.on_event, self._client, event, args)
        d.addErrback(self._event_refused, event)
        if packet.id is not None:
            d.addCallback(self._send_ack, packet.id, event)
        d.addErrback(self._event_failed, event)

    def _send_ack(self, result, ack_id: int, event: str) -> None:
        if not self.namespaceConnected:
            log.info("link to {peer} gone; the ack for {event!r} is dropped", peer=self.peer, event=event)
            return
        self.sendPacket(Packet(PacketType.ACK, self._client.namespace, _ack_arguments(result), ack_id))

    def _event_refused(self, failure, event: str) -> tuple:
        """A payload the handler refused: counted and logged; the negative ack answers it."""
        failure.trap(EventRefused)
        refusal = failure.value
        self.ignored.ignored(refusal.reason, f"{event!r:.80} refused: {refusal.problem}")
        return refusal.ack

    def _event_failed(self, failure, event: str) -> None:
        if failure.check(UnexpectedEvent):
            self.ignored.ignored("unknown", f"unexpected event {event!r:.80}")
        else:
            log.failure("handling event {event!r} from {peer} failed", failure, event=event, peer=self.peer)

    def _ack_received(self, packet: Packet) -> None:
        pending = self._acks.pop(packet.id, None)
        if pending is None:
            self.ignored.ignored("out_of_state", f"acked unknown id {packet.id}")
            return
        pending.timer.cancel()
        pending.deferred.callback(packet.data)

    # -- timers --------------------------------------------------------------------------------

    def _forget_ack(self, ack_id: int) -> None:
        pending = self._acks.pop(ack_id, None)
        if pending is not None:
            pending.timer.cancel()

    def _ack_expired(self, ack_id: int, seconds: float) -> None:
        pending = self._acks.pop(ack_id)
        pending.deferred.errback(AckTimeout(pending.event, seconds))

    def _connect_expired(self) -> None:
        log.warn("Socket.IO peer {peer} did not accept namespace {namespace} in time", peer=self.peer,
                 namespace=self._client.namespace)
        self.dropConnection(abort=True)


class SocketIOClientFactory(EngineIOClientFactory):
    """Builds :class:`SocketIOClientProtocol` for ``client``; one factory for every reconnect."""

    protocol = SocketIOClientProtocol

    def __init__(self, client: "SocketIOClient", url: str, *, max_attachments: int = MAX_ATTACHMENTS, **kwargs):
        super().__init__(url, **kwargs)
        self.client = client
        self.max_attachments = max_attachments


# -- the service -------------------------------------------------------------------------------


def _secured(endpoint, ws_url: str, tls):
    """Wrap ``endpoint`` in TLS for a wss URL (``tls``: a client connection creator, or None)."""
    parts = urlsplit(ws_url)
    if parts.scheme == "wss":
        return wrapClientTLS(tls if tls is not None else DEFAULT_TLS.client_creator(parts.hostname), endpoint)
    if tls is not None:
        raise ValueError(f"TLS options given for a plain-text URL {ws_url!r}")
    return endpoint


@implementer(ISocketIOClient)
class SocketIOClient(service.Service):
    """Keeps one Socket.IO namespace session up through a ``ClientService``.

    :param reactor: provides ``IReactorTime`` (every timer runs on it).
    :param endpoint: a plain stream client endpoint to the server (TCP); for an https/wss URL it
        is wrapped in TLS with ``tls`` (an ``IOpenSSLClientConnectionCreator``, e.g. from
        ``TlsPolicy.client_creator``), by default ``gateway.tlspolicy.DEFAULT.client_creator(<URL host>)``.
    :param url: the server's base URL, ``http(s)://host[:port]`` (ws/wss also accepted).
    :param handler: an :class:`ISocketIOHandler`.
    :param path: the Engine.IO path (``/socket.io``).
    :param namespace: the namespace joined after every (re)connect.
    :param auth: the CONNECT payload (a dict) or None.
    :param headers: extra HTTP headers for the WebSocket upgrade request.
    :param ack_timeout: seconds :meth:`emit` waits for an ack before failing with AckTimeout.
    :param connect_timeout: seconds allowed for the WebSocket + Engine.IO handshake, and again
        for the namespace CONNECT answer; the link is dropped (and retried) after that.
    :param retry_policy: ``ClientService`` retry policy (default: ``backoffPolicy()``).
    :param max_message_size: bytes: the largest WebSocket message (Autobahn refuses a larger one
        before buffering it and the link reconnects), and the most bytes of binary attachments one
        packet may carry (a larger packet is dropped).
    :param max_attachments: the most binary attachments one packet may announce (more: dropped).
    :param budget: ``f(peer) -> IgnoredBudget`` for each connection
        (:func:`gateway.boundary.budget_factory`; by default adapter ``chat``, not counted).
    """

    def __init__(
        self,
        reactor,
        endpoint,
        url: str,
        handler,
        *,
        path: str = "/socket.io",
        namespace: str = "/",
        auth: dict | None = None,
        headers: dict | None = None,
        ack_timeout: float = 30.0,
        connect_timeout: float = 20.0,
        retry_policy=None,
        tls=None,
        max_message_size: int = MAX_MESSAGE_SIZE,
        max_attachments: int = MAX_ATTACHMENTS,
        budget=None,
    ):
        if not namespace.startswith("/"):
            raise ValueError(f"a namespace starts with '/': {namespace!r}")
        self.handler = handler
        self.namespace = namespace
        self.auth = auth
        self.ack_timeout = ack_timeout
        ws_url = websocket_url(url, path)
        self.factory = SocketIOClientFactory(
            self,
            ws_url,
            reactor=reactor,
            open_timeout=connect_timeout,
            headers=headers,
            max_message_size=max_message_size,
            max_attachments=max_attachments,
            budget=budget,
        )
        self._connector = ClientService(
            _secured(endpoint, ws_url, tls),
            self.factory,
            retryPolicy=retry_policy or backoffPolicy(),
            clock=reactor,
        )
        self._session: SocketIOClientProtocol | None = None
        self._waiters: list[defer.Deferred] = []

    @property
    def connected(self) -> bool:
        """True while the namespace session is up."""
        return self._session is not None

    def emit(self, event: str, *args) -> defer.Deferred:
        """Send an event and ask for an ack: fires with the ack's argument list.

        Fails with :class:`NotConnected` (not sent), :class:`AckTimeout` or :class:`LinkLost`
        (sent, fate unknown), or :class:`PacketError` (arguments not JSON-encodable).
        Bytes anywhere in ``args`` travel as binary attachments.
        """
        if self._session is None:
            return defer.fail(NotConnected(f"not connected to namespace {self.namespace}"))
        return self._session.emit(event, args, self.ack_timeout)

    def send(self, event: str, *args) -> None:
        """Send an event without asking for an ack; raises :class:`NotConnected` or PacketError."""
        if self._session is None:
            raise NotConnected(f"not connected to namespace {self.namespace}")
        self._session.sendPacket(Packet(PacketType.EVENT, self.namespace, [event, *args]))

    def when_connected(self) -> defer.Deferred:
        """A Deferred firing with this client once the namespace session is (or next gets) up.

        Waiters fire after the handler's ``on_connect`` was called.
        """
        if self._session is not None:
            return defer.succeed(self)
        waiter = defer.Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    def startService(self):
        super().startService()
        self._connector.startService()

    def stopService(self):
        """Leave the namespace, close the link and stop reconnecting; fires when the link is down."""
        super().stopService()
        if self._session is not None:
            self._session.leave()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(NotConnected("the Socket.IO client was stopped"))
        return self._connector.stopService()

    # -- called by the protocol ----------------------------------------------------------------

    def _session_started(self, session: SocketIOClientProtocol) -> None:
        self._session = session
        defer.maybeDeferred(self.handler.on_connect, self).addErrback(
            self._handler_failed, "on_connect", session.peer
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self)

    def _session_ended(self, session: SocketIOClientProtocol, reason) -> None:
        if self._session is session:
            self._session = None
        log.info("left Socket.IO namespace {namespace} at {peer}: {reason}", namespace=self.namespace,
                 peer=session.peer, reason=reason.getErrorMessage())
        defer.maybeDeferred(self.handler.on_disconnect, self, reason).addErrback(
            self._handler_failed, "on_disconnect", session.peer
        )

    def _handler_failed(self, failure, what: str, peer: str) -> None:
        log.failure("the Socket.IO handler's {what} for {peer} failed", failure, what=what, peer=peer)


def __getattr__(name: str):
    """``FakeSocketIOClient`` and ``Emitted`` live in :mod:`gateway.chat.testing`; still importable from here."""
    if name in ("FakeSocketIOClient", "Emitted"):
        from gateway.chat import testing

        return getattr(testing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
