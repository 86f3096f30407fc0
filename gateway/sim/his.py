"""A strict simulator of the OpenMethods HIS processor bridge, the peer of the gateway's Bridge Client.

The bridge listens (TCP, optionally TLS) and the Bridge Client connects. On each connection the
simulator plays the bridge's side of the protocol (004 and the HIS notes in ``shared/protocols``):

1. start-up: the control status query to ``<processor>.CONTROL``; after its response, waits for the
   status event, then sends ``cti.query.capabilities``;
2. once the status is *started* and the capabilities are known, logs every configured agent in:
   ``session.query.init`` on ``<agent>``, ``channelgroup.query.init`` on ``<agent>.<cg>``, then
   ``channel.query.init`` on each channel (and ``interaction.query.init`` for interactions already there);
3. when the client announces an interaction on a channel, initialises the interaction destination,
   then the conversation destinations it names (primary, and consult when present): for each, first
   the request to prepare and register it (``interaction.request.register {"id"}``), then its init;
   after a successful ``interaction.request.consult`` the consult conversation the response names
   (``{"id"}``) is registered and initialised the same way;
4. sends requests (answer, hold, transfer, dial, ...) from a script or from test code
   (:meth:`HisBridgeSim.send`), each returning a Deferred that fires with the response.

Everything the client sends is checked against the specification; each breach is appended to
:attr:`HisBridgeSim.violations` as a readable sentence (and logged): missing, duplicate, unsolicited,
late or mismatched responses; events on unknown, uninitialised or disposed destinations, or of the
wrong kind, or missing required properties; conversation events before ``conversation.started`` or
after ``conversation.ended`` (but its ``conversation.disposed``); a focus change to no live
conversation of the interaction; a consult accepted while another is live, or named by the interaction
init outside STARTED (and any conversation named in ENDED or COMPLETED); a transfer to consult whose
events do not come in the vendor's order (the primary's state update and its disposal, the focus
change, the consult's state update and its disposal, the interaction's end); any event on a session,
or below it, once its logout or dispose was sent ("no secondary events"); init response bodies of the
wrong shape; malformed frames and envelopes. Every event received is kept
in order, per target (:attr:`HisBridgeSim.events`) and overall (:attr:`HisBridgeSim.event_log`).

Script steps (a list of dicts, or a JSON file for the CLI), run in order once login is complete:
``{"wait": "<event name>", "target"?: "..."}`` (matches events received since the connection was made
and not yet consumed by an earlier wait), ``{"send": "<verb>", "target"?: "...", <properties>}`` (the
target defaults to the latest active destination of the verb's kind; see :data:`VERBS`) and
``{"pause": <seconds>}``.

Robustness probes: :meth:`HisBridgeSim.send_hostile` writes raw bytes the client should refuse (the
cases of ``tests/corpus/his.json``), then a probe query, and fires with the client's responses that
came in between: its FAILURE answers to the hostile frames (none for a frame it dropped). Those
responses answer nothing the simulator asked, so they are collected rather than counted as violations.

The wire (framing, envelope, names, bodies) is the simulator's own, written from the specification in
:mod:`gateway.sim.his_wire`: nothing is shared with the gateway's Bridge Client, so a wire mistake on
either side shows as a violation here.

Run it alone with ``python -m gateway.sim his-bridge --port 9500 [--tls]``: one line per message.
"""

import argparse
import json
import sys

import attrs
from twisted.internet import defer, task
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from gateway.sim import his_wire as env
from gateway.sim.his_wire import (
    DEFAULT_MAX_FRAME_SIZE,
    BodyError,
    ChannelGroupInit,
    ChannelInit,
    ConsultStarted,
    ControlStatus,
    ConversationInit,
    FramedJSON,
    HisNames,
    InteractionAnnouncement,
    InteractionInit,
    SessionInit,
    SessionLogin,
    child_target,
    control_target,
)

log = Logger()

#: Seconds the client is given to answer a query or request.
DEFAULT_RESPONSE_TIMEOUT = 30.0

