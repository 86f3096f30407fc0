"""The Patriot adapter's Prometheus metrics, on the gateway's registry (never the global one).

Every metric is made through :func:`gateway.metrics.define_metric`, so a second
:meth:`PatriotMetrics.on` on the same registry (a second service instance, a test) gets the same
metrics instead of prometheus_client's "Duplicated timeseries" error.

Besides its own metrics the adapter counts ignored and refused messages in the shared
``gateway_ignored_messages_total{adapter="patriot",reason}`` (:mod:`gateway.boundary`), and
locked-out addresses in ``gateway_patriot_lockouts_total``, and what the Dialler Bridge refused in
``gateway_patriot_bridge_refused_total{reason}``: ``locked_out`` (a handshake or init from a
locked-out address), ``table_full`` (from a new address while the lockout table holds only
lockouts and checks), ``init_timeout``, ``too_many_unauthenticated``, ``rate_limited`` (a connection
closed past max_message_rate) and ``slow_reader`` (one dropped past max_output_buffer).
"""

from __future__ import annotations

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.metrics import define_metric


@attrs.frozen
class PatriotMetrics:
    messages: Counter
    bad_messages: Counter
    commands: Counter
    logins: Counter
    bridge_connections: Gauge
    desktop_up: Gauge
    lockouts: Counter
    bridge_refused: Counter
    #: the registry they are on (the ignored-message budgets count on it too)
    registry: CollectorRegistry | None = None

    @classmethod
    def on(cls, registry: CollectorRegistry) -> PatriotMetrics:
        return cls(
            messages=define_metric(registry, Counter, "patriot_messages",
                                   "Valid Patriot messages received, by mode and type", ["mode", "type"]),
            bad_messages=define_metric(registry, Counter, "patriot_bad_messages",
                                       "Patriot frames that were not valid messages", ["mode"]),
            commands=define_metric(registry, Counter, "patriot_commands", "Patriot dial and hangup requests, by "
                                   "result (ok or the call core's error code)", ["mode", "command", "result"]),
            logins=define_metric(registry, Counter, "patriot_logins",
                                 "Init requests (bridge) and authentications (desktop) by result", ["mode", "result"]),
            bridge_connections=define_metric(registry, Gauge, "patriot_bridge_connections",
                                             "Open Patriot connections to the Dialler Bridge", ["state"]),
            desktop_up=define_metric(registry, Gauge, "patriot_desktop_up",
                                     "1 while a Desktop API link is authenticated, else 0", ["link"]),
            lockouts=define_metric(registry, Counter, "patriot_lockouts", "Source addresses locked out of the "
                                   "Dialler Bridge for too many failed init-requests"),
            bridge_refused=define_metric(registry, Counter, "patriot_bridge_refused",
                                         "Handshakes, init-requests and connections the Dialler Bridge refused or "
                                         "closed, by reason", ["reason"]),
            registry=registry,
        )
