"""Per-extension event channels: every node sees the call events of the desktop users it serves.

The node that owns a call publishes each of its events on ``ext:<extension>`` (Redis pub/sub); a
node serving that extension's desktop link (a Patriot operator, a CTI agent) subscribes to it. A
message is ``{"node": <origin>, "event": {...}}`` as JSON, so a node can skip what it published
itself (it already saw it locally).

Pub/sub keeps nothing: a subscriber whose Redis link was down misses what was published meanwhile.
A desktop adapter therefore takes the call records (:class:`gateway.cluster.calls.CallRecords`) as
the truth when its link comes back (``IRedis.on_connection``), and the events as the news.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from gateway.boundary import PeerDataError, load_json
from gateway.cluster import keys
from gateway.cluster.redis import IRedis

__all__ = ["ExtensionEvents"]

log = Logger()


class ExtensionEvents:
    """Publish and subscribe to the events of extensions, as node ``node``."""

    def __init__(self, redis: IRedis, node: str):
        self.redis = redis
        self.node = node

    def publish(self, extension: str, event: dict[str, Any]) -> defer.Deferred:
        """Publish ``event`` (a JSON object) to ``ext:<extension>``: fires with the number of nodes
        that received it; fails with a :class:`RedisError` (the caller's events are not lost
        locally: only the other nodes miss them)."""
        message = json.dumps({"node": self.node, "event": event}, separators=(",", ":"), ensure_ascii=False)
        return self.redis.publish(keys.extension_channel(extension), message)

    def subscribe(self, extension: str, callback: Callable[[str, str, dict[str, Any]], Any]) -> defer.Deferred:
        """Call ``callback(extension, origin node, event)`` for each event on ``ext:<extension>``
        (a message that is not one of ours is logged and dropped). Fires with an
        :class:`ISubscription` (``cancel()`` to stop)."""

        def received(channel: str, message: str) -> Any:
            try:
                obj = load_json(message)
                if not (isinstance(obj, dict) and isinstance(obj.get("node"), str) and isinstance(obj.get("event"), dict)):
                    raise ValueError('expected {"node": str, "event": object}')
            except (ValueError, PeerDataError) as e:
                log.warn("cluster: a message on {channel} is not an event: {problem}; dropped", channel=channel, problem=str(e))
                return None
            return callback(extension, obj["node"], obj["event"])

        return self.redis.subscribe(keys.extension_channel(extension), received)
