"""The chat link as a singleton link: two nodes' ClusterChatService on one store (standing for the
shared PostgreSQL), the fake Redis, a task.Clock, and the shipped FakeSocketIOClient as each node's
link to the chat server."""

import itertools

from prometheus_client import CollectorRegistry
from twisted.application import service
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from gateway.chat.config import ChatConfig
from gateway.chat.connector import Connector
from gateway.chat.conversations import Conversations
from gateway.chat.metrics import ChatMetrics
from gateway.chat.service import POLL_INTERVAL, ClusterChatService
from gateway.chat.testing import FakeSocketIOClient, FakeSmsTransport
from gateway.cluster.config import ClusterConfig
from gateway.cluster.node import ClusterNode
from gateway.cluster.testing import FakeRedisServer
from gateway.context import Readiness
from gateway.store import MemoryCdrStore
from tests.chat.bench import FakeRest

TTL = 3.0
RETRY = 0.5
CLUSTER = ClusterConfig(redis="redis://127.0.0.1:6379/0", node_ttl=TTL, lease_ttl=TTL)
NUMBER = "+15551234"


class FakeLink(service.Service):
    """A node's Socket.IO link: the fake client connected at start (registration acknowledged)."""

    def __init__(self, connector):
        self.client = FakeSocketIOClient(connector)
        self.sessions = 0

    def startService(self):
        super().startService()
        self.sessions += 1
        self.client.connect()
        for entry in self.client.emitted:
            if entry.event == "registerConnector" and not entry.deferred.called:
                entry.ack(True)

    def stopService(self):
        super().stopService()
        return self.client.disconnect()

    def ack_messages(self):
        """The chat server acknowledges what it was sent (joins and messages)."""
        for entry in self.client.emitted:
            if not entry.deferred.called:
                entry.ack(True)

    def texts(self):
        return [entry.args[0]["text"] for entry in self.client.emitted if entry.event == "sendMessage"]


class ChatTakeoverTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.server = FakeRedisServer(self.clock)
        self.store = MemoryCdrStore(self.clock)
        self.rest = FakeRest()
        self.nodes = {}

    def start(self, name):
        counter = itertools.count(1)
        new_id = lambda: f"{name}-{next(counter)}"  # noqa: E731
        config = ChatConfig(enabled=True)
        metrics = ChatMetrics(CollectorRegistry())
        component = Readiness().register("chat")
        conversations = Conversations(self.clock, self.store, self.rest, channel="sms",
                                      customer={"language": "en", "subject": "support"},
                                      idle_timeout=config.idle_timeout, new_id=new_id, metrics=metrics)
        transport = FakeSmsTransport()
        connector = Connector(self.clock, self.store, conversations, transport, config, metrics, component,
                              retry_policy=lambda failures: 2.0 ** failures, new_id=new_id)
        link = FakeLink(connector)
        node = ClusterNode(self.clock, CLUSTER, name, handler=lambda c, a: None, on_node_lost=lambda r: None,
                           redis=self.server.client(name))
        node.startService()
        chat = ClusterChatService(node, connector, link, [], clock=self.clock, component=component)
        chat.startService()
        self.nodes[name] = (node, chat, link, connector, transport, component)
        return self.nodes[name]

    def tearDown(self):
        for node, chat, *_ in self.nodes.values():
            self.successResultOf(chat.stopService())
            self.successResultOf(node.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def advance(self, seconds, step=0.1):
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            for _, _, link, *_ in self.nodes.values():
                link.ack_messages()

    def pending(self):
        return [r.text for r in self.successResultOf(self.store.pending_sms())]

    def test_the_holder_delivers_what_any_node_stored_and_the_new_holder_takes_over(self):
        _, _, a_link, a_connector, a_transport, _ = self.start("a")
        _, _, b_link, b_connector, b_transport, b_component = self.start("b")
        self.assertEqual((a_link.sessions, b_link.sessions), (1, 0))
        self.assertTrue(b_component.up, "a standby is ready")

        # an SMS reaching the standby is stored there, and delivered by the holder
        self.successResultOf(b_connector.receive_sms(NUMBER, "hello from b's webhook"))
        self.assertEqual(self.pending(), ["hello from b's webhook"])
        self.advance(POLL_INTERVAL + 0.1)
        self.assertEqual(a_link.texts(), ["hello from b's webhook"])
        self.assertEqual(self.pending(), [])
        # an operator's SMS sent through the standby's admin API goes out through the holder's transport
        self.successResultOf(b_connector.send_sms(NUMBER, "reply through b"))
        self.advance(POLL_INTERVAL + 0.1)
        self.assertEqual([sms.text for sms in a_transport.sent], ["reply through b"])
        self.assertEqual(b_transport.sent, [])
        self.advance(5 * POLL_INTERVAL)
        self.assertEqual(a_link.texts(), ["hello from b's webhook"], "delivered once")
        self.assertEqual([sms.text for sms in a_transport.sent], ["reply through b"], "sent once")

        # a is cut off from redis: it closes its link before b may open one; b takes over
        self.server.clients[0].disconnect()
        waited = 0.0
        while b_link.sessions == 0:
            self.advance(0.1)
            waited += 0.1
            self.assertLessEqual(waited, TTL + RETRY + 0.2, "b did not take the chat link over in time")
            if b_link.sessions:
                self.assertFalse(a_link.client.connected, "two nodes connected to the chat server at once")
        self.assertFalse(a_link.running)
        # b took the open conversation from the store, and what a now stores is b's to deliver
        self.assertIsNotNone(b_connector.conversations.get("c1"))
        self.successResultOf(a_connector.receive_sms(NUMBER, "while a stands by"))
        self.advance(POLL_INTERVAL + 0.1)
        self.assertEqual(b_link.texts(), ["while a stands by"])
        self.assertEqual(b_link.client.emitted[-1].args[0]["conversationId"], "c1")
        self.assertEqual(self.rest.bodies[1:], [], "no second conversation was opened")
        self.assertEqual(self.pending(), [])
        self.server.clients[0].reconnect()


class OutboxTests(SynchronousTestCase):
    def test_a_record_delivered_lately_is_not_queued_again_by_a_stale_read_of_the_store(self):
        from gateway.chat.outbox import Outbox
        from gateway.store.sms import SmsRecord

        clock = task.Clock()
        store = MemoryCdrStore(clock)
        delivered = []
        outbox = Outbox(clock, store, "outbound", delivered.append, retry_policy=lambda failures: 1.0)
        record, _ = self.successResultOf(store.add_sms(SmsRecord("u1", "outbound", NUMBER, "hi", "2026-01-01T00:00:00Z")))
        outbox.add(record)
        outbox.load([record])  # the holder's poll read the store before the outcome was written
        self.assertEqual([r.seq for r in delivered], [record.seq])
