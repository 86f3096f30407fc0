"""The durable outbox on task.Clock and the in-memory store: head-first per number, retried, kicked, stopped."""

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from gateway.chat.interfaces import SmsRejected
from gateway.chat.outbox import Outbox
from gateway.store import MemoryCdrStore, SmsRecord


class Deliveries:
    """The deliver function: each call gets a Deferred the test fires; ``calls`` lists (uid, Deferred)."""

    def __init__(self):
        self.calls = []
        self.cancelled = []

    def __call__(self, record):
        d = defer.Deferred(lambda _: self.cancelled.append(record.uid))
        self.calls.append((record.uid, d))
        return d

    @property
    def uids(self):
        return [uid for uid, _ in self.calls]

    def succeed(self, index=-1, result=None):
        self.calls[index][1].callback(result)

    def fail(self, index=-1, error=None):
        self.calls[index][1].errback(error or RuntimeError("chat server down"))


class Metrics:
    def __init__(self):
        self.events = []

    def delivered(self, direction):
        self.events.append(("delivered", direction))

    def attempt_failed(self, direction):
        self.events.append(("attempt_failed", direction))

    def rejected(self, direction):
        self.events.append(("rejected", direction))


class OutboxTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.store = MemoryCdrStore(self.clock)
        self.deliveries = Deliveries()
        self.metrics = Metrics()
        self.outbox = Outbox(self.clock, self.store, "inbound", self.deliveries,
                             retry_policy=lambda failures: 2.0 ** failures, metrics=self.metrics)

    def stored(self, uid, number="+491"):
        record, _ = self.successResultOf(self.store.add_sms(SmsRecord(uid, "inbound", number, f"text {uid}", "2024-01-01T00:00:00Z")))
        return record

    def record(self, uid):
        [record] = [r for r in self.successResultOf(self.store.list_sms()) if r.uid == uid]
        return record

    def test_one_number_is_served_head_first_others_in_parallel(self):
        for uid, number in (("a1", "A"), ("a2", "A"), ("b1", "B")):
            self.outbox.add(self.stored(uid, number))
        self.assertEqual(self.deliveries.uids, ["a1", "b1"])
        self.assertEqual(self.outbox.pending, 3)
        self.deliveries.succeed(0, "conv-1")
        self.assertEqual(self.deliveries.uids, ["a1", "b1", "a2"])
        self.assertEqual((self.record("a1").status, self.record("a1").conversation_id), ("delivered", "conv-1"))
        self.assertEqual(self.record("a2").status, "pending")
        self.assertEqual(self.outbox.pending, 2)

    def test_a_failed_head_is_retried_after_the_backoff_and_keeps_the_order(self):
        self.outbox.add(self.stored("a1"))
        self.outbox.add(self.stored("a2"))
        self.deliveries.fail(0)
        self.assertEqual(self.outbox.status(), {"pending": 2, "waiting": {"+491": "RuntimeError: chat server down"}})
        self.clock.advance(0.9)
        self.assertEqual(self.deliveries.uids, ["a1"])
        self.clock.advance(0.1)  # 1 s
        self.assertEqual(self.deliveries.uids, ["a1", "a1"])
        self.deliveries.fail()
        self.clock.advance(1.9)
        self.assertEqual(len(self.deliveries.calls), 2)
        self.clock.advance(0.1)  # 2 s
        self.deliveries.succeed()
        self.assertEqual(self.deliveries.uids, ["a1", "a1", "a1", "a2"])
        a1 = self.record("a1")
        self.assertEqual((a1.status, a1.attempts, a1.last_error), ("delivered", 2, "RuntimeError: chat server down"))
        self.assertEqual(self.metrics.events, [("attempt_failed", "inbound")] * 2 + [("delivered", "inbound")])

    def test_kick_retries_waiting_lanes_now_with_a_fresh_backoff(self):
        self.outbox.add(self.stored("a1"))
        self.deliveries.fail()  # the lane now waits 1 s
        self.outbox.kick()
        self.assertEqual(self.deliveries.uids, ["a1", "a1"])
        self.deliveries.fail()
        self.clock.advance(1)  # the first delay again, not the second
        self.assertEqual(len(self.deliveries.calls), 3)

    def test_a_rejected_sms_is_marked_failed_and_the_lane_moves_on(self):
        self.outbox.add(self.stored("a1"))
        self.outbox.add(self.stored("a2"))
        self.deliveries.fail(0, SmsRejected("bad number"))
        self.assertEqual(self.deliveries.uids, ["a1", "a2"])
        a1 = self.record("a1")
        self.assertEqual((a1.status, a1.last_error), ("failed", "SmsRejected: bad number"))
        self.assertIn(("rejected", "inbound"), self.metrics.events)

    def test_records_loaded_twice_are_queued_once(self):
        records = [self.stored("a1"), self.stored("a2")]
        self.outbox.load(records)
        self.outbox.load(records)
        self.assertEqual(self.outbox.pending, 2)
        self.deliveries.succeed()
        self.deliveries.succeed()
        self.assertEqual(self.deliveries.uids, ["a1", "a2"])
        self.assertEqual(self.outbox.pending, 0)
        self.assertEqual(self.successResultOf(self.store.pending_sms()), [])

    def test_stop_cancels_what_is_under_way_and_retries_nothing(self):
        self.outbox.add(self.stored("a1", "A"))
        self.outbox.add(self.stored("b1", "B"))
        self.deliveries.fail(1)  # B waits for its retry
        stopped = self.outbox.stop()
        self.successResultOf(stopped)
        self.assertEqual(self.deliveries.cancelled, ["a1"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.outbox.add(self.stored("a2", "A"))
        self.assertEqual(len(self.deliveries.calls), 2)
        self.assertEqual([r.uid for r in self.successResultOf(self.store.pending_sms())], ["a1", "b1", "a2"])

    def test_a_failure_to_record_the_outcome_is_logged_and_the_lane_goes_on(self):
        self.outbox.add(self.stored("a1"))
        self.outbox.add(self.stored("a2"))
        self.successResultOf(self.store.close())
        self.deliveries.succeed(0)
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        self.assertEqual(self.deliveries.uids, ["a1", "a2"])

    def test_a_long_queue_that_delivers_at_once_is_served_without_recursing(self):
        # The sim transport and the memory store answer at once: a lane of thousands (piled up
        # while the transport was down) must drain in a loop, not one stack frame per SMS.
        down = [True]
        delivered = []

        def deliver(record):
            if down[0]:
                raise RuntimeError("transport down")
            delivered.append(record.uid)

        outbox = Outbox(self.clock, self.store, "outbound", deliver, retry_policy=lambda failures: 5.0)
        uids = [f"s{i}" for i in range(3000)]
        for uid in uids:
            outbox.add(self.stored(uid))
        self.assertEqual(outbox.pending, 3000)
        down[0] = False
        outbox.kick()
        self.assertEqual(delivered, uids)
        self.assertEqual(outbox.pending, 0)
        self.assertEqual(self.successResultOf(self.store.pending_sms()), [])
