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
from gateway.cluster.calls import CallRecord, CallRecords, NodeLostSweeper
from gateway.cluster.commands import CommandRouter
from gateway.cluster.events import ExtensionEvents
from gateway.cluster.leases import Lease, LeaseCampaign, LeaseHolder, lease_holder, lease_holders
from gateway.cluster.node import ClusterNode
from gateway.cluster.nodes import NodeHeartbeat, NodeInfo, NodeRegistry, least_loaded
from gateway.cluster.redis import IRedis, ISubscription, RedisClient, RedisURL, Script

__all__ = [
    "CallRecord",
    "CallRecords",
    "ClusterError",
    "ClusterNode",
    "CommandRouter",
    "CommandTimeout",
    "ExtensionEvents",
    "IRedis",
    "ISubscription",
    "Lease",
    "LeaseCampaign",
    "LeaseHolder",
    "LeaseLost",
    "NodeHeartbeat",
    "NodeIdInUse",
    "NodeInfo",
    "NodeLostSweeper",
    "NodeRegistry",
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
    "least_loaded",
    "lease_holder",
    "lease_holders",
]
