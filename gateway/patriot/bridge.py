"""Patriot as client: the gateway's Dialler Bridge, the WebSocket server Patriot connects to.

Each connection is a :class:`BridgeSession`:

- a handshake on another path than ``[patriot.bridge] path`` is refused with HTTP 404, and one
  from a locked-out address with HTTP 403;
- ``init-request`` is checked (:mod:`gateway.patriot.auth`) and answered with ``init-response``
  (the spec: "The Dialler Server must respond with an InitResponse"): an init without a payload,
  with a null one, one that is not an object (a string holding a JSON object is read as that
  object), or one whose text is not valid Unicode is answered ``success: false`` naming the
  problem and counts as a failed login, as a wrong password does; so is, before a successful
  init, a frame that cannot be read at all (not UTF-8, not JSON, ``NaN``, a number too large,
  nesting too deep, a lone surrogate where its ``type`` would be: it may have been the init);
  a repeated identical init gets the same answer again without being counted twice;
- failed logins are counted per source address across its connections
  (:class:`~gateway.patriot.auth.AddressGuard`, one password check at a time per address): at
  ``max_init_failures`` the address is locked out for ``block_time`` seconds, *every*
  unauthenticated connection from it is closed (4008; one whose init was waiting is first told
  why), and its inits and handshakes are refused until the lockout ends;
- ``heartbeat`` is answered with ``heartbeat-response`` at any time, before an init and after a
  refused one too (Patriot heartbeats every 5 s from the moment it is connected);
- until an init succeeded every other message is ignored (counted, logged within the
  connection's budget); after it, an unreadable frame is ignored (counted) too;
- then the call control of :class:`~gateway.patriot.session.Session` applies, on the line of the
  user's extension;
- a connection silent for ``heartbeat_timeout`` seconds is dropped as dead;
- a connection with no successful init ``init_timeout`` seconds after it opened is closed (4008);
  heartbeats are answered meanwhile but do not extend it;
- at most ``max_unauthenticated`` connections without a successful init at once, and
  ``max_unauthenticated_per_address`` from one address (by :func:`~gateway.patriot.auth.address_key`):
  one more handshake is refused with HTTP 503 (Autobahn runs ``onConnect`` and ``onOpen`` in one
  go, so each opened connection is counted before the next handshake is looked at);
- every refusal and close above is counted in ``gateway_patriot_bridge_refused_total{reason}``
  and logged through a :class:`~gateway.boundary.RateLimitedLog` per kind;
- a message larger than ``max_message_size`` closes that connection with 1009 (Autobahn's check);
- more messages (pings included) than ``max_message_burst`` at once or ``max_message_rate`` a
  second close that connection with 4008 "too many messages", and a peer that does not read what
  it is sent has its frames no longer read, then its connection dropped past ``max_output_buffer``
  (:mod:`gateway.patriot.session`); both counted in ``gateway_patriot_bridge_refused_total{reason}``
  (``rate_limited``, ``slow_reader``) and logged rate-limited;
- Autobahn's handshake and close timers run on the bridge's reactor
  (:class:`~gateway.patriot.session.ReactorTimer`), not txaio's global one.

:class:`DiallerBridge` holds what the sessions share (users, address guard, lines) and builds the
Autobahn factory given to ``ctx.listen``.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.logger import Logger, LogLevel

from gateway.boundary import MessageRate, RateLimitedLog, budget_factory
from gateway.patriot.auth import (
    AddressGuard,
    AddressLockedOut,
    Authenticator,
    InitRefused,
    TableFull,
    address_key,
)
from gateway.patriot.config import BridgeConfig
from gateway.patriot.line import Lines
from gateway.patriot.messages import (
    Heartbeat,
    HeartbeatResponse,
    InitRequest,
    InitResponse,
    PatriotMessage,
    PatriotMessageError,
)
from gateway.patriot.metrics import PatriotMetrics
from gateway.patriot.session import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    MESSAGE_TOO_BIG,
    IConnection,
    ReactorTimer,
    Session,
    WebSocketConnection,
)

log = Logger()

#: the close code for too many failed init-requests, and for no successful init within init_timeout
CLOSE_TOO_MANY_FAILURES = CLOSE_NO_INIT = CLOSE_POLICY


class BridgeSession(Session):
    """One Patriot client connected to the bridge."""

    mode = "bridge"

    def __init__(self, connection: IConnection, bridge: DiallerBridge):
        config = bridge.config
        super().__init__(connection, metrics=bridge.metrics, max_phone_length=config.max_phone_length,
                         dial_while_busy=config.dial_while_busy,
                         budget=bridge.budgets(f"{connection.peer} (Dialler Bridge)"),
                         rate=MessageRate(bridge.clock, config.max_message_rate, config.max_message_burst))
        self.bridge = bridge
        self.user = None
        #: the payload of the init being checked or answered, its answer once known, and how
        #: many answers are owed while it is being checked
        self._init_payload: dict | None = None
        self._init_response: InitResponse | None = None
        self._answers_owed = 0
        #: the wait for this connection's turn to check a password, and whether it holds the turn
        self._waiting: defer.Deferred | None = None
        self._turn_held = False
        #: the address is locked out and this connection is being closed
        self.locked_out = False
        #: fires once the connection is gone
        self.done = defer.Deferred()
        self._idle = bridge.clock.callLater(config.heartbeat_timeout, self._silent)
        #: the connection is closed if no init succeeded by then (heartbeats do not put it off)
        self._init_deadline = bridge.clock.callLater(config.init_timeout, self._no_init)

    @property
    def who(self) -> str:
        user = f" (user {self.user.username})" if self.user is not None else ""
        return f"Patriot {self.connection.peer}{user}"

    # -- life

    def frame_received(self, payload: bytes, is_binary: bool) -> None:
        if self._idle.active():
            self._idle.reset(self.bridge.config.heartbeat_timeout)
        super().frame_received(payload, is_binary)

    def _silent(self) -> None:
        log.warn("{who}: nothing received for {timeout} s; dropping the connection as dead",
                 who=self.who, timeout=self.bridge.config.heartbeat_timeout)
        self.connection.abort()

    def _no_init(self) -> None:
        if not self.open or self.user is not None:
            return
        self.bridge.no_init(self)
        self.connection.close(CLOSE_NO_INIT, "no successful init-request in time")

    def closed(self, reason: str) -> None:
        if self._idle.active():
            self._idle.cancel()
        if self._init_deadline.active():
            self._init_deadline.cancel()
        if self._waiting is not None:  # give up the place in the address's queue (a check begun runs on)
            self._waiting.cancel()
        log.info("{who} disconnected: {reason}", who=self.who, reason=reason)
        super().closed(reason)
        self.bridge.session_closed(self)
        self.done.callback(None)

    # -- messages

    def message_received(self, message: PatriotMessage) -> None:
        if self.locked_out:
            self.ignore(message, "the address is locked out; the connection is closing", "unauthenticated")
        elif isinstance(message, Heartbeat):
            self.send(HeartbeatResponse())
        elif isinstance(message, InitRequest):
            self._init(message.payload)
        elif self.user is None:
            self.ignore(message, "no successful init-request yet", "unauthenticated")
        elif not self.call_control(message):
            self.ignore(message, "not a message Patriot sends to a Dialler Bridge")

    def _bad_message(self, error: PatriotMessageError) -> None:
        super()._bad_message(error)
        if self.locked_out:
            return
        if error.message_type == InitRequest.TYPE or (error.unreadable and self.user is None):
            self._bad_init(error.reason)

    def too_many_messages(self) -> None:
        self.bridge.closed_for_cap(self, "rate_limited")

    def slow_reader(self, unsent: int) -> None:
        self.bridge.closed_for_cap(self, "slow_reader", unsent=unsent)

    def _bad_init(self, reason: str) -> None:
        """An init-request that cannot be read: answered naming the problem, a failed login."""
        if self.user is not None:
            self.send(InitResponse(False, reason))
        elif not self._refused_while_locked_out():
            self.metrics.logins.labels(self.mode, "failure").inc()
            self.send(InitResponse(False, reason))
            self.bridge.guard.failed(self.connection.host)

    def _init(self, payload: dict) -> None:
        if payload == self._init_payload:
            self._repeat_init()
        elif self.user is not None:
            self.send(InitResponse(False, f"already initialised as {self.user.username!r}; "
                                          "reconnect to log in as another user"))
        elif self._answers_owed:
            self.send(InitResponse(False, "another init-request is being checked"))
        elif not self._refused_while_locked_out():
            self._check_init(payload)

    def _refused_while_locked_out(self) -> bool:
        """If the address is locked out (or cannot be tracked): refuse the init, close, ``True``."""
        refusal = self.bridge.guard.lockout(self.connection.host)
        if refusal is None:
            return False
        self.bridge.refused(refusal, "init-request", self.connection.peer, self.connection.host)
        self.send(InitResponse(False, str(refusal)))
        self.lock_out(str(refusal))
        return True

    def _repeat_init(self) -> None:
        """Patriot re-sends its init when no answer came in 30 s: the same answer again."""
        log.info("{who}: repeated init-request", who=self.who)
        if self._init_response is None:
            self._answers_owed += 1
        else:
            self.send(self._init_response)

    def _check_init(self, payload: dict) -> None:
        self._init_payload, self._init_response, self._answers_owed = payload, None, 1
        self._waiting = self.bridge.guard.turn(self.connection.host)
        self._waiting.addCallbacks(self._my_turn, self._no_turn, callbackArgs=(payload,))

    def _my_turn(self, _, payload: dict) -> None:
        self._waiting, self._turn_held = None, True
        checked = self.bridge.authenticator.check(payload)
        checked.addCallbacks(self._logged_in, self._refused)
        checked.addErrback(self._check_failed)

    def _no_turn(self, failure) -> None:
        self._waiting = None
        if failure.check(defer.CancelledError):
            return  # the connection is gone
        failure.trap(AddressLockedOut)
        self.lock_out(str(failure.value))

    def _end_turn(self, verdict: str) -> None:
        """The check is over: the guard counts ``verdict`` and gives the address's next check its turn."""
        if self._turn_held:
            self._turn_held = False
            self.bridge.guard.done(self.connection.host, verdict)

    def _logged_in(self, user) -> None:
        self._end_turn("success")
        if not self.open:
            return
        self.user = user
        if self._init_deadline.active():
            self._init_deadline.cancel()
        self.bridge.session_authenticated(self)
        log.info("{who} logged in on extension {extension}", who=self.who, extension=user.extension)
        self.metrics.logins.labels(self.mode, "success").inc()
        self._answer(InitResponse(True))
        self.attach(self.bridge.lines.get(user.extension))

    def _refused(self, failure) -> None:
        failure.trap(InitRefused)
        self.metrics.logins.labels(self.mode, "failure").inc()
        if self.open:
            log.warn("{who}: init-request refused: {reason}", who=self.who, reason=str(failure.value))
            self._answer(InitResponse(False, str(failure.value)))
        self._end_turn("failure")  # may lock the address out (and close this connection)

    def _check_failed(self, failure) -> None:
        self._end_turn("error")
        log.failure("{who}: checking the init-request failed", failure, who=self.who)
        self._init_payload = None
        self._answer(InitResponse(False, "the init-request could not be checked"))

    def _answer(self, response: InitResponse) -> None:
        self._init_response = response
        owed, self._answers_owed = self._answers_owed, 0
        for _ in range(owed):
            self.send(response)

    def lock_out(self, reason: str) -> None:
        """The address is locked out: an init still waiting is told ``reason``; the connection is closed (4008)."""
        if self.locked_out or not self.open or self.user is not None:
            return
        self.locked_out = True
        if self._waiting is not None:
            self._waiting.cancel()
        if self._answers_owed:
            self._answer(InitResponse(False, reason))
        self.connection.close(CLOSE_TOO_MANY_FAILURES, "too many failed init-requests")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "user": self.user.username if self.user else None}


