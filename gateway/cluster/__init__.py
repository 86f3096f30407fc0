"""The cluster layer: many gateway processes and machines as one gateway, on Redis (issue 15).

Built on :class:`IRedis` (the real :class:`RedisClient`, the shipped fake in
:mod:`gateway.cluster.testing`). See ``docs/cluster.md``.
"""

from gateway.cluster.errors import (
    ClusterError,
    CommandTimeout,
    LeaseLost,
    NodeIdInUse,
    OwnerDead,
    RedisError,
    RedisProtocolError,
    RedisReplyError,
    RedisTimeout,
    RedisUnavailable,
    RemoteCommandError,
)
from gateway.cluster.redis import IRedis, ISubscription, RedisClient, RedisURL, Script

__all__ = [
    "ClusterError",
    "CommandTimeout",
    "IRedis",
    "ISubscription",
    "LeaseLost",
    "NodeIdInUse",
    "OwnerDead",
    "RedisClient",
    "RedisError",
    "RedisProtocolError",
    "RedisReplyError",
    "RedisTimeout",
    "RedisURL",
    "RedisUnavailable",
    "RemoteCommandError",
    "Script",
]
