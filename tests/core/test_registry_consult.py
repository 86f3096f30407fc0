"""Consult on the real registry, the simulated network and the real media apps: who hears whom while
the primary is held, while consulting, after alternate, after a transfer to consult and in a
conference in consult (tone detection), and what happens to the extension's shared phone."""

from twisted.trial.unittest import SynchronousTestCase

from gateway.core import events as ev
from gateway.core.errors import DriverError

from .harness import Harness

ALICE, REMOTE, THIRD = 500, 700, 900
HOLD_TONE = 425
#: the hold tone beeps 400 ms every 3 s: listening this long hears one beep whatever the phase
HOLD_LISTEN = 3.2
CONSULTED = "5552222"


class ConsultMediaTests(SynchronousTestCase):
    """Extension 1001 (playing ALICE) talks to 5551234 (playing REMOTE), then consults 5552222 (THIRD)."""

    def setUp(self):
        self.h = Harness()
        self.registry = self.h.registry
        self.primary = self.h.talking_call(tones=(ALICE, REMOTE))
        self.phone = self.h.network.party("1001")
        self.remote = self.h.network.party("5551234")
        self.consult = self.successResultOf(self.registry.consult(self.primary, CONSULTED)).call_id
        self.h.advance(2.5)
        self.consulted = self.h.network.party(CONSULTED)
        self.consulted.play_tone(THIRD)
        self.assertEqual((self.h.state(self.primary), self.h.state(self.consult)), ("HELD", "TALKING"))

    def hears(self, party, *tones):
        """``party`` heard each of ``tones`` and none of the others."""
        for tone in (ALICE, REMOTE, THIRD, HOLD_TONE):
            share = 0.5 if tone == HOLD_TONE else 0.1
            self.assertEqual(party.heard_tone(tone, share=share), tone in tones, (party, tone))

    def test_while_consulting_the_primary_party_hears_hold_and_the_agent_talks_to_the_consulted(self):
        self.h.listen(HOLD_LISTEN)
        self.hears(self.remote, HOLD_TONE)
        self.hears(self.phone, THIRD)
        self.hears(self.consulted, ALICE)

    def test_alternate_swaps_who_hears_hold(self):
        self.successResultOf(self.registry.alternate(self.primary))
        self.h.listen(HOLD_LISTEN)
        self.hears(self.remote, ALICE)
        self.hears(self.phone, REMOTE)
        self.hears(self.consulted, HOLD_TONE)
        self.successResultOf(self.registry.alternate(self.primary))
        self.h.listen(HOLD_LISTEN)
        self.hears(self.remote, HOLD_TONE)
        self.hears(self.phone, THIRD)
        self.hears(self.consulted, ALICE)

    def test_after_a_transfer_to_consult_the_two_parties_hear_each_other(self):
        self.successResultOf(self.registry.transfer_to_consult(self.primary, by="desktop"))
        self.assertEqual(self.phone.state, "ended")  # the agent is dropped
        self.h.listen(1.0)
        self.hears(self.remote, THIRD)
        self.hears(self.consulted, REMOTE)
        self.assertEqual([(c["call_id"], c["cause"]) for c in self.h.cdrs],
                         [(self.primary, "transferred"), (self.consult, "transferred")])
        self.assertEqual((self.h.cdrs[0]["consults"], self.h.cdrs[1]["consult_of"]), ([self.consult], self.primary))
        self.assertEqual([leg["cause"] for cdr in self.h.cdrs for leg in cdr["legs"]], ["transferred"] * 4)
        [new] = self.registry.calls()
        self.assertEqual([p.number for p in new.parties], ["5551234", CONSULTED])
        self.consulted.hang_up()
        self.assertEqual(self.h.cdrs[-1]["attributes"]["transferred_from"], self.primary)
        self.assertEqual(self.remote.state, "ended")

    def test_in_a_conference_in_consult_each_hears_the_other_two(self):
        self.successResultOf(self.registry.alternate(self.primary))  # from any of the states
        self.successResultOf(self.registry.conference_in_consult(self.consult))
        self.assertEqual(self.phone.state, "talking")
        self.h.listen(1.0)
        self.hears(self.phone, REMOTE, THIRD)
        self.hears(self.remote, ALICE, THIRD)
        self.hears(self.consulted, ALICE, REMOTE)
        self.assertEqual(self.h.cdrs[0]["cause"], "conferenced")
        self.assertEqual(set(self.h.media.sessions(self.consult)), set())
        self.successResultOf(self.registry.hangup(self.primary))
        self.assertEqual({p.state for p in (self.phone, self.remote, self.consulted)}, {"ended"})

    def test_releasing_the_consult_keeps_the_phone_and_the_primary_on_hold(self):
        self.successResultOf(self.registry.hangup(self.consult))
        self.assertEqual((self.phone.state, self.consulted.state), ("talking", "ended"))
        self.h.listen(HOLD_LISTEN)
        self.hears(self.remote, HOLD_TONE)
        self.hears(self.phone)
        self.successResultOf(self.registry.retrieve(self.primary))
        self.h.listen()
        self.hears(self.remote, ALICE)
        self.hears(self.phone, REMOTE)

    def test_the_primary_party_hanging_up_leaves_the_agent_talking_to_the_consulted(self):
        self.remote.hang_up()
        self.assertEqual(self.h.state(self.primary), "RELEASED")
        self.assertEqual(self.phone.state, "talking")
        self.h.listen()
        self.hears(self.phone, THIRD)
        self.hears(self.consulted, ALICE)
        self.successResultOf(self.registry.hangup(self.consult))
        self.assertEqual(self.phone.state, "ended")  # now the phone belonged to the consult alone

    def test_a_consult_the_driver_cannot_dial_fails_and_the_primary_stays_held(self):
        self.successResultOf(self.registry.hangup(self.consult))
        del self.h.events[:]
        self.failureResultOf(self.registry.consult(self.primary, "1004"), DriverError)  # its device: nowhere:x
        self.assertEqual(self.h.state(self.primary), "HELD")
        self.assertEqual(self.h.of(ev.ConsultStarted) + self.h.of(ev.ConsultEnded), [])
        [failed] = [c for c in self.registry.calls(include_released=True) if c.number == "1004"]
        self.assertEqual((failed.state, failed.cause, failed.consult_of), ("RELEASED", "failed", self.primary))
        self.assertEqual(self.phone.state, "talking")
        self.assertIsNone(self.registry.call(self.primary).consult)
