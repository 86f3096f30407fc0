"""The status feed keeps the live calls from the snapshots the core hands it: it reads them once, when
the first stream opens, and never asks the core for them again."""

import json

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.metrics import make_metrics_registry
from gateway.admin.status_feed import COALESCE, SAMPLE, StatusFeed
from gateway.config import load
from gateway.context import Context
from gateway.core.testing import CountingCalls, FakeCallControl
from gateway.store import MemoryCdrStore


class Stream:
    """What the feed sends to (an EventStream without the HTTP request)."""

    def __init__(self):
        self.messages = []

    def send(self, message: bytes) -> None:
        self.messages.append(message)

    def beat(self) -> None:
        pass

    def latest(self) -> dict:
        return json.loads(self.messages[-1].split(b"\ndata: ", 1)[1])


class FeedSnapshotTests(SynchronousTestCase):
    """On the shipped fake call core, the far end played by the test."""

    def setUp(self):
        self.clock = task.Clock()
        self.core = FakeCallControl(["1001", "1002"], clock=self.clock)
        self.calls = CountingCalls(self.core)
        ctx = Context(reactor=self.clock, config=load(None), state_dir=self.mktemp(),
                      metrics=make_metrics_registry(), store=MemoryCdrStore(self.clock), registry=self.calls)
        self.feed = StatusFeed(ctx)
        self.stream = Stream()
        self.feed.attach(self.stream)
        self.addCleanup(self.feed.detach, self.stream)
        self.assertEqual(self.calls.asked, [("calls",)], "the live calls are read once, at the first stream")
        self.calls.reset()

    def test_an_inbound_call_is_shown_without_asking_the_core(self):
        call_id = self.core.ring_inbound("1001", "5551234", did="100").call_id  # one batch: 1001's phone rings
        self.assertEqual(self.calls.asked, [])
        self.clock.advance(COALESCE)
        (call,) = self.stream.latest()["calls"]
        self.assertEqual((call["caller"], call["state"], call["extension"]), ("5551234", "RINGING", "1001"))
        self.core.phone_answers(call_id)
        self.clock.advance(10 * SAMPLE)  # the samples look at the adapters only
        self.assertEqual(self.stream.latest()["calls"][0]["state"], "TALKING")
        self.assertEqual(self.calls.asked, [])

    def test_an_ended_call_leaves_the_list_without_asking_the_core(self):
        call_id = self.successResultOf(self.core.originate("1001", "5551234")).call_id
        self.clock.advance(COALESCE)
        self.assertEqual([c["call_id"] for c in self.stream.latest()["calls"]], [call_id])
        self.successResultOf(self.core.hangup(call_id))
        self.clock.advance(COALESCE)
        self.assertEqual(self.stream.latest()["calls"], [])
        self.assertEqual([c["call_id"] for c in self.stream.latest()["cdrs"]], [call_id])
        self.assertEqual(self.calls.asked, [])
