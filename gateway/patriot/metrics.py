"""The Patriot adapter's Prometheus metrics, on the gateway's registry (never the global one).

Besides its own metrics the adapter counts ignored and refused messages in the shared
``gateway_ignored_messages_total{adapter="patriot",reason}`` (:mod:`gateway.boundary`), and
locked-out addresses in ``gateway_patriot_lockouts_total``.
"""

from __future__ import annotations

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge


@attrs.frozen
class PatriotMetrics:
    messages: Counter
    bad_messages: Counter
    commands: Counter
    logins: Counter
    bridge_connections: Gauge
    desktop_up: Gauge
    lockouts: Counter
    #: the registry they are on (the ignored-message budgets count on it too)
    registry: CollectorRegistry | None = None

    @classmethod
    def on(cls, registry: CollectorRegistry) -> PatriotMetrics:
        return cls(
            messages=Counter("gateway_patriot_messages", "Valid Patriot messages received, by mode and type",
                             ["mode", "type"], registry=registry),
            bad_messages=Counter("gateway_patriot_bad_messages", "Patriot frames that were not valid messages",
                                 ["mode"], registry=registry),
            commands=Counter("gateway_patriot_commands", "Patriot dial and hangup requests, by result "
                             "(ok or the call core's error code)", ["mode", "command", "result"], registry=registry),
            logins=Counter("gateway_patriot_logins", "Init requests (bridge) and authentications (desktop) by result",
                           ["mode", "result"], registry=registry),
            bridge_connections=Gauge("gateway_patriot_bridge_connections",
                                     "Open Patriot connections to the Dialler Bridge", ["state"], registry=registry),
            desktop_up=Gauge("gateway_patriot_desktop_up", "1 while a Desktop API link is authenticated, else 0",
                             ["link"], registry=registry),
            lockouts=Counter("gateway_patriot_lockouts", "Source addresses locked out of the Dialler Bridge "
                             "for too many failed init-requests", registry=registry),
            registry=registry,
        )
