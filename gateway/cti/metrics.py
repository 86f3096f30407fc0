"""The HIS Bridge Client's Prometheus metrics, on the gateway's registry (``ctx.metrics``).

- ``gateway_cti_link_up``: 1 while connected to the processor bridge;
- ``gateway_cti_connections_total``: links established (reconnections show as increments);
- ``gateway_cti_messages_total{direction,type}``: envelopes received (``in``) and sent (``out``) by
  ``header.type``, and responses sent by result (``type`` ``cti.response.FAILURE`` and so on);
- ``gateway_cti_rejected_total``: frames and messages from the bridge that were not usable.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from gateway.cti.envelope import MessageType
from gateway.metrics import define_metric

__all__ = ["CtiMetrics"]


class CtiMetrics:
    """Defines the metrics on ``collectors`` (a CollectorRegistry)."""

    def __init__(self, collectors):
        self._up = define_metric(collectors, Gauge, "cti_link_up", "1 while the processor bridge link is up.")
        self._connections = define_metric(
            collectors, Counter, "cti_connections", "Links to the processor bridge established."
        )
        self._messages = define_metric(
            collectors, Counter, "cti_messages", "HIS messages by direction and type.", ["direction", "type"]
        )
        self._rejected = define_metric(
            collectors, Counter, "cti_rejected", "Frames or messages from the bridge that were not usable."
        )

    def link_up(self, up: bool) -> None:
        self._up.set(1 if up else 0)
        if up:
            self._connections.inc()

    def observe(self, direction: str, message) -> None:
        """Count one envelope (``direction`` ``in``/``out``), or a rejected one (``rejected``, None)."""
        if message is None:
            self._rejected.inc()
            return
        kind = message.type.value
        if message.type is MessageType.RESPONSE:
            kind = f"{kind}.{message.header.result.value}"
        self._messages.labels(direction, kind).inc()
