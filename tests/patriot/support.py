"""What the Patriot unit tests share: an in-memory IConnection and a registry harness with metrics."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry
from zope.interface import implementer

from gateway.patriot.metrics import PatriotMetrics
from gateway.patriot.session import IConnection


@implementer(IConnection)
class FakeConnection:
    """Records what a session sends (parsed JSON), and how it closed the connection."""

    def __init__(self, host: str = "10.0.0.7", port: int = 50000):
        self.host = host
        self.peer = f"{host}:{port}"
        self.sent: list[dict] = []
        self.closes: list[tuple[int, str]] = []
        self.aborted = False
        self.reading = True

    def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def abort(self) -> None:
        self.aborted = True

    def stop_reading(self) -> None:
        self.reading = False

    def take(self) -> list[dict]:
        """What was sent since the last take."""
        sent, self.sent = self.sent, []
        return sent

    def statuses(self) -> list[dict]:
        """The payloads of the call-status-updates sent since the last take (other frames dropped)."""
        return [m["payload"] for m in self.take() if m["type"] == "call-status-update"]


def new_metrics() -> tuple[PatriotMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return PatriotMetrics.on(registry), registry


def frame(message_type: str, payload: dict | None = None) -> bytes:
    obj = {"type": message_type}
    if payload is not None:
        obj["payload"] = payload
    return json.dumps(obj).encode("utf-8")


def status(active: bool, outbound: bool | None = None, caller_id: str | None = None) -> dict:
    """A call-status-update payload as the gateway writes it (absent optionals left out)."""
    payload = {"callActive": active}
    if outbound is not None:
        payload["outbound"] = outbound
    if caller_id is not None:
        payload["callerId"] = caller_id
    return payload
