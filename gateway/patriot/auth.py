"""Logging Patriot in to the Dialler Bridge: the init-request check, and refusing guessing addresses.

:class:`Authenticator` checks an ``init-request`` payload against ``[[patriot.bridge.users]]``.
The payload is whatever the Patriot administrator configured; the user name and password are
read from the keys ``username_field`` and ``password_field`` (``userName`` and ``password``, as in
the vendor's example). Passwords are compared in constant time, and an unknown user costs as much
as a known one (a decoy is checked), so neither the answer nor its timing tells which one was
wrong. Hash checks are slow on purpose, so they run through ``run_blocking`` (a thread pool in
the daemon). Checking never raises: a user name or password that is not valid text is refused
naming the field, and a stored hash that cannot be checked is logged and refused.

:class:`AddressGuard` is the lockout, per source address across all its connections (an IPv6
address counts by its /64 network, which one host usually owns whole):

- each failed init (a wrong password, and equally an init-request without usable credentials)
  counts; failures older than ``block_time`` seconds (from the first one counted) are forgotten;
  a successful init does *not* forget them, or one valid login would buy more guesses at others;
- the address's password checks run one at a time (:meth:`AddressGuard.turn`), so that however
  many connections it opens, no check starts before the verdict of the one before is counted:
  at most ``max_failures`` wrong passwords are ever checked before the address is locked out;
- at ``max_failures`` failures the address is locked out for ``block_time`` seconds (from then,
  by the clock; refused inits do not extend it): the ``on_lockout`` callback (the bridge closes
  every unauthenticated connection of the address) runs, waiting checks are refused, and new
  inits and handshakes from it are refused until the lockout ends;
- the table is bounded: idle entries expire, and past ``max_addresses`` the oldest entry that is
  neither locked out nor busy with a check is dropped to make room. A lockout is never dropped
  before it ends: when only lockouts (and checks) are left, a new address is refused as if
  locked out (:class:`TableFull`) until the first lockout ends: the guard fails closed.
"""

from __future__ import annotations

import collections
import ipaddress
import os
from itertools import islice as itertools_islice
from typing import Callable

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from gateway.boundary import RateLimitedLog, bad_text_field
from gateway.patriot import hashpw
from gateway.patriot.config import BridgeUser

log = Logger()

#: the one reason given to Patriot for a wrong user name or password
BAD_CREDENTIALS = "invalid user name or password"


#: the error sent back when the password could not be checked (a stored hash that cannot be read)
UNCHECKABLE = "the init-request could not be checked"


class InitRefused(Exception):
    """An init-request that does not log in; ``str()`` is the error sent back to Patriot."""


class AddressLockedOut(InitRefused):
    """The init came from an address locked out for too many failed inits."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        super().__init__(self.reason(max(seconds, 1)))

    @staticmethod
    def reason(seconds: float) -> str:
        return f"too many failed init-requests from this address; try again in {seconds:.0f} s"


class TableFull(AddressLockedOut):
    """The init came from an address with no entry in the lockout table, and there is no room for
    one without forgetting a lockout: refused as if locked out until the first lockout ends."""

    @staticmethod
    def reason(seconds: float) -> str:
        return f"too many addresses are locked out to take another; try again in {seconds:.0f} s"


class Authenticator:
    """Checks init-request payloads against the configured users."""

    def __init__(self, users: list[BridgeUser], *, username_field: str, password_field: str,
                 run_blocking: Callable[..., defer.Deferred]):
        self._users = {user.username: user for user in users}
        self._username_field = username_field
        self._password_field = password_field
        self._run_blocking = run_blocking
        self._decoy = self._make_decoy(users)

    @staticmethod
    def _make_decoy(users) -> str:
        """What an unknown user's password is checked against: a hash if any user has one."""
        secret = os.urandom(16).hex()
        if any(hashpw.is_hash(user.password.reveal()) for user in users):
            return hashpw.hash_password(secret)
        return secret

    def check(self, payload: dict) -> defer.Deferred:
        """Fires with the :class:`BridgeUser` the payload logs in as, or fails with :class:`InitRefused`."""
        username = payload.get(self._username_field)
        password = payload.get(self._password_field)
        if not isinstance(username, str) or not isinstance(password, str):
            return defer.fail(InitRefused(
                f"the init payload needs the strings {self._username_field!r} and {self._password_field!r}"
            ))
        bad = bad_text_field({self._username_field: username, self._password_field: password})
        if bad is not None:
            return defer.fail(InitRefused(f"the init payload's {bad!r} is not valid Unicode text"))
        user = self._users.get(username)
        stored = user.password.reveal() if user is not None else self._decoy
        checked = self._run_blocking(hashpw.verify_password, password, stored)
        return checked.addCallbacks(self._verdict, self._uncheckable, callbackArgs=(user,), errbackArgs=(username,))

    @staticmethod
    def _verdict(matches: bool, user: BridgeUser | None) -> BridgeUser:
        if not matches or user is None:
            raise InitRefused(BAD_CREDENTIALS)
        return user

    @staticmethod
    def _uncheckable(failure, username: str) -> None:
        failure.trap(ValueError, TypeError, OverflowError, MemoryError)
        log.error("Patriot Dialler Bridge: the password of user {user!r} could not be checked: {error}",
                  user=username, error=str(failure.value) or type(failure.value).__name__)
        raise InitRefused(UNCHECKABLE)


