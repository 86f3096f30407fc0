"""The call registry: every call and leg, every command, every event, one CDR per call.

Protocol adapters (Patriot, CTI, the admin API) turn their requests into the
commands below and translate the events back; drivers report through the
:class:`~gateway.core.interfaces.ILegEvents` the registry gives each leg. No
I/O happens here: time comes from the ``clock`` (an IReactorTime), the far
ends are reached through drivers, audio through the media controller.

Commands return Deferreds that fire (with a :class:`CallSnapshot`, or None for
``dispose``/``shutdown``) once the effect has happened, or fail with a
:class:`~gateway.core.errors.CallError`. Outcomes that come later (a dialled
party answering, a transfer failing) arrive as events and in the CDR.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import secrets
import typing

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.boundary import bad_text_field, sanitise
from gateway.core import events as ev
from gateway.core.cdr import RetryingSink, build_cdr
from gateway.core.errors import (
    CallError,
    DriverError,
    ExtensionBusy,
    IllegalState,
    InvalidArgument,
    UnknownCall,
    UnknownExtension,
    UnknownParty,
)
from gateway.core.dtmf import MAX_DTMF_DIGITS, PHONE_KEYS, is_dial_number, is_dtmf_sequence
from gateway.core.interfaces import Attributes, ICallControl, IDriver, IDriverLeg, IInboundCalls, ILegEvents, Observer
from gateway.core.model import DEVICE, INBOUND, OUTBOUND, PARTY, Call, CallSnapshot, Leg
from gateway.core.states import Cause, LegState, next_state

if typing.TYPE_CHECKING:  # pragma: no cover
    from gateway.core.mediactl import MediaController
    from gateway.core.routing import Router

# MAX_DTMF_DIGITS and PHONE_KEYS live in gateway.core.dtmf (adapters import them from there)
__all__ = ["Registry", "DEFAULT_RETENTION", "IF_BUSY", "MAX_DTMF_DIGITS", "PHONE_KEYS"]

log = Logger()

RINGING, DIALING, TALKING, HELD = LegState.RINGING, LegState.DIALING, LegState.TALKING, LegState.HELD

#: seconds a released call stays queryable
DEFAULT_RETENTION = 60.0

#: what ``originate`` does while the extension has a live call of its own: refuse the dial
#: (ExtensionBusy), or replace the call (hang it up, then dial)
IF_BUSY = ("refuse", "replace")

_CONSULT_EVENTS = {"transfer": ev.TransferFailed, "conference": ev.ConferenceFailed}
_PENDING_REASONS = {
    Cause.BUSY: "busy",
    Cause.NO_ANSWER: "no answer",
    Cause.REMOTE_HANGUP: "hung up before answering",
    Cause.TRANSPORT_LOST: "the connection was lost",
}


_P = typing.ParamSpec("_P")
_R = typing.TypeVar("_R")


class ExtensionEntry(typing.Protocol):
    """A configured extension (``gateway.config.Extension``)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def device(self) -> str: ...


def _non_finite(value: object) -> bool:
    """Whether ``value`` (nested dicts, lists, tuples) holds a NaN or an infinite float."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def _warn_unsafe(driver: str, given: dict[str, typing.Any], safe: dict[str, typing.Any]) -> None:
    """Say what :func:`~gateway.boundary.sanitise` changed in a call a driver delivered, naming the fields."""
    # an attribute is checked with its key (which may be the bad part) and named by the escaped key
    fields = [("caller_id", given["caller_id"]), ("did", given["did"]),
              *((f"attributes.{sanitise(key)[0]}", {key: value}) for key, value in given["attributes"].items())]
    text = [name for name, value in fields if bad_text_field(value) is not None]
    numbers = [name for name, value in fields if _non_finite(value)]
    if text:
        log.warn("driver {driver} delivered a call with text that is not valid Unicode in {fields}; kept escaped "
                 "(caller {caller}, DID {did})", driver=driver, fields=", ".join(text), caller=safe["caller_id"],
                 did=safe["did"])
    if numbers:
        log.warn("driver {driver} delivered a call with a number that is not finite in {fields}; kept as text "
                 "(caller {caller}, DID {did})", driver=driver, fields=", ".join(numbers), caller=safe["caller_id"],
                 did=safe["did"])


@attrs.frozen
class _Destination:
    """Where a dial goes: through ``driver`` to ``address``; ``extension`` set for an extension's phone."""

    driver: str
    address: str
    number: str
    name: str = ""
    extension: str | None = None

    @property
    def attributes(self) -> Attributes:
        return {"extension": self.extension} if self.extension is not None else {}


@attrs.define(eq=False)
class _Subscription:
    callback: Observer
    extension: str | None


