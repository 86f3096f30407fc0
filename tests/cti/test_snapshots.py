"""The Bridge Client follows calls from the snapshots the core hands it, never asking for them again."""

from .test_client import CHANNEL, CountingFakeBridge


class SnapshotTests(CountingFakeBridge):
    def test_an_inbound_calls_first_batch_asks_the_core_nothing(self):
        self.calls.reset()
        self.ring("5551234", "103")  # one batch: created, routed, the phone rings
        self.assertEqual(self.calls.asked, [])
        self.flush()
        call_id = self.registry.active_call_for("1003").call_id
        interaction = f"{CHANNEL}.{call_id}"
        self.assertEqual(self.events(CHANNEL), ["channel.interaction"])
        self.assertEqual(self.events(interaction), ["interaction.alerting"])
        self.assertEqual(self.events(f"{interaction}.primary"), ["conversation.started", "conversation.ringing"])

    def test_events_from_the_far_end_ask_the_core_nothing(self):
        self.ring("5551234", "103")
        self.flush()
        call_id = self.registry.active_call_for("1003").call_id
        conversation = f"{CHANNEL}.{call_id}.primary"
        self.assertTrue(self.send("accept").ok)
        self.calls.reset()
        self.registry.party_hangs_up(call_id)  # a driver's report: the caller is gone
        self.assertEqual(self.calls.asked, [])
        self.flush()
        self.assertEqual(self.events(conversation)[-1], "conversation.ended")
