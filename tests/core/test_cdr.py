"""CDR rendering and the retrying delivery to the store."""

from twisted.internet import defer, task
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.core.cdr import RetryingSink
from gateway.core.model import iso8601

from .harness import Harness


class RenderingTests(SynchronousTestCase):
    def test_iso8601_is_utc_with_milliseconds(self):
        self.assertEqual(iso8601(1767323045.6789), "2026-01-02T03:04:05.678Z")
        self.assertIsNone(iso8601(None))

    def test_an_inbound_call_records_the_did_and_each_leg(self):
        h = Harness()
        leg = h.network.place_inbound("0811222333", "100", attributes={"session_id": "s-9"})
        h.advance(1.0)
        h.network.party("0811222333").send_dtmf("7")
        h.advance(4.0)
        leg.party.hang_up()
        [cdr] = h.cdrs
        self.assertEqual(
            {k: cdr[k] for k in ("direction", "extension", "caller", "did", "cause", "hangup_by", "dtmf_count",
                                 "duration", "billable_seconds", "app")},
            {"direction": "inbound", "extension": "1001", "caller": "0811222333", "did": "100",
             "cause": "remote_hangup", "hangup_by": "remote", "dtmf_count": 1, "duration": 5.0,
             "billable_seconds": 4.0, "app": None},
        )
        caller, device = cdr["legs"]
        self.assertEqual((caller["role"], caller["direction"], caller["number"], caller["driver"]),
                         ("party", "inbound", "0811222333", "sim"))
        self.assertEqual(caller["attributes"], {"did": "100", "session_id": "s-9"})
        self.assertEqual((device["role"], device["number"], device["attributes"]),
                         ("device", "1001", {"extension": "1001"}))
        self.assertEqual((device["answered_at"], device["cause"]), ("1970-01-01T00:00:01.000Z", "remote_hangup"))


class RetryingSinkTests(SynchronousTestCase):
    def test_close_waits_for_writes_in_flight(self):
        clock = task.Clock()
        pending = defer.Deferred()
        sink = RetryingSink(clock, lambda record: pending, "CDR")
        sink.write({"call_id": "a"})
        self.assertEqual(sink.pending, 1)
        closed = sink.close()
        self.assertNoResult(closed)
        pending.callback(None)
        self.successResultOf(closed)
        self.assertEqual(sink.pending, 0)

    def test_delays_grow_and_stop_at_the_last(self):
        clock = task.Clock()
        times = []

        def failing(record):
            times.append(clock.seconds())
            return defer.fail(OSError("down"))

        sink = RetryingSink(clock, failing, "CDR", delays=(1.0, 3.0))
        sink.write({"call_id": "a"})
        clock.pump([1.0, 3.0, 3.0, 3.0])
        self.assertEqual(times, [0.0, 1.0, 4.0, 7.0, 10.0])
        self.assertEqual(sink.pending, 1)

    def test_a_refused_record_is_logged_in_full_and_not_retried(self):
        clock = task.Clock()
        attempts = []

        def refusing(record):
            attempts.append(record)
            return defer.fail(ValueError("a CDR for this call is stored already"))

        sink = RetryingSink(clock, refusing, "CDR")
        with capturedLogs() as events:
            sink.write({"call_id": "dup"})
            clock.advance(60)
        self.assertEqual(len(attempts), 1)
        self.assertEqual(sink.pending, 0)
        [refused] = [e for e in events if e["log_level"] is LogLevel.error]
        self.assertEqual(refused["record"], ({"call_id": "dup"},))

