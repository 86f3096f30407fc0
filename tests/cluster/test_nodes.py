"""The node registry (heartbeats, load, draining, death after the TTL), on the fake Redis and a Clock."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster import keys
from gateway.cluster.errors import LeaseLost, NodeIdInUse, RedisUnavailable
from gateway.cluster.nodes import NodeHeartbeat, NodeInfo, NodeRegistry, least_loaded
from gateway.cluster.testing import FakeRedisServer


class NodeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.registry = NodeRegistry(self.server.client("reader"))
        self.lost, self.rebuilt = [], []
        self.load = {"a": 0, "b": 0}

    def heartbeat(self, node, redis=None):
        return NodeHeartbeat(
            redis or self.server.client(node), self.clock, node, ttl=3.0,
            load=lambda: {"calls": self.load.get(node, 0)}, meta={"admin": f"http://{node}:8080"},
            on_lost=lambda hb, e: self.lost.append((node, e)), on_rebuilt=lambda hb: self.rebuilt.append(node),
        )

    def let_pass(self, seconds):
        for _ in range(round(seconds * 10)):
            self.clock.advance(0.1)

    def test_live_nodes_with_their_load_and_draining(self):
        a, b = self.heartbeat("a"), self.heartbeat("b")
        self.successResultOf(a.start())
        self.successResultOf(b.start())
        self.load.update(a=5, b=2)
        self.let_pass(1.1)  # one beat each
        nodes = self.successResultOf(self.registry.nodes())
        self.assertEqual([(n.node, n.load, n.draining) for n in nodes], [("a", {"calls": 5}, False), ("b", {"calls": 2}, False)])
        self.assertEqual(nodes[0].meta, {"admin": "http://a:8080"})
        self.assertEqual(nodes[0].instance, a.instance)
        self.assertEqual(least_loaded(nodes).node, "b")
        self.successResultOf(b.drain())
        nodes = self.successResultOf(self.registry.nodes())
        self.assertTrue(self.successResultOf(self.registry.node("b")).draining)
        self.assertEqual(least_loaded(nodes).node, "a")  # never a draining node
        self.successResultOf(a.drain())
        self.assertIsNone(least_loaded(self.successResultOf(self.registry.nodes())))

    def test_a_node_is_dead_after_its_ttl(self):
        a, b = self.heartbeat("a"), self.heartbeat("b")
        self.successResultOf(a.start())
        self.successResultOf(b.start())
        b._stop_timers()  # b dies
        self.let_pass(2.9)
        self.assertTrue(self.successResultOf(self.registry.is_alive("b")))
        self.let_pass(0.1)
        self.assertFalse(self.successResultOf(self.registry.is_alive("b")))
        self.assertIsNone(self.successResultOf(self.registry.node("b")))
        self.assertEqual([n.node for n in self.successResultOf(self.registry.nodes())], ["a"])
        self.let_pass(30)
        self.assertTrue(a.alive)
        self.assertEqual(self.lost, [])

    def test_a_second_process_with_the_same_node_id_is_refused(self):
        self.successResultOf(self.heartbeat("a").start())
        self.failureResultOf(self.heartbeat("a").start(), NodeIdInUse)

    def test_a_node_cut_off_from_redis_learns_it_lost_its_place_before_the_others_see_it_dead(self):
        a = self.heartbeat("a")
        self.successResultOf(a.start())
        a.redis.disconnect()
        self.let_pass(2.7)
        self.assertFalse(a.alive)
        self.assertEqual([n for n, _ in self.lost], ["a"])
        self.assertIsInstance(self.lost[0][1], LeaseLost)
        self.assertTrue(self.successResultOf(self.registry.is_alive("a")))  # not yet dead for the others
        self.let_pass(0.3)
        self.assertFalse(self.successResultOf(self.registry.is_alive("a")))
        a.redis.reconnect()
        self.successResultOf(a.start())  # it may join again, as a new instance
        self.assertTrue(self.successResultOf(self.registry.is_alive("a")))

    def test_another_instance_taking_the_id_is_a_loss(self):
        a = self.heartbeat("a")
        self.successResultOf(a.start())
        self.server.store.hset(keys.node("a"), {"instance": "someone-else"})
        self.assertFalse(self.successResultOf(a.beat()))
        self.assertEqual([n for n, _ in self.lost], ["a"])

    def test_a_redis_that_lost_its_data_gets_the_entry_again_and_the_node_rebuilds(self):
        a = self.heartbeat("a")
        self.successResultOf(a.start())
        self.server.stop()
        self.server.start(flush=True)
        self.assertFalse(self.successResultOf(self.registry.is_alive("a")))
        self.let_pass(1.1)
        self.assertTrue(self.successResultOf(self.registry.is_alive("a")))
        self.assertEqual(self.rebuilt, ["a"])
        self.assertEqual(self.lost, [])

    def test_a_stop_during_the_rewrite_after_a_data_loss_stays_stopped(self):
        """The beat that writes the entry again after Redis lost its data did not look at ``alive``
        after that write: a stop landing while it was on its way was undone (the entry written
        back, on_rebuilt called, an expiry timer left). Here the write reaches Redis after the
        stop's REMOVE, the worst order."""
        held = []

        class HeldRewrite:
            """The fake's client, holding the heartbeat's rewrite ("start" mode) on its way."""

            hold = False

            def __init__(self, redis):
                self.redis = redis

            def __getattr__(self, name):
                return getattr(self.redis, name)

            def eval(self, script, keys=(), args=()):
                if self.hold and args and args[-1] == "start":
                    d = defer.Deferred()
                    held.append(lambda: self.redis.eval(script, keys, args).chainDeferred(d))
                    return d
                return self.redis.eval(script, keys, args)

        redis = HeldRewrite(self.server.client("a"))
        a = self.heartbeat("a", redis=redis)
        self.successResultOf(a.start())
        redis.hold = True
        self.server.stop()
        self.server.start(flush=True)
        beat = a.beat()
        self.assertEqual(len(held), 1)  # the rewrite is on its way
        self.successResultOf(a.stop())
        held.pop()()
        self.assertFalse(self.successResultOf(beat))
        self.let_pass(0.1)
        self.assertFalse(a.alive)
        self.assertEqual(self.rebuilt, [])
        self.assertEqual(self.lost, [])
        self.assertFalse(self.successResultOf(self.registry.is_alive("a")))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_leaves_the_registry(self):
        a = self.heartbeat("a")
        self.successResultOf(a.start())
        self.successResultOf(a.stop())
        self.assertFalse(self.successResultOf(self.registry.is_alive("a")))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_start_fails_typed_while_redis_is_down(self):
        self.server.stop()
        self.failureResultOf(self.heartbeat("a").start(), RedisUnavailable)

    def test_an_unreadable_entry_is_skipped(self):
        self.server.store.hset(keys.node("x"), {"instance": "i", "info": "{not json"})
        self.server.store.hset(keys.node("y"), {"instance": "i", "info": '{"load": {"calls": "many"}}'})
        self.assertEqual(self.successResultOf(self.registry.nodes()), [])

    def test_node_info_round_trip(self):
        info = NodeInfo.from_hash("n", {"instance": "i", "info": '{"draining": true, "load": {"calls": 3}, "started": 1.5}'})
        self.assertEqual(info, NodeInfo(node="n", instance="i", draining=True, load={"calls": 3}, started=1.5))
