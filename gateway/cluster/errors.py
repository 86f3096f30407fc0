"""The typed errors of the cluster layer: what a caller can tell apart and act on.

Every Deferred of :mod:`gateway.cluster` fails with one of these (or with the
caller's own error, for a routed command the owner refused), never with a bare
socket error or a Redis reply string.
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "CommandTimeout",
    "LeaseLost",
    "NodeIdInUse",
    "OwnerDead",
    "RedisError",
    "RedisProtocolError",
    "RedisReplyError",
    "RedisTimeout",
    "RedisUnavailable",
    "RemoteCommandError",
]


class ClusterError(Exception):
    """The base of every error of the cluster layer."""


class RedisError(ClusterError):
    """A Redis command did not give a usable answer."""


class RedisUnavailable(RedisError):
    """Redis cannot be reached now (not connected, or the connection was lost mid-command).

    Raised promptly: a command never waits for a reconnection.
    """


class RedisTimeout(RedisUnavailable):
    """Redis did not answer within the command timeout; the connection is dropped and re-made."""


class RedisReplyError(RedisError):
    """Redis answered with an error reply (``-ERR ...``, ``-WRONGTYPE ...``, ``-NOSCRIPT ...``)."""

    @property
    def code(self) -> str:
        """The error's first word, e.g. ``WRONGTYPE`` or ``NOSCRIPT``."""
        return str(self).split(" ", 1)[0]


class RedisProtocolError(RedisError):
    """Redis (or something pretending to be it) sent bytes that are not RESP; the connection is dropped."""


class LeaseLost(ClusterError):
    """A lease is no longer held: its renewal was refused, or Redis stayed unreachable past its TTL."""


class NodeIdInUse(ClusterError):
    """Another live process already heartbeats under this ``[gateway] node`` id."""


class OwnerDead(ClusterError):
    """The node that owns a call is not alive (no heartbeat, or nobody listens on its command channel)."""

    def __init__(self, node: str, detail: str = ""):
        super().__init__(node, detail)
        self.node = node
        self.detail = detail

    def __str__(self) -> str:
        return f"owner node {self.node!r} is dead" + (f": {self.detail}" if self.detail else "")


class CommandTimeout(ClusterError):
    """A command routed to another node got no reply within the timeout."""

    def __init__(self, node: str, command: str, timeout: float):
        super().__init__(node, command, timeout)
        self.node = node
        self.command = command
        self.timeout = timeout

    def __str__(self) -> str:
        return f"no reply from node {self.node!r} to {self.command!r} within {self.timeout:g} s"


class RemoteCommandError(ClusterError):
    """The owner ran a routed command and it failed there with an error of ``kind`` (its class name)."""

    def __init__(self, node: str, kind: str, message: str):
        super().__init__(node, kind, message)
        self.node = node
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"node {self.node!r}: {self.kind}: {self.message}"
