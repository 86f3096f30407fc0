"""Commands on a call: hold, retrieve, mute, unmute, DTMF, transfer, conference, remove_party."""

from twisted.trial.unittest import SynchronousTestCase

from gateway.core import events as ev
from gateway.core.errors import (
    DriverError,
    ExtensionBusy,
    IllegalState,
    InvalidArgument,
    UnknownCall,
    UnknownParty,
)

from .harness import Harness

ALICE, REMOTE, THIRD = 500, 700, 900
HOLD_TONE = 425
#: the hold tone beeps 400 ms every 3 s: listening this long hears one beep whatever the phase
HOLD_LISTEN = 3.2


class _TalkingCallTest(SynchronousTestCase):
    """Each test starts with extension 1001 (playing ALICE) talking to 5551234 (playing REMOTE)."""

    def setUp(self):
        self.h = Harness()
        self.registry = self.h.registry
        self.call_id = self.h.talking_call(tones=(ALICE, REMOTE))
        self.phone = self.h.network.party("1001")
        self.remote = self.h.network.party("5551234")


class HoldMuteTests(_TalkingCallTest):
    def test_hold_plays_the_hold_tone_and_forwards_nothing(self):
        snapshot = self.successResultOf(self.registry.hold(self.call_id))
        self.assertEqual(snapshot.state, "HELD")
        self.assertEqual([p.state for p in snapshot.parties], ["HELD"])
        self.h.listen(HOLD_LISTEN)
        self.assertTrue(self.remote.heard_tone(HOLD_TONE, share=0.5))
        self.assertFalse(self.remote.heard_tone(ALICE))
        self.assertEqual(self.phone.heard.count(0), len(self.phone.heard))  # silence
        snapshot = self.successResultOf(self.registry.retrieve(self.call_id))
        self.assertEqual(snapshot.state, "TALKING")
        self.h.listen()
        self.assertTrue(self.remote.heard_tone(ALICE))
        self.assertTrue(self.phone.heard_tone(REMOTE))

    def test_hold_and_retrieve_are_idempotent(self):
        self.successResultOf(self.registry.hold(self.call_id))
        self.assertEqual(self.successResultOf(self.registry.hold(self.call_id)).state, "HELD")
        self.assertEqual(self.h.types(self.call_id).count("LegHeld"), 1)
        self.successResultOf(self.registry.retrieve(self.call_id))
        self.assertEqual(self.successResultOf(self.registry.retrieve(self.call_id)).state, "TALKING")
        self.assertEqual(self.h.types(self.call_id).count("LegRetrieved"), 1)

    def test_mute_stops_the_extensions_audio_only(self):
        snapshot = self.successResultOf(self.registry.mute(self.call_id))
        self.assertTrue(snapshot.muted)
        self.h.listen()
        self.assertFalse(self.remote.heard_tone(ALICE))
        self.assertTrue(self.phone.heard_tone(REMOTE))
        self.assertTrue(self.successResultOf(self.registry.mute(self.call_id)).muted)
        self.assertEqual(self.h.types(self.call_id).count("LegMuted"), 1)
        self.assertFalse(self.successResultOf(self.registry.unmute(self.call_id)).muted)
        self.successResultOf(self.registry.unmute(self.call_id))
        self.assertEqual(self.h.types(self.call_id).count("LegUnmuted"), 1)
        self.h.listen()
        self.assertTrue(self.remote.heard_tone(ALICE))

    def test_mute_survives_hold(self):
        self.successResultOf(self.registry.mute(self.call_id))
        self.successResultOf(self.registry.hold(self.call_id))
        snapshot = self.successResultOf(self.registry.retrieve(self.call_id))
        self.assertTrue(snapshot.muted)
        self.h.listen()
        self.assertFalse(self.remote.heard_tone(ALICE))


