"""Calls and legs: the registry's live objects, and the frozen snapshots it hands out.

:class:`Leg` and :class:`Call` are mutable and private to the registry; every
state change of a leg goes through :func:`gateway.core.states.next_state`.
A call's :attr:`Call.state` is never stored: it is derived from its legs.
Queries, command results and the snapshot handed to observers with each event
are :class:`CallSnapshot` objects (plain frozen attrs with ``to_dict()`` for
JSON), so no caller can change a live call. States in snapshots are
:class:`~gateway.core.states.LegState` members: a ``str`` enum, so they compare
equal to ``"TALKING"`` and JSON writes them as before.
"""

from __future__ import annotations

import datetime
import typing

import attrs

from gateway.core.states import LegState

if typing.TYPE_CHECKING:  # pragma: no cover
    from gateway.media.port import MediaPort

__all__ = ["Call", "CallSnapshot", "DEVICE", "INBOUND", "Leg", "LegSnapshot", "OUTBOUND", "PARTY", "Party", "iso8601"]

DEVICE = "device"  #: the leg to the extension's own phone
PARTY = "party"  #: a remote party
INBOUND = "inbound"
OUTBOUND = "outbound"

_RINGING, _DIALING, _TALKING, _HELD, _RELEASED = LegState


def iso8601(seconds: float | None) -> str | None:
    """``clock.seconds()`` as ISO 8601 UTC with milliseconds (``2026-01-02T03:04:05.678Z``)."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@attrs.define(eq=False)
class Leg:
    """One party's connection through a driver."""

    leg_id: str
    call: "Call"
    role: str
    direction: str
    number: str | None
    driver: str
    state: LegState
    started_at: float
    caller_id: str | None = None
    name: str = ""
    attributes: dict[str, typing.Any] = attrs.Factory(dict)
    #: when the far end was first reported alerting (an inbound leg's arrival; a dialled number ringing)
    alerting_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    cause: str | None = None
    muted: bool = False
    #: "transfer" or "conference" while the leg is being dialled for one
    pending: str | None = None
    #: the driver's IDriverLeg (None until dial returned)
    driver_leg: typing.Any = attrs.field(default=None, repr=False)

    @property
    def live(self) -> bool:
        return self.state is not _RELEASED

    @property
    def port(self) -> MediaPort | None:
        port: MediaPort | None = getattr(self.driver_leg, "port", None)
        return port

    def snapshot(self) -> "LegSnapshot":
        return LegSnapshot(
            leg_id=self.leg_id,
            role=self.role,
            direction=self.direction,
            number=self.number,
            caller_id=self.caller_id,
            name=self.name,
            driver=self.driver,
            state=self.state,
            muted=self.muted,
            pending=self.pending,
            started_at=self.started_at,
            alerting_at=self.alerting_at,
            answered_at=self.answered_at,
            ended_at=self.ended_at,
            cause=self.cause,
            attributes=dict(self.attributes),
        )


