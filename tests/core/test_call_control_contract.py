"""One contract for ICallControl, run against the real registry (on the simulated network) and against
the shipped fake, :class:`gateway.core.testing.FakeCallControl`.

:class:`CallControlContract` holds the observable behaviour an adapter relies on: the events of each
command in order with their call's snapshot, the outcomes of the commands, the typed errors on unknown
calls and in illegal states, subscribing per extension, the queries. A test case mixes it in and says
how to build the door and how to play the far end (a caller ringing, a dialled party answering...).
"""

import ast
import pathlib

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.config import Extension
from gateway.core import events as ev
from gateway.core.errors import (
    ExtensionBusy,
    IllegalState,
    InvalidArgument,
    UnknownCall,
    UnknownExtension,
    UnknownParty,
)
from gateway.core.interfaces import ICallControl
from gateway.core.model import CallSnapshot
from gateway.core.testing import FakeCallControl

from .harness import Harness

#: the extensions the contract uses: neither phone answers by itself
ALICE, BOB = "1003", "1001"
NUMBER = "5551234"


class CallControlContract:
    """The contract; ``self.calls`` is the ICallControl under test. Subclasses give :meth:`make` and the
    far end: :meth:`ring_inbound`, :meth:`phone_answers`, :meth:`party_answers`, :meth:`party_hangs_up`
    and :meth:`settle` (let the far end's reports and DTMF tones happen)."""

    def make(self):
        raise NotImplementedError

    def ring_inbound(self, extension, caller) -> str:
        raise NotImplementedError

    def phone_answers(self, call_id) -> None:
        raise NotImplementedError

    def party_answers(self, call_id) -> None:
        """The party being dialled (the latest one) answers."""
        raise NotImplementedError

    def party_hangs_up(self, call_id, number) -> None:
        raise NotImplementedError

    def settle(self) -> None:
        raise NotImplementedError

    def setUp(self):
        self.calls = self.make()
        self.seen: list[tuple[ev.CallEvent, CallSnapshot]] = []
        self.calls.subscribe(lambda event, call: self.seen.append((event, call)))

    # -- helpers ---------------------------------------------------------------------------------

    def take(self):
        seen, self.seen = self.seen, []
        return seen

    def types(self, seen):
        return [event.type for event, _ in seen]

    def originate(self, extension=ALICE, number=NUMBER, **kwargs) -> str:
        call = self.successResultOf(self.calls.originate(extension, number, **kwargs))
        self.settle()
        return call.call_id

    def talking(self) -> str:
        """An outbound call of ALICE's, talking to NUMBER."""
        call_id = self.originate()
        self.successResultOf(self.calls.answer(call_id))
        self.settle()
        self.party_answers(call_id)
        self.settle()
        self.assertEqual(self.calls.call(call_id).state, "TALKING")
        self.take()
        return call_id

    # -- the door ----------------------------------------------------------------------------------

    def test_it_provides_icallcontrol(self):
        self.assertTrue(verifyObject(ICallControl, self.calls))
        self.assertLessEqual({ALICE, BOB}, set(self.calls.extensions))

    # -- originate ---------------------------------------------------------------------------------

    def test_originate_rings_the_extensions_phone_first(self):
        call = self.successResultOf(self.calls.originate(ALICE, NUMBER, attributes={"ticket": "7"}))
        self.assertEqual((call.extension, call.direction, call.state, call.number, call.caller),
                         (ALICE, "outbound", "DIALING", NUMBER, ALICE))
        self.assertEqual(call.attributes, {"ticket": "7"})
        self.assertEqual([(leg.role, leg.state, leg.number) for leg in call.legs], [("device", "DIALING", ALICE)])
        self.settle()
        seen = self.take()
        self.assertEqual(self.types(seen), ["CallCreated", "LegCreated", "LegDialing", "LegRinging"])
        self.assertEqual({event.call_id for event, _ in seen}, {call.call_id})
        self.assertEqual({event.extension for event, _ in seen}, {ALICE})
        created, leg_created, dialing, ringing = seen
        # one snapshot per call per batch: the command's events share it, taken once the command was done
        self.assertIs(created[1], leg_created[1])
        self.assertIs(created[1], dialing[1])
        self.assertEqual(created[1].state, "DIALING")
        self.assertIsNone(created[1].legs[0].alerting_at)
        self.assertIsNotNone(ringing[1].legs[0].alerting_at)
        self.assertEqual((leg_created[0].role, leg_created[0].state), ("device", "DIALING"))
        self.assertEqual(created[0].attributes, {"ticket": "7"})

    def test_answering_the_own_phone_dials_the_number_then_the_party_answers(self):
        call_id = self.originate()
        self.take()
        call = self.successResultOf(self.calls.answer(call_id))
        self.assertEqual([(leg.role, leg.state) for leg in call.legs], [("device", "TALKING"), ("party", "DIALING")])
        self.settle()
        seen = self.take()
        self.assertEqual(self.types(seen), ["LegAnswered", "LegCreated", "LegDialing", "LegRinging"])
        self.assertEqual(seen[1][0].number, NUMBER)
        self.party_answers(call_id)
        self.settle()
        (answered, snapshot), = self.take()
        self.assertEqual((answered.type, snapshot.state), ("LegAnswered", "TALKING"))
        self.assertEqual([p.number for p in snapshot.parties], [NUMBER])
        self.assertIsNotNone(snapshot.answered_at)

    def test_originate_refusals_are_typed(self):
        self.failureResultOf(self.calls.originate("9999", NUMBER), UnknownExtension)
        self.failureResultOf(self.calls.originate(ALICE, "5551234\n"), InvalidArgument)
        self.failureResultOf(self.calls.originate(ALICE, "not a number"), InvalidArgument)
        self.failureResultOf(self.calls.originate(ALICE, ALICE), InvalidArgument)
        self.failureResultOf(self.calls.originate(ALICE, NUMBER, if_busy="queue"), InvalidArgument)
        self.assertEqual((self.calls.calls(), self.take()), ([], []))

    def test_a_busy_extension_refuses_or_replaces(self):
        first = self.talking()
        failure = self.failureResultOf(self.calls.originate(ALICE, "5554321"), ExtensionBusy)
        self.assertEqual(failure.value.call_id, first)
        self.assertEqual(self.take(), [])
        second = self.successResultOf(self.calls.originate(ALICE, "5554321", if_busy="replace", by="desktop"))
        old = self.calls.call(first)
        self.assertEqual((old.state, old.cause, old.hangup_by), ("RELEASED", "normal", "desktop"))
        self.assertEqual(self.calls.active_call_for(ALICE).call_id, second.call_id)
        types = self.types(self.take())
        self.assertLess(types.index("CallEnded"), types.index("CallCreated"))

    # -- inbound -----------------------------------------------------------------------------------

    def test_an_inbound_call_alerts_then_is_answered(self):
        call_id = self.ring_inbound(ALICE, "5550111")
        seen = self.take()
        self.assertEqual(self.types(seen),
                         ["CallCreated", "LegCreated", "LegRinging", "LegCreated", "LegDialing", "LegRinging"])
        created = seen[0][0]
        self.assertEqual((created.direction, created.caller, created.extension), ("inbound", "5550111", ALICE))
        self.assertEqual(seen[0][1].state, "RINGING")
        self.assertEqual([leg.role for leg in seen[-1][1].legs], ["party", "device"])
        call = self.successResultOf(self.calls.answer(call_id))
        self.assertEqual(call.state, "TALKING")
        seen = self.take()
        self.assertEqual(self.types(seen), ["LegAnswered", "LegAnswered"])
        self.assertEqual(seen[0][1].state, "TALKING")

    def test_the_caller_hanging_up_ends_the_call(self):
        call_id = self.ring_inbound(ALICE, "5550111")
        self.successResultOf(self.calls.answer(call_id))
        self.take()
        self.party_hangs_up(call_id, "5550111")
        seen = self.take()
        self.assertEqual(self.types(seen), ["LegEnded", "LegEnded", "CallEnded"])
        ended, snapshot = seen[-1]
        self.assertEqual((ended.cause, ended.hangup_by), ("remote_hangup", "remote"))
        self.assertEqual((ended.cdr["call_id"], ended.cdr["cause"]), (call_id, "remote_hangup"))
        self.assertEqual(snapshot.state, "RELEASED")

    # -- commands on a call ------------------------------------------------------------------------

    def test_hold_and_retrieve_are_idempotent(self):
        call_id = self.talking()
        self.assertEqual(self.successResultOf(self.calls.hold(call_id)).state, "HELD")
        self.assertEqual(self.successResultOf(self.calls.hold(call_id)).state, "HELD")
        seen = self.take()
        self.assertEqual(self.types(seen), ["LegHeld"])
        self.assertEqual(seen[0][1].state, "HELD")
        self.assertEqual(self.successResultOf(self.calls.retrieve(call_id)).state, "TALKING")
        self.assertEqual(self.successResultOf(self.calls.retrieve(call_id)).state, "TALKING")
        self.assertEqual(self.types(self.take()), ["LegRetrieved"])

    def test_mute_and_unmute_are_idempotent(self):
        call_id = self.talking()
        self.assertTrue(self.successResultOf(self.calls.mute(call_id)).muted)
        self.assertTrue(self.successResultOf(self.calls.mute(call_id)).muted)
        seen = self.take()
        self.assertEqual(self.types(seen), ["LegMuted"])
        self.assertTrue(seen[0][1].muted)
        self.assertFalse(self.successResultOf(self.calls.unmute(call_id)).muted)
        self.assertEqual(self.types(self.take()), ["LegUnmuted"])

    def test_hangup_ends_every_leg_and_the_call_stays_queryable(self):
        call_id = self.talking()
        call = self.successResultOf(self.calls.hangup(call_id, by="desktop"))
        self.assertEqual((call.state, call.cause, call.hangup_by), ("RELEASED", "normal", "desktop"))
        seen = self.take()
        self.assertEqual(self.types(seen), ["LegEnded", "LegEnded", "CallEnded"])
        self.assertEqual(seen[-1][0].cdr["hangup_by"], "desktop")
        self.assertEqual(self.calls.calls(), [])
        self.assertEqual([c.call_id for c in self.calls.calls(include_released=True)], [call_id])
        self.assertEqual(self.calls.call(call_id).state, "RELEASED")
        self.failureResultOf(self.calls.hangup(call_id), IllegalState)

    def test_cancel_gives_up_an_unanswered_call_only(self):
        inbound = self.ring_inbound(ALICE, "5550111")
        call = self.successResultOf(self.calls.cancel(inbound, by="desktop"))
        self.assertEqual((call.cause, call.hangup_by), ("rejected", "desktop"))
        outbound = self.originate()
        self.assertEqual(self.successResultOf(self.calls.cancel(outbound)).cause, "normal")
        talking = self.talking()
        self.failureResultOf(self.calls.cancel(talking), IllegalState)
        self.assertEqual(self.calls.call(talking).state, "TALKING")

    def test_reject_refuses_an_alerting_call_only(self):
        outbound = self.originate()
        self.failureResultOf(self.calls.reject(outbound), IllegalState)
        inbound = self.ring_inbound(BOB, "5550111")
        self.assertEqual(self.successResultOf(self.calls.reject(inbound)).cause, "rejected")

    def test_send_dtmf_fires_once_played(self):
        call_id = self.talking()
        d = self.calls.send_dtmf(call_id, "12#")
        self.settle()
        self.assertEqual(self.successResultOf(d).dtmf_count, 3)
        self.failureResultOf(self.calls.send_dtmf(call_id, "12x"), InvalidArgument)
        self.failureResultOf(self.calls.send_dtmf(call_id, "1" * 65), InvalidArgument)
        self.failureResultOf(self.calls.send_dtmf(call_id, "1", duration_ms=5), InvalidArgument)
        ringing = self.ring_inbound(BOB, "5550111")
        self.failureResultOf(self.calls.send_dtmf(ringing, "1"), IllegalState)

    def test_commands_illegal_in_the_calls_state_are_refused(self):
        call_id = self.ring_inbound(ALICE, "5550111")
        self.take()
        for command in (self.calls.hold, self.calls.retrieve, self.calls.mute, self.calls.unmute, self.calls.flush):
            failure = self.failureResultOf(command(call_id), IllegalState)
            self.assertEqual(failure.value.state, "RINGING")
        self.failureResultOf(self.calls.transfer(call_id, "5554321"), IllegalState)
        self.assertEqual((self.calls.call(call_id).state, self.take()), ("RINGING", []))

    def test_remove_party_of_an_unknown_number(self):
        call_id = self.talking()
        self.failureResultOf(self.calls.remove_party(call_id, "5550000"), UnknownParty)

    def test_commands_on_an_unknown_call_fail_with_unknown_call(self):
        commands = [
            self.calls.answer, self.calls.reject, self.calls.cancel, self.calls.hangup, self.calls.hold,
            self.calls.retrieve, self.calls.mute, self.calls.unmute, self.calls.flush, self.calls.dispose,
            lambda c: self.calls.transfer(c, NUMBER), lambda c: self.calls.conference(c, NUMBER),
            lambda c: self.calls.remove_party(c, NUMBER), lambda c: self.calls.send_dtmf(c, "1"),
        ]
        for command in commands:
            failure = self.failureResultOf(command("0123456789abcdef"), UnknownCall)
            self.assertEqual(failure.value.call_id, "0123456789abcdef")
        self.assertRaises(UnknownCall, self.calls.call, "0123456789abcdef")

    def test_dispose_forgets_the_call(self):
        call_id = self.talking()
        self.assertIsNone(self.successResultOf(self.calls.dispose(call_id)))
        self.assertEqual(self.types(self.take()), ["LegEnded", "LegEnded", "CallEnded"])
        self.assertRaises(UnknownCall, self.calls.call, call_id)

    def test_a_transfer_moves_the_party_to_a_new_call(self):
        call_id = self.talking()
        self.successResultOf(self.calls.transfer(call_id, "5554321", by="desktop"))
        self.settle()
        self.party_answers(call_id)
        self.settle()
        old = self.calls.call(call_id)
        self.assertEqual((old.state, old.cause, old.hangup_by), ("RELEASED", "transferred", "desktop"))
        successor, = [c for c in self.calls.calls() if c.attributes.get("transferred_from") == call_id]
        self.assertEqual(sorted(p.number for p in successor.parties), [NUMBER, "5554321"])
        self.assertIsNone(successor.extension)

    def test_a_failed_conference_leaves_the_call_as_it_was(self):
        call_id = self.talking()
        self.successResultOf(self.calls.conference(call_id, "5554321"))
        self.settle()
        self.take()
        self.party_hangs_up(call_id, "5554321")
        seen = self.take()
        self.assertEqual(self.types(seen), ["LegEnded", "ConferenceFailed"])
        self.assertEqual(seen[-1][0].reason, "hung up before answering")
        self.assertEqual((seen[-1][1].state, [p.number for p in seen[-1][1].parties]), ("TALKING", [NUMBER]))

    def test_a_conference_party_is_added(self):
        call_id = self.talking()
        self.successResultOf(self.calls.hold(call_id))
        self.successResultOf(self.calls.conference(call_id, "5554321"))
        self.settle()
        self.take()
        self.party_answers(call_id)
        self.settle()
        seen = self.take()
        self.assertEqual(self.types(seen), ["LegAnswered", "LegRetrieved", "PartyAdded"])
        self.assertEqual(sorted(p.number for p in seen[-1][1].parties), [NUMBER, "5554321"])

    # -- events --------------------------------------------------------------------------------------

    def test_subscribing_per_extension_and_unsubscribing(self):
        alices, bobs = [], []
        stop_alice = self.calls.subscribe(lambda event, call: alices.append(event.type), extension=ALICE)
        self.calls.subscribe(lambda event, call: bobs.append(event.type), extension=BOB)
        call_id = self.originate(ALICE)
        self.assertEqual(alices, ["CallCreated", "LegCreated", "LegDialing", "LegRinging"])
        self.assertEqual(bobs, [])
        stop_alice()
        stop_alice()  # twice is harmless
        self.successResultOf(self.calls.cancel(call_id))
        self.assertEqual(len(alices), 4)
        self.assertEqual(self.types(self.take())[-1], "CallEnded")

    def test_an_observers_command_follows_the_events_that_caused_it(self):
        """An observer answering the phone as soon as it rings: its events come after the ringing,
        with snapshots taken after its command."""
        def answer_when_ringing(event, call):
            if isinstance(event, ev.LegRinging) and call.state == "RINGING" and call.legs[-1].alerting_at is not None:
                self.calls.answer(event.call_id)

        self.calls.subscribe(answer_when_ringing, extension=ALICE)
        call_id = self.ring_inbound(ALICE, "5550111")
        seen = self.take()
        self.assertEqual(self.types(seen)[-3:], ["LegRinging", "LegAnswered", "LegAnswered"])
        self.assertEqual(seen[-3][1].state, "RINGING")
        self.assertEqual(seen[-1][1].state, "TALKING")
        self.assertEqual(self.calls.call(call_id).state, "TALKING")

    # -- queries -------------------------------------------------------------------------------------

    def test_queries(self):
        outbound = self.talking()
        inbound = self.ring_inbound(BOB, "5550111")
        self.assertEqual([c.call_id for c in self.calls.calls()], [outbound, inbound])
        self.assertEqual(self.calls.active_call_for(ALICE).call_id, outbound)
        self.assertIsNone(self.calls.active_call_for("1002"))
        self.assertEqual(self.calls.status(), {"live_calls": 2, "by_state": {"TALKING": 1, "RINGING": 1},
                                               "retained_calls": 0})
        self.assertEqual(dict(self.calls.leg_states()), {"TALKING": 2, "RINGING": 2})
        self.successResultOf(self.calls.hangup(outbound))
        self.assertEqual([c.call_id for c in self.calls.calls_for(ALICE)], [outbound])
        self.assertIsNone(self.calls.active_call_for(ALICE))
        self.assertEqual(self.calls.status()["retained_calls"], 1)
        self.assertEqual(self.calls.call(outbound).to_dict()["state"], "RELEASED")


