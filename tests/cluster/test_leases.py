"""Leases with fencing tokens, on the fake Redis and a task.Clock."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster import keys
from gateway.cluster.errors import LeaseLost, RedisUnavailable
from gateway.cluster.leases import Lease, LeaseCampaign, lease_holder, lease_holders
from gateway.cluster.testing import FakeRedisServer


class LeaseTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.server = FakeRedisServer(self.clock)
        self.a, self.b = self.server.client("a"), self.server.client("b")
        self.lost = []

    def lease(self, redis, holder, **kw):
        return Lease(redis, self.clock, "his", holder, ttl=3.0, on_lost=lambda lease, e: self.lost.append((holder, e)), **kw)

    def test_unreadable_lease_keys_are_left_out_of_the_list(self):
        """A unicode digit or 5,000 digits as the token (int() raised: /api/cluster answered 500), or a key of
        the wrong type (WRONGTYPE: the whole list failed): each is left out, the real lease is listed."""
        self.successResultOf(self.lease(self.a, "a").acquire())
        self.server.store.set(keys.lease("sup"), "\u00b2:evil")
        self.server.store.set(keys.lease("long"), "9" * 5000 + ":evil")
        self.server.store.hset(keys.lease("hash"), {"not": "a string"})
        self.assertEqual([h.name for h in self.successResultOf(lease_holders(self.b))], ["his"])

    def test_one_holder_at_a_time_and_tokens_grow(self):
        la, lb = self.lease(self.a, "node-a"), self.lease(self.b, "node-b")
        self.assertTrue(self.successResultOf(la.acquire()))
        self.assertFalse(self.successResultOf(lb.acquire()))
        first = la.check()
        holder = self.successResultOf(lease_holder(self.b, "his"))
        self.assertEqual((holder.holder, holder.token, holder.ttl_ms), ("node-a", first, 3000))
        self.successResultOf(la.release())
        self.assertFalse(la.held)
        self.assertRaises(LeaseLost, la.check)
        self.assertIsNone(self.successResultOf(lease_holder(self.b, "his")))
        self.assertTrue(self.successResultOf(lb.acquire()))
        self.assertGreater(lb.check(), first)
        self.assertEqual([h.holder for h in self.successResultOf(lease_holders(self.a))], ["node-b"])
        self.assertEqual(self.lost, [])

    def test_renewal_keeps_it_for_as_long_as_the_holder_lives(self):
        la, lb = self.lease(self.a, "node-a"), self.lease(self.b, "node-b")
        self.successResultOf(la.acquire())
        for _ in range(30):
            self.clock.advance(1.0)
        self.assertTrue(la.held)
        self.assertFalse(self.successResultOf(lb.acquire()))
        self.assertEqual(self.lost, [])

    def test_a_dead_holder_loses_it_after_the_ttl(self):
        la, lb = self.lease(self.a, "node-a"), self.lease(self.b, "node-b")
        self.successResultOf(la.acquire())
        la._stop_timers()  # the holder dies: no more renewals, no local expiry either
        self.clock.advance(2.9)
        self.assertFalse(self.successResultOf(lb.acquire()))
        self.clock.advance(0.1)
        self.assertTrue(self.successResultOf(lb.acquire()))

    def test_a_refused_renewal_is_a_loss_at_once(self):
        la = self.lease(self.a, "node-a")
        self.successResultOf(la.acquire())
        self.server.store.set(keys.lease("his"), "999:node-b", px=3000)  # taken behind our back
        self.assertFalse(self.successResultOf(la.renew()))
        self.assertFalse(la.held)
        [(holder, error)] = self.lost
        self.assertEqual(holder, "node-a")
        self.assertIsInstance(error, LeaseLost)
        self.assertIn("taken by another holder", str(error))

    def test_redis_unreachable_loses_it_at_the_ttl_not_before(self):
        la = self.lease(self.a, "node-a")
        self.successResultOf(la.acquire())
        self.clock.advance(1.0)  # renewed at t+1: Redis keeps it to t+4, we give it up at t+3.7
        self.a.disconnect()
        self.assertFalse(self.successResultOf(la.renew()))  # a failed renewal is not yet a loss
        self.assertTrue(la.held)
        self.clock.advance(2.6)
        self.assertTrue(la.held)
        self.clock.advance(0.1)
        self.assertFalse(la.held)
        self.assertIn("not renewed within its TTL", str(self.lost[0][1]))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_silent_redis_loses_it_at_the_ttl(self):
        la = self.lease(self.a, "node-a")
        self.successResultOf(la.acquire())
        self.server.hang()
        self.clock.advance(2.6)
        self.assertTrue(la.held)
        self.clock.advance(0.1)
        self.assertFalse(la.held)
        self.assertEqual(len(self.lost), 1)

    def test_a_redis_that_lost_its_data_gives_the_lease_back_with_a_new_token(self):
        tokens = []
        la = self.lease(self.a, "node-a", on_token=lambda lease, token: tokens.append(token))
        self.successResultOf(la.acquire())
        old = la.check()
        self.server.stop()
        self.clock.advance(1)  # tokens seeded from Redis's clock after the restart still grow
        self.server.start(flush=True)
        self.assertTrue(self.successResultOf(la.renew()))
        self.assertTrue(la.held)
        self.assertGreater(la.check(), old)
        self.assertEqual(tokens, [la.check()])
        self.assertEqual(self.lost, [])

    def test_after_a_data_loss_a_quicker_node_wins_and_we_learn_it(self):
        la, lb = self.lease(self.a, "node-a"), self.lease(self.b, "node-b")
        self.successResultOf(la.acquire())
        self.server.stop()
        self.server.start(flush=True)
        self.assertTrue(self.successResultOf(lb.acquire()))
        self.assertFalse(self.successResultOf(la.renew()))
        self.assertFalse(la.held)
        self.assertEqual([h for h, _ in self.lost], ["node-a"])

    def test_acquire_fails_typed_while_redis_is_down(self):
        self.server.stop()
        self.failureResultOf(self.lease(self.a, "node-a").acquire(), RedisUnavailable)

    def test_bad_names(self):
        for name in ("", "x:token"):
            self.assertRaises(ValueError, Lease, self.a, self.clock, name, "n")


class CampaignTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.events = []

    def let_pass(self, seconds):
        """Let ``seconds`` pass in 0.1 s steps (one big advance runs every timer at its end time)."""
        for _ in range(round(seconds * 10)):
            self.clock.advance(0.1)

    def campaign(self, name):
        c = LeaseCampaign(
            self.server.client(name), self.clock, "chat", name, ttl=3.0, retry_interval=0.5,
            on_acquired=lambda lease: self.events.append(("acquired", name, lease.token)),
            on_lost=lambda lease, e: self.events.append(("lost", name)),
        )
        c.start()
        return c

    def test_the_link_moves_when_its_holder_dies_or_stops(self):
        a = self.campaign("a")
        b = self.campaign("b")
        self.assertEqual(self.events, [("acquired", "a", 1)])
        # a dies (no renewals): b takes over within the TTL plus one retry
        a.lease._stop_timers()
        a._loop.stop()
        self.let_pass(3.5)
        self.assertEqual(self.events[-1], ("acquired", "b", 2))
        # b hands it over (a drain): c takes it on its next try
        c = self.campaign("c")
        self.successResultOf(b.stop())
        self.clock.advance(0.5)
        self.assertEqual(self.events[-1], ("acquired", "c", 3))
        self.successResultOf(c.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_holder_cut_off_from_redis_learns_it_lost_and_campaigns_again(self):
        a = self.campaign("a")
        b = self.campaign("b")
        a.lease.redis.disconnect()
        self.let_pass(3.0)
        self.assertIn(("lost", "a"), self.events)
        self.assertEqual(self.events[-1], ("acquired", "b", 2))
        a.lease.redis.reconnect()
        self.let_pass(5)
        self.assertFalse(a.held)  # b renews it: a keeps trying, in vain
        self.successResultOf(b.stop())
        self.clock.advance(0.5)
        self.assertTrue(a.held)
        self.successResultOf(a.stop())
