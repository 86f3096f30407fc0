"""The store's write queues on a clock: while the store cannot be written, records wait and nothing is lost.

These are the queue logic's checks (the call registry's CDR queue and the store's own SMS and
conversation queues, their metrics and the readiness component ``store``), run on ``task.Clock``
over the in-memory store with faults switched on and off, so they are exact and take no time.
The real faults (a full disk, a locked database) are in test_faults.py.
"""

import sqlite3

from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.context import Readiness
from gateway.core.cdr import NotWritten, RetryingSink
from gateway.store import GuardedStore, MemoryCdrStore, StoreHealth
from gateway.store.interfaces import DuplicateCdr
from gateway.store.sms import ConversationRecord, SmsRecord

from .helpers import make_cdr

DELAYS = (1.0, 2.0, 5.0)
#: seconds the backend takes to answer a write (the SQLite store answers from its pool thread, later)
LATENCY = 0.01

_WRITES = ("add_cdr", "attach_provider_cdr", "add_sms", "sms_attempt_failed", "finish_sms",
           "save_conversation", "close_conversation")


class FaultyStore:
    """A MemoryCdrStore whose writes answer after :data:`LATENCY` on ``clock`` and can be made to fail.

    ``fault``: while set, every write fails with ``sqlite3.OperationalError(fault)`` (what the SQLite
    store fails with) and changes nothing. ``lose_answers``: a write is done, but its caller is told
    it failed (a commit whose answer was lost), so a retry of it comes back as a duplicate.
    """

    def __init__(self, clock):
        self.clock = clock
        self.memory = MemoryCdrStore(clock)
        self.fault = None
        self.lose_answers = False
        self.attempts = []

    def __getattr__(self, name):
        method = getattr(self.memory, name)
        if name not in _WRITES:
            return method
        return lambda *args, **kwargs: self._write(name, method, args, kwargs)

    def _write(self, name, method, args, kwargs):
        self.attempts.append((self.clock.seconds(), name))
        if self.fault is not None:
            d = defer.fail(sqlite3.OperationalError(self.fault))
        else:
            d = method(*args, **kwargs)
            if self.lose_answers:
                d.addBoth(lambda _: defer.fail(sqlite3.OperationalError("disk I/O error")))
        answer = defer.Deferred()
        self.clock.callLater(LATENCY, d.chainDeferred, answer)
        return answer


def sms(uid, text=None, direction="inbound"):
    return SmsRecord(uid, direction, "+62811", text if text is not None else f"sms {uid}", "2024-05-01T10:00:00Z")


class Rig:
    """A GuardedStore over a FaultyStore on a clock, its metrics and readiness, and a registry-like CDR queue."""

    def __init__(self, test, pending_max=10000, delays=DELAYS):
        self.test = test
        self.clock = task.Clock()
        self.metrics = CollectorRegistry()
        self.readiness = Readiness()
        self.health = StoreHealth(self.metrics, self.readiness.register("store"))
        self.backend = FaultyStore(self.clock)
        self.store = GuardedStore(self.backend, self.clock, health=self.health, pending_max=pending_max,
                                  delays=delays)
        self.cdrs = RetryingSink(self.clock, self.store.add_cdr, "CDR", **self.store.queue_options)
        test.successResultOf(self.store.open())
        test.assertTrue(self.readiness.ready)

    def sample(self, name, **labels):
        return self.metrics.get_sample_value(name, labels) or 0

    def settle(self):
        """Let every write that was handed over answer (no retry is due in that time)."""
        self.clock.advance(LATENCY)

    def run(self, seconds):
        """Let ``seconds`` pass, a write's answer at a time."""
        for _ in range(round(seconds / LATENCY)):
            self.clock.advance(LATENCY)

    def stored_cdrs(self):
        return [c["call_id"] for c in self.test.successResultOf(self.store.cdrs())]

    def stored_sms(self):
        return [r.uid for r in self.test.successResultOf(self.store.list_sms())]


