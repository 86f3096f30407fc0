"""The Expertflow SMS channel connector: SMS in and out, translated to and from the chat server.

:class:`Connector` is the Socket.IO handler of the link to the chat server and the owner of the
two durable outboxes:

- an inbound SMS (:meth:`Connector.receive_sms`) is stored, then delivered in order per number:
  into the number's open conversation, or one opened for it (``init``, ``joinConversation``), as a
  ChatMessage from the customer (``sendMessage``). A message the chat server refuses closes that
  conversation and goes into a new one.
- ``messageArrived`` with a ChatMessage from an agent to the customer (not a ``whisper``) is
  stored as an outbound SMS to its ``refId`` (the conversation's number when absent) before the
  event is acknowledged, then handed to the SMS transport in order per number. A ChatMessage
  without a conversation is a campaign message: an SMS to its ``refId``.
- ActivityMessages: participants joining and leaving are noted; ``noAgentAvailable`` sends the
  configured auto-reply SMS (if any); ``endOfConversation`` closes the conversation, as does a
  ``conversationInfo`` saying it ended.
- an operator's SMS (:meth:`Connector.send_sms`, the admin API's ``POST /api/sms/outbound``) is
  stored as an outbound SMS of kind ``operator`` and sent like the others.
- ``registerConnector`` is emitted on every (re)connect; then every open conversation is joined
  again and the SMS waiting for the chat server are tried at once.

A payload the connector cannot use is refused: acknowledged ``[false, "<problem naming the field>"]``,
counted in ``gateway_ignored_messages_total{adapter="chat"}`` and logged within the connection's
budget (an unknown event is not acknowledged); the link is kept. Refused, never repaired: a
``refId`` must be a phone number string (:data:`PHONE_NUMBER`, matched whole), ids and texts
strings, a text at most :data:`MAX_TEXT_LENGTH` characters.
"""

from __future__ import annotations

import hashlib
import re

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.boundary import PeerDataError, check_text
from gateway.chat.conversations import ENDED_BY_GATEWAY, ENDED_BY_SERVER, REFUSED, refused
from gateway.chat.interfaces import OutboundSms
from gateway.chat.messages import BadPayload, IncomingMessage, Participant, customer_message, parse_message
from gateway.chat.outbox import ClaimedOutbox, Outbox
from gateway.chat.socketio import AckTimeout, EventRefused, ISocketIOHandler, LinkLost, UnexpectedEvent
from gateway.store.records import timestamp_from_seconds
from gateway.store.sms import SmsRecord

__all__ = ["Connector", "MessageRefused", "UnknownConversation"]

log = Logger()

#: ActivityMessage types that change who is in a conversation
JOINED = frozenset({"participantJoined", "participantAdded"})
LEFT = frozenset({"participantLeft", "participantRemoved"})
#: a customer's phone number, whichever side gives it (E.164-ish: an optional + and 3 to 20 ASCII digits);
#: matched with fullmatch, so "+1555\n" is refused (never stripped)
PHONE_NUMBER = re.compile(r"\+?[0-9]{3,20}")
#: the longest SMS text, in characters, whoever writes it (an operator, an agent, a campaign, a customer):
#: at most what providers take as one concatenated message (Twilio: 1600); longer ones are refused, not cut
MAX_TEXT_LENGTH = 1600


def same_content(one: SmsRecord, other: SmsRecord) -> bool:
    """Whether two SMS say the same thing to (or from) the same number."""
    return (one.number, one.text) == (other.number, other.text)


def variant_id(record: SmsRecord) -> str:
    """The id a record is stored under when its own id names another message: the id and a digest of the content."""
    digest = hashlib.sha256(f"{record.number}\0{record.text}".encode("utf-8")).hexdigest()[:16]
    return f"{record.external_id}#{digest}"


class IdConflict(ValueError):
    """An id names other messages both alone and with this content's digest (never by accident)."""


class MessageRefused(Exception):
    """The chat server refused an SMS even in a conversation opened for it."""


class UnknownConversation(LookupError):
    """No open conversation has that id."""

    http_status = 404
    code = "not_found"


