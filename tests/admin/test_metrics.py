"""The metrics registry and define_metric."""

from prometheus_client import Counter, Gauge, Histogram, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.metrics import make_metrics_registry
from gateway.metrics import define_metric


class MetricsTests(SynchronousTestCase):
    def setUp(self):
        self.registry = make_metrics_registry()

    def test_the_registry_has_the_process_and_platform_collectors(self):
        text = generate_latest(self.registry)
        self.assertIn(b"python_info{", text)
        self.assertIn(b"process_resident_memory_bytes ", text)

    def test_metrics_are_prefixed_and_defined_once(self):
        first = define_metric(self.registry, Counter, "calls", "Calls.", ["direction"])
        again = define_metric(self.registry, Counter, "calls", "Calls.", ("direction",))
        self.assertIs(again, first)
        first.labels(direction="inbound").inc()
        self.assertEqual(self.registry.get_sample_value("gateway_calls_total", {"direction": "inbound"}), 1.0)

    def test_options_reach_the_metric(self):
        latency = define_metric(self.registry, Histogram, "dtmf_seconds", "DTMF latency.", buckets=(0.1, 1.0))
        latency.observe(0.5)
        self.assertEqual(self.registry.get_sample_value("gateway_dtmf_seconds_bucket", {"le": "0.1"}), 0.0)
        self.assertEqual(self.registry.get_sample_value("gateway_dtmf_seconds_bucket", {"le": "1.0"}), 1.0)

    def test_the_same_name_with_another_kind_or_labels_is_refused(self):
        define_metric(self.registry, Counter, "calls", "Calls.", ["direction"])
        with self.assertRaises(ValueError):
            define_metric(self.registry, Gauge, "calls", "Calls.", ["direction"])
        with self.assertRaises(ValueError):
            define_metric(self.registry, Counter, "calls", "Calls.", ["cause"])

    def test_registries_are_independent(self):
        other = make_metrics_registry()
        define_metric(self.registry, Counter, "calls", "Calls.").inc()
        define_metric(other, Counter, "calls", "Calls.")
        self.assertEqual(other.get_sample_value("gateway_calls_total"), 0.0)
