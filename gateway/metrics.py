"""Defining the gateway's Prometheus metrics: one helper every room uses.

:func:`define_metric` prefixes ``gateway_`` and hands back the existing metric
when another room (or a second service instance) asks for the same one,
instead of prometheus_client's "Duplicated timeseries" error::

    calls = define_metric(ctx.metrics, Counter, "calls", "Calls by direction and outcome.",
                          ["direction", "cause"])

The registry itself (``ctx.metrics``, served at ``/metrics``) is made by
:func:`gateway.admin.metrics.make_metrics_registry`.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

__all__ = ["NAMESPACE", "define_metric"]

NAMESPACE = "gateway"

#: registry -> name -> (kind, label names, metric), for define_metric
_defined: "weakref.WeakKeyDictionary[CollectorRegistry, dict]" = weakref.WeakKeyDictionary()


def define_metric(registry: CollectorRegistry, kind, name: str, documentation: str, labelnames: Sequence[str] = (), **options):
    """``gateway_<name>`` of ``kind`` (Counter, Gauge, Histogram, ...) on ``registry``.

    Asking again for the same name with the same kind and labels returns the
    metric already defined; with another kind or labels it is a ``ValueError``.
    ``options`` go to the metric (``buckets=`` for a Histogram).
    """
    labels = tuple(labelnames)
    known = _defined.setdefault(registry, {})
    if name in known:
        known_kind, known_labels, metric = known[name]
        if (known_kind, known_labels) != (kind, labels):
            raise ValueError(
                f"metric {NAMESPACE}_{name} is already a {known_kind.__name__} with labels {list(known_labels)}"
            )
        return metric
    metric = kind(name, documentation, labels, namespace=NAMESPACE, registry=registry, **options)
    known[name] = (kind, labels, metric)
    return metric
