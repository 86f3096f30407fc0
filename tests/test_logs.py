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
        self.assertEqual([l["message"] for l in self.lines()], ["two\nlines and\nmore", "second"])

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
