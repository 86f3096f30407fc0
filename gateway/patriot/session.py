"""What one Patriot connection does with its frames, whichever side connected.

A :class:`Session` sits behind a thin WebSocket adapter (``bridge.py``: Patriot connected to us;
``desktop.py``: we connected to Patriot) that implements :class:`IConnection` and feeds it frames.
It parses every frame (through :func:`gateway.boundary.load_json`), logs and counts bad ones with
the peer named (a bad frame never ends the connection and never reaches other sessions), and, once the connection is logged in (init or
authentication, done by the subclass), carries out Patriot's call control on the user's
:class:`~gateway.patriot.line.Line`:

- ``dial-request`` -> :meth:`Line.dial`; a refused or failed dial, and a dial-request that is not
  valid (bad phone number, missing payload), are answered with a ``call-status-update`` of the
  current call, since Patriot has no error message;
- ``hangup-request`` -> :meth:`Line.hangup`; without a call, answered with a status update;
- ``call-status-request`` -> a ``call-status-update`` at once;
- every change of the line's call -> a ``call-status-update``.

Bad frames and ignored messages go through the connection's
:class:`~gateway.boundary.IgnoredBudget`: each is counted in
``gateway_ignored_messages_total{adapter="patriot",reason}``, the first few are logged one by one
naming the peer, and then one summary line a minute at most, so a flood of junk is not a flood of
log lines. The budget is closed (its last summary written) when the connection is lost.

Two caps bound what one peer can make a connection cost:

- **the message rate** (``max_message_rate`` messages a second, ``max_message_burst`` at once; a
  :class:`~gateway.boundary.MessageRate` per connection, WebSocket pings included): the first
  message past it closes the connection with 4008 "too many messages" and stops reading from it
  (so a flood costs nothing more; the peer's close reply is not awaited, Autobahn drops the
  connection after its close handshake timeout), counted in
  ``gateway_ignored_messages_total{reason="rate_limited"}`` (as is every frame of the data
  already read, none of them handled or answered). Patriot heartbeats every 5 s and sends a
  command now and then, so a real peer is far below it; a flood is refused after the burst.
- **unsent output** (slow-reader protection): :class:`WebSocketConnection` is registered as the
  transport's streaming producer. When the transport's write buffer passes its high-water mark
  (Twisted's ``bufferSize``, 64 KiB) it stops reading from the peer, until the buffer has drained:
  a peer that does not read what it is sent gets no more of its frames read (its own TCP window
  then stops its flood), and its connection is dropped as dead by ``heartbeat_timeout`` (bridge)
  or ``ping_timeout`` (desktop link), since nothing is received any more. Output still queued while
  reading is paused (line events go on) is counted; past ``max_output_buffer`` bytes the connection
  is dropped at once. So a connection never holds more than the high-water mark plus
  ``max_output_buffer`` plus one message of unsent output.

:class:`ReactorTimer` puts both adapters' Autobahn timers on the adapter's reactor.
"""

from __future__ import annotations

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from gateway.boundary import IgnoredBudget, MessageRate
from gateway.core.errors import CallError
from gateway.patriot.line import Line
from gateway.patriot.messages import (
    CallStatusRequest,
    DialRequest,
    HangupRequest,
    PatriotMessage,
    PatriotMessageError,
    encode,
    parse,
)
from gateway.patriot.metrics import PatriotMetrics
from gateway.wstimers import ReactorTimer  # noqa: F401  (moved to gateway.wstimers; re-exported for bridge, desktop)

log = Logger()

#: The WebSocket close codes both adapters use (an application may send 1000 or 3000-4999, so the
#: policy-violation code 1008 is sent as 4008, as 4000 + 1008).
#: the gateway is stopping
CLOSE_NORMAL = 1000
#: a failed login: too many failed init-requests, no successful init in time (bridge); the API key
#: refused, an unreadable or no authentication-response (desktop link)
CLOSE_POLICY = 4008
#: the close code Autobahn sends for a message over max_message_size
MESSAGE_TOO_BIG = 1009
#: the close reason past max_message_rate (with CLOSE_POLICY)
TOO_MANY_MESSAGES = "too many messages"


class IConnection(Interface):
    """The WebSocket connection under a session."""

    peer = Attribute("The peer's address and port, readable (for logs).")
    host = Attribute("The peer's address alone.")

    def send_text(text):
        """Send one text frame."""

    def close(code, reason):
        """Start the WebSocket closing handshake with ``code`` and ``reason``."""

    def abort():
        """Drop the connection at once (a dead peer cannot complete a closing handshake)."""

    def stop_reading():
        """Read nothing more from the peer (the connection is closing)."""


