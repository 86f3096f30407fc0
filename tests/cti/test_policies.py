"""The Bridge Client's reject is the call core's cancel, the same command the admin API has."""

from .test_client import CHANNEL, CountingFakeBridge


class RejectIsCancelTests(CountingFakeBridge):
    def test_rejecting_a_dialling_call_is_the_cores_cancel(self):
        response = self.send("dial", destination="5551234")
        call_id = response.body["id"]
        self.calls.reset()
        self.assertTrue(self.send("reject", target=f"{CHANNEL}.{call_id}").ok)
        self.assertEqual(self.calls.commands, [("cancel", (call_id,), {"by": "desktop"})])
        call = self.registry.call(call_id)
        self.assertEqual((call.state, call.cause, call.hangup_by), ("RELEASED", "normal", "desktop"))

    def test_rejecting_an_alerting_call_is_the_cores_cancel(self):
        self.ring("5551234", "103")
        self.flush()
        call_id = self.registry.active_call_for("1003").call_id
        self.calls.reset()
        self.assertTrue(self.send("reject", target=f"{CHANNEL}.{call_id}").ok)
        self.assertEqual(self.calls.commands, [("cancel", (call_id,), {"by": "desktop"})])
        self.assertEqual(self.registry.call(call_id).cause, "rejected")
