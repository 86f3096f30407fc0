"""The status page in cluster mode: node b's real admin site and event stream (in memory, on a
task.Clock) over two nodes on the fake Redis: the view lists the nodes, their load, the draining one
and the leases they hold, and names the node of each call."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from admin.test_status_page_stream import Client
from gateway.admin.metrics import make_metrics_registry
from gateway.admin.site import make_site
from gateway.admin.status_page import STREAM_PATH
from gateway.cluster.testing import FakeRedisServer
from gateway.config import load
from gateway.confschema import Secret
from gateway.context import Context
from gateway.store import MemoryCdrStore

from .test_control import Node

TOKEN = "st4tus-T0ken"


class ClusterStatusPageTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.a, self.b = Node(self, "a"), Node(self, "b")
        self.a.start()
        self.b.start()
        self.let_pass(0.5)
        self.ctx = Context(reactor=self.clock, config=load(None), state_dir=self.mktemp(),
                           metrics=make_metrics_registry(), store=MemoryCdrStore(self.clock),
                           registry=self.b.control)
        self.ctx.cluster = self.b.node
        self.site = make_site(self.ctx, Secret(TOKEN))
        self.ports = iter(range(40000, 41000))

    def tearDown(self):
        for client in getattr(self, "clients", []):
            client.close()
        for node in (self.a, self.b):
            node.registry.end_live_calls("normal")
            self.let_pass(1)
            node.stop(self)

    def let_pass(self, seconds):
        for _ in range(round(seconds * 10)):
            self.clock.advance(0.1)

    def open(self):
        import json

        client = Client(self.site, next(self.ports))
        client.protocol.dataReceived(
            f"POST /api/status/ticket HTTP/1.0\r\nHost: admin.test\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 0\r\n\r\n".encode())
        ticket = json.loads(client.body)["ticket"]
        stream = Client(self.site, next(self.ports))
        stream.get(f"/status/events?ticket={ticket}")
        self.clients = [stream]
        return stream

    def test_the_page_shows_the_nodes_and_each_calls_node(self):
        stream = self.open()
        self.let_pass(1.5)
        cluster = stream.latest()["cluster"]
        self.assertEqual([(n["node"], n["draining"], n["load"]) for n in cluster["nodes"]],
                         [("a", False, {"calls": 0.0}), ("b", False, {"calls": 0.0})])
        self.assertEqual(cluster["redis"], "up")
        self.assertNotIn("seen", cluster["nodes"][0])  # it changes at every beat: no message per beat
        self.a.node.campaign("cti:his", on_acquired=lambda lease: None, on_lost=lambda lease, e: None)
        call_id = self.a.network.place_inbound("5550100", "100").events.call_id
        self.successResultOf(self.a.node.heartbeat.drain())
        self.let_pass(2.5)
        view = stream.latest()
        self.assertEqual([(c["call_id"], c["node"]) for c in view["calls"]], [(call_id, "a")])
        [a, b] = view["cluster"]["nodes"]
        self.assertEqual((a["node"], a["draining"], a["load"], a["leases"]), ("a", True, {"calls": 1.0}, ["cti:his"]))
        self.assertEqual(view["cluster"]["leases"], [{"name": "cti:his", "holder": "a"}])

    def test_redis_down_is_shown_not_fatal(self):
        stream = self.open()
        self.let_pass(1.5)
        self.server.stop()
        self.let_pass(1.5)
        self.assertIn("cannot be read", stream.latest()["cluster"]["error"])
        self.server.start()
        self.let_pass(2.5)
        self.assertEqual([n["node"] for n in stream.latest()["cluster"]["nodes"]], ["a", "b"])

    def test_without_a_cluster_there_is_no_cluster_in_the_view(self):
        ctx = Context(reactor=self.clock, config=load(None), state_dir=self.mktemp(),
                      metrics=make_metrics_registry(), store=MemoryCdrStore(self.clock), registry=self.a.registry)
        self.site = make_site(ctx, Secret(TOKEN))
        stream = self.open()
        self.let_pass(1.5)
        view = stream.latest()
        self.assertIsNone(view["cluster"])
        self.assertNotIn("node", [key for call in view["calls"] for key in call])