def _batched(method: typing.Callable[typing.Concatenate[Registry, _P], _R]
             ) -> typing.Callable[typing.Concatenate[Registry, _P], _R]:
    """Run a registry entry point as one batch: its events reach observers once it is done."""

    def run(self: Registry, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._batch():
            return method(self, *args, **kwargs)

    functools.update_wrapper(run, method)
    return run


#: what a command's body returns: the snapshot, or a Deferred of it (None for dispose)
_Body = typing.Callable[typing.Concatenate["Registry", _P], object]
#: the command as callers see it (its precise result type is on ICallControl)
_Command = typing.Callable[typing.Concatenate["Registry", _P], defer.Deferred[typing.Any]]


def _command(name: str) -> typing.Callable[[_Body[_P]], _Command[_P]]:
    """Run a registry command as one batch: exceptions become failed Deferreds, the outcome is counted."""

    def decorate(method: _Body[_P]) -> _Command[_P]:
        batched = _batched(method)

        def run(self: Registry, /, *args: _P.args, **kwargs: _P.kwargs) -> defer.Deferred[typing.Any]:
            d = defer.maybeDeferred(batched, self, *args, **kwargs)
            d.addBoth(self._count_command, name)
            return d

        functools.update_wrapper(run, method)
        return run

    return decorate


def _unwrap_first_error(failure: Failure) -> Failure:
    failure.trap(defer.FirstError)
    error = failure.value
    assert isinstance(error, defer.FirstError)  # trap let nothing else through
    return error.subFailure


@implementer(ILegEvents)
class _LegEvents:
    """What a driver reports about one leg, passed to the registry without ever raising into the driver."""

    def __init__(self, registry: "Registry", leg: Leg) -> None:
        self._registry = registry
        self._leg = leg

    @property
    def call_id(self) -> str:
        """The call the leg is in now (beyond ILegEvents: for drivers' logs and the sim's API)."""
        return self._leg.call.call_id

    @property
    def leg_id(self) -> str:
        return self._leg.leg_id

    def _report(self, what: str, handler: typing.Callable[..., None], *args: object) -> None:
        try:
            with self._registry._batch():
                # the phone of a primary that ended during a consult lives on in the consult call
                handler(self._registry._current_leg(self._leg), *args)
        except Exception:
            log.failure("handling {what} from driver {driver} on leg {leg_id} failed",
                        what=what, driver=self._leg.driver, leg_id=self._leg.leg_id)

    def ringing(self) -> None:
        self._report("ringing", self._registry._leg_ringing)

    def answered(self) -> None:
        self._report("answered", self._registry._leg_answered)

    def busy(self) -> None:
        self._report("busy", self._registry._leg_over, Cause.BUSY)

    def no_answer(self) -> None:
        self._report("no_answer", self._registry._leg_over, Cause.NO_ANSWER)

    def failed(self, reason: str) -> None:
        self._report("failed", self._registry._leg_over, Cause.FAILED, str(reason))

    def hung_up(self, cause: str = "remote_hangup") -> None:
        self._report("hung_up", self._registry._leg_hung_up, cause)

    def dtmf(self, digit: str, duration_ms: int | None = None) -> None:
        self._report("dtmf", self._registry._leg_dtmf, digit, duration_ms)

    def provider_cdr(self, source: str, data: Attributes) -> None:
        self._report("provider_cdr", self._registry._provider_cdr, source, data)


@implementer(ICallControl, IInboundCalls)
class Registry:
    """Owns calls and legs; see the module docstring. The adapters' :class:`ICallControl` and the
    drivers' :class:`IInboundCalls`."""

    def __init__(
        self,
        clock: IReactorTime,
        drivers: typing.Mapping[str, IDriver],
        *,
        extensions: typing.Iterable[ExtensionEntry] = (),
        router: Router | None = None,
        media: MediaController | None = None,
        pbx_driver: str = "sim",
        node: str = "gateway",
        cdr_sink: typing.Callable[[Attributes], defer.Deferred[typing.Any]] | None = None,
        provider_cdr_sink: typing.Callable[[str, str, Attributes], defer.Deferred[typing.Any]] | None = None,
        retention: float = DEFAULT_RETENTION,
        on_command: typing.Callable[[str, str], None] | None = None,
        sink_options: typing.Mapping[str, typing.Any] | None = None,
    ) -> None:
        """``drivers``: name -> IDriver; ``extensions``: objects with ``id``, ``name``, ``device``
        (``gateway.config.Extension``); ``router``: a :class:`~gateway.core.routing.Router`;
        ``media``: a :class:`~gateway.core.mediactl.MediaController` (None: no audio is wired);
        ``cdr_sink(cdr)`` and ``provider_cdr_sink(call_id, source, data)``: the store's
        ``add_cdr`` and ``attach_provider_cdr``; ``on_command(name, result)``: told the outcome
        (``ok`` or an error code) of every command; ``sink_options``: given to both CDR queues
        (:class:`~gateway.core.cdr.RetryingSink`: ``pending_max``, ``observer``)."""
        self._clock = clock
        self._drivers = dict(drivers)
        self._extensions = {ext.id: ext for ext in extensions}
        self._router = router
        self._media = media
        self._pbx_driver = pbx_driver
        self._node = node
        self._retention = retention
        self._on_command = on_command
        options = dict(sink_options or {})
        self._cdrs = RetryingSink(clock, cdr_sink, "CDR", **options) if cdr_sink else None
        self._provider_cdrs = RetryingSink(clock, provider_cdr_sink, "provider CDR", **options) if provider_cdr_sink else None
        self._calls: dict[str, Call] = {}
        self._forget_timers: dict[str, IDelayedCall] = {}
        self._subscriptions: list[_Subscription] = []
        #: events of the batch under way, with their (live) call
        self._pending: list[tuple[ev.CallEvent, Call]] = []
        #: events of finished batches, with their call's snapshot, waiting to be delivered
        self._queue: collections.deque[tuple[ev.CallEvent, CallSnapshot]] = collections.deque()
        self._depth = 0
        self._dispatching = False
        self._closing = False
        self._drained: list[defer.Deferred[None]] = []
        self._shutdown_timer: IDelayedCall | None = None
        #: cluster mode: ``busy_elsewhere(extension_id)`` is the id of the extension's live call on
        #: another node (or None), for the busy checks (gateway.cluster.control)
        self.busy_elsewhere: typing.Callable[[str], str | None] | None = None

    # -- observers -----------------------------------------------------------

    def subscribe(self, callback: Observer, extension: str | None = None) -> typing.Callable[[], None]:
        """Call ``callback(event, call)`` for every event (of ``extension``'s calls only, if given),
        ``call`` being the event's call as a :class:`CallSnapshot` once the batch that raised the event
        was done: one snapshot per call per batch, shared by all of that call's events in it.
        Returns a function that unsubscribes."""
        subscription = _Subscription(callback, extension)
        self._subscriptions.append(subscription)

        def unsubscribe() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

        return unsubscribe

    @contextlib.contextmanager
    def _batch(self) -> typing.Iterator[None]:
        """Hold events back until the outermost entry point is done, so that observers (who may
        issue commands of their own) always see the registry in a consistent state."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._close_batch()

    def _emit(self, event: ev.CallEvent, call: Call) -> None:
        self._pending.append((event, call))
        if self._depth == 0:
            self._close_batch()

    def _close_batch(self) -> None:
        """The batch is done: pair each of its events with its call's snapshot (taken once per call,
        now), queue them, and deliver. A batch started by an observer's command closes while the
        queue is delivered: its events join the queue behind, with snapshots taken after that command."""
        if self._pending:
            pending, self._pending = self._pending, []
            snapshots: dict[Call, CallSnapshot] = {}
            now = self._clock.seconds()
            for event, call in pending:
                snapshot = snapshots.get(call)
                if snapshot is None:
                    snapshot = snapshots[call] = call.snapshot(now)
                self._queue.append((event, snapshot))
        self._dispatch()

    def _dispatch(self) -> None:
        """Deliver queued events in order; events raised meanwhile by observers' commands queue up behind."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._queue:
                self._deliver(*self._queue.popleft())
        finally:
            self._dispatching = False

    def _deliver(self, event: ev.CallEvent, snapshot: CallSnapshot) -> None:
        for subscription in list(self._subscriptions):
            if subscription.extension is not None and subscription.extension != event.extension:
                continue
            try:
                subscription.callback(event, snapshot)
            except Exception:
                log.failure("observer {observer!r} failed on {event} of call {call_id}",
                            observer=subscription.callback, event=event.type, call_id=event.call_id)

    def _event(self, cls: type[ev.CallEvent], call: Call, leg: Leg | None = None, **fields: typing.Any) -> None:
        self._emit(cls(call_id=call.call_id, extension=call.extension, at=self._clock.seconds(),
                       leg_id=leg.leg_id if leg is not None else None, **fields), call)

    # -- queries -------------------------------------------------------------

    def _snapshot(self, call: Call) -> CallSnapshot:
        return call.snapshot(self._clock.seconds())

    def calls(self, include_released: bool = False) -> list[CallSnapshot]:
        """Live calls (and released ones still retained, if asked), oldest first."""
        return [self._snapshot(c) for c in self._calls.values() if include_released or not c.ended]

    def call(self, call_id: str) -> CallSnapshot:
        """One call, live or retained; raises UnknownCall."""
        return self._snapshot(self._find(call_id))

    def calls_for(self, extension_id: str) -> list[CallSnapshot]:
        """The extension's calls, live and retained."""
        return [self._snapshot(c) for c in self._calls.values() if c.extension == extension_id]

    def active_call_for(self, extension_id: str) -> CallSnapshot | None:
        """The extension's live call, if any."""
        call = self._own_live_call(extension_id)
        return self._snapshot(call) if call is not None else None

    @property
    def extensions(self) -> list[str]:
        return list(self._extensions)

    def status(self) -> dict[str, typing.Any]:
        """Counts for the admin status page."""
        states = collections.Counter(c.state.value for c in self._calls.values() if not c.ended)
        return {"live_calls": sum(states.values()), "by_state": dict(states),
                "retained_calls": sum(1 for c in self._calls.values() if c.ended)}

    def leg_states(self) -> collections.Counter[str]:
        """State -> number of legs of live calls (for metrics)."""
        return collections.Counter(leg.state.value for c in self._calls.values() if not c.ended for leg in c.legs)

    def _find(self, call_id: str) -> Call:
        try:
            return self._calls[call_id]
        except KeyError:
            raise UnknownCall(call_id) from None

    def _checked(self, call_id: str, command: str) -> Call:
        """The call, if ``command`` is legal in its state (UnknownCall / IllegalState otherwise)."""
        call = self._find(call_id)
        next_state(call.state, command)
        return call

    # -- commands ------------------------------------------------------------

    def _count_command(self, result: _R, name: str) -> _R:
        if self._on_command is not None:
            outcome = "ok" if not isinstance(result, Failure) else getattr(result.value, "code", "error")
            self._on_command(name, outcome)
        return result

    @_command("originate")
    def originate(self, extension_id: str, number: str, *, attributes: Attributes | None = None,
                  if_busy: str = "refuse", by: str = "api") -> CallSnapshot | defer.Deferred[CallSnapshot]:
        """Click-to-dial: ring the extension's phone; when it answers, dial ``number`` and bridge.

        While the extension has a live call of its own, ``if_busy`` says what happens: ``refuse``
        (ExtensionBusy) or ``replace`` (that call is hung up, cause normal, ``hangup_by`` ``by``,
        then the dial goes out). Everything else is checked before a call is replaced, so a dial
        that cannot go out never costs the extension its call."""
        self._check_open("originate")
        if if_busy not in IF_BUSY:
            raise InvalidArgument(f"if_busy must be one of {', '.join(IF_BUSY)}, not {if_busy!r}")
        ext = self._extension(extension_id)
        target = self._destination(number)
        if target.extension == ext.id:
            raise InvalidArgument(f"extension {ext.id} cannot call itself")
        current = self._own_live_call(ext.id) if if_busy == "replace" else None
        for busy in {extension_id, target.extension}:
            if busy is not None:
                self._check_free(busy, besides=current)
        if current is None:
            return self._place(ext, target, number, attributes)
        log.info("extension {extension}: ending call {call_id} to dial {number} (if_busy replace, by {by})",
                 extension=ext.id, call_id=current.call_id, number=number, by=by)
        ended = self._end_call(current, Cause.NORMAL, by)
        return ended.addCallback(lambda _: self._place(ext, target, number, attributes))

    @_batched
    def _place(self, ext: ExtensionEntry, target: _Destination, number: str,
               attributes: Attributes | None) -> CallSnapshot:
        """originate's dial, once the extension (and a target extension) are free."""
        self._check_open("originate")
        for busy in {ext.id, target.extension}:
            if busy is not None:
                self._check_free(busy)
        attributes = dict(attributes or {})
        call = self._new_call(extension=ext.id, direction=OUTBOUND, caller=ext.id, number=number, attributes=attributes)
        try:
            self._dial(call, DEVICE, self._device(ext), caller_id=number)
        except CallError:
            self._end_call(call, Cause.FAILED, "gateway")
            raise
        return self._snapshot(call)

    @_batched
    def incoming(self, driver_leg: IDriverLeg, *, caller_id: str | None, did: str | None,
                 attributes: Attributes | None = None) -> ILegEvents:
        """A driver delivers a new inbound leg; returns the leg's ILegEvents.

        The call is routed by ``did``: to an extension (its phone rings), to a
        media app (answered, the app started), or nowhere (hung up, cause no_route).
        """
        given = {"caller_id": caller_id, "did": did, "attributes": dict(attributes or {})}
        safe, changed = sanitise(given)
        if changed:
            # Adapters refuse bad text at their wire boundary; this is the core's own line, so that no
            # driver can put into a call what a log, the API or the store could not encode.
            _warn_unsafe(driver_leg.driver, given, safe)
        caller_id, did, attributes = safe["caller_id"], safe["did"], safe["attributes"]
        target = self._router.route(did) if self._router is not None and not self._closing else None
        call = self._new_call(
            extension=target.name if target is not None and target.kind == "extension" else None,
            direction=INBOUND, caller=caller_id, number=did, did=did, attributes=attributes,
        )
        if target is not None and target.kind == "app":
            call.app, call.app_arg = target.name, target.arg
        leg = self._add_leg(call, PARTY, INBOUND, caller_id, driver_leg.driver, RINGING,
                            caller_id=caller_id, attributes={"did": did, **attributes})
        leg.driver_leg = driver_leg
        leg.alerting_at = leg.started_at
        self._event(ev.LegRinging, call, leg)
        if self._closing:
            self._end_call(call, Cause.SHUTDOWN, "gateway")
        elif target is None:
            log.warn("no route for DID {did} (call {call_id} from {caller}); hung up", did=did,
                     call_id=call.call_id, caller=caller_id)
            self._end_call(call, Cause.NO_ROUTE, "gateway")
        elif call.app is not None:
            self._answer_inbound(leg)
        else:
            self._ring_extension(call, target.name)
        return _LegEvents(self, leg)

    def _ring_extension(self, call: Call, extension_id: str) -> None:
        ext = self._extensions.get(extension_id)
        if ext is None:
            log.error("call {call_id}: routed to unknown extension {extension}", call_id=call.call_id,
                      extension=extension_id)
            self._end_call(call, Cause.NO_ROUTE, "gateway")
            return
        if self._busy_call(ext.id, besides=call) is not None or self._busy_elsewhere(ext.id) is not None:
            self._end_call(call, Cause.BUSY, "gateway")
            return
        try:
            self._dial(call, DEVICE, self._device(ext), caller_id=call.caller, state=RINGING)
        except CallError:
            self._end_call(call, Cause.FAILED, "gateway")

    @_command("answer")
    def answer(self, call_id: str) -> CallSnapshot | defer.Deferred[CallSnapshot]:
        """Answer an alerting call (or pick up a click-to-dial's own phone) at the extension's phone."""
        call = self._checked(call_id, "answer")
        device = call.device
        if device is None:
            raise IllegalState("answer", "not an extension's call")
        if device.state not in (RINGING, DIALING):
            raise IllegalState("answer", device.state.value, "extension's phone")
        d = self._driver_op(device, "answer", device.driver_leg.answer)
        d.addCallback(lambda _: self._leg_answered(device))
        return d.addCallback(lambda _: self._snapshot(call))

    @_command("reject")
    def reject(self, call_id: str, *, by: str = "api") -> defer.Deferred[CallSnapshot]:
        """Refuse an alerting inbound call (cause rejected)."""
        call = self._checked(call_id, "reject")
        return self._end_call(call, Cause.REJECTED, by).addCallback(lambda _: self._snapshot(call))

    @_command("cancel")
    def cancel(self, call_id: str, *, by: str = "api") -> defer.Deferred[CallSnapshot]:
        """Give up a call nobody has answered yet: an alerting inbound call is refused (as
        :meth:`reject`: cause rejected), a call still dialling out is hung up (cause normal).
        IllegalState once the call is talking, held or over."""
        call = self._checked(call_id, "cancel")
        cause = Cause.REJECTED if call.state is RINGING else Cause.NORMAL
        return self._end_call(call, cause, by).addCallback(lambda _: self._snapshot(call))

    @_command("hangup")
    def hangup(self, call_id: str, *, by: str = "api") -> defer.Deferred[CallSnapshot]:
        """End the call: every leg is hung up (cause normal)."""
        call = self._checked(call_id, "hangup")
        return self._end_call(call, Cause.NORMAL, by).addCallback(lambda _: self._snapshot(call))

    @_command("hold")
    def hold(self, call_id: str) -> CallSnapshot | defer.Deferred[CallSnapshot]:
        """Put the remote parties on hold (idempotent)."""
        return self._set_held(call_id, "hold", TALKING, ev.LegHeld)

    @_command("retrieve")
    def retrieve(self, call_id: str) -> CallSnapshot | defer.Deferred[CallSnapshot]:
        """Take the remote parties off hold (idempotent)."""
        return self._set_held(call_id, "retrieve", HELD, ev.LegRetrieved)

    def _set_held(self, call_id: str, command: str, from_state: LegState, event: type[ev.CallEvent]) -> CallSnapshot:
        call = self._checked(call_id, command)
        other = self._linked(call) if command == "retrieve" else None
        if other is not None:
            # the phone talks to one call of a consult pair at a time: retrieving one holds the other
            if other.state not in (TALKING, HELD):
                raise IllegalState(command, other.state.value, "consult call")
            self._hold_parties(other)
        for leg in call.parties:
            if leg.state is from_state:
                leg.state = next_state(leg.state, command, "leg")
                self._event(event, call, leg)
        self._progress(call)
        return self._snapshot(call)

    @_command("mute")
    def mute(self, call_id: str) -> CallSnapshot | defer.Deferred[CallSnapshot]:
        """Stop forwarding the extension's audio (idempotent)."""
        return self._set_muted(call_id, "mute", True, ev.LegMuted)

    @_command("unmute")
    def unmute(self, call_id: str) -> CallSnapshot | defer.Deferred[CallSnapshot]:
        return self._set_muted(call_id, "unmute", False, ev.LegUnmuted)

    def _set_muted(self, call_id: str, command: str, muted: bool, event: type[ev.CallEvent]) -> CallSnapshot:
        call = self._checked(call_id, command)
        device = call.device
        if device is None:
            raise IllegalState(command, "not an extension's call")
        next_state(device.state, command, "extension's phone")
        # a primary and its consult share the phone: its mute flag is both calls'
        other = self._linked(call)
        for each in (call, other):
            phone = each.device if each is not None else None
            if each is not None and phone is not None and phone.muted != muted:
                phone.muted = muted
                self._event(event, each, phone)
                self._progress(each)
        return self._snapshot(call)

    @_command("transfer")
    def transfer(self, call_id: str, destination: str, *, by: str = "api") -> CallSnapshot:
        """Blind transfer: dial ``destination`` (an extension id or a number); when it answers, the
        remote parties talk to it in a new call and this one ends (cause transferred). Fires once
        dialled; a failure arrives as a TransferFailed event and leaves the call as it was."""
        return self._consult(call_id, destination, "transfer", by)

    @_command("conference")
    def conference(self, call_id: str, destination: str, *, by: str = "api") -> CallSnapshot:
        """Dial ``destination``; when it answers it is mixed into the call (PartyAdded). Fires once
        dialled; a failure arrives as a ConferenceFailed event and leaves the call as it was."""
        return self._consult(call_id, destination, "conference", by)

    def _consult(self, call_id: str, destination: str, kind: str, by: str) -> CallSnapshot:
        call = self._checked(call_id, kind)
        if self._linked(call) is not None:
            raise IllegalState(kind, "in a consult (transfer_to_consult or conference_in_consult joins it)")
        if call.pending is not None:
            raise IllegalState(kind, f"already dialling {call.pending.number} for a {call.pending.pending}")
        target = self._destination(destination)
        if target.extension is not None:
            if target.extension == call.extension:
                raise InvalidArgument(f"cannot {kind} call {call_id} to its own extension {target.extension}")
            self._check_free(target.extension)
        caller_id = call.parties[0].number if call.parties else None
        call.pending = self._dial(call, PARTY, target, caller_id=caller_id, pending=kind)
        call.pending_by = by
        return self._snapshot(call)

    # -- consult: attended transfer, alternate, conference in consult (docs/core.md) -----------

    @_command("consult")
    def consult(self, call_id: str, number: str, *, by: str = "api") -> CallSnapshot:
        """Hold the primary's remote parties and dial ``number`` for the same extension as a consult
        call linked to it (sharing the extension's phone); fires with the consult's snapshot."""
        self._check_open("consult")
        call = self._checked(call_id, "consult")
        device = call.device
        if device is None or call.extension is None or call.app is not None:
            raise IllegalState("consult", "not an extension's call")
        if device.state is not TALKING:
            raise IllegalState("consult", device.state.value, "extension's phone")
        if call.consult_of is not None and self._linked(call) is not None:
            raise IllegalState("consult", f"a consult of call {call.consult_of}")
        if self._linked(call) is not None:
            raise IllegalState("consult", f"consulting already (call {call.consult})")
        if call.pending is not None:
            raise IllegalState("consult", f"dialling {call.pending.number} for a {call.pending.pending}")
        target = self._destination(number)
        if target.extension is not None:
            if target.extension == call.extension:
                raise InvalidArgument(f"cannot consult from call {call_id} to its own extension {target.extension}")
            self._check_free(target.extension)
        self._hold_parties(call)
        consult = self._new_call(extension=call.extension, direction=OUTBOUND, caller=call.extension,
                                 number=target.number, consult_of=call.call_id)
        phone = self._add_leg(consult, DEVICE, OUTBOUND, device.number, device.driver, TALKING,
                              caller_id=target.number, name=device.name, attributes=dict(device.attributes),
                              muted=device.muted)
        phone.driver_leg = device.driver_leg  # the same phone, already off-hook: nothing is dialled
        phone.answered_at = phone.started_at
        call.consults.append(consult.call_id)
        try:
            self._dial(consult, PARTY, target)
        except CallError:
            self._end_call(consult, Cause.FAILED, "gateway")
            raise
        call.consult = consult.call_id
        log.info("call {call_id}: extension {extension} consults {number} in call {consult_id} (by {by})",
                 call_id=call.call_id, extension=call.extension, number=target.number,
                 consult_id=consult.call_id, by=by)
        self._event(ev.ConsultStarted, call, consult_id=consult.call_id, number=target.number)
        return self._snapshot(consult)

    @_command("alternate")
    def alternate(self, call_id: str, *, by: str = "api") -> CallSnapshot:
        """Swap which of a primary and its answered consult is held (both held: ``call_id`` is retrieved)."""
        call = self._checked(call_id, "alternate")
        primary, consult = self._pair(call, "alternate")
        talking = next((c for c in (primary, consult) if any(leg.state is TALKING for leg in c.parties)), None)
        if talking is not None:
            self._hold_parties(talking)
        self._retrieve_parties(call if talking is None else (consult if talking is primary else primary))
        return self._snapshot(call)

    @_command("transfer_to_consult")
    def transfer_to_consult(self, call_id: str, *, by: str = "api") -> defer.Deferred[CallSnapshot]:
        """The primary's parties and the consulted party go on in a new call nobody's extension owns;
        both of the agent's calls end (cause transferred). Fires with the primary's snapshot."""
        call = self._checked(call_id, "transfer_to_consult")
        primary, consult = self._pair(call, "transfer_to_consult")
        moving = [*primary.parties, *consult.parties]
        # a consulted extension takes the call over (its phone becomes the call's device), as in a blind
        # transfer to an extension; a consulted number leaves it nobody's
        target = consult.parties[0] if len(consult.parties) == 1 else None
        extension = target.attributes.get("extension") if target is not None else None
        primary.consult = None
        self._event(ev.ConsultEnded, primary, consult_id=consult.call_id, outcome="transferred",
                    cause=str(Cause.TRANSFERRED))
        self._detach(primary, primary.parties, Cause.TRANSFERRED)
        ended = [self._end_call(primary, Cause.TRANSFERRED, by)]
        self._detach(consult, consult.parties, Cause.TRANSFERRED)
        ended.append(self._end_call(consult, Cause.TRANSFERRED, by))
        successor = self._new_call(extension=extension, direction=primary.direction, caller=primary.caller,
                                   number=primary.number, did=primary.did,
                                   attributes={**primary.attributes, "transferred_from": primary.call_id,
                                               "consult_id": consult.call_id})
        if target is not None and extension is not None:
            target.role = DEVICE
        self._adopt(successor, moving)
        self._retrieve_parties(successor)
        return defer.DeferredList(ended).addCallback(lambda _: self._snapshot(primary))

    @_command("conference_in_consult")
    def conference_in_consult(self, call_id: str, *, by: str = "api") -> defer.Deferred[CallSnapshot]:
        """The consulted party joins the primary, whose held parties are retrieved: a three-way mix; the
        consult call ends (cause conferenced). Fires with the primary's snapshot."""
        call = self._checked(call_id, "conference_in_consult")
        primary, consult = self._pair(call, "conference_in_consult")
        joining = consult.parties
        primary.consult = None
        self._detach(consult, joining, Cause.CONFERENCED)
        ended = self._end_call(consult, Cause.CONFERENCED, by)
        self._event(ev.ConsultEnded, primary, consult_id=consult.call_id, outcome="conferenced",
                    cause=str(Cause.CONFERENCED))
        self._adopt(primary, joining)
        self._retrieve_parties(primary, progress=False)
        for leg in joining:
            self._event(ev.PartyAdded, primary, leg, number=leg.number, name=leg.name)
        self._progress(primary)
        return ended.addCallback(lambda _: self._snapshot(primary))

    def _linked(self, call: Call) -> Call | None:
        """The other live call of a primary/consult pair ``call`` is in, if any."""
        if call.consult is not None:
            consult = self._calls.get(call.consult)
            return consult if consult is not None and not consult.ended else None
        if call.consult_of is not None:
            primary = self._calls.get(call.consult_of)
            if primary is not None and not primary.ended and primary.consult == call.call_id:
                return primary
        return None

    def _pair(self, call: Call, command: str) -> tuple[Call, Call]:
        """(primary, consult) of the live pair ``call`` is in, the consulted party having answered."""
        other = self._linked(call)
        if other is None:
            raise IllegalState(command, "in no consult")
        primary, consult = (call, other) if call.consult is not None else (other, call)
        if consult.state not in (TALKING, HELD):
            raise IllegalState(command, consult.state.value, "consult call")
        return primary, consult

    def _phone_elsewhere(self, call: Call, leg: Leg) -> bool:
        """Whether ``leg`` (a device leg of ``call``) shares its phone with a live leg of another call
        (a primary and its consult): ending ``call`` must not hang that phone up."""
        if leg.role != DEVICE or leg.driver_leg is None or (call.consult_of is None and not call.consults):
            return False
        return self._sharing_leg(call, leg) is not None

    def _sharing_leg(self, call: Call, leg: Leg) -> Leg | None:
        """The live device leg of another call of the extension that carries ``leg``'s phone."""
        for other in self._calls.values():
            if other is call or other.ended or other.extension != call.extension:
                continue
            for candidate in other.legs:
                if candidate.role == DEVICE and candidate.live and candidate.driver_leg is leg.driver_leg:
                    return candidate
        return None

    def _current_leg(self, leg: Leg) -> Leg:
        """Where a driver's report about ``leg`` belongs: ``leg``, or for the phone of a primary that
        ended during a consult, the consult call's device leg now carrying that phone."""
        call = leg.call
        if leg.live or leg.role != DEVICE or leg.driver_leg is None or not (call.consults or call.consult_of):
            return leg
        return self._sharing_leg(call, leg) or leg

    def _hold_parties(self, call: Call) -> None:
        for leg in call.parties:
            if leg.state is TALKING:
                leg.state = next_state(leg.state, "hold", "leg")
                self._event(ev.LegHeld, call, leg)
        self._progress(call)

    def _retrieve_parties(self, call: Call, progress: bool = True) -> None:
        for leg in call.parties:
            if leg.state is HELD:
                leg.state = next_state(leg.state, "retrieve", "leg")
                self._event(ev.LegRetrieved, call, leg)
        if progress:
            self._progress(call)

    def _detach(self, call: Call, legs: list[Leg], cause: Cause) -> None:
        """``legs`` leave ``call`` for another call: ``call`` keeps an ended copy of each (for its CDR)."""
        now = self._clock.seconds()
        for leg in legs:
            left = attrs.evolve(leg, state=next_state(leg.state, "release", "leg"), ended_at=now,
                                cause=str(cause), driver_leg=None)
            call.legs[call.legs.index(leg)] = left
            self._event(ev.LegEnded, call, left, cause=str(cause))

    def _adopt(self, call: Call, legs: list[Leg]) -> None:
        """``legs`` (detached from their calls) join ``call``."""
        for leg in legs:
            leg.call = call
            call.legs.append(leg)
            self._announce_leg(call, leg)

    @_command("remove_party")
    def remove_party(self, call_id: str, number: str, *, by: str = "api") -> defer.Deferred[CallSnapshot]:
        """Hang up one remote party; the call goes on while another remains."""
        call = self._checked(call_id, "remove_party")
        leg = next((p for p in call.parties if p.number == number), None)
        if leg is None:
            raise UnknownParty(call_id, number)
        d = self._hangup_driver(leg, Cause.NORMAL)
        self._release(leg, Cause.NORMAL)
        self._party_left(call, leg, Cause.NORMAL, by)
        return d.addCallback(lambda _: self._snapshot(call))

    @_command("dtmf")
    def send_dtmf(self, call_id: str, digits: str, duration_ms: int = 100,
                  gap_ms: int = 50) -> defer.Deferred[CallSnapshot]:
        """Send ``digits`` to the remote parties one after another; fires when the last tone ended."""
        digits = str(digits).upper()
        if not is_dtmf_sequence(digits) or len(digits) > MAX_DTMF_DIGITS:
            raise InvalidArgument(f"DTMF digits must be 1-{MAX_DTMF_DIGITS} of 0-9 * # A-D, not {digits!r}")
        if not (isinstance(duration_ms, int) and 20 <= duration_ms <= 1000):
            raise InvalidArgument(f"DTMF duration must be 20-1000 ms, not {duration_ms!r}")
        if not (isinstance(gap_ms, int) and 0 <= gap_ms <= 1000):
            raise InvalidArgument(f"DTMF gap must be 0-1000 ms, not {gap_ms!r}")
        call = self._checked(call_id, "dtmf")
        lock: defer.DeferredLock = call.dtmf_lock
        return lock.run(self._play_digits, call, digits, duration_ms, gap_ms)

    @defer.inlineCallbacks
    def _play_digits(self, call: Call, digits: str, duration_ms: int,
                     gap_ms: int) -> typing.Generator[defer.Deferred[typing.Any], object, CallSnapshot]:
        for index, digit in enumerate(digits):
            if index:
                yield task.deferLater(self._clock, gap_ms / 1000)
            next_state(call.state, "dtmf")
            sends = [self._driver_op(leg, "send_dtmf", leg.driver_leg.send_dtmf, digit, duration_ms)
                     for leg in call.parties]
            yield defer.gatherResults(sends, consumeErrors=True).addErrback(_unwrap_first_error)
            call.dtmf_count += 1
        return self._snapshot(call)

    @_command("flush")
    def flush(self, call_id: str) -> CallSnapshot | defer.Deferred[CallSnapshot]:
        """Barge-in: discard the audio queued toward the remote parties, in the gateway and, where the
        driver can, at the far end (OptimaCCS ``interrupt``)."""
        call = self._checked(call_id, "flush")
        for leg in call.parties:
            leg.driver_leg.flush()
        return self._snapshot(call)

    @_command("dispose")
    def dispose(self, call_id: str, *, by: str = "api") -> defer.Deferred[None]:
        """Forget a call now (a live one is hung up first)."""
        call = self._find(call_id)
        return self._end_call(call, Cause.NORMAL, by).addCallback(lambda _: self._forget(call_id))

    def shutdown(self, grace: float) -> defer.Deferred[None]:
        """Refuse new calls, give live ones ``grace`` seconds, end the rest (cause shutdown), then
        settle the CDR deliveries. Fires with None."""
        self._closing = True
        drained: defer.Deferred[None] = defer.Deferred()
        self._drained.append(drained)
        if self._shutdown_timer is None:
            self._shutdown_timer = self._clock.callLater(grace, self._end_all, Cause.SHUTDOWN)
        self._check_drained()
        drained.addCallback(lambda _: self._settle())
        return drained

    @_batched
    def _end_all(self, cause: Cause) -> None:
        self._shutdown_timer = None
        self.end_live_calls(cause)

    @_batched
    def end_live_calls(self, cause: Cause, by: str = "gateway") -> int:
        """End every live call now with ``cause`` (a cluster node's drain: ``drain_forced``), without
        closing the registry; returns how many were ended."""
        live = [c for c in self._calls.values() if not c.ended]
        for call in live:
            self._end_call(call, cause, by)
        return len(live)

    def _check_drained(self) -> None:
        if not self._closing or any(not c.ended for c in self._calls.values()):
            return
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
            self._shutdown_timer = None
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)

    def _settle(self) -> defer.Deferred[None]:
        for timer in self._forget_timers.values():
            timer.cancel()
        self._forget_timers.clear()
        sinks = [s.close() for s in (self._cdrs, self._provider_cdrs) if s is not None]
        return defer.DeferredList(sinks).addCallback(lambda _: None)

    # -- building calls and legs ----------------------------------------------

    def _check_open(self, command: str) -> None:
        if self._closing:
            raise IllegalState(command, "shutting down", "gateway")

    def _extension(self, extension_id: str) -> ExtensionEntry:
        try:
            return self._extensions[extension_id]
        except KeyError:
            raise UnknownExtension(extension_id) from None

    def _device(self, ext: ExtensionEntry) -> _Destination:
        driver, _, address = ext.device.partition(":")
        return _Destination(driver, address, ext.id, ext.name, ext.id)

    def _destination(self, destination: str | None) -> _Destination:
        """An extension id rings that extension's phone; anything else must be a number for [pbx] driver."""
        destination = str(destination or "")  # refused, not repaired: " 555\n" is no number
        ext = self._extensions.get(destination)
        if ext is not None:
            return self._device(ext)
        if not is_dial_number(destination):
            raise InvalidArgument(f"{destination!r} is neither an extension nor a phone number")
        return _Destination(self._pbx_driver, destination, destination)

    def _busy_call(self, extension_id: str, besides: Call | None = None) -> Call | None:
        """The live call the extension (or its phone, as a party elsewhere) is in."""
        for call in self._calls.values():
            if call.ended or call is besides:
                continue
            if call.extension == extension_id or any(
                leg.live and leg.attributes.get("extension") == extension_id for leg in call.legs
            ):
                return call
        return None

    def _check_free(self, extension_id: str, besides: Call | None = None) -> None:
        busy = self._busy_call(extension_id, besides=besides)
        if busy is not None:
            raise ExtensionBusy(extension_id, busy.call_id)
        elsewhere = self._busy_elsewhere(extension_id)
        if elsewhere is not None:
            raise ExtensionBusy(extension_id, elsewhere)

    def _busy_elsewhere(self, extension_id: str) -> str | None:
        return self.busy_elsewhere(extension_id) if self.busy_elsewhere is not None else None

    def _own_live_call(self, extension_id: str) -> Call | None:
        """The extension's own live call (the one ``active_call_for`` shows), if any."""
        return next((c for c in self._calls.values() if c.extension == extension_id and not c.ended), None)

    def _new_call(self, **fields: typing.Any) -> Call:
        call = Call(call_id=secrets.token_hex(8), created_at=self._clock.seconds(), **fields)
        call.dtmf_lock = defer.DeferredLock()
        self._calls[call.call_id] = call
        self._announce(call)
        return call

    def _announce(self, call: Call) -> None:
        self._event(ev.CallCreated, call, direction=call.direction, caller=call.caller, number=call.number,
                    did=call.did, attributes=dict(call.attributes))

    def _add_leg(self, call: Call, role: str, direction: str, number: str | None, driver: str, state: LegState,
                 **fields: typing.Any) -> Leg:
        leg = Leg(leg_id=secrets.token_hex(8), call=call, role=role, direction=direction, number=number,
                  driver=driver, state=state, started_at=self._clock.seconds(), **fields)
        call.legs.append(leg)
        self._announce_leg(call, leg)
        return leg

    def _announce_leg(self, call: Call, leg: Leg) -> None:
        self._event(ev.LegCreated, call, leg, role=leg.role, direction=leg.direction, number=leg.number,
                    driver=leg.driver, state=leg.state)

    def _dial(self, call: Call, role: str, target: _Destination, *, caller_id: str | None = None,
              pending: str | None = None, state: LegState = DIALING) -> Leg:
        """Add a leg and dial it; on a refused dial the leg ends (cause failed) and DriverError is raised."""
        leg = self._add_leg(call, role, OUTBOUND, target.number, target.driver, state, caller_id=caller_id,
                            name=target.name, attributes=target.attributes, pending=pending)
        driver = self._drivers.get(target.driver)
        try:
            if driver is None:
                raise DriverError(target.driver, "no such driver is configured")
            leg.driver_leg = driver.dial(target.address, _LegEvents(self, leg), caller_id=caller_id,
                                         attributes=dict(target.attributes))
        except Exception as e:
            error = e if isinstance(e, CallError) else DriverError(target.driver, f"dial failed: {e}")
            log.warn("call {call_id}: dialling {number} through {driver} failed: {error}", call_id=call.call_id,
                     number=target.number, driver=target.driver, error=error)
            self._event(ev.LegFailed, call, leg, reason=str(error))
            self._release(leg, Cause.FAILED)
            raise error from None
        self._event(ev.LegDialing, call, leg)
        return leg

    def _driver_op(self, leg: Leg, what: str, operation: typing.Callable[..., object],
                   *args: object) -> defer.Deferred[typing.Any]:
        """Run a driver operation; anything but a CallError it fails with becomes a DriverError."""

        def as_driver_error(failure: Failure) -> Failure:
            if failure.check(CallError):
                return failure
            log.failure("driver {driver}: {what} on leg {leg_id} failed", failure, driver=leg.driver,
                        what=what, leg_id=leg.leg_id)
            raise DriverError(leg.driver, f"{what} failed: {failure.getErrorMessage()}")

        return defer.maybeDeferred(operation, *args).addErrback(as_driver_error)

    def _hangup_driver(self, leg: Leg, cause: Cause) -> defer.Deferred[typing.Any]:
        """Tell the driver to end the leg; a failure is logged, never passed on (the leg is over for us)."""
        if leg.driver_leg is None:
            return defer.succeed(None)
        d = self._driver_op(leg, "hangup", leg.driver_leg.hangup, str(cause))
        return d.addErrback(lambda f: log.warn("call {call_id}: {error}", call_id=leg.call.call_id,
                                               error=f.getErrorMessage()))

    def _release(self, leg: Leg, cause: Cause) -> None:
        leg.state = next_state(leg.state, "release", "leg")
        leg.ended_at = self._clock.seconds()
        leg.cause = str(cause)
        leg.pending = None
        self._event(ev.LegEnded, leg.call, leg, cause=str(cause))

    def _progress(self, call: Call) -> None:
        """After any change: note when the conversation started, and fit the media to the legs."""
        if call.answered_at is None and call.state is TALKING:
            call.answered_at = self._clock.seconds()
        if self._media is not None and not self._media.update(call) and call.app is not None and not call.ended:
            self._end_call(call, Cause.FAILED, "gateway")

    def _answer_inbound(self, leg: Leg) -> None:
        """Accept an inbound leg at its driver; a refusal ends the call (cause failed)."""
        d = self._driver_op(leg, "answer", leg.driver_leg.answer)
        d.addCallback(lambda _: self._leg_answered(leg))

        def refused(failure: Failure) -> None:
            log.warn("call {call_id}: answering the caller failed: {error}", call_id=leg.call.call_id,
                     error=failure.getErrorMessage())
            with self._batch():
                self._end_call(leg.call, Cause.FAILED, "gateway")

        d.addErrback(refused)

    # -- what drivers report ----------------------------------------------------

    def _leg_ringing(self, leg: Leg) -> None:
        if leg.state in (RINGING, DIALING):
            if leg.alerting_at is None:
                leg.alerting_at = self._clock.seconds()
            self._event(ev.LegRinging, leg.call, leg)

    @_batched
    def _leg_answered(self, leg: Leg) -> None:
        if leg.state not in (RINGING, DIALING) or leg.call.ended:
            return
        call = leg.call
        leg.state = next_state(leg.state, "answered", "leg")
        leg.answered_at = self._clock.seconds()
        self._event(ev.LegAnswered, call, leg)
        if leg.pending == "conference":
            self._conference_answered(call, leg)
        elif leg.pending == "transfer":
            self._transfer_answered(call, leg)
            return
        elif leg.role == DEVICE:
            self._device_answered(call)
        self._progress(call)

    def _device_answered(self, call: Call) -> None:
        """The extension picked up: accept the waiting caller, or dial a click-to-dial's number."""
        if call.direction == INBOUND:
            for leg in call.parties:
                if leg.state is RINGING:
                    self._answer_inbound(leg)
        elif not call.parties:
            try:
                self._dial(call, PARTY, self._destination(call.number),
                           caller_id=call.attributes.get("caller_id"))
            except CallError:
                self._end_call(call, Cause.FAILED, "gateway")

    def _leg_over(self, leg: Leg, cause: Cause, reason: str | None = None) -> None:
        """The driver ended the leg (busy, no answer, failed, hung up)."""
        if not leg.live:
            return
        call = leg.call
        if cause is Cause.BUSY:
            self._event(ev.LegBusy, call, leg)
        elif cause is Cause.FAILED:
            self._event(ev.LegFailed, call, leg, reason=reason or "failed")
        kind = leg.pending
        self._release(leg, cause)
        if kind is not None:
            call.pending = None
            why = _PENDING_REASONS.get(cause) or f"failed: {reason}"
            self._event(_CONSULT_EVENTS[kind], call, leg, reason=why)
        elif leg.role == DEVICE:
            # the phone is gone: so are both calls of a consult it carried
            linked = self._linked(call)
            self._end_call(call, Cause.NORMAL if cause is Cause.REMOTE_HANGUP else cause, "extension")
            if linked is not None:
                self._end_call(linked, Cause.NORMAL if cause is Cause.REMOTE_HANGUP else cause, "extension")
        else:
            self._party_left(call, leg, cause, "remote")

    def _leg_hung_up(self, leg: Leg, cause: str) -> None:
        try:
            cause = Cause(cause)
        except ValueError:
            log.warn("driver {driver} reported an unknown hangup cause {cause!r} on leg {leg_id}",
                     driver=leg.driver, cause=cause, leg_id=leg.leg_id)
            cause = Cause.REMOTE_HANGUP
        self._leg_over(leg, cause)

    def _party_left(self, call: Call, leg: Leg, cause: Cause, by: str) -> None:
        """A remote party is gone: the call ends when too few are left, else goes on without it."""
        needed = 1 if call.device is not None or call.app is not None else 2
        if len(call.parties) < needed:
            self._end_call(call, cause, by)
        else:
            self._event(ev.PartyRemoved, call, leg, number=leg.number)
            self._progress(call)

    def _leg_dtmf(self, leg: Leg, digit: object, duration_ms: int | None) -> None:
        digit = str(digit).upper()
        if len(digit) != 1 or not is_dtmf_sequence(digit):
            log.warn("driver {driver} reported an invalid DTMF digit {digit!r} on leg {leg_id}; ignored",
                     driver=leg.driver, digit=digit, leg_id=leg.leg_id)
            return
        if leg.live:
            leg.call.dtmf_count += 1
            self._event(ev.DtmfReceived, leg.call, leg, digit=digit, duration_ms=duration_ms)

    @_batched
    def app_finished(self, call_id: str) -> None:
        """A routed media app ended by itself (a prompt played out): so does the call. The media
        controller tells it, once wired to the registry (``MediaController.wire``)."""
        call = self._calls.get(call_id)
        if call is not None:
            self._end_call(call, Cause.NORMAL, "gateway")

    def _provider_cdr(self, leg: Leg, source: str, data: Attributes) -> None:
        if self._provider_cdrs is not None:
            self._provider_cdrs.write(leg.call.call_id, str(source), data)

    # -- transfer and conference ----------------------------------------------

    def _conference_answered(self, call: Call, leg: Leg) -> None:
        call.pending = leg.pending = None
        for party in call.parties:
            if party.state is HELD:
                party.state = next_state(party.state, "retrieve", "leg")
                self._event(ev.LegRetrieved, call, party)
        self._event(ev.PartyAdded, call, leg, number=leg.number, name=leg.name)

    def _transfer_answered(self, call: Call, target: Leg) -> None:
        """The remote parties and the answered target go on in a new call; this one ends, transferred."""
        moving = [*call.parties, target]
        call.pending = target.pending = None
        now = self._clock.seconds()
        for leg in moving:
            left = attrs.evolve(leg, state=next_state(leg.state, "release", "leg"), ended_at=now,
                                cause=str(Cause.TRANSFERRED), driver_leg=None)
            call.legs[call.legs.index(leg)] = left
            self._event(ev.LegEnded, call, left, cause=str(Cause.TRANSFERRED))
        self._end_call(call, Cause.TRANSFERRED, call.pending_by or "api")
        successor = self._new_call(extension=target.attributes.get("extension"), direction=call.direction,
                                   caller=call.caller, number=call.number, did=call.did,
                                   attributes={**call.attributes, "transferred_from": call.call_id})
        if successor.extension is not None:
            target.role = DEVICE
        for leg in moving:
            leg.call = successor
            if leg.state is HELD:
                leg.state = next_state(leg.state, "retrieve", "leg")
            successor.legs.append(leg)
            self._announce_leg(successor, leg)
        self._progress(successor)

    # -- ending -----------------------------------------------------------------

    def _end_call(self, call: Call, cause: Cause, by: str | None) -> defer.Deferred[None]:
        """Hang up every live leg, stop the media, publish CallEnded with the CDR; fires when the
        drivers have hung up."""
        if call.ended:
            return defer.succeed(None)
        if call.pending is not None:
            kind, call.pending = call.pending.pending, None
            assert kind is not None  # a leg dialled for a transfer or conference says which
            self._event(_CONSULT_EVENTS[kind], call, None, reason="the call ended")
        consult = self._linked(call) if call.consult is not None else None
        if consult is not None:
            # the primary ends first: the consult call goes on alone, with the phone
            call.consult = None
            self._event(ev.ConsultEnded, call, consult_id=consult.call_id, outcome="primary_ended", cause=str(cause))
        hangups = []
        for leg in call.live_legs:
            if not self._phone_elsewhere(call, leg):
                hangups.append(self._hangup_driver(leg, cause))
            self._release(leg, cause)
        call.ended_at = self._clock.seconds()
        call.cause, call.hangup_by = str(cause), by
        if self._media is not None:
            self._media.update(call)
        cdr = build_cdr(call, self._node)
        self._event(ev.CallEnded, call, cause=str(cause), hangup_by=by, cdr=cdr)
        primary = self._calls.get(call.consult_of) if call.consult_of is not None else None
        if primary is not None and primary.consult == call.call_id:
            # the consult ended (busy, no answer, failed, hung up, released): the primary stays as it was
            primary.consult = None
            self._event(ev.ConsultEnded, primary, consult_id=call.call_id, outcome="released", cause=str(cause))
        if self._cdrs is not None:
            self._cdrs.write(cdr)
        if not self._closing:
            self._forget_timers[call.call_id] = self._clock.callLater(self._retention, self._forget, call.call_id)
        self._check_drained()
        return defer.DeferredList(hangups).addCallback(lambda _: None)

    def _forget(self, call_id: str) -> None:
        timer = self._forget_timers.pop(call_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        call = self._calls.pop(call_id, None)
        if call is not None:
            # A call and its legs refer to each other (a cycle Python frees only at a full collection):
            # let go of the drivers' legs, which hold the connections, ports and buffers, at once. Not the
            # phone a live consult still carries: its reports reach the consult through this leg's driver
            # leg (_current_leg), so letting go of it would leave the consult deaf to the phone hanging up.
            for leg in call.legs:
                if not self._phone_elsewhere(call, leg):
                    leg.driver_leg = None
