"""OptimaCCS outbound calls: the ``optimaccs`` driver (``[pbx] driver`` and ``optimaccs:<number>`` devices).

A dial is ``POST /pbx/call`` (:mod:`gateway.drivers.optimaccs_api`), then the
call's raw WebSocket ``/ws/{sessionId}`` on the host of the returned
``endpointUrl``, opened with the same Bearer header. On it:

- ``dialStatus`` drives the leg: Dialing (the leg is already dialling),
  Ringing -> ringing, Connected -> answered, Busy -> busy, Failed -> failed;
  a ``hangup`` before Connected ends the leg as its ``cdr`` says (BUSY ->
  busy, NO ANSWER -> no answer, else failed), after it with ``remote_hangup``;
- ``cdr`` is attached to the call's CDR (source ``optimaccs``); ``dtmf`` from
  the callee becomes a DTMF event; ``CheckPoint`` fires :meth:`OutboundLeg.checkpoint`;
- binary messages are audio both ways in ``[optimaccs] audio``, through the
  leg's MediaPort exactly as on the inbound server (paced playout, backpressure
  both ways);
- the gateway sends ``dtmf`` ``{"digit","duration"}``, ``interruption``
  (barge-in), ``checkPoint`` and ``hangup`` (or ``POST /pbx/hangup``, as
  ``[optimaccs.outbound] hangup`` says; always REST while the WebSocket is not open).

A refused request fails the leg with the provider's message (401, 422, 500:
:class:`~gateway.drivers.optimaccs_api.ProviderError`; a reply the boundary
policy refuses, too big or of the wrong shape: ``BadReply``; no complete reply,
body included, within ``request_timeout``: ``RequestTimedOut``, so a request
never holds a leg, or a hangup, for longer); the readiness component
``optimaccs:api`` goes down on a refusal that is not about the call itself
(401, 5xx, a timeout, no connection) and up again on the next accepted request. A call's
WebSocket is opened once: a call cannot be rejoined, so there is no retry.

A hostile or broken provider fails only its own call: a text message the
boundary policy refuses (:func:`gateway.boundary.load_json`: lone surrogates,
``NaN``, deep nesting, not JSON) closes the media WebSocket with 1007 and
fails the leg naming the problem (``POST /pbx/hangup`` follows); a message
too big for ``max_message_size`` (Autobahn closes 1009) fails it too; a
connection lost mid-call ends it with ``transport_lost``. Unknown events and
unusable fields are ignored through a per-call
:class:`~gateway.boundary.IgnoredBudget`
(``gateway_ignored_messages_total{adapter="optimaccs-outbound",reason}``).
A provider that says nothing on an open media WebSocket fails its call too: no ``dialStatus`` within
``request_timeout`` fails the leg (kind ``silent``), no ``Connected`` within ``ring_timeout`` +
``request_timeout`` ends it ``no_answer``; the gateway then hangs up and waits ``cdr_wait`` for the cdr.
Every failed leg is counted in ``gateway_optimaccs_outbound_failed_total{kind}``, ``kind`` in snake_case
(the REST failures' :attr:`~gateway.drivers.optimaccs_api.ApiError.kind`, ``unreachable``, ``media_closed``,
``protocol``, ...).
"""

from __future__ import annotations

import enum
import itertools
import typing

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from prometheus_client import Counter
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import Logger
from zope.interface import implementer

from gateway.boundary import budget_factory
from gateway.confschema import ConfigError
from gateway.core.errors import DriverError
from gateway.core.interfaces import IDriver, IDriverLeg
from gateway.drivers import optimaccs_wire as wire
from gateway.drivers.config import OptimaccsConfig
from gateway.drivers.optimaccs_api import ApiError, ProviderApi, ValidationFailed, digits_only, media_url
from gateway.drivers.optimaccs_link import Link, Machine, ProviderCall, Transitions, illegal_counter
from gateway.tlspolicy import DEFAULT as DEFAULT_TLS
from gateway.media import MediaPorts
from gateway.metrics import define_metric
from gateway.wsaudio import AudioFastPath
from gateway.wstimers import use_reactor

__all__ = ["OutboundDriver", "OutboundLeg", "OutboundState", "TRANSITIONS", "build_driver", "connect_endpoint"]

log = Logger()