#: Request verb (script and :meth:`HisBridgeSim.send`) -> (destination kind, :class:`HisNames` key).
VERBS = {
    "answer": ("conversation", "conversation_request_answer"),
    "release": ("conversation", "conversation_request_release"),
    "hold": ("conversation", "conversation_request_hold"),
    "retrieve": ("conversation", "conversation_request_retrieve"),
    "mute": ("conversation", "conversation_request_mute"),
    "unmute": ("conversation", "conversation_request_unmute"),
    "transfer": ("conversation", "conversation_request_transfer"),
    "conference": ("conversation", "conversation_request_conference"),
    "removeparty": ("conversation", "conversation_request_removeparty"),
    "senddtmf": ("conversation", "conversation_request_senddtmf"),
    "dispose": ("conversation", "conversation_request_dispose"),
    "accept": ("interaction", "interaction_request_accept"),
    "reject": ("interaction", "interaction_request_reject"),
    "complete": ("interaction", "interaction_request_complete"),
    "dispose-interaction": ("interaction", "interaction_request_dispose"),
    "consult": ("interaction", "interaction_request_consult"),
    "alternate": ("interaction", "interaction_request_alternate"),
    "transfer-to-consult": ("interaction", "interaction_request_transfertoconsult"),
    "conference-in-consult": ("interaction", "interaction_request_conferenceinconsult"),
    "dial": ("channel", "channel_request_dial"),
    "dispose-channel": ("channel", "channel_request_dispose"),
    "ready": ("session", "session_request_ready"),
    "notready": ("session", "session_request_notready"),
    "logout": ("session", "session_request_logout"),
    "dispose-session": ("session", "session_request_dispose"),
}

#: Verbs whose success disposes of the destination (and everything under it).
DISPOSING_VERBS = frozenset({"dispose", "dispose-interaction", "dispose-channel", "logout", "dispose-session"})

#: Verbs after which the client may raise no event on the destination or below it ("no secondary events").
SILENT_VERBS = frozenset({"logout", "dispose-session"})

#: Conversation roles within a telephony interaction.
PRIMARY, CONSULT = "primary", "consult"

#: Destination states.
PENDING, ACTIVE, FAILED, DISPOSED = "pending", "active", "failed", "disposed"

#: Conversation states in which the conversation has evidently started before its destination existed.
IN_PROGRESS_STATES = frozenset({"TALKING", "HELD", "RELEASED"})

#: kind -> parser of its init response body.
INIT_PARSERS = {
    "session": SessionInit.from_body,
    "channelgroup": ChannelGroupInit.from_body,
    "channel": ChannelInit.from_body,
    "interaction": InteractionInit.from_body,
    "conversation": ConversationInit.from_body,
}

#: Kinds whose init queries make up an agent's login.
LOGIN_KINDS = frozenset({"session", "channelgroup", "channel"})


class SimulatorError(Exception):
    """The simulator cannot do what was asked (not connected, no such destination, no response)."""


@attrs.define
class Destination:
    """One destination the simulator created: its kind, target, state and parsed init response."""

    kind: str
    target: str
    state: str = PENDING
    init: object = None
    started: bool = False
    disposed_event_seen: bool = False
    #: a conversation's role in its interaction (primary or consult)
    role: str | None = None
    #: an interaction's conversations: role -> target (the latest consult)
    conversations: dict = attrs.Factory(dict)
    #: whether the conversation has raised its end (``conversation.ended``)
    ended: bool = False
    #: set when a request after which the client must stay silent on this destination was sent
    silenced_by: str | None = None
    #: an interaction's transfer to consult in progress: (event log position when sent, primary, consult, answered)
    transfer: list | None = None


@attrs.frozen
class ReceivedEvent:
    """One event received from the client."""

    target: str
    name: str
    body: dict


@attrs.frozen
class Wait:
    event: str
    target: str | None = None


@attrs.frozen
class Send:
    verb: str
    target: str | None = None
    properties: dict = attrs.field(factory=dict)


@attrs.frozen
class Pause:
    seconds: float


def parse_step(step):
    """A script step from its JSON form (``wait``, ``send`` or ``pause``); ValueError if it is not one."""
    if isinstance(step, (Wait, Send, Pause)):
        return step
    if not isinstance(step, dict):
        raise ValueError(f"script step {step!r} is not an object")
    fields = dict(step)
    target = fields.pop("target", None)
    if "wait" in fields and len(fields) == 1:
        return Wait(fields["wait"], target)
    if "send" in fields:
        verb = fields.pop("send")
        if verb not in VERBS:
            raise ValueError(f"script step {step!r}: unknown verb {verb!r}; known: {', '.join(VERBS)}")
        return Send(verb, target, fields)
    if "pause" in fields and len(fields) == 1 and target is None:
        return Pause(float(fields["pause"]))
    raise ValueError(f"script step {step!r} is not a wait, send or pause step")


@attrs.define
class _Outstanding:
    message: env.Envelope
    deferred: defer.Deferred
    timeout: object


class _BridgeProtocol(FramedJSON):
    """One client link; everything it hears goes to the simulator."""

    def __init__(self, sim):
        super().__init__(sim.byteorder, sim.max_frame_size)
        self.sim = sim

    def connectionMade(self):
        self.sim._link_made(self)

    def connectionLost(self, reason):
        self.sim._link_lost(self, reason)

    def messageReceived(self, obj):
        self.sim._message_received(self, obj)

    def frameRejected(self, reason):
        self.sim._violation(f"malformed frame from {self.peer}: {reason}")