class RegistryContractTests(CallControlContract, SynchronousTestCase):
    """The real registry, on the simulated network (nobody answers by themselves within a settle)."""

    DIDS = {ALICE: "103", BOB: "100"}

    def make(self):
        self.h = Harness(ring_time=25.0, phone_answer_delay=25.0)
        return self.h.registry

    def settle(self):
        self.h.advance(0.5)

    def _number(self, call_id, fits):
        return next(leg.number for leg in reversed(self.calls.call(call_id).legs) if fits(leg))

    def ring_inbound(self, extension, caller):
        self.h.network.place_inbound(caller, self.DIDS[extension])
        self.settle()
        return self.calls.active_call_for(extension).call_id

    def phone_answers(self, call_id):
        self.h.network.party(self.calls.call(call_id).extension).answer()

    def party_answers(self, call_id):
        number = self._number(call_id, lambda leg: leg.role == "party" and leg.state == "DIALING")
        self.h.network.party(number).answer()

    def party_hangs_up(self, call_id, number):
        self.h.network.party(number).hang_up()


class FakeContractTests(CallControlContract, SynchronousTestCase):
    """The shipped fake."""

    def make(self):
        return FakeCallControl([Extension(id="1001", name="Alice", device="sim"),
                                Extension(id="1002", name="Bob", device="sim"),
                                Extension(id="1003", name="Carol", device="sim:manual")])

    def settle(self):
        pass

    def ring_inbound(self, extension, caller):
        return self.calls.ring_inbound(extension, caller).call_id

    def phone_answers(self, call_id):
        self.calls.phone_answers(call_id)

    def party_answers(self, call_id):
        self.calls.party_answers(call_id)

    def party_hangs_up(self, call_id, number):
        self.calls.party_hangs_up(call_id, number)


