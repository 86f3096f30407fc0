"""Setting calls up and ending them: click-to-dial, inbound routing, every outcome and its one CDR."""

from twisted.internet import defer
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Route
from gateway.core import events as ev
from gateway.core.errors import DriverError, ExtensionBusy, IllegalState, InvalidArgument, UnknownExtension

from .harness import Harness


def text(events) -> str:
    return "\n".join(formatEvent(e) for e in events)


class OriginateTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness(audio="tone")

    def test_rings_the_phone_then_dials_and_bridges(self):
        snapshot = self.successResultOf(self.h.registry.originate("1001", "5551234"))
        call_id = snapshot.call_id
        self.assertEqual((snapshot.state, snapshot.extension, snapshot.direction), ("DIALING", "1001", "outbound"))
        self.assertEqual(snapshot.legs[0].role, "device")
        self.h.advance(1.0)  # the phone answers after phone_answer_delay
        call = self.h.registry.call(call_id)
        self.assertEqual(call.state, "DIALING")
        self.assertEqual([(p.number, p.state) for p in call.parties], [("5551234", "DIALING")])
        self.h.advance(2.0)  # the number answers after ring_time
        call = self.h.registry.call(call_id)
        self.assertEqual(call.state, "TALKING")
        self.assertEqual(call.answered_at, 3.0)
        self.assertEqual(
            self.h.types(call_id),
            ["CallCreated", "LegCreated", "LegDialing", "LegRinging", "LegAnswered",
             "LegCreated", "LegDialing", "LegRinging", "LegAnswered"],
        )
        created = self.h.of(ev.CallCreated)[0]
        self.assertEqual((created.caller, created.number, created.direction), ("1001", "5551234", "outbound"))

    def test_audio_flows_both_ways_once_talking(self):
        call_id = self.h.talking_call()
        self.h.listen()
        phone, remote = self.h.network.party("1001"), self.h.network.party("5551234")
        self.assertTrue(phone.heard_tone(700))
        self.assertTrue(remote.heard_tone(500))
        self.assertFalse(phone.heard_tone(500))
        self.assertGreater(remote.frames_received, 20)
        self.successResultOf(self.h.registry.hangup(call_id))
        self.assertEqual(self.h.media.sessions(call_id), {})

    def test_the_phone_hanging_up_ends_the_call_normally(self):
        call_id = self.h.talking_call()
        self.h.network.party("1001").hang_up()
        call = self.h.registry.call(call_id)
        self.assertEqual((call.state, call.cause, call.hangup_by), ("RELEASED", "normal", "extension"))
        self.assertEqual(self.h.network.party("5551234").state, "ended")
        self.assertEqual(len(self.h.cdrs), 1)

    def test_the_party_hanging_up(self):
        call_id = self.h.talking_call()
        self.h.advance(10)
        self.h.network.party("5551234").hang_up()
        [cdr] = self.h.cdrs
        self.assertEqual((cdr["cause"], cdr["hangup_by"]), ("remote_hangup", "remote"))
        self.assertEqual((cdr["duration"], cdr["billable_seconds"]), (13.0, 10.0))
        self.assertEqual(self.h.network.party("1001").state, "ended")
        self.assertEqual(self.h.types(call_id)[-3:], ["LegEnded", "LegEnded", "CallEnded"])

    def test_an_internal_call_rings_the_other_extension(self):
        call_id = self.successResultOf(self.h.registry.originate("1001", "1002")).call_id
        self.h.advance(1.0 + 2.0)
        call = self.h.registry.call(call_id)
        self.assertEqual(call.state, "TALKING")
        self.assertEqual([(p.number, p.name) for p in call.parties], [("1002", "Bob")])
        self.failureResultOf(self.h.registry.originate("1002", "5551234"), ExtensionBusy)

    def test_refusals(self):
        registry = self.h.registry
        self.failureResultOf(registry.originate("9999", "5551234"), UnknownExtension)
        self.failureResultOf(registry.originate("1001", "not a number"), InvalidArgument)
        self.failureResultOf(registry.originate("1001", "1001"), InvalidArgument)
        self.successResultOf(registry.originate("1001", "5551234"))
        error = self.failureResultOf(registry.originate("1001", "5551234"), ExtensionBusy).value
        self.assertEqual(error.http_status, 409)
        self.assertEqual(len(self.h.cdrs), 0)
        self.assertEqual([r for _, r in self.h.commands], ["unknown_extension", "invalid_argument",
                                                            "invalid_argument", "ok", "extension_busy"])

    def test_a_device_driver_that_is_missing_fails_the_call_with_a_cdr(self):
        error = self.failureResultOf(self.h.registry.originate("1004", "5551234"), DriverError).value
        self.assertIn("nowhere", str(error))
        self.assertEqual(error.http_status, 502)
        [cdr] = self.h.cdrs
        self.assertEqual((cdr["cause"], cdr["extension"]), ("failed", "1004"))
        self.assertIn("LegFailed", self.h.types())
        self.assertEqual(self.h.types()[-1], "CallEnded")


