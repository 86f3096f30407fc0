"""Singleton links in cluster mode: an outgoing link held by one node at a time.

The HIS bridge link, the chat link and each Patriot Desktop link must be opened by exactly one node
of the cluster (their peers expect one client). :class:`SingletonLink` wraps the link's service (a
``ClientService`` or a service holding one) and runs it only while this node holds the lease
``name`` (:meth:`gateway.cluster.node.ClusterNode.campaign`, a :class:`~gateway.cluster.leases.LeaseCampaign`
with a fencing token):

- every node campaigns; the one that acquires the lease starts the link, the others stand by and try
  again every ``retry_interval`` (0.5 s: one small Redis script per try);
- when the lease is lost (a renewal refused, or Redis unreachable for 90% of the TTL) the link is
  stopped **at once**, before Redis lets another node take the lease;
- a drain (:meth:`ClusterNode.drain`) or a stop closes the link first and only then releases the
  lease, so the next holder never finds the old connection still open; it takes over on its next try
  (within ``retry_interval``). A holder that dies is replaced within the lease TTL plus
  ``retry_interval``.

Steps are run one after the other (a loss during a start waits for the start, then stops the link).
While standing by, the link's readiness component is *up*: the link is another node's job, and a
standby node is as ready to carry calls as the holder.

Fencing: :attr:`token` is the lease's fencing token while held (it grows with every acquisition);
:meth:`check` returns it or raises :class:`~gateway.cluster.errors.LeaseLost`. Work that arrives on
the link's behalf at a node that is no longer the holder is refused with it, and a write to a shared
store or to Redis that must not come from a stale holder carries the token for the receiver to
compare (see docs/cluster.md, *Singleton links*).

Metrics (when given the registry): ``gateway_cluster_link_held{link}`` (1 while this node holds
the link) and ``gateway_cluster_link_takeovers_total{link}`` (acquisitions by this node).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from gateway.cluster.errors import LeaseLost
from gateway.cluster.leases import Lease

__all__ = ["SingletonLink"]

log = Logger()


def _metrics(registry):
    """The two metrics on ``registry``, made once per registry."""
    found = getattr(registry, "_gateway_singleton_metrics", None)
    if found is None:
        found = (
            Gauge("gateway_cluster_link_held", "1 while this node holds the singleton link", ["link"],
                  registry=registry),
            Counter("gateway_cluster_link_takeovers", "Times this node took the singleton link", ["link"],
                    registry=registry),
        )
        registry._gateway_singleton_metrics = found
    return found


class SingletonLink(service.Service):
    """Run ``link`` (an ``IService``) only while this node holds the lease ``name``.

    :param cluster: the :class:`~gateway.cluster.node.ClusterNode` (anything with ``campaign()``
        and ``node``).
    :param component: the link's readiness component (``gateway.context.Component``), set up while
        standing by.
    :param on_acquired: ``on_acquired(token)`` before the link starts (may return a Deferred, which
        the start waits for): e.g. reload the state the previous holder left in the store.
    :param on_released: ``on_released()`` once the link stopped (may return a Deferred).
    :param metrics: the Prometheus registry, or None.
    """

    def __init__(
        self,
        cluster,
        name: str,
        link: service.IService,
        *,
        component=None,
        on_acquired: Callable[[int], Any] | None = None,
        on_released: Callable[[], Any] | None = None,
        retry_interval: float = 0.5,
        metrics=None,
    ):
        self.cluster = cluster
        self.name = name
        self.link = link
        self.component = component
        self.on_acquired = on_acquired
        self.on_released = on_released
        self.retry_interval = retry_interval
        self.campaign = None
        #: the fencing token while this node holds the link
        self.token: int | None = None
        self._busy: defer.Deferred = defer.succeed(None)
        self._active = False
        self._held_gauge = self._takeovers = None
        if metrics is not None:
            held, takeovers = _metrics(metrics)
            self._held_gauge, self._takeovers = held.labels(name), takeovers.labels(name)
            self._held_gauge.set(0)

    @property
    def held(self) -> bool:
        return self.token is not None

    def check(self) -> int:
        """The fencing token; raises :class:`LeaseLost` when this node does not hold the link, or
        when the lease is past its TTL by our clock though its expiry timer has not run yet (a
        process resumed after a pause handles what waited on its sockets before its timers)."""
        if self.token is None:
            raise LeaseLost(f"the singleton link {self.name!r} is held by another node, not {self.cluster.node!r}")
        lease = self.campaign.lease if self.campaign is not None else None
        until = lease.valid_until if lease is not None else None
        if until is not None and self.cluster.clock.seconds() >= until:
            raise LeaseLost(f"the lease of the singleton link {self.name!r} ran out (this node was paused)")
        return self.token

    # -- life ---------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._standby()
        self.campaign = self.cluster.campaign(
            self.name, self._acquired, self._lost, retry_interval=self.retry_interval, on_releasing=self._releasing
        )

    def stopService(self) -> defer.Deferred:
        """Close the link, then release the lease (another node takes it on its next try)."""
        super().stopService()
        campaign, self.campaign = self.campaign, None
        if campaign is None:
            return defer.succeed(None)
        d = campaign.stop()
        # not held (or the lease already given up): still make sure the link is down
        return d.addCallback(lambda _: self._run(self._stop_link, "stopping"))

    # -- from the campaign --------------------------------------------------------------------

    def _acquired(self, lease: Lease) -> None:
        self.token = lease.token
        if self._held_gauge is not None:
            self._held_gauge.set(1)
            self._takeovers.inc()
        log.info("singleton link {link}: held by node {node} (fencing token {token}); connecting",
                 link=self.name, node=self.cluster.node, token=lease.token)
        self._run(self._start_link, "starting")

    def _lost(self, lease: Lease, error: LeaseLost) -> None:
        self._drop()
        log.warn("singleton link {link}: node {node} lost the lease ({problem}); closing the link at once",
                 link=self.name, node=self.cluster.node, problem=str(error))
        self._run(self._stop_link, "stopping")

    def _releasing(self, lease: Lease) -> defer.Deferred:
        self._drop()
        log.info("singleton link {link}: node {node} hands the link over; closing it before releasing the lease",
                 link=self.name, node=self.cluster.node)
        return self._run(self._stop_link, "handing over")

    def _drop(self) -> None:
        self.token = None
        if self._held_gauge is not None:
            self._held_gauge.set(0)

    # -- steps, one at a time ------------------------------------------------------------------

    def _run(self, step: Callable[[], Any], what: str) -> defer.Deferred:
        """Run ``step`` once the steps before it are done; fires when it is (never fails)."""
        done = defer.Deferred()

        def go(_):
            d = defer.maybeDeferred(step)
            d.addErrback(lambda f: log.failure("singleton link {link}: {what} failed", f, link=self.name, what=what))
            d.addCallback(lambda _: done.callback(None))
            return d

        self._busy.addCallback(go)
        return done

    def _start_link(self) -> Any:
        if not self.held or self.link.running:
            return None
        self._active = True  # on_released is owed from now on, even if the link never starts
        d = defer.maybeDeferred(self.on_acquired, self.token) if self.on_acquired is not None else defer.succeed(None)

        def start(_):
            if self.held and not self.link.running:  # not lost meanwhile
                if self.component is not None:
                    # down until the link says it is up (quietly: standing by was not a failure)
                    self.component.up, self.component.reason = False, "not started"
                self.link.startService()

        return d.addCallback(start)

    def _stop_link(self) -> Any:
        d = defer.maybeDeferred(self.link.stopService) if self.link.running else defer.succeed(None)
        if self._active:
            self._active = False
            if self.on_released is not None:
                d.addCallback(lambda _: self.on_released())
        return d.addCallback(lambda _: self._standby())

    def _standby(self) -> None:
        if self.held or self.link.running:
            return
        if self.component is not None:
            self.component.set_up()
        if self.running:
            log.info("singleton link {link}: node {node} stands by (another node holds the link)",
                     link=self.name, node=self.cluster.node)

    def status(self) -> dict:
        return {"link": self.name, "node": self.cluster.node, "held": self.held, "token": self.token}
