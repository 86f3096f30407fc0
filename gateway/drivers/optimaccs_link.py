"""What both OptimaCCS WebSockets do with a call's media and timing: one open Autobahn connection as a leg's link.

A :class:`Link` carries one leg: JSON events and binary audio out, the leg's
:class:`~gateway.media.MediaPort` attached to the TCP transport in both
directions (the port's paced playout is the transport's producer, so a peer
that stops reading pauses it; the transport is the port's upstream, so a full
inbound path stops reading from the socket), and closing with any code.
:class:`Tones` keeps the Deferreds of DTMF tones being played, so they can
fail together when the connection goes.

Both connections, the inbound call (:class:`gateway.drivers.optimaccs.InboundCall`) and the outbound
leg (:class:`gateway.drivers.optimaccs_out.OutboundLeg`), keep their state in a :class:`Machine`
moved only through their transition table (:class:`Transitions`), and share :class:`ProviderCall`:
the DTMF rules, the provider's CDR, and timers that all run on the injected clock and are all
cancelled when the connection goes.
"""

from __future__ import annotations

import typing

from autobahn.util import encode_truncate
from autobahn.websocket.protocol import WebSocketProtocol
from prometheus_client import Counter
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.core.errors import DriverError
from gateway.drivers import optimaccs_wire as wire
from gateway.metrics import define_metric

__all__ = ["CLOSE_GRACE", "Link", "Machine", "ProviderCall", "Tones", "Transitions", "illegal_counter"]

log = Logger()

NAME = "optimaccs"
#: seconds the peer is given to close by itself once the call and its cdr are over (the provider closes
#: after its cdr; both sides closing at once can lose the close frames to a reset)
CLOSE_GRACE = 1.0
#: the longest close reason a close frame can carry, in bytes
_MAX_REASON = 123
_OPEN = WebSocketProtocol.STATE_OPEN


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
        """One binary audio frame, on the lean path (:meth:`gateway.wsaudio.AudioFastPath.sendAudio`)."""
        if self.protocol.state == _OPEN:
            self.frames_out += 1
            self.protocol.sendAudio(payload)

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


class Transitions:
    """The transition table of one kind of provider connection: ``(state, input) -> next state``.

    Like the core's :data:`gateway.core.states.TRANSITIONS`, it is the only place that says which input
    is legal in which state and where it leads. An input that keeps the state (sending DTMF while the
    call is up) is listed as a loop, so the table also answers "may this be done now?".
    """

    def __init__(self, kind: str, table: dict) -> None:
        #: ``inbound`` or ``outbound``: the ``connection`` label of the illegal-transition counter
        self.kind = kind
        self.table = dict(table)
        self.inputs = frozenset(name for _, name in self.table)

    def allows(self, state, name: str) -> bool:
        return (state, name) in self.table


class Machine:
    """The state of one connection, moved only by :meth:`fire` through its :class:`Transitions`.

    An input the table does not list for the current state is an *illegal transition*: a bug of the
    gateway, never the provider's fault (the provider's out-of-state messages are checked with
    :meth:`allows` and ignored or refused before they get here). It is logged naming the call,
    counted in ``gateway_optimaccs_illegal_transitions_total{connection,state,input}``, and refused:
    the state stays, :meth:`fire` returns False, and nothing is raised into the reactor.
    """

    def __init__(self, transitions: Transitions, state, who, counter=None) -> None:
        """``who()``: the call's name for the log; ``counter``: :func:`illegal_counter` (None: not counted)."""
        self.transitions = transitions
        self.state = state
        self.illegal = 0
        self._who = who
        self._counter = counter

    def allows(self, name: str) -> bool:
        return self.transitions.allows(self.state, name)

    def settle(self, who: str) -> None:
        """The connection is gone: name the call by ``who`` from now on, holding no reference to it (so the
        call's objects are freed when it ends, not at Python's next full garbage collection)."""
        self._who = lambda: who

    def fire(self, name: str) -> bool:
        """Take the transition ``name`` from the current state; False (logged, counted) if it is illegal."""
        target = self.transitions.table.get((self.state, name))
        if target is None:
            self.illegal += 1
            log.error("{who}: illegal transition {input!r} in state {state} of the {kind} connection; refused",
                      who=self._who(), input=name, state=str(self.state), kind=self.transitions.kind)
            if self._counter is not None:
                self._counter.labels(self.transitions.kind, str(self.state), name).inc()
            return False
        self.state = target
        return True


def illegal_counter(registry):
    """``gateway_optimaccs_illegal_transitions_total{connection,state,input}`` on ``registry`` (None: None)."""
    if registry is None:
        return None
    return define_metric(registry, Counter, "optimaccs_illegal_transitions",
                         "Inputs an OptimaCCS connection refused as illegal in its state (a gateway bug), "
                         "by connection kind (inbound, outbound), state and input.",
                         ["connection", "state", "input"])


