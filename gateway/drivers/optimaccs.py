"""OptimaCCS inbound calls (spec 002): the WebSocket server the provider connects to, one call per connection.

:func:`make_service` is the ``[optimaccs]`` adapter named in ``gateway.tap``.
It asks for the listener ``optimaccs`` on ``[optimaccs] listen`` (``ssl:``
gives wss) and serves :class:`InboundCall` connections:

- ``incoming_call`` hands a new inbound leg to the call registry, which routes
  it by ``didNumber``; ``callerId``, ``didNumber`` and ``sessionId`` stay on the
  leg and in the CDR (attribute ``session_id``). The connection is the leg's
  :class:`~gateway.core.interfaces.IDriverLeg`:
  answer -> ``{"event":"answer"}``; hangup -> ``{"event":"hangup"}``, then up to
  ``cdr_wait`` seconds for the provider's ``cdr`` before the gateway closes;
  one DTMF digit -> ``{"event":"dtmf","digit","duration"}`` (``0-9*#``,
  1..1000 ms), its Deferred firing when the tone has played; flush (barge-in)
  -> ``{"event":"interrupt"}`` and the leg's own playout queue emptied.
- The provider's ``dtmf`` becomes a DTMF event on the leg, ``hangup`` ends the
  leg (cause ``remote_hangup``), ``cdr`` is attached to the call's CDR (source
  ``optimaccs``); a connection lost while the call is up ends the leg with
  cause ``transport_lost``. The gateway's own CDR never waits for the provider's.
- Binary messages are audio in ``[optimaccs] audio`` (8 kHz), of any length:
  the leg's :class:`~gateway.media.MediaPort` re-frames them to 20 ms, and
  paces audio toward the provider. The port's playout is registered as the TCP
  transport's producer (a provider that stops reading pauses whatever feeds the
  leg) and the transport is the port's upstream (a full inbound path stops
  reading from the socket).
- Access: an optional shared secret (query parameter ``token`` or
  ``Authorization: Bearer``) and an address allow-list, checked during the
  opening handshake (HTTP 403); with neither, a warning is logged at start.
  The shipped listener is on 127.0.0.1 only. At most ``max_calls``
  connections are open at once: one more is closed with 1013 (try again
  later), counted and logged through :class:`Refusals` (the first five of a
  burst one by one, then a summary a minute, the burst's last summary a quiet
  minute after it ended; a later burst is logged one by one again).
- Every text message is decoded by :func:`gateway.boundary.load_json`
  (through :func:`~gateway.drivers.optimaccs_wire.parse_event`): a lone
  surrogate (the close reason names the field), ``NaN``/``Infinity``/``1e999``
  or nesting deeper than 32 levels close the connection with 1007. Ignored
  messages (unknown events, out of state, bad digits) go through a
  per-connection :class:`~gateway.boundary.IgnoredBudget`: the first few are
  logged, then one summary per minute; all are counted in
  ``gateway_ignored_messages_total{adapter="optimaccs",reason}``.

Bad input closes the connection with a code and reason, or is ignored with a
log line; the table is :data:`CLOSE_CODES` and the README's "OptimaCCS: bad input". No input
raises out of the protocol, and one connection's trouble affects no other call.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import typing

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from prometheus_client import Counter, Gauge
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.boundary import RateLimitedLog, budget_factory, ignored_counter
from gateway.metrics import define_metric
from gateway.core.errors import DriverError
from gateway.core.interfaces import IDriverLeg
from gateway.drivers import optimaccs_wire as wire
from gateway.drivers.config import OptimaccsConfig
from gateway.drivers.optimaccs_link import Link, Machine, ProviderCall, Transitions, illegal_counter
from gateway.media import MediaPort, MediaPorts
from gateway.wsaudio import AudioFastPath
from gateway.wstimers import use_reactor

__all__ = ["CLOSE_CODES", "InboundCall", "InboundServer", "InboundState", "OptimaccsService", "Refusals", "TRANSITIONS",
           "make_service"]

log = Logger()

NAME = "optimaccs"

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID = wire.CLOSE_INVALID
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013

#: what the gateway does with each kind of bad input (the table in the README, "OptimaCCS: bad input")
CLOSE_CODES: dict[str, int | None] = {
    "text that is not UTF-8": CLOSE_INVALID,  # Autobahn's check
    "message or frame larger than max_message_size": CLOSE_TOO_BIG,  # Autobahn's check
    "text that is not JSON": CLOSE_INVALID,
    "JSON with a lone UTF-16 surrogate (the reason names the field), NaN/Infinity/1e999, "
    "or nested deeper than 32 levels": CLOSE_INVALID,
    "a connection past max_calls": CLOSE_TRY_AGAIN,
    "JSON that is not an object, or has no string event": CLOSE_INVALID,
    "incoming_call with a missing or ill-typed field": CLOSE_POLICY,
    "a second incoming_call": CLOSE_POLICY,
    "no incoming_call within setup_timeout": CLOSE_POLICY,
    "binary audio before incoming_call": CLOSE_UNSUPPORTED,
    "an unknown event": None,  # ignored with a log line
    "dtmf with a digit outside 0-9 * # A-D": None,
    "dtmf, hangup or cdr before incoming_call": None,
    "a second cdr, or events after the call ended": None,
}

#: how an ignored message is counted in gateway_ignored_messages_total{adapter="optimaccs",reason}
IGNORED = {"unknown event": "unknown", "bad digit": "malformed", "no live call": "out_of_state",
           "second cdr": "out_of_state"}



class InboundState(str, enum.Enum):
    """The state of one inbound connection (its "phase" in ``GET /api/status``)."""

    SETUP = "setup"  # open, no incoming_call yet
    LIVE = "live"  # the call is up at the provider
    ENDING = "ending"  # the call is over; waiting for the provider's cdr, then closing
    CLOSED = "closed"  # the connection is gone

    def __str__(self) -> str:
        return self.value


SETUP, LIVE, ENDING, CLOSED = InboundState

#: (state, input) -> next state of an inbound connection; every input, from the provider or the gateway,
#: is listed where it is legal (loops: allowed, the state stays). Anything else is refused: a provider's
#: message out of state is ignored or closes the connection (:data:`CLOSE_CODES`); an input of the
#: gateway's own is an illegal transition (:class:`~gateway.drivers.optimaccs_link.Machine`).
TRANSITIONS = Transitions("inbound", {
    (SETUP, "incoming_call"): LIVE,  # the provider's incoming_call
    (LIVE, "answer"): LIVE,  # the gateway answers: {"event":"answer"}
    (LIVE, "send_dtmf"): LIVE,  # the gateway plays a digit
    (LIVE, "flush"): LIVE,  # the gateway interrupts: {"event":"interrupt"}
    (LIVE, "audio"): LIVE,  # binary audio from the provider
    (LIVE, "dtmf"): LIVE,  # the provider reports a digit
    (LIVE, "cdr"): LIVE,  # the provider's cdr (the first one)
    (ENDING, "cdr"): ENDING,
    (LIVE, "hangup"): ENDING,  # the gateway hangs up: {"event":"hangup"}, then the cdr is awaited
    (LIVE, "remote_hangup"): ENDING,  # the provider's hangup
    **{(state, "closed"): CLOSED for state in (SETUP, LIVE, ENDING)},  # the WebSocket is gone
})


class Refusals:
    """The log of connections refused past ``max_calls``, for the whole listener.

    Each refusal is counted in ``gateway_ignored_messages_total{adapter="optimaccs",reason="over_capacity"}``.
    The lines are a :class:`~gateway.boundary.RateLimitedLog`: the first ``first`` refusals of a burst are
    logged one by one naming the peer, then at most one summary line per ``interval`` seconds. A burst
    ends after ``interval`` seconds without a refusal: a timer then writes the summary of what is still
    unsaid (the RateLimitedLog itself keeps no timer, and would write it only at the next refusal), and
    the next refusal is logged one by one again. :meth:`close` (at stop) writes what is unsaid.
    """

    def __init__(self, clock, registry=None, *, first: int = 5, interval: float = 60.0) -> None:
        self._clock = clock
        self._interval = interval
        self._counter = ignored_counter(registry) if registry is not None else None
        self._lines = RateLimitedLog(clock, log, first=first, interval=interval)
        self._last = 0.0
        self._timer = None

    def refused(self, peer: str, reason: str) -> None:
        if self._counter is not None:
            self._counter.labels(NAME, "over_capacity").inc()
        self._last = self._clock.seconds()
        logged = self._lines.emit(
            "OptimaCCS {peer}: connection closed with {code}: {reason}{more}",
            summary="OptimaCCS listener: {count} more connections closed with {code} past max_calls in the last "
                    "{seconds:.0f} s (the latest from {peer})",
            peer=peer, code=CLOSE_TRY_AGAIN, reason=reason)
        if not logged and self._timer is None:
            self._timer = self._clock.callLater(self._interval, self._quiet)

    def _quiet(self) -> None:
        """``interval`` after the last suppressed refusal: the burst is over unless a refusal came since."""
        self._timer = None
        idle = self._clock.seconds() - self._last
        if idle >= self._interval:
            self._lines.close()
        else:
            self._timer = self._clock.callLater(self._interval - idle, self._quiet)

    def close(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._lines.close()


class _Metrics:
    """The adapter's Prometheus metrics on the gateway's registry."""

    def __init__(self, registry) -> None:
        self.connections = define_metric(registry, Gauge, "optimaccs_connections",
                                         "Open OptimaCCS inbound-call connections.")
        self.closed = define_metric(registry, Counter, "optimaccs_closed",
                                    "OptimaCCS inbound connections refused (403) or closed by the gateway, "
                                    "by code.", ["code"])
        self.illegal = illegal_counter(registry)
        self.registry = registry


@implementer(IDriverLeg)
class InboundCall(ProviderCall):
    """One provider connection and the call it carries: the IDriverLeg of the call's inbound leg.

    Its state is :class:`InboundState`, moved only through :data:`TRANSITIONS`; DTMF, the provider's
    cdr and the timers (``setup``: setup_timeout; ``close``: the cdr wait or the grace after the cdr)
    come from :class:`~gateway.drivers.optimaccs_link.ProviderCall`.
    """

    driver = NAME
    _ENDING = ENDING
    _COUNT_DTMF_OUT_OF_STATE = True

    def __init__(self, server: "InboundServer", protocol: "_ProviderProtocol") -> None:
        self.server = server
        self.peer = protocol.peer_address
        self.port: MediaPort | None = None
        self.events = None
        self.setup: wire.CallSetup | None = None
        self.answered = False
        self.frames_in = 0
        self._link = Link(protocol)
        self._ignored = server.budget(self.peer)
        self._begin(server.clock, Machine(TRANSITIONS, SETUP, lambda: self.who, server.metrics.illegal))
        self._start_timer("setup", server.config.setup_timeout, self._setup_timed_out)
        #: fires once the connection is gone
        self.done = defer.Deferred()

    @property
    def phase(self) -> InboundState:
        """The connection's state (:class:`InboundState`)."""
        return self._machine.state

    @property
    def _cdr_wait(self) -> float:
        return self.server.config.cdr_wait

    @property
    def who(self) -> str:
        session = f" session {self.setup.session_id}" if self.setup is not None else ""
        return f"OptimaCCS {self.peer}{session}"

    # -- IDriverLeg ---------------------------------------------------------------

    def answer(self) -> defer.Deferred:
        if not self._machine.allows("answer"):
            return defer.fail(DriverError(NAME, f"cannot answer: the call is {self.phase}"))
        if not self.answered:
            self.answered = True
            self._link.send({"event": "answer"})
        return defer.succeed(None)

    def hangup(self, cause) -> defer.Deferred:
        """Tell the provider; its cdr is awaited for ``cdr_wait`` seconds, the command does not wait."""
        if self._machine.allows("hangup"):
            log.info("{who}: hanging up ({cause})", who=self.who, cause=cause)
            self._link.send({"event": "hangup"})
            self._end_call("hangup")
        return defer.succeed(None)

    def send_dtmf(self, digit: str, duration_ms: int) -> defer.Deferred:
        return self._play_dtmf(digit, duration_ms)

    def _dtmf_message(self, digit: str, duration: int) -> dict:
        return {"event": "dtmf", "digit": digit, "duration": duration}

    def flush(self) -> None:
        if self._machine.allows("flush"):
            self._link.send({"event": "interrupt"})
        if self.port is not None:
            self.port.flush()

    # -- from the provider ----------------------------------------------------------

    def received(self, payload: bytes, binary: bool) -> None:
        """One WebSocket message from the provider (never raises)."""
        try:
            if binary:
                self._audio(payload)
            else:
                self._text(payload)
        except Exception:
            log.failure("{who}: handling a message failed", who=self.who)
            self._close(CLOSE_INTERNAL, "internal error")

    def _audio(self, payload: bytes) -> None:
        if self._machine.allows("audio"):
            self.frames_in += 1
            self.port.receive(payload)
        elif self.phase == SETUP:
            self._reject(CLOSE_UNSUPPORTED, "binary audio before incoming_call")

    def _text(self, payload: bytes) -> None:
        if self.phase == CLOSED:
            return
        try:
            event, message = wire.parse_event(payload)
        except wire.BadMessage as error:
            self._reject(CLOSE_INVALID, f"bad message: {error}")
            return
        handler = self._handlers.get(event)
        if handler is None:
            self._ignore("unknown event", f"unknown event {event[:60]!r}")
        else:
            handler(self, message)

    def _on_incoming_call(self, message: dict) -> None:
        if not self._machine.allows("incoming_call"):
            self._reject(CLOSE_POLICY, "a second incoming_call: one call per connection")
            return
        try:
            self.setup = wire.incoming_call(message)
        except wire.BadMessage as error:
            self._reject(CLOSE_POLICY, str(error))
            return
        self._cancel_timer("setup")
        self._machine.fire("incoming_call")
        self._open_port()
        setup = self.setup
        log.info("{who}: incoming call from {caller} to {did}", who=self.who, caller=setup.caller_id or "anonymous",
                 did=setup.did)
        try:
            self.events = self.server.registry.incoming(
                self, caller_id=setup.caller_id or None, did=setup.did, attributes={"session_id": setup.session_id})
        except Exception:
            log.failure("{who}: the call registry refused the call", who=self.who)
            self._close(CLOSE_INTERNAL, "internal error")

    def _on_dtmf(self, message: dict) -> None:
        digit = message.get("digit")
        self._received_dtmf(digit, f"dtmf digit {digit!r} is not one of 0-9 * # A-D")

    def _on_hangup(self, message: dict) -> None:
        if not self._machine.allows("remote_hangup"):
            if self.phase == SETUP:
                self._ignore("no live call", "hangup before incoming_call")
            return
        log.info("{who}: the provider hung up", who=self.who)
        self._end_call("remote_hangup")
        if self.events is not None:
            self.events.hung_up("remote_hangup")

    def _on_cdr(self, message: dict) -> None:
        if not self._machine.allows("cdr"):
            self._ignore("no live call", "cdr before incoming_call")
            return
        if self.cdr is not None:
            self._ignore("second cdr", "a second cdr")
            return
        self._take_cdr({k: v for k, v in message.items() if k != "event"})

    _handlers: typing.ClassVar[dict] = {
        "incoming_call": _on_incoming_call,
        "dtmf": _on_dtmf,
        "hangup": _on_hangup,
        "cdr": _on_cdr,
    }

    def closed(self, code, reason) -> None:
        """The connection is gone (whoever closed it)."""
        if self.phase == CLOSED:
            return
        was_live = self.phase == LIVE
        self._machine.fire("closed")
        self._wind_up()
        self._close_port()
        self._ignored.close()
        log.info("{who}: connection closed (code {code}, {reason})", who=self.who, code=code, reason=reason or "")
        if was_live and self.events is not None:
            self.events.hung_up("transport_lost")
        self.server.forget(self)
        self.done.callback(None)
        self._let_go()

    def _let_go(self) -> None:
        """Break the reference cycles of the ended connection (protocol -> call -> link -> protocol, call ->
        machine -> call, call -> the registry's leg -> call), so its objects are freed as soon as nothing
        uses them: an Autobahn protocol is itself in a cycle (its ``is_closed`` Deferred holds it), and
        whatever hangs on a cycle waits for Python's full collections, which come every few hundred calls
        and pause the reactor for tens of milliseconds (issue 18)."""
        self._machine.settle(self.who)
        self.events = None
        protocol = self._link.protocol
        if getattr(protocol, "call", None) is self:
            protocol.call = None

    # -- internals -----------------------------------------------------------------

    def _open_port(self) -> None:
        self.port = self.server.ports.port(self._clock, self.server.config.audio,
                                           name=f"optimaccs:{self.setup.session_id}")
        self._link.attach(self.port)

    def _close_port(self) -> None:
        if self.port is not None:
            self._link.detach(self.port)

    def _end_call(self, how: str) -> None:
        """The call is over at the provider (``how``: ``hangup`` or ``remote_hangup``): stop the audio, then
        wait for the cdr and the provider's close."""
        if not self._machine.fire(how):
            return
        self._close_port()
        self._await_cdr()

    def _close_after_call(self) -> None:
        self._close(CLOSE_NORMAL, "call ended")

    def _setup_timed_out(self) -> None:
        self._reject(CLOSE_POLICY, f"no incoming_call within {self.server.config.setup_timeout:g} s")

    def _reject(self, code: int, reason: str) -> None:
        log.warn("{who}: {reason}; closing with {code}", who=self.who, reason=reason, code=code)
        self._close(code, reason)

    def _close(self, code: int, reason: str) -> None:
        if self._link.close(code, reason):
            self.server.metrics.closed.labels(str(code)).inc()

    def _ignore(self, kind: str, what: str) -> None:
        """Count an ignored message, and log it while the connection's budget allows."""
        self._ignored.ignored(IGNORED[kind], what)

    def to_dict(self) -> dict:
        setup = self.setup
        return {
            "peer": self.peer,
            "phase": self.phase.value,
            "session_id": setup.session_id if setup else None,
            "caller_id": setup.caller_id if setup else None,
            "did": setup.did if setup else None,
            "call_id": getattr(self.events, "call_id", None),
            "answered": self.answered,
            "frames_in": self.frames_in,
            "frames_out": self._link.frames_out,
            "cdr_received": self.cdr is not None,
        }


