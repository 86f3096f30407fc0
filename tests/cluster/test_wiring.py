"""tap.build with and without [cluster]: what the adapters get, what /readyz watches, ctx.cluster and ctx.drain."""

import pathlib

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster.control import ClusterControl
from gateway.cluster.node import ClusterNode
from gateway.config import loads
from gateway.core.registry import Registry
from gateway.tap import build


class WiringTests(SynchronousTestCase):
    def config(self, extra=""):
        tmp = pathlib.Path(self.mktemp())
        return loads(f'[gateway]\nnode = "edge-1"\nstate_dir = "{tmp}/var"\n[store]\nurl = "sqlite:{tmp}/cdr.sqlite"\n'
                     f'[[extensions]]\nid = "1001"\n{extra}', "test.toml")

    def test_without_cluster_the_adapters_get_the_registry_and_nothing_of_the_cluster_exists(self):
        root = build(self.config(), MemoryReactorClock())
        ctx = root.ctx
        self.assertIsInstance(ctx.registry, Registry)
        self.assertIs(ctx.registry, root.core_service.registry)
        self.assertIsNone(ctx.cluster)
        self.assertIsNone(ctx.drain)
        self.assertFalse(ctx.draining)
        self.assertEqual(root.cluster_services, [])
        self.assertNotIn("redis", ctx.readiness.components)
        self.assertNotIn("cluster", ctx.readiness.components)
        self.assertIsNone(ctx.registry.busy_elsewhere)

    def test_with_cluster_the_adapters_get_the_clusters_icallcontrol(self):
        root = build(self.config('[cluster]\nredis = "redis://:s3cret@127.0.0.1:6390/2"\ndrain_timeout = 7\n'),
                     MemoryReactorClock())
        ctx = root.ctx
        self.assertIsInstance(ctx.registry, ClusterControl)
        self.assertIs(ctx.registry.local, root.core_service.registry)
        self.assertIs(ctx.status["calls"], ctx.registry)
        self.assertIsInstance(ctx.cluster, ClusterNode)
        self.assertEqual(ctx.cluster.node, "edge-1")
        self.assertEqual(root.cluster_services, [ctx.registry, ctx.cluster])
        self.assertIn(ctx.cluster, list(root))
        self.assertTrue(callable(ctx.drain))
        self.assertIn("redis", ctx.readiness.components)
        self.assertIn("cluster", ctx.readiness.components)
        self.assertNotIn("s3cret", repr(ctx.cluster.redis.url) + str(ctx.cluster.redis.url))
        self.assertEqual(root.core_service.registry.busy_elsewhere, ctx.registry.busy_elsewhere)
