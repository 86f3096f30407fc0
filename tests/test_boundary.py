"""The boundary policy for peers' data: strict UTF-8, no lone surrogates, finite numbers, bounded nesting."""

import json

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway import boundary
from gateway.boundary import PeerDataError, load_json, parse_int, sanitise


class LoadJsonTests(SynchronousTestCase):
    def refused(self, data, **kwargs) -> PeerDataError:
        return self.assertRaises(PeerDataError, load_json, data, **kwargs)

    def test_valid_documents_load(self):
        self.assertEqual(load_json(b'{"a": [1, 2.5, "x", null, true]}'), {"a": [1, 2.5, "x", None, True]})
        self.assertEqual(load_json('"caf\\u00e9"'), "café")

    def test_a_valid_surrogate_pair_is_one_character(self):
        self.assertEqual(load_json(b'{"callerId": "\\ud83d\\ude00"}'), {"callerId": "\U0001f600"})

    def test_a_lone_surrogate_is_refused_naming_the_field(self):
        error = self.refused(b'{"event":"incoming_call","callerId":"\\ud800","didNumber":"555"}')
        self.assertEqual(error.field, "callerId")
        self.assertIn("callerId", str(error))
        self.assertIn("surrogate", str(error))

    def test_nested_fields_are_named_by_path(self):
        self.assertEqual(self.refused(b'{"payload": {"password": "x\\udfff"}}').field, "payload.password")
        self.assertEqual(self.refused(b'{"items": ["a", "\\uDC00"]}').field, "items[1]")
        self.assertEqual(self.refused(b'["\\ud800"]').field, "[0]")

    def test_a_refused_text_keeps_the_document_for_the_adapters_answer(self):
        error = self.refused(b'{"type": "init-request", "payload": {"password": "x\\udfff"}}')
        self.assertEqual(error.field, "payload.password")
        self.assertEqual(error.document["type"], "init-request")
        self.assertIsNone(self.refused(b"{").document)
        self.assertIsNone(self.refused(b'{"a": NaN}').document)
        deep_and_bad = b'{"deep": ' + b"[" * 40 + b"]" * 40 + b', "bad": "\\ud800"}'  # the text is met first
        error = self.refused(deep_and_bad)
        self.assertIn("nested deeper", str(error))
        self.assertIsNone(error.document)

    def test_a_surrogate_in_a_key_is_refused(self):
        error = self.refused(b'{"outer": {"\\ud800": 1}}')
        self.assertIn("key", str(error))
        self.assertEqual(error.field, "outer")

    def test_a_surrogate_in_a_top_level_key_names_the_key_and_keeps_the_document(self):
        error = self.refused(b'{"header": {"requestId": "r-1"}, "\\ud800x": 1}')
        self.assertEqual(error.field, "\\ud800x")
        self.assertTrue(error.in_key)
        self.assertEqual(error.reason, "bad_text")
        self.assertEqual(error.document["header"], {"requestId": "r-1"})
        str(error).encode("utf-8")

    def test_the_reason_says_bad_text_or_malformed(self):
        for data in (b'{"a": "\\ud800"}', b'{"\\ud800": 1}', b'{"a": {"\\ud800": 1}}', b'{"a": "\xff"}',
                     '{"a": "\ud800"}', '"\ud800"'):
            with self.subTest(data=data):
                self.assertEqual(self.refused(data).reason, "bad_text")
        for data in (b"{", b'{"a": NaN}', b'{"a": 1e999}', b"[" * 40 + b"]" * 40, b"[" * 5000 + b"]" * 5000,
                     b"9" * 5000, b'{"deep": ' + b"[" * 40 + b"]" * 40 + b', "bad": "\\ud800"}'):
            with self.subTest(data=data[:50]):
                self.assertEqual(self.refused(data).reason, "malformed")
        self.assertFalse(self.refused(b'{"a": "\\ud800"}').in_key)
        self.assertTrue(self.refused(b'{"a": {"\\ud800": 1}}').in_key)
        self.assertEqual(self.assertRaises(PeerDataError, boundary.check_text, "\ud800", "to").reason, "bad_text")

    def test_a_str_holding_a_surrogate_is_refused(self):
        self.refused('{"a": "\ud800"}')

    def test_bytes_that_are_not_utf8_are_refused(self):
        self.assertIn("UTF-8", str(self.refused(b'{"a": "\xff"}')))

    def test_non_finite_numbers_are_refused(self):
        for text in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e999}', b"[-1e400]"):
            with self.subTest(text=text):
                self.refused(text)

    def test_deep_nesting_is_refused_without_recursion_error(self):
        for depth in (33, 5000, 200_000):
            with self.subTest(depth=depth):
                self.assertIn("nested deeper", str(self.refused(b"[" * depth + b"]" * depth)))
        self.assertIn("nested deeper", str(self.refused(b'{"a":' * 40 + b"1" + b"}" * 40)))

    def test_nesting_up_to_the_limit_loads(self):
        self.assertEqual(load_json(b"[" * 32 + b"]" * 32, max_depth=32), json.loads("[" * 32 + "]" * 32))

    def test_brackets_inside_strings_are_not_nesting(self):
        self.assertEqual(load_json(json.dumps({"a": "[" * 100})), {"a": "[" * 100})

    def test_huge_integers_are_refused_not_raised(self):
        self.refused(b'{"ack": ' + b"9" * 5000 + b"}")

    def test_not_json(self):
        for text in (b"", b"{", b"{'a': 1}", b'{"a": "\x01"}'):
            with self.subTest(text=text):
                self.refused(text)


