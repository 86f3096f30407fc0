"""The node registry: which gateway nodes are alive, their load, and which are draining.

Each node runs a :class:`NodeHeartbeat`: every ``ttl / 3`` it writes the hash ``gw:node:<node>``
(its random ``instance`` id and its ``info`` as JSON: load figures, draining, start time, anything
the daemon adds) with the TTL ``ttl``. A node whose key has expired is dead. The key is also the
node's *lease*: the heartbeat script refuses a key that another instance holds (two processes
configured with one ``[gateway] node`` id: the second fails to start with :class:`NodeIdInUse`),
and the node's call records are written only while it holds it (:mod:`gateway.cluster.calls`).

Losing it works as for a :class:`gateway.cluster.leases.Lease`: a beat refused (another instance)
or no beat that succeeded within 90% of the TTL (Redis unreachable, counted from the sending of
the last good beat) calls ``on_lost(heartbeat, LeaseLost)``; the node must then treat its calls as ended by
the cluster (a survivor ends them with cause ``node_lost``). A beat that finds the key *gone* while
the TTL has not run out means Redis lost its data: the key is written again at once and
``on_rebuilt(heartbeat)`` is called, for the node to write its call records again.

:class:`NodeRegistry` reads the registry: :meth:`NodeRegistry.nodes`, :meth:`NodeRegistry.node`,
:meth:`NodeRegistry.is_alive`; :func:`least_loaded` picks where to originate a call (never on a
draining node).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.boundary import PeerDataError, load_json
from gateway.cluster import keys
from gateway.cluster.errors import LeaseLost, NodeIdInUse, RedisError, RedisReplyError
from gateway.cluster.redis import IRedis, Script

__all__ = ["HEARTBEAT", "NodeHeartbeat", "NodeInfo", "NodeRegistry", "least_loaded"]

log = Logger()


def _heartbeat(store, keys, args):
    instance, info, ttl_ms, mode = args
    current = store.hget(keys[0], "instance")
    if current is not None and current != instance:
        return 0
    if current is None and mode != "start":
        return -1
    store.hset(keys[0], {"instance": instance, "info": info})
    store.pexpire(keys[0], int(ttl_ms))
    return 1


#: KEYS: node key; ARGV: instance, info JSON, ttl ms, "start"|"beat"
#: -> 1 written, 0 another instance holds it, -1 gone (only for "beat")
HEARTBEAT = Script(
    "node-heartbeat",
    """
    local current = redis.call('hget', KEYS[1], 'instance')
    if current and current ~= ARGV[1] then
      return 0
    end
    if (not current) and ARGV[4] ~= 'start' then
      return -1
    end
    redis.call('hset', KEYS[1], 'instance', ARGV[1], 'info', ARGV[2])
    redis.call('pexpire', KEYS[1], ARGV[3])
    return 1
    """,
    _heartbeat,
)


def _remove(store, keys, args):
    if store.hget(keys[0], "instance") != args[0]:
        return 0
    return store.delete(keys[0])


#: KEYS: node key; ARGV: instance -> 1 removed, 0 not ours
REMOVE = Script(
    "node-remove",
    """
    if redis.call('hget', KEYS[1], 'instance') ~= ARGV[1] then
      return 0
    end
    return redis.call('del', KEYS[1])
    """,
    _remove,
)


@attrs.frozen
class NodeInfo:
    """One live node as the registry shows it."""

    node: str
    instance: str
    draining: bool = False
    #: load figures, e.g. {"calls": 12, "cpu": 0.4}; :func:`least_loaded` compares "calls"
    load: dict[str, float] = attrs.Factory(dict)
    started: float = 0.0
    #: when it last beat, by its own clock
    seen: float = 0.0
    #: what else the node publishes (its admin URL, its version, ...)
    meta: dict[str, Any] = attrs.Factory(dict)

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_hash(cls, node: str, fields: dict[str, str]) -> "NodeInfo":
        """Raise ``ValueError`` (a :class:`PeerDataError` for bad JSON) when the hash is not one of ours."""
        info = load_json(fields.get("info", ""))
        if not isinstance(info, dict):
            raise ValueError("info is not a JSON object")
        load = info.get("load", {})
        if not isinstance(load, dict) or not all(isinstance(v, (int, float)) for v in load.values()):
            raise ValueError("load is not an object of numbers")
        meta = info.get("meta", {})
        return cls(
            node=node,
            instance=fields.get("instance", ""),
            draining=bool(info.get("draining", False)),
            load=load,
            started=float(info.get("started", 0.0)),
            seen=float(info.get("seen", 0.0)),
            meta=meta if isinstance(meta, dict) else {},
        )


def least_loaded(nodes: Iterable[NodeInfo], figure: str = "calls") -> NodeInfo | None:
    """The live, not draining node with the lowest ``load[figure]`` (ties: by node id); None if none."""
    candidates = [n for n in nodes if not n.draining]
    if not candidates:
        return None
    return min(candidates, key=lambda n: (n.load.get(figure, 0.0), n.node))


class NodeHeartbeat:
    """This node's entry in the registry, kept alive (see the module docstring).

    ``load()`` returns the load figures to publish at each beat; ``meta`` is published as it is.
    """

    def __init__(
        self,
        redis: IRedis,
        clock,
        node: str,
        *,
        ttl: float = 5.0,
        interval: float | None = None,
        load: Callable[[], dict[str, float]] = dict,
        meta: dict[str, Any] | None = None,
        on_lost: Callable[["NodeHeartbeat", LeaseLost], Any] | None = None,
        on_rebuilt: Callable[["NodeHeartbeat"], Any] | None = None,
    ):
        self.redis = redis
        self.clock = clock
        self.node = node
        self.ttl = ttl
        self.interval = interval if interval is not None else ttl / 3
        self.load = load
        self.meta = dict(meta or {})
        self.on_lost = on_lost
        self.on_rebuilt = on_rebuilt
        self.instance = ""
        self.draining = False
        self.alive = False
        self.started = clock.seconds()
        self._loop: task.LoopingCall | None = None
        self._expiry: Any = None
        self._beating = False

    def _info(self) -> str:
        return json.dumps(
            {
                "draining": self.draining,
                "load": self.load(),
                "started": self.started,
                "seen": self.clock.seconds(),
                "meta": self.meta,
            },
            separators=(",", ":"),
        )

    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    def start(self) -> defer.Deferred:
        """Join the registry (a new instance id each time): fires when written; fails with
        :class:`NodeIdInUse` when another live process has this node id, or a :class:`RedisError`."""
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        self.instance = uuid.uuid4().hex
        sent = self.clock.seconds()
        result = await self.redis.eval(HEARTBEAT, [keys.node(self.node)], [self.instance, self._info(), self._ttl_ms(), "start"])
        if result == 0:
            raise NodeIdInUse(f"node id {self.node!r} is in use by another live gateway process")
        self.alive = True
        self._valid_from(sent)
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)
        log.info("cluster: node {node} joined (instance {instance})", node=self.node, instance=self.instance)

    def _valid_from(self, sent: float) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        # as a lease: given up at 90% of the TTL, before a survivor can see the node dead
        self._expiry = self.clock.callLater(max(0.0, sent + self.ttl * 0.9 - self.clock.seconds()), self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self._lose(f"no heartbeat got through within the node TTL ({self.ttl:g} s)")

    def _tick(self) -> None:
        if self._beating or not self.alive:
            return
        self._beating = True
        self.beat().addBoth(self._beaten)

    def _beaten(self, result: Any) -> None:
        self._beating = False

    def beat(self) -> defer.Deferred:
        """Beat now (also done every ``interval``): fires True when written, False otherwise."""
        return defer.ensureDeferred(self._beat())

    async def _beat(self) -> bool:
        if not self.alive:
            return False
        instance, sent = self.instance, self.clock.seconds()
        try:
            result = await self.redis.eval(HEARTBEAT, [keys.node(self.node)], [instance, self._info(), self._ttl_ms(), "beat"])
        except RedisError as e:
            log.warn("cluster: node {node}: heartbeat failed ({problem})", node=self.node, problem=str(e))
            return False
        if not self.alive or instance != self.instance:
            return False
        if result == 1:
            self._valid_from(sent)
            return True
        if result == 0:
            self._lose("another process took this node id")
            return False
        # gone while our TTL runs: Redis lost its data; write it again and let the node rebuild
        try:
            result = await self.redis.eval(HEARTBEAT, [keys.node(self.node)], [instance, self._info(), self._ttl_ms(), "start"])
        except RedisError:
            return False
        if not self.alive or instance != self.instance:
            # stopped (or lost) while the entry was being written again: stay so; the entry this
            # wrote, if it reached Redis after the stop's REMOVE, goes too (only if still ours)
            if result == 1 and not self.alive:
                d = self.redis.eval(REMOVE, [keys.node(self.node)], [instance])
                d.addErrback(lambda f: f.trap(RedisError) and None)
            return False
        if result != 1:
            self._lose("gone from redis (it lost its data) and taken by another process")
            return False
        self._valid_from(sent)
        log.warn("cluster: node {node}: its registry entry was gone (redis lost its data); written again", node=self.node)
        if self.on_rebuilt is not None:
            self.on_rebuilt(self)
        return True

    def _lose(self, why: str) -> None:
        if not self.alive:
            return
        self.alive = False
        self._stop_timers()
        log.error("cluster: node {node} lost its place in the cluster: {why}", node=self.node, why=why)
        if self.on_lost is not None:
            self.on_lost(self, LeaseLost(f"node {self.node!r}: {why}"))

    def _stop_timers(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    def drain(self, draining: bool = True) -> defer.Deferred:
        """Mark the node draining (no new calls are sent to it) and beat at once so others see it."""
        self.draining = draining
        return self.beat()

    def stop(self) -> defer.Deferred:
        """Leave the registry: stop beating and remove our key (only if it is still ours).
        Its call records should be gone first, or survivors end them as ``node_lost``. Never fails."""
        was_alive, self.alive = self.alive, False
        self._stop_timers()
        if not was_alive:
            return defer.succeed(None)
        d = self.redis.eval(REMOVE, [keys.node(self.node)], [self.instance])
        return d.addCallbacks(lambda _: None, lambda f: f.trap(RedisError) and None)


class NodeRegistry:
    """Reads the cluster's live nodes."""

    def __init__(self, redis: IRedis):
        self.redis = redis

    def node(self, node: str) -> defer.Deferred:
        """The :class:`NodeInfo` of ``node``, or None when it is dead (or its entry unreadable)."""
        return defer.ensureDeferred(self._node(node))

    async def _node(self, node: str) -> NodeInfo | None:
        try:
            fields = await self.redis.hgetall(keys.node(node))
        except RedisReplyError as e:  # e.g. WRONGTYPE: a key of another kind under the node's name
            log.warn("cluster: the registry entry of node {node} is unreadable: {problem}", node=node, problem=str(e))
            return None
        if not fields:
            return None
        try:
            return NodeInfo.from_hash(node, fields)
        except (ValueError, TypeError, PeerDataError) as e:
            log.warn("cluster: the registry entry of node {node} is unreadable: {problem}", node=node, problem=str(e))
            return None

    def nodes(self) -> defer.Deferred:
        """Every live node, sorted by id."""
        return defer.ensureDeferred(self._nodes())

    async def _nodes(self) -> list[NodeInfo]:
        found = []
        for key in await self.redis.scan(keys.NODE + "*"):
            info = await self._node(key[len(keys.NODE) :])
            if info is not None:
                found.append(info)
        return found

    def is_alive(self, node: str) -> defer.Deferred:
        """True while ``node`` has a heartbeat."""
        return self.redis.pttl(keys.node(node)).addCallback(lambda ttl: ttl != -2)
