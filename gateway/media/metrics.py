"""The media plane's Prometheus metrics: frames dropped by full port queues.

:func:`counted_ports` makes the daemon's port factory (``ctx.media_ports``):
every port it makes reports each frame its bounded queues drop (the oldest, when
full) to ``gateway_media_frames_dropped_total{where}``, ``where`` being
``playout`` (toward the party), ``inbound`` (from the party) or ``mix`` (the
party's queue into a conference, see :mod:`gateway.media.mixer`). Drops are
counted the moment they happen, so nothing is lost when a call ends and a
port moved to another call (a transfer) is still counted once.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from gateway.media.port import MediaPorts
from gateway.metrics import define_metric

__all__ = ["WHERE", "counted_ports"]

#: the queues of a port whose drops are counted
WHERE = ("playout", "inbound", "mix")


def counted_ports(registry: CollectorRegistry, queue_ms: int = 1000) -> MediaPorts:
    """A port factory with ``queue_ms`` queues whose drops are counted on ``registry``."""
    dropped = define_metric(registry, Counter, "media_frames_dropped",
                            "Frames dropped because a call leg's bounded media queue was full (oldest first), "
                            "by queue of the port.", ["where"])
    sides = {where: dropped.labels(where) for where in WHERE}  # every series exists from the start, at 0

    def on_drop(where: str, count: int) -> None:
        sides[where].inc(count)

    return MediaPorts(queue_ms, on_drop)
