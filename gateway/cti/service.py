"""The ``[cti]`` adapter as a service: one link to the processor bridge, kept up by a ClientService.

:func:`make_service` (the ``cti`` adapter plugin's factory, ``plugins/adapters.py``) builds the
:class:`~gateway.cti.client.BridgeClient` on the call registry, connects it through a ``ClientService``
that retries with an exponential backoff (:func:`retry_delay`), registers the readiness component
``cti:<processor>`` (up while the link is), the metrics and the ``/api/status`` entry ``cti``, and
watches the telephony side's readiness components for the control status.

In cluster mode (``ctx.cluster``) the link is a singleton (:class:`~gateway.cluster.singleton.SingletonLink`,
lease ``cti:<processor>``): only the node holding the lease connects; the new holder's bridge initialises
its destinations again, and each channel's init lists the agent's live calls on every node
(``calls_for`` of the cluster's ``ICallControl``), so a takeover, like a reconnection, announces each
call once. A request reaching a node that no longer holds the lease is refused (FAILURE).
"""

from __future__ import annotations

import functools
import random

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet.protocol import Factory

from gateway.boundary import budget_factory
from gateway.cluster.singleton import SingletonLink
from gateway.cti.client import BridgeClient
from gateway.cti.config import CtiConfig
from gateway.cti.endpoint import bridge_endpoint
from gateway.cti.health import TelephonyWatch
from gateway.cti.link import ADAPTER, BridgeLink
from gateway.cti.metrics import CtiMetrics
from gateway.linkwatch import LinkWatch, endpoint_peer


def retry_delay(initial, maximum):
    """Seconds before reconnection attempt ``n`` (1, 2, ...): ``initial``, doubling up to ``maximum``,
    plus a jitter of up to half of ``initial``."""
    jitter = functools.partial(_jitter, initial)
    policy = backoffPolicy(initialDelay=initial, maxDelay=maximum, factor=2.0, jitter=jitter)
    return lambda attempt: policy(attempt - 1)


def _jitter(initial):
    return random.random() * initial / 2


class BridgeLinkFactory(Factory):
    """Builds a :class:`BridgeLink` for each connection, all handled by one client; ``budgets`` makes
    each connection's budget for log lines about ignored messages."""

    noisy = False

    def __init__(self, client, byteorder, max_frame_size, budgets=None):
        self.client = client
        self.byteorder = byteorder
        self.max_frame_size = max_frame_size
        self.budgets = budgets

    def buildProtocol(self, addr):
        link = BridgeLink(self.client, self.byteorder, self.max_frame_size, self.budgets)
        link.factory = self
        return link


class CtiService(service.MultiService):
    """The link's ClientService and the telephony watch; at stop, the bridge is told STOPPED first."""

    name = "cti"

    def __init__(self, client, link_service, watch):
        super().__init__()
        self.client = client
        self.watch = watch
        link_service.setServiceParent(self)

    def startService(self):
        super().startService()
        self.watch.start()

    def stopService(self):
        self.watch.stop()
        self.client.stop()
        return super().stopService()


def make_service(ctx, config: CtiConfig | None = None) -> CtiService:
    """The ``[cti]`` adapter for its validated section ``config`` (by default ``ctx.config.cti``)."""
    config = config if config is not None else ctx.config.cti
    component = ctx.readiness.register(f"cti:{config.processor}")
    client = BridgeClient(config, ctx.registry, CtiMetrics(ctx.metrics), component)
    watch = LinkWatch(ctx.reactor, component, peer=endpoint_peer(config.connect), adapter=ADAPTER)
    link_service = watch.client_service(
        bridge_endpoint(ctx.reactor, config, ctx.tls),
        BridgeLinkFactory(
            client, config.byte_order, config.max_frame_size, budget_factory(ctx.reactor, ADAPTER, ctx.metrics)
        ),
        retryPolicy=retry_delay(config.reconnect_initial, config.reconnect_max),
        clock=ctx.reactor,
    )
    watch = TelephonyWatch(
        ctx.reactor, ctx.readiness, config.telephony, config.health_interval, client.telephony_changed
    )
    cluster = getattr(ctx, "cluster", None)
    if cluster is not None:
        # a singleton link: one node of the cluster holds it under a lease; the others stand by
        link_service = SingletonLink(cluster, f"cti:{config.processor}", link_service, component=component,
                                     metrics=ctx.metrics)
        client.fence = link_service.check
    ctx.status["cti"] = client
    return CtiService(client, link_service, watch)