class IllegalStateTests(SynchronousTestCase):
    """hold, retrieve, mute, unmute, dtmf, transfer, conference are illegal while RINGING, DIALING, RELEASED."""

    COMMANDS = {
        "hold": lambda r, c: r.hold(c),
        "retrieve": lambda r, c: r.retrieve(c),
        "mute": lambda r, c: r.mute(c),
        "unmute": lambda r, c: r.unmute(c),
        "dtmf": lambda r, c: r.send_dtmf(c, "1"),
        "transfer": lambda r, c: r.transfer(c, "5552222"),
        "conference": lambda r, c: r.conference(c, "5552222"),
        "remove_party": lambda r, c: r.remove_party(c, "5551234"),
    }

    def check(self, h, call_id, state):
        self.assertEqual(h.state(call_id), state)
        for name, command in self.COMMANDS.items():
            error = self.failureResultOf(command(h.registry, call_id), IllegalState).value
            self.assertEqual(str(error), f"cannot {name}: the call is {state}")
            self.assertEqual((error.http_status, error.code), (409, "illegal_state"))
        self.assertEqual(h.state(call_id), state)

    def test_ringing(self):
        h = Harness()
        leg = h.network.place_inbound("0811", "103")
        self.check(h, leg.events.call_id, "RINGING")

    def test_dialing(self):
        h = Harness()
        call_id = h.registry.originate("1001", "5551234").result.call_id
        self.check(h, call_id, "DIALING")
        h.advance(1.0)
        self.check(h, call_id, "DIALING")

    def test_released(self):
        h = Harness()
        call_id = h.talking_call()
        self.successResultOf(h.registry.hangup(call_id))
        self.check(h, call_id, "RELEASED")
        for command in (h.registry.hangup, h.registry.answer, h.registry.reject):
            self.failureResultOf(command(call_id), IllegalState)

    def test_answer_is_illegal_once_talking(self):
        h = Harness()
        call_id = h.talking_call()
        self.assertEqual(str(self.failureResultOf(h.registry.answer(call_id), IllegalState).value),
                         "cannot answer: the call is TALKING")

    def test_unknown_call(self):
        h = Harness()
        for command in (*self.COMMANDS.values(), lambda r, c: r.hangup(c), lambda r, c: r.dispose(c)):
            error = self.failureResultOf(command(h.registry, "nope"), UnknownCall).value
            self.assertEqual(error.http_status, 404)
        self.assertRaises(UnknownCall, h.registry.call, "nope")


class DtmfTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.call_id = self.h.talking_call()
        self.remote = self.h.network.party("5551234")

    def test_fires_after_the_last_tone(self):
        start = self.h.clock.seconds()
        d = self.h.registry.send_dtmf(self.call_id, "12#", duration_ms=100, gap_ms=50)
        self.h.advance(0.3999)  # 3 x 100 ms of tone + 2 x 50 ms of gap = 400 ms
        self.assertNoResult(d)
        self.h.advance(0.0002)
        self.assertEqual(self.successResultOf(d).dtmf_count, 3)
        self.assertEqual(self.remote.digits_received, ["1", "2", "#"])
        timings = [(digit, round(s - start, 3), round(e - start, 3)) for digit, _, s, e in self.remote.dtmf_log]
        self.assertEqual(timings, [("1", 0.0, 0.1), ("2", 0.15, 0.25), ("#", 0.3, 0.4)])

    def test_sequences_do_not_interleave(self):
        first = self.h.registry.send_dtmf(self.call_id, "12", duration_ms=100, gap_ms=0)
        second = self.h.registry.send_dtmf(self.call_id, "ab", duration_ms=100, gap_ms=0)
        self.h.advance(0.2001)
        self.successResultOf(first)
        self.assertNoResult(second)
        self.h.advance(0.2)
        self.successResultOf(second)
        self.assertEqual(self.remote.digits_received, ["1", "2", "A", "B"])

    def test_bad_arguments(self):
        for digits, duration, gap in (("12x", 100, 50), ("", 100, 50), ("1", 5, 50), ("1", 100, -1), ("1", 1.5, 0)):
            error = self.failureResultOf(self.h.registry.send_dtmf(self.call_id, digits, duration, gap),
                                         InvalidArgument).value
            self.assertEqual(error.http_status, 400)
        self.assertEqual(self.remote.digits_received, [])

    def test_the_call_ending_midway_fails_the_rest(self):
        d = self.h.registry.send_dtmf(self.call_id, "123", duration_ms=100, gap_ms=50)
        self.h.advance(0.12)
        self.remote.hang_up()
        self.h.advance(1)
        self.failureResultOf(d, IllegalState)
        self.assertEqual(self.remote.digits_received, ["1"])

    def test_digits_from_the_party_become_events_and_count(self):
        d = self.remote.send_dtmf("5", 120)
        self.h.advance(0.1199)
        self.assertEqual(self.h.of(ev.DtmfReceived), [])
        self.h.advance(0.0002)
        self.successResultOf(d)
        [received] = self.h.of(ev.DtmfReceived)
        self.assertEqual((received.digit, received.duration_ms, received.extension), ("5", 120, "1001"))
        self.successResultOf(self.h.registry.hangup(self.call_id))
        self.assertEqual(self.h.cdrs[0]["dtmf_count"], 1)