def check_number(number, field: str = "number") -> str:
    """``number`` itself if it is a phone number (:data:`PHONE_NUMBER`, the whole string).

    Refused, never repaired: a number with spaces, a trailing newline or any other character is a
    :class:`~gateway.boundary.PeerDataError` (a ValueError) naming ``field`` (reason ``bad_text``
    for a lone surrogate).
    """
    if not isinstance(number, str):
        raise PeerDataError(f"a phone number is a string, got {number!r:.40}", field)
    check_text(number, field)
    if PHONE_NUMBER.fullmatch(number) is None:
        raise PeerDataError(f"not a phone number (an optional + and 3 to 20 digits 0-9): {number!r:.40}", field)
    return number


@implementer(ISocketIOHandler)
class Connector:
    """The connector; see the module docstring.

    :param clock: ``IReactorTime``.
    :param store: an :class:`~gateway.store.ISmsStore`.
    :param conversations: a :class:`~gateway.chat.conversations.Conversations`.
    :param transport: an :class:`~gateway.chat.interfaces.ISmsTransport`.
    :param config: the ``[chat]`` section.
    :param metrics: a :class:`~gateway.chat.metrics.ChatMetrics`.
    :param readiness: the readiness component, up while registered.
    :param retry_policy: ``f(failures) -> seconds`` between two deliveries of an SMS.
    :param new_id: makes GUIDs.
    :param claims: cluster mode on PostgreSQL: ``PostgresStore.outbox``, which makes a consumer of
        the shared table's pending SMS; the outboxes are then :class:`ClaimedOutbox`es (claims with
        ``SKIP LOCKED`` per number) instead of lanes filled from ``pending_sms()``.
    """

    def __init__(self, clock, store, conversations, transport, config, metrics, readiness, *, retry_policy, new_id,
                 claims=None):
        self._clock = clock
        self._store = store
        self.conversations = conversations
        self.transport = transport
        self._config = config
        self._metrics = metrics
        self._readiness = readiness
        self._new_id = new_id
        self.registered = False
        self.claimed = claims is not None
        if self.claimed:
            self.inbound = ClaimedOutbox(clock, claims, "inbound", self._deliver_inbound, retry_policy=retry_policy,
                                         metrics=metrics)
            self.outbound = ClaimedOutbox(clock, claims, "outbound", self._deliver_outbound,
                                          retry_policy=retry_policy, metrics=metrics)
        else:
            self.inbound = Outbox(clock, store, "inbound", self._deliver_inbound, retry_policy=retry_policy,
                                  metrics=metrics)
            self.outbound = Outbox(clock, store, "outbound", self._deliver_outbound, retry_policy=retry_policy,
                                   metrics=metrics)
        for outbox in (self.inbound, self.outbound):
            metrics.watch_pending(outbox)

    def _now(self) -> str:
        return timestamp_from_seconds(self._clock.seconds())

    # -- life cycle ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self):
        """Take the open conversations and the pending SMS from the store (with claims: start claiming)."""
        yield self.conversations.load()
        if self.claimed:
            self.inbound.resume()
            self.outbound.resume()
            return
        pending = yield self._store.pending_sms()
        if pending:
            log.info("{count} SMS not yet delivered taken from the store", count=len(pending))
        self._queue(pending)

    def _queue(self, pending) -> None:
        self.inbound.load(r for r in pending if r.direction == "inbound")
        self.outbound.load(r for r in pending if r.direction == "outbound")

    # -- in cluster mode (gateway.chat.service.ClusterChatService) ------------------------------

    def stand_by(self) -> defer.Deferred:
        """Another node holds the chat link: deliver nothing here. An SMS stored here (from the
        transport or the admin API) stays pending in the shared store for the holder to deliver."""
        return self.stop()

    def take_over(self):
        """This node holds the chat link now: deliver from here, starting from what the store holds
        (the conversations the previous holder left open, every pending SMS)."""
        self.conversations.reset()
        if not self.claimed:  # claims start once the conversations are loaded (start())
            self.inbound.resume()
            self.outbound.resume()
        return self.start()

    def poll_pending(self) -> defer.Deferred:
        """Queue the pending SMS other nodes stored since the last look (those queued already, or
        delivered lately, are skipped). With claims the consumers look themselves: they are woken."""
        if self.claimed:
            self.inbound.wake()
            self.outbound.wake()
            return defer.succeed(None)
        return self._store.pending_sms().addCallback(self._queue)

    def stop(self) -> defer.Deferred:
        """Stop delivering (what is pending stays stored); fires once the attempts under way settled."""
        return defer.DeferredList(
            [self.inbound.stop(), self.outbound.stop(), self.conversations.stop()], consumeErrors=True
        ).addCallback(lambda _: None)

    def status(self) -> dict:
        return {
            "connected": self.conversations.link is not None,
            "registered": self.registered,
            "conversations": [c.to_json() for c in self.conversations],
            "inbound": self.inbound.status(),
            "outbound": self.outbound.status(),
            "transport": self.transport.status(),
        }

    # -- SMS from customers -------------------------------------------------------------------

    def receive_sms(self, number, text, external_id=None) -> defer.Deferred:
        """Store an inbound SMS; fires with ``(record, created)`` once it is durably stored.

        ``external_id`` (the provider's message id) makes a repeated delivery harmless: the
        first record comes back with ``created`` false. ``ValueError`` for a bad number or text, and
        :class:`~gateway.boundary.PeerDataError` (a ValueError naming the field) for text that is not
        valid Unicode (a lone surrogate): refused before anything is stored, whichever transport
        hands it over. A text over :data:`MAX_TEXT_LENGTH` characters is refused (PeerDataError naming
        ``text``), like an operator's.
        """
        number = check_number(number, "from")
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {text!r:.80}")
        check_text(text, "text")
        if len(text) > MAX_TEXT_LENGTH:
            raise PeerDataError(f"longer than {MAX_TEXT_LENGTH} characters ({len(text)})", "text")
        if external_id is not None and (not isinstance(external_id, str) or not external_id):
            raise ValueError(f"id must be a non-empty string, got {external_id!r:.80}")
        if external_id is not None:
            check_text(external_id, "id")
        record = SmsRecord(self._new_id(), "inbound", number, text, self._now(), external_id=external_id)
        return self._keep(record, self.inbound)

    def _keep(self, record: SmsRecord, outbox: Outbox) -> defer.Deferred:
        """Store ``record``, then queue it; fires with ``(stored, created)``.

        A record whose ``external_id`` is stored already is a duplicate (nothing new stored) only when
        it has the same number and text; the same id with other content is stored as a distinct
        record, under the id plus a digest of its content (:func:`variant_id`), and delivered: an id
        that repeats never makes a message silently disappear.
        """

        def same_id(result):
            stored_record, created = result
            if created or record.external_id is None or same_content(stored_record, record):
                return result
            variant = attrs.evolve(record, external_id=variant_id(record))
            return self._store.add_sms(variant).addCallback(distinct, variant, stored_record)

        def distinct(result, variant, first):
            stored_record, created = result
            if created:
                log.warn(
                    "{direction} SMS id {id} ({number}) was used before for another message (SMS {first});"
                    " stored as a distinct SMS under {variant}",
                    direction=record.direction, id=record.external_id[:80], number=record.number, first=first.seq,
                    variant=variant.external_id[:120],
                )
            elif not same_content(stored_record, variant):
                raise IdConflict(f"message id {record.external_id[:80]!r} was used for other messages")
            return result

        def stored(result):
            stored_record, created = result
            if created:
                self._metrics.received(record.direction)
                log.info(
                    "{direction} SMS {seq} ({kind}, {number}) stored",
                    direction=record.direction, seq=stored_record.seq, kind=record.kind, number=record.number,
                )
            if stored_record.status == "pending":
                outbox.add(stored_record)
            return result

        return self._store.add_sms(record).addCallback(same_id).addCallback(stored)

    @defer.inlineCallbacks
    def _deliver_inbound(self, record: SmsRecord):
        for _ in range(2):  # a refused message closes its conversation: once more in a new one
            conversation = yield self.conversations.ready(record.number)
            message = customer_message(
                uid=record.uid,
                conversation_id=conversation.id,
                participant=conversation.participant.to_json(),
                text=record.text,
                number=record.number,
                timestamp=record.created_at,
            )
            ack = yield self.conversations.require_link().emit("sendMessage", message)
            if not refused(ack):
                self.conversations.touch(conversation)
                return conversation.id
            yield self.conversations.close(conversation, REFUSED, "the chat server refused a message in it")
        raise MessageRefused(f"the chat server refused SMS {record.seq} in two conversations")

    # -- SMS to customers ---------------------------------------------------------------------

    def _deliver_outbound(self, record: SmsRecord):
        return self.transport.send(
            OutboundSms(record.uid, record.number, record.text, record.kind, record.conversation_id)
        )

    def send_sms(self, number, text) -> defer.Deferred:
        """Store an operator's SMS to ``number``; fires with ``(record, created)`` once it is durably stored.

        The outbound outbox then hands it to the transport (tried again until it is taken or refused
        for good). ``ValueError`` for a bad number, or a text that is not a non-empty string of at
        most :data:`MAX_TEXT_LENGTH` characters.
        """
        number = check_number(number, "to")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_LENGTH:
            raise ValueError(
                f"text must be a non-empty string of at most {MAX_TEXT_LENGTH} characters, got {text!r:.80}"
            )
        return self._send_sms(number, check_text(text, "text"), "operator")

    def _send_sms(self, number: str, text: str, kind: str, *, external_id=None, conversation_id=None) -> defer.Deferred:
        record = SmsRecord(
            self._new_id(), "outbound", number, text, self._now(),
            kind=kind, external_id=external_id, conversation_id=conversation_id,
        )
        return self._keep(record, self.outbound)

    # -- conversations, for the admin API ------------------------------------------------------

    def open_conversation(self, number, customer: dict | None = None) -> defer.Deferred:
        """The number's open conversation (opened and joined first if need be)."""
        return self.conversations.ready(check_number(number), customer or {})

    def end_conversation(self, conversation_id: str) -> defer.Deferred:
        """End an open conversation (``endConversation``); fails with :class:`UnknownConversation`."""
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            return defer.fail(UnknownConversation(f"no open conversation {conversation_id!r}"))
        return self.conversations.end(conversation, ENDED_BY_GATEWAY, "ended through the admin API")

    # -- ISocketIOHandler ---------------------------------------------------------------------

    def on_connect(self, client):
        self.conversations.connected(client)
        registration = {"id": self._config.id, "name": self._config.name, "channel": self._config.channel}
        return client.emit("registerConnector", registration).addCallbacks(self._registered, self._not_registered)

    def _not_registered(self, failure):
        failure.trap(AckTimeout, LinkLost)
        log.warn("registerConnector was not acknowledged: {error}", error=failure.getErrorMessage())
        self._readiness.set_down(f"registration not acknowledged: {failure.getErrorMessage()}")

    def _registered(self, ack):
        if refused(ack):
            log.error("the chat server refused registerConnector for channel {channel}", channel=self._config.channel)
            self._readiness.set_down("the chat server refused the registration")
            return None
        log.info("registered with the chat server as connector {id} for channel {channel}", id=self._config.id,
                 channel=self._config.channel)
        self.registered = True
        self._readiness.set_up()
        self._metrics.link_up(True)
        return self.conversations.rejoin_all().addCallback(lambda _: self.inbound.kick())

    def on_disconnect(self, client, reason):
        self.conversations.disconnected()
        self.registered = False
        self._readiness.set_down(f"not connected to the chat server: {reason.getErrorMessage()}")
        self._metrics.link_up(False)

    def on_event(self, client, event, args):
        if event == "messageArrived":
            return self._with_payload(event, args, self._message_arrived)
        if event == "conversationInfo":
            return self._with_payload(event, args, self._conversation_info)
        raise UnexpectedEvent(event)

    def _with_payload(self, event: str, args: list, handle):
        """``handle(payload)`` for the event's first argument.

        A payload it cannot use (a ValueError: BadPayload, a PeerDataError naming the field, a number
        that is none) is refused: :class:`~gateway.chat.socketio.EventRefused`, answered with the
        negative ack ``[false, "<problem>"]``, counted and logged by the connection's IgnoredBudget.
        """
        if not args:
            raise EventRefused("no payload")
        return defer.maybeDeferred(handle, args[0]).addErrback(self._refused)

    @staticmethod
    def _refused(failure):
        failure.trap(ValueError)
        raise EventRefused(str(failure.value)[:300], getattr(failure.value, "reason", "malformed"))

    def _message_arrived(self, payload):
        message = parse_message(payload)
        if message.is_chat:
            return self._chat_message(message)
        return self._activity(message)

    def _chat_message(self, message: IncomingMessage):
        if message.is_whisper:
            log.debug("whisper {id} not sent as SMS", id=message.id)
            return True
        conversation = self.conversations.get(message.conversation_id)
        if conversation is not None:
            customer = conversation.participant.id
            if (message.sender is not None and message.sender.id == customer) or not message.for_participant(customer):
                return True  # the customer's own message, or one between agents
            if message.sender is not None:
                # An agent who writes is there, whether or not the server announced the join.
                conversation.agents.setdefault(message.sender.id, message.sender.name)
            self.conversations.touch(conversation)
        number = message.ref_id or (conversation.number if conversation is not None else None)
        if number is None:
            raise BadPayload(f"ChatMessage {message.id} has no refId and no known conversation")
        text = message.sms_text()
        if not text:
            log.info("ChatMessage {id} has no text: no SMS", id=message.id)
            return True
        if len(text) > MAX_TEXT_LENGTH:
            raise BadPayload(
                f"text (with its attachment URLs) is longer than one SMS of {MAX_TEXT_LENGTH} characters ({len(text)})",
                reason="oversized",
            )
        kind = "campaign" if message.conversation_id is None else "reply"
        d = self._send_sms(
            check_number(number, "refId"), text, kind, external_id=message.id, conversation_id=message.conversation_id
        )
        return d.addCallback(lambda _: True)

    def _activity(self, message: IncomingMessage):
        conversation = self.conversations.get(message.conversation_id)
        if conversation is None:
            log.debug("{activity} for a conversation not held here ({id})", activity=message.activity_type,
                      id=message.conversation_id)
            return True
        activity = message.activity_type
        who = self._participant_of(message)
        if activity in JOINED and who is not None and who.id != conversation.participant.id:
            conversation.agents[who.id] = who.name
        elif activity in LEFT and who is not None:
            conversation.agents.pop(who.id, None)
        elif activity == "noAgentAvailable" and self._config.no_agent_reply:
            external_id = f"noAgentAvailable:{message.id}" if message.id else None
            d = self._send_sms(
                conversation.number, self._config.no_agent_reply, "auto-reply",
                external_id=external_id, conversation_id=conversation.id,
            )
            return d.addCallback(lambda _: True)
        elif activity == "endOfConversation":
            d = self.conversations.close(conversation, ENDED_BY_SERVER, "ended by the chat server")
            return d.addCallback(lambda _: True)
        return True

    @staticmethod
    def _participant_of(message: IncomingMessage) -> Participant | None:
        """Whom a participant activity is about: ``info.participant`` if given, else the sender."""
        about = message.info.get("participant")
        if about is not None:
            try:
                return Participant.parse(about)
            except BadPayload:
                pass
        return message.sender

    def _conversation_info(self, payload):
        details = payload.get("conversation") if isinstance(payload, dict) else None
        if not isinstance(details, dict):
            raise BadPayload(f"conversationInfo without a conversation object: {payload!r:.80}")
        conversation_id = details.get("conversationId") or details.get("id")
        if not isinstance(conversation_id, str):
            raise BadPayload(f"conversationInfo's conversationId is not a string: {conversation_id!r:.40}")
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            return True
        messages = payload.get("messages")
        log.info(
            "conversation {id} ({number}): {count} message(s) so far, status {status}",
            id=conversation.id, number=conversation.number,
            count=len(messages) if isinstance(messages, list) else "?", status=details.get("status"),
        )
        if details.get("status") in ("ended", "closed"):
            d = self.conversations.close(conversation, ENDED_BY_SERVER, "the chat server says it ended")
            return d.addCallback(lambda _: True)
        return True
