"""The gateway's Redis client: a small RESP2 client on Twisted's protocols, behind :class:`IRedis`.

Why not txredisapi (see ``docs/cluster.md``): it imports the global reactor at
module level and binds ``reactor.callLater`` as a class attribute for its reply
timeouts, and its pool builds its endpoints and its ``ClientService`` on that
reactor; we would have to wrap or patch its internals to pass ours. What the
cluster needs is a dozen commands, scripts and pub/sub, which is a few hundred
lines here, with the reactor passed in, typed errors and deterministic tests.

:class:`RedisClient` is a Twisted service holding two connections, each kept
by a ``ClientService`` with a backoff policy: one for commands, one for
subscriptions (a connection in subscribe mode takes no other command). While a
connection is down, a command fails at once with :class:`RedisUnavailable`:
nothing queues behind a reconnection. A reply that does not come within
``command_timeout`` fails its command with :class:`RedisTimeout` and drops the
connection (the replies after it could no longer be matched to their
commands). Subscriptions are made again on every reconnection; what was
published while the link was down is lost (that is pub/sub), so users listen
to :meth:`RedisClient.on_connection` to rebuild their state.

Values are text: keys, values, fields and messages are ``str`` (UTF-8 on the
wire); a value that is not UTF-8 fails its command with :class:`RedisReplyError`.
"""

from __future__ import annotations

import collections
import hashlib
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from gateway.cluster.errors import (
    RedisError,
    RedisProtocolError,
    RedisReplyError,
    RedisTimeout,
    RedisUnavailable,
)

__all__ = [
    "IRedis",
    "ISubscription",
    "RESPParser",
    "RedisClient",
    "RedisProtocol",
    "RedisURL",
    "Script",
    "encode_command",
]

log = Logger()

#: the largest reply (or unparsed backlog) taken from the server, in bytes: past it the connection is dropped
MAX_REPLY = 64 * 1024 * 1024


class ISubscription(Interface):
    """One callback's subscription to one channel."""

    channel = Attribute("the channel name (str)")

    def cancel():
        """Stop delivering to this callback; the channel is unsubscribed when its last callback goes.
        Returns a Deferred that fires when done (never fails)."""


class IRedis(Interface):
    """The Redis commands the cluster layer uses. Every method returns a Deferred.

    A Deferred fails with :class:`RedisUnavailable` (or its :class:`RedisTimeout`) when Redis
    cannot be reached, promptly, and with :class:`RedisReplyError` when Redis refuses the command.
    """

    def ping():
        """``PING``: fires with ``"PONG"``."""

    def get(key):
        """The string at ``key``, or None."""

    def mget(*keys):
        """``MGET``: the strings at ``keys``, in order (None for a missing key or one of another type)."""

    def set(key, value, px=None, nx=False):
        """``SET key value [PX ms] [NX]``: fires True when set, False when NX found the key."""

    def delete(*keys):
        """``DEL``: fires with the number of keys removed."""

    def incr(key):
        """``INCR``: fires with the new integer."""

    def expire(key, seconds):
        """``PEXPIRE`` with ``seconds`` (a float) in ms: fires True when the key exists."""

    def pttl(key):
        """``PTTL``: ms left, -1 without expiry, -2 when the key is absent."""

    def hset(key, mapping):
        """``HSET key f1 v1 f2 v2 ...``: fires with the number of new fields."""

    def hgetall(key):
        """``HGETALL``: fires with a dict (empty when the key is absent)."""

    def sadd(key, *members):
        """``SADD``: fires with the number added."""

    def srem(key, *members):
        """``SREM``: fires with the number removed."""

    def smembers(key):
        """``SMEMBERS``: fires with a set of str."""

    def scan(pattern, count=100):
        """Every key matching the glob ``pattern`` (``SCAN`` to the end): fires with a sorted list."""

    def eval(script, keys=(), args=()):
        """Run a :class:`Script` (``EVALSHA``, then ``EVAL`` when the server lacks it).

        Fires with its reply: int, str, None or a list of those."""

    def publish(channel, message):
        """``PUBLISH``: fires with the number of clients that received it."""

    def subscribe(channel, callback):
        """Call ``callback(channel, message)`` for each message on ``channel``.

        Fires with an :class:`ISubscription` once the server confirmed it; the subscription is
        made again after a reconnection. Fails with :class:`RedisUnavailable` (and subscribes
        nothing) while Redis is unreachable."""

    def on_connection(callback):
        """Call ``callback(up: bool)`` whenever the command link comes up or goes down.
        Returns a callable that removes it."""

    connected = Attribute("True while commands can be sent")


