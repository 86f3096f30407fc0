"""The call core's Prometheus metrics, on the gateway's registry (``ctx.metrics``).

- ``gateway_calls{state}`` and ``gateway_legs{state}``: live calls and their
  legs by state, read from the registry at scrape time;
- ``gateway_call_commands_total{command,result}``: every registry command and
  its outcome (``ok`` or the error's code);
- ``gateway_calls_ended_total{cause}`` and ``gateway_call_duration_seconds``
  (histogram, by direction): from each ended call's CDR.
"""

from __future__ import annotations

import typing

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.metrics import NAMESPACE, define_metric
from gateway.core import events as ev
from gateway.core.interfaces import ICallControl
from gateway.core.model import CallSnapshot
from gateway.core.states import LegState

__all__ = ["CoreMetrics"]

_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


class _StateCollector:
    """Live calls and legs by state, counted when scraped."""

    def __init__(self, registry: ICallControl) -> None:
        self._registry = registry

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> typing.Iterator[Metric]:
        calls = GaugeMetricFamily(f"{NAMESPACE}_calls", "Live calls by state.", labels=["state"])
        legs = GaugeMetricFamily(f"{NAMESPACE}_legs", "Legs of live calls by state.", labels=["state"])
        by_state = self._registry.status()["by_state"]
        leg_states = self._registry.leg_states()
        for state in LegState:
            calls.add_metric([state.value], by_state.get(state.value, 0))
            legs.add_metric([state.value], leg_states.get(state.value, 0))
        yield calls
        yield legs


class CoreMetrics:
    """Defines the metrics on ``collectors`` (a CollectorRegistry); :meth:`attach` feeds them from a registry."""

    def __init__(self, collectors: CollectorRegistry) -> None:
        self._collectors = collectors
        self.commands = define_metric(collectors, Counter, "call_commands", "Call registry commands by outcome.",
                                      ["command", "result"])
        self.ended = define_metric(collectors, Counter, "calls_ended", "Ended calls by cause.", ["cause"])
        self.duration = define_metric(collectors, Histogram, "call_duration_seconds",
                                      "Duration of ended calls, from creation to end.", ["direction"],
                                      buckets=_DURATION_BUCKETS)

    def command(self, name: str, result: str) -> None:
        """The registry's ``on_command`` hook."""
        self.commands.labels(name, result).inc()

    def attach(self, registry: ICallControl) -> None:
        """Count ``registry``'s ended calls and expose its live calls and legs."""
        registry.subscribe(self._observe)
        self._collectors.register(_StateCollector(registry))

    def _observe(self, event: ev.CallEvent, call: CallSnapshot) -> None:
        if isinstance(event, ev.CallEnded):
            self.ended.labels(event.cause).inc()
            self.duration.labels(event.cdr["direction"]).observe(event.cdr["duration"])
