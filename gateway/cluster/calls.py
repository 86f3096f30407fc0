"""Call records in Redis: every node sees every call, its owner, and survivors end a dead node's calls.

A call lives on the node that holds its media (its *owner*). The owner writes the call's record
(:class:`CallRecord`: owner, state, legs, extension, times) to ``gw:call:<id>`` and the id to its
set ``gw:owned:<node>``, in one script that first checks that the owner still holds its node lease
(``gw:node:<node>`` with its instance id, see :mod:`gateway.cluster.nodes`): a node that lost its
place in the cluster cannot write records any more (:class:`LeaseLost`).

:class:`NodeLostSweeper` runs on every node: every ``interval`` it looks at each ``gw:owned:<node>``
set whose node has no heartbeat any more, takes the lease ``sweep:<node>`` (so one survivor does
it), and hands each record to ``on_lost(record)``; the core ends the call with cause ``node_lost``
and writes its CDR, and when the Deferred it returns fires the record is removed. A record whose
``on_lost`` failed stays for the next sweep (the CDR store is idempotent on the call id), so none is
dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.boundary import PeerDataError, load_json
from gateway.cluster import keys
from gateway.cluster.errors import LeaseLost, RedisError, RedisReplyError
from gateway.cluster.leases import Lease
from gateway.cluster.nodes import NodeHeartbeat
from gateway.cluster.redis import IRedis, Script

__all__ = ["CallRecord", "CallRecords", "NodeLostSweeper", "PUT_CALL"]

log = Logger()

#: keys read by one MGET when listing every call record
MGET_BATCH = 200


@attrs.frozen
class CallRecord:
    """What the cluster knows of a call: enough to show it anywhere and to end it when its owner dies."""

    call_id: str
    owner: str
    state: str
    extension: str | None = None
    #: each leg's snapshot (id, state, direction, numbers, driver, times, ...), as JSON objects
    legs: tuple[dict[str, Any], ...] = attrs.field(default=(), converter=tuple)
    started: float = 0.0
    updated: float = 0.0
    #: anything else the core wants a survivor to have (its CDR fields, the route, ...)
    data: dict[str, Any] = attrs.Factory(dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.call_id,
                "owner": self.owner,
                "state": self.state,
                "extension": self.extension,
                "legs": list(self.legs),
                "started": self.started,
                "updated": self.updated,
                "data": self.data,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> "CallRecord":
        """Raise ``ValueError`` (:class:`PeerDataError` for JSON that breaks the boundary policy)."""
        obj = load_json(text)
        if not isinstance(obj, dict):
            raise ValueError("a call record is not a JSON object")
        for name in ("id", "owner", "state"):
            if not isinstance(obj.get(name), str):
                raise ValueError(f"a call record's {name} is not a string")
        legs = obj.get("legs", [])
        if not isinstance(legs, list) or not all(isinstance(leg, dict) for leg in legs):
            raise ValueError("a call record's legs are not a list of objects")
        extension = obj.get("extension")
        data = obj.get("data", {})
        return cls(
            call_id=obj["id"],
            owner=obj["owner"],
            state=obj["state"],
            extension=extension if isinstance(extension, str) else None,
            legs=legs,
            started=float(obj.get("started", 0.0)),
            updated=float(obj.get("updated", 0.0)),
            data=data if isinstance(data, dict) else {},
        )


def _put_call(store, keys, args):
    if store.hget(keys[0], "instance") != args[0]:
        return 0
    store.set(keys[1], args[2])
    store.sadd(keys[2], args[1])
    return 1


#: KEYS: node key, call key, owned set; ARGV: instance, call id, record JSON -> 1 written, 0 lease lost
PUT_CALL = Script(
    "call-put",
    """
    if redis.call('hget', KEYS[1], 'instance') ~= ARGV[1] then
      return 0
    end
    redis.call('set', KEYS[2], ARGV[3])
    redis.call('sadd', KEYS[3], ARGV[2])
    return 1
    """,
    _put_call,
)


def _drop_call(store, keys, args):
    removed = store.delete(keys[0])
    store.srem(keys[1], args[0])
    return removed


#: KEYS: call key, owned set; ARGV: call id -> 1 removed, 0 was not there
DROP_CALL = Script(
    "call-drop",
    """
    local removed = redis.call('del', KEYS[1])
    redis.call('srem', KEYS[2], ARGV[1])
    return removed
    """,
    _drop_call,
)


class CallRecords:
    """The call records, as one node writes its own and reads everyone's."""

    def __init__(self, redis: IRedis, heartbeat: NodeHeartbeat):
        self.redis = redis
        self.heartbeat = heartbeat

    @property
    def node(self) -> str:
        return self.heartbeat.node

    def put(self, record: CallRecord) -> defer.Deferred:
        """Write (or update) one of this node's calls. Fails with :class:`LeaseLost` when this node
        lost its place in the cluster, or a :class:`RedisError`."""
        if record.owner != self.node:
            return defer.fail(ValueError(f"call {record.call_id!r} is owned by {record.owner!r}, not by {self.node!r}"))
        if not self.heartbeat.alive:
            return defer.fail(LeaseLost(f"node {self.node!r} is not in the cluster"))
        d = self.redis.eval(
            PUT_CALL,
            [keys.node(self.node), keys.call(record.call_id), keys.owned(self.node)],
            [self.heartbeat.instance, record.call_id, record.to_json()],
        )

        def written(result):
            if result != 1:
                raise LeaseLost(f"node {self.node!r} no longer holds its lease: call {record.call_id!r} not written")

        return d.addCallback(written)

    def remove(self, call_id: str, owner: str | None = None) -> defer.Deferred:
        """Remove a call's record (its owner's, by default this node); fires True when it was there."""
        owner = owner or self.node
        return self.redis.eval(DROP_CALL, [keys.call(call_id), keys.owned(owner)], [call_id]).addCallback(bool)

    def get(self, call_id: str) -> defer.Deferred:
        """The :class:`CallRecord` of ``call_id``, or None (absent or unreadable)."""
        return self.redis.get(keys.call(call_id)).addCallback(_parse, call_id)

    def all(self) -> defer.Deferred:
        """Every call record of the cluster, by call id (for a cluster-wide ``/api/calls``)."""
        return defer.ensureDeferred(self._all())

    async def _all(self) -> list[CallRecord]:
        records = []
        found = await self.redis.scan(keys.CALL + "*")
        for start in range(0, len(found), MGET_BATCH):
            batch = found[start : start + MGET_BATCH]
            for key, text in zip(batch, await self.redis.mget(*batch)):
                record = _parse(text, key[len(keys.CALL) :])
                if record is not None:
                    records.append(record)
        return records

    def owned_by(self, node: str) -> defer.Deferred:
        """The ids of the calls ``node`` owns (a set)."""
        return self.redis.smembers(keys.owned(node))


