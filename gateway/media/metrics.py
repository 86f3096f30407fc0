"""The media plane's Prometheus metrics: frames dropped by full port queues.

:func:`counted_ports` makes the daemon's port factory (``ctx.media_ports``):
every port it makes reports each frame its bounded queues drop (the oldest, when
full) to ``gateway_media_frames_dropped_total{where}``, ``where`` being
``playout`` (toward the party), ``inbound`` (from the party) or ``mix`` (the
party's queue into a conference, see :mod:`gateway.media.mixer`), or, for the
playout's jitter buffer bringing a live backlog back to its target,
``trim_silence`` (a silent frame) or ``trim_oldest``. Drops are
counted the moment they happen, so nothing is lost when a call ends and a
port moved to another call (a transfer) is still counted once.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from gateway.media.port import MediaPorts
from gateway.metrics import define_metric

__all__ = ["TRIM_WHERE", "WHERE", "counted_ports"]

#: the queues of a port whose drops are counted
WHERE = ("playout", "inbound", "mix")
#: the playout jitter buffer's trims, whose series appear with the first trim
TRIM_WHERE = ("trim_silence", "trim_oldest")


def counted_ports(registry: CollectorRegistry, queue_ms: int = 1000, jitter_ms: int = 0) -> MediaPorts:
    """A port factory with ``queue_ms`` queues and a ``jitter_ms`` target whose drops are counted on ``registry``."""
    dropped = define_metric(registry, Counter, "media_frames_dropped",
                            "Frames dropped because a call leg's bounded media queue was full (oldest first), "
                            "by queue of the port.", ["where"])
    sides = {where: dropped.labels(where) for where in WHERE}  # every queue's series exists from the start, at 0

    def on_drop(where: str, count: int) -> None:
        side = sides.get(where)
        if side is None:  # a trim: its series is made on first use
            side = sides[where] = dropped.labels(where)
        side.inc(count)

    return MediaPorts(queue_ms, on_drop, jitter_ms)
