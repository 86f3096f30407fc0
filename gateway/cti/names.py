"""The HIS message names and status values (the ``[cti.names]`` table), and the agreed message bodies.

OpenMethods publishes only part of the Processor Bridge protocol. :class:`CtiNames` holds every
message name and status value the gateway uses, published or not, so that a real bridge that spells
something differently is matched by configuration rather than code. Each key is the default name
with the dots turned into underscores (``conversation.request.hold`` -> ``conversation_request_hold``).

Names the vendor does **not** publish follow the ``<kind>.request.<verb>`` / ``<kind>.query.<verb>``
/ ``<kind>.<event>`` pattern of the published ones, and must be checked against a real bridge:
the control status query and event and the status values, the new-interaction announcement on a
channel, the interaction state events other than ``interaction.alerting``, the agent ready/not-ready
requests, the session logout and dispose requests, the interaction dispose request, the telephony
interaction's requests other than ``interaction.request.consult`` (register a conversation, alternate,
transfer to consult, conference in consult), the focus change event and the conversation's own
disposal event.

The keys of the ``cti.query.capabilities`` response are names too (``capability_*``). The vendor's
page shows only the beginning of one, ``channel-groups-suppo…``: the default
``channel-groups-supported`` completes it, and the others are this project's choice; all must be
checked against a real bridge.

The body classes below give the shapes of the message bodies the gateway and the simulator agree on.
Where the vendor documents the body (``conversation.query.init``, ``interaction.query.init``, the
``session.query.init`` query) they follow it; where it is silent they are this project's choice:

- control status query response and ``control.status`` event: ``{"status": "STARTED", "reason"?: "..."}``
  (:class:`ControlStatus`); ``DEGRADED`` means the telephony side is down;
- ``session.query.init`` response: ``{"channelgroup": {"id": "<id>"}}`` (:class:`SessionInit`);
- ``channelgroup.query.init`` response:
  ``{"channels": [{"id": "<id>", "end-point": "<extension>", "type": "telephony"}]}`` (:class:`ChannelGroupInit`);
- ``channel.query.init`` response: ``{"state": "ACTIVATED", "interactions": ["<id>", ...]}``
  (:class:`ChannelInit`, states in :data:`CHANNEL_STATES`);
- ``channel.interaction`` event: ``{"id": "<interaction id>"}`` (:class:`InteractionAnnouncement`);
- ``interaction.request.consult`` response: ``{"id": "<consult conversation id>"}`` (:class:`ConsultStarted`);
- ``interaction.request.register`` request: ``{"id": "<conversation id>"}``, and ``interaction.focuschanged``
  event: ``{"id": "<conversation id>"}``.

Every ``from_body`` raises :class:`BodyError` with a readable message when a body does not fit.
"""

import functools

import attrs

#: Last part of the control destination's target, ``<ProcessorName>.CONTROL``.
CONTROL_ID = "CONTROL"

#: Destination kinds, root first.
KINDS = ("control", "session", "channelgroup", "channel", "interaction", "conversation")

CONVERSATION_STATES = ("RINGING", "DIALING", "TALKING", "HELD", "RELEASED")
INTERACTION_STATES = ("ALERTING", "DIALING", "STARTED", "ENDED", "COMPLETED")
#: Interaction states in which ``conversations.primary`` must be present.
PRIMARY_REQUIRED_STATES = ("ALERTING", "DIALING", "STARTED")
#: Channel states in the ``channel.query.init`` response (named after the channel events).
CHANNEL_STATES = ("ACTIVATED", "DEACTIVATED", "AVAILABLE", "UNAVAILABLE")
TELEPHONY = "telephony"


def control_target(processor):
    return f"{processor}.{CONTROL_ID}"


def child_target(parent, child_id):
    """The target of a child destination: the parent's target and the child's id, dot-joined."""
    return f"{parent}.{child_id}"


def _non_empty_text(instance, attribute, value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"cti.names.{attribute.name} must be a non-empty string, not {value!r}")


def _name(default, kind, role):
    """A message-name field; ``role`` is ``init``, ``query``, ``request`` or ``event``."""
    return attrs.field(default=default, validator=_non_empty_text, metadata={"kind": kind, "role": role})