class DiallerBridge:
    """What the bridge's sessions share, and the WebSocket factory serving them."""

    def __init__(self, config: BridgeConfig, *, reactor, lines: Lines, metrics: PatriotMetrics, run_blocking):
        self.config = config
        self.clock = reactor
        self.lines = lines
        self.metrics = metrics
        self.authenticator = Authenticator(config.users, username_field=config.username_field,
                                           password_field=config.password_field, run_blocking=run_blocking)
        self.guard = AddressGuard(reactor, max_failures=config.max_init_failures, block_time=config.block_time,
                                  max_addresses=config.max_tracked_addresses, on_lockout=self._locked_out)
        #: each connection's budget of log lines about ignored messages
        self.budgets = budget_factory(reactor, "patriot", metrics.registry)
        self.sessions: list[BridgeSession] = []
        #: connections without a successful init: in all, and per address key
        self.unauthenticated = 0
        self._unauthenticated_by_address: dict[str, int] = {}
        #: the log lines about refusals, each kind rate-limited (the first few, then a summary a minute)
        self._lockout_log = RateLimitedLog(reactor, log)
        self._table_full_log = RateLimitedLog(reactor, log)
        self._over_cap_log = RateLimitedLog(reactor, log)
        self._no_init_log = RateLimitedLog(reactor, log)
        self._cap_logs = {"rate_limited": RateLimitedLog(reactor, log), "slow_reader": RateLimitedLog(reactor, log)}
        self.factory = _BridgeFactory(self, reactor)
        metrics.bridge_connections.labels("open").set_function(lambda: len(self.sessions))
        metrics.bridge_connections.labels("initialised").set_function(
            lambda: sum(1 for session in self.sessions if session.user is not None)
        )

    def refusal(self, path: str, host: str, peer: str) -> ConnectionDeny | None:
        """Why a WebSocket handshake is refused, or ``None``."""
        if path != self.config.path:
            log.info("refusing Patriot {peer}: no Dialler Bridge at {path}", peer=peer, path=path)
            return ConnectionDeny(ConnectionDeny.NOT_FOUND, f"no Dialler Bridge at {path}")
        lockout = self.guard.lockout(host)
        if lockout is not None:
            self.refused(lockout, "handshake", peer, host)
            if isinstance(lockout, TableFull):
                return ConnectionDeny(ConnectionDeny.FORBIDDEN, "too many addresses locked out; try again later")
            return ConnectionDeny(ConnectionDeny.FORBIDDEN, "too many failed init-requests; try again later")
        address = address_key(host)
        config = self.config
        if (self.unauthenticated >= config.max_unauthenticated
                or self._unauthenticated_by_address.get(address, 0) >= config.max_unauthenticated_per_address):
            self.metrics.bridge_refused.labels("too_many_unauthenticated").inc()
            self._over_cap_log.emit(
                "Patriot Dialler Bridge: refusing the handshake of {peer} (503): {unauthenticated} connections "
                "without a successful init, {here} of them from {address} (max_unauthenticated {total}, per "
                "address {per_address}){more}",
                summary="Patriot Dialler Bridge: refused {count} more handshakes past max_unauthenticated in the "
                        "last {seconds:.0f} s (the latest from {peer})",
                peer=peer, unauthenticated=self.unauthenticated, here=self._unauthenticated_by_address.get(address, 0),
                address=address, total=config.max_unauthenticated, per_address=config.max_unauthenticated_per_address)
            return ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE,
                                  "too many connections without an init-request; try again later")
        return None

    def refused(self, lockout: AddressLockedOut, what: str, peer: str, host: str) -> None:
        """Count (and log, rate-limited) a handshake or init refused because of ``lockout``."""
        if isinstance(lockout, TableFull):
            self.metrics.bridge_refused.labels("table_full").inc()
            self._table_full_log.emit(
                "Patriot Dialler Bridge: refusing the {what} of {peer}: {refusal} (the lockout table holds "
                "{tracked} addresses, max_tracked_addresses, all locked out or being checked){more}",
                summary="Patriot Dialler Bridge: refused {count} more handshakes and inits of new addresses "
                        "in the last {seconds:.0f} s, the lockout table being full (the latest {peer})",
                what=what, peer=peer, refusal=str(lockout), tracked=len(self.guard))
            return
        self.metrics.bridge_refused.labels("locked_out").inc()
        self._lockout_log.emit(
            "Patriot Dialler Bridge: refusing the {what} of {peer}: too many failed init-requests from "
            "{address} ({refused} refused during this lockout){more}",
            summary="Patriot Dialler Bridge: refused {count} more handshakes and inits of locked-out addresses "
                    "in the last {seconds:.0f} s (the latest {peer})",
            level=LogLevel.info, what=what, peer=peer, address=address_key(host), refused=self.guard.refused(host))

    def no_init(self, session: BridgeSession) -> None:
        """Count (and log, rate-limited) ``session`` closed for no successful init within init_timeout."""
        self.metrics.bridge_refused.labels("init_timeout").inc()
        self._no_init_log.emit(
            "Patriot Dialler Bridge: closing {peer} (4008): no successful init-request in {timeout} s{more}",
            summary="Patriot Dialler Bridge: closed {count} more connections without a successful init-request "
                    "in the last {seconds:.0f} s (the latest {peer})",
            peer=session.connection.peer, timeout=self.config.init_timeout)

    def closed_for_cap(self, session: BridgeSession, reason: str, unsent: int = 0) -> None:
        """Count (and log, rate-limited) ``session`` closed for ``reason``: ``rate_limited`` or ``slow_reader``."""
        self.metrics.bridge_refused.labels(reason).inc()
        config = self.config
        if reason == "rate_limited":
            line = ("Patriot Dialler Bridge: closing {who} (4008 too many messages): more than {burst} messages at "
                    "once or {rate} a second (max_message_burst, max_message_rate){more}")
            summary = ("Patriot Dialler Bridge: closed {count} more connections past max_message_rate in the last "
                       "{seconds:.0f} s (the latest {who})")
        else:
            line = ("Patriot Dialler Bridge: dropping {who}: it does not read what it is sent ({unsent} bytes "
                    "unsent past the transport's buffer, max_output_buffer {max_output}){more}")
            summary = ("Patriot Dialler Bridge: dropped {count} more connections that did not read in the last "
                       "{seconds:.0f} s (the latest {who})")
        self._cap_logs[reason].emit(line, summary=summary, who=session.who, burst=config.max_message_burst,
                                    rate=config.max_message_rate, unsent=unsent, max_output=config.max_output_buffer)

    def _locked_out(self, address: str, seconds: float) -> None:
        """The guard locked ``address`` out: close each of its unauthenticated connections."""
        victims = [session for session in self.sessions
                   if session.user is None and address_key(session.connection.host) == address]
        log.warn("Patriot Dialler Bridge: {count} failed init-requests from {address}; refusing it for {seconds} s "
                 "and closing its {victims} unauthenticated connection(s)", count=self.config.max_init_failures,
                 address=address, seconds=seconds, victims=len(victims))
        self.metrics.lockouts.inc()
        reason = str(AddressLockedOut(seconds))
        for session in victims:
            try:  # one connection failing to close must not spare the others
                session.lock_out(reason)
            except Exception:
                log.failure("{who}: closing the connection for the lockout failed", who=session.who)

    def session_opened(self, connection: IConnection) -> BridgeSession:
        log.info("Patriot {peer} connected to the Dialler Bridge", peer=connection.peer)
        session = BridgeSession(connection, self)
        self.sessions.append(session)
        self._count_unauthenticated(session, 1)
        return session

    def session_authenticated(self, session: BridgeSession) -> None:
        self._count_unauthenticated(session, -1)

    def session_closed(self, session: BridgeSession) -> None:
        if session in self.sessions:
            self.sessions.remove(session)
            if session.user is None:
                self._count_unauthenticated(session, -1)

    def _count_unauthenticated(self, session: BridgeSession, change: int) -> None:
        address = address_key(session.connection.host)
        count = self._unauthenticated_by_address.get(address, 0) + change
        if count > 0:
            self._unauthenticated_by_address[address] = count
        else:
            self._unauthenticated_by_address.pop(address, None)
        self.unauthenticated += change

    def close_all(self) -> defer.Deferred:
        """The gateway is stopping: close every connection (1000); fires once all are gone."""
        sessions = list(self.sessions)
        for session in sessions:
            session.connection.close(CLOSE_NORMAL, "the gateway is stopping")
        return defer.DeferredList([session.done for session in sessions])

    def status(self) -> dict:
        return {
            "listen": str(self.config.listen),
            "path": self.config.path,
            "sessions": [session.to_dict() for session in self.sessions],
            "unauthenticated": self.unauthenticated,
            **self.guard.to_dict(),
        }


