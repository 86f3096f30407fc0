"""A Patriot line follows its extension's calls from the snapshots the core hands it, asking nothing."""

from twisted.trial.unittest import SynchronousTestCase

from gateway.core.testing import CountingCalls, FakeCallControl
from gateway.patriot.line import Lines
from gateway.patriot.messages import CallStatusUpdate


class LineSnapshotTests(SynchronousTestCase):
    """On the shipped fake call core, the far end played by the test."""

    def setUp(self):
        self.core = FakeCallControl(["1001", "1002"])
        self.calls = CountingCalls(self.core)
        self.line = Lines(self.calls).get("1001")
        self.updates = []
        self.line.listen(self.updates.append)

    def test_an_inbound_calls_first_batch_asks_the_core_nothing(self):
        self.calls.reset()
        self.core.ring_inbound("1001", "5551234")  # one batch: created, routed, 1001's phone rings
        self.assertEqual(self.calls.asked, [])
        self.assertEqual(self.updates, [CallStatusUpdate(call_active=True, outbound=False, caller_id="5551234")])

    def test_the_whole_inbound_call_asks_the_core_nothing(self):
        self.calls.reset()
        call_id = self.core.ring_inbound("1001", "5551234").call_id
        self.core.phone_answers(call_id)  # 1001's phone answers
        self.core.party_hangs_up(call_id)  # then the caller hangs up
        self.assertEqual(self.calls.asked, [])
        self.assertEqual(self.updates, [
            CallStatusUpdate(call_active=True, outbound=False, caller_id="5551234"),
            CallStatusUpdate(call_active=True, outbound=False, caller_id="5551234"),
            CallStatusUpdate(call_active=False, outbound=False, caller_id="5551234"),
        ])

    def test_another_call_of_the_extension_that_is_refused_busy_changes_nothing(self):
        self.core.ring_inbound("1001", "5551234")
        self.calls.reset()
        self.core.ring_inbound("1001", "5559999")  # 1001 is busy: that call ends at once
        self.assertEqual(self.calls.asked, [])
        self.assertEqual(self.updates, [CallStatusUpdate(call_active=True, outbound=False, caller_id="5551234")])