def _status(default):
    return attrs.field(default=default, validator=_non_empty_text, metadata={"role": "status"})


def _capability(default):
    """A key of the ``cti.query.capabilities`` response body."""
    return attrs.field(default=default, validator=_non_empty_text, metadata={"role": "capability"})


#: the roles of the fields that are not message names
_NOT_MESSAGES = frozenset({"status", "capability"})


#: Properties a request or event must carry, by :class:`CtiNames` key (from the vendor's tables).
REQUIRED_PROPERTIES = {
    "conversation_request_removeparty": ("number",),
    "conversation_request_transfer": ("destination",),
    "conversation_request_conference": ("destination",),
    "conversation_request_senddtmf": ("digits",),
    "channel_request_dial": ("destination",),
    "interaction_request_consult": ("destination",),
    "interaction_request_register": ("id",),
    "interaction_focuschanged": ("id",),
    "conversation_failed": ("reason",),
    "conversation_partyadded": ("number", "name"),
    "conversation_partyremoved": ("number",),
    "conversation_transfer_failed": ("reason",),
    "conversation_conference_failed": ("reason",),
    "channel_interaction": ("id",),
    "control_status": ("status",),
}


@attrs.frozen(kw_only=True)
class CtiNames:
    """Every HIS message name and status value; build from the config with :meth:`from_mapping`."""

    # Control destination (not published).
    control_query_status: str = _name("control.query.status", "control", "init")
    control_status: str = _name("control.status", "control", "event")
    status_started: str = _status("STARTED")
    status_stopped: str = _status("STOPPED")
    status_degraded: str = _status("DEGRADED")
    # Control destination (published).
    cti_query_capabilities: str = _name("cti.query.capabilities", "control", "query")
    # Keys of the capabilities response: the public page shows "channel-groups-suppo..." only.
    capability_channel_groups: str = _capability("channel-groups-supported")
    capability_telephony: str = _capability("telephony")
    capability_answer: str = _capability("answer")
    capability_hold: str = _capability("hold")
    capability_mute: str = _capability("mute")
    capability_dtmf: str = _capability("dtmf")
    capability_blind_transfer: str = _capability("blind-transfer")
    capability_blind_conference: str = _capability("blind-conference")
    capability_consult: str = _capability("consult")
    capability_alternate: str = _capability("alternate")
    capability_transfer_to_consult: str = _capability("transfer-to-consult")
    capability_conference_in_consult: str = _capability("conference-in-consult")

    # Session (agent login): init published, ready/not-ready not.
    session_query_init: str = _name("session.query.init", "session", "init")
    session_request_ready: str = _name("session.request.ready", "session", "request")
    session_request_notready: str = _name("session.request.notready", "session", "request")
    session_request_logout: str = _name("session.request.logout", "session", "request")
    session_request_dispose: str = _name("session.request.dispose", "session", "request")

    channelgroup_query_init: str = _name("channelgroup.query.init", "channelgroup", "init")

    # Channel: published, except the new-interaction announcement.
    channel_query_init: str = _name("channel.query.init", "channel", "init")
    channel_request_dial: str = _name("channel.request.dial", "channel", "request")
    channel_request_dispose: str = _name("channel.request.dispose", "channel", "request")
    channel_activated: str = _name("channel.activated", "channel", "event")
    channel_deactivated: str = _name("channel.deactivated", "channel", "event")
    channel_available: str = _name("channel.available", "channel", "event")
    channel_unavailable: str = _name("channel.unavailable", "channel", "event")
    channel_disposed: str = _name("channel.disposed", "channel", "event")
    channel_interaction: str = _name("channel.interaction", "channel", "event")

    # Interaction: init, accept/reject/complete and interaction.alerting published; the rest not.
    interaction_query_init: str = _name("interaction.query.init", "interaction", "init")
    interaction_request_accept: str = _name("interaction.request.accept", "interaction", "request")
    interaction_request_reject: str = _name("interaction.request.reject", "interaction", "request")
    interaction_request_complete: str = _name("interaction.request.complete", "interaction", "request")
    interaction_request_dispose: str = _name("interaction.request.dispose", "interaction", "request")
    # Telephony interaction: consult is published; the others follow <kind>.request.<verb>.
    interaction_request_register: str = _name("interaction.request.register", "interaction", "request")
    interaction_request_consult: str = _name("interaction.request.consult", "interaction", "request")
    interaction_request_alternate: str = _name("interaction.request.alternate", "interaction", "request")
    interaction_request_transfertoconsult: str = _name(
        "interaction.request.transfertoconsult", "interaction", "request")
    interaction_request_conferenceinconsult: str = _name(
        "interaction.request.conferenceinconsult", "interaction", "request")
    interaction_alerting: str = _name("interaction.alerting", "interaction", "event")
    interaction_dialing: str = _name("interaction.dialing", "interaction", "event")
    interaction_started: str = _name("interaction.started", "interaction", "event")
    interaction_ended: str = _name("interaction.ended", "interaction", "event")
    interaction_completed: str = _name("interaction.completed", "interaction", "event")
    interaction_focuschanged: str = _name("interaction.focuschanged", "interaction", "event")

    # Conversation: all published (004).
    conversation_query_init: str = _name("conversation.query.init", "conversation", "init")
    conversation_request_answer: str = _name("conversation.request.answer", "conversation", "request")
    conversation_request_release: str = _name("conversation.request.release", "conversation", "request")
    conversation_request_removeparty: str = _name("conversation.request.removeparty", "conversation", "request")
    conversation_request_hold: str = _name("conversation.request.hold", "conversation", "request")
    conversation_request_retrieve: str = _name("conversation.request.retrieve", "conversation", "request")
    conversation_request_mute: str = _name("conversation.request.mute", "conversation", "request")
    conversation_request_unmute: str = _name("conversation.request.unmute", "conversation", "request")
    conversation_request_transfer: str = _name("conversation.request.transfer", "conversation", "request")
    conversation_request_conference: str = _name("conversation.request.conference", "conversation", "request")
    conversation_request_senddtmf: str = _name("conversation.request.senddtmf", "conversation", "request")
    conversation_request_dispose: str = _name("conversation.request.dispose", "conversation", "request")
    conversation_ringing: str = _name("conversation.ringing", "conversation", "event")
    conversation_dialing: str = _name("conversation.dialing", "conversation", "event")
    conversation_busy: str = _name("conversation.busy", "conversation", "event")
    conversation_failed: str = _name("conversation.failed", "conversation", "event")
    conversation_held: str = _name("conversation.held", "conversation", "event")
    conversation_mute: str = _name("conversation.mute", "conversation", "event")
    conversation_talking: str = _name("conversation.talking", "conversation", "event")
    conversation_partyadded: str = _name("conversation.partyadded", "conversation", "event")
    conversation_partyremoved: str = _name("conversation.partyremoved", "conversation", "event")
    conversation_started: str = _name("conversation.started", "conversation", "event")
    conversation_ended: str = _name("conversation.ended", "conversation", "event")
    conversation_transfer_failed: str = _name("conversation.transfer.failed", "conversation", "event")
    conversation_conference_failed: str = _name("conversation.conference.failed", "conversation", "event")
    # Not published: the client's own disposal of a conversation (a consult that ended, a transfer).
    conversation_disposed: str = _name("conversation.disposed", "conversation", "event")

    def __attrs_post_init__(self):
        for role in ("message", "status", "capability"):
            values = [value for _, value in self._fields(role)]
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:
                raise ValueError(f"cti.names: each {role} name must be distinct; repeated: {', '.join(repeated)}")

    @classmethod
    def from_mapping(cls, mapping):
        """Build from a ``[cti.names]`` table: absent keys keep their defaults, unknown keys are errors."""
        known = {field.name for field in attrs.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(
                f"unknown key(s) in [cti.names]: {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        return cls(**mapping)

    def _fields(self, role, kind=None):
        """(key, value) of the fields of ``role`` (``message`` = any message role), optionally of one ``kind``."""
        for field in attrs.fields(type(self)):
            field_role = field.metadata["role"]
            role_matches = role == field_role or (role == "message" and field_role not in _NOT_MESSAGES)
            if role_matches and kind in (None, field.metadata.get("kind")):
                yield field.name, getattr(self, field.name)

    @property
    def statuses(self):
        """The control status values: started, stopped, degraded."""
        return (self.status_started, self.status_stopped, self.status_degraded)

    def capability(self, key):
        """The wire name of the capability ``key`` (``"channel_groups"`` -> ``capability_channel_groups``)."""
        return getattr(self, f"capability_{key}")

    def init_query(self, kind):
        """The name of the init query of a destination ``kind`` (for control: the status query)."""
        return next(value for _, value in self._fields("init", kind))

    def events(self, kind):
        """The names of the events a client may raise on a destination of ``kind``."""
        return frozenset(value for _, value in self._fields("event", kind))

    @functools.cached_property
    def _required(self):
        """Message name -> the body properties it must carry (built once: it is read for every message)."""
        return {value: REQUIRED_PROPERTIES.get(key, ()) for key, value in self._fields("message")}

    def required_properties(self, name):
        """The body properties the request or event called ``name`` must carry."""
        return self._required.get(name, ())


# -- body shapes -------------------------------------------------------------------------------


class BodyError(ValueError):
    """A message body does not have the agreed shape; ``str()`` says why."""


def _text(body, key, where):
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BodyError(f"{where}: {key!r} must be a non-empty string, not {value!r}")
    return value


def _optional_text(body, key, where):
    return None if body.get(key) is None else _text(body, key, where)


def _one_of(body, key, allowed, where):
    value = _text(body, key, where)
    if value not in allowed:
        raise BodyError(f"{where}: {key!r} is {value!r}, not one of {', '.join(allowed)}")
    return value


def _objects(body, key, where, non_empty=False):
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise BodyError(f"{where}: {key!r} must be an array of objects, not {value!r}")
    if non_empty and not value:
        raise BodyError(f"{where}: {key!r} must not be empty")
    return value


def _object(body, key, where):
    value = body.get(key)
    if not isinstance(value, dict):
        raise BodyError(f"{where}: {key!r} must be an object, not {value!r}")
    return value


def _without_none(**fields):
    return {key: value for key, value in fields.items() if value is not None}


@attrs.frozen
class ControlStatus:
    """Body of the control status response and event: ``{"status": ..., "reason"?: ...}``."""

    status: str
    reason: str | None = None

    def to_body(self):
        return _without_none(status=self.status, reason=self.reason)

    @classmethod
    def from_body(cls, body, names, where="control status"):
        return cls(_one_of(body, "status", names.statuses, where), _optional_text(body, "reason", where))


@attrs.frozen
class SessionLogin:
    """Body of the ``session.query.init`` query (published): the agent and its media flags."""

    name: str
    chat: object = False
    email: object = False
    callback: object = False

    def to_body(self):
        return {"name": self.name, "chat": self.chat, "email": self.email, "callback": self.callback}

    @classmethod
    def from_body(cls, body, where="session.query.init"):
        flags = {key: body.get(key, False) for key in ("chat", "email", "callback")}
        return cls(_text(body, "name", where), **flags)


@attrs.frozen
class SessionInit:
    """Body of the ``session.query.init`` response: ``{"channelgroup": {"id": ...}}``."""

    channelgroup: str

    def to_body(self):
        return {"channelgroup": {"id": self.channelgroup}}

    @classmethod
    def from_body(cls, body, where="session.query.init response"):
        return cls(_text(_object(body, "channelgroup", where), "id", f"{where} channelgroup"))


@attrs.frozen
class Channel:
    """One entry of ``channels``: ``{"id", "end-point", "type"}``."""

    id: str
    end_point: str
    type: str = TELEPHONY

    def to_body(self):
        return {"id": self.id, "end-point": self.end_point, "type": self.type}

    @classmethod
    def from_body(cls, body, where="channel"):
        return cls(_text(body, "id", where), _text(body, "end-point", where), _text(body, "type", where))


@attrs.frozen
class ChannelGroupInit:
    """Body of the ``channelgroup.query.init`` response: ``{"channels": [...]}`` (always present)."""

    channels: tuple = attrs.field(converter=tuple)

    def to_body(self):
        return {"channels": [channel.to_body() for channel in self.channels]}

    @classmethod
    def from_body(cls, body, where="channelgroup.query.init response"):
        entries = _objects(body, "channels", where)
        return cls(Channel.from_body(entry, f"{where} channels[{i}]") for i, entry in enumerate(entries))


@attrs.frozen
class ChannelInit:
    """Body of the ``channel.query.init`` response: ``{"state": ..., "interactions": [ids]}``."""

    state: str
    interactions: tuple = attrs.field(default=(), converter=tuple)

    def to_body(self):
        return {"state": self.state, "interactions": list(self.interactions)}

    @classmethod
    def from_body(cls, body, where="channel.query.init response"):
        ids = body.get("interactions")
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise BodyError(f"{where}: 'interactions' must be an array of ids, not {ids!r}")
        return cls(_one_of(body, "state", CHANNEL_STATES, where), ids)


@attrs.frozen
class InteractionAnnouncement:
    """Body of the ``channel.interaction`` event: ``{"id": "<interaction id>"}``."""

    id: str

    def to_body(self):
        return {"id": self.id}

    @classmethod
    def from_body(cls, body, where="channel.interaction"):
        return cls(_text(body, "id", where))


@attrs.frozen
class ConsultStarted:
    """Body of the ``interaction.request.consult`` response: ``{"id": "<consult conversation id>"}``."""

    id: str

    def to_body(self):
        return {"id": self.id}

    @classmethod
    def from_body(cls, body, where="interaction.request.consult response"):
        return cls(_text(body, "id", where))


@attrs.frozen
class InteractionInit:
    """Body of the telephony ``interaction.query.init`` response (published).

    ``{"interaction-state": ..., "interaction-data": {...}, "conversations": {"primary": {"id"}, "consult": {"id"}}}``:
    ``conversations`` is always present, ``primary`` is required in ALERTING, DIALING and STARTED.
    """

    state: str
    primary: str | None = None
    consult: str | None = None
    data: dict = attrs.field(factory=dict)

    def to_body(self):
        ids = (("primary", self.primary), ("consult", self.consult))
        conversations = {role: {"id": cid} for role, cid in ids if cid}
        return {"interaction-state": self.state, "interaction-data": self.data, "conversations": conversations}

    @classmethod
    def from_body(cls, body, where="interaction.query.init response"):
        state = _one_of(body, "interaction-state", INTERACTION_STATES, where)
        conversations = _object(body, "conversations", where)
        ids = {
            role: _text(_object(conversations, role, where), "id", f"{where} {role}") if role in conversations else None
            for role in ("primary", "consult")
        }
        if state in PRIMARY_REQUIRED_STATES and ids["primary"] is None:
            raise BodyError(f"{where}: 'conversations' has no 'primary' in state {state}")
        data = body.get("interaction-data", {})
        if not isinstance(data, dict):
            raise BodyError(f"{where}: 'interaction-data' must be an object, not {data!r}")
        return cls(state, ids["primary"], ids["consult"], data)


@attrs.frozen
class Party:
    """A party of a conversation: ``{"number", "name"}``, in ``conversation.query.init`` and
    ``conversation.partyadded``. 004 lists both keys: ``name`` is always there, ``""`` when unknown."""

    number: str
    name: str = attrs.field(default="", converter=lambda name: name or "")

    def to_body(self):
        return {"number": self.number, "name": self.name}

    @classmethod
    def from_body(cls, body, where="party"):
        name = body.get("name")
        if not isinstance(name, str):
            raise BodyError(f"{where}: 'name' must be a string (empty when unknown), not {name!r}")
        return cls(_text(body, "number", where), name)


@attrs.frozen
class ConversationInit:
    """Body of the ``conversation.query.init`` response (published, 004).

    ``{"conversation-state": ..., "parties": [{"number", "name"}, ...]}``: parties must hold at least one.
    """

    state: str
    parties: tuple = attrs.field(converter=tuple)

    def to_body(self):
        return {"conversation-state": self.state, "parties": [party.to_body() for party in self.parties]}

    @classmethod
    def from_body(cls, body, where="conversation.query.init response"):
        state = _one_of(body, "conversation-state", CONVERSATION_STATES, where)
        entries = _objects(body, "parties", where, non_empty=True)
        return cls(state, (Party.from_body(entry, f"{where} parties[{i}]") for i, entry in enumerate(entries)))