class _ProviderProtocol(AudioFastPath, WebSocketServerProtocol):
    """The wire side of one connection: access check, then everything goes to its InboundCall.

    Binary audio frames take the lean path of :mod:`gateway.wsaudio` both ways.
    """

    call: InboundCall | None = None

    @property
    def peer_address(self) -> str:
        address = self.transport.getPeer()
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else str(address)

    def onConnect(self, request):
        self.factory.server.admit(self, request)

    def onOpen(self):
        self.call = self.factory.server.opened(self)

    def onMessage(self, payload, isBinary):
        if self.call is not None:
            self.call.received(payload, isBinary)

    def onClose(self, wasClean, code, reason):
        if self.call is not None:
            self.call.closed(code, reason)


class InboundServer:
    """What the connections share: configuration, the registry, access control, metrics, the live calls."""

    def __init__(self, clock, config, registry, metrics: _Metrics, ports: MediaPorts = MediaPorts()) -> None:
        """``config``: :class:`gateway.drivers.config.OptimaccsConfig`; ``registry``: the call registry;
        ``ports`` makes each call's MediaPort (the daemon's ``ctx.media_ports``)."""
        self.clock = clock
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.ports = ports
        self.calls: list[InboundCall] = []
        self._networks = [ipaddress.ip_network(n, strict=False) for n in config.allow_from]
        #: an IgnoredBudget per connection: gateway_ignored_messages_total{adapter="optimaccs",reason}
        self.budget = budget_factory(clock, NAME, metrics.registry, logger=log)
        #: the log lines about connections refused past max_calls
        self.refusals = Refusals(clock, metrics.registry)
        #: a reason to refuse every new connection with 1013 (a draining cluster node), or None
        self.draining: typing.Callable[[], str | None] = lambda: None

    @property
    def open_to_all(self) -> bool:
        return not self.config.secret and not self._networks

    def factory(self, reactor) -> WebSocketServerFactory:
        """The Autobahn factory for ``ctx.listen``, with the options of docs/optimaccs.md; its handshake,
        ping and close timers run on ``reactor`` (:func:`gateway.wstimers.use_reactor`)."""
        config = self.config
        factory = use_reactor(WebSocketServerFactory(reactor=reactor), reactor)
        factory.protocol = _ProviderProtocol
        factory.server = self
        factory.setProtocolOptions(
            maxMessagePayloadSize=config.max_message_size,
            maxFramePayloadSize=config.max_message_size,
            openHandshakeTimeout=config.handshake_timeout,
            autoPingInterval=config.ping_interval,
            autoPingTimeout=config.ping_timeout,
            utf8validateIncoming=True,
            failByDrop=False,
            webStatus=False,
            tcpNoDelay=True,
        )
        return factory

    def admit(self, protocol: _ProviderProtocol, request) -> None:
        """Raise ConnectionDeny (HTTP 403) unless the peer may connect."""
        problem = self._refusal(protocol.transport.getPeer(), request)
        if problem is not None:
            log.warn("OptimaCCS {peer}: connection refused: {problem}", peer=protocol.peer_address, problem=problem)
            self.metrics.closed.labels("403").inc()
            raise ConnectionDeny(403, "Forbidden")

    def _refusal(self, address, request) -> str | None:
        if self._networks:
            try:
                host = ipaddress.ip_address(getattr(address, "host", ""))
            except ValueError:
                return f"address {address} is not an IP address"
            if not any(host in network for network in self._networks):
                return f"address {host} is not in allow_from"
        secret = self.config.secret
        if secret:
            offered = _offered_secret(request)
            if offered is None:
                return "no secret offered"
            if not hmac.compare_digest(offered.encode("utf-8"), secret.reveal().encode("utf-8")):
                return "wrong secret"
        return None

    def opened(self, protocol: _ProviderProtocol) -> InboundCall | None:
        """The connection's call; None, and the connection closed with 1013, past ``max_calls``."""
        draining = self.draining()
        if draining or len(self.calls) >= self.config.max_calls:
            reason = (f"{draining}; try another node" if draining
                      else f"too many calls ({self.config.max_calls} open); try again later")
            self.refusals.refused(protocol.peer_address, reason)
            if Link(protocol).close(CLOSE_TRY_AGAIN, reason):
                self.metrics.closed.labels(str(CLOSE_TRY_AGAIN)).inc()
            return None
        call = InboundCall(self, protocol)
        self.calls.append(call)
        self.metrics.connections.inc()
        return call

    def forget(self, call: InboundCall) -> None:
        if call in self.calls:
            self.calls.remove(call)
            self.metrics.connections.dec()

    def close_all(self) -> defer.Deferred:
        """Close every connection that is not waiting for its cdr (1001); fires once all are gone."""
        self.refusals.close()
        calls = list(self.calls)
        for call in calls:
            if call.phase != ENDING:  # one waiting for its cdr keeps waiting (at most cdr_wait)
                call._close(CLOSE_GOING_AWAY, "the gateway is stopping")
        return defer.DeferredList([call.done for call in calls]).addCallback(lambda _: None)

    def status(self) -> dict:
        return {
            "listen": str(self.config.listen),
            "max_calls": self.config.max_calls,
            "audio": self.config.audio,
            "access": {"secret": bool(self.config.secret), "allow_from": list(self.config.allow_from)},
            "connections": [call.to_dict() for call in self.calls],
        }


