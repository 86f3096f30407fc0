"""One call as an agent's desktop sees it: an interaction destination with its primary conversation,
and the conversation of the consult call placed from it.

:class:`TrackedCall` (the interaction) and its :class:`TrackedConversation` s (the primary, and the
consult while there is one) turn the call core's events into the interaction and conversation events
of 004. Every event of a call comes with the call's snapshot (taken by the core once per batch of
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

Consult (docs/cti.md has the order of each flow): the consult call's conversation has the consult
call's id; ``interaction.focuschanged {"id"}`` follows the conversation the agent is on (the consult
once the bridge has initialised it, the one left talking after an alternate, the primary again when
the consult ends). A consult that ends raises ``ended`` then ``disposed`` and is gone; a transfer to
consult raises the primary's ``ended`` and ``disposed``, the focus change, then the consult's
``ended`` and ``disposed``, then ``interaction.ended``. The interaction stays STARTED while a consult
is live, even once the primary has ended.
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
class TrackedConversation:
    """The desktop's view of one call as a conversation of an interaction: the primary (the
    interaction's own call) or the consult (a call the agent placed from the primary).

    :param names: the message names (:class:`gateway.cti.names.CtiNames`).
    :param call_id: the call this conversation follows.
    :param owner: the :class:`TrackedCall` (interaction) it belongs to.
    :param conversation_id: its id under the interaction (``primary``, or the consult call's id).
    """

    names: object
    call_id: str
    owner: "TrackedCall"
    conversation_id: str
    destination: object = None
    state: LegState | None = None
    muted: bool = False
    talked: bool = False
    parties: dict[str, str | None] = attrs.Factory(dict)
    failure: str | None = None
    #: the client has disposed of it (``conversation.disposed``); gone once its init was answered
    disposed: bool = False

    def __attrs_post_init__(self):
        self.destination = self.owner.interaction.add_child("conversation", self.conversation_id, self)

    @property
    def over(self) -> bool:
        return self.state == RELEASED

    def conversation_init(self, snapshot) -> dict:
        """The ``conversation.query.init`` response body: the state and at least one party."""
        parties = [Party(p.number or UNKNOWN_NUMBER, p.name) for p in snapshot.parties] if snapshot else []
        if not parties:
            parties = [Party(_counterpart(snapshot) or UNKNOWN_NUMBER)]
        state = RELEASED if self.over else _state(snapshot)
        return ConversationInit(state, parties).to_body()

    def init_answered(self) -> None:
        """The init response is out: the waiting events go; a conversation the client disposed of
        meanwhile (a consult over before the bridge initialised it) is gone after them."""
        self.destination.init_answered()
        if self.disposed:
            self.destination.dispose()
        self.owner.conversation_ready(self)

    def start(self, snapshot) -> None:
        """The conversation has just been made: ``started``, then its present state."""
        self.destination.raise_event(self.names.conversation_started)
        self.sync(snapshot)

    def follow(self, event, snapshot) -> None:
        names = self.names
        if isinstance(event, ev.TransferFailed):
            self.destination.raise_event(names.conversation_transfer_failed, {"reason": event.reason})
        elif isinstance(event, ev.ConferenceFailed):
            self.destination.raise_event(names.conversation_conference_failed, {"reason": event.reason})
        elif isinstance(event, ev.LegFailed):
            self.failure = event.reason
        elif isinstance(event, ev.CallEnded):
            self._ending(event.cause)
        if not isinstance(event, PARTIAL_EVENTS):
            self.sync(snapshot, ended=isinstance(event, ev.CallEnded))

    def _ending(self, cause: str) -> None:
        if self.over:
            return
        if cause == str(Cause.BUSY):
            self.destination.raise_event(self.names.conversation_busy)
        elif cause in FAILURE_REASONS:
            reason = self.failure or FAILURE_REASONS[cause]
            self.destination.raise_event(self.names.conversation_failed, {"reason": reason})

    def sync(self, snapshot, ended: bool = False) -> None:
        if self.over:
            return
        state = RELEASED if ended else _state(snapshot)
        if state != self.state:
            self._state_changed(state)
        if state == RELEASED:
            return
        if snapshot.muted != self.muted:
            self._mute_changed(snapshot.muted)
        if self.talked:
            self._parties_changed(snapshot.parties)

    def dispose(self) -> None:
        """The client disposes of the conversation: ``conversation.disposed``, then it is gone (once
        its init was answered: until then its events wait, this one last)."""
        if self.disposed:
            return
        self.disposed = True
        self.destination.raise_event(self.names.conversation_disposed)
        if self.destination.ready:
            self.destination.dispose()

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
        self.destination.raise_event(event)
        self.owner.conversation_changed(self)

    def _mute_changed(self, muted: bool) -> None:
        self.muted = muted
        if muted:
            self.destination.raise_event(self.names.conversation_mute)
        elif self.state == TALKING:
            self.destination.raise_event(self.names.conversation_talking)

    def _parties_changed(self, parties) -> None:
        now = {party.leg_id: party for party in parties}
        for leg_id, party in now.items():
            if leg_id not in self.parties:
                self.parties[leg_id] = party.number
                body = Party(party.number or UNKNOWN_NUMBER, party.name).to_body()
                self.destination.raise_event(self.names.conversation_partyadded, body)
        for leg_id in [leg_id for leg_id in self.parties if leg_id not in now]:
            number = self.parties.pop(leg_id)
            self.destination.raise_event(self.names.conversation_partyremoved, {"number": number or UNKNOWN_NUMBER})


@attrs.define(eq=False)
class TrackedCall:
    """The desktop's view of one call of the agent's extension (an interaction) and of the consult
    call placed from it, and the destinations they feed.

    :param names: the message names (:class:`gateway.cti.names.CtiNames`).
    :param call_id: the primary call (the interaction's id).
    :param interaction: the interaction destination; the conversations are made here, as its children.
    """

    names: object
    call_id: str
    interaction: object
    primary: TrackedConversation = None
    consult: TrackedConversation | None = None
    interaction_state: str | None = None
    #: the id of the conversation the agent is on (``interaction.focuschanged`` when it moves)
    focus: str = PRIMARY

    def __attrs_post_init__(self):
        self.primary = TrackedConversation(self.names, self.call_id, self, PRIMARY)

    @property
    def conversation(self):
        """The primary conversation's destination."""
        return self.primary.destination

    @property
    def over(self) -> bool:
        return self.interaction_state in (ENDED, COMPLETED)

    def conversations(self):
        """The live conversations: the primary, and the consult when there is one."""
        return [c for c in (self.primary, self.consult) if c is not None and not c.disposed]

    def conversation_for(self, call_id: str) -> TrackedConversation | None:
        return next((c for c in (self.primary, self.consult) if c is not None and c.call_id == call_id), None)

    # -- init responses ------------------------------------------------------------------------

    def interaction_init(self, snapshot) -> dict:
        """The ``interaction.query.init`` response body: the consult is named only while it is live,
        in STARTED; nothing is named once the interaction is over (the vendor's telephony page)."""
        state = self._state(snapshot)
        if state in (ENDED, COMPLETED):
            return InteractionInit(state, data=interaction_data(self.call_id, snapshot)).to_body()
        consult = self.consult.conversation_id if self._consulting() and state == STARTED else None
        return InteractionInit(state, primary=PRIMARY, consult=consult,
                               data=interaction_data(self.call_id, snapshot)).to_body()

    def _state(self, snapshot) -> str:
        if self.interaction_state == COMPLETED:
            return COMPLETED
        if self._consulting() and not self.primary.disposed:
            return STARTED
        primary = RELEASED if self.primary.over else _state(snapshot)
        return INTERACTION_STATE[primary]

    def _consulting(self) -> bool:
        return self.consult is not None and not self.consult.disposed and not self.consult.over

    # -- following the calls -------------------------------------------------------------------

    def start(self, snapshot, consult=None) -> None:
        """The call has just been announced (or listed): ``started`` and the present state of each
        conversation (``consult``: the snapshot of its live consult call, if any)."""
        self.primary.start(snapshot)
        if consult is not None and consult.state is not RELEASED:
            self.consult_created(consult)

    def consult_created(self, snapshot) -> None:
        """A consult call was placed from the primary: its conversation appears under the interaction
        (the bridge registers and initialises it once the consult response names it)."""
        if self._consulting():
            self.consult.dispose()
        self.consult = TrackedConversation(self.names, snapshot.call_id, self, snapshot.call_id)
        self.consult.start(snapshot)

    def conversation_ready(self, conversation) -> None:
        """A conversation's init was answered: a live consult takes the focus."""
        if conversation is self.consult and self._consulting():
            self._focus(conversation)

    def follow(self, event, snapshot) -> None:
        """An event of the primary call, with its snapshot."""
        if isinstance(event, ev.ConsultEnded):
            self._consult_link_ended(event, snapshot)
        else:
            self.primary.follow(event, snapshot)

    def follow_consult(self, event, snapshot) -> None:
        """An event of the consult call, with its snapshot."""
        consult = self.conversation_for(snapshot.call_id if snapshot is not None else event.call_id)
        if consult is None or consult is self.primary:
            return
        consult.follow(event, snapshot)

    def _consult_link_ended(self, event, snapshot) -> None:
        outcome = event.outcome
        if outcome == "transferred":
            # the vendor's order: the primary's state update and its disposal, the focus change, then
            # (at the consult's end) the consult's state update and its disposal, the interaction's end
            self.primary.sync(snapshot, ended=True)
            self.primary.dispose()
            consult = self.conversation_for(event.consult_id)
            if consult is not None and not consult.disposed:
                self._focus(consult, always=True)
        elif outcome == "primary_ended":
            # the consult goes on alone: the interaction stays STARTED with it, and it has the focus
            self.primary.sync(snapshot, ended=True)
            if self._consulting():
                self._focus(self.consult)
        else:
            self.primary.sync(snapshot)

    def conversation_changed(self, conversation) -> None:
        """A conversation's state changed: a consult that ended is disposed of (the focus returns
        to a live primary); the focus follows the one conversation talking; the interaction's state
        follows."""
        if conversation is self.consult and conversation.over:
            conversation.dispose()
            if not self.primary.over:
                self._focus(self.primary)
        elif conversation.state == TALKING and not any(
            c.state == TALKING for c in self.conversations() if c is not conversation
        ):
            if self.consult is not None and not self.consult.disposed:
                self._focus(conversation)
        self._interaction_state_changed()

    def _focus(self, conversation, always: bool = False) -> None:
        """The agent is now on ``conversation``: ``interaction.focuschanged {"id"}``. A consult the
        bridge has not initialised yet takes the focus when it has (:meth:`conversation_ready`)."""
        if conversation is not self.primary and not conversation.destination.ready:
            return
        if self.focus == conversation.conversation_id and not always:
            return
        self.focus = conversation.conversation_id
        self.interaction.raise_event(self.names.interaction_focuschanged, {"id": conversation.conversation_id})

    def _interaction_state_changed(self) -> None:
        names = self.names
        if self.interaction_state == COMPLETED:
            return
        if self._consulting():
            state = STARTED
        else:
            state = INTERACTION_STATE[self.primary.state]
        if state == self.interaction_state:
            return
        self.interaction_state = state
        self.interaction.raise_event(
            {
                ALERTING: names.interaction_alerting,
                DIALING: names.interaction_dialing,
                STARTED: names.interaction_started,
                ENDED: names.interaction_ended,
            }[state]
        )

    def complete(self) -> None:
        """``interaction.request.complete`` on an ended call."""
        self.interaction_state = COMPLETED
        self.interaction.raise_event(self.names.interaction_completed)


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