class FakeTests(SynchronousTestCase):
    """What the fake adds for tests: scripted failures, the record of commands, its far end."""

    def setUp(self):
        self.calls = FakeCallControl(["1001", "1002"])
        self.seen = []
        self.calls.subscribe(lambda event, call: self.seen.append(event.type))

    def test_fail_next_fails_one_command_and_changes_nothing(self):
        call_id = self.calls.ring_inbound("1001", "5550111").call_id
        self.successResultOf(self.calls.answer(call_id))
        self.calls.fail_next("hold", IllegalState("hold", "TALKING"))
        del self.seen[:]
        self.failureResultOf(self.calls.hold(call_id), IllegalState)
        self.assertEqual((self.seen, self.calls.call(call_id).state), ([], "TALKING"))
        self.assertEqual(self.successResultOf(self.calls.hold(call_id)).state, "HELD")
        self.assertEqual(self.calls.commands[-2:], [("hold", (call_id,), {}), ("hold", (call_id,), {})])
        self.assertRaises(ValueError, self.calls.fail_next, "shutdown", IllegalState("x", "y"))

    def test_the_commands_are_noted_with_their_arguments(self):
        call = self.successResultOf(self.calls.originate("1001", "5551234", if_busy="replace", by="desktop"))
        self.calls.cancel(call.call_id, by="desktop")
        self.assertEqual(self.calls.commands, [
            ("originate", ("1001", "5551234"), {"if_busy": "replace", "by": "desktop"}),
            ("cancel", (call.call_id,), {"by": "desktop"}),
        ])
        self.assertEqual([cdr["call_id"] for cdr in self.calls.cdrs], [call.call_id])

    def test_a_dialled_party_can_be_busy_fail_or_not_answer(self):
        for report, cause in (("party_busy", "busy"), ("party_fails", "failed"), ("party_no_answer", "no_answer")):
            call_id = self.successResultOf(self.calls.originate("1001", "5551234")).call_id
            self.calls.phone_answers(call_id)
            getattr(self.calls, report)(call_id)
            self.assertEqual(self.calls.call(call_id).cause, cause)

    def test_a_call_to_a_busy_extension_ends_at_once(self):
        self.calls.ring_inbound("1001", "5550111")
        busy = self.calls.ring_inbound("1001", "5550222")
        self.assertEqual((busy.state, busy.cause), ("RELEASED", "busy"))

    def test_the_phone_hanging_up_ends_the_call_and_dtmf_from_the_party_is_an_event(self):
        call_id = self.calls.ring_inbound("1001", "5550111", attributes={"sessionId": "s1"}).call_id
        self.successResultOf(self.calls.answer(call_id))
        self.calls.party_sends_dtmf(call_id, "5")
        self.successResultOf(self.calls.send_dtmf(call_id, "12"))
        self.successResultOf(self.calls.flush(call_id))
        self.calls.phone_hangs_up(call_id)
        call = self.calls.call(call_id)
        self.assertEqual((call.cause, call.hangup_by, call.dtmf_count), ("normal", "extension", 3))
        self.assertEqual((self.calls.dtmf_sent, self.calls.flushed), ([(call_id, "12")], [call_id]))
        self.assertEqual(call.attributes, {"sessionId": "s1"})
        self.assertIn("DtmfReceived", self.seen)

    def test_released_calls_are_forgotten_after_the_retention_on_the_clock(self):
        call_id = self.calls.ring_inbound("1001", "5550111").call_id
        self.successResultOf(self.calls.reject(call_id))
        self.calls.clock.advance(60)
        self.assertRaises(UnknownCall, self.calls.call, call_id)

    def test_the_fake_does_not_import_the_registry(self):
        """A fake built on the registry would pass the contract by definition."""
        path = pathlib.Path(__file__).resolve().parents[2] / "gateway" / "core" / "testing.py"
        imported = {node.module for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Import)
                     for alias in node.names}
        self.assertNotIn("gateway.core.registry", imported)
        self.assertNotIn("gateway.core.mediactl", imported)