@attrs.frozen
class Script:
    """A Lua script for ``EVAL``, with its Python twin for the shipped fake.

    ``python(store, keys, args)`` must do what ``lua`` does, on
    :class:`gateway.cluster.testing.FakeStore`; the contract tests (``tests/cluster``) run both
    against the same checks, so the two cannot drift apart unnoticed. ``args`` reach both as
    ``str``, as Redis passes them.
    """

    name: str
    lua: str
    python: Callable[..., Any] = attrs.field(repr=False, eq=False)

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.lua.encode()).hexdigest()


@attrs.frozen
class RedisURL:
    """``redis://[[user]:password@]host[:port][/db]``, parsed and checked."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> "RedisURL":
        """Raise ``ValueError`` naming the problem (never echoing a password)."""
        try:
            url = urllib.parse.urlsplit(text)
            port = url.port
        except ValueError as e:
            raise ValueError(f"not a redis:// URL: {e}") from None
        if url.scheme != "redis":
            raise ValueError(f"expected redis://host[:port][/db], got scheme {url.scheme!r}")
        if not url.hostname:
            raise ValueError("no host in the redis URL")
        if url.query or url.fragment:
            raise ValueError("the redis URL takes no query or fragment")
        path = url.path.lstrip("/")
        if path and not (path.isdigit() and path.isascii() and int(path) <= 1000):
            raise ValueError(f"the database must be a number from 0, got {path!r}")
        if port == 0:
            raise ValueError("port 0 is out of range (1-65535)")
        return cls(
            host=url.hostname,
            port=port or 6379,
            db=int(path or 0),
            username=urllib.parse.unquote(url.username) if url.username else None,
            password=urllib.parse.unquote(url.password) if url.password is not None else None,
        )

    def __str__(self) -> str:
        """The URL without its password, for logs."""
        return f"redis://{self.host}:{self.port}/{self.db}"


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        raise TypeError("a Redis argument cannot be a bool")
    if isinstance(value, (int, float, str)):
        return str(value).encode("utf-8")
    raise TypeError(f"a Redis argument must be str, bytes or a number, got {type(value).__name__}")


def encode_command(*args: Any) -> bytes:
    """One RESP command: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _arg(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    pass


class RESPParser:
    """An incremental RESP2 reply parser.

    :meth:`feed` takes bytes and returns the complete replies: ``str`` (simple string),
    :class:`RedisReplyError` (an error reply, as a value), ``int``, ``bytes`` or None (bulk),
    and ``list`` or None (array). Raises :class:`RedisProtocolError` on bytes that are not RESP
    or on a backlog above ``max_size``.

    Resumable: the elements of an unfinished reply parsed so far are kept (the arrays being filled
    on a stack) and their bytes dropped, and a bulk string whose bytes have not all come is not
    looked at again before they have; so a large reply arriving in small chunks costs work linear
    in its size, not a re-parse from its start at every chunk.
    """

    def __init__(self, max_size: int = MAX_REPLY):
        self._buffer = bytearray()
        self._max = max_size
        #: the arrays being filled, outermost first: [items, how many still to come]
        self._stack: list[list] = []
        #: bytes of the unfinished reply already parsed (and dropped from the buffer)
        self._partial = 0
        #: the buffer length the next element needs before it is worth parsing
        self._need = 0

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        replies = []
        pos = 0
        try:
            while len(self._buffer) >= max(self._need, pos + 1):
                self._need = 0
                value, pos = self._element(pos)
                if value is _ARRAY:
                    continue
                while self._stack:  # the element goes into the array being filled
                    frame = self._stack[-1]
                    frame[0].append(value)
                    frame[1] -= 1
                    if frame[1]:
                        break
                    value = self._stack.pop()[0]
                else:
                    replies.append(value)
                    self._partial = -pos  # the next reply starts here
        except _Incomplete:
            pass
        del self._buffer[:pos]
        self._need = max(0, self._need - pos)
        self._partial += pos
        if self._partial + len(self._buffer) > self._max:
            raise RedisProtocolError(f"a reply larger than {self._max} bytes")
        return replies

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buffer.find(b"\r\n", pos)
        if end < 0:
            if len(self._buffer) - pos > 65536:
                raise RedisProtocolError("a reply line longer than 65536 bytes")
            raise _Incomplete
        return bytes(self._buffer[pos:end]), end + 2

    def _int(self, text: bytes) -> int:
        if not (text.lstrip(b"-").isdigit() and len(text) <= 20):
            raise RedisProtocolError(f"not an integer: {text[:40]!r}")
        return int(text)

    def _element(self, pos: int) -> tuple[Any, int]:
        """One element at ``pos``: a value, or ``_ARRAY`` once a non-empty array's header is read
        (its frame pushed: its items are the next elements)."""
        if len(self._stack) > 32:
            raise RedisProtocolError("a reply nested deeper than 32")
        kind = self._buffer[pos : pos + 1]
        line, end = self._line(pos + 1)
        if kind == b"+":
            return line.decode("utf-8", "replace"), end
        if kind == b"-":
            return RedisReplyError(line.decode("utf-8", "replace")), end
        if kind == b":":
            return self._int(line), end
        if kind == b"$":
            length = self._int(line)
            if length < 0:
                return None, end
            if length > self._max:
                raise RedisProtocolError(f"a bulk string of {length} bytes")
            if len(self._buffer) < end + length + 2:
                self._need = end + length + 2  # not parsed again before its bytes are all here
                raise _Incomplete
            if self._buffer[end + length : end + length + 2] != b"\r\n":
                raise RedisProtocolError("a bulk string without its CRLF")
            return bytes(self._buffer[end : end + length]), end + length + 2
        if kind == b"*":
            count = self._int(line)
            if count < 0:
                return None, end
            if count == 0:
                return [], end
            self._stack.append([[], count])
            if len(self._stack) > 32:
                raise RedisProtocolError("a reply nested deeper than 32")
            return _ARRAY, end
        raise RedisProtocolError(f"unknown reply type {bytes(kind)!r}")


#: :meth:`RESPParser._element`'s "an array begins"
_ARRAY = object()


def _text(value: Any) -> Any:
    """bytes -> str (strict UTF-8) in a reply, recursively."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise RedisReplyError("VALUE a value from Redis is not UTF-8 text") from None
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


class RedisProtocol(protocol.Protocol):
    """One connection: commands out, replies matched to them in order, each within ``timeout``.

    In subscriber mode (``on_message`` given), ``message`` pushes go to ``on_message(channel,
    data)`` and every other reply (the confirmations) is matched to the commands in order.
    """

    def __init__(self, clock, timeout: float, on_message: Callable[[bytes, bytes], None] | None = None):
        self._clock = clock
        self._timeout = timeout
        self._on_message = on_message
        self._parser = RESPParser()
        self._pending: collections.deque[tuple[defer.Deferred, Any]] = collections.deque()
        self._lost_callbacks: list[Callable[[], None]] = []
        self._dropped = False
        self.peer = "redis"

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"

    def when_lost(self, callback: Callable[[], None]) -> None:
        self._lost_callbacks.append(callback)

    def execute(self, *args: Any) -> defer.Deferred:
        if self._dropped:
            return defer.fail(RedisUnavailable(f"lost the connection to redis {self.peer}"))
        d: defer.Deferred = defer.Deferred()
        try:
            data = encode_command(*args)
        except TypeError as e:
            return defer.fail(e)
        timer = self._clock.callLater(self._timeout, self._timed_out, str(args[0]))
        self._pending.append((d, timer))
        self.transport.write(data)
        return d

    def dataReceived(self, data: bytes) -> None:
        if self._dropped:
            return
        try:
            replies = self._parser.feed(data)
        except RedisProtocolError as e:
            log.warn("redis {peer}: {problem}; dropping the connection", peer=self.peer, problem=str(e))
            self._drop(e)
            return
        for reply in replies:
            if self._dropped:
                return
            if (
                self._on_message is not None
                and isinstance(reply, list)
                and len(reply) == 3
                and reply[0] == b"message"
            ):
                self._on_message(reply[1], reply[2])
                continue
            if not self._pending:
                log.warn("redis {peer}: a reply nobody asked for; dropping the connection", peer=self.peer)
                self._drop(RedisProtocolError("a reply nobody asked for"))
                return
            d, timer = self._pending.popleft()
            if timer.active():
                timer.cancel()
            if isinstance(reply, RedisReplyError):
                d.errback(reply)
            else:
                d.callback(reply)

    def _timed_out(self, command: str) -> None:
        log.warn(
            "redis {peer}: no reply to {command} within {timeout} s; dropping the connection",
            peer=self.peer, command=command, timeout=self._timeout,
        )
        self._drop(RedisTimeout(f"no reply from redis {self.peer} to {command} within {self._timeout:g} s"))

    def _drop(self, error: Exception) -> None:
        """Forget this connection at once (the client sees it down before any caller hears of the
        error), fail what waits on it, and close it."""
        if self._dropped:
            return
        self._dropped = True
        callbacks, self._lost_callbacks = self._lost_callbacks, []
        for callback in callbacks:
            callback()
        pending, self._pending = self._pending, collections.deque()
        for d, timer in pending:
            if timer.active():
                timer.cancel()
            d.errback(error)
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self._drop(RedisUnavailable(f"lost the connection to redis {self.peer}"))


class _Factory(protocol.Factory):
    def __init__(self, make: Callable[[], RedisProtocol]):
        self._make = make

    def buildProtocol(self, addr: Any) -> RedisProtocol:
        proto = self._make()
        proto.factory = self
        return proto


@implementer(ISubscription)
class _Subscription:
    def __init__(self, client: "RedisClient", channel: str, callback: Callable[[str, str], Any]):
        self._client = client
        self.channel = channel
        self.callback = callback

    def cancel(self) -> defer.Deferred:
        return self._client._unsubscribe(self)


@implementer(IRedis)
class RedisClient(service.Service):
    """The real :class:`IRedis`: a service; start it (or its parent) to connect.

    ``reactor`` is used for connecting and as the clock of the timeouts and the backoff.
    """

    def __init__(
        self,
        reactor,
        url: str | RedisURL,
        *,
        command_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
        name: str = "redis",
        registry=None,
    ):
        self._reactor = reactor
        self.url = url if isinstance(url, RedisURL) else RedisURL.parse(url)
        self._timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._retry = backoffPolicy(initialDelay=retry_initial, maxDelay=retry_max)
        self.setName(name)
        self._command: RedisProtocol | None = None
        self._subscriber: RedisProtocol | None = None
        self._subscriptions: dict[str, list[_Subscription]] = {}
        self._listeners: list[Callable[[bool], Any]] = []
        self._services: list[ClientService] = []
        self._up_gauge = self._errors = None
        if registry is not None:
            from prometheus_client import Counter, Gauge

            from gateway.metrics import define_metric

            self._up_gauge = define_metric(registry, Gauge, "redis_up", "1 while the link to Redis for commands is up.")
            self._up_gauge.set(0)
            self._errors = define_metric(
                registry, Counter, "redis_errors", "Redis commands that failed, by reason.", ["reason"]
            )

    def _count(self, failure):
        error = failure.value
        if self._errors is not None and not (isinstance(error, RedisReplyError) and error.code == "NOSCRIPT"):
            reason = (
                "timeout" if isinstance(error, RedisTimeout)
                else "unavailable" if isinstance(error, RedisUnavailable)
                else "reply" if isinstance(error, RedisReplyError)
                else "protocol" if isinstance(error, RedisProtocolError)
                else "other"
            )
            self._errors.labels(reason=reason).inc()
        return failure

    # -- the links ----------------------------------------------------------------------------

    def _endpoint(self):
        return HostnameEndpoint(self._reactor, self.url.host, self.url.port, timeout=self._connect_timeout)

    def startService(self) -> None:
        super().startService()
        self._services = [
            ClientService(
                self._endpoint(),
                _Factory(lambda: RedisProtocol(self._reactor, self._timeout)),
                retryPolicy=self._retry,
                clock=self._reactor,
                prepareConnection=self._prepare_command,
            ),
            ClientService(
                self._endpoint(),
                _Factory(lambda: RedisProtocol(self._reactor, self._timeout, self._message)),
                retryPolicy=self._retry,
                clock=self._reactor,
                prepareConnection=self._prepare_subscriber,
            ),
        ]
        for s in self._services:
            s.startService()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        services, self._services = self._services, []
        return defer.DeferredList([s.stopService() for s in services], consumeErrors=True)

    @defer.inlineCallbacks
    def _hello(self, proto: RedisProtocol):
        if self.url.password is not None:
            auth = ("AUTH", self.url.username, self.url.password) if self.url.username else ("AUTH", self.url.password)
            yield proto.execute(*auth)
        if self.url.db:
            yield proto.execute("SELECT", self.url.db)
        # a link counts as up once the server answered (a stopped server's kernel still accepts)
        yield proto.execute("PING")

    @defer.inlineCallbacks
    def _prepare_command(self, proto: RedisProtocol):
        try:
            yield self._hello(proto)
        except RedisError as e:
            log.error("redis {url}: the connection was refused: {problem}", url=str(self.url), problem=str(e))
            proto.transport.loseConnection()
            raise
        self._command = proto
        proto.when_lost(lambda: self._command_lost(proto))
        log.info("redis {url}: connected", url=str(self.url))
        self._notify(True)

    def _command_lost(self, proto: RedisProtocol) -> None:
        if self._command is proto:
            self._command = None
            if self.running:
                log.warn("redis {url}: lost the connection; reconnecting", url=str(self.url))
            self._notify(False)

    @defer.inlineCallbacks
    def _prepare_subscriber(self, proto: RedisProtocol):
        try:
            yield self._hello(proto)
            for channel in list(self._subscriptions):
                yield proto.execute("SUBSCRIBE", channel)
        except RedisError:
            proto.transport.loseConnection()
            raise
        self._subscriber = proto
        proto.when_lost(lambda: self._subscriber_lost(proto))

    def _subscriber_lost(self, proto: RedisProtocol) -> None:
        if self._subscriber is proto:
            self._subscriber = None

    def _notify(self, up: bool) -> None:
        if self._up_gauge is not None:
            self._up_gauge.set(1 if up else 0)
        for listener in list(self._listeners):
            try:
                listener(up)
            except Exception:
                log.failure("redis {url}: a connection listener failed", url=str(self.url))

    def on_connection(self, callback: Callable[[bool], Any]) -> Callable[[], None]:
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    @property
    def connected(self) -> bool:
        return self._command is not None

    def when_connected(self) -> defer.Deferred:
        """Fires when both links are up (for tests and start-up; commands never wait for it)."""
        if not self._services:
            return defer.fail(RedisUnavailable("the redis client is not started"))
        return defer.gatherResults([s.whenConnected() for s in self._services], consumeErrors=True)

    # -- commands -----------------------------------------------------------------------------

    def _execute(self, *args: Any) -> defer.Deferred:
        proto = self._command
        if proto is None:
            d = defer.fail(RedisUnavailable(f"not connected to {self.url}"))
        else:
            d = proto.execute(*args)
        return d.addErrback(self._count)

    def execute(self, *args: Any) -> defer.Deferred:
        """Any command, its reply with bulk strings decoded (for what :class:`IRedis` lacks)."""
        return self._execute(*args).addCallback(_text)

    def ping(self) -> defer.Deferred:
        return self._execute("PING")

    def get(self, key: str) -> defer.Deferred:
        return self.execute("GET", key)

    def mget(self, *keys: str) -> defer.Deferred:
        if not keys:
            return defer.succeed([])
        return self.execute("MGET", *keys)

    def set(self, key: str, value: str, px: float | None = None, nx: bool = False) -> defer.Deferred:
        args: list[Any] = ["SET", key, value]
        if px is not None:
            args += ["PX", int(px)]
        if nx:
            args.append("NX")
        return self._execute(*args).addCallback(lambda reply: reply == "OK")

    def delete(self, *keys: str) -> defer.Deferred:
        return self._execute("DEL", *keys)

    def incr(self, key: str) -> defer.Deferred:
        return self._execute("INCR", key)

    def expire(self, key: str, seconds: float) -> defer.Deferred:
        return self._execute("PEXPIRE", key, max(1, int(seconds * 1000))).addCallback(bool)

    def pttl(self, key: str) -> defer.Deferred:
        return self._execute("PTTL", key)

    def hset(self, key: str, mapping: dict[str, str]) -> defer.Deferred:
        args: list[Any] = ["HSET", key]
        for field, value in mapping.items():
            args += [field, value]
        return self._execute(*args)

    def hgetall(self, key: str) -> defer.Deferred:
        def pairs(reply: list[str]) -> dict[str, str]:
            return dict(zip(reply[::2], reply[1::2]))

        return self.execute("HGETALL", key).addCallback(pairs)

    def sadd(self, key: str, *members: str) -> defer.Deferred:
        return self._execute("SADD", key, *members)

    def srem(self, key: str, *members: str) -> defer.Deferred:
        return self._execute("SREM", key, *members)

    def smembers(self, key: str) -> defer.Deferred:
        return self.execute("SMEMBERS", key).addCallback(set)

    @defer.inlineCallbacks
    def scan(self, pattern: str, count: int = 100):
        keys: set[str] = set()
        cursor = "0"
        while True:
            cursor, batch = yield self.execute("SCAN", cursor, "MATCH", pattern, "COUNT", count)
            keys.update(batch)
            if cursor == "0":
                return sorted(keys)

    def eval(self, script: Script, keys: Sequence[str] = (), args: Sequence[Any] = ()) -> defer.Deferred:
        def missing(failure):
            failure.trap(RedisReplyError)
            if failure.value.code != "NOSCRIPT":
                return failure
            return self._execute("EVAL", script.lua, len(keys), *keys, *args)

        d = self._execute("EVALSHA", script.sha, len(keys), *keys, *args)
        return d.addErrback(missing).addCallback(_text)

    def publish(self, channel: str, message: str) -> defer.Deferred:
        return self._execute("PUBLISH", channel, message)

    # -- subscriptions ------------------------------------------------------------------------

    def subscribe(self, channel: str, callback: Callable[[str, str], Any]) -> defer.Deferred:
        proto = self._subscriber
        if proto is None:
            return defer.fail(RedisUnavailable(f"not connected to {self.url} for subscriptions"))
        sub = _Subscription(self, channel, callback)
        subs = self._subscriptions.get(channel)
        if subs:
            subs.append(sub)
            return defer.succeed(sub)
        self._subscriptions[channel] = [sub]

        def refused(failure):
            subs = self._subscriptions.get(channel, [])
            if sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._subscriptions[channel]
            return failure

        return proto.execute("SUBSCRIBE", channel).addCallbacks(lambda _: sub, refused)

    def _unsubscribe(self, sub: _Subscription) -> defer.Deferred:
        subs = self._subscriptions.get(sub.channel, [])
        if sub in subs:
            subs.remove(sub)
        if subs or sub.channel not in self._subscriptions:
            return defer.succeed(None)
        del self._subscriptions[sub.channel]
        proto = self._subscriber
        if proto is None:
            return defer.succeed(None)  # the next connection does not subscribe it again
        return proto.execute("UNSUBSCRIBE", sub.channel).addErrback(lambda _: None)

    def _message(self, channel: bytes, data: bytes) -> None:
        try:
            name, text = channel.decode("utf-8"), data.decode("utf-8")
        except UnicodeDecodeError:
            log.warn("redis {url}: a message that is not UTF-8 on {channel!r}; ignored", url=str(self.url), channel=channel)
            return
        for sub in list(self._subscriptions.get(name, ())):
            try:
                result = sub.callback(name, text)
                if isinstance(result, defer.Deferred):
                    result.addErrback(
                        lambda f, name=name: log.failure("redis: a subscriber of {channel} failed", f, channel=name)
                    )
            except Exception:
                log.failure("redis: a subscriber of {channel} failed", channel=name)