class OutcomeCdrTests(SynchronousTestCase):
    """Exactly one CDR for each way a dialled call can end."""

    def end_of(self, number, seconds):
        h = Harness()
        call_id = self.successResultOf(h.registry.originate("1001", number)).call_id
        h.advance(seconds)
        self.assertEqual(h.state(call_id), "RELEASED")
        h.advance(5)
        self.assertEqual(len(h.cdrs), 1)
        self.assertEqual(h.types(call_id).count("CallEnded"), 1)
        self.assertEqual(h.types(call_id)[-1], "CallEnded")
        return h, h.cdrs[0]

    def test_answered(self):
        h = Harness()
        call_id = h.talking_call()
        h.advance(7)
        self.successResultOf(h.registry.hangup(call_id, by="desktop"))
        [cdr] = h.cdrs
        self.assertEqual((cdr["cause"], cdr["hangup_by"], cdr["node"]), ("normal", "desktop", "test-node"))
        self.assertEqual((cdr["started_at"], cdr["answered_at"], cdr["ended_at"]),
                         ("1970-01-01T00:00:00.000Z", "1970-01-01T00:00:03.000Z", "1970-01-01T00:00:10.000Z"))
        self.assertEqual((cdr["duration"], cdr["billable_seconds"]), (10.0, 7.0))
        self.assertEqual([(leg["role"], leg["number"], leg["cause"]) for leg in cdr["legs"]],
                         [("device", "1001", "normal"), ("party", "5551234", "normal")])
        self.assertEqual(h.of(ev.CallEnded)[0].cdr, cdr)

    def test_busy(self):
        h, cdr = self.end_of("5550001", 1.0 + 1.0)
        self.assertEqual((cdr["cause"], cdr["answered_at"], cdr["billable_seconds"]), ("busy", None, 0.0))
        self.assertIn("LegBusy", h.types())

    def test_no_answer(self):
        h, cdr = self.end_of("5558881", 1.0 + 10.0)
        self.assertEqual(cdr["cause"], "no_answer")
        self.assertEqual(cdr["legs"][1]["cause"], "no_answer")

    def test_failed(self):
        h, cdr = self.end_of("5559991", 1.0 + 0.5)
        self.assertEqual(cdr["cause"], "failed")
        [failed] = h.of(ev.LegFailed)
        self.assertEqual(failed.reason, "simulated failure")

    def test_transport_lost(self):
        h = Harness()
        call_id = h.talking_call()
        h.network.party("5551234").drop()
        [cdr] = h.cdrs
        self.assertEqual((cdr["cause"], cdr["hangup_by"]), ("transport_lost", "remote"))
        self.assertEqual(h.state(call_id), "RELEASED")

    def test_ring_until_the_no_answer_timeout(self):
        h = Harness(ring_time=45.0)
        call_id = self.successResultOf(h.registry.originate("1001", "5551234")).call_id
        h.advance(30.9)
        self.assertEqual(h.state(call_id), "DIALING")
        h.advance(0.2)
        self.assertEqual(h.registry.call(call_id).cause, "no_answer")
        self.assertEqual(len(h.cdrs), 1)


class InboundTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness(audio="tone")
        self.registry = self.h.registry

    def inbound(self, did, caller="0811222333"):
        leg = self.h.network.place_inbound(caller, did)
        return leg, leg.events.call_id

    def test_routed_to_an_extension_whose_phone_answers(self):
        leg, call_id = self.inbound("100")
        call = self.registry.call(call_id)
        self.assertEqual((call.state, call.extension, call.did, call.caller), ("RINGING", "1001", "100", "0811222333"))
        self.assertEqual(self.registry.active_call_for("1001").call_id, call_id)
        self.h.advance(1.0)
        call = self.registry.call(call_id)
        self.assertEqual(call.state, "TALKING")
        self.assertEqual(leg.party.state, "talking")
        self.assertEqual(
            self.h.types(call_id),
            ["CallCreated", "LegCreated", "LegRinging", "LegCreated", "LegDialing", "LegRinging",
             "LegAnswered", "LegAnswered"],
        )
        self.assertEqual(self.h.of(ev.CallCreated)[0].did, "100")
        self.h.network.party("1001").play_tone(600)
        self.h.listen()
        self.assertTrue(leg.party.heard_tone(600))

    def test_a_manual_phone_rings_until_answered_through_the_registry(self):
        leg, call_id = self.inbound("103")
        self.h.advance(20)
        self.assertEqual(self.h.state(call_id), "RINGING")
        self.failureResultOf(self.registry.hold(call_id), IllegalState)
        snapshot = self.successResultOf(self.registry.answer(call_id))
        self.assertEqual(snapshot.state, "TALKING")
        self.assertEqual(self.h.network.party("1003").state, "talking")
        self.failureResultOf(self.registry.answer(call_id), IllegalState)

    def test_reject(self):
        leg, call_id = self.inbound("103")
        snapshot = self.successResultOf(self.registry.reject(call_id))
        self.assertEqual((snapshot.state, snapshot.cause, snapshot.hangup_by), ("RELEASED", "rejected", "api"))
        self.assertEqual((leg.party.state, self.h.network.party("1003").state), ("ended", "ended"))
        self.assertEqual([c["cause"] for c in self.h.cdrs], ["rejected"])
        self.failureResultOf(self.registry.reject(call_id), IllegalState)

    def test_reject_is_only_for_an_alerting_call(self):
        call_id = self.h.talking_call()
        error = self.failureResultOf(self.registry.reject(call_id), IllegalState).value
        self.assertEqual(str(error), "cannot reject: the call is TALKING")

    def test_nobody_answers(self):
        leg, call_id = self.inbound("103")
        self.h.advance(30.0)
        self.assertEqual(self.registry.call(call_id).cause, "no_answer")
        self.assertEqual(leg.party.state, "ended")
        self.assertEqual(len(self.h.cdrs), 1)

    def test_the_caller_hangs_up_while_ringing(self):
        leg, call_id = self.inbound("103")
        leg.party.hang_up()
        call = self.registry.call(call_id)
        self.assertEqual((call.cause, call.hangup_by), ("remote_hangup", "remote"))
        self.assertEqual(self.h.network.party("1003").state, "ended")

    def test_exact_did_wins_over_the_wildcard(self):
        _, exact = self.inbound("100")
        _, other = self.inbound("7777")
        self.assertEqual(self.registry.call(exact).extension, "1001")
        self.assertEqual(self.registry.call(other).extension, "1002")

    def test_no_route_hangs_up_and_names_the_did(self):
        h = Harness(routes=[Route(did="100", to="extension:1001")])
        with capturedLogs() as events:
            leg = h.network.place_inbound("0811222333", "4242")
        call = h.registry.call(leg.events.call_id)
        self.assertEqual((call.state, call.cause, call.extension), ("RELEASED", "no_route", None))
        self.assertEqual(leg.party.state, "ended")
        self.assertIn("no route for DID 4242", text(events))
        self.assertEqual([c["cause"] for c in h.cdrs], ["no_route"])

    def test_a_busy_extension_gives_busy(self):
        self.h.talking_call()
        leg, call_id = self.inbound("100")
        self.assertEqual(self.registry.call(call_id).cause, "busy")
        self.assertEqual(leg.party.state, "ended")

    def test_routed_to_echo(self):
        leg, call_id = self.inbound("200")
        call = self.registry.call(call_id)
        self.assertEqual((call.state, call.app, call.extension), ("TALKING", "echo", None))
        leg.party.play_tone(800)
        self.h.listen()
        self.assertTrue(leg.party.heard_tone(800))
        leg.party.hang_up()
        [cdr] = self.h.cdrs
        self.assertEqual((cdr["app"], cdr["cause"]), ("echo", "remote_hangup"))
        self.assertEqual(self.h.media.sessions(call_id), {})

    def test_a_routed_app_that_fails_is_logged_and_ends_the_call(self):
        class Session:
            def __init__(self):
                self.finished = defer.Deferred()

            def stop(self):
                pass

        class FailingApp:
            name = "boom"

            def start(self, ports, clock, arg=None, state_dir=None):
                self.session = Session()
                return self.session

        app = FailingApp()
        h = Harness(routes=[Route(did="300", to="app:boom")], apps={"boom": app})
        leg = h.network.place_inbound("0811222333", "300")
        call_id = leg.events.call_id
        self.assertEqual(h.registry.call(call_id).state, "TALKING")
        with capturedLogs() as events:
            app.session.finished.errback(RuntimeError("the app broke"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn(f"call {call_id}: media app boom failed", text(events))
        self.assertEqual((h.registry.call(call_id).cause, leg.party.state), ("normal", "ended"))

    def test_calls_arriving_during_shutdown_are_refused(self):
        self.registry.shutdown(5)
        leg, call_id = self.inbound("100")
        self.assertEqual(self.registry.call(call_id).cause, "shutdown")
        self.assertEqual(leg.party.state, "ended")
        self.failureResultOf(self.registry.originate("1002", "5551234"), IllegalState)

    def test_driver_reports_are_ignored_after_the_leg_ended(self):
        leg, call_id = self.inbound("100")
        self.successResultOf(self.registry.hangup(call_id))
        leg.events.hung_up()
        leg.events.answered()
        leg.events.dtmf("1")
        self.assertEqual(len(self.h.cdrs), 1)
        self.assertEqual(self.h.types(call_id)[-1], "CallEnded")

    def test_bad_driver_reports_are_logged_not_raised(self):
        leg, call_id = self.inbound("100")
        self.h.advance(1.0)
        with capturedLogs() as events:
            leg.events.dtmf("x")
            leg.events.hung_up("because")
        self.assertIn("invalid DTMF digit 'X'", text(events))
        self.assertIn("unknown hangup cause 'because'", text(events))
        self.assertEqual(self.registry.call(call_id).cause, "remote_hangup")