class HisBridgeSim(Factory):
    """The processor bridge, as a server factory; one client link at a time.

    :param reactor: for timeouts and script pauses (a ``task.Clock`` in unit tests).
    :param names: the message names both ends agree on (``[cti.names]``): a :class:`HisNames`, a mapping
        of its keys, or any object with those keys as attributes; default the defaults.
    :param processor: the processor name; the control target is ``<processor>.CONTROL``.
    :param agents: the agents logged in once the client has started.
    :param script: steps run after login (see the module docstring).
    :param trace: ``trace(direction, envelope)`` for each message (``"->"`` sent, ``"<-"`` received).
    """

    noisy = False

    def __init__(
        self,
        reactor,
        names=None,
        processor="PROC",
        agents=("alice",),
        script=(),
        byteorder="big",
        max_frame_size=DEFAULT_MAX_FRAME_SIZE,
        response_timeout=DEFAULT_RESPONSE_TIMEOUT,
        trace=None,
    ):
        self.reactor = reactor
        self.names = HisNames.coerce(names)
        self.processor = processor
        self.agents = tuple(agents)
        self.script = [parse_step(step) for step in script]
        self.byteorder = byteorder
        self.max_frame_size = max_frame_size
        self.response_timeout = response_timeout
        self._trace = trace
        #: Readable descriptions of every protocol breach seen, in order.
        self.violations = []
        #: Every event received, in order, and the same per target.
        self.event_log = []
        self.events = {}
        self._waiters = []
        self._link = None
        self._reset_link_state()

    def _reset_link_state(self):
        self.destinations = {}
        self.status = None
        self.capabilities = None
        #: what the capabilities response said under ``[cti.names] capability_channel_groups`` (None: nothing)
        self.channel_groups_supported = None
        self._capabilities_asked = False
        self.ready = False
        self._outstanding = {}
        self._answered = set()
        self._expired = set()
        self._login_pending = 0
        self._login_started = False
        self._closing = False
        self._log_start = len(self.event_log)
        self._script_run = None
        self._hostile = None
        self._hostile_probe = None

    # -- public API ----------------------------------------------------------------------------

    def listen(self, endpoint):
        """Listen on ``endpoint``; a Deferred firing with the listening port."""
        return endpoint.listen(self)

    def buildProtocol(self, addr):
        protocol = _BridgeProtocol(self)
        protocol.factory = self
        return protocol

    @property
    def connected(self):
        return self._link is not None

    def disconnect(self):
        """Close the client link (unanswered requests are then not held against the client)."""
        if self._link is not None:
            self._closing = True
            self._link.transport.loseConnection()

    def when_ready(self):
        """A Deferred firing with this simulator once every agent's login has been answered."""
        if self.ready:
            return defer.succeed(self)
        return self._when(lambda item: item == "ready", lambda item: self)

    def when_event(self, name, target=None):
        """A Deferred firing with the next :class:`ReceivedEvent` called ``name`` (on ``target``)."""
        return self._when(lambda item: _event_matches(item, name, target))

    def when_destination(self, kind):
        """A Deferred firing with the next :class:`Destination` of ``kind`` whose init succeeded."""
        return self._when(lambda item: isinstance(item, Destination) and item.kind == kind)

    def when_script_done(self):
        """A Deferred firing (with the list of responses) when the script of the current link has run."""
        return self._when(lambda item: isinstance(item, _ScriptDone), lambda item: item.responses)

    def active(self, kind):
        """The active destinations of ``kind``, oldest first."""
        return [d for d in self.destinations.values() if d.kind == kind and d.state == ACTIVE]

    def event_names(self, target):
        """The names of the events received on ``target``, in order."""
        return [e.name for e in self.events.get(target, [])]

    def send(self, verb, target=None, **properties):
        """Send the request ``verb`` (see :data:`VERBS`) to ``target``; a Deferred firing with the response.

        ``target`` defaults to the latest active destination of the verb's kind. The Deferred fails
        with :class:`SimulatorError` when there is no link or no such destination, or no response came.
        """
        kind, key = VERBS[verb]
        name = getattr(self.names, key)
        missing = [p for p in self.names.required_properties(name) if p not in properties]
        if missing:
            raise ValueError(f"{verb} needs {', '.join(missing)}")
        if target is None:
            candidates = self.active(kind)
            if not candidates:
                return defer.fail(SimulatorError(f"no active {kind} destination to {verb}"))
            target = candidates[-1].target
        d = self.request(env.request(name, target, properties))
        if verb in SILENT_VERBS:
            self._silence(target, name)
        if verb in DISPOSING_VERBS:
            d.addCallback(self._disposal_answered)
        if verb == "consult":
            d.addCallback(self._consult_answered, target)
        if verb == "transfer-to-consult":
            self._transfer_sent(target)
            d.addCallback(self._transfer_answered, target)
        return d

    def login(self, agent):
        """Log ``agent`` in again on this link (after a logout): ``session.query.init`` and what follows.
        A Deferred firing with the agent's channel :class:`Destination` once it is initialised."""
        if self._link is None:
            return defer.fail(SimulatorError(f"no client link to log {agent} in on"))
        channel = self._when(lambda item: isinstance(item, Destination) and item.kind == "channel"
                             and item.target.startswith(agent + "."))
        self._open("session", agent, SessionLogin(agent).to_body())
        return channel

    def request(self, message):
        """Send a query or request envelope as it is; a Deferred firing with its response.

        ``message`` is a :class:`~gateway.sim.his_wire.Envelope`, its wire form (a dict), or any
        object whose ``to_json()`` gives that wire form.
        """
        message = env.Envelope.coerce(message)
        return self._expect_response(message, lambda: self._send(message))

    def request_malformed(self, obj):
        """Send ``obj`` as it is, though it is not a valid envelope (a test of the client's robustness).

        Its ``header`` must still name a query or request (type, name, target, requestId): the
        Deferred fires with the response, which a client should send even so (a FAILURE).
        """
        header = obj["header"]
        named = env.Envelope(env.Header(header["type"], header["name"], header["target"], request_id=header["requestId"]))
        return self._expect_response(named, lambda: self._link.sendMessage(obj))

    def send_bytes(self, data):
        """Write raw ``data`` on the client link (broken or oversized frames, for robustness tests)."""
        if self._link is None:
            raise SimulatorError("no client link to write to")
        self._link.transport.write(data)

    def send_hostile(self, data):
        """Write raw ``data`` (frames the client should refuse), then a probe query on the control target.

        A Deferred firing with the headers (dicts, as the client sent them) of the responses that
        arrived before the probe's own: the client's answers to the hostile frames, ``[]`` if it
        dropped them all. It fails with :class:`SimulatorError` if the link is lost meanwhile: a
        client rightly drops a link whose stream is out of step, so the unanswered probe is not held
        against it.
        """
        if self._link is None:
            return defer.fail(SimulatorError("no client link to write to"))
        if self._hostile is not None:
            return defer.fail(SimulatorError("one hostile send at a time"))
        self._hostile = collected = []
        self.send_bytes(data)
        probe = env.query(self.names.cti_query_capabilities, control_target(self.processor))
        self._hostile_probe = probe.request_id
        d = self.request(probe)

        def done(result):
            if self._hostile is collected:
                self._hostile = None
            return collected if isinstance(result, env.Envelope) else result

        return d.addBoth(done)

    def _expect_response(self, message, send):
        if message.type not in env.ANSWERABLE:
            raise ValueError(f"{message.type} {message.name} expects no response")
        if self._link is None:
            return defer.fail(SimulatorError(f"no client link to send {message.name} to {message.target}"))
        d = defer.Deferred()
        timeout = self.reactor.callLater(self.response_timeout, self._expire, message.request_id)
        self._outstanding[message.request_id] = _Outstanding(message, d, timeout)
        send()
        return d

    # -- link ----------------------------------------------------------------------------------

    def _link_made(self, link):
        if self._link is not None:
            self._violation(f"second client link from {link.peer} while {self._link.peer} is connected; closed it")
            link.transport.loseConnection()
            return
        log.info("HIS bridge simulator: client {peer} connected", peer=link.peer)
        self._reset_link_state()
        self._link = link
        self._open("control", control_target(self.processor))

    def _link_lost(self, link, reason):
        if link is not self._link:
            return
        log.info("HIS bridge simulator: client {peer} gone: {reason}", peer=link.peer, reason=reason.getErrorMessage())
        self._link = None
        outstanding, self._outstanding = self._outstanding, {}
        held = [o for request_id, o in outstanding.items() if request_id != self._hostile_probe]
        if held and not self._closing:
            unanswered = ", ".join(_describe_request(o.message) for o in held)
            self._violation(f"client closed the link leaving {len(held)} unanswered: {unanswered}")
        for o in outstanding.values():
            o.timeout.cancel()
            o.deferred.errback(SimulatorError(f"link lost before the response to {_describe_request(o.message)}"))
        if self._script_run is not None:
            self._script_run.cancel()

    def _send(self, message):
        self._link.sendMessage(message.to_json())
        if self._trace is not None:
            self._trace("->", message)

    def _message_received(self, link, obj):
        if link is not self._link:
            return
        if self._hostile is not None and self._answers_no_request(obj):
            self._hostile.append(obj["header"])
            return
        try:
            message = env.Envelope.from_json(obj)
        except env.EnvelopeError as e:
            self._violation(f"malformed message from {link.peer}: {e}")
            return
        if self._trace is not None:
            self._trace("<-", message)
        if message.type is env.MessageType.RESPONSE:
            self._response_received(message)
        elif message.type is env.MessageType.EVENT:
            self._event_received(message)
        else:
            self._violation(f"client sent {_describe_request(message)}; the bridge answers no queries or requests")
            self._send(env.failure(message, "the processor bridge does not accept queries or requests"))

    # -- responses -----------------------------------------------------------------------------

    def _answers_no_request(self, obj):
        """Whether ``obj`` is a response whose requestId is none the simulator is waiting for."""
        header = obj.get("header")
        if not isinstance(header, dict) or header.get("type") != env.MessageType.RESPONSE.value:
            return False
        request_id = header.get("requestId")
        return not isinstance(request_id, str) or request_id not in self._outstanding

    def _response_received(self, response):
        request_id = response.request_id
        outstanding = self._outstanding.pop(request_id, None)
        if outstanding is None:
            self._violation(self._stray_response(response))
            return
        outstanding.timeout.cancel()
        self._answered.add(request_id)
        original = outstanding.message
        for what in ("name", "target"):
            if getattr(response, what) != getattr(original, what):
                self._violation(
                    f"response to {_describe_request(original)} has {what} {getattr(response, what)!r},"
                    f" not {getattr(original, what)!r}"
                )
        if not response.ok and not response.header.error_message:
            self._violation(f"FAILURE response to {_describe_request(original)} has no errorMessage")
        outstanding.deferred.callback(response)

    def _stray_response(self, response):
        described = f"response {response.name} [{response.request_id}] on {response.target}"
        if response.request_id in self._answered:
            return f"second {described}: each query or request gets exactly one response"
        if response.request_id in self._expired:
            return f"late {described}: it came after the {self.response_timeout:g} s timeout"
        return f"{described} answers no query or request"

    def _expire(self, request_id):
        outstanding = self._outstanding.pop(request_id)
        self._expired.add(request_id)
        described = _describe_request(outstanding.message)
        self._violation(f"no response to {described} within {self.response_timeout:g} s")
        outstanding.deferred.errback(SimulatorError(f"no response to {described}"))

    # -- destinations --------------------------------------------------------------------------

    def _create(self, kind, target):
        destination = Destination(kind, target)
        self.destinations[target] = destination
        if kind in LOGIN_KINDS:
            self._login_pending += 1
        return destination

    def _open(self, kind, target, body=None, role=None):
        """Create the destination ``kind`` at ``target`` and send its init query."""
        destination = self._create(kind, target)
        destination.role = role
        d = self.request(env.query(self.names.init_query(kind), target, body))
        d.addCallback(self._init_answered, destination)
        d.addErrback(self._init_not_answered, destination)

    def _open_child(self, kind, parent, child_id, role=None):
        """Open the destination the client named ``child_id`` under ``parent``, if that id is usable."""
        target = child_target(parent, child_id)
        existing = self.destinations.get(target)
        if "." in child_id:
            self._violation(f"{kind} id {child_id!r} under {parent} contains a dot")
        elif existing is not None and existing.state != DISPOSED:
            self._violation(f"{kind} {target} was announced again while it exists")
        else:
            self._open(kind, target, role=role)

    def _register(self, interaction, role, conversation_id):
        """Tell the client to prepare the conversation ``conversation_id`` (the vendor's request "to
        prepare a new conversation and register with the conversation destination", at the
        interaction's init or after a successful consult), then initialise that conversation."""
        if "." in conversation_id:
            self._violation(f"conversation id {conversation_id!r} under {interaction.target} contains a dot")
            return
        target = child_target(interaction.target, conversation_id)
        existing = self.destinations.get(target)
        if existing is not None and existing.state != DISPOSED:
            self._violation(f"conversation {target} was named again while it exists")
            return
        interaction.conversations[role] = target
        d = self.request(env.request(self.names.interaction_request_register, interaction.target, {"id": conversation_id}))

        def registered(response):
            if not response.ok:
                self._violation(f"client refused to register {target}, which it named itself:"
                                f" {response.header.error_message}")
            elif interaction.state == ACTIVE:
                self._open("conversation", target, role=role)

        d.addCallbacks(registered, self._log_failure, errbackArgs=(f"registering {target}",))

    def _consult_answered(self, response, target):
        if not response.ok:
            return response
        interaction = self.destinations.get(target)
        try:
            started = ConsultStarted.from_body(response.body)
        except BodyError as e:
            self._violation(f"response to the consult on {target}: {e}")
            return response
        live = self._live_conversation(interaction, CONSULT)
        if live is not None:
            self._violation(f"client accepted a consult on {target} while the consult {live.target} is live")
        if started.id == target.rpartition(".")[2] or child_target(target, started.id) == interaction.conversations.get(PRIMARY):
            self._violation(f"consult conversation id {started.id!r} on {target} is the primary's")
            return response
        self._register(interaction, CONSULT, started.id)
        return response

    def _live_conversation(self, interaction, role):
        """The conversation of ``role`` in ``interaction`` that has not ended and was not disposed, or None."""
        target = interaction.conversations.get(role) if interaction is not None else None
        conversation = self.destinations.get(target) if target else None
        if conversation is None or conversation.state in (DISPOSED, FAILED) or conversation.ended:
            return None
        return conversation

    # -- the order of a transfer to consult ------------------------------------------------------

    def _transfer_sent(self, target):
        interaction = self.destinations.get(target)
        if interaction is not None:
            interaction.transfer = [len(self.event_log), interaction.conversations.get(PRIMARY),
                                    interaction.conversations.get(CONSULT), False]

    def _transfer_answered(self, response, target):
        interaction = self.destinations.get(target)
        if interaction is not None and interaction.transfer is not None:
            if response.ok:
                interaction.transfer[3] = True
                self._check_transfer(interaction)
            else:
                interaction.transfer = None
        return response

    def _transfer_order(self, interaction):
        """The events a transfer to consult must raise, in order: the primary's state update and
        its disposal, the focus change, the consult's state update and its disposal, the end of the
        interaction (the order the vendor's command API lists)."""
        _, primary, consult, _ = interaction.transfer
        names = self.names
        return [
            (primary, names.conversation_ended),
            (primary, names.conversation_disposed),
            (interaction.target, names.interaction_focuschanged),
            (consult, names.conversation_ended),
            (consult, names.conversation_disposed),
            (interaction.target, names.interaction_ended),
        ]

    def _check_transfer(self, interaction):
        """Once a transfer to consult was answered SUCCESS and its interaction has ended, check the order."""
        mark, _, _, answered = interaction.transfer
        since = self.event_log[mark:]
        ended = [e for e in since if (e.target, e.name) == (interaction.target, self.names.interaction_ended)]
        if not answered or not ended:
            return
        expected = self._transfer_order(interaction)
        interaction.transfer = None
        seen = [(e.target, e.name) for e in since if (e.target, e.name) in expected]
        firsts = [pair for index, pair in enumerate(seen) if pair not in seen[:index]]
        if firsts != expected:
            shown = lambda pairs: ", ".join(f"{name} on {target}" for target, name in pairs)  # noqa: E731
            self._violation(f"transfer to consult on {interaction.target}: events came as [{shown(firsts)}],"
                            f" not [{shown(expected)}]")
            return
        focus = next(e for e in since if (e.target, e.name) == expected[2])
        consult_id = (expected[3][0] or "").rpartition(".")[2]
        if focus.body.get("id") != consult_id:
            self._violation(f"transfer to consult on {interaction.target}: the focus went to"
                            f" {focus.body.get('id')!r}, not to the consult {consult_id!r}")

    def _parse_init(self, kind, body):
        if kind == "control":
            return ControlStatus.from_body(body, self.names, "control status response")
        return INIT_PARSERS[kind](body)

    def _init_answered(self, response, destination):
        if not response.ok:
            log.warn(
                "HIS bridge simulator: client refused {target}: {error}",
                target=destination.target,
                error=response.header.error_message,
            )
            return self._init_failed(destination)
        try:
            destination.init = self._parse_init(destination.kind, response.body)
        except BodyError as e:
            self._violation(f"{destination.target}: {e}")
            return self._init_failed(destination)
        destination.state = ACTIVE
        self._after_init(destination)
        self._login_step_done(destination)
        self._notify(destination)

    def _init_not_answered(self, failure, destination):
        self._log_failure(failure, f"initialising {destination.target}")
        self._init_failed(destination)

    def _init_failed(self, destination):
        destination.state = FAILED
        self._login_step_done(destination)

    def _after_init(self, destination):
        parsed, target = destination.init, destination.target
        if destination.kind == "control":
            self.status = parsed.status
        elif destination.kind == "session":
            self._open_child("channelgroup", target, parsed.channelgroup)
        elif destination.kind == "channelgroup":
            for channel in parsed.channels:
                self._open_child("channel", target, channel.id)
        elif destination.kind == "channel":
            for interaction_id in parsed.interactions:
                self._open_child("interaction", target, interaction_id)
        elif destination.kind == "interaction":
            for role, conversation_id in ((PRIMARY, parsed.primary), (CONSULT, parsed.consult)):
                if conversation_id:
                    self._register(destination, role, conversation_id)
        elif destination.kind == "conversation":
            destination.started = parsed.state in IN_PROGRESS_STATES

    def _dispose(self, target):
        for other in self.destinations.values():
            if other.target == target or other.target.startswith(target + "."):
                other.state = DISPOSED

    def _silence(self, target, name):
        """``name`` was sent to ``target``: from now on the client may raise nothing there or below."""
        for other in self.destinations.values():
            if other.target == target or other.target.startswith(target + "."):
                other.silenced_by = name

    def _disposal_answered(self, response):
        if response.ok:
            self._dispose(response.target)
        return response

    # -- start-up and login --------------------------------------------------------------------

    def _control_status_event(self, event):
        self.status = ControlStatus.from_body(event.body, self.names, "control status event").status
        if self._capabilities_asked:
            self._maybe_login()
            return
        self._capabilities_asked = True
        d = self.request(env.query(self.names.cti_query_capabilities, event.target))
        d.addCallback(self._capabilities_answered)
        d.addErrback(self._log_failure, "capabilities query")

    def _capabilities_answered(self, response):
        self.capabilities = response.body if response.ok else {}
        self.channel_groups_supported = self.capabilities.get(self.names.capability_channel_groups)
        self._maybe_login()

    def _maybe_login(self):
        if self._login_started or self.status != self.names.status_started:
            return
        self._login_started = True
        for agent in self.agents:
            self._open("session", agent, SessionLogin(agent).to_body())
        self._check_ready()

    def _login_step_done(self, destination):
        if destination.kind in LOGIN_KINDS:
            self._login_pending -= 1
            self._check_ready()

    def _check_ready(self):
        if self.ready or not self._login_started or self._login_pending:
            return
        self.ready = True
        log.info("HIS bridge simulator: login complete for {agents}", agents=", ".join(self.agents))
        self._notify("ready")
        if self.script:
            self._script_run = self._run_script()
            self._script_run.addErrback(self._log_failure, "script")

    # -- events --------------------------------------------------------------------------------

    def _event_received(self, message):
        event = ReceivedEvent(message.target, message.name, message.body)
        self.event_log.append(event)
        self.events.setdefault(event.target, []).append(event)
        try:
            problem = self._event_problem(event)
            if problem is None:
                self._apply_event(event)
        except BodyError as e:
            problem = str(e)
        if problem:
            self._violation(f"event {event.name} on {event.target}: {problem}")
        self._notify(event)

    def _event_problem(self, event):
        """Why ``event`` breaks the protocol, or None."""
        destination = self.destinations.get(event.target)
        if destination is None:
            return "no such destination"
        if destination.state == PENDING:
            return "raised before the init query was answered"
        if destination.state == FAILED:
            return "the destination was never initialised"
        if destination.silenced_by is not None:
            return f"a secondary event after {destination.silenced_by} (the client must raise none)"
        if destination.state == DISPOSED and not self._closing_event(destination, event):
            return "the destination was disposed"
        if event.name not in self.names.events(destination.kind):
            return f"not an event of a {destination.kind} destination"
        missing = [p for p in self.names.required_properties(event.name) if p not in event.body]
        if missing:
            return f"missing {', '.join(missing)}"
        if (
            destination.kind == "conversation"
            and event.name in self._needs_started
            and not destination.started
        ):
            return f"came before {self.names.conversation_started}"
        if destination.kind == "conversation" and destination.ended and event.name != self.names.conversation_disposed:
            return f"came after {self.names.conversation_ended}"
        if event.name == self.names.conversation_disposed and not destination.ended:
            return f"the conversation was disposed before {self.names.conversation_ended}"
        if event.name == self.names.interaction_focuschanged:
            return self._focus_problem(destination, event)
        return None

    def _focus_problem(self, interaction, event):
        """A focus change must name a conversation of the interaction that is still there."""
        focus = event.body.get("id")
        target = child_target(interaction.target, focus) if isinstance(focus, str) else None
        if target not in interaction.conversations.values():
            return f"the focus went to {focus!r}, which is no conversation of the interaction"
        conversation = self.destinations.get(target)
        if conversation is None or conversation.state != ACTIVE:
            return f"the focus went to {focus!r}, which is not an initialised conversation"
        return None

    @property
    def _needs_started(self):
        names = self.names
        return {names.conversation_held, names.conversation_talking, names.conversation_ended}

    def _closing_event(self, destination, event):
        """``channel.disposed`` (``conversation.disposed``) may follow a disposed channel's (conversation's)
        dispose response, once."""
        closing = {"channel": self.names.channel_disposed, "conversation": self.names.conversation_disposed}
        return closing.get(destination.kind) == event.name and not destination.disposed_event_seen

    def _apply_event(self, event):
        names, destination = self.names, self.destinations[event.target]
        if event.name == names.control_status:
            self._control_status_event(event)
        elif event.name == names.channel_interaction:
            self._open_child("interaction", event.target, InteractionAnnouncement.from_body(event.body).id)
        elif event.name == names.channel_disposed:
            destination.disposed_event_seen = True
            self._dispose(event.target)
        elif event.name == names.conversation_started:
            destination.started = True
        elif event.name == names.conversation_ended:
            destination.ended = True
        elif event.name == names.conversation_disposed:
            destination.disposed_event_seen = True
            self._dispose(event.target)
        elif event.name == names.interaction_ended and destination.transfer is not None:
            self._check_transfer(destination)

    # -- script --------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _run_script(self):
        cursor, responses = self._log_start, []
        for step in self.script:
            if isinstance(step, Wait):
                cursor = yield self._wait_from(cursor, step)
            elif isinstance(step, Send):
                response = yield self.send(step.verb, step.target, **step.properties)
                responses.append(response)
            else:
                yield task.deferLater(self.reactor, step.seconds)
        self._notify(_ScriptDone(responses))

    def _wait_from(self, cursor, step):
        """A Deferred firing with the log position just past the first event from ``cursor`` on matching ``step``."""
        for index in range(cursor, len(self.event_log)):
            if _event_matches(self.event_log[index], step.event, step.target):
                return defer.succeed(index + 1)
        return self._when(lambda item: _event_matches(item, step.event, step.target), lambda item: len(self.event_log))

    # -- helpers -------------------------------------------------------------------------------

    def _when(self, predicate, result=lambda item: item):
        d = defer.Deferred()
        self._waiters.append((predicate, result, d))
        return d

    def _notify(self, item):
        keep, fire = [], []
        for waiter in self._waiters:
            (fire if waiter[0](item) else keep).append(waiter)
        self._waiters = keep
        for _, result, d in fire:
            d.callback(result(item))

    def _violation(self, text):
        self.violations.append(text)
        log.warn("HIS bridge simulator: protocol violation: {violation}", violation=text)

    def _log_failure(self, failure, what):
        if not failure.check(defer.CancelledError, SimulatorError):
            log.failure("HIS bridge simulator: {what} failed", failure, what=what)
        else:
            log.info("HIS bridge simulator: {what} stopped: {error}", what=what, error=failure.getErrorMessage())