NAME = "optimaccs"
READINESS = "optimaccs:api"
#: the adapter label of this driver's ignored messages
ADAPTER = "optimaccs-outbound"
#: close codes by which a media WebSocket ends as a protocol failure of the call, not a lost connection
#: (1002 protocol error, 1003 unsupported data, 1007 invalid payload, 1009 message too big)
PROTOCOL_CLOSES = frozenset({1002, 1003, wire.CLOSE_INVALID, 1009})



class OutboundState(str, enum.Enum):
    """The state of one outbound leg (its "stage" in ``GET /api/status``)."""

    REQUESTING = "requesting"  # POST /pbx/call in flight (or about to go out)
    ABANDONED = "abandoned"  # hung up while requesting: a call placed after all is hung up by REST
    CONNECTING = "connecting"  # opening the media WebSocket
    DIALING = "dialing"  # the provider is dialling
    TALKING = "talking"  # Connected
    ENDING = "ending"  # over for the call; waiting for the provider's cdr and close
    OVER = "over"  # nothing left open

    def __str__(self) -> str:
        return self.value


REQUESTING, ABANDONED, CONNECTING, DIALING, TALKING, ENDING, OVER = OutboundState
#: the states in which the registry has not yet been told how the leg ends
LIVE = frozenset({REQUESTING, CONNECTING, DIALING, TALKING})
_MEDIA = (DIALING, TALKING)

#: (state, input) -> next state of an outbound leg; every input, from the provider, the gateway or a
#: timer, is listed where it is legal (loops: allowed, the state stays). A provider's message out of
#: state is ignored; an input of the gateway's own out of state is an illegal transition
#: (:class:`~gateway.drivers.optimaccs_link.Machine`).
TRANSITIONS = Transitions("outbound", {
    (REQUESTING, "start"): REQUESTING,  # POST /pbx/call goes out
    (ABANDONED, "start"): OVER,  # hung up before it went out: nothing placed
    (REQUESTING, "hangup"): ABANDONED,
    (REQUESTING, "placed"): CONNECTING,  # the reply: open the media WebSocket
    (ABANDONED, "placed"): OVER,  # placed after all: POST /pbx/hangup
    (REQUESTING, "not_placed"): OVER,  # refused, timed out, unreachable: failed
    (ABANDONED, "not_placed"): OVER,
    (REQUESTING, "give_up"): OVER,  # an unusable endpointUrl: failed
    (CONNECTING, "give_up"): OVER,  # the media WebSocket could not be connected: failed
    (CONNECTING, "opened"): DIALING,  # the media WebSocket is open
    (ENDING, "opened"): ENDING,  # ... after the gateway hung up: the hangup goes out on it
    (DIALING, "progress"): DIALING,  # dialStatus Dialing, Ringing
    (DIALING, "connected"): TALKING,  # dialStatus Connected
    (DIALING, "busy"): ENDING,  # dialStatus Busy
    (DIALING, "dial_failed"): ENDING,  # dialStatus Failed
    (DIALING, "silent"): ENDING,  # no dialStatus within request_timeout of opening: failed
    (DIALING, "no_answer"): ENDING,  # not Connected within ring_timeout + request_timeout: no answer
    **{(state, "remote_hangup"): ENDING for state in _MEDIA},  # the provider's hangup
    **{(state, "hangup"): ENDING for state in (CONNECTING, DIALING, TALKING)},  # the gateway's
    **{(state, "broken"): ENDING for state in (DIALING, TALKING, ENDING)},  # refused text: closed 1007
    **{(state, "cdr"): state for state in (DIALING, TALKING, ENDING)},  # the provider's cdr
    **{(state, name): state for state in _MEDIA for name in ("audio", "checkpoint")},
    **{(TALKING, name): TALKING for name in ("send_dtmf", "dtmf", "flush")},
    **{(state, "closed"): OVER for state in (CONNECTING, DIALING, TALKING, ENDING)},  # the WebSocket is gone
    (ENDING, "finish"): OVER,  # nothing left to wait for
    **{(state, "bug"): OVER for state in OutboundState if state != OVER},  # an internal error: failed
})

#: the dialStatus values and their inputs
_DIAL_STATUS = {"Dialing": "progress", "Ringing": "progress", "Connected": "connected", "Busy": "busy",
                "Failed": "dial_failed"}
_TERMINAL_DISPOSITIONS = {"BUSY": ("busy",), "NO ANSWER": ("no_answer",)}


