"""The shipped fake of :class:`gateway.cluster.redis.IRedis`: an in-memory Redis on a ``task.Clock``.

Usage, for unit tests of the cluster layer and of code built on it::

    clock = task.Clock()
    server = FakeRedisServer(clock)
    a, b = server.client(), server.client()   # two nodes' clients of one Redis

Every command's Deferred has fired by the time the method returns (there is no
I/O), so a ``SynchronousTestCase`` reads it with ``successResultOf``. Keys with
a TTL vanish when the clock passes their deadline. A published message reaches
the subscribers on the next ``clock.advance(0)`` (as a real one arrives later,
never inside ``publish``). Scripts run their Python twin (:class:`Script`).

Outages: :meth:`FakeRedisServer.stop` makes every client's commands fail with
:class:`RedisUnavailable` (and tells their ``on_connection`` listeners),
:meth:`FakeRedisServer.start` brings it back (``flush=True``: as a Redis without
persistence, empty), and the clients' subscriptions are made again, as the real
client does. :meth:`FakeRedis.disconnect`/:meth:`FakeRedis.reconnect` do the
same for one client only. ``server.hang()`` makes commands time out instead
(:class:`RedisTimeout`, after the client's ``command_timeout`` on the clock).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from gateway.cluster.errors import RedisReplyError, RedisTimeout, RedisUnavailable
from gateway.cluster.redis import IRedis, ISubscription, Script

__all__ = ["FakeRedis", "FakeRedisServer", "FakeStore"]

_WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


class FakeStore:
    """The keyspace, with synchronous commands: what a :class:`Script`'s Python twin is given."""

    def __init__(self, clock):
        self.clock = clock
        self._data: dict[str, Any] = {}
        self._deadline: dict[str, float] = {}

    def _alive(self, key: str) -> bool:
        deadline = self._deadline.get(key)
        if deadline is not None and self.clock.seconds() >= deadline:
            self._data.pop(key, None)
            self._deadline.pop(key, None)
        return key in self._data

    def _typed(self, key: str, kind: type) -> Any:
        if not self._alive(key):
            return None
        value = self._data[key]
        if not isinstance(value, kind):
            raise RedisReplyError(_WRONGTYPE)
        return value

    def flush(self) -> None:
        self._data.clear()
        self._deadline.clear()

    def time_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def exists(self, key: str) -> bool:
        return self._alive(key)

    def get(self, key: str) -> str | None:
        return self._typed(key, str)

    def set(self, key: str, value: str, px: float | None = None, nx: bool = False) -> bool:
        if nx and self._alive(key):
            return False
        self._data[key] = str(value)
        self._deadline.pop(key, None)
        if px is not None:
            self._deadline[key] = self.clock.seconds() + int(px) / 1000
        return True

    def delete(self, *keys: str) -> int:
        removed = 0
        for key in keys:
            if self._alive(key):
                del self._data[key]
                self._deadline.pop(key, None)
                removed += 1
        return removed

    def incr(self, key: str) -> int:
        value = self._typed(key, str)
        try:
            number = int(value or 0) + 1
        except ValueError:
            raise RedisReplyError("ERR value is not an integer or out of range") from None
        self._data[key] = str(number)
        return number

    def pexpire(self, key: str, ms: int) -> bool:
        if not self._alive(key):
            return False
        self._deadline[key] = self.clock.seconds() + int(ms) / 1000
        return True

    def pttl(self, key: str) -> int:
        if not self._alive(key):
            return -2
        deadline = self._deadline.get(key)
        return -1 if deadline is None else max(0, round((deadline - self.clock.seconds()) * 1000))

    def hset(self, key: str, mapping: dict[str, str]) -> int:
        value = self._typed(key, dict)
        if value is None:
            value = self._data[key] = {}
        new = sum(1 for field in mapping if field not in value)
        value.update({f: str(v) for f, v in mapping.items()})
        return new

    def hget(self, key: str, field: str) -> str | None:
        value = self._typed(key, dict)
        return None if value is None else value.get(field)

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self._typed(key, dict) or {})

    def sadd(self, key: str, *members: str) -> int:
        value = self._typed(key, set)
        if value is None:
            value = self._data[key] = set()
        new = {str(m) for m in members} - value
        value |= new
        return len(new)

    def srem(self, key: str, *members: str) -> int:
        value = self._typed(key, set)
        if value is None:
            return 0
        gone = value & {str(m) for m in members}
        value -= gone
        if not value:
            self.delete(key)
        return len(gone)

    def smembers(self, key: str) -> set[str]:
        return set(self._typed(key, set) or ())

    def scan(self, pattern: str) -> list[str]:
        return sorted(k for k in list(self._data) if self._alive(k) and fnmatch.fnmatchcase(k, pattern))


@implementer(ISubscription)
class _Subscription:
    def __init__(self, client: "FakeRedis", channel: str, callback: Callable[[str, str], Any]):
        self._client = client
        self.channel = channel
        self.callback = callback

    def cancel(self) -> defer.Deferred:
        subs = self._client._subscriptions.get(self.channel, [])
        if self in subs:
            subs.remove(self)
        if not subs:
            self._client._subscriptions.pop(self.channel, None)
        return defer.succeed(None)


