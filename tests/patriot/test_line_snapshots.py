"""A Patriot line follows its extension's calls from the snapshots the core hands it, asking nothing."""

from twisted.trial.unittest import SynchronousTestCase

from gateway.core.testing import CountingCalls
from core.harness import Harness
from gateway.patriot.line import Lines
from gateway.patriot.messages import CallStatusUpdate


class LineSnapshotTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.calls = CountingCalls(self.h.registry)
        self.line = Lines(self.calls).get("1001")
        self.updates = []
        self.line.listen(self.updates.append)

    def test_an_inbound_calls_first_batch_asks_the_core_nothing(self):
        self.calls.reset()
        self.h.network.place_inbound("5551234", "100")  # one batch: created, routed, 1001's phone rings
        self.assertEqual(self.calls.asked, [])
        self.assertEqual(self.updates, [CallStatusUpdate(call_active=True, outbound=False, caller_id="5551234")])

    def test_the_whole_inbound_call_asks_the_core_nothing(self):
        self.calls.reset()
        self.h.network.place_inbound("5551234", "100", hang_up_after=2.0)
        self.h.advance(5.0)  # 1001's phone answers after 1 s, the caller hangs up 2 s later
        self.assertEqual(self.calls.asked, [])
        self.assertEqual(self.updates, [
            CallStatusUpdate(call_active=True, outbound=False, caller_id="5551234"),
            CallStatusUpdate(call_active=True, outbound=False, caller_id="5551234"),
            CallStatusUpdate(call_active=False, outbound=False, caller_id="5551234"),
        ])

    def test_another_call_of_the_extension_that_is_refused_busy_changes_nothing(self):
        self.h.network.place_inbound("5551234", "100")
        self.calls.reset()
        self.h.network.place_inbound("5559999", "100")  # 1001 is busy: that call ends at once
        self.assertEqual(self.calls.asked, [])
        self.assertEqual(self.updates, [CallStatusUpdate(call_active=True, outbound=False, caller_id="5551234")])
