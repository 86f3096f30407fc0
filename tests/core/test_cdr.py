"""CDR rendering and the retrying delivery to the store."""

from twisted.internet import defer, task
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.core.cdr import NotWritten, RetryingSink
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



class _Observer:
    """What a RetryingSink tells its observer, in order."""

    def __init__(self):
        self.sinks = {}
        self.events = []

    def watch(self, what, sink):
        self.sinks[what] = sink

    def attempt_failed(self, what, error):
        self.events.append(("failed", what, error))

    def written(self, what):
        self.events.append(("written", what))

    def not_written(self, what, reason):
        self.events.append(("not_written", what, reason))


class _Switch:
    """A sink that fails while ``down``, refuses the ids in ``refuse`` and keeps what it took, answering at once."""

    def __init__(self, clock):
        self.clock = clock
        self.down = False
        #: call ids refused (ValueError) whenever they come, even while ``down``
        self.refuse = set()
        self.attempts = []
        self.taken = []

    def __call__(self, record):
        self.attempts.append((self.clock.seconds(), record["call_id"]))
        if record["call_id"] in self.refuse:
            return defer.fail(ValueError(f"a CDR for {record['call_id']} is stored already"))
        if self.down:
            return defer.fail(OSError("disk I/O error"))
        self.taken.append(record["call_id"])
        return defer.succeed(record["call_id"])


def _answered_by_the_test():
    """A sink whose writes wait for the test to answer them, and ``answers``: (call id, Deferred) of each."""
    answers = []

    def sink(record):
        d = defer.Deferred()
        answers.append((record["call_id"], d))
        return d

    return sink, answers


