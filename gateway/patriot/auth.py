"""Logging Patriot in to the Dialler Bridge: the init-request check, and refusing guessing addresses.

:class:`Authenticator` checks an ``init-request`` payload against ``[[patriot.bridge.users]]``.
The payload is whatever the Patriot administrator configured; the user name and password are
read from the keys ``username_field`` and ``password_field`` (``userName`` and ``password``, as in
the vendor's example). Passwords are compared in constant time, and an unknown user costs as much
as a known one (a decoy is checked), so neither the answer nor its timing tells which one was
wrong. Hash checks are slow on purpose, so they run through ``run_blocking`` (a thread pool in
the daemon).

:class:`AddressGuard` counts failed inits per source address: after ``max_failures`` within
``block_time`` seconds the address is refused for ``block_time`` seconds.
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet import defer

from gateway.patriot import hashpw
from gateway.patriot.config import BridgeUser

#: the one reason given to Patriot for a wrong user name or password
BAD_CREDENTIALS = "invalid user name or password"


class InitRefused(Exception):
    """An init-request that does not log in; ``str()`` is the error sent back to Patriot."""


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
        user = self._users.get(username)
        stored = user.password.reveal() if user is not None else self._decoy
        checked = self._run_blocking(hashpw.verify_password, password, stored)
        return checked.addCallback(self._verdict, user)

    @staticmethod
    def _verdict(matches: bool, user: BridgeUser | None) -> BridgeUser:
        if not matches or user is None:
            raise InitRefused(BAD_CREDENTIALS)
        return user


class AddressGuard:
    """Failed logins per source address, and the addresses refused for a while because of them."""

    def __init__(self, clock, *, max_failures: int, block_time: float):
        self._clock = clock
        self._max_failures = max_failures
        self._block_time = block_time
        #: address -> (failures, time of the first one)
        self._failures: dict[str, tuple[int, float]] = {}
        #: address -> time the block ends
        self._blocked: dict[str, float] = {}

    def _forget_old(self) -> None:
        now = self._clock.seconds()
        self._blocked = {a: until for a, until in self._blocked.items() if until > now}
        self._failures = {a: f for a, f in self._failures.items() if now - f[1] < self._block_time}

    def blocked(self, address: str) -> bool:
        """Whether ``address`` is refused now."""
        self._forget_old()
        return address in self._blocked

    def failed(self, address: str) -> bool:
        """Count a failed login; ``True`` if ``address`` is refused from now on."""
        self._forget_old()
        count, first = self._failures.get(address, (0, self._clock.seconds()))
        count += 1
        if count < self._max_failures:
            self._failures[address] = (count, first)
            return False
        self._failures.pop(address, None)
        self._blocked[address] = self._clock.seconds() + self._block_time
        return True

    def succeeded(self, address: str) -> None:
        """A successful login forgets the address's failures."""
        self._failures.pop(address, None)

    def to_dict(self) -> dict:
        self._forget_old()
        now = self._clock.seconds()
        return {"blocked": {a: round(until - now, 1) for a, until in sorted(self._blocked.items())}}
