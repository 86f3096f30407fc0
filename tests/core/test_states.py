"""The transition table: every legal transition, and every other (state, input) refused."""

import itertools

from twisted.trial.unittest import SynchronousTestCase

from gateway.core.errors import IllegalState
from gateway.core.states import TRANSITIONS, LegState, next_state

R, D, T, H, X = LegState.RINGING, LegState.DIALING, LegState.TALKING, LegState.HELD, LegState.RELEASED

LEGAL = {
    (R, "answer"): T, (D, "answer"): T, (R, "answered"): T, (D, "answered"): T, (R, "reject"): X,
    (R, "cancel"): X, (D, "cancel"): X,
    (T, "hold"): H, (H, "hold"): H, (H, "retrieve"): T, (T, "retrieve"): T,
    **{(s, c): s for s in (T, H)
       for c in ("mute", "unmute", "dtmf", "flush", "transfer", "conference", "remove_party", "consult",
                 "alternate", "transfer_to_consult", "conference_in_consult")},
    **{(s, c): X for s in (R, D, T, H) for c in ("release", "hangup")},
}
INPUTS = sorted({command for _, command in LEGAL})


class TransitionTests(SynchronousTestCase):
    def test_the_table_is_exactly_the_legal_transitions(self):
        self.assertEqual(TRANSITIONS, LEGAL)

    def test_every_legal_transition(self):
        for (state, command), target in LEGAL.items():
            self.assertIs(next_state(state, command), target, (state, command))

    def test_every_illegal_transition_names_the_command_and_the_state(self):
        illegal = [(s, c) for s, c in itertools.product(LegState, INPUTS) if (s, c) not in LEGAL]
        self.assertIn((X, "hangup"), illegal)
        self.assertIn((R, "hold"), illegal)
        for state, command in illegal:
            error = self.assertRaises(IllegalState, next_state, state, command, "leg")
            self.assertEqual(str(error), f"cannot {command}: the leg is {state.value}")
            self.assertEqual((error.command, error.state), (command, state.value))

    def test_nothing_leaves_released(self):
        self.assertEqual([c for s, c in TRANSITIONS if s is X], [])