@attrs.frozen
class _ScriptDone:
    responses: list


def _event_matches(item, name, target):
    return isinstance(item, ReceivedEvent) and item.name == name and target in (None, item.target)


def _describe_request(message):
    return f"{message.name} [{message.request_id}] on {message.target}"


# -- command line ------------------------------------------------------------------------------


def _arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m gateway.sim his-bridge", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on (0: any)")
    parser.add_argument("--interface", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--tls", action="store_true", help="TLS with a self-signed certificate made at start")
    parser.add_argument("--cert-out", help="with --tls: write the certificate (PEM) here for the client to trust")
    parser.add_argument("--processor", default="PROC", help="processor name (control target <name>.CONTROL)")
    parser.add_argument("--agent", action="append", dest="agents", help="agent to log in (repeatable; default alice)")
    parser.add_argument("--byteorder", choices=("big", "little"), default="big", help="length prefix byte order")
    parser.add_argument("--max-frame-size", type=int, default=DEFAULT_MAX_FRAME_SIZE)
    parser.add_argument("--response-timeout", type=float, default=DEFAULT_RESPONSE_TIMEOUT)
    parser.add_argument("--names", help="JSON file of [cti.names] overrides")
    parser.add_argument("--script", help="JSON file: a list of wait/send/pause steps")
    return parser.parse_args(argv)


def _load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _print_message(direction, message):
    print(f"{direction} {message.describe()}", flush=True)


def main(argv=None):
    """Run the simulator until interrupted, printing one line per message."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from gateway.sim.tlsutil import generate_self_signed

    args = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        names = HisNames.from_mapping(_load_json(args.names)) if args.names else HisNames()
        script = _load_json(args.script) if args.script else []
        sim = HisBridgeSim(
            reactor,
            names=names,
            processor=args.processor,
            agents=args.agents or ["alice"],
            script=script,
            byteorder=args.byteorder,
            max_frame_size=args.max_frame_size,
            response_timeout=args.response_timeout,
            trace=_print_message,
        )
    except (OSError, ValueError) as e:
        print(f"his-bridge: {e}", file=sys.stderr)
        return 2
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.info)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    if args.tls:
        certificate = generate_self_signed("localhost", ip_addresses=(args.interface,))
        if args.cert_out:
            with open(args.cert_out, "wb") as f:
                f.write(certificate.cert_pem)
        print(f"TLS certificate SHA-256 {certificate.fingerprint}", flush=True)
        endpoint = SSL4ServerEndpoint(reactor, args.port, certificate.server_options(), interface=args.interface)
    else:
        endpoint = TCP4ServerEndpoint(reactor, args.port, interface=args.interface)

    exit_code = 0

    def listening(port):
        address = port.getHost()
        print(f"HIS processor bridge {args.processor} listening on {address.host}:{address.port}", flush=True)

    def failed(failure):
        nonlocal exit_code
        exit_code = 1
        print(f"his-bridge: cannot listen: {failure.getErrorMessage()}", file=sys.stderr)
        reactor.stop()

    sim.listen(endpoint).addCallbacks(listening, failed)
    reactor.run()
    return exit_code
