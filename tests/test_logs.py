"""The daemon's log observers: events in, JSON (or text) lines out, secrets never shown."""

import datetime
import io
import json
import sys

from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway import logs
from gateway.confschema import Secret

SECRET = "hunter2-very-secret"


class Opaque:
    def __repr__(self):
        return "<Opaque thing>"


class JsonLinesTests(SynchronousTestCase):
    def setUp(self):
        self.out = io.StringIO()
        self.log = Logger(namespace="gateway.test", observer=logs.json_lines(self.out))

    def lines(self):
        text = self.out.getvalue()
        self.assertTrue(text.endswith("\n"), text)
        return [json.loads(line) for line in text.splitlines()]

    def only_line(self):
        [line] = self.lines()
        return line

    def test_is_a_log_observer_factory_for_twistd(self):
        self.assertTrue(ILogObserver.providedBy(logs.json_lines(io.StringIO())))
        self.assertTrue(ILogObserver.providedBy(logs.text(io.StringIO())))

    def test_named_fields_and_formatted_message(self):
        self.log.info("peer {peer} sent {count} bytes", peer="10.0.0.7:5000", count=12)
        line = self.only_line()
        self.assertEqual(
            {k: v for k, v in line.items() if k != "time"},
            {
                "level": "info",
                "namespace": "gateway.test",
                "message": "peer 10.0.0.7:5000 sent 12 bytes",
                "peer": "10.0.0.7:5000",
                "count": 12,
            },
        )

    def test_time_is_iso8601_utc(self):
        event = {"log_time": 1700000000.25, "log_level": LogLevel.warn, "log_namespace": "t", "log_format": "late"}
        logs.json_lines(self.out)(event)
        line = self.only_line()
        self.assertEqual(line["time"], "2023-11-14T22:13:20.250000Z")
        self.assertEqual(line["level"], "warn")
        parsed = datetime.datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        self.assertEqual(parsed.timestamp(), 1700000000.25)

    def test_no_twisted_internal_keys(self):
        self.log.debug("x {y}", y=1)
        self.assertEqual([k for k in self.only_line() if k.startswith("log_")], [])

    def test_unserialisable_fields_become_repr(self):
        self.log.info(
            "odd values",
            thing=Opaque(),
            things=[1, Opaque()],
            ratio=float("nan"),
            keyed={(1, 2): "tuple key"},
            data=b"\x00\x01",
        )
        line = self.only_line()
        self.assertEqual(line["thing"], "<Opaque thing>")
        self.assertEqual(line["things"], [1, "<Opaque thing>"])
        self.assertEqual(line["ratio"], "nan")
        self.assertEqual(line["keyed"], "{(1, 2): 'tuple key'}")
        self.assertEqual(line["data"], "b'\\x00\\x01'")

    def test_circular_field_is_repr(self):
        loop = []
        loop.append(loop)
        self.log.info("loop {loop}", loop=loop, secret_loop=[Secret(SECRET), loop])
        line = self.only_line()
        self.assertEqual(line["loop"], "[[[...]]]")
        self.assertEqual(line["message"], "loop [[[...]]]")
        self.assertEqual(line["secret_loop"], "['***', [[[...]]]]")

    def test_one_line_per_event_even_with_newlines(self):
        self.log.info("two\nlines {x}", x="and\nmore")
        self.log.info("second")
        self.assertEqual([l["message"] for l in self.lines()], ["two\\nlines and\\nmore", "second"])
        self.assertEqual(self.lines()[0]["x"], "and\\nmore")

    def test_fields_clashing_with_reserved_keys_are_renamed(self):
        event = {"log_level": LogLevel.info, "log_format": "clash", "log_namespace": "n", "log_time": 0.0}
        event.update(message="m", time=3, level="lvl", namespace="ns", traceback="tb")
        logs.json_lines(self.out)(event)
        line = self.only_line()
        self.assertEqual(line["message"], "clash")
        self.assertEqual(line["level"], "info")
        self.assertNotIn("traceback", line)
        self.assertEqual(
            {k: line[k] for k in ("message_", "time_", "level_", "namespace_", "traceback_")},
            {"message_": "m", "time_": 3, "level_": "lvl", "namespace_": "ns", "traceback_": "tb"},
        )

    def test_failure_carries_traceback(self):
        try:
            1 / 0
        except ZeroDivisionError:
            self.log.failure("call {call_id} failed", call_id="c1")
        line = self.only_line()
        self.assertEqual(line["level"], "critical")
        self.assertEqual(line["message"], "call c1 failed")
        self.assertEqual(line["call_id"], "c1")
        self.assertIn("Traceback", line["traceback"])
        self.assertIn("ZeroDivisionError", line["traceback"])

    def test_failure_at_error_level(self):
        self.log.failure("lost", Failure(ValueError("bad frame")), level=LogLevel.error)
        line = self.only_line()
        self.assertEqual(line["level"], "error")
        self.assertIn("ValueError: bad frame", line["traceback"])

    def test_no_traceback_without_failure(self):
        self.log.error("plain error")
        self.assertNotIn("traceback", self.only_line())


