"""The cluster-mode ICallControl: two nodes (real registries on the sim driver) over the fake Redis,
on one task.Clock: records, events, routed commands, node_lost and the drain."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster import keys
from gateway.cluster.config import ClusterConfig
from gateway.cluster.control import (
    ERROR_TYPES,
    ClusterCommandTimeout,
    ClusterControl,
    ClusterDrain,
    OwnerUnreachable,
    snapshot_from_json,
    snapshot_to_json,
)
from gateway.cluster.node import ClusterNode
from gateway.cluster.testing import FakeRedisServer
from gateway.config import Extension, Route
from gateway.context import Readiness
from gateway.core import events as ev
from gateway.core.errors import ExtensionBusy, IllegalState, UnknownCall
from gateway.core.registry import Registry
from gateway.core.routing import Router
from gateway.drivers.config import SimNetworkConfig
from gateway.drivers.sim import SimNetwork

CONFIG = ClusterConfig(redis="redis://127.0.0.1:6379/0", node_ttl=3.0, lease_ttl=3.0, command_timeout=1.0,
                       drain_timeout=10.0)
EXTENSIONS = [Extension(id="1001", name="Alice", device="sim"), Extension(id="1002", name="Bob", device="sim")]
ROUTES = [Route(did="100", to="extension:1001"), Route(did="*", to="extension:1002")]


class CdrStore:
    def __init__(self):
        self.cdrs = {}

    def add_cdr(self, cdr):
        if cdr["call_id"] in self.cdrs:
            return defer.fail(ValueError(f"call {cdr['call_id']} has a CDR already"))
        self.cdrs[cdr["call_id"]] = cdr
        return defer.succeed(None)


class Node:
    """One gateway node: a registry on its own sim network, its ClusterControl and ClusterNode."""

    def __init__(self, test, name):
        clock, server = test.clock, test.server
        self.name = name
        self.store = CdrStore()
        self.network = SimNetwork(clock, SimNetworkConfig(audio="silence", phone_answer_delay=1.0, ring_time=1.0,
                                                          no_answer_timeout=30.0))
        self.registry = Registry(clock, {"sim": self.network}, extensions=EXTENSIONS, router=Router(ROUTES, set()),
                                 pbx_driver="sim", node=name, cdr_sink=self.store.add_cdr)
        self.network.wire(self.registry)
        self.readiness = Readiness()
        self.control = ClusterControl(clock, self.registry, name, store=self.store, readiness=self.readiness, refresh=0.5)
        self.node = ClusterNode(
            clock, CONFIG, name, handler=self.control.handle, on_node_lost=self.control.end_lost_call,
            load=lambda: {"calls": float(self.registry.status()["live_calls"])},
            on_joined=self.control.joined, on_lost=self.control.lost, error_types=ERROR_TYPES,
            redis=server.client(name),
        )
        self.control.attach(self.node)
        self.registry.busy_elsewhere = self.control.busy_elsewhere
        self.drain = ClusterDrain(clock, self.control, self.node, CONFIG.drain_timeout)
        self.events = []
        self.control.subscribe(lambda event, call: self.events.append((event, call)))

    def start(self):
        self.network.start()
        self.node.startService()
        self.control.startService()

    def stop(self, test):
        if self.control.running:
            self.control.stopService()
        if self.node.running:
            test.successResultOf(self.node.stopService())
        self.drain.cancel()
        test.successResultOf(defer.maybeDeferred(self.network.stop))


class ControlTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.a = Node(self, "a")
        self.b = Node(self, "b")
        self.a.start()
        self.b.start()
        self.let_pass(0.5)

    def tearDown(self):
        for node in (self.a, self.b):
            node.registry.end_live_calls("normal")
            self.let_pass(1)
            node.stop(self)

    def let_pass(self, seconds):
        for _ in range(round(seconds * 10)):
            self.clock.advance(0.1)

    def settled(self, d):
        self.let_pass(0.3)
        return self.successResultOf(d)

    def failed(self, d, *types):
        self.let_pass(0.3)
        return self.failureResultOf(d, *types)

    def inbound_on_a(self, did="100"):
        leg = self.a.network.place_inbound("5550100", did)
        self.let_pass(0.1)
        return leg.events.call_id

    def test_a_call_on_a_is_recorded_and_seen_from_b_with_its_events(self):
        call_id = self.inbound_on_a()
        record = self.successResultOf(self.a.node.records.get(call_id))
        self.assertEqual((record.owner, record.state, record.extension), ("a", "RINGING", "1001"))
        self.assertEqual(snapshot_from_json(record.data["snapshot"]), self.a.registry.call(call_id))
        seen = self.b.control.call(call_id)
        self.assertEqual((seen.call_id, seen.extension, str(seen.state)), (call_id, "1001", "RINGING"))
        self.assertEqual([c.call_id for c in self.b.control.calls()], [call_id])
        self.assertEqual(self.b.control.active_call_for("1001").call_id, call_id)
        self.assertEqual([type(e).__name__ for e, _ in self.b.events][:1], ["CallCreated"])
        self.assertTrue(all(e.call_id == call_id for e, _ in self.b.events))

    def test_a_stopped_control_writes_nothing_and_a_restart_subscribes_once(self):
        """stopService() left the registry subscription: late events still wrote records and
        published to Redis, and a stop/start cycle subscribed twice (every event published twice)."""
        self.a.control.stopService()
        call_id = self.inbound_on_a()
        self.let_pass(1)
        self.assertIsNone(self.successResultOf(self.a.node.records.get(call_id)))
        self.assertEqual(self.b.events, [])
        self.a.registry.end_live_calls("normal")
        self.let_pass(1)
        self.a.control.startService()
        self.let_pass(0.5)
        del self.a.events[:]
        call_id = self.inbound_on_a()
        self.assertIsNotNone(self.successResultOf(self.a.node.records.get(call_id)))
        raised = [e for e, _ in self.a.events if e.call_id == call_id]
        self.assertTrue(raised)
        self.assertEqual([e for e, _ in self.b.events], raised)  # each published once

    def test_b_holds_and_hangs_up_a_call_of_a_and_the_deferred_has_a_snapshot(self):
        call_id = self.inbound_on_a()
        self.settled(self.b.control.answer(call_id))
        held = self.settled(self.b.control.hold(call_id))
        self.assertEqual(str(held.state), "HELD")
        self.assertEqual(str(self.a.registry.call(call_id).state), "HELD")
        ended = self.settled(self.b.control.hangup(call_id, by="desktop"))
        self.assertEqual(str(ended.state), "RELEASED")
        self.assertEqual(self.a.store.cdrs[call_id]["hangup_by"], "desktop")
        self.let_pass(1)
        self.assertIsNone(self.successResultOf(self.a.node.records.get(call_id)))
        self.assertEqual(self.b.control.calls(), [])
        self.assertIsInstance(self.b.events[-1][0], ev.CallEnded)

    def test_the_owners_error_is_the_cores_type_and_an_unknown_call_is_unknown(self):
        call_id = self.inbound_on_a()
        self.failed(self.b.control.hold(call_id), IllegalState)  # still ringing
        self.failed(self.b.control.hangup("nosuchcall"), UnknownCall)

    def test_a_dead_or_silent_owner_is_a_typed_core_error(self):
        call_id = self.inbound_on_a()
        self.a.node.router.handler = lambda command, args: defer.Deferred()  # never answers
        d = self.b.control.hangup(call_id)
        self.let_pass(1.5)
        failure = self.failureResultOf(d, ClusterCommandTimeout)
        self.assertEqual(failure.value.http_status, 504)
        self.successResultOf(self.a.node.router.stop())  # nobody listens on a's channel any more
        failure = self.failed(self.b.control.hangup(call_id), OwnerUnreachable)
        self.assertEqual(failure.value.http_status, 503)

    def test_originate_runs_on_the_least_loaded_node_and_never_on_a_draining_one(self):
        self.inbound_on_a("999")  # a has a call of 1002
        self.let_pass(1.5)  # a's load is beaten into its entry
        call = self.settled(self.a.control.originate("1001", "5551234"))
        self.assertEqual([c.call_id for c in self.b.registry.calls()], [call.call_id])
        self.failed(self.a.control.originate("1001", "5551235"), ExtensionBusy)
        self.b.drain.drain()
        self.assertFalse(self.b.readiness.ready)
        self.assertEqual(self.b.readiness.not_ready(), {"cluster": "draining"})
        self.let_pass(0.5)
        other = self.settled(self.b.control.originate("1002", "5551236", if_busy="replace"))
        self.assertIn(other.call_id, [c.call_id for c in self.a.registry.calls()])

    def test_a_dead_nodes_calls_get_a_node_lost_cdr_from_a_survivor(self):
        call_id = self.inbound_on_a()
        self.settled(self.b.control.answer(call_id))
        # a dies: no more beats, no more commands (its registry is gone with it)
        self.a.node.heartbeat._stop_timers()
        self.a.node.sweeper.stop()
        self.a.node._loop.stop()
        self.a.control.stopService()
        self.successResultOf(self.a.node.router.stop())
        self.let_pass(6)
        cdr = self.b.store.cdrs[call_id]
        self.assertEqual((cdr["cause"], cdr["node"], cdr["hangup_by"]), ("node_lost", "a", "cluster"))
        self.assertTrue(all(leg["cause"] in ("node_lost", None) or leg["ended_at"] for leg in cdr["legs"]))
        self.assertEqual(self.server.store.smembers(keys.owned("a")), set())
        self.assertEqual(self.b.control.calls(), [])
        self.assertIsInstance(self.b.events[-1][0], ev.CallEnded)
        self.a.node.heartbeat.alive = False
        self.a.node._routing = False

    def test_drain_lets_live_calls_finish_then_forces_the_rest(self):
        first = self.inbound_on_a()
        self.settled(self.a.registry.answer(first))
        done = self.a.drain.drain()
        self.assertNoResult(done)
        self.settled(self.a.registry.hangup(first))
        self.assertEqual(self.successResultOf(done), 0)
        second = self.inbound_on_a("999")
        self.settled(self.a.registry.answer(second))
        again = ClusterDrain(self.clock, self.a.control, self.a.node, 3.0)
        done = again.drain()
        self.let_pass(2.9)
        self.assertNoResult(done)
        self.let_pass(0.2)
        self.assertEqual(self.successResultOf(done), 1)
        self.assertEqual(self.a.store.cdrs[second]["cause"], "drain_forced")

    def test_snapshots_survive_json(self):
        call_id = self.inbound_on_a()
        snapshot = self.a.registry.call(call_id)
        self.assertEqual(snapshot_from_json(snapshot_to_json(snapshot)), snapshot)

    def test_readiness_names_redis_when_it_is_down(self):
        self.assertTrue(self.a.readiness.ready)
        self.server.stop()
        self.let_pass(0.6)
        self.assertIn("redis", self.a.readiness.not_ready())
        self.server.start()
        self.let_pass(3)
        self.assertTrue(self.a.readiness.ready, self.a.readiness.not_ready())

    def test_it_is_an_icallcontrol_and_the_drivers_door(self):
        from zope.interface.verify import verifyObject

        from gateway.core.interfaces import ICallControl, IInboundCalls

        self.assertTrue(verifyObject(ICallControl, self.a.control))
        self.assertTrue(verifyObject(IInboundCalls, self.a.control))
        self.assertEqual(self.a.control.extensions, ["1001", "1002"])

    def test_a_routed_command_outside_the_list_is_refused(self):
        from gateway.core.errors import InvalidArgument

        self.failureResultOf(defer.maybeDeferred(self.a.control.handle, "shutdown", {"grace": 0}), InvalidArgument)
        self.failureResultOf(defer.maybeDeferred(self.a.control.handle, "hangup", {"call_id": "x", "evil": 1}),
                             InvalidArgument)

    def test_a_routed_command_with_an_argument_of_the_wrong_type_is_refused_and_the_call_keeps_its_cdr(self):
        """A ``by`` that is no text would end up in the CDR's hangup_by column, which no store can write."""
        from gateway.core.errors import InvalidArgument

        call_id = self.inbound_on_a()
        for args in ({"call_id": call_id, "by": {"who": ["x"]}}, {"call_id": [call_id]}, {"call_id": call_id, "by": 1}):
            failure = self.failureResultOf(defer.maybeDeferred(self.a.control.handle, "hangup", args), InvalidArgument)
            self.assertIn("must be text", str(failure.value))
        for args in ({"extension_id": "1002", "number": "100", "attributes": ["x"]},
                     {"extension_id": "1002", "number": 100},
                     {"extension_id": "1002", "number": "100", "if_busy": True}):
            self.failureResultOf(defer.maybeDeferred(self.a.control.handle, "originate", args), InvalidArgument)
        failure = self.failureResultOf(defer.maybeDeferred(self.a.control.handle, "hangup", {}), InvalidArgument)
        self.assertIn("missing 'call_id'", str(failure.value))  # not a TypeError naming Registry.hangup
        self.failureResultOf(defer.maybeDeferred(self.a.control.handle, "send_dtmf", {
            "call_id": call_id, "digits": "1", "duration_ms": True, "gap_ms": 50}), InvalidArgument)
        self.assertIsNotNone(self.a.registry.call(call_id))
        self.settled(defer.maybeDeferred(self.a.control.handle, "hangup", {"call_id": call_id, "by": "b"}))
        self.assertEqual(self.a.store.cdrs[call_id]["hangup_by"], "b")

    def test_after_a_short_redis_outage_the_records_catch_up(self):
        call_id = self.inbound_on_a()
        other = self.inbound_on_a("999")
        self.assertIsNotNone(self.successResultOf(self.a.node.records.get(other)))
        self.server.stop()
        self.settled(self.a.registry.answer(call_id))  # a TALKING record cannot be written now
        self.settled(self.a.registry.hangup(other))  # nor can the ended call's record be removed
        self.server.start()
        self.let_pass(1.0)  # shorter than the node TTL: no rejoin, the ticks catch up
        self.assertTrue(self.a.node.heartbeat.alive)
        self.assertEqual(self.successResultOf(self.a.node.records.get(call_id)).state, "TALKING")
        self.assertIsNone(self.successResultOf(self.a.node.records.get(other)))
        self.assertEqual([c.call_id for c in self.b.control.calls()], [call_id])

    def test_a_read_of_the_records_begun_before_an_event_does_not_undo_it(self):
        slow = defer.Deferred()
        self.b.node.records.all = lambda: slow
        self.b.control._read_records()  # begins: nothing is recorded yet
        call_id = self.inbound_on_a()  # the events reach b meanwhile
        self.assertEqual([c.call_id for c in self.b.control.calls()], [call_id])
        slow.callback([])  # the old read ends: it saw no call
        self.assertEqual([c.call_id for c in self.b.control.calls()], [call_id])
        del self.b.node.records.all
        self.let_pass(1.0)
        self.assertEqual([c.call_id for c in self.b.control.calls()], [call_id])

    def test_a_draining_node_takes_no_origination_even_when_asked_directly(self):
        self.a.drain.drain()
        self.failed(defer.maybeDeferred(self.a.control.handle, "originate",
                                        {"extension_id": "1001", "number": "5551234"}), IllegalState)
        self.b.drain.drain()
        self.let_pass(0.5)
        self.failed(self.a.control.originate("1001", "5551234"), IllegalState)  # nowhere to go
        self.server.stop()
        self.failed(self.a.control.originate("1001", "5551234"), IllegalState)  # and no way to ask
        self.assertEqual(self.a.registry.calls() + self.b.registry.calls(), [])

    def test_routed_commands_and_calls_ended_by_the_cluster_are_counted(self):
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        from gateway.cluster.control import _Metrics

        self.b.control.metrics = _Metrics(registry, self.b.control)
        call_id = self.inbound_on_a()
        self.settled(self.b.control.answer(call_id))
        self.failed(self.b.control.hold("nosuchcall"), UnknownCall)
        self.failed(self.b.control.answer(call_id), IllegalState)
        value = registry.get_sample_value
        self.assertEqual(value("gateway_cluster_routed_commands_total", {"command": "answer", "outcome": "ok"}), 1)
        self.assertEqual(value("gateway_cluster_routed_commands_total",
                               {"command": "answer", "outcome": "illegal_state"}), 1)
        self.assertEqual(value("gateway_cluster_routed_command_seconds_count"), 2)
        self.assertEqual(value("gateway_cluster_remote_calls"), 1)
        second = self.b.network.place_inbound("5550100", "999").events.call_id
        self.let_pass(0.2)
        self.settled(self.b.registry.answer(second))
        self.b.drain.drain()
        self.let_pass(10.5)  # [cluster] drain_timeout
        self.assertEqual(value("gateway_cluster_calls_ended_total", {"cause": "drain_forced"}), 1)

    def test_any_node_can_start_the_drain_of_another(self):
        self.a.control.on_drain = self.a.drain.drain
        self.b.control.on_drain = self.b.drain.drain
        call_id = self.inbound_on_a()
        started = self.settled(self.b.control.drain_node("a"))
        self.assertEqual(started, {"node": "a", "draining": True, "live_calls": 1})
        self.assertTrue(self.a.drain.draining)
        self.assertFalse(self.b.drain.draining)
        self.assertEqual(self.a.readiness.not_ready(), {"cluster": "draining"})
        self.assertEqual(self.settled(self.a.control.drain_node("a"))["node"], "a")  # again: no harm
        self.failed(self.b.control.drain_node("nosuchnode"), OwnerUnreachable)
        self.assertEqual(self.settled(self.b.control.drain_node("b"))["live_calls"], 0)
        self.assertTrue(self.b.drain.draining)
        self.assertIn(call_id, [c.call_id for c in self.a.registry.calls()])  # it may finish

    def test_an_extension_busy_on_another_node_is_busy_here(self):
        call_id = self.inbound_on_a()  # 1001 rings on a
        leg = self.b.network.place_inbound("5550177", "100")  # another caller for 1001, on b
        self.let_pass(0.2)
        refused = self.b.registry.call(leg.events.call_id)
        self.assertEqual((str(refused.state), refused.cause), ("RELEASED", "busy"))
        failure = self.failed(defer.maybeDeferred(self.b.registry.originate, "1001", "5551234"), ExtensionBusy)
        self.assertEqual(failure.value.call_id, call_id)
        self.failed(defer.maybeDeferred(self.b.registry.originate, "1002", "1001"), ExtensionBusy)
        self.settled(self.a.registry.hangup(call_id))
        self.settled(self.b.registry.originate("1001", "5551234"))  # free again