@attrs.define(eq=False)
class Call:
    """A conversation as its extension's desktop sees it (``extension`` None: nobody's)."""

    call_id: str
    extension: str | None
    direction: str
    created_at: float
    caller: str | None
    number: str | None
    did: str | None = None
    attributes: dict[str, typing.Any] = attrs.Factory(dict)
    #: the media app an inbound call was routed to, and its argument
    app: str | None = None
    app_arg: str | None = None
    legs: list[Leg] = attrs.Factory(list)
    answered_at: float | None = None
    ended_at: float | None = None
    cause: str | None = None
    hangup_by: str | None = None
    dtmf_count: int = 0
    #: the leg being dialled for a transfer or a conference, if any
    pending: Leg | None = None
    #: who asked for the pending transfer or conference (becomes hangup_by of a transferred call)
    pending_by: str | None = None
    #: a consult call: the id of the primary it was placed from (kept for the call's whole life)
    consult_of: str | None = None
    #: a primary: the id of its consult call while that is live and linked
    consult: str | None = None
    #: a primary: every consult call it placed, oldest first (its CDR's ``consults``)
    consults: list[str] = attrs.Factory(list)
    #: serialises DTMF sequences (a DeferredLock, set by the registry)
    dtmf_lock: typing.Any = attrs.field(default=None, repr=False)

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    @property
    def device(self) -> Leg | None:
        """The leg to the extension's phone (the one still in the call, if several were)."""
        return next((leg for leg in reversed(self.legs) if leg.role == DEVICE), None)

    @property
    def parties(self) -> list[Leg]:
        """The live remote legs, not counting one being dialled for a transfer or conference."""
        return [leg for leg in self.legs if leg.role == PARTY and leg.live and not leg.pending]

    @property
    def live_legs(self) -> list[Leg]:
        return [leg for leg in self.legs if leg.live]

    @property
    def muted(self) -> bool:
        device = self.device
        return device is not None and device.muted

    @property
    def state(self) -> LegState:
        """RINGING | DIALING | TALKING | HELD | RELEASED, derived from the legs."""
        if self.ended:
            return _RELEASED
        device = self.device
        if device is not None and device.state in (_RINGING, _DIALING):
            return device.state
        parties = self.parties
        if not parties:
            return _DIALING if self.direction == OUTBOUND else _RINGING
        for waiting in (_RINGING, _DIALING):
            if any(leg.state is waiting for leg in parties):
                return waiting
        if all(leg.state is _HELD for leg in parties):
            return _HELD
        return _TALKING

    def leg(self, leg_id: str) -> Leg | None:
        return next((leg for leg in self.legs if leg.leg_id == leg_id), None)

    def snapshot(self, now: float) -> "CallSnapshot":
        return CallSnapshot(
            call_id=self.call_id,
            extension=self.extension,
            direction=self.direction,
            state=self.state,
            muted=self.muted,
            caller=self.caller,
            number=self.number,
            did=self.did,
            app=self.app,
            parties=tuple(Party(leg.number, leg.name, leg.leg_id, leg.state) for leg in self.parties),
            legs=tuple(leg.snapshot() for leg in self.legs),
            created_at=self.created_at,
            answered_at=self.answered_at,
            ended_at=self.ended_at,
            duration=round((self.ended_at if self.ended_at is not None else now) - self.created_at, 3),
            cause=self.cause,
            hangup_by=self.hangup_by,
            dtmf_count=self.dtmf_count,
            attributes=dict(self.attributes),
            consult=self.consult,
            consult_of=self.consult_of,
            consults=tuple(self.consults),
        )


def _to_dict(obj: attrs.AttrsInstance, times: tuple[str, ...]) -> dict[str, typing.Any]:
    data = attrs.asdict(obj, recurse=False)
    for name in times:
        data[name] = iso8601(data[name])
    return data


_LEG_TIMES = ("started_at", "alerting_at", "answered_at", "ended_at")


@attrs.frozen(kw_only=True)
class LegSnapshot:
    leg_id: str
    role: str
    direction: str
    number: str | None
    caller_id: str | None
    name: str
    driver: str
    state: LegState
    muted: bool
    pending: str | None
    started_at: float
    answered_at: float | None
    ended_at: float | None
    cause: str | None
    attributes: dict[str, typing.Any]
    #: when the leg was first reported alerting: a DIALING leg with it set is ringing at the far end
    alerting_at: float | None = None

    def to_dict(self) -> dict[str, typing.Any]:
        return _to_dict(self, _LEG_TIMES)


@attrs.frozen
class Party:
    """A remote party of a call, as a desktop lists it."""

    number: str | None
    name: str
    leg_id: str
    state: LegState

    def to_dict(self) -> dict[str, typing.Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class CallSnapshot:
    call_id: str
    extension: str | None
    direction: str
    state: LegState
    muted: bool
    caller: str | None
    number: str | None
    did: str | None
    app: str | None
    parties: tuple[Party, ...]
    legs: tuple[LegSnapshot, ...]
    created_at: float
    answered_at: float | None
    ended_at: float | None
    #: seconds since the call was created (until it ended)
    duration: float
    cause: str | None
    hangup_by: str | None
    dtmf_count: int
    attributes: dict[str, typing.Any]
    #: on a primary: its consult call's id while that is live and linked (else None)
    consult: str | None = None
    #: on a consult call: its primary's id (for the call's whole life, also once the primary ended)
    consult_of: str | None = None
    #: on a primary: every consult call it placed, oldest first
    consults: tuple[str, ...] = ()

    def party(self, number: str) -> Party | None:
        return next((p for p in self.parties if p.number == number), None)

    def to_dict(self) -> dict[str, typing.Any]:
        data = _to_dict(self, ("created_at", "answered_at", "ended_at"))
        data["parties"] = [p.to_dict() for p in self.parties]
        data["legs"] = [leg.to_dict() for leg in self.legs]
        data["consults"] = list(self.consults)
        return data