def address_key(host: str) -> str:
    """What failures are counted under: the address itself, or an IPv6 address's /64 network."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


@attrs.define(eq=False)
class _Address:
    """One address's failures, lockout, and the password checks in progress or waiting."""

    failures: int = 0
    #: when the first failure counted was
    since: float = 0.0
    #: when the lockout ends (None: not locked out)
    locked_until: float | None = None
    checking: bool = False
    waiting: collections.deque = attrs.field(factory=collections.deque)
    #: handshakes refused during the current lockout
    refusals: int = 0

    @property
    def busy(self) -> bool:
        """A password check is in progress or waiting: the entry is needed to finish it."""
        return self.checking or bool(self.waiting)

    def idle(self, now: float, window: float) -> bool:
        """Nothing left to remember (the entry may go)."""
        if self.busy:
            return False
        if self.locked_until is not None and self.locked_until > now:
            return False
        return self.failures == 0 or now - self.since >= window


class AddressGuard:
    """Failed logins per source address, the lockout they lead to, and one password check at a time.

    The table holds at most ``max_addresses`` entries. Entries not locked out are kept least
    recently changed first, locked-out ones apart, in the order their lockouts end. To make room
    for a new address, expired entries go first, then the oldest entry that is neither locked out
    nor busy with a password check (forgetting a few failures of an address that is not locked
    out). A lockout is never forgotten before it ends: when only locked-out (or busy) entries are
    left, a new address is refused as if it were locked out (:class:`TableFull`) until the first
    lockout ends. Lifting a lockout by spraying failures from other addresses is not possible.
    """

    def __init__(self, clock, *, max_failures: int, block_time: float, max_addresses: int = 10000,
                 on_lockout: Callable[[str, float], None] | None = None):
        self._clock = clock
        self._max_failures = max_failures
        self._block_time = block_time
        self._max_addresses = max_addresses
        #: called with (address key, seconds) when an address is locked out
        self.on_lockout = on_lockout
        #: address key -> its entry, for addresses not locked out, least recently changed first
        self._entries: collections.OrderedDict[str, _Address] = collections.OrderedDict()
        #: address key -> its entry, for locked-out addresses, in the order their lockouts end
        self._locked: collections.OrderedDict[str, _Address] = collections.OrderedDict()
        #: the log lines about entries dropped for room (the first few, then a summary a minute)
        self._evictions_log = RateLimitedLog(clock, log)

    def __len__(self) -> int:
        return len(self._entries) + len(self._locked)

    # -- the table

    def _now(self) -> float:
        return self._clock.seconds()

    def _unlock(self, key: str, entry: _Address, now: float) -> None:
        """``entry``'s lockout has ended: its failures are forgotten; it stays only if busy."""
        del self._locked[key]
        entry.locked_until, entry.failures, entry.refusals = None, 0, 0
        if not entry.idle(now, self._block_time):
            self._entries[key] = entry

    def _current(self, key: str) -> _Address | None:
        """The entry of ``key`` with what has expired forgotten (None if nothing is left)."""
        now = self._now()
        entry = self._locked.get(key)
        if entry is not None:
            if entry.locked_until > now:
                return entry
            self._unlock(key, entry, now)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.failures and now - entry.since >= self._block_time:
            entry.failures = 0
        if entry.idle(now, self._block_time):
            del self._entries[key]
            return None
        return entry

    def _entry(self, key: str) -> _Address | None:
        """The entry of ``key``, made (room made first) if there is none, and marked as the newest.

        ``None`` if there is no entry and no room for one (the table is full of lockouts and checks).
        """
        entry = self._current(key)
        if entry is not None:
            if key in self._entries:
                self._entries.move_to_end(key)
            return entry
        self._expire()
        if len(self) >= self._max_addresses and not self._evict():
            return None
        entry = self._entries[key] = _Address()
        return entry

    def _expire(self, budget: int = 64) -> None:
        """Drop ended lockouts, and expired entries from the oldest end (a few per call: the cost stays constant)."""
        now = self._now()
        for key in list(itertools_islice(self._locked, budget)):
            entry = self._locked[key]
            if entry.locked_until > now:
                break
            self._unlock(key, entry, now)
        for key in list(itertools_islice(self._entries, budget)):
            entry = self._entries[key]
            if not entry.idle(now, self._block_time):
                break
            del self._entries[key]

    def _evictable(self) -> str | None:
        """The oldest entry that may be forgotten: not locked out, no check in progress or waiting."""
        # only busy entries are skipped: as many as addresses with an init being checked right now
        for key, entry in self._entries.items():
            if not entry.busy:
                return key
        return None

    def _evict(self) -> bool:
        """The table is full: drop the oldest evictable entry (logged, rate-limited); ``False`` if none."""
        key = self._evictable()
        if key is None:
            return False
        del self._entries[key]
        self._evictions_log.emit(
            "Patriot Dialler Bridge: failed inits from more than {max_addresses} addresses "
            "(max_tracked_addresses); forgot those of {address}, the oldest not locked out{more}",
            summary="Patriot Dialler Bridge: forgot the failed inits of {count} more addresses in the last "
                    "{seconds:.0f} s to make room (the latest {address})",
            max_addresses=self._max_addresses, address=key)
        return True

    def _full_for(self) -> float:
        """Seconds until the first lockout ends (and makes room), when no entry can make room."""
        for entry in self._locked.values():
            return max(entry.locked_until - self._now(), 0.0)
        return self._block_time  # only checks in progress: no end known

    # -- questions

    def lockout(self, host: str) -> AddressLockedOut | None:
        """Why inits and handshakes from ``host`` are refused now (None: they are not).

        :class:`AddressLockedOut` while its address is locked out; :class:`TableFull` when it has
        no entry and there is no room to make one without forgetting a lockout.
        """
        key = address_key(host)
        entry = self._current(key)
        if entry is not None:
            if entry.locked_until is None:
                return None
            return AddressLockedOut(entry.locked_until - self._now())
        self._expire()
        if len(self) < self._max_addresses or self._evictable() is not None:
            return None
        return TableFull(self._full_for())

    def locked_out(self, host: str) -> float:
        """Seconds ``host``'s inits stay refused (0.0: they are not)."""
        refusal = self.lockout(host)
        return refusal.seconds if refusal is not None else 0.0

    def blocked(self, host: str) -> bool:
        """Whether ``host`` is refused now."""
        return self.lockout(host) is not None

    def refused(self, host: str) -> int:
        """Count a handshake refused because ``host`` is locked out; how many this lockout has refused so far."""
        entry = self._current(address_key(host))
        if entry is None or entry.locked_until is None:
            return 0
        entry.refusals += 1
        return entry.refusals

    # -- password checks, one at a time per address

    def turn(self, host: str) -> defer.Deferred:
        """Fires when ``host`` may check a password; fails with :class:`AddressLockedOut` if refused.

        The caller must end its turn with :meth:`done`. Cancelling the Deferred gives up the place.
        """
        key = address_key(host)
        refusal = self.lockout(host)
        if refusal is not None:
            return defer.fail(refusal)
        entry = self._entry(key)
        if entry is None:  # lockout() said there was room: not reached, but never forget a lockout
            return defer.fail(TableFull(self._full_for()))
        if not entry.checking:
            entry.checking = True
            return defer.succeed(None)

        def cancel(waiter):
            if waiter in entry.waiting:
                entry.waiting.remove(waiter)

        waiter = defer.Deferred(cancel)
        entry.waiting.append(waiter)
        return waiter

    def done(self, host: str, verdict: str) -> bool:
        """End ``host``'s turn: ``verdict`` is ``success``, ``failure`` or ``error`` (not a verdict).

        ``True`` if the address is locked out by this failure.
        """
        key = address_key(host)
        entry = self._current(key)
        if entry is None:  # not reached (a busy entry is never dropped); count the failure anyway
            return self.failed(host) if verdict == "failure" else False
        entry.checking = False
        locked = self._count(key, entry) if verdict == "failure" else False
        if not locked:
            self._next(entry)
        return locked

    def failed(self, host: str) -> bool:
        """Count a failed init that checked no password; ``True`` if the address is locked out by it.

        With no room to remember the address (see :meth:`lockout`, which callers ask first) nothing
        is counted and ``False`` is returned.
        """
        key = address_key(host)
        entry = self._entry(key)
        if entry is None:
            return False
        return self._count(key, entry)

    def _count(self, key: str, entry: _Address) -> bool:
        now = self._now()
        if entry.locked_until is not None and entry.locked_until > now:
            return False
        if not entry.failures or now - entry.since >= self._block_time:
            entry.failures, entry.since = 0, now
        entry.failures += 1
        if key in self._entries:
            self._entries.move_to_end(key)
        if entry.failures < self._max_failures:
            return False
        entry.locked_until, entry.refusals = now + self._block_time, 0
        self._entries.pop(key, None)
        self._locked[key] = entry
        waiting, entry.waiting = entry.waiting, collections.deque()
        for waiter in waiting:
            waiter.errback(AddressLockedOut(self._block_time))
        if self.on_lockout is not None:
            self.on_lockout(key, self._block_time)
        return True

    def _next(self, entry: _Address) -> None:
        """Give the turn to the next waiting check, if any."""
        if entry.waiting:
            entry.checking = True
            entry.waiting.popleft().callback(None)

    # -- status

    def to_dict(self) -> dict:
        now = self._now()
        blocked = {key: round(entry.locked_until - now, 1) for key, entry in self._locked.items()
                   if entry.locked_until > now}
        return {"blocked": dict(sorted(blocked.items())), "tracked_addresses": len(self)}