class OutageTests(SynchronousTestCase):
    def test_while_the_store_fails_records_wait_and_every_one_is_stored_once_it_works(self):
        r = Rig(self)
        r.backend.fault = "database or disk is full"
        for n in range(5):
            r.cdrs.write(make_cdr(f"c{n}"))
        stored = [r.store.add_sms(sms(f"u{n}")) for n in range(5)]
        r.settle()
        self.assertEqual(r.readiness.not_ready(), {"store": "database or disk is full"})
        self.assertEqual((r.sample("gateway_store_write_failures_total", kind="cdr"),
                          r.sample("gateway_store_write_failures_total", kind="sms")), (5, 1))
        self.assertEqual((r.sample("gateway_store_pending", kind="cdr"),
                          r.sample("gateway_store_pending", kind="sms")), (5, 5))
        r.run(13.1)  # four retries of the oldest of each (after 1, 2, 5 and 5 s), all failing
        self.assertEqual(r.sample("gateway_store_write_failures_total", kind="sms"), 5)
        self.assertEqual((r.cdrs.pending, r.sample("gateway_store_pending", kind="sms")), (5, 5))
        for d in stored:
            self.assertNoResult(d)
        r.backend.fault = None
        r.run(5.1)  # the next retry (5 s after the last failed) goes through, then the rest, SMS one at a time
        self.assertEqual([record.uid for record, created in map(self.successResultOf, stored)],
                         [f"u{n}" for n in range(5)])
        self.assertEqual(r.stored_cdrs(), [f"c{n}" for n in range(5)])
        self.assertEqual(r.stored_sms(), [f"u{n}" for n in range(5)])
        self.assertTrue(r.readiness.ready)
        self.assertEqual((r.sample("gateway_store_pending", kind="cdr"), r.sample("gateway_store_pending", kind="sms")),
                         (0, 0))
        self.assertEqual(r.sample("gateway_store_records_not_written_total", kind="cdr", reason="overflow"), 0)
        self.assertEqual(r.clock.getDelayedCalls(), [])

    def test_a_conversations_close_never_overtakes_its_save(self):
        r = Rig(self)
        r.backend.fault = "database is locked"
        saved = r.store.save_conversation(ConversationRecord("conv-1", "+62811", {"id": "p1"}, "2024-05-01T10:00:00Z"))
        closed = r.store.close_conversation("conv-1", "2024-05-01T10:05:00Z", "done")
        r.settle()
        r.backend.fault = None
        r.run(1.1)
        self.successResultOf(saved)
        self.assertTrue(self.successResultOf(closed))  # the save came first: there was an open one to close
        self.assertEqual(self.successResultOf(r.store.open_conversations()), [])

    def test_past_pending_max_an_sms_is_refused_to_its_sender_and_counted(self):
        r = Rig(self, pending_max=2)
        r.backend.fault = "attempt to write a readonly database"
        waiting = [r.store.add_sms(sms(f"u{n}")) for n in range(2)]
        with capturedLogs() as events:
            refused = r.store.add_sms(sms("u9", "kept in the log"))
        self.assertEqual(self.failureResultOf(refused, NotWritten).value.reason, "overflow")
        [critical] = [e for e in events if e["log_level"] is LogLevel.critical]
        self.assertIn("kept in the log", repr(critical["record"]))
        self.assertEqual(r.sample("gateway_store_records_not_written_total", kind="sms", reason="overflow"), 1)
        r.backend.fault = None
        r.run(1.1)
        for d in waiting:
            self.successResultOf(d)
        self.assertEqual(r.stored_sms(), ["u0", "u1"])

    def test_at_stop_waiting_writes_get_one_last_try_and_the_rest_is_logged_in_full(self):
        r = Rig(self, delays=(30.0,))
        r.backend.fault = "attempt to write a readonly database"
        first = r.store.add_sms(sms("u1", "kept in the log"))
        r.settle()
        stopped = r.store.stop_retrying()  # does not wait 30 s for the next retry
        with capturedLogs() as events:
            r.settle()
        self.successResultOf(stopped)
        self.assertEqual(self.failureResultOf(first, NotWritten).value.reason, "shutdown")
        [critical] = [e for e in events if e["log_level"] is LogLevel.critical]
        self.assertIn("kept in the log", repr(critical["record"]))
        self.assertEqual(r.sample("gateway_store_records_not_written_total", kind="sms", reason="shutdown"), 1)
        self.assertEqual(r.clock.getDelayedCalls(), [])