class OutageTests(SynchronousTestCase):
    def test_while_down_only_the_oldest_is_retried_and_the_rest_follow_in_order(self):
        clock = task.Clock()
        switch = _Switch(clock)
        observer = _Observer()
        sink = RetryingSink(clock, switch, "CDR", delays=(1.0, 3.0), observer=observer)
        switch.down = True
        for n in range(5):
            sink.write({"call_id": f"c{n}"})
        clock.pump([1.0, 3.0, 3.0])
        # c0 failed, the others queued behind it without an attempt; then only c0 again
        self.assertEqual(switch.attempts, [(0.0, "c0"), (1.0, "c0"), (4.0, "c0"), (7.0, "c0")])
        self.assertEqual(sink.pending, 5)
        self.assertTrue(sink.down)
        self.assertIs(observer.sinks["CDR"], sink)
        switch.down = False
        clock.advance(3.0)
        self.assertEqual(switch.taken, ["c0", "c1", "c2", "c3", "c4"])
        self.assertEqual((sink.pending, sink.down), (0, False))
        self.assertEqual(observer.events.count(("written", "CDR")), 5)
        self.assertEqual([e for e in observer.events if e[0] == "failed"], [("failed", "CDR", "disk I/O error")] * 4)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_submit_fires_once_the_record_is_finally_taken(self):
        clock = task.Clock()
        switch = _Switch(clock)
        sink = RetryingSink(clock, switch, "SMS", delays=(2.0,))
        switch.down = True
        d = sink.submit({"call_id": "s1"})
        self.assertNoResult(d)
        switch.down = False
        clock.advance(2.0)
        self.assertEqual(self.successResultOf(d), "s1")

    def test_past_pending_max_a_record_is_logged_in_full_counted_and_refused(self):
        clock = task.Clock()
        switch = _Switch(clock)
        observer = _Observer()
        sink = RetryingSink(clock, switch, "CDR", pending_max=2, observer=observer)
        switch.down = True
        sink.write({"call_id": "a"})
        sink.write({"call_id": "b"})
        with capturedLogs() as events:
            d = sink.submit({"call_id": "c", "caller": "0811"})
        self.assertEqual(self.failureResultOf(d, NotWritten).value.reason, "overflow")
        [critical] = [e for e in events if e["log_level"] is LogLevel.critical]
        self.assertEqual(critical["record"], ({"call_id": "c", "caller": "0811"},))
        self.assertIn("pending_max 2", critical["error"])
        self.assertIn(("not_written", "CDR", "overflow"), observer.events)
        self.assertEqual(sink.pending, 2)
        switch.down = False
        clock.advance(60)
        self.assertEqual(switch.taken, ["a", "b"])

    def test_records_still_failing_at_close_are_logged_in_full(self):
        clock = task.Clock()
        switch = _Switch(clock)
        observer = _Observer()
        sink = RetryingSink(clock, switch, "CDR", observer=observer)
        switch.down = True
        sink.write({"call_id": "a"})
        b = sink.submit({"call_id": "b"})
        with capturedLogs() as events:
            self.successResultOf(sink.close())
        self.assertEqual(self.failureResultOf(b, NotWritten).value.reason, "shutdown")  # not "full"
        self.assertEqual([e["record"] for e in events if e["log_level"] is LogLevel.critical],
                         [({"call_id": "a"},), ({"call_id": "b"},)])
        self.assertEqual([e for e in observer.events if e[0] == "not_written"], [("not_written", "CDR", "shutdown")] * 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_long_outage_costs_one_attempt_per_retry_and_drains_without_recursing(self):
        clock = task.Clock()
        switch = _Switch(clock)
        sink = RetryingSink(clock, switch, "CDR", delays=(1.0,))
        switch.down = True
        for n in range(5000):
            sink.write({"call_id": f"c{n}"})
        switch.down = False
        clock.advance(1.0)
        self.assertEqual(len(switch.taken), 5000)
        self.assertEqual(len(switch.attempts), 5001)  # c0 failed once; nothing else was tried in vain
        self.assertEqual(sink.pending, 0)

    def test_a_probe_refused_during_an_outage_ends_it_and_the_rest_go_at_once(self):
        # the retried oldest record was in fact stored (its commit's answer was lost): a duplicate
        clock = task.Clock()
        switch = _Switch(clock)
        observer = _Observer()
        sink = RetryingSink(clock, switch, "CDR", delays=(1.0, 3.0), observer=observer)
        switch.down = True
        for n in range(3):
            sink.write({"call_id": f"c{n}"})
        switch.down = False
        switch.refuse = {"c0"}
        with capturedLogs() as events:
            clock.advance(1.0)
        self.assertEqual(switch.attempts, [(0.0, "c0"), (1.0, "c0"), (1.0, "c1"), (1.0, "c2")])
        self.assertEqual(switch.taken, ["c1", "c2"])
        self.assertEqual((sink.pending, sink.down), (0, False))
        self.assertEqual(clock.getDelayedCalls(), [])
        [refused] = [e for e in events if e["log_level"] is LogLevel.error]
        self.assertEqual(refused["record"], ({"call_id": "c0"},))
        self.assertEqual(observer.events[-3:], [("not_written", "CDR", "refused"), ("written", "CDR"),
                                                ("written", "CDR")])
        sink.write({"call_id": "c3"})  # and the next outage starts afresh, from the first delay
        switch.down = True
        sink.write({"call_id": "c4"})
        clock.advance(1.0)
        self.assertEqual(switch.attempts[-2:], [(1.0, "c4"), (2.0, "c4")])

    def test_a_probe_refused_while_the_sink_is_still_down_starts_the_retries_afresh(self):
        clock = task.Clock()
        switch = _Switch(clock)
        sink = RetryingSink(clock, switch, "CDR", delays=(1.0, 3.0))
        switch.down = True
        sink.write({"call_id": "c0"})
        sink.write({"call_id": "c1"})
        clock.advance(1.0)  # second attempt of c0 fails; the next is due 3 s later
        switch.refuse = {"c0"}
        clock.advance(3.0)  # c0 refused; c1 goes at once and fails: a new outage, first delay again
        self.assertEqual(switch.attempts, [(0.0, "c0"), (1.0, "c0"), (4.0, "c0"), (4.0, "c1")])
        self.assertTrue(sink.down)
        switch.down = False
        clock.advance(1.0)
        self.assertEqual((switch.taken, sink.pending, sink.down), (["c1"], 0, False))

    def test_an_ordered_sink_sends_the_next_record_as_soon_as_one_is_refused(self):
        clock = task.Clock()
        sink, answers = _answered_by_the_test()
        queue = RetryingSink(clock, sink, "SMS", ordered=True)
        first = queue.submit({"call_id": "first"})
        queue.write({"call_id": "second"})
        answers.pop()[1].errback(ValueError("malformed"))  # the store works; it refused this one
        self.failureResultOf(first, ValueError)
        self.assertEqual([name for name, _ in answers], ["second"])  # no other submit, no timer needed
        answers.pop()[1].callback(None)
        self.assertEqual((queue.pending, queue.down), (0, False))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_an_ordered_sink_settles_at_close_past_a_refused_record(self):
        clock = task.Clock()
        sink, answers = _answered_by_the_test()
        queue = RetryingSink(clock, sink, "SMS", ordered=True)
        queue.write({"call_id": "a"})
        queue.write({"call_id": "b"})
        closed = queue.close()
        answers.pop()[1].errback(ValueError("malformed"))
        self.assertEqual([name for name, _ in answers], ["b"])
        answers.pop()[1].callback(None)
        self.successResultOf(closed)
        self.assertEqual(queue.pending, 0)

    def test_an_ordered_sink_never_lets_a_later_record_overtake_a_failed_one(self):
        clock = task.Clock()
        answers = []
        taken = []

        def sink(record):
            d = defer.Deferred()
            answers.append((record, d))
            return d

        queue = RetryingSink(clock, sink, "SMS", delays=(1.0,), ordered=True)
        queue.write({"call_id": "first"})
        queue.write({"call_id": "second"})
        self.assertEqual([r["call_id"] for r, _ in answers], ["first"])  # one at a time
        answers.pop()[1].errback(OSError("database is locked"))
        self.assertEqual(answers, [])  # "second" waits behind the failed one
        clock.advance(1.0)
        for expected in ("first", "second"):
            record, d = answers.pop()
            self.assertEqual(record["call_id"], expected)
            taken.append(expected)
            d.callback(None)
        self.assertEqual((taken, queue.pending), (["first", "second"], 0))
