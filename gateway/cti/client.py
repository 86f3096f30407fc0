"""The Bridge Client: answers the processor bridge's queries and requests from the call core's state,
and raises the bridge's events from the call core's events.

One :class:`BridgeClient` lives as long as the adapter; each connection (:class:`~gateway.cti.link.BridgeLink`)
gets a fresh :class:`~gateway.cti.destinations.DestinationTree`, which the bridge fills by initialising
its destinations again, so a reconnection neither loses a call (a channel's init lists every live call
of its extension) nor announces one twice (a call listed there is not announced again).

The destinations and the IDs the client gives them:

- control ``<processor>.CONTROL``: the status query (answered, then the status event), capabilities;
  the status is DEGRADED while a telephony-side readiness component is down, STOPPED at shutdown;
- session ``<target the bridge chose>``: the agent named in ``session.query.init`` must be in
  ``[[cti.agents]]``; its one channel group is ``cg``, which has one telephony channel ``tel``
  whose end-point is the agent's extension;
- interaction ``<call id>`` under the channel, announced with ``channel.interaction`` when a call of the
  extension appears (inbound, click-to-dial, ``channel.request.dial``); its conversation is ``primary``,
  and a consult call placed from it (``interaction.request.consult``) is its second conversation, with
  the consult call's id, never an interaction of its own.

``session.request.logout`` forgets the session and everything below it without an event, then
answers; ``session.request.dispose`` answers, then does the same. Neither touches the agent's calls.

Every request becomes one registry command; its failure (unknown call, illegal in this state, driver
error...) is the FAILURE response's errorMessage.
"""

from __future__ import annotations

import attrs
from twisted.logger import Logger

from gateway.cluster.errors import LeaseLost
from gateway.core import events as ev
from gateway.core.dtmf import MAX_DTMF_DIGITS, PHONE_KEYS
from gateway.core.errors import UnknownCall
from gateway.core.states import LegState
from gateway.cti.calls import TrackedCall
from gateway.cti.destinations import DestinationTree
from gateway.cti.link import Refusal, Reply
from gateway.cti.names import (
    BodyError,
    Channel,
    ChannelGroupInit,
    ChannelInit,
    ConsultStarted,
    ControlStatus,
    InteractionAnnouncement,
    SessionInit,
    SessionLogin,
    control_target,
)

log = Logger()

#: the id of each session's channel group, and of its telephony channel
CHANNEL_GROUP_ID = "cg"
TELEPHONY_CHANNEL_ID = "tel"

#: what the capabilities response says, by capability (its wire name is ``[cti.names] capability_<key>``)
CAPABILITIES = {
    "channel_groups": True,
    "telephony": True,
    "answer": True,
    "hold": True,
    "mute": True,
    "dtmf": True,
    "blind_transfer": True,
    "blind_conference": True,
    "consult": True,
    "alternate": True,
    "transfer_to_consult": True,
    "conference_in_consult": True,
}

#: who the registry is told ended a call or removed a party
BY = "desktop"


@attrs.define(eq=False)
class AgentSession:
    """What a session destination stands for: a configured agent, and its ready state."""

    agent: str
    extension: str
    ready: bool = False