class CheckTextTests(SynchronousTestCase):
    def test_valid_text_passes(self):
        self.assertEqual(boundary.check_text("héllo \U0001f600", "name"), "héllo \U0001f600")

    def test_surrogate_names_the_field(self):
        error = self.assertRaises(PeerDataError, boundary.check_text, "a\udc80", "to")
        self.assertEqual(error.field, "to")

    def test_bad_text_field(self):
        self.assertIsNone(boundary.bad_text_field({"a": ["b", {"c": "d"}]}))
        self.assertEqual(boundary.bad_text_field({"a": ["b", {"c": "\ud800"}]}), "a[1].c")


class ParseIntTests(SynchronousTestCase):
    def test_plain_numbers(self):
        self.assertEqual(parse_int("16"), 16)
        self.assertEqual(parse_int("-3"), -3)
        self.assertEqual(parse_int("+7"), 7)
        self.assertEqual(parse_int(21), 21)
        self.assertEqual(parse_int(10**18 - 1), 10**18 - 1)
        self.assertEqual(parse_int(-(10**18 - 1)), -(10**18 - 1))
        self.assertIsNone(parse_int(10**18))

    def test_never_raises(self):
        for value in ("--16", "²", "١٢", " 16", "16 ", "", "-", "9" * 5000, 10**30, 10**5000, -(10**5000), True,
                      None, 1.5, [], "0x10"):
            with self.subTest(value=value):
                self.assertIsNone(parse_int(value))


class SanitiseTests(SynchronousTestCase):
    def test_clean_values_are_unchanged(self):
        value = {"a": [1, 2.5, "x"], "b": None}
        self.assertEqual(sanitise(value), (value, False))

    def test_surrogates_are_kept_visibly_escaped(self):
        clean, changed = sanitise({"caller\udc00": ["x\ud800y"]})
        self.assertTrue(changed)
        self.assertEqual(clean, {"caller\\udc00": ["x\\ud800y"]})
        json.dumps(clean).encode("utf-8")
        clean["caller\\udc00"][0].encode("utf-8")

    def test_non_finite_floats_become_strings(self):
        clean, changed = sanitise({"a": float("nan"), "b": (float("inf"), float("-inf"))})
        self.assertTrue(changed)
        self.assertEqual(clean, {"a": "NaN", "b": ["Infinity", "-Infinity"]})
        json.dumps(clean, allow_nan=False)


class RateLimitedLogTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.events = []
        self.lines = boundary.RateLimitedLog(self.clock, Logger(observer=self.events.append), first=2, interval=60)

    def emit(self, n=1, **fields):
        return [self.lines.emit("attempt {n} failed{more}", summary="{count} more failed in {seconds:.0f} s; last {n}",
                                n=i, **fields) for i in range(n)]

    def rendered(self):
        return [formatEvent(e) for e in self.events]

    def test_the_first_lines_one_by_one_then_a_summary_per_interval_with_the_latest_fields(self):
        self.assertEqual(self.emit(5), [True, True, False, False, False])
        self.assertEqual(self.rendered(), ["attempt 0 failed", "attempt 1 failed (further ones are summarised)"])
        self.clock.advance(30)
        self.emit(1)
        self.assertEqual(len(self.events), 2)
        self.clock.advance(30)
        self.emit(1)
        self.assertEqual(self.rendered()[2:], ["5 more failed in 60 s; last 0"])
        self.assertEqual(self.events[2]["log_level"], LogLevel.warn)
        self.assertEqual(self.lines.suppressed_total, 5)

    def test_close_writes_the_pending_summary_and_starts_a_new_run(self):
        self.emit(4)
        self.clock.advance(10)
        self.lines.close()
        self.assertEqual(self.rendered()[2:], ["2 more failed in 10 s; last 3"])
        self.lines.close()
        self.assertEqual(len(self.events), 3, "nothing more is unsaid")
        self.assertEqual(self.emit(1), [True])

    def test_after_a_quiet_interval_lines_are_logged_one_by_one_again(self):
        self.emit(3)
        self.clock.advance(60)
        self.assertEqual(self.emit(3), [True, True, False])
        self.assertEqual(self.rendered()[2:5], ["1 more failed in 60 s; last 2", "attempt 0 failed",
                                                "attempt 1 failed (further ones are summarised)"])

    def test_the_level_is_the_callers(self):
        self.lines.emit("x", summary="y {count}", level=LogLevel.info)
        self.assertEqual(self.events[0]["log_level"], LogLevel.info)


class MessageRateTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.rate = boundary.MessageRate(self.clock, rate=20, burst=50)

    def allowed(self, count):
        return sum(self.rate.allow() for _ in range(count))

    def test_a_flood_gets_the_burst_then_the_rate(self):
        self.assertEqual(self.allowed(100_000), 50)
        self.assertEqual(self.rate.refused, 100_000 - 50)
        self.clock.advance(1)
        self.assertEqual(self.allowed(1000), 20)
        self.clock.advance(0.05)
        self.assertEqual(self.allowed(10), 1)

    def test_a_peer_within_the_rate_is_never_refused(self):
        for _ in range(10_000):  # a heartbeat a second plus a dial, hangup and status request each time
            self.assertEqual(self.allowed(4), 4)
            self.clock.advance(1)
        self.assertEqual(self.rate.refused, 0)

    def test_a_peer_at_exactly_the_rate_is_not_refused_for_a_rounding(self):
        self.allowed(50)
        for _ in range(10_000):
            self.clock.advance(0.05)
            self.assertTrue(self.rate.allow())

    def test_a_quiet_time_refills_the_burst_and_no_more(self):
        self.allowed(50)
        self.clock.advance(3600)
        self.assertEqual(self.allowed(1000), 50)

    def test_a_clock_going_back_takes_nothing(self):
        self.clock.advance(100)
        self.allowed(50)
        self.clock.rightNow = 10.0
        self.assertEqual(self.allowed(5), 0)
        self.clock.advance(1)
        self.assertEqual(self.allowed(100), 20)

    def test_bad_settings_are_refused(self):
        self.assertRaises(ValueError, boundary.MessageRate, self.clock, 0, 5)
        self.assertRaises(ValueError, boundary.MessageRate, self.clock, 1, 0)


class IgnoredBudgetTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.events = []
        self.registry = CollectorRegistry()
        self.budget = boundary.budget_factory(
            self.clock, "optimaccs", self.registry, logger=Logger(observer=self.events.append), first=3, interval=60
        )("127.0.0.1:5555")

    def count(self, reason):
        return self.registry.get_sample_value(
            "gateway_ignored_messages_total", {"adapter": "optimaccs", "reason": reason}
        )

    def test_the_first_few_are_logged_then_one_summary_per_interval(self):
        for _ in range(10_000):
            self.budget.ignored("unknown", "event 'bogus'")
        self.assertEqual(len(self.events), 3)
        self.assertEqual(self.count("unknown"), 10_000)
        self.assertIn("127.0.0.1:5555", self.events[0]["peer"])
        self.clock.advance(61)
        # after a quiet minute: the summary of the 9,997 suppressed, then one by one again
        self.budget.ignored("unknown", "event 'bogus'")
        self.assertEqual(len(self.events), 5)
        self.assertEqual(self.events[3]["count"], 9_997)
        self.assertEqual(self.events[4]["reason"], "unknown")
        self.budget.close()
        self.assertEqual(len(self.events), 5)

    def test_a_steady_flood_gets_one_summary_a_minute(self):
        for _ in range(180):
            self.budget.ignored("unknown", "event 'bogus'")
            self.clock.advance(1)
        self.assertEqual(len(self.events), 3 + 2)
        self.assertEqual([e["count"] for e in self.events[3:]], [60, 60])
        self.budget.close()
        self.assertEqual(self.events[-1]["count"], 57)
        self.assertEqual(sum(e.get("count", 1) for e in self.events), 180)

    def test_close_says_what_is_unsaid(self):
        for _ in range(5):
            self.budget.ignored("malformed", "not JSON")
        self.budget.close()
        self.assertEqual(len(self.events), 4)
        self.assertEqual(self.events[-1]["count"], 2)
        self.assertEqual(self.count("malformed"), 5)

    def test_a_detail_holding_surrogates_is_logged_escaped(self):
        self.budget.ignored("bad_text", "callerId '\ud800'")
        self.events[0]["detail"].encode("utf-8")

    def test_reasons_are_a_closed_set(self):
        self.assertRaises(ValueError, self.budget.ignored, "anything the peer says", "x")

    def test_a_refusal_past_a_cap_is_a_reason(self):
        self.budget.ignored("over_capacity", "connection closed with 1013: max_calls reached")
        self.assertEqual(self.count("over_capacity"), 1)

    def test_count_counts_without_a_line(self):
        for _ in range(1000):
            self.budget.count("rate_limited")
        self.assertEqual(self.count("rate_limited"), 1000)
        self.assertEqual(self.budget.total, 1000)
        self.budget.close()
        self.assertEqual(self.events, [])
        self.assertRaises(ValueError, self.budget.count, "whatever")

    def test_a_message_past_the_message_rate_is_a_reason(self):
        self.budget.ignored("rate_limited", "more than 20 messages a second; closing")
        self.assertEqual(self.count("rate_limited"), 1)
