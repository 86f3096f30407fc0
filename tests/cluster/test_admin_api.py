"""/api/cluster and the drain of a node, through the admin router (StubTreq, in memory), over two
ClusterNodes on the fake Redis and a task.Clock."""

import json
import types

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.api import ApiRouter
from gateway.admin.cluster import add_cluster_api
from gateway.cluster.config import ClusterConfig
from gateway.cluster.node import ClusterNode
from gateway.cluster.testing import FakeRedisServer
from gateway.confschema import Secret

from .test_control import Node

TOKEN = "t0ken-for-the-cluster"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "http://admin.test"
CONFIG = ClusterConfig(redis="redis://127.0.0.1:6379/0", node_ttl=3.0, lease_ttl=3.0, command_timeout=1.0)


class _Registry:
    """A one-process core's ICallControl (no ``drain_node``)."""

    def __init__(self, live):
        self.live = live

    def status(self):
        return {"live_calls": self.live}


def _ctx(name, cluster=None, live=0):
    return types.SimpleNamespace(
        config=types.SimpleNamespace(gateway=types.SimpleNamespace(node=name)), cluster=cluster,
        registry=_Registry(live),
    )


class ClusterApiTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.nodes = []

    def tearDown(self):
        for node in self.nodes:
            if node.running:
                self.successResultOf(node.stopService())

    def node(self, name, live=0):
        node = ClusterNode(
            self.clock, CONFIG, name, handler=lambda command, args: {"ran": command},
            on_node_lost=lambda record: None, load=lambda: {"calls": float(live)},
            meta={"admin": f"tcp:80{len(self.nodes)}"}, redis=self.server.client(name),
        )
        self.nodes.append(node)
        ctx = _ctx(name, node, live)
        node.startService()
        return ctx

    def client(self, ctx):
        router = ApiRouter(Secret(TOKEN))
        add_cluster_api(ctx, router)
        return StubTreq(router)

    def request(self, client, method, path, headers=AUTH, **kw):
        d = client.request(method, URL + path, headers=headers, **kw)
        client.flush()
        self.clock.advance(0)
        self.clock.advance(0)
        client.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_without_a_cluster_it_says_the_cluster_is_off(self):
        client = self.client(_ctx("solo"))
        self.assertEqual(self.request(client, "GET", "/api/cluster"), (200, {"cluster": False, "node": "solo"}))
        code, body = self.request(client, "POST", "/api/cluster/nodes/solo/drain")
        self.assertEqual((code, body["error"]), (404, "cluster_off"))

    def test_it_needs_the_token(self):
        client = self.client(_ctx("solo"))
        self.assertEqual(self.request(client, "GET", "/api/cluster", headers={})[0], 401)
        self.assertEqual(self.request(client, "POST", "/api/cluster/nodes/x/drain", headers={})[0], 401)

    def test_nodes_their_load_lease_holders_and_draining_nodes(self):
        a, b = self.node("a", live=2), self.node("b", live=0)
        b.cluster.campaign("cti:his", on_acquired=lambda lease: None, on_lost=lambda lease, e: None)
        self.successResultOf(b.cluster.heartbeat.drain())
        code, body = self.request(self.client(a), "GET", "/api/cluster")
        self.assertEqual(code, 200)
        self.assertEqual((body["cluster"], body["node"], body["redis"], body["joined"]), (True, "a", "up", True))
        self.assertEqual([(n["node"], n["self"], n["load"], n["draining"], n["leases"]) for n in body["nodes"]],
                         [("a", True, {"calls": 2.0}, False, []), ("b", False, {"calls": 0.0}, True, ["cti:his"])])
        self.assertEqual(body["nodes"][1]["meta"], {"admin": "tcp:801"})
        [lease] = body["leases"]
        self.assertEqual((lease["name"], lease["holder"]), ("cti:his", "b"))
        self.assertGreater(lease["token"], 0)
        self.assertEqual(body["draining"], ["b"])

    def test_redis_unreachable_is_a_503(self):
        a = self.node("a")
        self.server.stop()
        code, body = self.request(self.client(a), "GET", "/api/cluster")
        self.assertEqual((code, body["error"]), (503, "cluster_unavailable"))



class ClusterDrainApiTests(SynchronousTestCase):
    """The drain route over two nodes' ClusterControls (real registries on the sim driver)."""

    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.a, self.b = Node(self, "a"), Node(self, "b")
        for node in (self.a, self.b):
            node.control.on_drain = node.drain.drain
            node.start()
        self.let_pass(0.5)

    def tearDown(self):
        for node in (self.a, self.b):
            node.registry.end_live_calls("normal")
            self.let_pass(1)
            node.stop(self)

    def let_pass(self, seconds):
        for _ in range(round(seconds * 10)):
            self.clock.advance(0.1)

    def request(self, node, method, path, **kw):
        ctx = types.SimpleNamespace(config=types.SimpleNamespace(gateway=types.SimpleNamespace(node=node.name)),
                                    cluster=node.node, registry=node.control)
        router = ApiRouter(Secret(TOKEN))
        add_cluster_api(ctx, router)
        client = StubTreq(router)
        d = client.request(method, URL + path, headers=AUTH, **kw)
        for _ in range(5):
            client.flush()
            self.let_pass(0.1)
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_draining_this_node(self):
        self.a.network.place_inbound("5550100", "100")
        self.let_pass(0.2)
        code, body = self.request(self.a, "POST", "/api/cluster/nodes/a/drain")
        self.assertEqual((code, body), (202, {"node": "a", "draining": True, "live_calls": 1}))
        self.assertTrue(self.a.drain.draining)
        self.assertFalse(self.b.drain.draining)

    def test_draining_another_node_goes_through_the_command_routing(self):
        code, body = self.request(self.a, "POST", "/api/cluster/nodes/b/drain")
        self.assertEqual((code, body), (202, {"node": "b", "draining": True, "live_calls": 0}))
        self.assertEqual((self.a.drain.draining, self.b.drain.draining), (False, True))
        code, body = self.request(self.a, "GET", "/api/cluster")
        self.assertEqual(body["draining"], ["b"])

    def test_draining_a_node_that_is_not_there(self):
        code, body = self.request(self.a, "POST", "/api/cluster/nodes/ghost/drain")
        self.assertEqual((code, body["error"], body["node"]), (404, "unknown_node", "ghost"))

    def test_a_drain_with_a_body_is_refused(self):
        code, body = self.request(self.a, "POST", "/api/cluster/nodes/b/drain", data=b'{"now": 1}')
        self.assertEqual((code, body["field"]), (400, "now"))
        self.assertFalse(self.b.drain.draining)

    def test_a_dead_node_is_a_503(self):
        # b's process is gone (kill -9): its entry lives until the TTL, nobody listens on its channel
        b = self.b.node
        b.heartbeat._stop_timers()
        b._loop.stop()
        b._loop = None
        self.successResultOf(b.router.stop())
        b._routing = False
        b.sweeper.stop()
        code, body = self.request(self.a, "POST", "/api/cluster/nodes/b/drain")
        self.assertEqual((code, body["error"]), (503, "owner_unreachable"))

    def test_redis_unreachable_is_a_503(self):
        self.server.stop()
        code, body = self.request(self.a, "POST", "/api/cluster/nodes/b/drain")
        self.assertEqual((code, body["error"]), (503, "cluster_unavailable"))
