"""The Patriot adapter's metrics: made through define_metric, so a registry can be asked twice."""

from prometheus_client import CollectorRegistry
from twisted.trial.unittest import SynchronousTestCase

from gateway.patriot.metrics import PatriotMetrics


class PatriotMetricsTests(SynchronousTestCase):
    def test_twice_on_one_registry_gives_the_same_metrics(self):
        """Before: the second call raised prometheus_client's 'Duplicated timeseries' ValueError."""
        registry = CollectorRegistry()
        first = PatriotMetrics.on(registry)
        second = PatriotMetrics.on(registry)
        self.assertIs(second.lockouts, first.lockouts)
        self.assertIs(second.logins, first.logins)
        first.lockouts.inc()
        second.logins.labels("bridge", "failure").inc()
        self.assertEqual(registry.get_sample_value("gateway_patriot_lockouts_total"), 1)
        self.assertEqual(registry.get_sample_value("gateway_patriot_logins_total",
                                                   {"mode": "bridge", "result": "failure"}), 1)

    def test_the_exposed_names_are_unchanged(self):
        registry = CollectorRegistry()
        metrics = PatriotMetrics.on(registry)
        metrics.messages.labels("bridge", "heartbeat").inc()
        metrics.desktop_up.labels("0").set(1)
        metrics.bridge_connections.labels("open").set(2)
        self.assertEqual(registry.get_sample_value("gateway_patriot_messages_total",
                                                   {"mode": "bridge", "type": "heartbeat"}), 1)
        self.assertEqual(registry.get_sample_value("gateway_patriot_desktop_up", {"link": "0"}), 1)
        self.assertEqual(registry.get_sample_value("gateway_patriot_bridge_connections", {"state": "open"}), 2)