class _MediaProtocol(AudioFastPath, WebSocketClientProtocol):
    """The media WebSocket of one outbound leg; binary audio takes the lean path of :mod:`gateway.wsaudio`."""

    def onOpen(self):
        self.factory.leg.opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.leg.received(payload, isBinary)

    def onClose(self, wasClean, code, reason):
        if self.localCloseCode in PROTOCOL_CLOSES:  # Autobahn (or the leg) failed the connection: that code says why
            code, reason = self.localCloseCode, self.localCloseReason or reason
        self.factory.leg.closed(code, reason)


@implementer(IDriverLeg)
class OutboundLeg(ProviderCall):
    """One call placed through the provider: its REST request, its media WebSocket, its MediaPort.

    Its state is :class:`OutboundState`, moved only through :data:`TRANSITIONS`. The registry is told how
    the leg ends exactly once: by the transition that leaves a live state (:data:`LIVE`) for one where the
    leg is over for the registry (``abandoned``, ``ending``, ``over``). DTMF, the provider's cdr and the
    timers come from :class:`~gateway.drivers.optimaccs_link.ProviderCall`; the timers are ``progress``
    (the first dialStatus), ``answer`` (Connected) and ``close`` (the cdr wait or the grace after it).
    """

    driver = NAME
    _ENDING = ENDING

    def __init__(self, driver: "OutboundDriver", number: str, events, caller_id: str | None) -> None:
        self._driver = driver
        self.number = number
        self.events = events
        self.caller_id = caller_id
        self.session_id: str | None = None
        self.port = driver.ports.port(driver.clock, driver.config.audio, name=f"optimaccs:{number}")
        self._link: Link | None = None
        #: the TCP connection being made, then the protocol whose opening handshake runs
        self._connecting: defer.Deferred | None = None
        self._handshaking = None
        self._checkpoints: dict[str, defer.Deferred] = {}
        self._names = itertools.count(1)
        self._ignored = driver.budget(f"call to {number}")
        self._begin(driver.clock, Machine(TRANSITIONS, REQUESTING, lambda: self.who, driver.illegal))
        #: fires once the leg holds nothing open any more
        self.done = defer.Deferred()

    @property
    def stage(self) -> OutboundState:
        """The leg's state (:class:`OutboundState`)."""
        return self._machine.state

    @property
    def over(self) -> bool:
        """True once the registry was told the leg is over (or asked for the hangup)."""
        return self.stage not in LIVE

    @property
    def _cdr_wait(self) -> float:
        return self._driver.config.cdr_wait

    @property
    def who(self) -> str:
        return f"OptimaCCS call {self.session_id or '(not placed)'} to {self.number}"

    # -- IDriverLeg ---------------------------------------------------------------

    def answer(self) -> defer.Deferred:
        return defer.fail(DriverError(NAME, f"{self.number} is reached through the provider: "
                                            "it answers by itself and cannot be answered remotely"))

    def hangup(self, cause) -> defer.Deferred:
        """Hang up at the provider; the provider's cdr is awaited, the command does not wait."""
        if self._machine.allows("hangup"):
            log.info("{who}: hanging up ({cause})", who=self.who, cause=cause)
            requesting = self.stage == REQUESTING
            self._machine.fire("hangup")
            if not requesting:  # abandoned: hung up by REST once the request ends
                self._send_hangup()
                self._wind_down()
        return defer.succeed(None)

    def send_dtmf(self, digit: str, duration_ms: int) -> defer.Deferred:
        return self._play_dtmf(digit, duration_ms)

    def _dtmf_message(self, digit: str, duration: int) -> dict:
        return {"event": "dtmf", "data": {"digit": digit, "duration": duration}}

    def flush(self) -> None:
        if self._machine.allows("flush"):
            self._link.send({"event": "interruption"})
        self.port.flush()

    def checkpoint(self) -> defer.Deferred:
        """Fires once the audio queued toward the callee so far has been played by the provider
        (or discarded by a flush, or the call ended)."""
        if not self._machine.allows("checkpoint"):
            return defer.succeed(None)
        name = f"gw-{next(self._names)}"
        reached = self._checkpoints[name] = defer.Deferred()
        queued = self.port.playout.checkpoint()
        queued.addCallback(lambda _: self._mark(name))
        return reached

    # -- the request and the WebSocket ---------------------------------------------------

    def start(self) -> None:
        """Place the call (scheduled by ``dial``, so nothing is reported before it returned)."""
        if self.stage == ABANDONED:  # hung up before the request went out: nothing is placed
            self._let_go("start")
            return
        if not self._machine.fire("start"):
            return
        d = self._driver.api.place_call(self.number, self.caller_id)
        d.addCallbacks(self._placed, self._not_placed)
        d.addErrback(self._bug, "placing the call")

    def _placed(self, placed) -> None:
        self._driver.api_up()
        self.session_id = placed.session_id
        if self.stage == ABANDONED:
            self._rest_hangup()
            self._let_go("placed")
            return
        try:
            url = media_url(placed.endpoint_url, placed.session_id)
        except ApiError as error:
            self._give_up(error.reason, kind=error.kind)
            return
        if not self._machine.fire("placed"):
            return
        log.info("{who}: placed; opening {url}", who=self.who, url=url)
        self._connecting = d = self._driver.connect_media(url, self)
        d.addCallbacks(self._connected, self._not_connected)
        d.addErrback(self._bug, "opening the media WebSocket")

    def _not_placed(self, failure) -> None:
        error = failure.value
        if not isinstance(error, ValidationFailed):
            self._driver.api_down(failure.getErrorMessage())
        kind = error.kind if isinstance(error, ApiError) else "unreachable"
        log.warn("{who}: the provider did not place the call ({kind}): {error}", who=self.who,
                 kind=kind, error=failure.getErrorMessage())
        if self._leave("not_placed", "failed", getattr(error, "reason", None) or failure.getErrorMessage(),
                       kind=kind):
            self._let_go()

    def _connected(self, protocol) -> None:
        self._connecting = None
        self._handshaking = protocol

    def _not_connected(self, failure) -> None:
        self._connecting = None
        if self.stage == ENDING:
            self._let_go("finish")  # the gateway hung up while connecting
        else:
            self._give_up(f"the provider's media WebSocket could not be opened: {failure.getErrorMessage()}",
                          kind="media_unreachable")

    def _give_up(self, reason: str, kind: str) -> None:
        log.warn("{who}: {reason}", who=self.who, reason=reason)
        if self._leave("give_up", "failed", reason, kind=kind):
            self._rest_hangup()
            self._let_go()

    def opened(self, protocol) -> None:
        self._handshaking = None
        self._link = Link(protocol)
        if not self._machine.fire("opened"):
            self._link.close(1000, "call ended")  # nothing to carry on it
            return
        if self.stage == ENDING:  # hung up while the handshake ran
            self._send_hangup()
            self._wind_down()
            return
        self._link.attach(self.port)
        outbound = self._driver.config.outbound
        self._start_timer("progress", outbound.request_timeout, self._no_progress)
        self._start_timer("answer", outbound.ring_timeout + outbound.request_timeout, self._not_answered)

    def received(self, payload: bytes, binary: bool) -> None:
        """One message from the provider (never raises)."""
        try:
            if binary:
                if self._machine.allows("audio"):
                    self.port.receive(payload)
                return
            self._text(payload)
        except Exception:
            log.failure("{who}: handling a message from the provider failed", who=self.who)

    def _text(self, payload: bytes) -> None:
        if self._link is None or not self._link.open:
            return
        try:
            event, message = wire.parse_event(payload)
        except wire.BadMessage as error:
            self._broken(f"bad message: {error}")
            return
        handler = self._handlers.get(event)
        if handler is None:
            self._ignored.ignored("unknown", f"unknown event {event[:60]!r}")
        else:
            handler(self, message.get("data"))

    def _broken(self, reason: str) -> None:
        """The provider sent what the boundary policy refuses: close 1007, fail the leg, hang up by REST."""
        log.warn("{who}: the provider broke the protocol ({reason}); closing with {code}", who=self.who,
                 reason=reason, code=wire.CLOSE_INVALID)
        self._link.close(wire.CLOSE_INVALID, reason)  # the closing handshake ends in closed -> over
        live = self.stage in LIVE
        if self._leave("broken", "failed", f"the provider broke the media protocol: {reason}", kind="protocol") \
                and live:
            self._rest_hangup()
        self._stop_media()
        self._cancel_timers()

    def _on_dial_status(self, data) -> None:
        status = data.get("status") if isinstance(data, dict) else None
        if status not in _DIAL_STATUS:
            self._ignored.ignored("malformed", f"dialStatus {data!r:.100}")
            return
        log.info("{who}: dialStatus {status}", who=self.who, status=status)
        step = _DIAL_STATUS[status]
        if not self._machine.allows(step):
            return  # e.g. a Ringing after Connected: nothing to do
        self._cancel_timer("progress")
        if step == "progress":
            if status == "Ringing":
                self.events.ringing()
        elif step == "connected":
            self._cancel_timer("answer")
            self._machine.fire("connected")
            self.events.answered()
        elif step == "busy":
            self._leave("busy", "busy")
            self._wind_down()
        else:
            self._leave("dial_failed", "failed", "the provider could not connect the call", kind="dial_failed")
            self._wind_down()

    def _on_hangup(self, data) -> None:
        if not self._machine.allows("remote_hangup"):
            return
        if self.stage == TALKING:
            self._leave("remote_hangup", "hung_up", "remote_hangup")
        else:
            outcome, *args = self._unanswered_outcome()
            self._leave("remote_hangup", outcome, *args, kind="unanswered")
        self._wind_down()

    def _on_cdr(self, data) -> None:
        if not isinstance(data, dict) or self.cdr is not None or not self._machine.allows("cdr"):
            self._ignored.ignored("malformed" if self.cdr is None else "out_of_state",
                                  f"cdr {data!r:.100} (not an object, or a second one)")
            return
        self._take_cdr(data)

    def _on_dtmf(self, data) -> None:
        self._received_dtmf(data.get("digit") if isinstance(data, dict) else None, f"dtmf {data!r:.100}")

    def _on_checkpoint(self, data) -> None:
        reached = self._checkpoints.pop(data, None) if isinstance(data, str) else None
        if reached is not None:
            reached.callback(None)

    _handlers: typing.ClassVar[dict] = {
        "dialStatus": _on_dial_status,
        "hangup": _on_hangup,
        "cdr": _on_cdr,
        "dtmf": _on_dtmf,
        "CheckPoint": _on_checkpoint,
    }

    def closed(self, code, reason) -> None:
        """The media WebSocket is gone (or its opening handshake failed)."""
        self._handshaking = None
        log.info("{who}: media connection closed (code {code}, {reason})", who=self.who, code=code,
                 reason=reason or "")
        if self.stage == OVER:
            return
        live = self.stage in LIVE
        if code in PROTOCOL_CLOSES:
            told = self._leave("closed", "failed", f"the provider's media connection broke the protocol (code {code}, "
                                                   f"{reason or ''})", kind="protocol")
        elif self.stage == TALKING:
            told = self._leave("closed", "hung_up", "transport_lost")
        else:
            told = self._leave("closed", "failed", f"the provider closed the media connection (code {code}, "
                                                   f"{reason or ''})", kind="media_closed")
        if told:
            if live:
                self._rest_hangup()
            self._let_go()

    # -- timers: a provider that says nothing -------------------------------------------

    def _no_progress(self) -> None:
        """No dialStatus within ``request_timeout`` of the media WebSocket opening: the leg fails."""
        wait = self._driver.config.outbound.request_timeout
        log.warn("{who}: no dialStatus within {wait:g} s of the media connection opening; hanging up",
                 who=self.who, wait=wait)
        if self._leave("silent", "failed", f"the provider sent no dialStatus within {wait:g} s", kind="silent"):
            self._send_hangup()
            self._wind_down()

    def _not_answered(self) -> None:
        """Not Connected within ``ring_timeout`` + ``request_timeout`` of the media WebSocket opening, and the
        provider (told to give up after ``ring_timeout``) said nothing more: the leg is not answered."""
        outbound = self._driver.config.outbound
        log.warn("{who}: not connected within {wait:g} s (ring_timeout {ring} s + request_timeout) and the "
                 "provider said nothing more; hanging up", who=self.who,
                 wait=outbound.ring_timeout + outbound.request_timeout, ring=outbound.ring_timeout)
        if self._leave("no_answer", "no_answer"):
            self._send_hangup()
            self._wind_down()

    # -- internals -----------------------------------------------------------------

    def _leave(self, step: str, outcome: str | None = None, *args, kind: str | None = None) -> bool:
        """Take the transition ``step``; if it leaves a live state, tell the registry ``outcome(*args)``
        (a failure is counted by ``kind``). False if the transition is illegal."""
        live = self.stage in LIVE
        if not self._machine.fire(step):
            return False
        if live and outcome is not None:
            if outcome == "failed":
                self._driver.failed(kind or "other")
            getattr(self.events, outcome)(*args)
        return True

    def _unanswered_outcome(self) -> tuple:
        cdr = self.cdr or {}
        disposition, text = cdr.get("disposition"), cdr.get("hangupCauseText")
        known = _TERMINAL_DISPOSITIONS.get(disposition) if isinstance(disposition, str) else None
        if known is not None:
            return known
        reason = next((t for t in (text, disposition) if isinstance(t, str) and t), "no reason given")
        return "failed", f"the provider ended the call before it was answered: {reason[:200]}"

    def _send_hangup(self) -> None:
        method = self._driver.config.outbound.hangup
        link_open = self._link is not None and self._link.open
        if link_open and method in ("websocket", "both"):
            self._link.send({"event": "hangup"})
        if method in ("rest", "both") or not link_open:
            self._rest_hangup()

    def _rest_hangup(self) -> None:
        if self.session_id is None:
            return
        d = self._driver.api.hangup(self.session_id)
        d.addErrback(lambda f: log.warn("{who}: POST /pbx/hangup failed: {error}", who=self.who,
                                        error=f.getErrorMessage()))

    def _wind_down(self) -> None:
        """The call is over at the provider (the leg is ``ending``): stop the audio, wait for its cdr, then
        close."""
        self._stop_media()
        self._cancel_timer("progress", "answer")
        if self._connecting is not None:
            self._connecting.cancel()  # -> _not_connected -> over
        elif self._handshaking is not None:
            self._handshaking.transport.abortConnection()  # -> closed -> over
        elif self._link is None:
            self._let_go("finish")
        else:
            self._await_cdr()

    def _close_after_call(self) -> None:
        self._link.close(1000, "call ended")

    def _stop_media(self) -> None:
        if self._link is not None:
            self._link.detach(self.port)
        else:
            self.port.close()
        for reached in self._checkpoints.values():
            reached.callback(None)
        self._checkpoints.clear()

    def _mark(self, name: str) -> None:
        if self._machine.allows("checkpoint") and name in self._checkpoints:
            self._link.send({"event": "checkPoint", "data": name})

    def _let_go(self, step: str | None = None) -> None:
        """The leg holds nothing open any more (``step``: the transition to ``over`` still to take)."""
        if step is not None and not self._machine.fire(step):
            return
        self._wind_up()
        self._stop_media()
        self._ignored.close()
        self._driver.forget(self)
        self.done.callback(None)

    def _bug(self, failure, what: str) -> None:
        log.failure("{who}: {what} failed", failure, who=self.who, what=what)
        if self.stage != OVER and self._leave("bug", "failed", f"{what} failed (internal error)", kind="internal"):
            self._let_go()

    def to_dict(self) -> dict:
        return {"number": self.number, "session_id": self.session_id, "stage": self.stage.value,
                "frames_out": self._link.frames_out if self._link else 0}


