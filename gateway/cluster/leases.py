"""Leases with fencing tokens: one holder of a name at a time, across the cluster.

A lease is the key ``gw:lease:<name>`` holding ``<token>:<holder>`` with a TTL. Acquiring, renewing
and releasing are Lua scripts, so each is one atomic step: acquire sets the key only when it is
absent; renew and release act only when the key still holds *our* value. The fencing token comes
from ``INCR`` on ``gw:lease:<name>:token``, so it grows with every acquisition of that name; the
holder passes it along with what it does under the lease, and whoever receives work from two holders
trusts the larger token. When the counter is missing (first use, or a Redis that lost its data) it
is first set to Redis's clock in ms, so tokens still grow across a Redis restart.

:class:`Lease` holds one name: after :meth:`Lease.acquire` it renews every ``ttl / 3`` and learns it
lost the lease (``on_lost(lease, LeaseLost)``):

- at once when a renewal is *refused* (the key holds another value: it expired and was taken);
- when Redis stays unreachable (or silent) for 90% of the lease's TTL, counted on our own clock from
  the *sending* of the last renewal that succeeded, so we give it up before Redis expires it and
  another node can take it.

A renewal that finds the key *gone* while our TTL has not run out means Redis lost its data (a
restart without persistence): the lease is acquired again at once, with a new token
(``on_token(lease, token)``), or lost when another node was quicker.

:class:`LeaseCampaign` keeps trying to acquire a name while it does not hold it: the shape of a
singleton link (the HIS bridge, the chat link, a Patriot Desktop link), which another node takes
over within ``retry_interval`` plus the TTL when its holder dies, and within ``retry_interval`` when
the holder releases it (a drain hands its links over that way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.cluster import keys
from gateway.cluster.errors import LeaseLost, RedisError, RedisReplyError
from gateway.cluster.redis import IRedis, Script

__all__ = ["ACQUIRE", "Lease", "LeaseCampaign", "LeaseHolder", "RELEASE", "RENEW", "lease_holder", "lease_holders"]

log = Logger()


def _acquire(store, keys, args):
    current = store.get(keys[0])
    if current is not None:
        return [0, current]
    if not store.exists(keys[1]):
        store.set(keys[1], str(store.time_ms()))
    token = store.incr(keys[1])
    store.set(keys[0], f"{token}:{args[0]}", px=int(args[1]))
    return [1, str(token)]


#: KEYS: lease, counter; ARGV: holder, ttl ms -> {1, token} or {0, current value}
ACQUIRE = Script(
    "lease-acquire",
    """
    local current = redis.call('get', KEYS[1])
    if current then
      return {0, current}
    end
    if redis.call('exists', KEYS[2]) == 0 then
      local now = redis.call('time')
      redis.call('set', KEYS[2], string.format('%d', now[1] * 1000 + math.floor(now[2] / 1000)))
    end
    local token = redis.call('incr', KEYS[2])
    redis.call('set', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
    return {1, tostring(token)}
    """,
    _acquire,
)


def _renew(store, keys, args):
    current = store.get(keys[0])
    if current is None:
        return -1
    if current != args[0]:
        return 0
    store.pexpire(keys[0], int(args[1]))
    return 1


#: KEYS: lease; ARGV: our value, ttl ms -> 1 renewed, 0 held by another, -1 gone
RENEW = Script(
    "lease-renew",
    """
    local current = redis.call('get', KEYS[1])
    if not current then
      return -1
    end
    if current ~= ARGV[1] then
      return 0
    end
    redis.call('pexpire', KEYS[1], ARGV[2])
    return 1
    """,
    _renew,
)


def _release(store, keys, args):
    if store.get(keys[0]) != args[0]:
        return 0
    store.delete(keys[0])
    return 1


#: KEYS: lease; ARGV: our value -> 1 released, 0 not ours
RELEASE = Script(
    "lease-release",
    """
    if redis.call('get', KEYS[1]) ~= ARGV[1] then
      return 0
    end
    redis.call('del', KEYS[1])
    return 1
    """,
    _release,
)


@attrs.frozen
class LeaseHolder:
    """Who holds a lease now, with which fencing token, and for how much longer (ms)."""

    name: str
    holder: str
    token: int
    ttl_ms: int

    @classmethod
    def parse(cls, name: str, value: str, ttl_ms: int) -> "LeaseHolder | None":
        token, _, holder = value.partition(":")
        if not (token.isascii() and token.isdigit() and len(token) <= 20):  # not "²", not 5,000 digits
            return None
        return cls(name, holder, int(token), ttl_ms)


async def _holder(redis: IRedis, name: str) -> LeaseHolder | None:
    value = await redis.get(keys.lease(name))
    if value is None:
        return None
    return LeaseHolder.parse(name, value, await redis.pttl(keys.lease(name)))


def lease_holder(redis: IRedis, name: str) -> defer.Deferred:
    """The :class:`LeaseHolder` of ``name``, or None when nobody holds it."""
    return defer.ensureDeferred(_holder(redis, name))


async def _holders(redis: IRedis) -> list[LeaseHolder]:
    found = []
    for key in await redis.scan(keys.LEASE + "*"):
        if key.endswith(":token"):
            continue
        try:
            holder = await _holder(redis, key[len(keys.LEASE) :])
        except RedisReplyError as e:  # e.g. WRONGTYPE: a key of another kind under a lease's name
            log.warn("cluster: {key} is unreadable ({problem}); not listed among the leases", key=key, problem=str(e))
            continue
        if holder is not None:
            found.append(holder)
    return found


def lease_holders(redis: IRedis) -> defer.Deferred:
    """Every lease held now (for ``/api/cluster``), sorted by name."""
    return defer.ensureDeferred(_holders(redis))


class Lease:
    """One lease name as seen by one would-be holder (see the module docstring)."""

    def __init__(
        self,
        redis: IRedis,
        clock,
        name: str,
        holder: str,
        *,
        ttl: float = 5.0,
        renew_interval: float | None = None,
        on_lost: Callable[["Lease", LeaseLost], Any] | None = None,
        on_token: Callable[["Lease", int], Any] | None = None,
    ):
        if not name or name.endswith(":token"):
            raise ValueError(f"bad lease name {name!r}")
        self.redis = redis
        self.clock = clock
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.renew_interval = renew_interval if renew_interval is not None else ttl / 3
        self.on_lost = on_lost
        self.on_token = on_token
        self.token: int | None = None
        self._value: str | None = None
        self._loop: task.LoopingCall | None = None
        self._expiry: Any = None
        self._renewing = False

    @property
    def held(self) -> bool:
        return self.token is not None

    @property
    def valid_until(self) -> float | None:
        """The time (on our clock) until which the lease is surely ours; None when not held. A
        process that was paused may find it past before its expiry timer has run."""
        if not self.held or self._expiry is None:
            return None
        return self._expiry.getTime()

    def check(self) -> int:
        """The fencing token; raises :class:`LeaseLost` when the lease is not held."""
        if self.token is None:
            raise LeaseLost(f"lease {self.name!r} is not held by {self.holder!r}")
        return self.token

    # -- acquire ------------------------------------------------------------------------------

    def acquire(self) -> defer.Deferred:
        """Try once: fires True (held; renewing from now on) or False (another holds it).
        Fails with a :class:`RedisError` when Redis cannot be asked."""
        return defer.ensureDeferred(self._acquire())

    async def _acquire(self) -> bool:
        if self.held:
            return True
        sent = self.clock.seconds()
        ok, value = await self.redis.eval(
            ACQUIRE, [keys.lease(self.name), keys.lease_token(self.name)], [self.holder, self._ttl_ms()]
        )
        if not ok:
            return False
        self._got(int(value), sent)
        self._loop = task.LoopingCall(self._renew_tick)
        self._loop.clock = self.clock
        self._loop.start(self.renew_interval, now=False).addErrback(
            lambda f: log.failure("lease {name}: the renewal loop failed", f, name=self.name)
        )
        log.info("lease {name}: held by {holder} with token {token}", name=self.name, holder=self.holder, token=self.token)
        return True

    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    def _got(self, token: int, sent: float) -> None:
        self.token = token
        self._value = f"{token}:{self.holder}"
        self._valid_from(sent)

    def _valid_from(self, sent: float) -> None:
        """The lease is ours until ``sent + ttl`` less a tenth by our clock (Redis keeps it at least
        until ``sent + ttl``): we give it up a little before anyone else can take it."""
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        delay = max(0.0, sent + self.ttl * 0.9 - self.clock.seconds())
        self._expiry = self.clock.callLater(delay, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self._lose(f"not renewed within its TTL ({self.ttl:g} s): redis unreachable or silent")

    # -- renew --------------------------------------------------------------------------------

    def _renew_tick(self) -> None:
        if self._renewing or not self.held:
            return  # one renewal in flight at a time (a silent Redis is the expiry timer's job)
        self._renewing = True
        d = self.renew()
        d.addBoth(self._renewed)

    def _renewed(self, result: Any) -> None:
        self._renewing = False

    def renew(self) -> defer.Deferred:
        """Renew now: fires True when renewed, False when the lease is lost (``on_lost`` was told).
        A renewal Redis cannot answer fires False too, but the lease stays held until its TTL."""
        return defer.ensureDeferred(self._renew())

    async def _renew(self) -> bool:
        if not self.held:
            return False
        value, sent = self._value, self.clock.seconds()
        try:
            result = await self.redis.eval(RENEW, [keys.lease(self.name)], [value, self._ttl_ms()])
        except RedisError as e:
            log.warn("lease {name}: renewal failed ({problem}); held until its TTL runs out", name=self.name, problem=str(e))
            return False
        if value != self._value:
            return self.held  # released or lost (and maybe acquired again) meanwhile
        if result == 1:
            self._valid_from(sent)
            return True
        if result == 0:
            self._lose("taken by another holder (it expired)")
            return False
        return await self._reacquire()

    async def _reacquire(self) -> bool:
        """The key is gone while our TTL runs: Redis lost its data. Acquire it again if we can."""
        sent = self.clock.seconds()
        try:
            ok, value = await self.redis.eval(
                ACQUIRE, [keys.lease(self.name), keys.lease_token(self.name)], [self.holder, self._ttl_ms()]
            )
        except RedisError as e:
            log.warn("lease {name}: could not take it again ({problem})", name=self.name, problem=str(e))
            return False
        if not self.held:
            return False
        if not ok:
            self._lose("gone from redis (it lost its data) and taken by another holder")
            return False
        self._got(int(value), sent)
        log.warn("lease {name}: was gone from redis (it lost its data); held again with token {token}",
                 name=self.name, token=self.token)
        if self.on_token is not None:
            self.on_token(self, self.token)
        return True

    # -- lose / release -----------------------------------------------------------------------

    def _stop_timers(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    def _lose(self, why: str) -> None:
        if not self.held:
            return
        token = self.token
        self._stop_timers()
        self.token = None
        self._value = None
        log.warn("lease {name}: lost by {holder} (token {token}): {why}", name=self.name, holder=self.holder, token=token, why=why)
        if self.on_lost is not None:
            self.on_lost(self, LeaseLost(f"lease {self.name!r} (token {token}) lost: {why}"))

    def release(self) -> defer.Deferred:
        """Give the lease up (``on_lost`` is not called); fires when Redis was told, never fails."""
        if not self.held:
            return defer.succeed(None)
        value = self._value
        self._stop_timers()
        self.token = None
        self._value = None
        d = self.redis.eval(RELEASE, [keys.lease(self.name)], [value])

        def failed(failure):
            failure.trap(RedisError)
            log.warn("lease {name}: release not sent ({problem}); it expires by itself",
                     name=self.name, problem=str(failure.value))

        return d.addCallbacks(lambda _: None, failed)


class LeaseCampaign:
    """Hold ``name`` whenever possible: try every ``retry_interval`` while not held.

    ``on_acquired(lease)`` when it is ours (start the link, with ``lease.token``), ``on_lost(lease,
    error)`` when it is not any more (stop the link at once). :meth:`stop` releases it, after
    ``on_releasing(lease)`` (close the link; a Deferred is waited for) when it is held.
    """

    def __init__(
        self,
        redis: IRedis,
        clock,
        name: str,
        holder: str,
        *,
        ttl: float = 5.0,
        retry_interval: float = 1.0,
        on_acquired: Callable[[Lease], Any] | None = None,
        on_lost: Callable[[Lease, LeaseLost], Any] | None = None,
        on_releasing: Callable[[Lease], Any] | None = None,
    ):
        self.clock = clock
        self.retry_interval = retry_interval
        self.on_acquired = on_acquired
        self.on_lost_callback = on_lost
        self.on_releasing = on_releasing
        self.lease = Lease(redis, clock, name, holder, ttl=ttl, on_lost=self._lost)
        self._loop: task.LoopingCall | None = None
        self._trying = False
        #: the acquisition under way (stop() waits for it), and whether stop() was called since start()
        self._attempt: defer.Deferred | None = None
        self._stopped = False

    @property
    def held(self) -> bool:
        return self.lease.held

    def start(self) -> None:
        self._stopped = False
        self._loop = task.LoopingCall(self._try)
        self._loop.clock = self.clock
        self._loop.start(self.retry_interval, now=True)

    def _try(self) -> None:
        if self.lease.held or self._trying:
            return
        self._trying = True
        d = self.lease.acquire()

        def done(ok):
            self._trying = False
            if self._stopped:
                return  # stopped while Redis was asked: stop() releases what it got, nobody uses it
            if ok and self.on_acquired is not None and self.lease.held:
                self.on_acquired(self.lease)

        def failed(failure):
            self._trying = False
            failure.trap(RedisError)
            log.debug("lease {name}: cannot campaign now: {problem}", name=self.lease.name, problem=str(failure.value))

        self._attempt = d.addCallbacks(done, failed).addErrback(
            lambda f: log.failure("lease {name}: on_acquired failed", f, name=self.lease.name)
        )

    def _lost(self, lease: Lease, error: LeaseLost) -> None:
        if self.on_lost_callback is not None:
            self.on_lost_callback(lease, error)

    def stop(self) -> defer.Deferred:
        """Stop campaigning and release the lease (another node takes it on its next try).

        When it is held, ``on_releasing(lease)`` runs first and the release waits for the Deferred it
        may return (a singleton link is closed before another node may open it); never fails."""
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._trying and self._attempt is not None:
            # an acquisition is on its way: whatever it gets is released, never handed to on_acquired
            attempt, waited = self._attempt, defer.Deferred()
            attempt.addBoth(lambda result: (waited.callback(None), result)[1])
            return waited.addCallback(lambda _: self.lease.release())
        if not self.lease.held or self.on_releasing is None:
            return self.lease.release()
        d = defer.maybeDeferred(self.on_releasing, self.lease)
        d.addErrback(lambda f: log.failure("lease {name}: on_releasing failed", f, name=self.lease.name))
        return d.addCallback(lambda _: self.lease.release())
