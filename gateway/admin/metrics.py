"""The gateway's Prometheus registry, served at ``/metrics``.

:func:`make_metrics_registry` builds the registry behind ``ctx.metrics``, with
the process and platform collectors; rooms define their metrics on it with
:func:`gateway.metrics.define_metric`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

__all__ = ["make_metrics_registry"]


def make_metrics_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