def connect_endpoint(reactor, timeout: float, tls=DEFAULT_TLS):
    """``connect(url, factory) -> Deferred``: a TCP (or TLS, for wss, with the TlsPolicy ``tls``) connection
    from ``reactor``."""

    def connect(url: str, factory) -> defer.Deferred:
        secure, host, port = parse_url(url)[:3]
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
        if secure:
            endpoint = wrapClientTLS(tls.client_creator(host), endpoint)
        return endpoint.connect(factory)

    return connect


@implementer(IDriver)
class OutboundDriver:
    """The ``optimaccs`` driver: places calls through the provider's outbound API."""

    name = NAME

    def __init__(self, clock, config, *, http, connect, readiness=None, on_stop=None,
                 ports: MediaPorts = MediaPorts(), metrics=None) -> None:
        """``config``: ``OptimaccsConfig`` (its ``outbound`` table, ``audio``, ``cdr_wait`` and WebSocket
        limits); ``http``: a treq HTTPClient; ``connect(url, factory) -> Deferred`` opens a connection
        (:func:`connect_endpoint`); ``readiness``: a readiness Component; ``on_stop()``: called last
        at stop (e.g. closing the HTTP connection pool); ``ports`` makes each leg's MediaPort (the
        daemon's ``ctx.media_ports``); ``metrics``: the Prometheus registry (None: nothing counted)."""
        self.clock = clock
        self.config = config
        self.ports = ports
        self.api = ProviderApi(http, clock, config.outbound, config.audio)
        self.legs: list[OutboundLeg] = []
        self._connect = connect
        self._readiness = readiness
        self._on_stop = on_stop
        #: an IgnoredBudget per call: gateway_ignored_messages_total{adapter="optimaccs-outbound",reason}
        self.budget = budget_factory(clock, ADAPTER, metrics, logger=log)
        #: gateway_optimaccs_illegal_transitions_total{connection="outbound",state,input}
        self.illegal = illegal_counter(metrics)
        self._failed = None if metrics is None else define_metric(
            metrics, Counter, "optimaccs_outbound_failed",
            "OptimaCCS outbound calls that failed, by kind (unauthorized, validation_failed, provider_failure, "
            "bad_reply, timeout, unreachable, media_unreachable, media_closed, protocol, dial_failed, unanswered, "
            "silent, internal).",
            ["kind"])

    def failed(self, kind: str) -> None:
        """Count one failed leg."""
        if self._failed is not None:
            self._failed.labels(kind).inc()

    def dial(self, address, events, caller_id=None, attributes=None) -> OutboundLeg:
        if not digits_only(address or ""):
            raise DriverError(NAME, f"{address!r} has no digits to dial")
        leg = OutboundLeg(self, address, events, caller_id)
        self.legs.append(leg)
        self.clock.callLater(0, leg.start)
        return leg

    def connect_media(self, url: str, leg: OutboundLeg) -> defer.Deferred:
        """Open ``leg``'s media WebSocket at ``url``; fires once connected (the leg hears ``opened``).
        Autobahn's handshake, ping and close timers run on the driver's clock."""
        config = self.config
        factory = use_reactor(WebSocketClientFactory(url, headers=self.api.headers, reactor=self.clock), self.clock)
        factory.protocol = _MediaProtocol
        factory.leg = leg
        factory.setProtocolOptions(
            openHandshakeTimeout=config.outbound.request_timeout,
            maxMessagePayloadSize=config.max_message_size,
            maxFramePayloadSize=config.max_message_size,
            autoPingInterval=config.ping_interval,
            autoPingTimeout=config.ping_timeout,
            utf8validateIncoming=True,
            failByDrop=False,  # a protocol violation (1009, invalid UTF-8 1007) is a close frame with its code
            tcpNoDelay=True,
        )
        return self._connect(url, factory)

    def forget(self, leg: OutboundLeg) -> None:
        if leg in self.legs:
            self.legs.remove(leg)

    def api_up(self) -> None:
        if self._readiness is not None:
            self._readiness.set_up()

    def api_down(self, reason: str) -> None:
        if self._readiness is not None:
            self._readiness.set_down(reason)

    def start(self) -> None:
        self.api_up()  # until a request says otherwise

    def stop(self) -> defer.Deferred:
        """Hang up what is left, wait for the legs to let go (bounded by ``cdr_wait`` and the request
        timeout), then ``on_stop``."""
        legs = list(self.legs)
        for leg in legs:
            leg.hangup("shutdown")
        d = defer.DeferredList([leg.done for leg in legs])
        if self._on_stop is not None:
            d.addCallback(lambda _: self._on_stop())
        return d.addCallback(lambda _: None)

    def status(self) -> dict:
        return {"api_url": self.config.outbound.api_url, "calls": [leg.to_dict() for leg in self.legs]}


def build_driver(ctx) -> OutboundDriver:
    """The driver for the daemon: treq over a persistent pool, endpoints from the reactor, readiness
    ``optimaccs:api``, status ``optimaccs-outbound``. ConfigError without a token."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    config = ctx.config.optimaccs or OptimaccsConfig()
    if not config.outbound.token:
        raise ConfigError("optimaccs.outbound.token",
                          "required when the optimaccs driver is used ([pbx] driver or an optimaccs: device)")
    reactor = ctx.reactor
    pool = HTTPConnectionPool(reactor, persistent=True)
    driver = OutboundDriver(
        reactor, config,
        http=HTTPClient(Agent(reactor, contextFactory=ctx.tls.https_policy(), pool=pool)),
        connect=connect_endpoint(reactor, config.outbound.request_timeout, ctx.tls),
        readiness=ctx.readiness.register(READINESS),
        on_stop=pool.closeCachedConnections,
        ports=ctx.media_ports,
        metrics=ctx.metrics,
    )
    ctx.status["optimaccs-outbound"] = driver
    return driver