class TransferTests(_TalkingCallTest):
    def test_blind_transfer_to_a_number(self):
        snapshot = self.successResultOf(self.registry.transfer(self.call_id, "5552222", by="desktop"))
        self.assertEqual(snapshot.state, "TALKING")
        self.assertEqual([leg.pending for leg in snapshot.legs], [None, None, "transfer"])
        self.assertEqual([p.number for p in snapshot.parties], ["5551234"])
        self.h.advance(2.0)
        old = self.registry.call(self.call_id)
        self.assertEqual((old.state, old.cause, old.hangup_by), ("RELEASED", "transferred", "desktop"))
        self.assertEqual(self.h.network.party("1001").state, "ended")
        [created] = self.h.of(ev.CallCreated)[1:]
        new = self.registry.call(created.call_id)
        self.assertEqual((new.state, new.extension, new.attributes["transferred_from"]),
                         ("TALKING", None, self.call_id))
        self.assertEqual([p.number for p in new.parties], ["5551234", "5552222"])
        target = self.h.network.party("5552222")
        target.play_tone(THIRD)
        self.h.listen()
        self.assertTrue(self.remote.heard_tone(THIRD))
        self.assertTrue(target.heard_tone(REMOTE))
        self.assertEqual([c["cause"] for c in self.h.cdrs], ["transferred"])
        self.assertEqual([leg["cause"] for leg in self.h.cdrs[0]["legs"]], ["transferred"] * 3)
        self.assertEqual(self.h.types(self.call_id)[-1], "CallEnded")
        self.assertEqual(self.registry.active_call_for("1001"), None)
        target.hang_up()
        self.assertEqual([c["cause"] for c in self.h.cdrs], ["transferred", "remote_hangup"])
        self.assertEqual(self.remote.state, "ended")

    def test_blind_transfer_to_an_extension(self):
        bob_events = []
        self.registry.subscribe(lambda event, call: bob_events.append(event), extension="1002")
        self.successResultOf(self.registry.transfer(self.call_id, "1002"))
        self.h.advance(2.0)
        self.assertEqual(self.h.state(self.call_id), "RELEASED")
        new = self.registry.active_call_for("1002")
        self.assertEqual(new.state, "TALKING")
        self.assertEqual([(leg.role, leg.number) for leg in new.legs], [("party", "5551234"), ("device", "1002")])
        self.assertEqual([e.type for e in bob_events], ["CallCreated", "LegCreated", "LegCreated"])
        self.successResultOf(self.registry.hold(new.call_id))
        self.h.network.party("1002").hang_up()
        self.assertEqual(self.registry.call(new.call_id).cause, "normal")

    def assert_intact(self, state="TALKING", muted=False):
        call = self.registry.call(self.call_id)
        self.assertEqual((call.state, call.muted), (state, muted))
        self.assertEqual([(p.number, p.state) for p in call.parties], [("5551234", state)])
        self.h.listen()
        if state == "TALKING" and not muted:
            self.assertTrue(self.remote.heard_tone(ALICE))
        if state == "HELD":
            self.h.listen(HOLD_LISTEN)
            self.assertTrue(self.remote.heard_tone(HOLD_TONE, share=0.5))
        self.assertTrue(self.h.network.party("1001").heard_tone(REMOTE) or state == "HELD")

    def failed_transfer(self, number, seconds, reason):
        self.successResultOf(self.registry.transfer(self.call_id, number))
        self.h.advance(seconds)
        [failed] = self.h.of(ev.TransferFailed)
        self.assertEqual(failed.reason, reason)
        self.assertIsNone(self.registry.call(self.call_id).attributes.get("transferred_from"))
        self.assertEqual(len(self.h.of(ev.CallCreated)), 1)

    def test_busy_leaves_the_call_as_it_was(self):
        self.failed_transfer("5550002", 1.0, "busy")
        self.assert_intact()

    def test_no_answer_leaves_a_held_muted_call_as_it_was(self):
        self.successResultOf(self.registry.hold(self.call_id))
        self.successResultOf(self.registry.mute(self.call_id))
        self.failed_transfer("5558882", 10.0, "no answer")
        self.assert_intact("HELD", muted=True)

    def test_failure_leaves_the_call_as_it_was(self):
        self.failed_transfer("5559992", 0.5, "failed: simulated failure")
        self.assert_intact()
        self.successResultOf(self.registry.hangup(self.call_id))
        [cdr] = self.h.cdrs
        self.assertEqual([leg["cause"] for leg in cdr["legs"]], ["normal", "normal", "failed"])

    def test_a_driver_refusing_the_dial_fails_the_request(self):
        error = self.failureResultOf(self.registry.transfer(self.call_id, "1004"), DriverError).value
        self.assertIn("nowhere", str(error))
        self.assert_intact()

    def test_refusals(self):
        self.failureResultOf(self.registry.transfer(self.call_id, "not a number!"), InvalidArgument)
        self.failureResultOf(self.registry.transfer(self.call_id, "1001"), InvalidArgument)
        self.h.network.place_inbound("0811", "103")  # Carol's phone rings
        self.failureResultOf(self.registry.transfer(self.call_id, "1003"), ExtensionBusy)
        self.successResultOf(self.registry.transfer(self.call_id, "5557001"))
        error = self.failureResultOf(self.registry.conference(self.call_id, "5552222"), IllegalState).value
        self.assertEqual(str(error), "cannot conference: the call is already dialling 5557001 for a transfer")

    def test_the_call_ending_during_a_transfer(self):
        self.successResultOf(self.registry.transfer(self.call_id, "5557001"))
        self.remote.hang_up()
        self.assertEqual([e.reason for e in self.h.of(ev.TransferFailed)], ["the call ended"])
        self.assertEqual(self.h.network.party("5557001").state, "ended")
        types = self.h.types(self.call_id)
        self.assertEqual(types[-1], "CallEnded")
        self.assertLess(types.index("TransferFailed"), types.index("CallEnded"))