@implementer(IConnection, IPushProducer)
class WebSocketConnection:
    """:class:`IConnection` on an Autobahn protocol (either side), and the transport's streaming producer.

    With ``max_output`` (bytes), it registers itself with the transport as a streaming producer:
    paused (the transport's write buffer is past its high-water mark) it stops reading from the
    peer until resumed (the buffer drained), and counts what is still sent meanwhile; past
    ``max_output`` it calls ``overflow(unsent)`` and drops the connection.
    """

    def __init__(self, protocol, *, max_output: int | None = None, overflow=None):
        self._protocol = protocol
        address = protocol.transport.getPeer()
        self.host = getattr(address, "host", str(address))
        self.peer = f"{self.host}:{getattr(address, 'port', '')}".rstrip(":")
        self._max_output = max_output
        self._overflow = overflow
        #: the transport's write buffer is full: the peer's frames are not read until it drains
        self.paused = False
        #: bytes sent while paused (queued on top of the transport's full buffer)
        self.backlog = 0
        self.overflowed = False
        self._reading_stopped = False
        if max_output is not None:
            protocol.transport.registerProducer(self, True)

    def send_text(self, text: str) -> None:
        if self._protocol.state != WebSocketProtocol.STATE_OPEN:
            return  # closing (Autobahn raises Disconnected): a frame that came in meanwhile gets no answer
        data = text.encode("utf-8")
        if self.paused:
            if self.overflowed:
                return
            self.backlog += len(data) + (2 if len(data) < 126 else 4 if len(data) < 65536 else 10)  # + frame header
            if self.backlog > self._max_output:
                self.overflowed = True
                if self._overflow is not None:
                    try:
                        self._overflow(self.backlog)
                    except Exception:
                        log.failure("Patriot {peer}: reporting a peer that does not read failed", peer=self.peer)
                self.abort()
                return
        self._protocol.sendMessage(data, isBinary=False)

    # -- IPushProducer, for the transport

    def pauseProducing(self) -> None:
        """The transport's write buffer is past its high-water mark: read nothing more from the peer."""
        if not self.paused:
            self.paused = True
            self.backlog = 0
            self._protocol.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The transport's write buffer has drained: read the peer's frames again."""
        if self.paused:
            self.paused = False
            self.backlog = 0
            if not (self.overflowed or self._reading_stopped):
                self._protocol.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is gone."""

    def close(self, code: int, reason: str) -> None:
        self._protocol.sendClose(code, reason)

    def abort(self) -> None:
        self._protocol.dropConnection(abort=True)

    def stop_reading(self) -> None:
        self._reading_stopped = True
        self._protocol.transport.pauseProducing()