class LegacyEventTests(SynchronousTestCase):
    """twisted.python.log.msg/err, as Twisted's older modules still emit them."""

    def setUp(self):
        self.out = io.StringIO()
        self.legacy = legacy_log.LogPublisher(publishPublisher=LogPublisher(logs.json_lines(self.out)))

    def only_line(self):
        [line] = self.out.getvalue().splitlines()
        return json.loads(line)

    def test_msg(self):
        self.legacy.msg("Starting factory", system="-", port=4143)
        line = self.only_line()
        self.assertEqual(line["message"], "Starting factory")
        self.assertEqual(line["level"], "info")
        self.assertEqual(line["namespace"], "log_legacy")
        self.assertEqual(line["system"], "-")
        self.assertEqual(line["port"], 4143)
        self.assertNotIn("message_", line)
        self.assertNotIn("time_", line)
        self.assertNotIn("isError", line)

    def test_err_carries_traceback(self):
        self.legacy.msg(failure=Failure(KeyError("call-9")), why="lookup", isError=1)
        line = self.only_line()
        self.assertEqual(line["level"], "critical")
        self.assertIn("KeyError", line["traceback"])
        self.assertTrue(line["message"].startswith("lookup"))
        self.assertNotIn("failure", line)
        self.assertNotIn("why", line)


class RedactionTests(SynchronousTestCase):
    def setUp(self):
        self.json_out = io.StringIO()
        self.text_out = io.StringIO()
        publisher = LogPublisher(logs.json_lines(self.json_out), logs.text(self.text_out))
        self.log = Logger(namespace="gateway.test", observer=publisher)

    def assertNoSecret(self):
        for output in (self.json_out.getvalue(), self.text_out.getvalue()):
            self.assertTrue(output)
            self.assertNotIn(SECRET, output)

    def test_secret_field_is_stars(self):
        self.log.info("token is {token}", token=Secret(SECRET))
        line = json.loads(self.json_out.getvalue())
        self.assertEqual(line["token"], "***")
        self.assertEqual(line["message"], "token is ***")
        self.assertIn("token is ***", self.text_out.getvalue())
        self.assertNoSecret()

    def test_format_string_cannot_reveal(self):
        self.log.info("token is {token.reveal()} {token._value}", token=Secret(SECRET))
        self.assertNoSecret()

    def test_nested_secrets(self):
        self.log.info(
            "users {users}",
            users=[{"name": "op1", "password": Secret(SECRET)}],
            pair=("k", Secret(SECRET)),
        )
        line = json.loads(self.json_out.getvalue())
        self.assertEqual(line["users"], [{"name": "op1", "password": "***"}])
        self.assertEqual(line["pair"], ["k", "***"])
        self.assertNoSecret()

    def test_secret_inside_other_objects_shows_its_safe_repr(self):
        class Holder:
            def __init__(self):
                self.token = Secret(SECRET)

            def __repr__(self):
                return f"Holder({self.token!r})"

        self.log.info("holder {holder}", holder=Holder())
        self.assertEqual(json.loads(self.json_out.getvalue())["holder"], "Holder(Secret('***'))")
        self.assertNoSecret()

    def test_secret_in_failure_message(self):
        try:
            raise ValueError(Secret(SECRET))
        except ValueError:
            self.log.failure("login failed")
        self.assertNoSecret()

    def test_redact_leaves_the_event_alone(self):
        event = {"token": Secret(SECRET), "log_format": "{token}"}
        self.assertEqual(logs.redact(event), {"token": "***", "log_format": "{token}"})
        self.assertEqual(event["token"].reveal(), SECRET)


