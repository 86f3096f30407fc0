"""The HIS bridge link as a singleton link: two nodes, the fake Redis, a task.Clock and the strict
processor-bridge simulator (which records a second client link as a protocol violation).

Both nodes' Bridge Clients are handed the same call core: it stands for the cluster's
``ICallControl``, through which every node sees every call (``calls_for`` includes the calls whose
media is on another node).
"""

import pathlib

from prometheus_client import CollectorRegistry
from twisted.application import service
from twisted.internet import task
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster.config import ClusterConfig
from gateway.cluster.node import ClusterNode
from gateway.cluster.singleton import SingletonLink
from gateway.cluster.testing import FakeRedisServer
from gateway.config import Extension, Route, loads
from gateway.context import Component, Context
from gateway.core.registry import Registry
from gateway.core.routing import Router
from gateway.cti import envelope as env
from gateway.cti.client import BridgeClient
from gateway.cti.config import CtiAgent, CtiConfig
from gateway.cti.link import BridgeLink, Refusal
from gateway.cti.metrics import CtiMetrics
from gateway.cti.service import make_service
from gateway.drivers.config import SimNetworkConfig
from gateway.drivers.sim import SimNetwork
from gateway.sim.his import HisBridgeSim

TTL = 3.0
RETRY = 0.5
CLUSTER = ClusterConfig(redis="redis://127.0.0.1:6379/0", node_ttl=TTL, lease_ttl=TTL)
CHANNEL = "alice.cg.tel"
EXTENSIONS = [Extension(id="1003", name="Alice", device="sim:manual")]
ROUTES = [Route(did="103", to="extension:1003")]


class ClusterContext(Context):
    """A Context with the ``cluster`` part the daemon's wiring gives it."""

    cluster = None


class SimLink(service.Service):
    """A node's link to the simulator, in memory: opened at start, closed at stop (or dropped: kill)."""

    def __init__(self, test, client):
        self.test, self.client = test, client
        self.link = self.pump = None

    def startService(self):
        super().startService()
        self.link = BridgeLink(self.client, clock=self.test.clock)
        _, _, self.pump = iosim.connectedServerAndClient(
            lambda: self.test.sim.buildProtocol(None), lambda: self.link, clock=self.test.clock
        )
        self.test.pumps.append(self.pump)
        self.pump.flush()

    def stopService(self):
        super().stopService()
        self.drop()

    def drop(self):
        if self.link is not None and self.link.connected:
            self.link.transport.loseConnection()
            self.pump.flush()


class HisTakeoverTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.server = FakeRedisServer(self.clock)
        self.network = SimNetwork(self.clock, SimNetworkConfig(audio="silence", ring_time=2.0))
        self.registry = Registry(self.clock, {"sim": self.network}, extensions=EXTENSIONS,
                                 router=Router(ROUTES, {}), retention=60.0)
        self.network.wire(self.registry)
        self.sim = HisBridgeSim(self.clock, agents=["alice"], response_timeout=60)
        self.config = CtiConfig(enabled=True, agents=[CtiAgent(agent="alice", extension="1003")])
        self.pumps = []
        self.nodes = {}

    def start(self, name):
        node = ClusterNode(self.clock, CLUSTER, name, handler=lambda c, a: None, on_node_lost=lambda r: None,
                           redis=self.server.client(name))
        component = Component(f"cti:PROC@{name}")
        client = BridgeClient(self.config, self.registry, CtiMetrics(CollectorRegistry()), component)
        link = SimLink(self, client)
        singleton = SingletonLink(node, "cti:PROC", link, component=component, retry_interval=RETRY)
        client.fence = singleton.check
        node.startService()
        singleton.startService()
        self.nodes[name] = (node, singleton, link, client)
        self.flush()
        return self.nodes[name]

    def flush(self):
        for pump in self.pumps:
            pump.flush()

    def advance(self, seconds, step=0.05):
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.flush()

    def send(self, verb, target=None):
        d = self.sim.send(verb, target)
        self.flush()
        return self.successResultOf(d)

    def kill(self, name):
        """kill -9 of a node: its timers stop, its connection to the bridge drops."""
        node, singleton, link, client = self.nodes.pop(name)
        lease = singleton.campaign.lease
        lease._stop_timers()
        singleton.campaign._loop.stop()
        node.heartbeat._stop_timers()
        node._loop.stop()
        node.sweeper.stop()
        node._loop = None
        node._campaigns.clear()
        client._unsubscribe()
        link.drop()

    def tearDown(self):
        for node, singleton, link, client in self.nodes.values():
            self.successResultOf(singleton.stopService())
            self.successResultOf(node.stopService())
            client.stop()
        self.flush()
        self.assertEqual(self.sim.violations, [])
        self.network.shutdown() if hasattr(self.network, "shutdown") else None

    def connected(self):
        return [name for name, (_, _, link, _) in self.nodes.items() if link.link is not None and link.link.connected]

    def test_one_node_holds_the_link_and_a_takeover_lists_the_live_call_once(self):
        self.start("a")
        self.start("b")
        self.advance(3 * TTL)
        self.assertEqual(self.connected(), ["a"])
        self.assertTrue(self.sim.ready)
        self.network.place_inbound("5551234", "103")
        self.flush()
        call_id = self.registry.active_call_for("1003").call_id
        self.assertEqual(self.sim.event_names(CHANNEL), ["channel.interaction"])
        self.assertTrue(self.send("accept").ok)

        self.kill("a")
        before = len(self.sim.event_log)
        waited = 0.0
        while self.connected() != ["b"]:
            self.advance(0.05)
            waited += 0.05
            self.assertLessEqual(waited, TTL + RETRY + 0.01, "b did not take the link over in time")
        self.flush()
        self.assertTrue(self.sim.ready)
        # the new holder's channel lists the call once, and does not announce it again
        self.assertEqual(list(self.sim.destinations[CHANNEL].init.interactions), [call_id])
        new = [(e.target, e.name) for e in self.sim.event_log[before:]]
        self.assertNotIn((CHANNEL, "channel.interaction"), new)
        conversation = f"{CHANNEL}.{call_id}.primary"
        self.assertEqual(self.sim.destinations[conversation].init.state, "TALKING")
        # and it is b's to control
        self.assertTrue(self.send("release", target=conversation).ok)
        self.assertEqual(self.sim.event_names(conversation)[-1], "conversation.ended")

    def test_a_call_that_rang_while_nobody_held_the_link_is_announced_by_the_new_holder(self):
        self.start("a")
        self.start("b")
        self.kill("a")
        self.network.place_inbound("5551234", "103")
        call_id = self.registry.active_call_for("1003").call_id
        self.advance(TTL + RETRY + 0.05)
        self.assertEqual(self.connected(), ["b"])
        self.assertEqual(list(self.sim.destinations[CHANNEL].init.interactions), [call_id])
        self.assertEqual(self.sim.destinations[f"{CHANNEL}.{call_id}.primary"].init.state, "RINGING")
        self.assertTrue(self.send("accept").ok)
        self.assertEqual(self.registry.call(call_id).state, "TALKING")

    def test_a_drain_hands_the_link_over_at_once(self):
        a_node = self.start("a")[0]
        self.start("b")
        self.successResultOf(a_node.drain())
        self.flush()
        self.assertEqual(self.connected(), [])
        self.advance(RETRY + 0.05)
        self.assertEqual(self.connected(), ["b"])
        self.assertTrue(self.sim.ready)

    def test_a_node_that_does_not_hold_the_link_refuses_requests(self):
        self.start("a")
        _, _, _, b_client = self.start("b")
        with self.assertRaises(Refusal) as caught:
            b_client.handle(env.query("control.query.status", "PROC.CONTROL"))
        self.assertIn("does not hold the HIS link", str(caught.exception))


class ClusterServiceTests(SynchronousTestCase):
    """``make_service`` in cluster mode: the link is a SingletonLink under the lease ``cti:<processor>``."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.server = FakeRedisServer(self.reactor)
        self.config = loads('[[extensions]]\nid = "1001"\n\n[cti]\nenabled = true\n'
                            'agents = [{agent = "alice", extension = "1001"}]\n', "x.toml")
        self.registry = Registry(self.reactor, {}, extensions=self.config.extensions)

    def make(self, name, cluster=True):
        ctx = ClusterContext(reactor=self.reactor, config=self.config, state_dir=pathlib.Path(self.mktemp()),
                             metrics=CollectorRegistry())
        ctx.registry = self.registry
        if cluster:
            ctx.cluster = ClusterNode(self.reactor, CLUSTER, name, handler=lambda c, a: None,
                                      on_node_lost=lambda r: None, redis=self.server.client(name))
            ctx.cluster.startService()
        svc = make_service(ctx)
        svc.startService()
        return ctx, svc

    def stop(self, ctx, svc):
        self.successResultOf(svc.stopService())
        if ctx.cluster is not None:
            self.successResultOf(ctx.cluster.stopService())

    def test_only_the_lease_holder_connects_and_a_standby_is_ready(self):
        a = self.make("a")
        b = self.make("b")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertIsInstance(b[1].namedServices.get("cti:PROC") or list(b[1])[0], SingletonLink)
        self.assertEqual(b[0].readiness.not_ready(), {})
        self.assertIn("cti:PROC", a[0].readiness.not_ready())  # the holder is connecting
        self.assertEqual(a[0].metrics.get_sample_value("gateway_cluster_link_held", {"link": "cti:PROC"}), 1)
        self.stop(*a)
        self.reactor.advance(RETRY)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertIn("cti:PROC", b[0].readiness.not_ready())
        self.stop(*b)

    def test_without_a_cluster_nothing_changes(self):
        ctx, svc = self.make("a", cluster=False)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertIsNone(ctx.status["cti"].fence)
        self.stop(ctx, svc)