class ConferenceTests(_TalkingCallTest):
    def add_third(self):
        self.successResultOf(self.registry.conference(self.call_id, "5553333"))
        self.h.advance(2.0)
        third = self.h.network.party("5553333")
        third.play_tone(THIRD)
        return third

    def test_each_party_hears_the_others_never_itself(self):
        third = self.add_third()
        call = self.registry.call(self.call_id)
        self.assertEqual((call.state, [p.number for p in call.parties]), ("TALKING", ["5551234", "5553333"]))
        [added] = self.h.of(ev.PartyAdded)
        self.assertEqual(added.number, "5553333")
        self.h.listen(1.0)
        for party, own, others in ((self.phone, ALICE, (REMOTE, THIRD)), (self.remote, REMOTE, (ALICE, THIRD)),
                                   (third, THIRD, (ALICE, REMOTE))):
            self.assertFalse(party.heard_tone(own), party)
            for other in others:
                self.assertTrue(party.heard_tone(other), (party, other))

    def test_hold_and_mute_in_a_conference(self):
        third = self.add_third()
        self.successResultOf(self.registry.hold(self.call_id))
        self.h.listen(HOLD_LISTEN)
        self.assertFalse(third.heard_tone(REMOTE))
        self.assertTrue(third.heard_tone(HOLD_TONE, share=0.5))
        self.successResultOf(self.registry.retrieve(self.call_id))
        self.successResultOf(self.registry.mute(self.call_id))
        self.h.listen(1.0)
        self.assertTrue(third.heard_tone(REMOTE))
        self.assertFalse(third.heard_tone(ALICE))

    def test_conferencing_a_held_call_retrieves_it(self):
        self.successResultOf(self.registry.hold(self.call_id))
        self.add_third()
        self.assertEqual(self.h.state(self.call_id), "TALKING")
        self.h.listen()
        self.assertTrue(self.remote.heard_tone(ALICE))

    def test_failure_leaves_the_call_as_it_was(self):
        self.successResultOf(self.registry.conference(self.call_id, "5550003"))
        self.h.advance(1.0)
        [failed] = self.h.of(ev.ConferenceFailed)
        self.assertEqual(failed.reason, "busy")
        call = self.registry.call(self.call_id)
        self.assertEqual((call.state, [p.number for p in call.parties]), ("TALKING", ["5551234"]))
        self.h.listen()
        self.assertTrue(self.remote.heard_tone(ALICE))
        self.assertTrue(self.phone.heard_tone(REMOTE))

    def test_the_party_hanging_up_while_ringing(self):
        self.successResultOf(self.registry.conference(self.call_id, "5557002"))
        self.h.advance(1.0)
        self.h.network.party("5557002").hang_up()
        self.assertEqual([e.reason for e in self.h.of(ev.ConferenceFailed)], ["hung up before answering"])
        self.assertEqual(self.h.state(self.call_id), "TALKING")

    def test_remove_party_goes_back_to_two(self):
        third = self.add_third()
        snapshot = self.successResultOf(self.registry.remove_party(self.call_id, "5553333"))
        self.assertEqual([p.number for p in snapshot.parties], ["5551234"])
        self.assertEqual(third.state, "ended")
        [removed] = self.h.of(ev.PartyRemoved)
        self.assertEqual(removed.number, "5553333")
        self.h.listen()
        self.assertTrue(self.remote.heard_tone(ALICE))
        self.assertTrue(self.phone.heard_tone(REMOTE))
        self.failureResultOf(self.registry.remove_party(self.call_id, "5553333"), UnknownParty)

    def test_a_party_hanging_up_leaves_the_others_talking(self):
        third = self.add_third()
        self.remote.hang_up()
        call = self.registry.call(self.call_id)
        self.assertEqual((call.state, [p.number for p in call.parties]), ("TALKING", ["5553333"]))
        self.assertEqual([e.number for e in self.h.of(ev.PartyRemoved)], ["5551234"])
        self.h.listen()
        self.assertTrue(third.heard_tone(ALICE))

    def test_removing_the_last_party_ends_the_call(self):
        snapshot = self.successResultOf(self.registry.remove_party(self.call_id, "5551234", by="desktop"))
        self.assertEqual((snapshot.state, snapshot.cause, snapshot.hangup_by), ("RELEASED", "normal", "desktop"))
        self.assertEqual(self.phone.state, "ended")
        self.assertEqual(len(self.h.cdrs), 1)
