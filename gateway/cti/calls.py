"""One call as an agent's desktop sees it: an interaction destination with its primary conversation.

:class:`TrackedCall` turns the call core's events into the interaction and conversation events of
004. Every event of its call comes with the call's snapshot (taken by the core once per batch of
events); it compares that snapshot with what the desktop has been told, and raises what changed, in
this order:

- the conversation state: ``ringing`` (RINGING), ``dialing`` (DIALING), ``talking`` (TALKING, also
  after a retrieve), ``held`` (HELD), ``ended`` (RELEASED); the interaction follows with
  ``alerting``, ``dialing``, ``started`` and ``ended``;
- the mute flag: ``mute``, and ``talking`` when a talking call is unmuted;
- the remote parties, once the call has talked: ``partyadded`` (the first party when the call is
  answered, then each conference party) and ``partyremoved``.

``conversation.started`` is the first event of every conversation, so it precedes any held, talking
or ended. A call that ends busy raises ``busy``, one that fails or is not answered raises ``failed``
with the reason, before ``ended``. A transfer or conference that fails raises ``transfer.failed`` or
``conference.failed`` and leaves everything else as it was. A completed blind transfer ends the
agent's call (the core goes on with a new call), so the desktop sees ``ended``.
"""

from __future__ import annotations

import attrs

from gateway.core import events as ev
from gateway.core.states import Cause, LegState
from gateway.cti.names import ConversationInit, InteractionInit, Party

RINGING, DIALING, TALKING, HELD, RELEASED = LegState
ALERTING, STARTED, ENDED, COMPLETED = "ALERTING", "STARTED", "ENDED", "COMPLETED"

#: conversation state -> interaction state
INTERACTION_STATE = {RINGING: ALERTING, DIALING: DIALING, TALKING: STARTED, HELD: STARTED, RELEASED: ENDED}

#: a call's end cause -> the failure reason told to the agent (busy has its own event)
FAILURE_REASONS = {
    str(Cause.FAILED): "the call failed",
    str(Cause.NO_ANSWER): "no answer",
    str(Cause.NO_ROUTE): "no route to the number",
}

#: events after which the call may be half-way through a change (a leg gone while the call ends, a
#: party gone before PartyRemoved): the desktop is told at the event that completes the change
PARTIAL_EVENTS = (ev.LegCreated, ev.LegEnded, ev.LegBusy, ev.LegFailed, ev.DtmfReceived)

#: the id of every interaction's primary conversation
PRIMARY = "primary"

#: the party number shown when the core knows none (a withheld caller id)
UNKNOWN_NUMBER = "unknown"


