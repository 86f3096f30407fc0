"""Patriot's dial_while_busy is the call core's if_busy policy, the same the admin API has."""

from twisted.trial.unittest import SynchronousTestCase

from gateway.core.testing import CountingCalls
from core.harness import Harness
from gateway.core.errors import ExtensionBusy
from gateway.patriot.line import Lines


class DialWhileBusyTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.calls = CountingCalls(self.h.registry)
        self.line = Lines(self.calls).get("1001")
        self.first = self.h.talking_call("1001", "5551234")
        self.calls.reset()

    def test_replace_is_one_originate_with_the_cores_if_busy(self):
        call = self.successResultOf(self.line.dial("5554321", "555-4321", "operator", replace=True))
        attributes = {"raw_number": "555-4321", "requested_by": "operator"}
        self.assertEqual(self.calls.commands, [
            ("originate", ("1001", "5554321"), {"attributes": attributes, "if_busy": "replace", "by": "desktop"}),
        ])
        self.assertEqual(self.calls.asked, [])
        first = self.h.registry.call(self.first)
        self.assertEqual((first.state, first.hangup_by), ("RELEASED", "desktop"))
        self.assertEqual(call.number, "5554321")

    def test_refuse_is_the_cores_if_busy_too(self):
        self.failureResultOf(self.line.dial("5554321", "5554321", "operator"), ExtensionBusy)
        (command,) = self.calls.commands
        self.assertEqual((command[0], command[2]["if_busy"]), ("originate", "refuse"))
