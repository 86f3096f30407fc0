"""The calls API on any node in cluster mode: two nodes (real registries on the sim driver, their
ClusterControls) over the fake Redis; node b's admin router lists, shows and hangs up a call whose
media is on node a, each call naming its node."""

import json

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.api import ApiRouter
from gateway.admin.calls import register_calls_api
from gateway.cluster.testing import FakeRedisServer
from gateway.confschema import Secret
from twisted.internet.task import Clock

from .test_control import Node

TOKEN = "t0ken-for-the-calls"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "http://admin.test"


class ClusterCallsApiTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.a, self.b = Node(self, "a"), Node(self, "b")
        self.a.start()
        self.b.start()
        self.let_pass(0.5)
        self.clients = {}
        for node in (self.a, self.b):
            router = ApiRouter(Secret(TOKEN))
            register_calls_api(router, node.control)
            self.clients[node.name] = StubTreq(router)

    def tearDown(self):
        for node in (self.a, self.b):
            node.registry.end_live_calls("normal")
            self.let_pass(1)
            node.stop(self)

    def let_pass(self, seconds):
        for _ in range(round(seconds * 10)):
            self.clock.advance(0.1)

    def request(self, node, method, path):
        client = self.clients[node]
        d = client.request(method, URL + path, headers=AUTH)
        for _ in range(5):
            client.flush()
            self.let_pass(0.1)
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_b_lists_shows_and_hangs_up_a_call_of_a(self):
        local = self.b.network.place_inbound("5550199", "200").events.call_id  # one of b's own, to 1002
        remote = self.a.network.place_inbound("5550100", "100").events.call_id
        self.let_pass(0.2)
        code, body = self.request("b", "GET", "/api/calls")
        self.assertEqual(code, 200)
        self.assertEqual(sorted((c["call_id"], c["node"], c["extension"]) for c in body["calls"]),
                         sorted([(local, "b", "1002"), (remote, "a", "1001")]))
        code, body = self.request("b", "GET", "/api/calls?extension=1001")
        self.assertEqual([(c["call_id"], c["node"]) for c in body["calls"]], [(remote, "a")])
        code, body = self.request("b", "GET", f"/api/calls/{remote}")
        self.assertEqual((code, body["node"], body["extension"]), (200, "a", "1001"))
        self.let_pass(1)  # the extension's simulated phone answers
        code, body = self.request("b", "POST", f"/api/calls/{remote}/hold")
        self.assertEqual((code, body["state"]), (200, "HELD"))
        code, body = self.request("b", "POST", f"/api/calls/{remote}/hangup")
        self.assertEqual((code, body["state"]), (200, "RELEASED"))
        self.assertEqual(self.a.store.cdrs[remote]["hangup_by"], "api")
        self.let_pass(1)
        code, body = self.request("b", "GET", "/api/calls")
        self.assertEqual([c["call_id"] for c in body["calls"]], [local])
        code, body = self.request("a", "GET", "/api/calls")
        self.assertEqual([(c["call_id"], c["node"]) for c in body["calls"]], [(local, "b")])