class Session:
    """Frames in, messages out, and call control once :meth:`attach` gave the session a line."""

    #: "bridge" or "desktop", for logs and metrics
    mode = ""

    def __init__(self, connection: IConnection, *, metrics: PatriotMetrics, max_phone_length: int,
                 dial_while_busy: str, budget: IgnoredBudget, rate: MessageRate | None = None):
        self.connection = connection
        #: the connection's message rate (None: not capped)
        self.rate = rate
        #: the connection is being closed for going past its message rate: nothing more is handled
        self.rate_limited = False
        self.metrics = metrics
        #: the connection's budget of log lines about ignored messages (counted whatever it logs)
        self.budget = budget
        self.max_phone_length = max_phone_length
        self.dial_while_busy = dial_while_busy
        self.line: Line | None = None
        self.open = True
        self._stop_listening = None

    @property
    def who(self) -> str:
        """Who this session is, for logs and the CDR's ``requested_by``."""
        return f"Patriot {self.mode} peer {self.connection.peer}"

    # -- from the adapter

    def frame_received(self, payload: bytes, is_binary: bool) -> None:
        """One WebSocket message arrived; never raises (whatever fails is logged, naming the peer)."""
        if not self.allow():
            return
        try:
            message = self._parse(payload, is_binary)
        except PatriotMessageError as error:
            # answering a bad message may send a reply, count a failed login and lock the address
            # out (closing other connections): a failure there must not reach Autobahn either
            try:
                self._bad_message(error)
            except Exception:
                log.failure("{who}: handling a bad message ({type}) failed", who=self.who,
                            type=error.message_type or "unknown type")
            return
        self.metrics.messages.labels(self.mode, message.TYPE).inc()
        try:
            self.message_received(message)
        except Exception:
            log.failure("{who}: handling {type} failed", who=self.who, type=message.TYPE)

    def allow(self) -> bool:
        """Whether one more frame (a message or a ping) is within the connection's message rate.

        The first one past it closes the connection (4008); it and every one after it are
        counted as ignored (``rate_limited``) and not handled; :meth:`too_many_messages` logs it.
        """
        if self.rate_limited:
            self.budget.count("rate_limited")
            return False
        if self.rate is None or self.rate.allow():
            return True
        self.rate_limited = True
        try:
            self.budget.count("rate_limited")
            self.too_many_messages()
        except Exception:
            log.failure("{who}: handling a message past max_message_rate failed", who=self.who)
        self.connection.close(CLOSE_POLICY, TOO_MANY_MESSAGES)
        self.connection.stop_reading()
        return False

    def too_many_messages(self) -> None:
        """The connection goes past its message rate and is being closed: logged (a subclass may count it)."""
        log.warn("{who}: more than {burst} messages at once or {rate} a second (max_message_burst, "
                 "max_message_rate); closing the connection (4008 too many messages)", who=self.who,
                 burst=self.rate.burst, rate=self.rate.rate)

    def slow_reader(self, unsent: int) -> None:
        """The peer does not read: ``unsent`` bytes queued past the transport's buffer; the connection is dropped."""
        log.warn("{who} does not read what it is sent: {unsent} bytes unsent past the transport's buffer "
                 "(max_output_buffer); dropping the connection", who=self.who, unsent=unsent)

    def closed(self, reason: str) -> None:
        """The connection is gone."""
        self.open = False
        self.detach()
        self.budget.close()

    def oversized(self, reason: str) -> None:
        """The WebSocket layer closed the connection for a message over ``max_message_size`` (1009)."""
        self.metrics.bad_messages.labels(self.mode).inc()
        self.budget.ignored("oversized", reason)

    def message_received(self, message: PatriotMessage) -> None:
        raise NotImplementedError

    # -- parsing

    def _parse(self, payload: bytes, is_binary: bool) -> PatriotMessage:
        if is_binary:
            raise PatriotMessageError(f"binary frame of {len(payload)} bytes (Patriot messages are JSON text)")
        return parse(payload, max_phone_length=self.max_phone_length)

    def _bad_message(self, error: PatriotMessageError) -> None:
        """A frame that is not a valid message: counted and logged (within budget), answered where Patriot can be."""
        self.metrics.bad_messages.labels(self.mode).inc()
        self.budget.ignored(error.kind, f"bad message: {error.reason}")
        if error.message_type == DialRequest.TYPE and self.line is not None:
            self.metrics.commands.labels(self.mode, "dial", "invalid_argument").inc()
            self.send(self.line.status)

    def ignore(self, message: PatriotMessage, why: str, reason: str = "out_of_state") -> None:
        """A valid message that is not acted on; ``reason`` is its label in the ignored-messages count."""
        self.budget.ignored(reason, f"{message.TYPE}: {why}")

    # -- sending

    def send(self, message: PatriotMessage) -> None:
        if self.open:
            self.connection.send_text(encode(message))

    # -- call control

    def attach(self, line: Line) -> None:
        """Logged in: follow ``line`` and send its current status."""
        self.detach()
        self.line = line
        self._stop_listening = line.listen(self.send)
        self.send(line.status)

    def detach(self) -> None:
        if self._stop_listening is not None:
            self._stop_listening()
        self._stop_listening = None
        self.line = None

    def call_control(self, message: PatriotMessage) -> bool:
        """Carry out a dial, hangup or status request; ``False`` for any other message."""
        if isinstance(message, CallStatusRequest):
            self.send(self.line.status)
        elif isinstance(message, DialRequest):
            self._dial(message)
        elif isinstance(message, HangupRequest):
            self._hangup()
        else:
            return False
        return True

    def _dial(self, request: DialRequest) -> None:
        line = self.line
        log.info("{who} dials {number} (typed {raw!r}) from extension {extension}", who=self.who,
                 number=request.phone_no, raw=request.raw_phone_no, extension=line.extension)
        dialled = line.dial(request.phone_no, request.raw_phone_no, self.who,
                            replace=self.dial_while_busy == "replace")
        dialled.addCallback(self._done, "dial")
        dialled.addErrback(self._failed, "dial", line)

    def _hangup(self) -> None:
        line = self.line
        hung_up = line.hangup()
        hung_up.addCallback(self._hung_up, line)
        hung_up.addErrback(self._failed, "hangup", line)

    def _hung_up(self, call_id, line: Line) -> None:
        if call_id is None:
            log.info("{who}: hangup-request without a call on extension {extension}",
                     who=self.who, extension=line.extension)
            self.metrics.commands.labels(self.mode, "hangup", "no_call").inc()
            self.send(line.status)
        else:
            self._done(call_id, "hangup")

    def _done(self, call, command: str) -> None:
        self.metrics.commands.labels(self.mode, command, "ok").inc()

    def _failed(self, failure, command: str, line: Line) -> None:
        if failure.check(CallError):
            error = failure.value
            log.warn("{who}: {command} refused: {error}", who=self.who, command=command, error=error.message)
            result = error.code
        else:
            log.failure("{who}: {command} failed", failure, who=self.who, command=command)
            result = "error"
        self.metrics.commands.labels(self.mode, command, result).inc()
        self.send(line.status)

    def to_dict(self) -> dict:
        """The session for the status page."""
        return {"peer": self.connection.peer, "extension": self.line.extension if self.line else None}
