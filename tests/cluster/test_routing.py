"""Per-extension event channels and command routing to a call's owner, on the fake Redis."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster import keys
from gateway.cluster.commands import CommandRouter
from gateway.cluster.errors import CommandTimeout, OwnerDead, RedisUnavailable, RemoteCommandError
from gateway.cluster.events import ExtensionEvents
from gateway.cluster.nodes import NodeHeartbeat
from gateway.cluster.testing import FakeRedisServer


class UnknownCall(Exception):
    pass


class EventTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.a = ExtensionEvents(self.server.client("a"), "a")
        self.b = ExtensionEvents(self.server.client("b"), "b")

    def test_a_node_hears_the_extensions_it_subscribed_to(self):
        got = []
        sub = self.successResultOf(self.b.subscribe("201", lambda ext, node, event: got.append((ext, node, event))))
        self.successResultOf(self.b.subscribe("202", lambda ext, node, event: got.append((ext, node, event))))
        self.assertEqual(self.successResultOf(self.a.publish("201", {"type": "call.state", "call": "c1", "state": "HELD"})), 1)
        self.assertEqual(self.successResultOf(self.a.publish("203", {"type": "x"})), 0)
        self.clock.advance(0)
        self.assertEqual(got, [("201", "a", {"type": "call.state", "call": "c1", "state": "HELD"})])
        self.successResultOf(sub.cancel())
        self.assertEqual(self.successResultOf(self.a.publish("201", {"type": "y"})), 0)

    def test_a_message_that_is_not_an_event_is_dropped(self):
        got = []
        self.successResultOf(self.b.subscribe("201", lambda *args: got.append(args)))
        for junk in ("{", "[]", '{"node": 1, "event": {}}', '{"node": "a", "event": "x"}', '{"node": "\\udc00", "event": {}}'):
            self.server.publish(keys.extension_channel("201"), junk)
        self.server.publish(keys.extension_channel("201"), '{"node": "z", "event": {"ok": true}}')
        self.clock.advance(0)
        self.assertEqual(got, [("201", "z", {"ok": True})])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_publish_fails_typed_while_redis_is_down(self):
        self.server.stop()
        self.failureResultOf(self.a.publish("201", {}), RedisUnavailable)


class CommandTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.handled = []
        self.routers = {}
        self.heartbeats = {}
        for node in ("a", "b"):
            redis = self.server.client(node)
            self.heartbeats[node] = NodeHeartbeat(redis, self.clock, node, ttl=3.0)
            self.successResultOf(self.heartbeats[node].start())
            router = CommandRouter(
                redis, self.clock, node, lambda command, args, node=node: self.handle(node, command, args),
                timeout=2.0, error_types={"UnknownCall": UnknownCall},
            )
            self.successResultOf(router.start())
            self.routers[node] = router
        self.pending = None

    def command_timers(self):
        return [c for c in self.clock.getDelayedCalls() if getattr(c.func, "__name__", "") == "_timed_out"]

    def handle(self, node, command, args):
        self.handled.append((node, command, args))
        if command == "hangup":
            return {"ended": args["call"], "by": node}
        if command == "unknown":
            raise UnknownCall(f"no call {args['call']!r}")
        if command == "boom":
            raise RuntimeError("it broke")
        if command == "slow":
            self.pending = defer.Deferred()
            return self.pending
        if command == "bad-result":
            return object()
        return None

    def test_the_owners_result_comes_back(self):
        d = self.routers["b"].call("a", "hangup", {"call": "c1"})
        self.assertNoResult(d)
        self.clock.advance(0)  # the request reaches a, and a's reply reaches b
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), {"ended": "c1", "by": "a"})
        self.assertEqual(self.handled, [("a", "hangup", {"call": "c1"})])
        self.assertEqual(self.command_timers(), [])

    def test_a_command_for_this_node_runs_here(self):
        self.assertEqual(self.successResultOf(self.routers["a"].call("a", "hangup", {"call": "c1"})), {"ended": "c1", "by": "a"})

    def test_the_owners_error_comes_back_typed(self):
        d = self.routers["b"].call("a", "unknown", {"call": "c9"})
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(str(self.failureResultOf(d, UnknownCall).value), "no call 'c9'")
        d = self.routers["b"].call("a", "boom")
        self.clock.advance(0)
        self.clock.advance(0)
        error = self.failureResultOf(d, RemoteCommandError).value
        self.assertEqual((error.node, error.kind, error.message), ("a", "RuntimeError", "it broke"))
        d = self.routers["b"].call("a", "bad-result")
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.failureResultOf(d, RemoteCommandError).value.kind, "TypeError")

    def test_a_dead_owner_at_once_when_nobody_listens(self):
        self.successResultOf(self.routers["a"].stop())
        d = self.routers["b"].call("a", "hangup", {"call": "c1"})
        error = self.failureResultOf(d, OwnerDead).value
        self.assertEqual(error.node, "a")
        self.assertEqual(self.command_timers(), [])
        self.failureResultOf(self.routers["b"].call("nobody", "hangup"), OwnerDead)

    def test_a_silent_owner_times_out_and_a_dead_one_is_named_dead(self):
        d = self.routers["b"].call("a", "slow")
        self.clock.advance(0)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.failureResultOf(d, CommandTimeout).value
        self.assertEqual((error.node, error.command, error.timeout), ("a", "slow", 2.0))
        self.pending.callback({"late": True})  # a late reply is dropped
        self.clock.advance(0)
        # the owner's heartbeat is gone, but its process still listens (frozen): named dead after the timeout
        self.heartbeats["a"]._stop_timers()
        self.server.store.delete(keys.node("a"))
        d = self.routers["b"].call("a", "slow")
        self.clock.advance(0)
        self.clock.advance(2.0)
        self.assertEqual(self.failureResultOf(d, OwnerDead).value.detail, "no heartbeat")

    def test_redis_down_is_a_typed_error(self):
        self.server.stop()
        self.failureResultOf(self.routers["b"].call("a", "hangup"), RedisUnavailable)
        self.assertEqual(self.command_timers(), [])

    def test_cancelling_a_command_forgets_it(self):
        d = self.routers["b"].call("a", "slow")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.command_timers(), [])

    def test_unreadable_requests_and_replies_are_dropped(self):
        for junk in ("{", '{"id": "x"}', '{"id": "x", "from": "b", "command": 1, "args": {}}'):
            self.server.publish(keys.command_channel("a"), junk)
            self.server.publish(keys.reply_channel("b"), junk)
        self.clock.advance(0)
        self.assertEqual(self.handled, [])

    def test_a_flood_of_unreadable_commands_is_logged_rate_limited_naming_the_channel(self):
        from twisted.logger import capturedLogs

        with capturedLogs() as events:
            for _ in range(500):
                self.server.publish(keys.command_channel("a"), "{")
            self.clock.advance(0)
        lines = [e for e in events if "unreadable" in e.get("log_format", "")]
        self.assertLessEqual(len(lines), 6)
        self.assertEqual(lines[0]["channel"], keys.command_channel("a"))
        self.assertIn("not JSON", lines[0]["problem"])
        self.assertEqual(self.handled, [])
