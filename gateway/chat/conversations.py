"""The chat server conversations the connector holds for customers' numbers.

One open conversation per number (kept in the store, so it outlives a restart). A conversation is
opened with the REST ``init`` and joined with ``joinConversation`` as the customer's participant;
the chat server forgets who joined when the link drops, so every conversation is joined again in
each new Socket.IO session before a message goes into it.

:meth:`Conversations.ready` is the one way to get a conversation to send into: it joins the open
conversation of a number, or opens one, and callers asking for the same number meanwhile share
the same attempt. A conversation the chat server refuses to join is closed (and, for a customer's
SMS, the next attempt opens a new one).

Closing reasons (also the ``reason`` label of ``gateway_chat_conversations_closed_total``):
``ended-by-server`` (endOfConversation, or conversationInfo says it ended), ``ended-by-gateway``
(the admin API), ``idle`` (no message for ``idle_timeout`` seconds), ``refused`` (the chat server
no longer accepts it).
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.chat.engineio import NotConnected
from gateway.chat.messages import Participant, init_body
from gateway.store.records import timestamp_from_seconds
from gateway.store.sms import ConversationRecord

__all__ = ["Conversation", "ConversationGone", "Conversations", "refused"]

log = Logger()

ENDED_BY_SERVER = "ended-by-server"
ENDED_BY_GATEWAY = "ended-by-gateway"
IDLE = "idle"
REFUSED = "refused"


def refused(ack) -> bool:
    """Whether an acknowledgement says no (the chat server acks ``false`` for what it refuses)."""
    return isinstance(ack, list) and ack[:1] == [False]


class ConversationGone(Exception):
    """The chat server refused to join the conversation: it ended or it does not know it."""

    http_status = 409
    code = "conversation_gone"


@attrs.define(eq=False)
class Conversation:
    id: str
    number: str
    #: the customer as a participant of the conversation
    participant: Participant
    opened_at: str
    #: the Socket.IO session in which it was joined (None: not joined in this one)
    joined_in: int | None = None
    #: agents who joined: participant id -> name
    agents: dict = attrs.Factory(dict)
    idle_timer: object = None

    def to_json(self) -> dict:
        return {
            "conversationId": self.id,
            "number": self.number,
            "participant": self.participant.to_json(),
            "openedAt": self.opened_at,
            "agents": [{"id": k, "name": v} for k, v in self.agents.items()],
        }


class Conversations:
    """The open conversations, by id and by number.

    :param clock: ``IReactorTime``.
    :param store: an :class:`~gateway.store.ISmsStore`.
    :param rest: a :class:`~gateway.chat.rest.ChatRest`.
    :param channel: the init's ``channel``.
    :param customer: init fields for every conversation (``language``, ``subject``).
    :param idle_timeout: seconds without a message before the gateway ends one (0: never).
    :param new_id: makes GUIDs (the init's ``requestId``).
    :param metrics: a :class:`~gateway.chat.metrics.ChatMetrics`.
    """

    def __init__(self, clock, store, rest, *, channel: str, customer: dict, idle_timeout: float, new_id, metrics):
        self._clock = clock
        self._store = store
        self._rest = rest
        self._channel = channel
        self._customer = customer
        self._idle_timeout = idle_timeout
        self._new_id = new_id
        self._metrics = metrics
        #: the Socket.IO client while a namespace session is up, else None
        self.link = None
        self._session = 0
        self._by_id: dict[str, Conversation] = {}
        self._by_number: dict[str, Conversation] = {}
        #: number -> (the attempt under way, the callers waiting for it)
        self._readying: dict[str, tuple[defer.Deferred, list[defer.Deferred]]] = {}

    def __iter__(self):
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, conversation_id) -> Conversation | None:
        return self._by_id.get(conversation_id) if isinstance(conversation_id, str) else None

    def _now(self) -> str:
        return timestamp_from_seconds(self._clock.seconds())

    # -- life cycle ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def load(self):
        """Take the conversations the store has open (at start)."""
        for record in (yield self._store.open_conversations()):
            participant = Participant.parse(record.participant)
            self._add(Conversation(record.conversation_id, record.number, participant, record.opened_at))
        if self._by_id:
            log.info("{count} open chat conversation(s) taken from the store", count=len(self._by_id))

    def reset(self) -> None:
        """Forget every conversation (their idle timers cancelled): in cluster mode, a node taking the
        chat link over loads them again from the store, where the previous holder left them."""
        for conversation in self._by_id.values():
            self._cancel_idle(conversation)
        self._by_id.clear()
        self._by_number.clear()

    def stop(self) -> defer.Deferred:
        """Cancel idle timers and the attempts under way; fires once those have settled."""
        for conversation in self._by_id.values():
            self._cancel_idle(conversation)
        attempts = [attempt for attempt, _ in self._readying.values()]
        for attempt in attempts:
            attempt.cancel()
        return defer.DeferredList(attempts, consumeErrors=True).addCallback(lambda _: None)

    def connected(self, link) -> None:
        """A new Socket.IO session: nothing is joined in it yet."""
        self.link = link
        self._session += 1

    def disconnected(self) -> None:
        self.link = None

    @defer.inlineCallbacks
    def rejoin_all(self):
        """Join every open conversation in this session (those refused are closed)."""
        for conversation in self:
            try:
                yield self.ready(conversation.number, open_new=False)
            except ConversationGone:
                pass
            except Exception:
                log.failure("could not join conversation {id} again", id=conversation.id)

    # -- the conversation to send into --------------------------------------------------------

    def ready(self, number: str, customer: dict | None = None, *, open_new: bool = True) -> defer.Deferred:
        """Fires with the number's open conversation, joined in this session.

        Without one (or when the chat server refuses to join it) a conversation is opened with
        ``customer``'s init fields, unless ``open_new`` is false: then it fails with
        :class:`ConversationGone`. Fails with ``NotConnected`` while the link is down.
        """
        waiter = defer.Deferred()
        underway = self._readying.get(number)
        if underway is not None:
            underway[1].append(waiter)
            return waiter
        attempt = defer.maybeDeferred(self._ready, number, customer or {}, open_new)
        self._readying[number] = (attempt, [waiter])
        attempt.addBoth(self._readied, number)
        return waiter

    def _readied(self, result, number: str) -> None:
        _, waiters = self._readying.pop(number)
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    @defer.inlineCallbacks
    def _ready(self, number: str, customer: dict, open_new: bool):
        self.require_link()
        conversation = self._by_number.get(number)
        if conversation is not None:
            if conversation.joined_in == self._session:
                return conversation
            try:
                yield self._join(conversation)
                return conversation
            except ConversationGone:
                if not open_new:
                    raise
        elif not open_new:
            raise ConversationGone(f"no open conversation for {number}")
        conversation = yield self._open(number, customer)
        yield self._join(conversation)
        return conversation

    def require_link(self):
        """The Socket.IO client; ``NotConnected`` while the link is down."""
        if self.link is None:
            raise NotConnected("not connected to the chat server")
        return self.link

    @defer.inlineCallbacks
    def _open(self, number: str, customer: dict):
        body = init_body(
            number=number,
            channel=self._channel,
            request_id=self._new_id(),
            timestamp=self._now(),
            customer={**self._customer, **customer},
        )
        conversation_id, participant = yield self._rest.init(body)
        record = ConversationRecord(conversation_id, number, participant.to_json(), self._now())
        yield self._store.save_conversation(record)
        previous = self._by_number.get(number)
        if previous is not None:
            self._forget(previous)
        conversation = Conversation(conversation_id, number, participant, record.opened_at)
        self._add(conversation)
        self._metrics.conversation_opened()
        log.info("opened chat conversation {id} for {number}", id=conversation_id, number=number)
        return conversation

    @defer.inlineCallbacks
    def _join(self, conversation: Conversation):
        session = self._session
        ack = yield self.require_link().emit(
            "joinConversation",
            {
                "conversationId": conversation.id,
                "id": conversation.participant.id,
                "name": conversation.participant.name,
            },
        )
        if refused(ack):
            yield self.close(conversation, REFUSED, "the chat server refused to join it")
            raise ConversationGone(f"the chat server refused to join conversation {conversation.id}")
        conversation.joined_in = session

    # -- activity and closing -----------------------------------------------------------------

    def touch(self, conversation: Conversation) -> None:
        """A message went through: the idle time starts again."""
        if self._idle_timeout <= 0 or self.get(conversation.id) is not conversation:
            return
        self._cancel_idle(conversation)
        conversation.idle_timer = self._clock.callLater(self._idle_timeout, self._idle, conversation)

    def _idle(self, conversation: Conversation) -> None:
        conversation.idle_timer = None
        self.end(conversation, IDLE, f"no message for {self._idle_timeout:g} s").addErrback(
            lambda failure: log.failure("ending idle conversation {id} failed", failure, id=conversation.id)
        )

    def close(self, conversation: Conversation, reason: str, why: str) -> defer.Deferred:
        """Forget an open conversation and mark it closed in the store (no message to the server)."""
        if self.get(conversation.id) is not conversation:
            return defer.succeed(False)
        self._forget(conversation)
        self._metrics.conversation_closed(reason)
        log.info("chat conversation {id} ({number}) closed: {why}", id=conversation.id, number=conversation.number,
                 why=why)
        return self._store.close_conversation(conversation.id, self._now(), why)

    @defer.inlineCallbacks
    def end(self, conversation: Conversation, reason: str, why: str):
        """Tell the chat server the conversation is over (``endConversation``), then close it.

        It is closed here even when the chat server cannot be told (the failure is logged).
        """
        try:
            ack = yield self.require_link().emit("endConversation", {"conversationId": conversation.id})
            if refused(ack):
                log.warn("the chat server refused to end conversation {id}", id=conversation.id)
        except Exception as e:
            log.warn("could not tell the chat server that conversation {id} ended: {error}", id=conversation.id,
                     error=e)
        return (yield self.close(conversation, reason, why))

    def _add(self, conversation: Conversation) -> None:
        self._by_id[conversation.id] = conversation
        self._by_number[conversation.number] = conversation
        self.touch(conversation)

    def _forget(self, conversation: Conversation) -> None:
        self._cancel_idle(conversation)
        self._by_id.pop(conversation.id, None)
        if self._by_number.get(conversation.number) is conversation:
            del self._by_number[conversation.number]

    @staticmethod
    def _cancel_idle(conversation: Conversation) -> None:
        if conversation.idle_timer is not None:
            conversation.idle_timer.cancel()
            conversation.idle_timer = None