class _BridgeProtocol(WebSocketServerProtocol):
    session: BridgeSession | None = None

    def onConnect(self, request):
        connection = WebSocketConnection(self, max_output=self.factory.bridge.config.max_output_buffer,
                                         overflow=self._overflow)
        refusal = self.factory.bridge.refusal(request.path, connection.host, connection.peer)
        if refusal is not None:
            raise refusal
        self._connection = connection

    def onOpen(self):
        self.session = self.factory.bridge.session_opened(self._connection)

    def onMessage(self, payload, isBinary):
        self.session.frame_received(payload, isBinary)

    def onPing(self, payload):
        if self.session is None or self.session.allow():  # pings count toward max_message_rate too
            super().onPing(payload)

    def _overflow(self, unsent: int) -> None:
        if self.session is not None:
            self.session.slow_reader(unsent)

    def onClose(self, wasClean, code, reason):
        if self.session is not None and self.localCloseCode == MESSAGE_TOO_BIG:
            self.session.oversized(f"a message over max_message_size: {self.localCloseReason}")

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.session is not None:
            self.session.closed(reason.getErrorMessage())


class _BridgeFactory(WebSocketServerFactory):
    protocol = _BridgeProtocol

    def __init__(self, bridge: DiallerBridge, reactor):
        super().__init__(reactor=reactor)
        self._batched_timer = ReactorTimer(reactor)
        size = bridge.config.max_message_size
        # failByDrop=False: a peer breaking the rules (a message too large) is told why (1009)
        self.setProtocolOptions(maxMessagePayloadSize=size, maxFramePayloadSize=size, failByDrop=False,
                                webStatus=False)
        self.bridge = bridge
