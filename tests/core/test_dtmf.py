"""The core's keypad rules (gateway.core.dtmf): the numbers it dials and the DTMF digits it plays, exactly."""

import inspect

from twisted.trial.unittest import SynchronousTestCase

from gateway.core import registry, testing
from gateway.core.dtmf import DTMF_DIGITS, PHONE_KEYS, is_dial_number, is_dtmf_sequence

#: every character a rule could be tempted by: ASCII, the other Unicode digits, and line ends
CHARACTERS = [chr(code) for code in range(128)] + ["\u0661", "\uff11", "\u00b2", "\u2028", "\x85"]


class DialNumberTests(SynchronousTestCase):
    def test_a_number_is_an_optional_plus_then_1_to_40_phone_keys(self):
        for number in ("1", "5550100", "+6281234", "*21#", "#", "+*", "9" * 40, "+" + "0" * 40):
            self.assertTrue(is_dial_number(number), number)
        for number in ("", "+", "++1", "1+", "9" * 41, "+" + "0" * 41, "555 0100", "555-0100", "A", "1a"):
            self.assertFalse(is_dial_number(number), number)

    def test_each_character_alone_is_a_number_only_if_it_is_a_phone_key(self):
        for character in CHARACTERS:
            self.assertEqual(is_dial_number(character), character in PHONE_KEYS, repr(character))

    def test_the_whole_text_must_match_not_a_prefix_nor_before_a_final_newline(self):
        for number in ("5550100\n", "5550100\r\n", " 5550100", "5550100\x00", "\n5550100", "1\n"):
            self.assertFalse(is_dial_number(number), repr(number))


class DtmfSequenceTests(SynchronousTestCase):
    def test_each_character_alone_is_a_sequence_only_if_it_is_a_dtmf_digit(self):
        for character in CHARACTERS:
            self.assertEqual(is_dtmf_sequence(character), character in DTMF_DIGITS, repr(character))

    def test_a_sequence_is_one_or_more_digits_matched_whole(self):
        self.assertTrue(is_dtmf_sequence("0123456789*#ABCD" * 10))  # the length limit is checked apart
        for digits in ("", "a", "12\n", "1\n", "1 2", "12E"):
            self.assertFalse(is_dtmf_sequence(digits), repr(digits))


class OneRuleTests(SynchronousTestCase):
    def test_the_registry_and_the_fake_use_these_rules_and_keep_no_copy(self):
        for module in (registry, testing):
            source = inspect.getsource(module)
            self.assertIn("is_dial_number(", source, module.__name__)
            self.assertIn("is_dtmf_sequence(", source, module.__name__)
            self.assertNotIn("re.compile", source, module.__name__)
