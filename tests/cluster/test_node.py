"""ClusterNode: the primitives as one service, on the fake Redis and a task.Clock (and once on a real
Redis)."""

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster.calls import CallRecord
from gateway.cluster.config import ClusterConfig
from gateway.cluster.errors import LeaseLost, OwnerDead, RedisUnavailable
from gateway.cluster.node import ClusterNode
from gateway.cluster.testing import FakeRedisServer

CONFIG = ClusterConfig(redis="redis://127.0.0.1:6379/0", node_ttl=3.0, lease_ttl=3.0, command_timeout=1.0)


class NodeServiceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.log = []
        self.nodes = []

    def make(self, name, **kw):
        node = ClusterNode(
            self.clock, CONFIG, name,
            handler=lambda command, args: {"node": name, "command": command, **args},
            on_node_lost=lambda record: self.log.append(("node_lost", name, record.call_id)),
            on_joined=lambda n: self.log.append(("joined", name)),
            on_lost=lambda n, e: self.log.append(("lost", name)),
            load=lambda: {"calls": 1}, redis=self.server.client(name), **kw,
        )
        self.nodes.append(node)
        return node

    def let_pass(self, seconds):
        for _ in range(round(seconds * 10)):
            self.clock.advance(0.1)

    def tearDown(self):
        for node in self.nodes:
            if node.running:
                self.successResultOf(node.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_it_joins_at_start_and_leaves_at_stop(self):
        a = self.make("a")
        a.startService()
        self.assertTrue(a.joined)
        self.assertEqual(a.health(), {"ok": True, "redis": "up", "joined": True, "draining": False})
        self.assertEqual(self.log, [("joined", "a")])
        self.assertEqual([n.node for n in self.successResultOf(a.registry.nodes())], ["a"])
        self.successResultOf(a.stopService())
        self.assertEqual(self.successResultOf(a.registry.nodes()), [])

    def test_it_joins_once_redis_is_reachable(self):
        self.server.stop()
        a = self.make("a")
        a.startService()
        self.assertFalse(a.joined)
        self.assertEqual(a.health(), {"ok": False, "redis": "down", "joined": False, "draining": False})
        self.server.start()
        self.let_pass(1.1)
        self.assertTrue(a.joined)

    def test_a_restarted_node_waits_for_its_old_entry_to_expire(self):
        old = self.make("a")
        old.startService()
        old.heartbeat._stop_timers()  # the old process died without leaving
        old._loop.stop()
        new = self.make("a")
        new.startService()
        self.assertFalse(new.joined)
        self.let_pass(3.1)
        self.assertTrue(new.joined)
        old._loop = None

    def test_commands_events_and_the_node_lost_sweep_between_two_nodes(self):
        a, b = self.make("a"), self.make("b")
        a.startService()
        b.startService()
        d = b.call("a", "hangup", {"call": "c1"})
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), {"node": "a", "command": "hangup", "call": "c1"})
        self.successResultOf(a.records.put(CallRecord(call_id="c1", owner="a", state="TALKING")))
        # a dies (kill -9): b ends its call after the node TTL, and commands to a fail typed
        a.heartbeat._stop_timers()
        a._loop.stop()
        self.successResultOf(a.router.stop())
        self.failureResultOf(b.call("a", "hangup", {"call": "c1"}), OwnerDead)
        self.let_pass(5)
        self.assertIn(("node_lost", "b", "c1"), self.log)
        a._routing = False
        a.sweeper.stop()
        a._loop = None
        self.nodes.remove(a)

    def test_drain_hands_the_singleton_links_over(self):
        a, b = self.make("a"), self.make("b")
        held = []
        a.campaign("his", on_acquired=lambda lease: held.append("a"), on_lost=lambda l, e: held.append("a lost"))
        a.startService()
        b.startService()
        b.campaign("his", on_acquired=lambda lease: held.append("b"), on_lost=lambda l, e: None)
        self.assertEqual(held, ["a"])
        self.successResultOf(a.drain())
        self.assertTrue(self.successResultOf(b.registry.node("a")).draining)
        self.assertTrue(a.health()["draining"])
        self.let_pass(1.1)
        self.assertEqual(held, ["a", "b"])

    def test_a_node_cut_off_past_its_ttl_is_told_and_joins_again(self):
        a = self.make("a")
        a.startService()
        a.redis.disconnect()
        self.let_pass(3.0)
        self.assertEqual(self.log, [("joined", "a"), ("lost", "a")])
        self.assertFalse(a.joined)
        self.failureResultOf(a.records.put(CallRecord(call_id="c1", owner="a", state="TALKING")), LeaseLost)
        a.redis.reconnect()
        self.let_pass(1.1)
        self.assertTrue(a.joined)
        self.assertEqual(self.log[-1], ("joined", "a"))
        self.successResultOf(a.records.put(CallRecord(call_id="c1", owner="a", state="TALKING")))

    def test_a_redis_that_lost_its_data_makes_the_node_write_its_records_again(self):
        a = self.make("a")
        a.startService()
        self.server.stop()
        self.server.start(flush=True)
        self.let_pass(1.1)
        self.assertEqual(self.log, [("joined", "a"), ("joined", "a")])
        self.assertTrue(self.successResultOf(a.registry.is_alive("a")))


@pytest.mark.timeout(30)
@pytest_twisted.ensureDeferred
async def test_two_nodes_on_a_real_redis(redis_server, cleanup):
    from twisted.internet import reactor

    from tests.cluster.support import until

    config = ClusterConfig(redis=redis_server.url, node_ttl=1.0, lease_ttl=1.0, command_timeout=1.0)
    nodes = {}
    for name in ("a", "b"):
        node = ClusterNode(reactor, config, name, handler=lambda command, args, name=name: [name, command],
                           on_node_lost=lambda record: None, join_interval=0.1)
        node.startService()
        cleanup(lambda node=node: pytest_twisted.blockon(node.stopService()) if node.running else None)
        nodes[name] = node
    await until(lambda: nodes["a"].joined and nodes["b"].joined, 10, "both nodes joining")
    assert nodes["a"].health()["ok"]
    assert await nodes["b"].call("a", "hold") == ["a", "hold"]
    assert [n.node for n in await nodes["b"].registry.nodes()] == ["a", "b"]
    await nodes["a"].stopService()
    with pytest.raises((OwnerDead, RedisUnavailable)):
        await nodes["b"].call("a", "hold")
    assert [n.node for n in await nodes["b"].registry.nodes()] == ["b"]