class PeerTextTests(SynchronousTestCase):
    """A peer's text in a field: bounded, and its control characters escaped, in both formats."""

    def setUp(self):
        self.json_out = io.StringIO()
        self.text_out = io.StringIO()
        publisher = LogPublisher(logs.json_lines(self.json_out), logs.text(self.text_out))
        self.log = Logger(namespace="gateway.test", observer=publisher)

    def json_line(self):
        [line] = self.json_out.getvalue().splitlines()
        return json.loads(line)

    def text_line(self):
        text = self.text_out.getvalue()
        self.assertTrue(text.endswith("\n"))
        [line] = text.splitlines()
        return line

    def test_a_60_kb_field_is_cut_with_a_marker(self):
        session = "S" * 60_000
        self.log.info("call from OptimaCCS session {session_id} ({caller})", session_id=session, caller="+4930")
        line = self.json_line()
        bounded = "S" * logs.MAX_FIELD + f"…(+{60_000 - logs.MAX_FIELD} chars)"
        self.assertEqual(line["session_id"], bounded)
        self.assertEqual(line["message"], f"call from OptimaCCS session {bounded} (+4930)")
        self.assertLess(len(self.json_out.getvalue()), 2 * logs.MAX_FIELD + 400)
        self.assertIn(f"session {bounded} (+4930)", self.text_line())
        self.assertLess(len(self.text_line()), logs.MAX_FIELD + 200)

    def test_nested_strings_and_bytes_are_cut_too(self):
        self.log.info("body {body}", body={"to": ["x" * 1000]}, raw=b"\x00" * 1000)
        line = self.json_line()
        self.assertEqual(line["body"], {"to": ["x" * logs.MAX_FIELD + "…(+500 chars)"]})
        self.assertTrue(line["raw"].endswith("…(+500 bytes)"), line["raw"])
        self.assertLess(len(self.json_out.getvalue()), 12 * logs.MAX_FIELD)  # 500 NULs: b'\\x00...' in JSON

    def test_control_characters_are_escaped_in_both_formats(self):
        self.log.info("SMS to {to} from {caller_id}", to="\x00", caller_id="555\r\nforged line\t\x7f\x85\u2028\ud800")
        escaped = "555\\r\\nforged line\\t\\x7f\\x85\\u2028\\ud800"
        line = self.json_line()
        self.assertEqual((line["to"], line["caller_id"]), ("\\x00", escaped))
        self.assertEqual(line["message"], f"SMS to \\x00 from {escaped}")
        text = self.text_line()
        self.assertTrue(text.endswith(f"SMS to \\x00 from {escaped}"), text)
        for raw in "\x00\r\t\x7f\x85\u2028":
            self.assertNotIn(raw, self.text_out.getvalue() + self.json_out.getvalue())

    def test_the_message_stays_one_line_in_the_text_format_whatever_a_field_holds(self):
        class Shouting(Exception):
            pass

        self.log.warn("did {did} caller {caller}: {error}", did="100\n2024-01-01 [-] forged", caller=["a\nb"],
                      error=Shouting("two\nlines"))
        text = self.text_line()
        self.assertIn("did 100\\n2024-01-01 [-] forged caller ['a\\\\nb']: two\\nlines", text)
        self.assertEqual(self.json_line()["did"], "100\\n2024-01-01 [-] forged")

    def test_a_traceback_keeps_its_lines(self):
        try:
            raise ValueError("bad\nframe")
        except ValueError:
            self.log.failure("frame from {peer} refused", peer="10.0.0.1\n")
        lines = self.text_out.getvalue().splitlines()
        self.assertTrue(lines[0].endswith("frame from 10.0.0.1\\n refused"), lines[0])
        self.assertEqual(lines[1], "\tTraceback (most recent call last):")
        self.assertTrue(all(line.startswith("\t") for line in lines[1:]), lines)
        line = self.json_line()
        self.assertEqual(line["message"], "frame from 10.0.0.1\\n refused")
        self.assertIn("\nbuiltins.ValueError: bad\nframe", line["traceback"])

    def test_a_legacy_error_keeps_its_traceback_apart_from_its_message(self):
        legacy = legacy_log.LogPublisher(publishPublisher=LogPublisher(logs.json_lines(self.json_out),
                                                                       logs.text(self.text_out)))
        legacy.msg(failure=Failure(KeyError("call-9")), why="lookup\nfailed", isError=1)
        line = self.json_line()
        self.assertEqual(line["message"], "lookup\\nfailed")
        self.assertIn("KeyError", line["traceback"])
        lines = self.text_out.getvalue().splitlines()
        self.assertTrue(lines[0].endswith(" lookup\\nfailed"), lines)
        self.assertEqual(lines[1], "\tTraceback (most recent call last):")
        self.assertEqual(sum("Traceback" in line for line in lines), 1)

    def test_a_secret_is_still_redacted_and_a_long_one_never_shows(self):
        self.log.info("token {token} for {user}", token=Secret(SECRET * 100), user="op\n1")
        for output in (self.json_out.getvalue(), self.text_out.getvalue()):
            self.assertNotIn(SECRET, output)
        self.assertEqual(self.json_line()["message"], "token *** for op\\n1")
        self.assertTrue(self.text_line().endswith("token *** for op\\n1"))

    def test_the_field_limit_and_escaping_are_public(self):
        self.assertEqual(logs.escape("a\x00b\nc\x9f"), "a\\x00b\\nc\\x9f")
        self.assertEqual(logs.bounded({"log_format": "\n", "x": "\n"}), {"log_format": "\n", "x": "\\n"})


class DefaultOutputTests(SynchronousTestCase):
    def test_factories_capture_stdout_when_called(self):
        """twistd calls the factory, then redirects sys.stdout into the log."""
        for factory in (logs.json_lines, logs.text):
            captured = io.StringIO()
            self.patch(sys, "stdout", captured)
            observer = factory()
            self.patch(sys, "stdout", io.StringIO())
            Logger(namespace="n", observer=observer).info("hello {who}", who="journal")
            self.assertIn("hello journal", captured.getvalue())
            self.assertEqual(sys.stdout.getvalue(), "")
