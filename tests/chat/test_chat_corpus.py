"""The chat link's bad-input corpus (tests/corpus/chat.json) against the Socket.IO client, in memory.

Each case plays a hostile chat server through the scripted server of test_socketio_client: an
``open`` case sends its frames instead of the Engine.IO open packet, a ``session`` case (the
default) sends them once the namespace is joined. ``dropped``: the link stays up, answers a ping and
hands the next event over, the packet counted in gateway_ignored_messages_total{adapter="chat"};
``reconnect``: the link is dropped with an error naming the peer, and the next attempt (after the
retry policy's delay) joins the namespace again. The replay against the real daemon
(tests/integration) uses the same file through the simulator's /sim/open-frames and
/sim/connectors/{channel}/frames controls.
"""

from prometheus_client import CollectorRegistry
from twisted.trial.unittest import SynchronousTestCase

from corpus import load

from .test_socketio_client import Harness

CASES = load("chat")


def ignored_total(registry) -> float:
    return sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "gateway_ignored_messages"
        for sample in metric.samples
        if sample.name == "gateway_ignored_messages_total" and sample.labels["adapter"] == "chat"
    )


class ChatCorpusTests(SynchronousTestCase):
    def test_the_corpus_has_both_stages_and_both_outcomes(self):
        self.assertEqual({case.extra.get("stage", "session") for case in CASES}, {"open", "session"})
        self.assertEqual({case.outcome for case in CASES}, {"dropped", "reconnect"})

    def play(self, case):
        registry = CollectorRegistry()
        h = Harness(self, registry)
        if case.extra.get("stage", "session") == "open":
            h.accept()
        else:
            h.connect()
        h.send(*[data if binary else data.decode("utf-8") for data, binary in case.built()])
        return h, registry

    def test_every_case(self):
        for case in CASES:
            with self.subTest(case=case.name):
                h, registry = self.play(case)
                if case.outcome == "dropped":
                    self.assertFalse(h.link_lost)
                    self.assertTrue(h.client.connected)
                    self.assertGreaterEqual(ignored_total(registry), 1)
                    h.take()
                    h.send("2", '42["greet","after"]')
                    self.assertEqual(h.take(), ["3"])
                    self.assertEqual(h.events[-1], ("greet", ("after",)))
                    self.assertEqual(h.events.count("connected"), 1)
                else:
                    self.assertEqual(case.outcome, "reconnect")
                    self.assertTrue(h.link_lost)
                    self.assertIn("127.0.0.1", " ".join(h.warnings()))
                    h.reactor.advance(5.0)
                    h.connect()
                    self.assertTrue(h.client.connected)
                self.assertEqual(self.flushLoggedErrors(), [])
