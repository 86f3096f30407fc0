"""A lease campaign stopped while its acquisition is on its way to Redis: the lease it then gets is
released, never handed to ``on_acquired`` (a draining or stopping node must not take a singleton link
back and renew it for as long as it lives)."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster.leases import LeaseCampaign, lease_holder
from gateway.cluster.testing import FakeRedisServer


class _Gate:
    """A FakeRedis whose EVALs wait until :meth:`open` (a Redis slow to answer)."""

    def __init__(self, redis):
        self.redis = redis
        self.waiting: list = []

    def eval(self, script, keys=(), args=()):
        d = defer.Deferred()
        self.waiting.append((d, script, keys, args))
        return d

    def open(self):
        waiting, self.waiting = self.waiting, []
        for d, script, keys, args in waiting:
            self.redis.eval(script, keys, args).chainDeferred(d)

    def __getattr__(self, name):
        return getattr(self.redis, name)


class CampaignStopTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.server = FakeRedisServer(self.clock)
        self.gate = _Gate(self.server.client("a"))
        self.acquired = []
        self.campaign = LeaseCampaign(self.gate, self.clock, "his", "node-a", ttl=3.0,
                                      on_acquired=self.acquired.append)

    def test_a_lease_acquired_after_stop_is_released_not_used(self):
        self.campaign.start()
        self.assertEqual(len(self.gate.waiting), 1)  # the ACQUIRE is on its way
        stopped = self.campaign.stop()
        self.assertNoResult(stopped)  # it waits for the acquisition under way
        self.gate.open()  # Redis answers: the lease is ours after all
        self.gate.open()  # and the RELEASE that follows
        self.successResultOf(stopped)
        self.assertEqual(self.acquired, [])
        self.assertFalse(self.campaign.held)
        self.assertIsNone(self.successResultOf(lease_holder(self.server.client("b"), "his")))
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no renewal loop, no expiry timer

    def test_started_again_after_stop_it_campaigns_as_before(self):
        self.campaign.start()
        self.campaign.stop()
        self.gate.open()
        self.gate.open()
        self.campaign.start()
        self.gate.open()
        self.assertTrue(self.campaign.held)
        self.assertEqual(len(self.acquired), 1)
        self.campaign.stop()
        self.gate.open()
