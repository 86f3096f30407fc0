"""Fakes of the call core's door, shipped for adapters' and plugin authors' unit tests.

Like ``treq.testing.StubTreq``: test code that holds an
:class:`~gateway.core.interfaces.ICallControl` gets one that behaves like the
real core without a driver, a media plane or a clock to run, and without
mocking the core's internals.

- :class:`FakeCallControl`: an in-memory :class:`ICallControl`. Its calls and
  legs are the core's own model (:mod:`gateway.core.model`), moved through the
  core's one transition table (:mod:`gateway.core.states`), so snapshots,
  derived call states and typed errors are the real ones; commands emit the
  same events (:mod:`gateway.core.events`), in the same order, each with its
  call's snapshot taken once per call per batch, as the registry does. What
  the far end does is up to the test: :meth:`~FakeCallControl.ring_inbound`,
  :meth:`~FakeCallControl.phone_answers`, :meth:`~FakeCallControl.party_answers`,
  :meth:`~FakeCallControl.party_hangs_up`... A dialled leg reports ringing by
  itself, right after the command that dialled it (a real driver does so on
  the next turn of the reactor). Every command is noted in
  :attr:`~FakeCallControl.commands`; :meth:`~FakeCallControl.fail_next`
  scripts a failure. The same contract tests run against it and the real
  registry (``tests/core/test_call_control_contract.py``).
- :class:`CountingCalls`: wraps any ICallControl and notes each query asked
  and each command given, to hold an adapter to diffing the snapshots it is
  handed instead of asking the core again.

What the fake leaves out: audio (``flush`` and ``send_dtmf`` are only noted;
DTMF fires at once), routing (an inbound call is rung straight to the
extension it is given), drivers' failures unless scripted, and ``shutdown``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import typing

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from gateway.core import events as ev
from gateway.core.cdr import build_cdr
from gateway.core.dtmf import MAX_DTMF_DIGITS, is_dial_number, is_dtmf_sequence
from gateway.core.errors import ExtensionBusy, IllegalState, InvalidArgument, UnknownCall, UnknownExtension, UnknownParty
from gateway.core.interfaces import Attributes, ICallControl, Observer
from gateway.core.model import DEVICE, INBOUND, OUTBOUND, PARTY, Call, CallSnapshot, Leg
from gateway.core.states import Cause, LegState, next_state

__all__ = ["COMMANDS", "QUERIES", "CountingCalls", "FakeCallControl"]

RINGING, DIALING, TALKING, HELD = LegState.RINGING, LegState.DIALING, LegState.TALKING, LegState.HELD

#: the queries of ICallControl: what an adapter would pull or scan the calls with
QUERIES = ("calls", "call", "calls_for", "active_call_for", "status", "leg_states")
#: the commands of ICallControl
COMMANDS = ("originate", "answer", "reject", "cancel", "hangup", "hold", "retrieve", "mute", "unmute", "transfer",
            "conference", "remove_party", "send_dtmf", "flush", "dispose", "consult", "alternate",
            "transfer_to_consult", "conference_in_consult")

log = Logger()

_IF_BUSY = ("refuse", "replace")
_CONSULT_EVENTS = {"transfer": ev.TransferFailed, "conference": ev.ConferenceFailed}
_PENDING_REASONS = {Cause.BUSY: "busy", Cause.NO_ANSWER: "no answer", Cause.REMOTE_HANGUP: "hung up before answering"}

_P = typing.ParamSpec("_P")
_R = typing.TypeVar("_R")
#: a subscription: the observer and the extension it is limited to (None: every call)
_Subscription = tuple[Observer, str | None]


class _ExtensionLike(typing.Protocol):
    """A configured extension as the fake reads it (``gateway.config.Extension``; ``name`` optional)."""

    @property
    def id(self) -> str: ...


def _command(method: typing.Callable[typing.Concatenate[FakeCallControl, _P], _R]
             ) -> typing.Callable[typing.Concatenate[FakeCallControl, _P], defer.Deferred[_R]]:
    """A command: noted, failed as scripted, run as one batch; exceptions become failed Deferreds."""
    name = method.__name__

    def run(self: FakeCallControl, /, *args: _P.args, **kwargs: _P.kwargs) -> defer.Deferred[_R]:
        self.commands.append((name, args, kwargs))
        scripted = self._failures.get(name)
        if scripted:
            return defer.fail(scripted.popleft())
        with self._batch():
            return defer.maybeDeferred(method, self, *args, **kwargs)

    functools.update_wrapper(run, method)
    return run


def _far_end(method: typing.Callable[typing.Concatenate[FakeCallControl, _P], _R]
             ) -> typing.Callable[typing.Concatenate[FakeCallControl, _P], _R]:
    """Something the far end does: one batch, like a driver's report."""

    def run(self: FakeCallControl, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._batch():
            return method(self, *args, **kwargs)

    functools.update_wrapper(run, method)
    return run


@implementer(ICallControl)
class FakeCallControl:
    """An in-memory :class:`~gateway.core.interfaces.ICallControl` (see the module docstring).

    :param extensions: the extensions' ids, or objects with ``id`` and ``name`` (as
        ``gateway.config.Extension``).
    :param clock: an ``IReactorTime`` for the events' ``at`` and the snapshots' times (a fresh
        ``task.Clock`` by default); released calls are forgotten ``retention`` seconds later on it.

    Attributes a test reads: :attr:`commands` ``[(name, args, kwargs)]`` in the order received,
    :attr:`dtmf_sent` ``[(call_id, digits)]``, :attr:`flushed` ``[call_id]``, :attr:`cdrs` (each
    ended call's record, as the registry hands the store).
    """

    #: the driver name of every leg
    driver = "fake"
    node = "fake"

    def __init__(self, extensions: typing.Iterable[str | _ExtensionLike] = ("1001",), *,
                 clock: IReactorTime | None = None, retention: float = 60.0) -> None:
        self.clock: IReactorTime = clock if clock is not None else task.Clock()
        self.retention = retention
        #: extension id -> name
        self._names: dict[str, str] = {}
        for ext in extensions:
            if isinstance(ext, str):
                self._names[ext] = ""
            else:
                self._names[ext.id] = getattr(ext, "name", "")
        self.commands: list[tuple[str, tuple[typing.Any, ...], dict[str, typing.Any]]] = []
        self.dtmf_sent: list[tuple[str, str]] = []
        self.flushed: list[str] = []
        self.cdrs: list[Attributes] = []
        self._failures: dict[str, collections.deque[Exception]] = collections.defaultdict(collections.deque)
        self._ids = itertools.count(1)
        self._calls: dict[str, Call] = {}
        self._forget_timers: dict[str, IDelayedCall] = {}
        self._subscriptions: list[_Subscription] = []
        self._pending: list[tuple[ev.CallEvent, Call]] = []
        self._queue: collections.deque[tuple[ev.CallEvent, CallSnapshot]] = collections.deque()
        self._alerting: list[Leg] = []
        self._depth = 0
        self._dispatching = False

    # -- scripting -------------------------------------------------------------------------------

    def fail_next(self, command: str, error: Exception) -> None:
        """The next ``command`` (a method name of ICallControl, e.g. ``"hold"``) fails with ``error``
        and changes nothing (it is still noted in :attr:`commands`)."""
        if command not in COMMANDS:
            raise ValueError(f"{command!r} is not a command of ICallControl")
        self._failures[command].append(error)

    # -- the far end -------------------------------------------------------------------------------

    @_far_end
    def ring_inbound(self, extension: str, caller: str, *, did: str | None = None,
                     attributes: Attributes | None = None) -> CallSnapshot:
        """``caller`` calls ``extension`` (through ``did``, the extension's id by default): a new
        inbound call whose caller leg is alerting and whose extension's phone rings; refused at once
        (cause busy) when the extension is in a call. Returns its snapshot."""
        self._extension(extension)
        did = extension if did is None else did
        attributes = dict(attributes or {})
        call = self._new_call(extension=extension, direction=INBOUND, caller=caller, number=did, did=did,
                              attributes=attributes)
        leg = self._add_leg(call, PARTY, INBOUND, caller, RINGING, caller_id=caller,
                            attributes={"did": did, **attributes})
        leg.alerting_at = leg.started_at
        self._event(ev.LegRinging, call, leg)
        if self._busy_call(extension, besides=call) is not None:
            self._end_call(call, Cause.BUSY, "gateway")
        else:
            self._dial(call, DEVICE, extension, caller_id=caller, state=RINGING)
        return self._snapshot(call)

    @_far_end
    def phone_answers(self, call_id: str) -> None:
        """The extension's user picks up the ringing phone (what ``answer`` asks the phone to do)."""
        device = self._find(call_id).device
        if device is None or device.state not in (RINGING, DIALING):
            raise LookupError(f"the phone of call {call_id} is not ringing")
        self._leg_answered(device)

    @_far_end
    def phone_hangs_up(self, call_id: str) -> None:
        """The extension's user hangs up: the call ends (cause normal, by ``extension``)."""
        device = self._find(call_id).device
        if device is None or not device.live:
            raise LookupError(f"call {call_id} has no live phone")
        self._leg_over(device, Cause.REMOTE_HANGUP)

    @_far_end
    def party_answers(self, call_id: str, number: str | None = None) -> None:
        """The dialled party (``number``, default the latest one dialled) answers."""
        self._leg_answered(self._dialled(call_id, number))

    @_far_end
    def party_busy(self, call_id: str, number: str | None = None) -> None:
        self._leg_over(self._dialled(call_id, number), Cause.BUSY)

    @_far_end
    def party_no_answer(self, call_id: str, number: str | None = None) -> None:
        self._leg_over(self._dialled(call_id, number), Cause.NO_ANSWER)

    @_far_end
    def party_fails(self, call_id: str, reason: str = "failed", number: str | None = None) -> None:
        self._leg_over(self._dialled(call_id, number), Cause.FAILED, reason)

    @_far_end
    def party_hangs_up(self, call_id: str, number: str | None = None, cause: str = "remote_hangup") -> None:
        """A remote party (``number``, default the first) hangs up (``transport_lost``: its link dropped)."""
        self._leg_over(self._party(call_id, number, lambda leg: leg.role == PARTY and leg.live), Cause(cause))

    @_far_end
    def party_sends_dtmf(self, call_id: str, digit: str, number: str | None = None,
                         duration_ms: int | None = None) -> None:
        leg = self._party(call_id, number, lambda leg: leg.role == PARTY and leg.live)
        leg.call.dtmf_count += 1
        self._event(ev.DtmfReceived, leg.call, leg, digit=digit, duration_ms=duration_ms)

    def _party(self, call_id: str, number: str | None, fits: typing.Callable[[Leg], bool]) -> Leg:
        legs = [leg for leg in self._find(call_id).legs if fits(leg) and (number is None or leg.number == number)]
        if not legs:
            raise LookupError(f"call {call_id} has no such party {number or ''}".rstrip())
        return legs[0]

    def _dialled(self, call_id: str, number: str | None) -> Leg:
        call = self._find(call_id)
        if number is None and call.pending is not None:
            return call.pending
        return self._party(call_id, number, lambda leg: leg.role == PARTY and leg.state is DIALING)

    # -- events ------------------------------------------------------------------------------------

    def subscribe(self, callback: Observer, extension: str | None = None) -> typing.Callable[[], None]:
        subscription = (callback, extension)
        self._subscriptions.append(subscription)

        def unsubscribe() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

        return unsubscribe

    @contextlib.contextmanager
    def _batch(self) -> typing.Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._close_batch()

    def _close_batch(self) -> None:
        """Pair each event with its call's snapshot (one per call per batch) and deliver them; then
        the legs dialled in the batch report ringing, as a batch of their own."""
        pending, self._pending = self._pending, []
        snapshots: dict[Call, CallSnapshot] = {}
        for event, call in pending:
            if call not in snapshots:
                snapshots[call] = self._snapshot(call)
            self._queue.append((event, snapshots[call]))
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._queue:
                event, snapshot = self._queue.popleft()
                for callback, extension in list(self._subscriptions):
                    if extension is None or extension == event.extension:
                        try:
                            callback(event, snapshot)
                        except Exception:  # as the registry: logged (a trial test fails on it), others go on
                            log.failure("observer {observer!r} failed on {event} of call {call_id}",
                                        observer=callback, event=event.type, call_id=event.call_id)
        finally:
            self._dispatching = False
        if self._alerting:
            legs, self._alerting = self._alerting, []
            with self._batch():
                for leg in legs:
                    if leg.state in (RINGING, DIALING) and leg.alerting_at is None:
                        leg.alerting_at = self.clock.seconds()
                        self._event(ev.LegRinging, leg.call, leg)

    def _event(self, cls: type[ev.CallEvent], call: Call, leg: Leg | None = None, **fields: typing.Any) -> None:
        self._pending.append((cls(call_id=call.call_id, extension=call.extension, at=self.clock.seconds(),
                                  leg_id=leg.leg_id if leg is not None else None, **fields), call))

    # -- queries ---------------------------------------------------------------------------------

    @property
    def extensions(self) -> list[str]:
        return list(self._names)

    def _snapshot(self, call: Call) -> CallSnapshot:
        return call.snapshot(self.clock.seconds())

    def calls(self, include_released: bool = False) -> list[CallSnapshot]:
        return [self._snapshot(c) for c in self._calls.values() if include_released or not c.ended]

    def call(self, call_id: str) -> CallSnapshot:
        return self._snapshot(self._find(call_id))

    def calls_for(self, extension_id: str) -> list[CallSnapshot]:
        return [self._snapshot(c) for c in self._calls.values() if c.extension == extension_id]

    def active_call_for(self, extension_id: str) -> CallSnapshot | None:
        call = self._own_live_call(extension_id)
        return self._snapshot(call) if call is not None else None

    def status(self) -> dict[str, typing.Any]:
        states = collections.Counter(c.state.value for c in self._calls.values() if not c.ended)
        return {"live_calls": sum(states.values()), "by_state": dict(states),
                "retained_calls": sum(1 for c in self._calls.values() if c.ended)}

    def leg_states(self) -> collections.Counter[str]:
        return collections.Counter(leg.state.value for c in self._calls.values() if not c.ended for leg in c.legs)

    # -- commands ----------------------------------------------------------------------------------

    @_command
    def originate(self, extension_id: str, number: str, *, attributes: Attributes | None = None,
                  if_busy: str = "refuse", by: str = "api") -> CallSnapshot:
        if if_busy not in _IF_BUSY:
            raise InvalidArgument(f"if_busy must be one of {', '.join(_IF_BUSY)}, not {if_busy!r}")
        self._extension(extension_id)
        target = self._target(number)
        if target == extension_id:
            raise InvalidArgument(f"extension {extension_id} cannot call itself")
        current = self._own_live_call(extension_id) if if_busy == "replace" else None
        for busy in {extension_id, target if target in self._names else None}:
            if busy is not None:
                self._check_free(busy, besides=current)
        if current is not None:
            self._end_call(current, Cause.NORMAL, by)
        call = self._new_call(extension=extension_id, direction=OUTBOUND, caller=extension_id, number=number,
                              attributes=dict(attributes or {}))
        self._dial(call, DEVICE, extension_id, caller_id=number)
        return self._snapshot(call)

    @_command
    def answer(self, call_id: str) -> CallSnapshot:
        call = self._checked(call_id, "answer")
        device = call.device
        if device is None:
            raise IllegalState("answer", "not an extension's call")
        if device.state not in (RINGING, DIALING):
            raise IllegalState("answer", device.state.value, "extension's phone")
        self._leg_answered(device)
        return self._snapshot(call)

    @_command
    def reject(self, call_id: str, *, by: str = "api") -> CallSnapshot:
        call = self._checked(call_id, "reject")
        self._end_call(call, Cause.REJECTED, by)
        return self._snapshot(call)

    @_command
    def cancel(self, call_id: str, *, by: str = "api") -> CallSnapshot:
        call = self._checked(call_id, "cancel")
        self._end_call(call, Cause.REJECTED if call.state is RINGING else Cause.NORMAL, by)
        return self._snapshot(call)

    @_command
    def hangup(self, call_id: str, *, by: str = "api") -> CallSnapshot:
        call = self._checked(call_id, "hangup")
        self._end_call(call, Cause.NORMAL, by)
        return self._snapshot(call)

    @_command
    def hold(self, call_id: str) -> CallSnapshot:
        return self._set_held(call_id, "hold", TALKING, ev.LegHeld)

    @_command
    def retrieve(self, call_id: str) -> CallSnapshot:
        return self._set_held(call_id, "retrieve", HELD, ev.LegRetrieved)

    def _set_held(self, call_id: str, command: str, from_state: LegState, event: type[ev.CallEvent]) -> CallSnapshot:
        call = self._checked(call_id, command)
        other = self._linked(call) if command == "retrieve" else None
        if other is not None:
            if other.state not in (TALKING, HELD):
                raise IllegalState(command, other.state.value, "consult call")
            self._hold_parties(other)
        for leg in call.parties:
            if leg.state is from_state:
                leg.state = next_state(leg.state, command, "leg")
                self._event(event, call, leg)
        return self._snapshot(call)

    @_command
    def mute(self, call_id: str) -> CallSnapshot:
        return self._set_muted(call_id, "mute", True, ev.LegMuted)

    @_command
    def unmute(self, call_id: str) -> CallSnapshot:
        return self._set_muted(call_id, "unmute", False, ev.LegUnmuted)

    def _set_muted(self, call_id: str, command: str, muted: bool, event: type[ev.CallEvent]) -> CallSnapshot:
        call = self._checked(call_id, command)
        device = call.device
        if device is None:
            raise IllegalState(command, "not an extension's call")
        next_state(device.state, command, "extension's phone")
        other = self._linked(call)
        for each in (call, other):
            phone = each.device if each is not None else None
            if each is not None and phone is not None and phone.muted != muted:
                phone.muted = muted
                self._event(event, each, phone)
        return self._snapshot(call)

    @_command
    def transfer(self, call_id: str, destination: str, *, by: str = "api") -> CallSnapshot:
        return self._consult(call_id, destination, "transfer", by)

    @_command
    def conference(self, call_id: str, destination: str, *, by: str = "api") -> CallSnapshot:
        return self._consult(call_id, destination, "conference", by)

    def _consult(self, call_id: str, destination: str, kind: str, by: str) -> CallSnapshot:
        call = self._checked(call_id, kind)
        if self._linked(call) is not None:
            raise IllegalState(kind, "in a consult (transfer_to_consult or conference_in_consult joins it)")
        if call.pending is not None:
            raise IllegalState(kind, f"already dialling {call.pending.number} for a {call.pending.pending}")
        target = self._target(destination)
        if target in self._names:
            if target == call.extension:
                raise InvalidArgument(f"cannot {kind} call {call_id} to its own extension {target}")
            self._check_free(target)
        caller_id = call.parties[0].number if call.parties else None
        call.pending = self._dial(call, PARTY, target, caller_id=caller_id, pending=kind)
        call.pending_by = by
        return self._snapshot(call)

    @_command
    def consult(self, call_id: str, number: str, *, by: str = "api") -> CallSnapshot:
        call = self._checked(call_id, "consult")
        device = call.device
        if device is None or call.extension is None:
            raise IllegalState("consult", "not an extension's call")
        if device.state is not TALKING:
            raise IllegalState("consult", device.state.value, "extension's phone")
        if call.consult_of is not None and self._linked(call) is not None:
            raise IllegalState("consult", f"a consult of call {call.consult_of}")
        if self._linked(call) is not None:
            raise IllegalState("consult", f"consulting already (call {call.consult})")
        if call.pending is not None:
            raise IllegalState("consult", f"dialling {call.pending.number} for a {call.pending.pending}")
        target = self._target(number)
        if target in self._names:
            if target == call.extension:
                raise InvalidArgument(f"cannot consult from call {call_id} to its own extension {target}")
            self._check_free(target)
        self._hold_parties(call)
        consult = self._new_call(extension=call.extension, direction=OUTBOUND, caller=call.extension,
                                 number=target, consult_of=call.call_id)
        phone = self._add_leg(consult, DEVICE, OUTBOUND, device.number, TALKING, caller_id=target,
                              name=device.name, attributes=dict(device.attributes), muted=device.muted)
        phone.answered_at = phone.started_at
        call.consults.append(consult.call_id)
        self._dial(consult, PARTY, target)
        call.consult = consult.call_id
        self._event(ev.ConsultStarted, call, consult_id=consult.call_id, number=target)
        return self._snapshot(consult)

    @_command
    def alternate(self, call_id: str, *, by: str = "api") -> CallSnapshot:
        call = self._checked(call_id, "alternate")
        primary, consult = self._pair(call, "alternate")
        talking = next((c for c in (primary, consult) if any(leg.state is TALKING for leg in c.parties)), None)
        if talking is not None:
            self._hold_parties(talking)
        self._retrieve_parties(call if talking is None else (consult if talking is primary else primary))
        return self._snapshot(call)

    @_command
    def transfer_to_consult(self, call_id: str, *, by: str = "api") -> CallSnapshot:
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
        self._end_call(primary, Cause.TRANSFERRED, by)
        self._detach(consult, consult.parties, Cause.TRANSFERRED)
        self._end_call(consult, Cause.TRANSFERRED, by)
        successor = self._new_call(extension=extension, direction=primary.direction, caller=primary.caller,
                                   number=primary.number, did=primary.did,
                                   attributes={**primary.attributes, "transferred_from": primary.call_id,
                                               "consult_id": consult.call_id})
        if target is not None and extension is not None:
            target.role = DEVICE
        self._adopt(successor, moving)
        self._retrieve_parties(successor)
        return self._snapshot(primary)

    @_command
    def conference_in_consult(self, call_id: str, *, by: str = "api") -> CallSnapshot:
        call = self._checked(call_id, "conference_in_consult")
        primary, consult = self._pair(call, "conference_in_consult")
        joining = consult.parties
        primary.consult = None
        self._detach(consult, joining, Cause.CONFERENCED)
        self._end_call(consult, Cause.CONFERENCED, by)
        self._event(ev.ConsultEnded, primary, consult_id=consult.call_id, outcome="conferenced",
                    cause=str(Cause.CONFERENCED))
        self._adopt(primary, joining)
        self._retrieve_parties(primary)
        for leg in joining:
            self._event(ev.PartyAdded, primary, leg, number=leg.number, name=leg.name)
        return self._snapshot(primary)

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
        other = self._linked(call)
        if other is None:
            raise IllegalState(command, "in no consult")
        primary, consult = (call, other) if call.consult is not None else (other, call)
        if consult.state not in (TALKING, HELD):
            raise IllegalState(command, consult.state.value, "consult call")
        return primary, consult

    def _hold_parties(self, call: Call) -> None:
        for leg in call.parties:
            if leg.state is TALKING:
                leg.state = next_state(leg.state, "hold", "leg")
                self._event(ev.LegHeld, call, leg)

    def _retrieve_parties(self, call: Call) -> None:
        for leg in call.parties:
            if leg.state is HELD:
                leg.state = next_state(leg.state, "retrieve", "leg")
                self._event(ev.LegRetrieved, call, leg)
        self._progress(call)

    def _detach(self, call: Call, legs: list[Leg], cause: Cause) -> None:
        now = self.clock.seconds()
        for leg in legs:
            left = attrs.evolve(leg, state=next_state(leg.state, "release", "leg"), ended_at=now, cause=str(cause))
            call.legs[call.legs.index(leg)] = left
            self._event(ev.LegEnded, call, left, cause=str(cause))

    def _adopt(self, call: Call, legs: list[Leg]) -> None:
        for leg in legs:
            leg.call = call
            call.legs.append(leg)
            self._announce_leg(call, leg)

    @_command
    def remove_party(self, call_id: str, number: str, *, by: str = "api") -> CallSnapshot:
        call = self._checked(call_id, "remove_party")
        leg = next((p for p in call.parties if p.number == number), None)
        if leg is None:
            raise UnknownParty(call_id, number)
        self._release(leg, Cause.NORMAL)
        self._party_left(call, leg, Cause.NORMAL, by)
        return self._snapshot(call)

    @_command
    def send_dtmf(self, call_id: str, digits: str, duration_ms: int = 100, gap_ms: int = 50) -> CallSnapshot:
        digits = str(digits).upper()
        if not is_dtmf_sequence(digits) or len(digits) > MAX_DTMF_DIGITS:
            raise InvalidArgument(f"DTMF digits must be 1-{MAX_DTMF_DIGITS} of 0-9 * # A-D, not {digits!r}")
        if not (isinstance(duration_ms, int) and 20 <= duration_ms <= 1000):
            raise InvalidArgument(f"DTMF duration must be 20-1000 ms, not {duration_ms!r}")
        if not (isinstance(gap_ms, int) and 0 <= gap_ms <= 1000):
            raise InvalidArgument(f"DTMF gap must be 0-1000 ms, not {gap_ms!r}")
        call = self._checked(call_id, "dtmf")
        self.dtmf_sent.append((call_id, digits))
        call.dtmf_count += len(digits)
        return self._snapshot(call)

    @_command
    def flush(self, call_id: str) -> CallSnapshot:
        call = self._checked(call_id, "flush")
        self.flushed.append(call_id)
        return self._snapshot(call)

    @_command
    def dispose(self, call_id: str, *, by: str = "api") -> None:
        call = self._find(call_id)
        self._end_call(call, Cause.NORMAL, by)
        self._forget(call_id)

    # -- the model -------------------------------------------------------------------------------

    def _find(self, call_id: str) -> Call:
        try:
            return self._calls[call_id]
        except KeyError:
            raise UnknownCall(call_id) from None

    def _checked(self, call_id: str, command: str) -> Call:
        call = self._find(call_id)
        next_state(call.state, command)
        return call

    def _extension(self, extension_id: str) -> str:
        if extension_id not in self._names:
            raise UnknownExtension(extension_id)
        return self._names[extension_id]

    def _target(self, destination: str | None) -> str:
        """An extension id, or a number the registry would dial; InvalidArgument otherwise."""
        destination = str(destination or "")
        if destination not in self._names and not is_dial_number(destination):
            raise InvalidArgument(f"{destination!r} is neither an extension nor a phone number")
        return destination

    def _busy_call(self, extension_id: str, besides: Call | None = None) -> Call | None:
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

    def _own_live_call(self, extension_id: str) -> Call | None:
        return next((c for c in self._calls.values() if c.extension == extension_id and not c.ended), None)

    def _new_id(self) -> str:
        return f"{next(self._ids):016x}"

    def _new_call(self, **fields: typing.Any) -> Call:
        call = Call(call_id=self._new_id(), created_at=self.clock.seconds(), **fields)
        self._calls[call.call_id] = call
        self._event(ev.CallCreated, call, direction=call.direction, caller=call.caller, number=call.number,
                    did=call.did, attributes=dict(call.attributes))
        return call

    def _add_leg(self, call: Call, role: str, direction: str, number: str | None, state: LegState,
                 **fields: typing.Any) -> Leg:
        leg = Leg(leg_id=self._new_id(), call=call, role=role, direction=direction, number=number,
                  driver=self.driver, state=state, started_at=self.clock.seconds(), **fields)
        call.legs.append(leg)
        self._announce_leg(call, leg)
        return leg

    def _announce_leg(self, call: Call, leg: Leg) -> None:
        self._event(ev.LegCreated, call, leg, role=leg.role, direction=leg.direction, number=leg.number,
                    driver=leg.driver, state=leg.state)

    def _dial(self, call: Call, role: str, target: str, *, caller_id: str | None = None, pending: str | None = None,
              state: LegState = DIALING) -> Leg:
        """Dial ``target`` (an extension's phone or a number); it reports ringing after the batch."""
        extension = target if target in self._names else None
        leg = self._add_leg(call, role, OUTBOUND, target, state, caller_id=caller_id,
                            name=self._names.get(target, ""), pending=pending,
                            attributes={"extension": extension} if extension is not None else {})
        self._event(ev.LegDialing, call, leg)
        self._alerting.append(leg)
        return leg

    def _progress(self, call: Call) -> None:
        if call.answered_at is None and call.state is TALKING:
            call.answered_at = self.clock.seconds()

    def _release(self, leg: Leg, cause: Cause) -> None:
        leg.state = next_state(leg.state, "release", "leg")
        leg.ended_at = self.clock.seconds()
        leg.cause = str(cause)
        leg.pending = None
        self._event(ev.LegEnded, leg.call, leg, cause=str(cause))

    def _leg_answered(self, leg: Leg) -> None:
        if leg.state not in (RINGING, DIALING) or leg.call.ended:
            return
        call = leg.call
        leg.state = next_state(leg.state, "answered", "leg")
        leg.answered_at = self.clock.seconds()
        self._event(ev.LegAnswered, call, leg)
        if leg.pending == "conference":
            call.pending = leg.pending = None
            for party in call.parties:
                if party.state is HELD:
                    party.state = next_state(party.state, "retrieve", "leg")
                    self._event(ev.LegRetrieved, call, party)
            self._event(ev.PartyAdded, call, leg, number=leg.number, name=leg.name)
        elif leg.pending == "transfer":
            self._transferred(call, leg)
            return
        elif leg.role == DEVICE:
            if call.direction == INBOUND:
                for party in call.parties:
                    if party.state is RINGING:
                        self._leg_answered(party)
            elif not call.parties:
                assert call.number is not None  # an outbound call's number is what originate was given
                self._dial(call, PARTY, call.number, caller_id=call.attributes.get("caller_id"))
        self._progress(call)

    def _transferred(self, call: Call, target: Leg) -> None:
        """The remote parties and the answered target go on in a new call; this one ends, transferred."""
        moving = [*call.parties, target]
        call.pending = target.pending = None
        now = self.clock.seconds()
        for leg in moving:
            left = attrs.evolve(leg, state=next_state(leg.state, "release", "leg"), ended_at=now,
                                cause=str(Cause.TRANSFERRED))
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

    def _leg_over(self, leg: Leg, cause: Cause, reason: str | None = None) -> None:
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
            self._event(_CONSULT_EVENTS[kind], call, leg, reason=_PENDING_REASONS.get(cause) or f"failed: {reason}")
        elif leg.role == DEVICE:
            linked = self._linked(call)
            self._end_call(call, Cause.NORMAL if cause is Cause.REMOTE_HANGUP else cause, "extension")
            if linked is not None:
                self._end_call(linked, Cause.NORMAL if cause is Cause.REMOTE_HANGUP else cause, "extension")
        else:
            self._party_left(call, leg, cause, "remote")

    def _party_left(self, call: Call, leg: Leg, cause: Cause, by: str) -> None:
        if len(call.parties) < (1 if call.device is not None else 2):
            self._end_call(call, cause, by)
        else:
            self._event(ev.PartyRemoved, call, leg, number=leg.number)
            self._progress(call)

    def _end_call(self, call: Call, cause: Cause, by: str) -> None:
        if call.ended:
            return
        if call.pending is not None:
            kind, call.pending = call.pending.pending, None
            assert kind is not None  # a leg dialled for a transfer or conference says which
            self._event(_CONSULT_EVENTS[kind], call, None, reason="the call ended")
        consult = self._linked(call) if call.consult is not None else None
        if consult is not None:
            call.consult = None
            self._event(ev.ConsultEnded, call, consult_id=consult.call_id, outcome="primary_ended", cause=str(cause))
        for leg in call.live_legs:
            self._release(leg, cause)
        call.ended_at = self.clock.seconds()
        call.cause, call.hangup_by = str(cause), by
        cdr = build_cdr(call, self.node)
        self.cdrs.append(cdr)
        self._event(ev.CallEnded, call, cause=str(cause), hangup_by=by, cdr=cdr)
        primary = self._calls.get(call.consult_of) if call.consult_of is not None else None
        if primary is not None and primary.consult == call.call_id:
            primary.consult = None
            self._event(ev.ConsultEnded, primary, consult_id=call.call_id, outcome="released", cause=str(cause))
        self._forget_timers[call.call_id] = self.clock.callLater(self.retention, self._forget, call.call_id)

    def _forget(self, call_id: str) -> None:
        timer = self._forget_timers.pop(call_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._calls.pop(call_id, None)


@implementer(ICallControl)
class CountingCalls:
    """``calls`` (any ICallControl) with every query noted in :attr:`asked` ``(name, *args)`` and every
    command in :attr:`commands` ``(name, args, kwargs)``; everything else passes through."""

    def __init__(self, calls: ICallControl) -> None:
        self._calls = calls
        self.asked: list[tuple[typing.Any, ...]] = []
        self.commands: list[tuple[str, tuple[typing.Any, ...], dict[str, typing.Any]]] = []

    def reset(self) -> None:
        self.asked.clear()
        self.commands.clear()

    def __getattr__(self, name: str) -> typing.Any:
        attribute = getattr(self._calls, name)
        if name in QUERIES:
            def query(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
                self.asked.append((name, *args))
                return attribute(*args, **kwargs)

            return query
        if name in COMMANDS:
            def command(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
                self.commands.append((name, args, kwargs))
                return attribute(*args, **kwargs)

            return command
        return attribute

    @property
    def extensions(self) -> list[str]:
        extensions: list[str] = self._calls.extensions
        return extensions
