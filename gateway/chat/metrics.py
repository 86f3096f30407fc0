"""The Expertflow connector's Prometheus metrics, on the gateway's registry (``ctx.metrics``).

- ``gateway_chat_link_up``: 1 while the connector is registered with the chat server;
- ``gateway_chat_registrations_total``: registerConnector acknowledged (reconnections show as increments);
- ``gateway_chat_conversations_opened_total`` / ``gateway_chat_conversations_closed_total{reason}``;
- ``gateway_sms_received_total{direction}``: SMS stored (inbound from customers, outbound from the chat server);
- ``gateway_sms_delivered_total{direction}``, ``gateway_sms_rejected_total{direction}``;
- ``gateway_sms_attempt_failures_total{direction}``: delivery attempts that failed (and will be retried);
- ``gateway_sms_pending{direction}``: SMS stored and not yet delivered.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from gateway.metrics import define_metric

__all__ = ["ChatMetrics"]


class ChatMetrics:
    """Defines the metrics on ``collectors`` (a CollectorRegistry)."""

    def __init__(self, collectors):
        self._up = define_metric(collectors, Gauge, "chat_link_up", "1 while registered with the chat server.")
        self._registrations = define_metric(
            collectors, Counter, "chat_registrations", "registerConnector acknowledged by the chat server."
        )
        self._opened = define_metric(collectors, Counter, "chat_conversations_opened", "Conversations opened.")
        self._closed = define_metric(
            collectors, Counter, "chat_conversations_closed", "Conversations closed, by reason.", ["reason"]
        )
        self._received = define_metric(collectors, Counter, "sms_received", "SMS stored, by direction.", ["direction"])
        self._delivered = define_metric(
            collectors, Counter, "sms_delivered", "SMS delivered, by direction.", ["direction"]
        )
        self._rejected = define_metric(
            collectors, Counter, "sms_rejected", "SMS refused for good, by direction.", ["direction"]
        )
        self._failures = define_metric(
            collectors, Counter, "sms_attempt_failures", "Failed SMS delivery attempts, by direction.", ["direction"]
        )
        self._pending = define_metric(
            collectors, Gauge, "sms_pending", "SMS stored and not yet delivered, by direction.", ["direction"]
        )

    def link_up(self, up: bool) -> None:
        self._up.set(1 if up else 0)
        if up:
            self._registrations.inc()

    def conversation_opened(self) -> None:
        self._opened.inc()

    def conversation_closed(self, reason: str) -> None:
        self._closed.labels(reason).inc()

    def received(self, direction: str) -> None:
        self._received.labels(direction).inc()

    def delivered(self, direction: str) -> None:
        self._delivered.labels(direction).inc()

    def rejected(self, direction: str) -> None:
        self._rejected.labels(direction).inc()

    def attempt_failed(self, direction: str) -> None:
        self._failures.labels(direction).inc()

    def watch_pending(self, outbox) -> None:
        """Report ``outbox.pending`` as ``gateway_sms_pending{direction}``."""
        self._pending.labels(outbox.direction).set_function(lambda: outbox.pending)