def _parse(text: str | None, call_id: str) -> CallRecord | None:
    if text is None:
        return None
    try:
        return CallRecord.from_json(text)
    except (ValueError, TypeError, PeerDataError) as e:
        log.warn("cluster: the record of call {call_id} is unreadable: {problem}", call_id=call_id, problem=str(e))
        return None


class NodeLostSweeper:
    """Ends the calls of dead nodes (see the module docstring).

    ``on_lost(record)`` returns a Deferred (or None) that fires once the call was ended and its CDR
    written; only then is the record removed.
    """

    def __init__(
        self,
        redis: IRedis,
        clock,
        node: str,
        on_lost: Callable[[CallRecord], Any],
        *,
        interval: float = 2.0,
        claim_ttl: float = 30.0,
    ):
        self.redis = redis
        self.clock = clock
        self.node = node
        self.on_lost = on_lost
        self.interval = interval
        self.claim_ttl = claim_ttl
        self._loop: task.LoopingCall | None = None
        self._sweeping = False

    def start(self) -> None:
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> None:
        if self._sweeping:
            return
        self._sweeping = True

        def done(result):
            self._sweeping = False
            if hasattr(result, "trap"):
                if result.check(RedisError):
                    log.debug("cluster: sweep skipped: {problem}", problem=str(result.value))
                else:
                    log.failure("cluster: the node_lost sweep failed", result)

        self.sweep().addBoth(done)

    def sweep(self) -> defer.Deferred:
        """Sweep once: fires with the ids of the calls handed to ``on_lost`` and removed."""
        return defer.ensureDeferred(self._sweep())

    async def _sweep(self) -> list[str]:
        ended: list[str] = []
        for key in await self.redis.scan(keys.OWNED + "*"):
            owner = key[len(keys.OWNED) :]
            if owner == self.node or await self.redis.pttl(keys.node(owner)) != -2:
                continue
            claim = Lease(self.redis, self.clock, f"sweep:{owner}", self.node, ttl=self.claim_ttl)
            if not await claim.acquire():
                continue  # another survivor is on it
            try:
                ended += await self._end_calls_of(owner)
            except RedisReplyError as e:  # e.g. WRONGTYPE: a key of another kind under our name costs only itself
                log.warn("cluster: {key} is unreadable ({problem}); the sweep goes on with the other nodes",
                         key=key, problem=str(e))
            finally:
                await claim.release()
        return ended

    async def _end_calls_of(self, owner: str) -> list[str]:
        ended = []
        for call_id in sorted(await self.redis.smembers(keys.owned(owner))):
            try:
                text = await self.redis.get(keys.call(call_id))
            except RedisReplyError as e:  # not a string: as unreadable as a record that is not JSON
                log.warn("cluster: the record of call {call_id} of dead node {owner} is unreadable: {problem}",
                         call_id=call_id, owner=owner, problem=str(e))
                text = None
            record = _parse(text, call_id)
            if record is not None:
                log.warn("cluster: node {owner} is dead; ending its call {call_id} (node_lost)", owner=owner, call_id=call_id)
                try:
                    await defer.maybeDeferred(self.on_lost, record)
                except Exception as e:
                    log.error(
                        "cluster: ending call {call_id} of dead node {owner} failed ({problem}); kept for the next sweep",
                        call_id=call_id, owner=owner, problem=str(e) or type(e).__name__,
                    )
                    continue
            await self.redis.eval(DROP_CALL, [keys.call(call_id), keys.owned(owner)], [call_id])
            if record is not None:
                ended.append(call_id)
        return ended