class FakeRedisServer:
    """One in-memory Redis; each :meth:`client` is one node's connection to it."""

    def __init__(self, clock):
        self.clock = clock
        self.store = FakeStore(clock)
        self.up = True
        self.hung = False
        self.clients: list[FakeRedis] = []
        #: every command run, as (client name, command name), for tests counting round trips
        self.commands: list[tuple[str, str]] = []

    def client(self, name: str | None = None, command_timeout: float = 2.0) -> "FakeRedis":
        client = FakeRedis(self, name or f"client{len(self.clients) + 1}", command_timeout)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        """Redis goes away: every connected client sees its link drop."""
        self.up = False
        for client in self.clients:
            client._set_link(False)

    def start(self, flush: bool = False) -> None:
        """Redis is back (empty, with ``flush``: a restart without persistence); the clients reconnect."""
        if flush:
            self.store.flush()
        self.up = True
        self.hung = False
        for client in self.clients:
            if not client._cut:
                client._set_link(True)

    def hang(self) -> None:
        """Redis stops answering without closing the connections: commands time out."""
        self.hung = True

    def publish(self, channel: str, message: str) -> int:
        receivers = [c for c in self.clients if c.connected and channel in c._subscriptions]
        for client in receivers:
            self.clock.callLater(0, client._deliver, channel, message)
        return len(receivers)


@implementer(IRedis)
class FakeRedis:
    """One client of a :class:`FakeRedisServer`; see the module docstring."""

    def __init__(self, server: FakeRedisServer, name: str, command_timeout: float = 2.0):
        self.server = server
        self.name = name
        self.command_timeout = command_timeout
        self._cut = False
        self._link = server.up
        self._subscriptions: dict[str, list[_Subscription]] = {}
        self._listeners: list[Callable[[bool], Any]] = []

    # -- link state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link

    def disconnect(self) -> None:
        """This client alone loses its link (a network cut between this node and Redis)."""
        self._cut = True
        self._set_link(False)

    def reconnect(self) -> None:
        self._cut = False
        if self.server.up:
            self._set_link(True)

    def _set_link(self, up: bool) -> None:
        if up == self._link:
            return
        self._link = up
        for listener in list(self._listeners):
            listener(up)

    def on_connection(self, callback: Callable[[bool], Any]) -> Callable[[], None]:
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _run(self, command: str, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if not self._link:
            return defer.fail(RedisUnavailable(f"{self.name}: not connected to redis"))
        if self.server.hung:
            d: defer.Deferred = defer.Deferred()
            self.server.clock.callLater(
                self.command_timeout,
                d.errback,
                RedisTimeout(f"{self.name}: no reply to {command} within {self.command_timeout:g} s"),
            )
            return d
        self.server.commands.append((self.name, command))
        try:
            return defer.succeed(fn(*args))
        except Exception as e:
            return defer.fail(e)

    # -- commands -----------------------------------------------------------------------------

    def ping(self) -> defer.Deferred:
        return self._run("PING", lambda: "PONG")

    def get(self, key: str) -> defer.Deferred:
        return self._run("GET", self.server.store.get, key)

    def mget(self, *keys: str) -> defer.Deferred:
        store = self.server.store

        def values() -> list:
            # MGET answers None for a key of another type, where GET would be WRONGTYPE
            return [store._data[key] if store.exists(key) and isinstance(store._data[key], str) else None
                    for key in keys]

        return self._run("MGET", values)

    def set(self, key: str, value: str, px: float | None = None, nx: bool = False) -> defer.Deferred:
        return self._run("SET", self.server.store.set, key, value, px, nx)

    def delete(self, *keys: str) -> defer.Deferred:
        return self._run("DEL", self.server.store.delete, *keys)

    def incr(self, key: str) -> defer.Deferred:
        return self._run("INCR", self.server.store.incr, key)

    def expire(self, key: str, seconds: float) -> defer.Deferred:
        return self._run("PEXPIRE", self.server.store.pexpire, key, max(1, int(seconds * 1000)))

    def pttl(self, key: str) -> defer.Deferred:
        return self._run("PTTL", self.server.store.pttl, key)

    def hset(self, key: str, mapping: dict[str, str]) -> defer.Deferred:
        return self._run("HSET", self.server.store.hset, key, mapping)

    def hgetall(self, key: str) -> defer.Deferred:
        return self._run("HGETALL", self.server.store.hgetall, key)

    def sadd(self, key: str, *members: str) -> defer.Deferred:
        return self._run("SADD", self.server.store.sadd, key, *members)

    def srem(self, key: str, *members: str) -> defer.Deferred:
        return self._run("SREM", self.server.store.srem, key, *members)

    def smembers(self, key: str) -> defer.Deferred:
        return self._run("SMEMBERS", self.server.store.smembers, key)

    def scan(self, pattern: str, count: int = 100) -> defer.Deferred:
        return self._run("SCAN", self.server.store.scan, pattern)

    def eval(self, script: Script, keys: Sequence[str] = (), args: Sequence[Any] = ()) -> defer.Deferred:
        return self._run("EVALSHA", script.python, self.server.store, list(keys), [str(a) for a in args])

    def publish(self, channel: str, message: str) -> defer.Deferred:
        return self._run("PUBLISH", self.server.publish, channel, message)

    def subscribe(self, channel: str, callback: Callable[[str, str], Any]) -> defer.Deferred:
        if not self._link:
            return defer.fail(RedisUnavailable(f"{self.name}: not connected to redis for subscriptions"))
        sub = _Subscription(self, channel, callback)
        self._subscriptions.setdefault(channel, []).append(sub)
        return defer.succeed(sub)

    def _deliver(self, channel: str, message: str) -> None:
        if not self._link:
            return  # the link dropped before it arrived: lost, as on a real link
        for sub in list(self._subscriptions.get(channel, ())):
            sub.callback(channel, message)
