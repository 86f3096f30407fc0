"""Patriot's dial_while_busy is the call core's if_busy policy, the same the admin API has."""

from twisted.trial.unittest import SynchronousTestCase

from gateway.core.errors import ExtensionBusy
from gateway.core.testing import CountingCalls, FakeCallControl
from gateway.patriot.line import Lines


class DialWhileBusyTests(SynchronousTestCase):
    """On the shipped fake call core, the far end played by the test."""

    def setUp(self):
        self.core = FakeCallControl(["1001", "1002"])
        self.calls = CountingCalls(self.core)
        self.line = Lines(self.calls).get("1001")
        self.first = self.successResultOf(self.core.originate("1001", "5551234")).call_id
        self.core.phone_answers(self.first)
        self.core.party_answers(self.first)
        self.calls.reset()

    def test_replace_is_one_originate_with_the_cores_if_busy(self):
        call = self.successResultOf(self.line.dial("5554321", "555-4321", "operator", replace=True))
        attributes = {"raw_number": "555-4321", "requested_by": "operator"}
        self.assertEqual(self.calls.commands, [
            ("originate", ("1001", "5554321"), {"attributes": attributes, "if_busy": "replace", "by": "desktop"}),
        ])
        self.assertEqual(self.calls.asked, [])
        first = self.core.call(self.first)
        self.assertEqual((first.state, first.hangup_by), ("RELEASED", "desktop"))
        self.assertEqual(call.number, "5554321")

    def test_refuse_is_the_cores_if_busy_too(self):
        self.failureResultOf(self.line.dial("5554321", "5554321", "operator"), ExtensionBusy)
        (command,) = self.calls.commands
        self.assertEqual((command[0], command[2]["if_busy"]), ("originate", "refuse"))
