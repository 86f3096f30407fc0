"""SingletonLink: a link held by one node at a time, on the fake Redis and a task.Clock."""

from prometheus_client import CollectorRegistry
from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster import keys
from gateway.cluster.config import ClusterConfig
from gateway.cluster.errors import LeaseLost
from gateway.cluster.node import ClusterNode
from gateway.cluster.singleton import SingletonLink
from gateway.cluster.testing import FakeRedisServer
from gateway.context import Component

TTL = 3.0
CONFIG = ClusterConfig(redis="redis://127.0.0.1:6379/0", node_ttl=TTL, lease_ttl=TTL, command_timeout=1.0)
RENEW = TTL / 3
RETRY = 0.5


class FakeLink(service.Service):
    """A link: records when it is opened and closed; its close may take time (``slow``)."""

    def __init__(self, log, node):
        self.log, self.node = log, node
        self.slow = None

    def startService(self):
        super().startService()
        self.log.append(("open", self.node))

    def stopService(self):
        super().stopService()
        self.log.append(("close", self.node))
        return self.slow if self.slow is not None else defer.succeed(None)


class SingletonLinkTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.log = []
        self.parts = []

    def make(self, name, **kw):
        node = ClusterNode(self.clock, CONFIG, name, handler=lambda c, a: None, on_node_lost=lambda r: None,
                           redis=self.server.client(name))
        link = FakeLink(self.log, name)
        component = Component(f"link@{name}")
        singleton = SingletonLink(node, "his:PROC", link, component=component, retry_interval=RETRY, **kw)
        node.startService()
        singleton.startService()
        self.parts.append((node, singleton))
        return node, singleton, link, component

    def let_pass(self, seconds):
        for _ in range(round(seconds * 10)):
            self.clock.advance(0.1)

    def tearDown(self):
        for node, singleton in self.parts:
            if singleton.running:
                self.successResultOf(singleton.stopService())
            if node.running:
                self.successResultOf(node.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def die(self, node, singleton):
        """The process is gone (kill -9): its timers stop, nothing is sent to Redis any more."""
        campaign = singleton.campaign
        campaign.lease._stop_timers()
        campaign._loop.stop()
        node.heartbeat._stop_timers()
        node._loop.stop()
        node.sweeper.stop()
        node._campaigns.clear()
        node._loop = singleton.campaign = None
        node.running = singleton.running = False

    def test_only_one_of_two_nodes_opens_the_link(self):
        a = self.make("a")
        b = self.make("b")
        self.let_pass(5 * TTL)
        self.assertEqual(self.log, [("open", "a")])
        self.assertTrue(a[1].held)
        self.assertFalse(b[1].held)
        self.assertEqual(a[1].check(), a[1].token)
        self.assertRaises(LeaseLost, b[1].check)
        # the standby's readiness component is up: the link is the other node's job
        self.assertTrue(b[3].up)
        value = self.successResultOf(self.server.client("probe").get(keys.lease("his:PROC")))
        self.assertEqual(value, f"{a[1].token}:a")

    def test_a_holder_that_loses_its_lease_closes_the_link_at_once(self):
        a_node, a, a_link, _ = self.make("a")
        self.make("b")
        # the lease expired and another holder took it: a's next renewal is refused
        probe = self.server.client("probe")
        self.successResultOf(probe.delete(keys.lease("his:PROC")))
        self.successResultOf(probe.set(keys.lease("his:PROC"), "999999999999999:c", px=int(TTL * 1000)))
        self.clock.advance(RENEW)
        self.assertFalse(a_link.running)
        self.assertFalse(a.held)
        self.assertEqual(self.log, [("open", "a"), ("close", "a")])

    def test_a_holder_cut_off_from_redis_closes_the_link_before_another_can_open_it(self):
        a_node, a, a_link, _ = self.make("a")
        b_node, b, b_link, _ = self.make("b")
        self.server.clients[0].disconnect()
        cut = self.clock.seconds()
        while not b_link.running:
            self.clock.advance(0.1)
            if a_link.running:
                self.assertFalse(b_link.running)
        self.assertEqual(self.log, [("open", "a"), ("close", "a"), ("open", "b")])
        self.assertLessEqual(self.clock.seconds() - cut, TTL + RETRY + 0.01)
        self.assertGreater(b.token, 0)

    def test_the_other_node_takes_over_within_the_ttl_and_a_retry_when_the_holder_dies(self):
        a_node, a, a_link, _ = self.make("a")
        b_node, b, b_link, _ = self.make("b")
        first = a.token
        self.clock.advance(RENEW)  # just renewed: the worst moment to die
        self.die(a_node, a)
        died = self.clock.seconds()
        while not b_link.running:
            self.clock.advance(0.05)
            self.assertLessEqual(self.clock.seconds() - died, TTL + RETRY + 0.01, "b did not take over in time")
        self.assertGreater(b.token, first)
        self.parts = [p for p in self.parts if p[0] is not a_node]

    def test_a_drain_closes_the_link_then_releases_the_lease_and_the_other_takes_over_at_once(self):
        a_node, a, a_link, _ = self.make("a")
        b_node, b, b_link, _ = self.make("b")
        a_link.slow = defer.Deferred()  # the link takes a moment to close
        drained = a_node.drain()
        self.assertFalse(a_link.running)
        self.assertNoResult(drained)
        self.let_pass(2 * RETRY)
        self.assertFalse(b_link.running, "the lease was released before the link was closed")
        a_link.slow.callback(None)
        self.successResultOf(drained)
        self.clock.advance(RETRY)
        self.assertTrue(b_link.running)
        self.assertEqual(self.log, [("open", "a"), ("close", "a"), ("open", "b")])

    def test_stopping_the_holder_hands_the_link_over(self):
        a_node, a, a_link, _ = self.make("a")
        b_node, b, b_link, _ = self.make("b")
        self.successResultOf(a.stopService())
        self.clock.advance(RETRY)
        self.assertTrue(b_link.running)
        self.assertEqual(self.log, [("open", "a"), ("close", "a"), ("open", "b")])

    def test_the_hooks_run_around_the_link_and_a_loss_during_the_start_waits_for_it(self):
        calls = []
        loaded = defer.Deferred()

        def acquired(token):
            calls.append(("acquired", token))
            return loaded

        a_node, a, a_link, _ = self.make("a", on_acquired=acquired, on_released=lambda: calls.append("released"))
        self.assertEqual(calls, [("acquired", a.token)])
        self.assertFalse(a_link.running, "the link starts once on_acquired has fired")
        a.campaign.lease._lose("test")
        loaded.callback(None)
        self.assertFalse(a_link.running)
        self.assertEqual(self.log, [])
        self.assertEqual(calls[-1], "released", "what on_acquired started is undone, though the link never ran")
        self.let_pass(TTL + RETRY)  # its old value expires in redis, then it takes the lease again
        self.assertTrue(a.held)
        self.assertTrue(a_link.running)
        self.successResultOf(a.stopService())
        self.assertEqual(calls[-1], "released")

    def test_metrics(self):
        registry = CollectorRegistry()
        self.make("a", metrics=registry)
        self.make("b", metrics=CollectorRegistry())
        self.assertEqual(registry.get_sample_value("gateway_cluster_link_held", {"link": "his:PROC"}), 1)
        self.assertEqual(registry.get_sample_value("gateway_cluster_link_takeovers_total", {"link": "his:PROC"}), 1)

    def test_a_holder_resumed_after_a_pause_refuses_work_before_its_expiry_timer_runs(self):
        a_node, a, a_link, _ = self.make("a")
        token = a.check()
        self.clock.rightNow += TTL  # the process was stopped; no timer has run yet
        self.assertTrue(a.held)
        self.assertRaises(LeaseLost, a.check)
        # meanwhile another node took the lease; then a's timers run: the lease is lost, the link closed
        self.successResultOf(self.server.client("c").set(keys.lease("his:PROC"), "999999999999999:c", px=5000))
        self.clock.advance(0)
        self.assertFalse(a_link.running)
        self.assertGreater(token, 0)
