"""A ClusterNode stopped while it is joining (its heartbeat's first write on its way to Redis): once
stopped, it beats no more, sweeps no more and leaves nothing scheduled."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster.config import ClusterConfig
from gateway.cluster.node import ClusterNode
from gateway.cluster.testing import FakeRedisServer

from .test_campaign_stop import _Gate

CONFIG = ClusterConfig(redis="redis://127.0.0.1:6379/0", node_ttl=3.0, lease_ttl=3.0, command_timeout=1.0)


class NodeStopWhileJoiningTests(SynchronousTestCase):
    def test_stopped_while_joining_it_leaves_nothing_running(self):
        clock = Clock()
        server = FakeRedisServer(clock)
        gate = _Gate(server.client("a"))
        joined = []
        node = ClusterNode(clock, CONFIG, "a", handler=lambda command, args: None, on_node_lost=lambda record: None,
                           on_joined=joined.append, redis=gate)
        node.startService()
        self.assertEqual(len(gate.waiting), 1)  # the heartbeat's first write waits for Redis
        stopped = node.stopService()
        for _ in range(10):  # Redis answers everything asked from now on
            gate.open()
        self.successResultOf(stopped)
        self.assertFalse(node.heartbeat.alive)
        self.assertFalse(node.joined)
        self.assertEqual(joined, [])  # not told it joined while it was leaving
        self.assertEqual(self.successResultOf(node.registry.nodes()), [])
        self.assertEqual(clock.getDelayedCalls(), [])