class BridgeClient:
    """The Bridge Client's logic, handler of every :class:`~gateway.cti.link.BridgeLink`.

    :param config: the ``[cti]`` section.
    :param registry: the call core, an :class:`~gateway.core.interfaces.ICallControl`.
    :param metrics: a :class:`gateway.cti.metrics.CtiMetrics`.
    :param component: the readiness component of the link (``gateway.context.Component``).
    """

    def __init__(self, config, registry, metrics, component):
        self.config = config
        self.names = config.names
        self.registry = registry
        self.metrics = metrics
        self.component = component
        component.set_down(f"connecting to {config.connect}")
        self.link = None
        self.tree = None
        #: in cluster mode, the singleton link's ``check``: raises LeaseLost when this node no longer
        #: holds the HIS link (a request it would still get is refused, not run)
        self.fence = None
        self.telephony = (self.names.status_started, None)
        self._handlers = self._build_handlers()
        self._unsubscribe = registry.subscribe(self._call_event)

    def _build_handlers(self):
        """(destination kind, message name) -> handler(destination, message)."""
        n = self.names
        table = {
            "control": {n.control_query_status: self._control_status, n.cti_query_capabilities: self._capabilities},
            "session": {
                n.session_request_ready: self._ready,
                n.session_request_notready: self._not_ready,
                n.session_request_logout: self._logout,
                n.session_request_dispose: self._session_dispose,
            },
            "channelgroup": {n.channelgroup_query_init: self._channelgroup_init},
            "channel": {
                n.channel_query_init: self._channel_init,
                n.channel_request_dial: self._dial,
                n.channel_request_dispose: self._channel_dispose,
            },
            "interaction": {
                n.interaction_query_init: self._interaction_init,
                n.interaction_request_accept: self._command("answer"),
                # 004's reject is for an alerting call and a call still dialling out alike: the core's cancel
                n.interaction_request_reject: self._command("cancel", by=BY),
                n.interaction_request_complete: self._complete,
                n.interaction_request_dispose: self._dispose,
                n.interaction_request_register: self._register,
                n.interaction_request_consult: self._consult,
                n.interaction_request_alternate: self._command("alternate", by=BY),
                n.interaction_request_transfertoconsult: self._command("transfer_to_consult", by=BY),
                n.interaction_request_conferenceinconsult: self._command("conference_in_consult", by=BY),
            },
            "conversation": {
                n.conversation_query_init: self._conversation_init,
                n.conversation_request_answer: self._command("answer"),
                n.conversation_request_release: self._command("hangup", by=BY),
                n.conversation_request_removeparty: self._command("remove_party", "number", by=BY),
                n.conversation_request_hold: self._command("hold"),
                n.conversation_request_retrieve: self._command("retrieve"),
                n.conversation_request_mute: self._command("mute"),
                n.conversation_request_unmute: self._command("unmute"),
                n.conversation_request_transfer: self._command("transfer", "destination", by=BY),
                n.conversation_request_conference: self._command("conference", "destination", by=BY),
                n.conversation_request_senddtmf: self._send_dtmf,
                n.conversation_request_dispose: self._dispose,
            },
        }
        return {(kind, name): handler for kind, handlers in table.items() for name, handler in handlers.items()}

    # -- the link --------------------------------------------------------------------------------

    def link_made(self, link):
        if self.tree is not None:
            self.tree.close()
        self.link = link
        self.tree = DestinationTree(link.send)
        self.tree.add("control", control_target(self.config.processor))
        self.metrics.link_up(True)
        self.component.set_up()

    def link_lost(self, link, reason):
        if link is not self.link:
            return
        self.tree.close()
        self.link = self.tree = None
        self.metrics.link_up(False)
        self.component.set_down(f"link to the processor bridge lost: {reason.getErrorMessage()}")

    def observe(self, direction, message):
        self.metrics.observe(direction, message)

    def stop(self):
        """The gateway stops: tell the bridge (status STOPPED), and stop following the call core."""
        self._unsubscribe()
        self.telephony = (self.names.status_stopped, None)
        control = self._control()
        if control is not None and control.ready:
            control.raise_event(self.names.control_status, self._status_body())

    # -- dispatch --------------------------------------------------------------------------------

    def handle(self, message):
        """Answer one query or request (see :class:`~gateway.cti.link.BridgeLink`)."""
        if self.fence is not None:
            try:
                self.fence()
            except LeaseLost as e:
                raise Refusal(f"this gateway node does not hold the HIS link any more ({e}); try again") from None
        if message.name == self.names.session_query_init:
            return self._session_init(message)
        destination = self.tree.get(message.target)
        if destination is None:
            raise Refusal(f"unknown target {message.target!r}: there is no such destination")
        handler = self._handlers.get((destination.kind, message.name))
        if handler is None:
            raise Refusal(f"unknown name {message.name!r} for the {destination.kind} destination {message.target}")
        for key in self.names.required_properties(message.name):
            value = message.body.get(key)
            if not isinstance(value, str) or not value:
                raise Refusal(f"{message.name} needs the property {key!r} (a non-empty string), not {_short(value)}")
        return handler(destination, message)

    # -- control ---------------------------------------------------------------------------------

    def _control(self):
        return self.tree.get(control_target(self.config.processor)) if self.tree is not None else None

    def _status_body(self):
        status, reason = self.telephony
        return ControlStatus(status, reason).to_body()

    def _control_status(self, control, message):
        body = self._status_body()

        def answered():
            control.init_answered()
            control.raise_event(self.names.control_status, body)

        return Reply(body, answered)

    def _capabilities(self, control, message):
        return {self.names.capability(key): value for key, value in CAPABILITIES.items()}

    def telephony_changed(self, up, reason=None):
        """The telephony side went down (``reason`` says which part and why) or came back."""
        names = self.names
        self.telephony = (names.status_started, None) if up else (names.status_degraded, reason)
        log.info("HIS: telephony side {state}: {reason}", state="up" if up else "down",
                 reason=reason or "all components up")
        if self.tree is None:
            return
        control = self._control()
        if control is not None and control.ready:
            control.raise_event(names.control_status, self._status_body())
        for channel in self.tree.of_kind("channel"):
            if channel.ready:
                channel.raise_event(names.channel_available if up else names.channel_unavailable)

    # -- session, channel group, channel ---------------------------------------------------------

    def _session_init(self, message):
        existing = self.tree.get(message.target)
        if existing is not None and existing.kind != "session":
            raise Refusal(f"target {message.target!r} is the {existing.kind} destination, not a session")
        try:
            login = SessionLogin.from_body(message.body)
        except BodyError as e:
            raise Refusal(str(e)) from None
        agent = self.config.agent(login.name)
        if agent is None:
            raise Refusal(f"agent {login.name!r} is not configured on this gateway ([[cti.agents]])")
        subject = AgentSession(agent.agent, agent.extension)
        session = self.tree.add("session", message.target, subject=subject)
        group = session.add_child("channelgroup", CHANNEL_GROUP_ID, subject)
        log.info("HIS: agent {agent} logged in on {target} (extension {extension})", agent=agent.agent,
                 target=message.target, extension=agent.extension)
        return Reply(SessionInit(group.id).to_body(), session.init_answered)

    def _ready(self, session, message):
        session.subject.ready = True

    def _not_ready(self, session, message):
        session.subject.ready = False

    def _logout(self, session, message):
        """The agent logs out: the session and everything below it are forgotten at once, without an
        event, and only then is the request answered. The agent's calls go on (a later login's
        channel init lists them)."""
        log.info("HIS: agent {agent} logged out of {target}", agent=session.subject.agent, target=session.target)
        session.dispose()

    def _session_dispose(self, session, message):
        """The bridge disposes of the session: answered, then the session and everything below it are
        forgotten without an event; the agent's calls go on."""

        def disposed():
            log.info("HIS: session {target} of agent {agent} disposed", target=session.target,
                     agent=session.subject.agent)
            session.dispose()

        return Reply(after=disposed)

    def _channelgroup_init(self, group, message):
        extension = group.subject.extension
        channel = group.add_child("channel", TELEPHONY_CHANNEL_ID, extension)
        for snapshot in self.registry.calls_for(extension):
            if snapshot.state is LegState.RELEASED or snapshot.call_id in channel.children:
                continue
            primary = self._snapshot(snapshot.consult_of) if snapshot.consult_of else None
            if primary is not None:
                # a consult call is a conversation of its primary's interaction (listed even when the
                # primary has ended, since the consult goes on in it)
                if primary.call_id not in channel.children:
                    self._track(channel, primary.call_id, primary, consult=snapshot)
            else:
                self._track(channel, snapshot.call_id, snapshot)
        return Reply(ChannelGroupInit([Channel(channel.id, extension)]).to_body(), group.init_answered)

    def _channel_init(self, channel, message):
        state = "ACTIVATED" if self.telephony[0] == self.names.status_started else "UNAVAILABLE"
        return Reply(ChannelInit(state, list(channel.children)).to_body(), channel.init_answered)

    def _dial(self, channel, message):
        d = self.registry.originate(channel.subject, message.body["destination"])
        return d.addCallback(lambda snapshot: {"id": snapshot.call_id})

    def _channel_dispose(self, channel, message):
        def disposed():
            channel.raise_event(self.names.channel_disposed)
            channel.dispose()

        return Reply(after=disposed)

    # -- interaction and conversation ------------------------------------------------------------

    def _track(self, channel, call_id, snapshot, consult=None):
        """Follow a call of the channel's extension: its interaction and conversation destinations
        (with the conversation of its live consult call, ``consult`` or the one the snapshot names)."""
        interaction = channel.add_child("interaction", call_id)
        interaction.subject = TrackedCall(self.names, call_id, interaction)
        if consult is None and snapshot.consult:
            consult = self._snapshot(snapshot.consult)
        interaction.subject.start(snapshot, consult)
        return interaction

    def _snapshot(self, call_id):
        try:
            return self.registry.call(call_id)
        except UnknownCall:
            return None

    def _interaction_init(self, interaction, message):
        body = interaction.subject.interaction_init(self._snapshot(interaction.subject.call_id))
        return Reply(body, interaction.init_answered)

    def _conversation_init(self, conversation, message):
        body = conversation.subject.conversation_init(self._snapshot(conversation.subject.call_id))
        return Reply(body, conversation.subject.init_answered)

    def _register(self, interaction, message):
        """The bridge asks the client to prepare a conversation it named (the primary, or the consult of
        the consult response) before initialising it: it exists already, so this only checks the id."""
        conversation_id = message.body["id"]
        conversation = interaction.children.get(conversation_id)
        if conversation is None or conversation.kind != "conversation":
            raise Refusal(f"no conversation {_short(conversation_id)} on the interaction {interaction.target}")

    def _consult(self, interaction, message):
        """Dial a consult call from the interaction's call; the response names its conversation,
        which the bridge then registers and initialises."""
        number = message.body["destination"]
        d = self.registry.consult(interaction.subject.call_id, number, by=BY)

        def placed(snapshot):
            if snapshot.state is LegState.RELEASED:
                raise Refusal(f"the consult call to {number} ended at once ({snapshot.cause})")
            return ConsultStarted(snapshot.call_id).to_body()

        return d.addCallback(placed)

    def _command(self, command, argument=None, **kwargs):
        """A handler running the registry's ``command`` on the destination's call."""

        def run(destination, message):
            args = (message.body[argument],) if argument else ()
            d = getattr(self.registry, command)(destination.subject.call_id, *args, **kwargs)
            return d.addCallback(lambda _: None)

        return run

    def _send_dtmf(self, conversation, message):
        """Play the digits (answered once the last tone was played); only 0-9, * and #, as 004 says."""
        digits = message.body.get("digits")
        if not isinstance(digits, str) or not 0 < len(digits) <= MAX_DTMF_DIGITS:
            raise Refusal(
                f"senddtmf: digits must be a string of 1-{MAX_DTMF_DIGITS} of 0-9, * and #, not {_short(digits)}"
            )
        for position, digit in enumerate(digits, 1):
            if digit not in PHONE_KEYS:  # 004: "String (0-9, *, #)"
                raise Refusal(f"senddtmf: {digit!r} (digit {position} of {_short(digits)}) is not a DTMF digit:"
                              " only 0-9, * and #")
        return self._command("send_dtmf", "digits")(conversation, message)


    def _complete(self, interaction, message):
        tracked = interaction.subject
        if not tracked.over:
            raise Refusal(f"cannot complete: the interaction is {tracked.interaction_state}; release the call first")
        tracked.complete()

    def _dispose(self, destination, message):
        """Dispose of an interaction or conversation, and of its call (an interaction: of its live
        consult call too), once the response has gone out."""

        def disposed():
            destination.dispose()
            tracked = destination.subject
            call_ids = [tracked.call_id]
            if destination.kind == "interaction" and tracked.consult is not None and not tracked.consult.over:
                call_ids.append(tracked.consult.call_id)
            for call_id in call_ids:
                if self._snapshot(call_id) is not None:
                    d = self.registry.dispose(call_id, by=BY)
                    d.addErrback(lambda f, call_id=call_id: log.warn(
                        "HIS: disposing call {call_id} failed: {error}", call_id=call_id, error=f.getErrorMessage()))

        return Reply(after=disposed)

    # -- call core events ------------------------------------------------------------------------

    def _call_event(self, event, call):
        """An event of the core with its call's snapshot: the interaction on each channel of the call's
        extension follows it (a new call is announced there first). Nothing is asked of the core, and
        only the channels are looked at (one per logged-in agent), never every call or interaction."""
        if self.tree is None or event.extension is None:
            return
        for channel in self.tree.of_kind("channel"):
            if channel.subject != event.extension:
                continue
            primary = channel.children.get(call.consult_of) if call is not None and call.consult_of else None
            if primary is not None:
                # the consult call of a tracked call: a conversation of that call's interaction
                if isinstance(event, ev.CallCreated):
                    primary.subject.consult_created(call)
                else:
                    primary.subject.follow_consult(event, call)
                continue
            if isinstance(event, ev.CallCreated):
                self._announce(channel, call)
            interaction = channel.children.get(event.call_id)
            if interaction is not None:
                interaction.subject.follow(event, call)

    def _announce(self, channel, call):
        """A new call of an agent's extension: its interaction appears on the agent's channel (unless
        the call is already over, e.g. refused because the extension was busy)."""
        if call.state is LegState.RELEASED or call.call_id in channel.children:
            return
        self._track(channel, call.call_id, call)
        if channel.ready:
            announcement = InteractionAnnouncement(call.call_id).to_body()
            channel.raise_event(self.names.channel_interaction, announcement)

    # -- status ----------------------------------------------------------------------------------

    def status(self):
        """The live status for ``/api/status``."""
        status, reason = self.telephony
        tree = self.tree
        sessions = tree.of_kind("session") if tree is not None else []
        return {
            "connected": self.link is not None,
            "peer": self.link.peer if self.link is not None else None,
            "status": status,
            "reason": reason,
            "agents": [
                {"agent": s.subject.agent, "extension": s.subject.extension, "target": s.target,
                 "ready": s.subject.ready}
                for s in sessions
            ],
            "interactions": len(tree.of_kind("interaction")) if tree is not None else 0,
        }


def _short(value, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters with ``...`` when longer (a peer's value in an error)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
