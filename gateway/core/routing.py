"""Inbound routing: which extension or media app a DID's calls go to.

``[[routes]]`` entries name a DID (an exact number, or ``*`` for any other)
and a target, ``extension:<id>`` or ``app:<name>[:<arg>]``. An exact DID wins
over ``*``; among equal DIDs the first entry wins. The router is built once at
start-up and refuses a route to a media app that no plugin provides, so a typo
fails the start instead of every call.
"""

from __future__ import annotations

import typing

import attrs

from gateway.confschema import ConfigError

__all__ = ["Router", "Target", "WILDCARD"]

WILDCARD = "*"


@attrs.frozen
class Target:
    """Where a call goes: ``kind`` is ``extension`` or ``app``."""

    kind: str
    name: str
    arg: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Target":
        """``extension:1001``, ``app:echo``, ``app:play:welcome.wav``."""
        kind, _, rest = text.partition(":")
        if kind == "app":
            name, sep, arg = rest.partition(":")
            return cls(kind, name, arg if sep else None)
        return cls(kind, rest)


class RouteEntry(typing.Protocol):
    """One configured route (``gateway.config.Route``)."""

    @property
    def did(self) -> str: ...

    @property
    def to(self) -> str: ...


class Router:
    """DID -> :class:`Target` for the configured routes."""

    def __init__(self, routes: typing.Iterable[RouteEntry], app_names: typing.Iterable[str] = ()) -> None:
        """``routes``: objects with ``did`` and ``to`` (``gateway.config.Route``);
        ``app_names``: the media apps available (a route to another app raises ConfigError)."""
        known = set(app_names)
        self._exact: dict[str, Target] = {}
        self._wildcard: Target | None = None
        for index, route in enumerate(routes):
            target = Target.parse(route.to)
            if target.kind == "app" and target.name not in known:
                choices = ", ".join(sorted(known)) or "none"
                raise ConfigError(f"routes[{index}].to", f"unknown media app {target.name!r} (known: {choices})")
            if route.did == WILDCARD:
                self._wildcard = self._wildcard or target
            else:
                self._exact.setdefault(route.did, target)

    def route(self, did: str | None) -> Target | None:
        """The target for ``did``, or None when no route matches."""
        return self._exact.get(did or "", self._wildcard)
