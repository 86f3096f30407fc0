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
#: the party a consult dials, and numbers whose dial the simulated network makes busy, unanswered, failed
CONSULTED = "5554321"
BUSY_NUMBER, NO_ANSWER_NUMBER, FAILING_NUMBER = "5550001", "5558881", "5559991"


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

    def phone_hangs_up(self, call_id) -> None:
        """The extension's phone of ``call_id`` hangs up."""
        raise NotImplementedError

    def consult_fails(self, call_id, cause) -> None:
        """The party ``call_id`` dials (one of BUSY_NUMBER, NO_ANSWER_NUMBER, FAILING_NUMBER) ends with ``cause``."""
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

    # -- consult: attended transfer, alternate, conference in consult ----------------------------------

    def consulting(self, number=CONSULTED, answered=True):
        """ALICE's primary talking to NUMBER, held while a consult call dials ``number`` (answered if
        asked); returns (primary, consult) ids."""
        primary = self.talking()
        consult = self.successResultOf(self.calls.consult(primary, number, by="desktop")).call_id
        self.settle()
        if answered:
            self.party_answers(consult)
            self.settle()
        self.take()
        return primary, consult

    def states(self, *call_ids):
        return [self.calls.call(c).state for c in call_ids]

    def test_consult_holds_the_primary_and_dials_for_the_same_extension(self):
        primary = self.talking()
        consult = self.successResultOf(self.calls.consult(primary, CONSULTED, by="desktop"))
        self.assertEqual((consult.extension, consult.direction, consult.caller, consult.number, consult.state),
                         (ALICE, "outbound", ALICE, CONSULTED, "DIALING"))
        self.assertEqual((consult.consult_of, consult.consult, consult.consults), (primary, None, ()))
        self.assertEqual([(leg.role, leg.state, leg.number) for leg in consult.legs],
                         [("device", "TALKING", ALICE), ("party", "DIALING", CONSULTED)])
        self.settle()
        seen = self.take()
        self.assertEqual(self.types(seen), ["LegHeld", "CallCreated", "LegCreated", "LegCreated", "LegDialing",
                                            "ConsultStarted", "LegRinging"])
        self.assertEqual([e.call_id for e, _ in seen],
                         [primary] + [consult.call_id] * 4 + [primary, consult.call_id])
        self.assertEqual({e.extension for e, _ in seen}, {ALICE})
        started, snapshot = seen[5]
        self.assertEqual((started.consult_id, started.number), (consult.call_id, CONSULTED))
        self.assertEqual((snapshot.state, snapshot.consult, snapshot.consults), ("HELD", consult.call_id,
                                                                                (consult.call_id,)))
        self.assertEqual(seen[1][1].consult_of, primary)
        self.assertEqual(self.calls.call(primary).to_dict()["consult"], consult.call_id)
        self.assertEqual(self.calls.active_call_for(ALICE).call_id, primary)
        self.party_answers(consult.call_id)
        self.settle()
        (answered, snapshot), = self.take()
        self.assertEqual((answered.type, snapshot.state, snapshot.call_id), ("LegAnswered", "TALKING", consult.call_id))
        self.assertEqual(self.states(primary, consult.call_id), ["HELD", "TALKING"])

    def test_releasing_the_consult_returns_to_the_primary_on_hold(self):
        primary, consult = self.consulting()
        ended = self.successResultOf(self.calls.hangup(consult, by="desktop"))
        self.assertEqual((ended.state, ended.cause, ended.hangup_by, ended.consult_of),
                         ("RELEASED", "normal", "desktop", primary))
        seen = self.take()
        self.assertEqual(self.types(seen), ["LegEnded", "LegEnded", "CallEnded", "ConsultEnded"])
        cdr = seen[2][0].cdr
        self.assertEqual((cdr["consult_of"], cdr["consults"], cdr["cause"]), (primary, [], "normal"))
        self.assertEqual([leg["role"] for leg in cdr["legs"]], ["device", "party"])
        event, snapshot = seen[3]
        self.assertEqual((event.call_id, event.consult_id, event.outcome, event.cause), (primary, consult, "released",
                                                                                       "normal"))
        self.assertEqual((snapshot.state, snapshot.consult, snapshot.consults), ("HELD", None, (consult,)))
        self.assertEqual(self.successResultOf(self.calls.retrieve(primary)).state, "TALKING")
        self.successResultOf(self.calls.hangup(primary))
        cdr = self.take()[-1][0].cdr
        self.assertEqual((cdr["call_id"], cdr["consult_of"], cdr["consults"]), (primary, None, [consult]))

    def test_a_busy_unanswered_or_failed_consult_leaves_the_primary_held(self):
        for number, cause in ((BUSY_NUMBER, "busy"), (NO_ANSWER_NUMBER, "no_answer"), (FAILING_NUMBER, "failed")):
            primary = self.talking()
            consult = self.successResultOf(self.calls.consult(primary, number)).call_id
            self.consult_fails(consult, cause)
            seen = self.take()
            self.assertEqual(self.types(seen)[-4:], ["LegEnded", "LegEnded", "CallEnded", "ConsultEnded"], cause)
            ended = self.calls.call(consult)
            self.assertEqual((ended.state, ended.cause, ended.hangup_by), ("RELEASED", cause, "remote"))
            self.assertEqual((seen[-1][0].outcome, seen[-1][0].cause), ("released", cause))
            self.assertEqual((self.calls.call(primary).state, self.calls.call(primary).consult), ("HELD", None))
            self.assertEqual(self.successResultOf(self.calls.retrieve(primary)).state, "TALKING")
            self.successResultOf(self.calls.hangup(primary))

    def test_the_consulted_party_hanging_up(self):
        primary, consult = self.consulting()
        self.party_hangs_up(consult, CONSULTED)
        seen = self.take()
        self.assertEqual(self.types(seen), ["LegEnded", "LegEnded", "CallEnded", "ConsultEnded"])
        self.assertEqual((seen[2][0].cause, seen[2][0].hangup_by), ("remote_hangup", "remote"))
        self.assertEqual(self.states(primary, consult), ["HELD", "RELEASED"])
        self.assertEqual(self.successResultOf(self.calls.retrieve(primary)).state, "TALKING")

    def test_the_primary_party_hanging_up_during_the_consult(self):
        primary, consult = self.consulting()
        self.party_hangs_up(primary, NUMBER)
        seen = self.take()
        self.assertEqual(self.types(seen), ["LegEnded", "ConsultEnded", "LegEnded", "CallEnded"])
        self.assertEqual({e.call_id for e, _ in seen}, {primary})
        self.assertEqual((seen[1][0].outcome, seen[1][0].cause), ("primary_ended", "remote_hangup"))
        self.assertEqual(seen[-1][0].cdr["consults"], [consult])
        self.assertEqual(self.states(primary, consult), ["RELEASED", "TALKING"])
        self.assertEqual(self.calls.call(consult).consult_of, primary)
        self.assertEqual(self.calls.active_call_for(ALICE).call_id, consult)
        # the consult is the extension's ordinary call now: the phone hanging up ends it
        self.phone_hangs_up(consult)
        ended = self.calls.call(consult)
        self.assertEqual((ended.state, ended.cause, ended.hangup_by), ("RELEASED", "normal", "extension"))
        self.assertEqual(self.types(self.take()), ["LegEnded", "LegEnded", "CallEnded"])

    def test_the_agent_releasing_the_primary_during_the_consult(self):
        primary, consult = self.consulting()
        self.successResultOf(self.calls.hangup(primary, by="desktop"))
        self.assertEqual(self.types(self.take()), ["ConsultEnded", "LegEnded", "LegEnded", "CallEnded"])
        self.assertEqual(self.states(primary, consult), ["RELEASED", "TALKING"])
        self.assertEqual(self.successResultOf(self.calls.hangup(consult)).cause, "normal")
        self.assertEqual(self.types(self.take()), ["LegEnded", "LegEnded", "CallEnded"])

    def test_the_phone_hanging_up_ends_both_calls(self):
        primary, consult = self.consulting()
        self.phone_hangs_up(primary)
        for call_id in (primary, consult):
            call = self.calls.call(call_id)
            self.assertEqual((call.state, call.cause, call.hangup_by), ("RELEASED", "normal", "extension"))
        self.assertEqual(self.calls.calls(), [])

    def test_alternate_swaps_which_call_is_held(self):
        primary, consult = self.consulting()
        snapshot = self.successResultOf(self.calls.alternate(primary, by="desktop"))
        self.assertEqual((snapshot.call_id, snapshot.state), (primary, "TALKING"))
        seen = self.take()
        self.assertEqual([(e.type, e.call_id) for e, _ in seen], [("LegHeld", consult), ("LegRetrieved", primary)])
        self.assertEqual(self.states(primary, consult), ["TALKING", "HELD"])
        self.successResultOf(self.calls.alternate(consult))  # either call names the pair
        self.assertEqual(self.states(primary, consult), ["HELD", "TALKING"])
        self.successResultOf(self.calls.hold(consult))
        self.successResultOf(self.calls.alternate(consult))  # both held: the named one is retrieved
        self.assertEqual(self.states(primary, consult), ["HELD", "TALKING"])
        # retrieving one of the pair holds the other
        self.take()
        self.assertEqual(self.successResultOf(self.calls.retrieve(primary)).state, "TALKING")
        self.assertEqual([(e.type, e.call_id) for e, _ in self.take()], [("LegHeld", consult), ("LegRetrieved", primary)])
        self.assertEqual(self.states(primary, consult), ["TALKING", "HELD"])

    def test_alternate_and_joining_need_an_answered_consult(self):
        primary, consult = self.consulting(answered=False)
        for command in (self.calls.alternate, self.calls.transfer_to_consult, self.calls.conference_in_consult):
            for call_id in (primary, consult):
                failure = self.failureResultOf(command(call_id), IllegalState)
                self.assertEqual(failure.value.state, "DIALING")
        self.failureResultOf(self.calls.retrieve(primary), IllegalState)
        self.assertEqual(self.take(), [])
        self.assertEqual(self.states(primary, consult), ["HELD", "DIALING"])
        self.successResultOf(self.calls.hangup(consult))
        self.successResultOf(self.calls.hangup(primary))
        lone = self.talking()
        for command in (self.calls.alternate, self.calls.transfer_to_consult, self.calls.conference_in_consult):
            failure = self.failureResultOf(command(lone), IllegalState)
            self.assertIn("no consult", str(failure.value))

    def test_transfer_to_consult_joins_the_two_parties_and_drops_the_agent(self):
        primary, consult = self.consulting()
        self.successResultOf(self.calls.alternate(primary))  # the consulted party is held now: retrieved too
        self.take()
        snapshot = self.successResultOf(self.calls.transfer_to_consult(consult, by="desktop"))
        self.assertEqual((snapshot.call_id, snapshot.state, snapshot.cause), (primary, "RELEASED", "transferred"))
        seen = self.take()
        calls = [e.call_id for e, _ in seen]
        successor = calls[-1]
        self.assertEqual([(e.type, c) for (e, _), c in zip(seen, calls)][:9], [
            ("ConsultEnded", primary), ("LegEnded", primary), ("LegEnded", primary), ("CallEnded", primary),
            ("LegEnded", consult), ("LegEnded", consult), ("CallEnded", consult), ("CallCreated", successor),
            ("LegCreated", successor)])
        self.assertEqual(seen[0][0].outcome, "transferred")
        for call_id in (primary, consult):
            call = self.calls.call(call_id)
            self.assertEqual((call.cause, call.hangup_by), ("transferred", "desktop"))
            self.assertEqual({leg.cause for leg in call.legs}, {"transferred"})
            self.assertEqual({leg.role for leg in call.legs}, {"device", "party"})
        new = self.calls.call(successor)
        self.assertEqual((new.extension, new.state, new.attributes["transferred_from"], new.attributes["consult_id"]),
                         (None, "TALKING", primary, consult))
        self.assertEqual([(p.number, p.state) for p in new.parties], [(NUMBER, "TALKING"), (CONSULTED, "TALKING")])
        self.assertIsNone(self.calls.active_call_for(ALICE))
        self.assertEqual({e.extension for e, _ in seen if e.call_id == successor}, {None})

    def test_conference_in_consult_joins_all_three(self):
        primary, consult = self.consulting()
        snapshot = self.successResultOf(self.calls.conference_in_consult(consult, by="desktop"))
        self.assertEqual((snapshot.call_id, snapshot.state, snapshot.consult), (primary, "TALKING", None))
        self.assertEqual([(p.number, p.state) for p in snapshot.parties], [(NUMBER, "TALKING"), (CONSULTED, "TALKING")])
        seen = self.take()
        self.assertEqual([(e.type, e.call_id) for e, _ in seen], [
            ("LegEnded", consult), ("LegEnded", consult), ("CallEnded", consult), ("ConsultEnded", primary),
            ("LegCreated", primary), ("LegRetrieved", primary), ("PartyAdded", primary)])
        self.assertEqual((seen[3][0].outcome, seen[4][0].number, seen[6][0].number), ("conferenced", CONSULTED,
                                                                                      CONSULTED))
        ended = self.calls.call(consult)
        self.assertEqual((ended.cause, ended.hangup_by, ended.consult_of), ("conferenced", "desktop", primary))
        self.assertEqual({leg.cause for leg in ended.legs}, {"conferenced"})
        # the conference goes on without one of the parties
        self.party_hangs_up(primary, CONSULTED)
        self.assertEqual([p.number for p in self.calls.call(primary).parties], [NUMBER])

    def test_consult_refusals_are_typed(self):
        ringing = self.ring_inbound(BOB, "5550111")
        self.failureResultOf(self.calls.consult(ringing, CONSULTED), IllegalState)
        primary, consult = self.consulting()
        self.failureResultOf(self.calls.consult(primary, "5554444"), IllegalState)
        self.failureResultOf(self.calls.consult(consult, "5554444"), IllegalState)
        self.failureResultOf(self.calls.transfer(primary, "5554444"), IllegalState)
        self.failureResultOf(self.calls.conference(consult, "5554444"), IllegalState)
        self.successResultOf(self.calls.hangup(consult))
        self.failureResultOf(self.calls.consult(primary, ALICE), InvalidArgument)
        self.failureResultOf(self.calls.consult(primary, "not a number"), InvalidArgument)
        self.failureResultOf(self.calls.consult(primary, BOB), ExtensionBusy)
        self.take()
        for command in (lambda c: self.calls.consult(c, NUMBER), self.calls.alternate, self.calls.transfer_to_consult,
                        self.calls.conference_in_consult):
            self.failureResultOf(command("0123456789abcdef"), UnknownCall)
        self.assertEqual(self.take(), [])
        self.assertEqual(self.calls.call(primary).state, "HELD")

    def test_consult_to_an_extension_and_mute_on_the_shared_phone(self):
        primary, consult = self.consulting(BOB)
        self.assertEqual(self.states(primary, consult), ["HELD", "TALKING"])
        self.take()
        self.assertTrue(self.successResultOf(self.calls.mute(consult)).muted)
        self.assertTrue(self.calls.call(primary).muted)
        self.assertEqual([(e.type, e.call_id) for e, _ in self.take()], [("LegMuted", consult), ("LegMuted", primary)])
        # a transfer to a consulted extension hands it the call, as a blind transfer to an extension does
        self.successResultOf(self.calls.transfer_to_consult(primary))
        successor = self.calls.active_call_for(BOB)
        self.assertEqual((successor.extension, successor.attributes["transferred_from"]), (BOB, primary))
        self.assertEqual([(leg.role, leg.number) for leg in successor.legs if leg.state != "RELEASED"],
                         [("party", NUMBER), ("device", BOB)])
        self.assertIsNone(self.calls.active_call_for(ALICE))

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

    def phone_hangs_up(self, call_id):
        self.h.network.party(self.calls.call(call_id).extension).hang_up()

    def consult_fails(self, call_id, cause):
        self.h.advance(11.0)  # the network's rules: busy after 1 s, failed after 0.5 s, no answer after 10 s

    def test_the_phone_hanging_up_ends_the_consult_after_the_ended_primary_is_forgotten(self):
        """The phone's reports still reach the consult once the primary it was dialled for is forgotten
        (forgetting a call lets go of its legs' driver legs, which ``_current_leg`` follows)."""
        primary, consult = self.consulting()
        self.party_hangs_up(primary, NUMBER)
        self.h.advance(61.0)  # past the registry's retention: the primary is forgotten
        self.assertRaises(UnknownCall, self.calls.call, primary)
        self.assertEqual(self.calls.call(consult).state, "TALKING")
        self.phone_hangs_up(consult)
        ended = self.calls.call(consult)
        self.assertEqual((ended.state, ended.cause, ended.hangup_by), ("RELEASED", "normal", "extension"))


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

    def phone_hangs_up(self, call_id):
        self.calls.phone_hangs_up(call_id)

    def consult_fails(self, call_id, cause):
        {"busy": self.calls.party_busy, "no_answer": self.calls.party_no_answer,
         "failed": self.calls.party_fails}[cause](call_id)


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
