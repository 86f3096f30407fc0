"""Observers and event order, CDR delivery, retention and dispose, shutdown."""

from twisted.internet import defer
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.core import events as ev
from gateway.core.errors import IllegalState, UnknownCall

from .harness import Harness


class ObserverTests(SynchronousTestCase):
    def test_an_observer_that_raises_is_logged_and_disturbs_nobody(self):
        h = Harness()

        def broken(event, call):
            raise ValueError(f"cannot handle {event.type}")

        h.registry.subscribe(broken)
        after = []
        h.registry.subscribe(lambda event, call: after.append(event))
        call_id = h.talking_call()
        self.successResultOf(h.registry.hangup(call_id))
        errors = self.flushLoggedErrors(ValueError)
        self.assertEqual(len(errors), len(h.events))
        self.assertEqual([e.type for e in after], h.types())
        self.assertEqual(h.types(call_id)[-1], "CallEnded")
        self.assertEqual(len(h.cdrs), 1)

    def test_the_log_names_the_observer_and_the_event(self):
        h = Harness()

        def picky(event, call):
            raise KeyError("x")

        h.registry.subscribe(picky)
        with capturedLogs() as logged:
            h.registry.originate("1001", "5551234")
        self.flushLoggedErrors(KeyError)
        failures = [e for e in logged if "log_failure" in e]
        self.assertEqual(failures[0]["event"], "CallCreated")
        self.assertIs(failures[0]["observer"], picky)

    def test_per_extension_subscriptions_and_unsubscribe(self):
        h = Harness()
        alice, bob = [], []
        h.registry.subscribe(lambda event, call: alice.append(event), extension="1001")
        unsubscribe = h.registry.subscribe(lambda event, call: bob.append(event), extension="1002")
        first = h.talking_call("1001", "5551234")
        second = h.talking_call("1002", "5552222")
        self.assertEqual({e.call_id for e in alice}, {first})
        self.assertEqual({e.call_id for e in bob}, {second})
        unsubscribe()
        unsubscribe()
        self.successResultOf(h.registry.hangup(second))
        self.assertNotIn("CallEnded", [e.type for e in bob])

    def test_a_command_inside_an_observer_keeps_the_order_for_everyone(self):
        h = Harness()

        def hang_up_at_once(event, call):
            if isinstance(event, ev.CallCreated):
                h.registry.hangup(event.call_id)

        h.registry.subscribe(hang_up_at_once)
        later = []
        h.registry.subscribe(lambda event, call: later.append(event))
        self.successResultOf(h.registry.originate("1001", "5551234"))
        self.assertEqual([e.type for e in later][0], "CallCreated")
        self.assertEqual([e.type for e in later][-1], "CallEnded")
        self.assertEqual([e.type for e in later], h.types())

    def test_every_event_carries_call_extension_and_time(self):
        h = Harness()
        h.advance(12.5)
        call_id = h.talking_call()
        for event in h.events:
            self.assertEqual((event.call_id, event.extension), (call_id, "1001"))
            self.assertGreaterEqual(event.at, 12.5)
        legs = [e for e in h.events if e.type.startswith("Leg")]
        self.assertTrue(all(e.leg_id for e in legs))
        self.assertEqual(h.events[0].to_dict()["type"], "CallCreated")


class CdrDeliveryTests(SynchronousTestCase):
    def test_a_failing_sink_is_retried_without_holding_the_call(self):
        attempts = []

        def flaky(cdr):
            attempts.append(cdr["call_id"])
            return defer.fail(OSError("disk full")) if len(attempts) < 3 else defer.succeed(None)

        h = Harness(cdr_sink=flaky)
        call_id = h.talking_call()
        self.successResultOf(h.registry.hangup(call_id))
        self.assertEqual(h.state(call_id), "RELEASED")
        self.assertEqual(attempts, [call_id])
        h.advance(1.0)
        self.assertEqual(len(attempts), 2)
        h.advance(2.0)
        self.assertEqual(attempts, [call_id] * 3)
        h.advance(60)
        self.assertEqual(len(attempts), 3)

    def test_shutdown_tries_once_more_then_logs_the_record_in_full(self):
        h = Harness(cdr_sink=lambda cdr: defer.fail(OSError("gone")))
        call_id = h.talking_call()
        self.successResultOf(h.registry.hangup(call_id))
        with capturedLogs() as logged:
            self.successResultOf(h.registry.shutdown(0))
        [lost] = [e for e in logged if e["log_level"] is LogLevel.critical]
        self.assertIn(call_id, repr(lost["record"]))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_provider_cdrs_reach_their_sink_even_after_the_call(self):
        h = Harness()
        leg = h.network.place_inbound("0811", "100")
        call_id = leg.events.call_id
        h.advance(1.0)
        leg.party.hang_up()
        leg.events.provider_cdr("optimaccs", {"sessionId": "s-1", "disposition": "ANSWERED"})
        self.assertEqual(h.provider_cdrs, [(call_id, "optimaccs", {"sessionId": "s-1", "disposition": "ANSWERED"})])
        self.assertEqual(len(h.cdrs), 1)


