"""The ``[cluster]`` section: absent, the gateway is one process without Redis (the default).

Present, this process is a node of a cluster whose shared state is in the Redis of ``redis``; the
node's id is ``[gateway] node``, which must be unique in the cluster. See ``docs/cluster.md``.
"""

from __future__ import annotations

import attrs

from gateway.cluster.redis import RedisURL
from gateway.confschema import ConfigError, check, section

__all__ = ["ClusterConfig"]


def _redis_url(instance, attribute, value: str) -> None:
    try:
        RedisURL.parse(value)
    except ValueError as e:
        raise ConfigError(attribute.name, str(e)) from None


def _seconds(low: float, high: float):
    return check(lambda v: low <= v <= high, f"must be between {low:g} and {high:g} seconds, got {{value!r}}")


@section
class ClusterConfig:
    #: redis://[[user]:password@]host[:port][/db]; never shown by repr (it may hold a password)
    redis: str = attrs.field(validator=_redis_url, repr=False)
    #: seconds a draining node's live calls may go on before the rest end with cause drain_forced
    drain_timeout: float = attrs.field(default=60.0, validator=_seconds(0, 86400))
    #: a node is dead this long after its last heartbeat (it beats every third of it)
    node_ttl: float = attrs.field(default=5.0, validator=_seconds(1, 300))
    #: the TTL of the leases of the singleton links (HIS bridge, chat, each Patriot Desktop)
    lease_ttl: float = attrs.field(default=5.0, validator=_seconds(1, 300))
    #: a command routed to a call's owner fails with CommandTimeout after this long
    command_timeout: float = attrs.field(default=2.0, validator=_seconds(0.1, 60))
    #: a Redis command fails with RedisTimeout after this long (the link is then made again)
    redis_timeout: float = attrs.field(default=2.0, validator=_seconds(0.1, 60))