def _offered_secret(request) -> str | None:
    """The secret in the handshake: query parameter ``token`` or an ``Authorization: Bearer`` header."""
    tokens = request.params.get("token")
    if tokens:
        return tokens[0]
    scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class OptimaccsService(service.Service):
    """Warns at start when the listener is open to anyone; at stop, lets the calls go."""

    name = "optimaccs"

    def __init__(self, server: InboundServer) -> None:
        self.server = server

    def startService(self) -> None:
        super().startService()
        if self.server.open_to_all:
            log.warn("the OptimaCCS listener {listen} accepts calls from anyone who can reach it: "
                     "set [optimaccs] secret and/or allow_from", listen=str(self.server.config.listen))

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return self.server.close_all()


def make_service(ctx, config: OptimaccsConfig | None = None) -> OptimaccsService:
    """The ``[optimaccs]`` adapter (the plugin's factory, ``plugins/adapters.py``) for its validated section
    ``config`` (by default ``ctx.config.optimaccs``): the inbound-call listener, its status and metrics."""
    config = config if config is not None else ctx.config.optimaccs
    server = InboundServer(ctx.reactor, config, ctx.registry, _Metrics(ctx.metrics), ctx.media_ports)
    server.draining = lambda: "this gateway node is draining" if getattr(ctx, "draining", False) else None
    ctx.listen(NAME, config.listen, server.factory(ctx.reactor))
    ctx.status[NAME] = server
    return OptimaccsService(server)