class RetentionTests(SynchronousTestCase):
    def test_released_calls_stay_queryable_for_the_retention(self):
        h = Harness(retention=60.0)
        call_id = h.talking_call()
        self.successResultOf(h.registry.hangup(call_id))
        self.assertEqual(h.registry.calls(), [])
        self.assertEqual([c.call_id for c in h.registry.calls(include_released=True)], [call_id])
        self.assertEqual([c.call_id for c in h.registry.calls_for("1001")], [call_id])
        self.assertIsNone(h.registry.active_call_for("1001"))
        h.advance(59.9)
        self.assertEqual(h.registry.call(call_id).state, "RELEASED")
        h.advance(0.2)
        self.assertRaises(UnknownCall, h.registry.call, call_id)

    def test_dispose(self):
        h = Harness()
        released = h.talking_call()
        self.successResultOf(h.registry.hangup(released))
        self.successResultOf(h.registry.dispose(released))
        self.assertRaises(UnknownCall, h.registry.call, released)
        live = h.talking_call()
        self.assertIsNone(self.successResultOf(h.registry.dispose(live)))
        self.assertRaises(UnknownCall, h.registry.call, live)
        self.assertEqual([(c["call_id"], c["cause"]) for c in h.cdrs], [(released, "normal"), (live, "normal")])
        self.assertEqual(h.network.party("1001").state, "ended")


class ShutdownTests(SynchronousTestCase):
    def test_live_calls_get_the_grace_time_then_end_with_cause_shutdown(self):
        h = Harness()
        call_id = h.talking_call()
        d = h.registry.shutdown(5.0)
        h.advance(4.9)
        self.assertNoResult(d)
        self.assertEqual(h.state(call_id), "TALKING")
        h.advance(0.1)
        self.assertIsNone(self.successResultOf(d))
        call = h.registry.call(call_id)
        self.assertEqual((call.cause, call.hangup_by), ("shutdown", "gateway"))
        self.assertEqual(h.network.party("5551234").state, "ended")
        self.assertEqual(len(h.cdrs), 1)
        self.assertEqual([c for c in h.clock.getDelayedCalls() if c.active()], [])

    def test_calls_that_end_within_the_grace_time_end_it_early(self):
        h = Harness()
        call_id = h.talking_call()
        d = h.registry.shutdown(5.0)
        h.network.party("5551234").hang_up()
        self.successResultOf(d)
        self.assertEqual(h.registry.call(call_id).cause, "remote_hangup")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_nothing_new_starts_while_shutting_down(self):
        h = Harness()
        self.successResultOf(h.registry.shutdown(1.0))
        error = self.failureResultOf(h.registry.originate("1001", "5551234"), IllegalState).value
        self.assertEqual(str(error), "cannot originate: the gateway is shutting down")


class BadTextFromADriverTests(SynchronousTestCase):
    """The core's own line behind the adapters' boundary: no driver can put unencodable text into a call."""

    def test_a_lone_surrogate_is_kept_escaped_in_the_call_its_events_and_its_cdr(self):
        import json

        h = Harness()
        with capturedLogs() as logged:
            h.network.place_inbound("08\ud800", "200", attributes={"session": "p\udfff"})
        (call,) = h.registry.calls()
        self.assertEqual(call.caller, "08\\ud800")
        self.assertTrue(any("not valid Unicode" in e.get("log_format", "") for e in logged))
        self.successResultOf(h.registry.hangup(call.call_id))
        (cdr,) = h.cdrs
        json.dumps(cdr).encode("utf-8")
        self.assertEqual(cdr["caller"], "08\\ud800")
        self.assertEqual(cdr["attributes"]["session"], "p\\udfff")

    def test_the_warning_says_what_was_changed_and_where(self):
        h = Harness()
        with capturedLogs() as logged:
            h.network.place_inbound("0811", "200", attributes={"mos": float("nan"), "path": ("a", "b")})
        [warning] = [e for e in logged if e.get("driver") == "sim" and "fields" in e]
        self.assertIn("not finite", warning["log_format"])
        self.assertNotIn("Unicode", warning["log_format"])
        self.assertEqual(warning["fields"], "attributes.mos")
        (call,) = h.registry.calls()
        self.assertEqual(call.attributes["mos"], "NaN")
        with capturedLogs() as logged:
            h.network.place_inbound("08\ud800", "200", attributes={"k\udc00": "v"})
        [warning] = [e for e in logged if e.get("driver") == "sim" and "fields" in e]
        self.assertIn("not valid Unicode", warning["log_format"])
        self.assertEqual(warning["fields"], "caller_id, attributes.k\\udc00")
