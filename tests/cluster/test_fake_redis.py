"""The shipped fake Redis (gateway.cluster.testing) against the IRedis contract, and its outages."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.cluster.errors import RedisTimeout, RedisUnavailable
from gateway.cluster.redis import IRedis, ISubscription
from gateway.cluster.testing import FakeRedisServer
from tests.cluster.contract import CHECKS


class FakeEnv:
    def __init__(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.a = self.server.client("a")
        self.b = self.server.client("b")

    def wait(self, seconds):
        self.clock.advance(seconds)
        return defer.succeed(None)

    def until(self, predicate):
        self.clock.advance(0)
        assert predicate(), "not delivered on the next clock turn"
        return defer.succeed(None)


class FakeContractTests(SynchronousTestCase):
    """Each contract check, on the fake; every one completes without the clock moving on its own."""


def _contract_test(check):
    def test(self):
        env = FakeEnv()
        self.successResultOf(defer.ensureDeferred(check(env)))

    test.__name__ = f"test_{check.__name__}"
    test.__doc__ = check.__doc__
    return test


for _check in CHECKS:
    setattr(FakeContractTests, f"test_{_check.__name__}", _contract_test(_check))


class FakeOutageTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.a = self.server.client("a")
        self.b = self.server.client("b")

    def test_it_provides_the_interfaces(self):
        verifyObject(IRedis, self.a)
        verifyObject(ISubscription, self.successResultOf(self.a.subscribe("c", lambda c, m: None)))

    def test_commands_fail_promptly_while_redis_is_down(self):
        seen = []
        self.a.on_connection(seen.append)
        self.server.stop()
        self.assertEqual(seen, [False])
        self.assertFalse(self.a.connected)
        for d in (self.a.get("k"), self.a.set("k", "v"), self.a.publish("c", "m"), self.a.subscribe("c", print)):
            self.failureResultOf(d, RedisUnavailable)
        self.server.start()
        self.assertEqual(seen, [False, True])
        self.assertEqual(self.successResultOf(self.a.set("k", "v")), True)

    def test_a_restart_without_persistence_empties_it_and_keeps_subscriptions(self):
        got = []
        self.successResultOf(self.a.set("k", "v"))
        self.successResultOf(self.b.subscribe("c", lambda channel, message: got.append(message)))
        self.server.stop()
        self.server.start(flush=True)
        self.assertIsNone(self.successResultOf(self.a.get("k")))
        self.assertEqual(self.successResultOf(self.a.publish("c", "after")), 1)
        self.clock.advance(0)
        self.assertEqual(got, ["after"])

    def test_a_message_in_flight_when_the_link_drops_is_lost(self):
        got = []
        self.successResultOf(self.b.subscribe("c", lambda channel, message: got.append(message)))
        self.successResultOf(self.a.publish("c", "m"))
        self.b.disconnect()
        self.clock.advance(0)
        self.assertEqual(got, [])
        self.failureResultOf(self.b.get("k"), RedisUnavailable)
        self.successResultOf(self.a.get("k"))  # the other node still has Redis
        self.b.reconnect()
        self.successResultOf(self.b.get("k"))

    def test_a_hung_redis_times_commands_out_on_the_clock(self):
        self.server.hang()
        d = self.a.get("k")
        self.assertNoResult(d)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, RedisTimeout)

    def test_commands_are_counted_per_client(self):
        self.successResultOf(self.a.get("k"))
        self.successResultOf(self.b.set("k", "v"))
        self.assertEqual(self.server.commands, [("a", "GET"), ("b", "SET")])