@attrs.define(eq=False)
class TrackedCall:
    """The desktop's view of one call of the agent's extension, and the two destinations it feeds.

    :param names: the message names (:class:`gateway.cti.names.CtiNames`).
    :param interaction: the interaction destination; its ``conversation`` child is made here.
    """

    names: object
    call_id: str
    interaction: object
    conversation: object = None
    state: LegState | None = None
    interaction_state: str | None = None
    muted: bool = False
    talked: bool = False
    parties: dict[str, str | None] = attrs.Factory(dict)
    failure: str | None = None

    def __attrs_post_init__(self):
        self.conversation = self.interaction.add_child("conversation", PRIMARY, self)

    @property
    def over(self) -> bool:
        return self.state == RELEASED

    # -- init responses ------------------------------------------------------------------------

    def interaction_init(self, snapshot) -> dict:
        """The ``interaction.query.init`` response body for the call as it is now."""
        state = COMPLETED if self.interaction_state == COMPLETED else INTERACTION_STATE[_state(snapshot)]
        return InteractionInit(state, primary=PRIMARY, data=interaction_data(self.call_id, snapshot)).to_body()

    def conversation_init(self, snapshot) -> dict:
        """The ``conversation.query.init`` response body: the state and at least one party."""
        parties = [Party(p.number or UNKNOWN_NUMBER, p.name) for p in snapshot.parties] if snapshot else []
        if not parties:
            parties = [Party(_counterpart(snapshot) or UNKNOWN_NUMBER)]
        return ConversationInit(_state(snapshot), parties).to_body()

    # -- following the call --------------------------------------------------------------------

    def start(self, snapshot) -> None:
        """The call has just been announced: ``started``, then its present state."""
        self.conversation.raise_event(self.names.conversation_started)
        self.sync(snapshot)

    def follow(self, event, snapshot) -> None:
        """Raise what the core's ``event`` changed, ``snapshot`` being the call as the core handed it
        with the event (None: the call is gone)."""
        names = self.names
        if isinstance(event, ev.TransferFailed):
            self.conversation.raise_event(names.conversation_transfer_failed, {"reason": event.reason})
        elif isinstance(event, ev.ConferenceFailed):
            self.conversation.raise_event(names.conversation_conference_failed, {"reason": event.reason})
        elif isinstance(event, ev.LegFailed):
            self.failure = event.reason
        elif isinstance(event, ev.CallEnded):
            self._ending(event.cause)
        if not isinstance(event, PARTIAL_EVENTS):
            self.sync(snapshot, ended=isinstance(event, ev.CallEnded))

    def complete(self) -> None:
        """``interaction.request.complete`` on an ended call."""
        self.interaction_state = COMPLETED
        self.interaction.raise_event(self.names.interaction_completed)

    def _ending(self, cause: str) -> None:
        if self.over:
            return
        if cause == str(Cause.BUSY):
            self.conversation.raise_event(self.names.conversation_busy)
        elif cause in FAILURE_REASONS:
            reason = self.failure or FAILURE_REASONS[cause]
            self.conversation.raise_event(self.names.conversation_failed, {"reason": reason})

    def sync(self, snapshot, ended: bool = False) -> None:
        state = RELEASED if ended else _state(snapshot)
        if self.over:
            return
        if state != self.state:
            self._state_changed(state)
        if state == RELEASED:
            return
        if snapshot.muted != self.muted:
            self._mute_changed(snapshot.muted)
        if self.talked:
            self._parties_changed(snapshot.parties)

    def _state_changed(self, state: LegState) -> None:
        names = self.names
        event = {
            RINGING: names.conversation_ringing,
            DIALING: names.conversation_dialing,
            TALKING: names.conversation_talking,
            HELD: names.conversation_held,
            RELEASED: names.conversation_ended,
        }[state]
        self.state = state
        self.talked = self.talked or state in (TALKING, HELD)
        self.conversation.raise_event(event)
        interaction_state = INTERACTION_STATE[state]
        if interaction_state != self.interaction_state and self.interaction_state != COMPLETED:
            self.interaction_state = interaction_state
            self.interaction.raise_event(
                {
                    ALERTING: names.interaction_alerting,
                    DIALING: names.interaction_dialing,
                    STARTED: names.interaction_started,
                    ENDED: names.interaction_ended,
                }[interaction_state]
            )

    def _mute_changed(self, muted: bool) -> None:
        self.muted = muted
        if muted:
            self.conversation.raise_event(self.names.conversation_mute)
        elif self.state == TALKING:
            self.conversation.raise_event(self.names.conversation_talking)

    def _parties_changed(self, parties) -> None:
        now = {party.leg_id: party for party in parties}
        for leg_id, party in now.items():
            if leg_id not in self.parties:
                self.parties[leg_id] = party.number
                body = Party(party.number or UNKNOWN_NUMBER, party.name).to_body()
                self.conversation.raise_event(self.names.conversation_partyadded, body)
        for leg_id in [leg_id for leg_id in self.parties if leg_id not in now]:
            number = self.parties.pop(leg_id)
            self.conversation.raise_event(self.names.conversation_partyremoved, {"number": number or UNKNOWN_NUMBER})


def _state(snapshot) -> LegState:
    return RELEASED if snapshot is None else snapshot.state


def _counterpart(snapshot) -> str | None:
    """Who the agent talks to when no remote leg is up yet: the caller, or the number dialled."""
    if snapshot is None:
        return None
    return snapshot.caller if snapshot.direction == "inbound" else snapshot.number


def interaction_data(call_id: str, snapshot) -> dict:
    """The ``interaction-data`` of a call: who calls, which DID, and the provider's session id."""
    if snapshot is None:
        return {"call-id": call_id}
    session_ids = [leg.attributes.get("session_id") for leg in snapshot.legs] + [snapshot.attributes.get("session_id")]
    data = {
        "call-id": call_id,
        "direction": snapshot.direction,
        "caller": snapshot.caller,
        "number": snapshot.number,
        "did": snapshot.did,
        "session-id": next((s for s in session_ids if s), None),
    }
    return {key: value for key, value in data.items() if value is not None}