class ProviderCall:
    """What the inbound call and the outbound leg do alike: DTMF, the provider's CDR, timers.

    A subclass calls :meth:`_begin` first, and has ``events`` (the leg's ILegEvents, or None before
    the registry knows the leg), ``_link`` (its :class:`Link`, or None before the WebSocket is open),
    ``_ignored`` (its IgnoredBudget) and ``who``; it defines :meth:`_dtmf_message`,
    :meth:`_close_after_call`, ``_cdr_wait`` and ``_ENDING`` (its state "over, waiting for the cdr").
    Its transition table names the inputs used here: ``send_dtmf`` (the gateway plays a digit),
    ``dtmf`` (the provider reports one) and ``cdr``.

    - Timers: every timer of the connection is named and runs on the injected clock; starting one
      replaces the one of the same name; :meth:`_wind_up` (the connection is gone) cancels them all,
      and the DTMF tones still playing, so nothing of the call is left on the clock.
    - DTMF toward the provider: only ``0-9 * #`` (A-D fail the command), the duration clamped to
      1..1000 ms, the Deferred firing when the tone has played (failing if the connection goes first).
    - DTMF from the provider: ``0-9 * # A-D`` (upper-cased) become a DTMF event on the leg while the
      table allows ``dtmf``; another digit is ignored as ``malformed``; a digit out of state is ignored
      as ``out_of_state`` where ``_COUNT_DTMF_OUT_OF_STATE`` says so (inbound), dropped otherwise.
    - The provider's CDR: the first is normalised (:func:`~gateway.drivers.optimaccs_wire.normalise_cdr`)
      and handed to the registry (source ``optimaccs``); once the call is over the connection closes
      :data:`CLOSE_GRACE` after it, or ``cdr_wait`` after the end without one.
    """

    _ENDING: typing.ClassVar = None
    _COUNT_DTMF_OUT_OF_STATE: typing.ClassVar[bool] = False
    events = None
    _link: Link | None = None

    def _begin(self, clock, machine: Machine) -> None:
        self._clock = clock
        self._machine = machine
        self._timers: dict = {}
        self._tones = Tones(clock)
        #: the provider's CDR, normalised, once it came
        self.cdr: dict | None = None

    @property
    def state(self):
        return self._machine.state

    # -- timers ------------------------------------------------------------------

    def _start_timer(self, name: str, seconds: float, then, *args) -> None:
        """Call ``then(*args)`` in ``seconds`` on the clock, instead of the timer ``name`` if one runs."""
        self._cancel_timer(name)
        self._timers[name] = self._clock.callLater(seconds, self._timer_fired, name, then, *args)

    def _timer_fired(self, name: str, then, *args) -> None:
        self._timers.pop(name, None)
        then(*args)

    def _cancel_timer(self, *names: str) -> None:
        for name in names:
            timer = self._timers.pop(name, None)
            if timer is not None and timer.active():
                timer.cancel()

    def _cancel_timers(self) -> None:
        self._cancel_timer(*list(self._timers))

    @property
    def timers(self) -> list[str]:
        """The names of the connection's timers still to fire."""
        return sorted(name for name, timer in self._timers.items() if timer.active())

    def _wind_up(self) -> None:
        """The connection is gone: no timer or tone of it is left on the clock."""
        self._cancel_timers()
        self._tones.cancel()

    # -- DTMF ----------------------------------------------------------------------

    def _dtmf_message(self, digit: str, duration: int) -> dict:
        raise NotImplementedError

    def _play_dtmf(self, digit: str, duration_ms: int) -> defer.Deferred:
        """Send one digit to the provider; fires once its tone has played."""
        if not self._machine.allows("send_dtmf"):
            return defer.fail(DriverError(NAME, f"cannot send DTMF: the call is {self.state}"))
        if digit not in wire.COMMAND_DIGITS:
            return defer.fail(DriverError(NAME, f"the provider plays only 0-9 * # as DTMF, not {digit!r}"))
        duration = wire.clamp_duration(duration_ms)
        self._link.send(self._dtmf_message(digit, duration))
        return self._tones.play(duration)

    def _received_dtmf(self, value, malformed: str) -> None:
        """A digit the provider reports (``value`` as it came; ``malformed``: the log line if it is no digit)."""
        live = self._machine.allows("dtmf") and self.events is not None
        digit = wire.keypad_digit(value)
        if not live and self._COUNT_DTMF_OUT_OF_STATE:
            self._ignored.ignored("out_of_state", f"dtmf while the call is {self.state}")
        elif digit is None:
            self._ignored.ignored("malformed", malformed)
        elif live:
            self.events.dtmf(digit)

    # -- the provider's CDR -------------------------------------------------------------

    _cdr_wait: float = 0.0

    def _close_after_call(self) -> None:
        raise NotImplementedError

    def _take_cdr(self, data: dict) -> None:
        """The provider's (first) cdr: normalised, handed to the registry; closes soon if the call is over."""
        self.cdr = wire.normalise_cdr(data)
        if self.events is not None:
            self.events.provider_cdr(wire.SOURCE, self.cdr)
        if self.state == self._ENDING:
            self._start_timer("close", CLOSE_GRACE, self._close_after_call)

    def _await_cdr(self) -> None:
        """The call is over at the provider: close :data:`CLOSE_GRACE` after its cdr, or ``cdr_wait`` without."""
        if self.cdr is not None:
            self._start_timer("close", CLOSE_GRACE, self._close_after_call)
        else:
            self._start_timer("close", self._cdr_wait, self._cdr_timed_out)

    def _cdr_timed_out(self) -> None:
        log.warn("{who}: no cdr from the provider within {wait:g} s of the call's end; closing", who=self.who,
                 wait=self._cdr_wait)
        self._close_after_call()
