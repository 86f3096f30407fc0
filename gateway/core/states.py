"""States, termination causes, and the one transition table of the call model.

A leg is ``RINGING`` (inbound, alerting), ``DIALING`` (outbound, not yet
answered), ``TALKING``, ``HELD`` or ``RELEASED``; ``muted`` is a flag beside
the state. A call's state, as its extension's desktop sees it, uses the same
five words and is derived from its legs (see :mod:`gateway.core.model`).

:data:`TRANSITIONS` is the only place that says which input is legal in which
state and where it leads. Leg inputs (``answered``, ``hold``, ``retrieve``,
``mute``, ``unmute``, ``release``) change legs; the registry's commands
(``answer``, ``reject``, ``cancel``, ``transfer``, ...) are checked against the call's
derived state with the same table, so "hold is illegal while RINGING" is
written once. :func:`next_state` raises :class:`IllegalState` for anything
the table does not list.
"""

from __future__ import annotations

import enum

from gateway.core.errors import IllegalState

__all__ = ["Cause", "LegState", "TRANSITIONS", "next_state"]


class LegState(str, enum.Enum):
    RINGING = "RINGING"
    DIALING = "DIALING"
    TALKING = "TALKING"
    HELD = "HELD"
    RELEASED = "RELEASED"

    def __str__(self) -> str:
        return self.value


class Cause(str, enum.Enum):
    """Why a leg or a call ended."""

    NORMAL = "normal"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    FAILED = "failed"
    REMOTE_HANGUP = "remote_hangup"
    TRANSPORT_LOST = "transport_lost"
    SHUTDOWN = "shutdown"
    REJECTED = "rejected"
    NO_ROUTE = "no_route"
    TRANSFERRED = "transferred"
    #: a consult call whose party was joined into its primary (conference_in_consult)
    CONFERENCED = "conferenced"
    #: a driver heard no media from the party for its timeout (the sip driver's [sip] media_timeout)
    MEDIA_TIMEOUT = "media_timeout"
    #: cluster: the call's node died; a surviving node ended the call and wrote its CDR
    NODE_LOST = "node_lost"
    #: cluster: the call was still up when its draining node's [cluster] drain_timeout ran out
    DRAIN_FORCED = "drain_forced"

    def __str__(self) -> str:
        return self.value


RINGING, DIALING, TALKING, HELD, RELEASED = LegState

_LIVE = (RINGING, DIALING, TALKING, HELD)
_CONNECTED = (TALKING, HELD)

#: (state, input) -> next state. Inputs on a leg: answered, hold, retrieve,
#: mute, unmute, release. Commands checked on a call's state: answer, reject, cancel,
#: hangup, hold, retrieve, mute, unmute, dtmf, flush, transfer, conference, remove_party, consult,
#: alternate, transfer_to_consult, conference_in_consult.
TRANSITIONS: dict[tuple[LegState, str], LegState] = {
    (RINGING, "answer"): TALKING,
    (DIALING, "answer"): TALKING,  # a click-to-dial's own phone, picked up through the API
    (RINGING, "answered"): TALKING,
    (DIALING, "answered"): TALKING,
    (RINGING, "reject"): RELEASED,
    # giving up a call nobody answered yet: an alerting one is refused, one still dialling is hung up
    (RINGING, "cancel"): RELEASED,
    (DIALING, "cancel"): RELEASED,
    (TALKING, "hold"): HELD,
    (HELD, "hold"): HELD,
    (HELD, "retrieve"): TALKING,
    (TALKING, "retrieve"): TALKING,
    **{(state, flag): state for state in _CONNECTED for flag in ("mute", "unmute")},
    **{(state, cmd): state for state in _CONNECTED
       for cmd in ("dtmf", "flush", "transfer", "conference", "remove_party", "consult", "alternate",
                   "transfer_to_consult", "conference_in_consult")},
    **{(state, cmd): RELEASED for state in _LIVE for cmd in ("release", "hangup")},
}


def next_state(state: LegState, command: str, what: str = "call") -> LegState:
    """Where ``command`` leads from ``state``; :class:`IllegalState` if it is not allowed there."""
    try:
        return TRANSITIONS[(state, command)]
    except KeyError:
        raise IllegalState(command, str(state), what) from None
