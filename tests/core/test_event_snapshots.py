"""Observers get each event together with its call's snapshot, taken once per call per batch."""

import json

from twisted.trial.unittest import SynchronousTestCase

from gateway.core import events as ev
from gateway.core.model import CallSnapshot
from gateway.core.states import LegState

from .harness import Harness


class SnapshotTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.seen = []
        self.h.registry.subscribe(lambda event, call: self.seen.append((event, call)))

    def test_every_event_of_a_batch_comes_with_one_snapshot_of_its_call_after_the_batch(self):
        self.h.network.place_inbound("5551234", "100")  # one batch: created, routed, 1001's phone rings
        events = [event.type for event, _ in self.seen]
        self.assertEqual(events[:3], ["CallCreated", "LegCreated", "LegRinging"])
        snapshots = {id(call) for _, call in self.seen}
        self.assertEqual(len(snapshots), 1, "one snapshot for the call's whole batch")
        call = self.seen[0][1]
        self.assertIsInstance(call, CallSnapshot)
        self.assertEqual((call.call_id, call.state, len(call.legs)), (self.seen[0][0].call_id, LegState.RINGING, 2))

    def test_each_batch_has_its_own_snapshot(self):
        call_id = self.successResultOf(self.h.registry.originate("1001", "5551234")).call_id
        first = {id(call) for _, call in self.seen}
        self.seen.clear()
        self.successResultOf(self.h.registry.hangup(call_id))
        self.assertEqual({call.state for _, call in self.seen}, {LegState.RELEASED})
        self.assertEqual(len({id(call) for _, call in self.seen} | first), 2)

    def test_a_command_inside_an_observer_is_a_batch_of_its_own(self):
        """The events of the first batch keep the call as that batch left it; the observer's hangup
        comes after them, with the call as the hangup left it."""

        def hang_up_at_once(event, call):
            if isinstance(event, ev.CallCreated):
                self.h.registry.hangup(event.call_id)

        self.h.registry.subscribe(hang_up_at_once)
        later = []
        self.h.registry.subscribe(lambda event, call: later.append((event.type, call.state)))
        self.successResultOf(self.h.registry.originate("1001", "5551234"))
        self.assertEqual(later[0], ("CallCreated", LegState.DIALING))
        self.assertEqual(later[-1], ("CallEnded", LegState.RELEASED))
        states = [state for _, state in later]
        self.assertEqual(states, sorted(states, key=lambda s: s is LegState.RELEASED), "never back to DIALING")

    def test_states_are_legstate_members_written_to_json_as_before(self):
        call_id = self.h.talking_call()
        call = self.h.registry.call(call_id)
        self.assertIs(call.state, LegState.TALKING)
        self.assertIs(call.legs[0].state, LegState.TALKING)
        self.assertIs(call.parties[0].state, LegState.TALKING)
        created = next(event for event, _ in self.seen if isinstance(event, ev.LegCreated))
        self.assertIs(created.state, LegState.DIALING)
        self.assertEqual(call.state, "TALKING")
        data = json.loads(json.dumps(call.to_dict()))
        self.assertEqual((data["state"], data["legs"][0]["state"], data["parties"][0]["state"]),
                         ("TALKING", "TALKING", "TALKING"))
        self.assertIn('"state": "TALKING"', json.dumps(call.to_dict()))
