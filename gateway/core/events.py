"""The typed events the registry publishes to its observers.

Every event is a frozen attrs object with ``call_id``, ``extension`` (None
for a call no desktop owns, e.g. after a blind transfer to a number),
``leg_id`` where it concerns one leg, and ``at`` (``clock.seconds()``).
Adapters subscribe with ``subscribe(observer, extension=...)`` of
:class:`~gateway.core.interfaces.ICallControl` and translate events into their
wire messages: ``observer(event, call)`` gets each event together with its
call's :class:`~gateway.core.model.CallSnapshot`, taken once per call when the
batch of events (one command, one driver report) is done, so an adapter diffs
what it is handed instead of asking again.

Order is part of the contract: a call's :class:`CallCreated` comes before any
other event of that call, its :class:`CallEnded` (carrying the CDR) comes
last, and a leg's :class:`LegCreated` precedes that leg's other events and
its :class:`LegEnded` follows them.
"""

from __future__ import annotations

import typing

import attrs

from gateway.core.states import LegState

__all__ = [
    "CONSULT_OUTCOMES",
    "CallCreated",
    "CallEnded",
    "CallEvent",
    "ConferenceFailed",
    "ConsultEnded",
    "ConsultStarted",
    "DtmfReceived",
    "LegAnswered",
    "LegBusy",
    "LegCreated",
    "LegDialing",
    "LegEnded",
    "LegFailed",
    "LegHeld",
    "LegMuted",
    "LegRetrieved",
    "LegRinging",
    "LegUnmuted",
    "PartyAdded",
    "PartyRemoved",
    "TransferFailed",
]


@attrs.frozen(kw_only=True)
class CallEvent:
    """What every event carries."""

    call_id: str
    extension: str | None
    at: float
    leg_id: str | None = None

    @property
    def type(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, typing.Any]:
        """A JSON-able dict with the event's ``type`` name."""
        return {"type": self.type, **attrs.asdict(self, recurse=False)}


@attrs.frozen(kw_only=True)
class CallCreated(CallEvent):
    """A new call: ``direction`` inbound|outbound, ``caller`` (who calls), ``number`` (who is called)."""

    direction: str
    caller: str | None
    number: str | None
    did: str | None = None
    attributes: dict[str, typing.Any] = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class LegCreated(CallEvent):
    """A leg joined the call; ``role`` is ``device`` (the extension's phone) or ``party``."""

    role: str
    direction: str
    number: str | None
    driver: str
    state: LegState


@attrs.frozen(kw_only=True)
class LegRinging(CallEvent):
    """The leg is alerting (an inbound leg arrived, or the far end of a dial rings)."""


@attrs.frozen(kw_only=True)
class LegDialing(CallEvent):
    """An outbound leg has been dialled through its driver."""


@attrs.frozen(kw_only=True)
class LegAnswered(CallEvent):
    """The leg is TALKING."""


@attrs.frozen(kw_only=True)
class LegHeld(CallEvent):
    pass


@attrs.frozen(kw_only=True)
class LegRetrieved(CallEvent):
    pass


@attrs.frozen(kw_only=True)
class LegMuted(CallEvent):
    pass


@attrs.frozen(kw_only=True)
class LegUnmuted(CallEvent):
    pass


@attrs.frozen(kw_only=True)
class PartyAdded(CallEvent):
    """A conference party answered and was mixed in."""

    number: str | None
    name: str = ""


@attrs.frozen(kw_only=True)
class PartyRemoved(CallEvent):
    """A remote party left a call that goes on."""

    number: str | None


@attrs.frozen(kw_only=True)
class LegBusy(CallEvent):
    pass


@attrs.frozen(kw_only=True)
class LegFailed(CallEvent):
    reason: str


@attrs.frozen(kw_only=True)
class TransferFailed(CallEvent):
    """A blind transfer did not complete; the call is exactly as it was."""

    reason: str


@attrs.frozen(kw_only=True)
class ConferenceFailed(CallEvent):
    """A conference party could not be added; the call is exactly as it was."""

    reason: str


@attrs.frozen(kw_only=True)
class ConsultStarted(CallEvent):
    """Raised on the primary: its parties are held and ``consult_id`` (a new call of the same
    extension, whose ``CallCreated``... ``LegDialing`` come just before) dials ``number``."""

    consult_id: str
    number: str | None


#: why a consult link ended (:attr:`ConsultEnded.outcome`)
CONSULT_OUTCOMES = ("released", "transferred", "conferenced", "primary_ended")


@attrs.frozen(kw_only=True)
class ConsultEnded(CallEvent):
    """Raised on the primary, once per consult, when the link ends. ``outcome``:

    - ``released``: the consult call ended (busy, no answer, failed, the consulted party hung up, the
      agent hung it up: ``cause`` is the consult call's cause); comes after the consult's
      ``CallEnded``; the primary stays as it was (held, retrievable);
    - ``transferred``: :meth:`~gateway.core.interfaces.ICallControl.transfer_to_consult` (before
      the primary's ``CallEnded``);
    - ``conferenced``: :meth:`~gateway.core.interfaces.ICallControl.conference_in_consult` (after
      the consult's ``CallEnded``, before the primary's ``PartyAdded``);
    - ``primary_ended``: the primary ended first (its party hung up, the agent hung it up), before
      the primary's ``CallEnded``; the consult call goes on as the extension's only call.
    """

    consult_id: str
    outcome: str
    cause: str


@attrs.frozen(kw_only=True)
class DtmfReceived(CallEvent):
    digit: str
    duration_ms: int | None = None


@attrs.frozen(kw_only=True)
class LegEnded(CallEvent):
    cause: str


@attrs.frozen(kw_only=True)
class CallEnded(CallEvent):
    """The call is over; ``cdr`` is the record handed to the store."""

    cause: str
    hangup_by: str | None
    cdr: dict[str, typing.Any]
