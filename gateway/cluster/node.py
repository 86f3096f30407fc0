"""One gateway process as a cluster node: the primitives put together as one Twisted service.

:class:`ClusterNode` is what the daemon builds from ``[cluster]`` and ``[gateway] node``
(:func:`gateway.cluster.control.build_cluster`, ``ctx.cluster``). Started, it connects to Redis and *joins*:
its heartbeat (:class:`NodeHeartbeat`), its command channel (:class:`CommandRouter`) and the
``node_lost`` sweep (:class:`NodeLostSweeper`). It keeps trying to join every ``join_interval``
while Redis is unreachable or the node id is still held (a process restarted quicker than the node
TTL finds its predecessor's entry until it expires), and joins again after it lost its place
(``on_lost``) once Redis is back, as a new instance, calling ``on_joined`` each time, so that the
core writes its calls' records again.

What the rest of the gateway uses: :attr:`records` (:class:`CallRecords`), :attr:`events`
(:class:`ExtensionEvents`), :meth:`call` (a command routed to a node), :attr:`registry`
(:class:`NodeRegistry`), :meth:`campaign` (a :class:`LeaseCampaign` for a singleton link),
:meth:`drain`, and :meth:`health` for ``/readyz``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.cluster.calls import CallRecord, CallRecords, NodeLostSweeper
from gateway.cluster.commands import CommandRouter
from gateway.cluster.config import ClusterConfig
from gateway.cluster.errors import LeaseLost, NodeIdInUse, RedisError
from gateway.cluster.events import ExtensionEvents
from gateway.cluster.leases import Lease, LeaseCampaign
from gateway.cluster.nodes import NodeHeartbeat, NodeRegistry
from gateway.cluster.redis import IRedis, RedisClient

__all__ = ["ClusterNode"]

log = Logger()


class ClusterNode(service.MultiService):
    """This process's place in the cluster (see the module docstring).

    :param handler: ``handler(command, args)`` runs a command routed to this node (the core's
        ``ICallControl``, by name); its result must be JSON.
    :param on_node_lost: ``on_node_lost(record)`` ends a dead node's call (cause ``node_lost``) and
        writes its CDR; the record is removed when its Deferred fires.
    :param redis: an :class:`IRedis` to use instead of a :class:`RedisClient` made from ``config``
        (the fake, in tests); a service is started and stopped with the node.
    """

    def __init__(
        self,
        reactor,
        config: ClusterConfig,
        node: str,
        *,
        handler: Callable[[str, dict[str, Any]], Any],
        on_node_lost: Callable[[CallRecord], Any],
        load: Callable[[], dict[str, float]] = dict,
        meta: dict[str, Any] | None = None,
        on_joined: Callable[["ClusterNode"], Any] | None = None,
        on_lost: Callable[["ClusterNode", LeaseLost], Any] | None = None,
        error_types: dict[str, Callable[[str], Exception]] | None = None,
        metrics=None,
        redis: IRedis | None = None,
        join_interval: float = 1.0,
    ):
        super().__init__()
        self.setName("cluster")
        self.clock = reactor
        self.config = config
        self.node = node
        if redis is None:
            redis = RedisClient(reactor, config.redis, command_timeout=config.redis_timeout, registry=metrics)
        self.redis = redis
        if isinstance(redis, service.Service):
            redis.setServiceParent(self)
        self.on_joined = on_joined
        self.on_lost = on_lost
        self.join_interval = join_interval
        self.heartbeat = NodeHeartbeat(
            redis, reactor, node, ttl=config.node_ttl, load=load, meta=meta,
            on_lost=self._lost, on_rebuilt=lambda hb: self._joined(),
        )
        self.records = CallRecords(redis, self.heartbeat)
        self.events = ExtensionEvents(redis, node)
        self.registry = NodeRegistry(redis)
        self.router = CommandRouter(
            redis, reactor, node, handler, timeout=config.command_timeout, error_types=error_types
        )
        self.sweeper = NodeLostSweeper(redis, reactor, node, on_node_lost, interval=max(0.5, config.node_ttl / 2))
        self._routing = False
        self._loop: task.LoopingCall | None = None
        self._joining = False
        #: the join under way (stopService waits for it before leaving)
        self._join_attempt: defer.Deferred | None = None
        self._campaigns: list[LeaseCampaign] = []

    # -- joining ------------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        return self.heartbeat.alive and self._routing

    def startService(self) -> None:
        super().startService()
        for campaign in self._campaigns:
            campaign.start()
        self._loop = task.LoopingCall(self._try_join)
        self._loop.clock = self.clock
        self._loop.start(self.join_interval, now=True)

    def _try_join(self) -> None:
        if self.joined or self._joining or not self.running:
            return
        self._joining = True
        d = self._join_attempt = defer.ensureDeferred(self._join())

        def done(result: Any) -> None:
            self._joining = False
            if hasattr(result, "check"):
                if result.check(NodeIdInUse):
                    log.warn("cluster: {problem}; trying again (a restarted node waits for its old entry to expire)",
                             problem=str(result.value))
                elif result.check(RedisError):
                    log.debug("cluster: cannot join yet: {problem}", problem=str(result.value))
                else:
                    log.failure("cluster: joining failed", result)

        d.addBoth(done)

    async def _join(self) -> None:
        if not self._routing:
            await self.router.start()
            self._routing = True
        if not self.heartbeat.alive:
            await self.heartbeat.start()
        if not self.running or self._loop is None:
            return  # stopped meanwhile (stopService leaves once this join has ended)
        if self.sweeper._loop is None:
            self.sweeper.start()
        self._joined()

    def _joined(self) -> None:
        log.info("cluster: node {node} is in the cluster", node=self.node)
        if self.on_joined is not None:
            self.on_joined(self)

    def _lost(self, heartbeat: NodeHeartbeat, error: LeaseLost) -> None:
        if self.on_lost is not None:
            self.on_lost(self, error)

    # -- what the gateway uses ----------------------------------------------------------------

    def call(self, node: str, command: str, args: dict[str, Any] | None = None) -> defer.Deferred:
        """Run ``command`` on ``node`` (here when it is this node): see :class:`CommandRouter`."""
        return self.router.call(node, command, args)

    def campaign(
        self,
        name: str,
        on_acquired: Callable[[Lease], Any],
        on_lost: Callable[[Lease, LeaseLost], Any],
        retry_interval: float = 1.0,
        on_releasing: Callable[[Lease], Any] | None = None,
    ) -> LeaseCampaign:
        """Hold the singleton link ``name`` whenever this node can (started now, released on stop
        and on :meth:`drain`, after ``on_releasing(lease)`` when held: see :class:`LeaseCampaign`)."""
        campaign = LeaseCampaign(
            self.redis, self.clock, name, self.node, ttl=self.config.lease_ttl,
            retry_interval=retry_interval, on_acquired=on_acquired, on_lost=on_lost, on_releasing=on_releasing,
        )
        self._campaigns.append(campaign)
        if self.running:
            campaign.start()
        return campaign

    def drain(self) -> defer.Deferred:
        """Mark this node draining (originations go elsewhere) and hand its singleton links over.
        Ending the live calls after ``[cluster] drain_timeout`` is the daemon's part."""
        campaigns, self._campaigns = self._campaigns, []
        releases = [c.stop() for c in campaigns]
        return defer.DeferredList([self.heartbeat.drain(), *releases], consumeErrors=True)

    def health(self) -> dict[str, Any]:
        """For ``/readyz``: ``ok`` is True while Redis is reachable and the node is in the cluster."""
        connected = bool(self.redis.connected)
        return {
            "ok": connected and self.joined,
            "redis": "up" if connected else "down",
            "joined": self.joined,
            "draining": self.heartbeat.draining,
        }

    def stopService(self) -> defer.Deferred:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.sweeper.stop()
        campaigns, self._campaigns = self._campaigns, []
        joining = self._join_attempt if self._joining else None

        async def leave() -> None:
            if joining is not None:
                # a join under way (its heartbeat's first write on its way to Redis) would start the
                # heartbeat, the routing and the sweeper after they were stopped: let it end first
                waited: defer.Deferred = defer.Deferred()
                joining.addBoth(lambda result: (waited.callback(None), result)[1])
                await waited
                self.sweeper.stop()
            for campaign in campaigns:
                await campaign.stop()
            if self._routing:
                self._routing = False
                await self.router.stop()
            await self.heartbeat.stop()

        d = defer.ensureDeferred(leave())
        d.addErrback(lambda f: log.failure("cluster: leaving the cluster failed", f))
        d.addCallback(lambda _: super(ClusterNode, self).stopService())
        return d
