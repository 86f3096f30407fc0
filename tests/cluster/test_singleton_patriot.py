"""The Patriot Desktop link as a singleton link: two nodes' ``make_service`` on one MemoryReactorClock,
the fake Redis, and the Patriot server simulator over TLS in memory."""

import pathlib

from prometheus_client import CollectorRegistry
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from core.harness import Harness
from gateway import config as gwconfig
from gateway.cluster.config import ClusterConfig
from gateway.cluster.node import ClusterNode
from gateway.cluster.singleton import SingletonLink
from gateway.cluster.testing import FakeRedisServer
from gateway.context import Context
from gateway.patriot.service import make_service
from gateway.sim import tlsutil
from gateway.sim.patriot_server import HOSTNAME, PatriotServerSim

TTL = 3.0
RETRY = 0.5
CLUSTER = ClusterConfig(redis="redis://127.0.0.1:6379/0", node_ttl=TTL, lease_ttl=TTL)
API_KEY = "ABC123DEF456"


class ClusterContext(Context):
    cluster = None


class PatriotDesktopTakeoverTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.server = FakeRedisServer(self.reactor)
        certificate = tlsutil.load_or_create(self.mktemp(), HOSTNAME)
        self.sim = PatriotServerSim(self.reactor, API_KEY, certificate)
        self.successResultOf(self.sim.listen(TCP4ServerEndpoint(self.reactor, 9009, interface="127.0.0.1")))
        self.text = (
            "[[extensions]]\nid = '1001'\n[[patriot.desktop]]\n"
            f"api_key = '{API_KEY}'\nextension = '1001'\nurl = 'wss://{HOSTNAME}:9009/ws/dialler/v1'\n"
            f"connect = 'tcp:host=127.0.0.1:port=9009'\nfingerprint = '{certificate.fingerprint}'\n"
        )
        self.harness = Harness()
        self.pumps = []
        self.nodes = {}
        self.attempts = 0  # connection attempts made (and completed)

    def start(self, name):
        ctx = ClusterContext(reactor=self.reactor, config=gwconfig.loads(self.text, "x"),
                             state_dir=pathlib.Path("unused"), metrics=CollectorRegistry())
        ctx.registry = self.harness.registry
        ctx.cluster = ClusterNode(self.reactor, CLUSTER, name, handler=lambda c, a: None,
                                  on_node_lost=lambda r: None, redis=self.server.client(name))
        ctx.cluster.startService()
        svc = make_service(ctx)
        svc.startService()
        self.nodes[name] = (ctx, svc)
        return ctx, svc

    def complete(self):
        """Complete the pending connection attempt (TLS, WebSocket handshake, authentication), if any."""
        pump = iosim.ConnectionCompleter(self.reactor).succeedOnce()
        if pump is not None:
            self.attempts += 1
            self.pumps.append(pump)
            pump.flush()
        return pump

    def flush(self):
        for pump in self.pumps:
            pump.flush()

    def advance(self, seconds, step=0.1):
        for _ in range(round(seconds / step)):
            self.reactor.advance(step)
            self.complete()
            self.flush()

    def tearDown(self):
        for ctx, svc in self.nodes.values():
            stopped = svc.stopService()
            self.flush()
            self.successResultOf(stopped)
            self.successResultOf(ctx.cluster.stopService())
        self.flush()
        self.successResultOf(self.sim.stop())

    def up(self, name):
        return self.nodes[name][0].readiness.components["patriot-desktop:0"].up

    def test_one_node_logs_in_and_the_other_takes_over_when_its_lease_is_lost(self):
        self.start("a")
        self.start("b")
        self.assertIsInstance(list(self.nodes["b"][1])[0], SingletonLink)
        self.assertEqual(len(self.reactor.tcpClients), 1, "only the lease holder connects")
        self.complete()
        self.advance(3 * TTL)
        self.assertEqual(self.attempts, 1)
        self.assertEqual((self.sim.auth_successes, len(self.sim.authenticated_clients)), (1, 1))
        self.assertTrue(self.up("a"))
        self.assertTrue(self.up("b"), "a standby is ready")
        self.assertEqual([link.status()["url"] for link in self.nodes["b"][1].links],
                         [f"wss://{HOSTNAME}:9009/ws/dialler/v1"])

        self.server.clients[0].disconnect()  # a is cut off from redis: it closes its link at 90% of the TTL
        waited = 0.0
        while self.sim.auth_successes < 2:
            self.advance(0.1)
            waited += 0.1
            self.assertLessEqual(len(self.sim.authenticated_clients), 1, "two nodes logged in at once")
            self.assertLessEqual(waited, TTL + RETRY + 0.5, "b did not take the link over in time")
        self.assertEqual(self.attempts, 2)
        self.assertEqual(len(self.sim.authenticated_clients), 1)
        self.assertTrue(self.up("b"))
        self.server.clients[0].reconnect()

    def test_without_a_cluster_every_link_connects_as_before(self):
        ctx = Context(reactor=self.reactor, config=gwconfig.loads(self.text, "x"),
                      state_dir=pathlib.Path("unused"), metrics=CollectorRegistry())
        ctx.registry = self.harness.registry
        svc = make_service(ctx)
        svc.startService()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertNotIsInstance(list(svc)[0], SingletonLink)
        self.successResultOf(svc.stopService())
