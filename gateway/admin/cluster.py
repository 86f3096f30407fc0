"""The cluster's admin API (issue 15): ``/api/cluster`` and draining a node, on any node.

Behind the bearer token, like every path under ``/api``:

- ``GET /api/cluster``: without ``[cluster]``, 200 ``{"cluster": false, "node": <this node>}`` (the
  status page and ``gatewayctl cluster`` poll it without treating "off" as an error). With it::

      {"cluster": true, "node": "a", "redis": "up", "joined": true,
       "nodes": [{"node", "instance", "draining", "load": {"calls": 1.0}, "started", "seen",
                  "meta", "self": bool, "leases": ["cti:his", ...]}, ...],
       "leases": [{"name", "holder", "token", "ttl_ms"}, ...],
       "draining": ["b", ...]}

  ``nodes`` are the live nodes of the registry (a dead node's entry has expired), sorted by id;
  ``leases`` every singleton link's lease held now. Redis unreachable: 503 ``cluster_unavailable``.
- ``POST /api/cluster/nodes/{node}/drain`` (no body): that node starts its drain sequence
  (``/readyz`` false, no new calls, its singleton links handed over, live calls until ``[cluster]
  drain_timeout``, then ``drain_forced``), through the cluster's ICallControl
  (``ClusterControl.drain_node``): this node drains at once; another is asked through the command
  routing (Redis request/reply, the routed command ``drain``), and the answer comes once it has
  started. 202 ``{"node", "draining": true, "live_calls": N}``.
  Without ``[cluster]``: 404 ``cluster_off``; no live node of that id: 404 ``unknown_node``; the
  node dead or silent: 503 ``owner_unreachable`` / 504 ``command_timeout``.

:func:`cluster_view` is also the status page's source for its list of nodes.
"""

from __future__ import annotations

import typing

from twisted.internet import defer
from twisted.logger import Logger

from gateway.admin.api import ApiError, ApiRequest, ApiResponse

__all__ = ["ClusterApi", "add_cluster_api", "cluster_view"]

log = Logger()


def _cluster(ctx):
    return getattr(ctx, "cluster", None)


async def _view(ctx) -> dict[str, typing.Any]:
    from gateway.cluster.leases import lease_holders

    node = _cluster(ctx)
    me = ctx.config.gateway.node
    if node is None:
        return {"cluster": False, "node": me}
    health = node.health()
    nodes = await node.registry.nodes()
    holders = await lease_holders(node.redis)
    held: dict[str, list[str]] = {}
    for lease in holders:
        held.setdefault(lease.holder, []).append(lease.name)
    listed = []
    for info in sorted(nodes, key=lambda n: n.node):
        entry = info.to_json()
        entry["self"] = info.node == me
        entry["leases"] = sorted(held.get(info.node, []))
        listed.append(entry)
    return {
        "cluster": True,
        "node": me,
        "redis": health["redis"],
        "joined": health["joined"],
        "nodes": listed,
        "leases": [{"name": h.name, "holder": h.holder, "token": h.token, "ttl_ms": h.ttl_ms}
                   for h in sorted(holders, key=lambda h: h.name)],
        "draining": [info.node for info in sorted(nodes, key=lambda n: n.node) if info.draining],
    }


def cluster_view(ctx) -> defer.Deferred:
    """The ``/api/cluster`` body for ``ctx`` (fails with a ``RedisError`` when Redis is unreachable)."""
    return defer.ensureDeferred(_view(ctx))


def _unavailable(failure):
    from gateway.cluster.errors import CommandTimeout, OwnerDead, RedisError

    error = failure.value
    if isinstance(error, OwnerDead):
        raise ApiError(503, f"the node is not answering: {error}", code="owner_unreachable")
    if isinstance(error, CommandTimeout):
        raise ApiError(504, f"the node did not answer in time: {error}", code="command_timeout")
    if isinstance(error, RedisError):
        raise ApiError(503, f"the cluster's redis is unreachable: {error}", code="cluster_unavailable")
    return failure


class ClusterApi:
    """The handlers; ``ctx.cluster`` and ``ctx.registry`` are read at request time (the cluster
    node and its ICallControl are built after the admin site)."""

    def __init__(self, ctx):
        self._ctx = ctx

    def cluster(self, request: ApiRequest):
        return cluster_view(self._ctx).addErrback(_unavailable)

    def drain(self, request: ApiRequest):
        request.no_body()
        target = request.params["node"]
        ctx = self._ctx
        drain_node = getattr(ctx.registry, "drain_node", None)  # the cluster's ICallControl
        if _cluster(ctx) is None or drain_node is None:
            raise ApiError(404, "the cluster is off: this gateway has no [cluster] table", code="cluster_off")
        return defer.ensureDeferred(self._drain(_cluster(ctx), drain_node, target)).addErrback(_unavailable)

    async def _drain(self, node, drain_node, target: str) -> ApiResponse:
        if target != self._ctx.config.gateway.node and not await node.registry.is_alive(target):
            raise ApiError(404, f"no live node {target!r} in the cluster", code="unknown_node", node=target)
        log.info("admin: node {target} asked to drain", target=target)
        return ApiResponse(202, await drain_node(target))


def add_cluster_api(ctx, router) -> ClusterApi:
    """Add ``/api/cluster`` and the drain route to ``router`` (``ctx.api``)."""
    api = ClusterApi(ctx)
    router.route("GET", "/api/cluster", api.cluster)
    router.route("POST", "/api/cluster/nodes/{node}/drain", api.drain)
    return api
