"""Call records under the owner's lease, and the survivors' node_lost sweep, on the fake Redis."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster import keys
from gateway.cluster.calls import CallRecord, CallRecords, NodeLostSweeper
from gateway.cluster.errors import LeaseLost
from gateway.cluster.nodes import NodeHeartbeat
from gateway.cluster.testing import FakeRedisServer


def record(call_id, owner, extension="201", state="TALKING"):
    return CallRecord(
        call_id=call_id, owner=owner, state=state, extension=extension,
        legs=[{"id": f"{call_id}-l1", "state": state, "direction": "inbound", "number": "+15551234"}],
        started=10.0, updated=12.5, data={"did": "100"},
    )


class CallRecordTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.hb = {}
        self.records = {}
        for node in ("a", "b", "c"):
            redis = self.server.client(node)
            self.hb[node] = NodeHeartbeat(redis, self.clock, node, ttl=3.0)
            self.successResultOf(self.hb[node].start())
            self.records[node] = CallRecords(redis, self.hb[node])

    def let_pass(self, seconds):
        for _ in range(round(seconds * 10)):
            self.clock.advance(0.1)

    def test_every_node_sees_every_call(self):
        self.successResultOf(self.records["a"].put(record("c1", "a")))
        self.successResultOf(self.records["b"].put(record("c2", "b", extension=None)))
        self.assertEqual(self.successResultOf(self.records["c"].get("c1")), record("c1", "a"))
        self.assertEqual([r.call_id for r in self.successResultOf(self.records["c"].all())], ["c1", "c2"])
        self.assertEqual(self.successResultOf(self.records["c"].owned_by("a")), {"c1"})
        updated = record("c1", "a", state="HELD")
        self.successResultOf(self.records["a"].put(updated))
        self.assertEqual(self.successResultOf(self.records["b"].get("c1")).state, "HELD")
        self.assertTrue(self.successResultOf(self.records["a"].remove("c1")))
        self.assertIsNone(self.successResultOf(self.records["b"].get("c1")))
        self.assertEqual(self.successResultOf(self.records["c"].owned_by("a")), set())
        self.assertFalse(self.successResultOf(self.records["a"].remove("c1")))

    def test_only_the_owner_writes_and_only_under_its_lease(self):
        self.failureResultOf(self.records["a"].put(record("c1", "b")), ValueError)
        self.server.store.hset(keys.node("a"), {"instance": "another-process"})
        self.failureResultOf(self.records["a"].put(record("c1", "a")), LeaseLost)
        self.assertIsNone(self.successResultOf(self.records["b"].get("c1")))

    def test_a_node_that_lost_its_place_cannot_write(self):
        self.hb["a"].redis.disconnect()
        self.let_pass(3.0)
        self.hb["a"].redis.reconnect()
        self.failureResultOf(self.records["a"].put(record("c1", "a")), LeaseLost)

    def test_record_json_round_trip_and_bad_records(self):
        r = record("c\u00e91", "a")
        self.assertEqual(CallRecord.from_json(r.to_json()), r)
        for text in ("[]", '{"id": 1, "owner": "a", "state": "x"}', '{"id": "1", "owner": "a", "state": "x", "legs": [1]}', '{"id": "\\ud800"}', "{"):
            self.assertRaises(ValueError, CallRecord.from_json, text)
        self.server.store.set(keys.call("bad"), "{nope")
        self.assertIsNone(self.successResultOf(self.records["a"].get("bad")))
        self.assertEqual(self.successResultOf(self.records["a"].all()), [])


class SweepTests(CallRecordTests):
    def test_survivors_end_a_dead_nodes_calls_once_after_its_ttl(self):
        for i in range(3):
            self.successResultOf(self.records["a"].put(record(f"a{i}", "a")))
        self.successResultOf(self.records["b"].put(record("b0", "b")))
        ended = []
        sweepers = [
            NodeLostSweeper(self.records[n].redis, self.clock, n, lambda r, n=n: ended.append((n, r.call_id)), interval=1.0)
            for n in ("b", "c")
        ]
        for s in sweepers:
            s.start()
        self.hb["a"]._stop_timers()  # kill -9 of node a
        self.let_pass(2.5)
        self.assertEqual(ended, [])  # its lease has not run out yet
        self.let_pass(1.5)
        self.assertEqual(sorted(call for _, call in ended), ["a0", "a1", "a2"])  # each once, by one survivor
        self.assertEqual(len({node for node, _ in ended}), 1)
        self.assertEqual(self.successResultOf(self.records["b"].owned_by("a")), set())
        self.assertIsNone(self.successResultOf(self.records["b"].get("a0")))
        self.assertIsNotNone(self.successResultOf(self.records["b"].get("b0")))  # the live node's call stays
        self.let_pass(5)
        self.assertEqual(len(ended), 3)
        for s in sweepers:
            s.stop()

    def test_a_record_whose_ending_failed_is_kept_for_the_next_sweep(self):
        self.successResultOf(self.records["a"].put(record("a0", "a")))
        self.hb["a"]._stop_timers()
        self.let_pass(3.0)
        attempts = []

        def on_lost(r):
            attempts.append(r.call_id)
            if len(attempts) == 1:
                return defer.fail(RuntimeError("the CDR store is down"))
            return defer.succeed(None)

        sweeper = NodeLostSweeper(self.records["b"].redis, self.clock, "b", on_lost)
        self.assertEqual(self.successResultOf(sweeper.sweep()), [])
        self.assertIsNotNone(self.successResultOf(self.records["b"].get("a0")))
        self.assertEqual(self.successResultOf(sweeper.sweep()), ["a0"])
        self.assertEqual(attempts, ["a0", "a0"])
        self.assertIsNone(self.successResultOf(self.records["b"].get("a0")))

    def test_a_node_never_sweeps_itself_nor_a_live_node(self):
        self.successResultOf(self.records["a"].put(record("a0", "a")))
        sweeper = NodeLostSweeper(self.records["a"].redis, self.clock, "a", lambda r: None)
        self.assertEqual(self.successResultOf(sweeper.sweep()), [])
        sweeper = NodeLostSweeper(self.records["b"].redis, self.clock, "b", lambda r: None)
        self.assertEqual(self.successResultOf(sweeper.sweep()), [])

    def test_while_another_survivor_holds_the_claim_it_is_left_alone(self):
        from gateway.cluster.leases import Lease

        self.successResultOf(self.records["a"].put(record("a0", "a")))
        self.hb["a"]._stop_timers()
        self.let_pass(3.0)
        claim = Lease(self.records["c"].redis, self.clock, "sweep:a", "c", ttl=30)
        self.assertTrue(self.successResultOf(claim.acquire()))
        sweeper = NodeLostSweeper(self.records["b"].redis, self.clock, "b", lambda r: None)
        self.assertEqual(self.successResultOf(sweeper.sweep()), [])
        self.successResultOf(claim.release())
        self.assertEqual(self.successResultOf(sweeper.sweep()), ["a0"])


class PoisonKeyTests(SynchronousTestCase):
    """A key of the wrong type (or an unreadable entry) under the cluster's names, written by any client of
    the shared Redis, costs only itself: the sweep still ends the other dead nodes' calls, the node list
    still lists the live nodes."""

    setUp = CallRecordTests.setUp
    let_pass = CallRecordTests.let_pass

    def test_a_wrongly_typed_key_does_not_stop_the_sweep_nor_the_node_list(self):
        from gateway.cluster.nodes import NodeRegistry

        self.successResultOf(self.records["a"].put(record("a0", "a")))
        self.successResultOf(self.records["a"].put(record("a1", "a")))
        self.server.store.set(keys.owned("0dead"), "not a set")  # scanned before gw:owned:a
        self.server.store.sadd(keys.owned("1dead"), "c9")
        self.server.store.hset(keys.call("c9"), {"not": "a string"})
        self.server.store.delete(keys.call("a1"))
        self.server.store.hset(keys.call("a1"), {"not": "a string"})
        self.server.store.set(keys.node("0bad"), "not a hash")
        self.hb["a"]._stop_timers()
        self.let_pass(3.5)
        ended = []
        sweeper = NodeLostSweeper(self.records["b"].redis, self.clock, "b", lambda r: ended.append(r.call_id))
        self.successResultOf(sweeper.sweep())
        self.assertEqual(ended, ["a0"])
        nodes = self.successResultOf(NodeRegistry(self.records["b"].redis).nodes())
        self.assertEqual([n.node for n in nodes], ["b", "c"])
