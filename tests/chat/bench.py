"""A connector on fakes for unit tests: FakeSocketIOClient, the in-memory store, FakeRest, the sim transport."""

import itertools

import attrs
from prometheus_client import CollectorRegistry
from twisted.internet import defer

from gateway.chat.config import ChatConfig
from gateway.chat.connector import Connector
from gateway.chat.conversations import Conversations
from gateway.chat.messages import Participant
from gateway.chat.metrics import ChatMetrics
from gateway.chat.testing import FakeSocketIOClient
from gateway.chat.transports import SimTransport
from gateway.context import Readiness


class FakeRest:
    """``init`` answers with conversation c<n> and participant cust-<n>, or waits when ``hold`` is set.

    ``transcripts`` maps a conversation id to the transcript body (or an exception to fail with).
    """

    def __init__(self):
        self.bodies = []
        self.held = []
        self.hold = False
        self.failure = None
        self.transcripts = {}

    def init(self, body):
        self.bodies.append(body)
        if self.failure is not None:
            return defer.fail(self.failure)
        n = len(self.bodies)
        answer = (f"c{n}", Participant(f"cust-{n}", body["phone"]))
        if self.hold:
            d = defer.Deferred()
            self.held.append((d, answer))
            return d
        return defer.succeed(answer)

    def transcript(self, conversation_id, kind):
        body = self.transcripts[conversation_id]
        return defer.fail(body) if isinstance(body, Exception) else defer.succeed(body)


@attrs.define
class ConnectorBench:
    """A started connector and what it was built on."""

    connector: Connector
    conversations: Conversations
    transport: SimTransport
    readiness: object
    link: FakeSocketIOClient

    @classmethod
    def build(cls, clock, store, rest, **settings) -> "ConnectorBench":
        counter = itertools.count(1)
        new_id = lambda: f"id-{next(counter)}"  # noqa: E731
        config = ChatConfig(enabled=True, **settings)
        metrics = ChatMetrics(CollectorRegistry())
        readiness = Readiness().register("chat")
        conversations = Conversations(
            clock, store, rest, channel="sms", customer={"language": "en", "subject": "support"},
            idle_timeout=config.idle_timeout, new_id=new_id, metrics=metrics,
        )
        transport = SimTransport(clock)
        connector = Connector(
            clock, store, conversations, transport, config, metrics, readiness,
            retry_policy=lambda failures: 2.0 ** failures, new_id=new_id,
        )
        connector.start()
        return cls(connector, conversations, transport, readiness, FakeSocketIOClient(connector))

    def unacked(self, event):
        return [e for e in self.link.emitted if e.event == event and not e.deferred.called]

    def ack(self, event, *answer):
        """Acknowledge every unacknowledged ``event`` (with ``True`` unless told otherwise)."""
        entries = self.unacked(event)
        assert entries, f"nothing emitted for {event}"
        for entry in entries:
            entry.ack(*(answer or (True,)))
        return entries

    def connect(self):
        """Connect and acknowledge the registration."""
        self.link.connect()
        self.ack("registerConnector")