class RefusalTests(SynchronousTestCase):
    """A record the store refuses (a duplicate, a malformed record) is an answer: the queue goes on."""

    def test_a_retried_cdr_refused_as_a_duplicate_ends_the_outage_and_the_queue_drains(self):
        r = Rig(self)
        r.backend.lose_answers = True  # c0 is committed, but the queue is told it failed
        r.cdrs.write(make_cdr("c0"))
        r.settle()
        r.backend.lose_answers = False
        r.backend.fault = "database is locked"
        for n in range(1, 4):
            r.cdrs.write(make_cdr(f"c{n}"))
        self.assertFalse(r.readiness.ready)
        r.backend.fault = None
        with capturedLogs() as events:
            r.clock.advance(1.0)  # the retry of c0: a duplicate
            r.settle()
            r.settle()  # then c1..c3, all at once
        [refused] = [e for e in events if e["log_level"] is LogLevel.error]
        self.assertEqual(refused["record"][0]["call_id"], "c0")  # logged in full
        self.assertEqual(r.stored_cdrs(), ["c0", "c1", "c2", "c3"])
        self.assertEqual((r.cdrs.pending, r.cdrs.down), (0, False))
        self.assertTrue(r.readiness.ready)
        self.assertEqual(r.sample("gateway_store_records_not_written_total", kind="cdr", reason="refused"), 1)
        self.assertEqual(r.clock.getDelayedCalls(), [])

    def test_a_refused_retry_alone_brings_readiness_back(self):
        r = Rig(self)
        r.backend.lose_answers = True
        r.cdrs.write(make_cdr("c0"))
        r.settle()
        self.assertEqual(r.readiness.not_ready(), {"store": "disk I/O error"})
        r.backend.lose_answers = False
        r.clock.advance(1.0)
        r.settle()
        self.assertEqual((r.cdrs.pending, r.cdrs.down), (0, False))
        self.assertTrue(r.readiness.ready)  # the store answered; nothing waits for it

    def test_an_sms_refused_while_the_store_works_lets_the_next_one_through_at_once(self):
        r = Rig(self)
        bad = r.store.add_sms(sms("u1", direction="sideways"))
        good = r.store.add_sms(sms("u2"))
        r.settle()  # u1 refused
        r.settle()  # u2 written, with no other submit and no timer
        self.failureResultOf(bad, ValueError)
        self.assertEqual(self.successResultOf(good)[0].uid, "u2")
        self.assertEqual(r.stored_sms(), ["u2"])
        self.assertEqual(r.clock.getDelayedCalls(), [])

    def test_a_probe_refused_while_the_store_is_still_down_starts_the_retries_afresh(self):
        r = Rig(self)
        r.backend.lose_answers = True
        r.cdrs.write(make_cdr("c0"))
        r.settle()
        r.cdrs.write(make_cdr("c1"))
        r.backend.lose_answers = False

        def duplicate_then_locked(*args):
            r.backend.fault = "database is locked"  # c0 refused as a duplicate; c1, sent next, fails
            return defer.fail(DuplicateCdr("a CDR for call c0 is stored already"))

        self.patch(r.backend.memory, "add_cdr", duplicate_then_locked)
        r.clock.advance(1.0)
        r.settle()
        r.settle()
        self.assertTrue(r.cdrs.down)
        self.assertFalse(r.readiness.ready)
        r.backend.fault = None
        self.patch(r.backend.memory, "add_cdr", MemoryCdrStore.add_cdr.__get__(r.backend.memory))
        r.clock.advance(1.0)  # the first delay again, not the next one
        r.settle()
        self.assertEqual(r.stored_cdrs(), ["c0", "c1"])
        self.assertTrue(r.readiness.ready)
