"""The OptimaCCS inbound-call server against the provider simulator, over iosim on one task.Clock.

Every call goes through the real call registry (routes: DID 200 -> app:echo, 100 -> extension 1001
on a simulated phone that answers by itself, 103 -> extension 1003 whose phone rings until answered
through the registry).
"""

import txaio
from twisted.internet import protocol, task
from twisted.logger import formatEvent
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from gateway.confschema import Secret
from gateway.core import events as ev
from gateway.core.errors import DriverError
from gateway.drivers.optimaccs import ENDING, OptimaccsService
from gateway.media import PCM16, Frame, MediaPorts, dtmf_frames
from gateway.media.testing import FrameCollector, tone_power
from gateway.sim import audio
from gateway.sim.optimaccs import CallScript, TimedDigit

from .inbound_bench import ECHO_DID, MANUAL_DID, Bench, RecordingTransport
from .support import LogCapture

CALLER_HZ = 440  # the simulator's test tone
PHONE_HZ = 600
HOLD_HZ = 425


def raw(did=ECHO_DID, **options) -> CallScript:
    """A simulated provider that sends only what the test tells it to."""
    return CallScript(did=did, raw=True, **options)


def incoming_call(sim_call, did=ECHO_DID, caller="0811"):
    sim_call.send_text(f'{{"event":"incoming_call","callerId":"{caller}","didNumber":"{did}",'
                       f'"sessionId":"{sim_call.session_id}"}}')


def level(pcm: bytes, hz: float) -> float:
    return tone_power(pcm, hz) ** 0.5


class EchoCallTests(SynchronousTestCase):
    def setUp(self):
        self.bench = Bench(self)

    def test_echo_call_hears_itself_and_leaves_both_cdrs(self):
        call, _ = self.bench.connect(CallScript(did=ECHO_DID, caller_id="0811", hangup_after=1.0))
        self.bench.run(1.5)
        self.assertIsNotNone(call.answered_at)
        self.assertTrue(call.echo().matched)
        self.assertGreaterEqual(call.frames_received, 45)
        self.assertEqual(call.frame_sizes_received, {320})
        self.assertEqual((call.errors, call.close_code), ([], 1000))
        (cdr,) = self.bench.h.cdrs
        self.assertEqual((cdr["cause"], cdr["caller"], cdr["did"], cdr["app"]),
                         ("remote_hangup", "0811", ECHO_DID, "echo"))
        self.assertEqual(cdr["attributes"], {"session_id": call.session_id})
        self.assertEqual(cdr["legs"][0]["driver"], "optimaccs")
        (provider,) = self.bench.h.provider_cdrs
        self.assertEqual(provider[:2], (cdr["call_id"], "optimaccs"))
        self.assertEqual(provider[2]["sessionId"], call.session_id)
        self.assertEqual((provider[2]["hangupCauseCode"], provider[2]["hangupCauseCodeInt"]), ("16", 16))
        self.assertEqual(self.bench.server.calls, [])

    def test_frames_of_any_length_are_reframed_to_20_ms(self):
        call, _ = self.bench.connect(raw())
        incoming_call(call)
        self.bench.flush()
        sent = audio.tone(0.5)
        for size in (7, 1000, 313, 2000, 1):
            chunk, sent = sent[:size], sent[size:]
            call.send_binary(chunk)
            call.sent_audio += chunk
            self.bench.run(0.02)
        self.bench.run(0.5)
        self.assertEqual(call.frame_sizes_received, {320})
        self.assertEqual(bytes(call.received_audio), bytes(call.sent_audio[:len(call.received_audio)]))
        self.assertEqual(len(call.received_audio), 3320 - 3320 % 320)

    def test_ulaw_is_framed_in_160_bytes(self):
        self.bench = Bench(self, audio="ulaw")
        call, _ = self.bench.connect(CallScript(did=ECHO_DID, codec="ulaw", hangup_after=0.5))
        self.bench.run(1.0)
        self.assertTrue(call.echo().matched)
        self.assertEqual(call.frame_sizes_received, {160})
        self.assertEqual(self.bench.server.calls, [])

    def test_provider_dtmf_reaches_the_leg(self):
        call, _ = self.bench.connect(CallScript(did=ECHO_DID, dtmf=(TimedDigit("5", 0.1), TimedDigit("D", 0.2))))
        self.bench.run(0.5)
        digits = self.bench.h.of(ev.DtmfReceived)
        self.assertEqual([d.digit for d in digits], ["5", "D"])
        self.assertEqual(self.bench.call_of(call).dtmf_count, 2)

    def test_a_connection_lost_without_hangup_ends_the_leg_with_transport_lost(self):
        call, server = self.bench.connect()
        self.bench.run(0.3)
        server.transport.loseConnection()
        self.bench.flush()
        snapshot = self.bench.call_of(call)
        self.assertEqual((snapshot.state, snapshot.cause), ("RELEASED", "transport_lost"))
        self.assertEqual([e.cause for e in self.bench.h.of(ev.LegEnded)], ["transport_lost"])
        self.assertEqual(self.bench.h.cdrs[0]["cause"], "transport_lost")
        self.assertEqual(self.bench.server.calls, [])
        self.assertEqual(self.bench.metric("gateway_optimaccs_connections"), 0)


class MediaPortsTests(SynchronousTestCase):
    def test_the_calls_port_comes_from_the_servers_factory_and_reports_its_drops(self):
        bench = Bench(self)
        drops = []
        bench.server.ports = MediaPorts(200, lambda where, count: drops.append(where))
        call, _ = bench.connect()
        bench.run(0.2)
        port = bench.server.calls[0].port
        port.sink.write(Frame(PCM16, 8000, 0, 0, False, bytes(320 * 30)))  # 10 frames fit
        self.assertGreaterEqual(port.playout.frames_dropped, 19)
        self.assertEqual(drops, ["playout"] * port.playout.frames_dropped)
        call.hangup()
        bench.run(0.1)
        self.assertEqual(bench.server.calls, [])


class ExtensionCallTests(SynchronousTestCase):
    def setUp(self):
        self.bench = Bench(self)
        self.registry = self.bench.h.registry
        self.call, self.protocol = self.bench.connect(CallScript(did=MANUAL_DID, caller_id="0811"))
        self.bench.run(0.3)
        self.call_id = self.bench.call_of(self.call).call_id

    def answer(self):
        self.successResultOf(self.registry.answer(self.call_id))
        self.bench.h.network.party("1003").play_tone(PHONE_HZ)
        self.bench.run(0.5)

    def test_rings_until_answered_through_the_registry(self):
        self.assertEqual(self.bench.call_of(self.call).state, "RINGING")
        caller = self.bench.call_of(self.call).legs[0]
        self.assertEqual((caller.driver, caller.alerting_at), ("optimaccs", caller.started_at))  # alerting on arrival
        self.assertEqual(self.call.events, [])
        self.answer()
        self.assertEqual([e.event for e in self.call.events], ["answer"])
        self.assertEqual(self.bench.call_of(self.call).state, "TALKING")

    def test_bridged_audio_dtmf_hold_and_hangup_with_both_cdrs(self):
        self.answer()
        phone = self.bench.h.network.party("1003")
        self.call.received_audio.clear()
        phone.forget_heard()
        self.bench.run(0.5)
        self.assertTrue(phone.heard_tone(CALLER_HZ))
        self.assertGreater(level(bytes(self.call.received_audio), PHONE_HZ), 1000)

        sent = self.registry.send_dtmf(self.call_id, "12#", 200, 100)
        self.bench.flush()
        self.bench.run(0.7)
        self.assertNoResult(sent)
        self.bench.run(0.12)
        self.successResultOf(sent)
        received = self.call.dtmf_received
        self.assertEqual([(d.digit, d.duration) for d in received], [("1", 200), ("2", 200), ("#", 200)])
        gaps = [round(b.at - a.at, 2) for a, b in zip(received, received[1:])]
        self.assertEqual(gaps, [0.3, 0.3])  # tone and gap, on the simulated clock (10 ms steps)

        self.successResultOf(self.registry.hold(self.call_id))
        self.bench.run(0.1)
        frames_heard = phone.frames_received
        self.call.received_audio.clear()
        self.bench.run(1.0)
        held = bytes(self.call.received_audio)
        self.assertGreater(level(held, HOLD_HZ), 1000)  # the hold tone plays to the caller
        self.assertLess(level(held, PHONE_HZ), 100)  # and nothing from the phone
        self.assertEqual(phone.frames_received, frames_heard)  # nor anything from the caller to the phone

        self.successResultOf(self.registry.hangup(self.call_id))
        self.bench.run(0.1)
        self.assertEqual((self.call.hangup_by, self.call.close_code, self.call.errors), ("CALLEE", 1000, []))
        (cdr,) = self.bench.h.cdrs
        self.assertEqual((cdr["call_id"], cdr["cause"], cdr["extension"], cdr["dtmf_count"]),
                         (self.call_id, "normal", "1003", 3))
        (provider,) = self.bench.h.provider_cdrs
        self.assertEqual((provider[0], provider[2]["disposition"]), (self.call_id, "ANSWERED"))

    def test_dtmf_outside_the_providers_digits_fails_and_durations_are_clamped(self):
        self.answer()
        failure = self.failureResultOf(self.registry.send_dtmf(self.call_id, "A"), DriverError)
        self.assertIn("0-9 * #", failure.getErrorMessage())
        leg = self.bench.server.calls[0]
        long_tone, short_tone = leg.send_dtmf("1", 5000), leg.send_dtmf("2", 0)
        self.bench.run(0.01)
        self.successResultOf(short_tone)
        self.bench.run(1.0)
        self.successResultOf(long_tone)
        self.assertEqual([(d.digit, d.duration) for d in self.call.dtmf_received], [("1", 1000), ("2", 1)])

    def test_a_tone_still_playing_fails_when_the_connection_closes(self):
        self.answer()
        tone = self.bench.server.calls[0].send_dtmf("1", 500)
        self.protocol.transport.loseConnection()
        self.bench.flush()
        self.failureResultOf(tone, DriverError)

    def test_flush_interrupts_the_provider_and_empties_the_playout(self):
        leg = self.bench.server.calls[0]
        for frame in dtmf_frames("1", 400):
            leg.port.sink.write(frame)
        self.assertGreater(leg.port.playout.queued, 10)
        leg.flush()
        self.bench.flush()
        self.assertEqual(leg.port.playout.queued, 0)
        self.assertEqual(len(self.call.interrupts), 1)

    def test_a_flush_of_the_call_interrupts_the_provider(self):
        self.answer()
        self.successResultOf(self.registry.flush(self.call_id))
        self.bench.flush()
        self.assertEqual(len(self.call.interrupts), 1)
        self.assertEqual(self.call.errors, [])

    def test_the_gateway_cdr_does_not_wait_for_the_providers(self):
        bench = self.bench = Bench(self, cdr_wait=10.0)
        call, protocol = bench.connect(raw(did=MANUAL_DID))
        incoming_call(call, did=MANUAL_DID)
        bench.flush()
        call_id = bench.call_of(call).call_id
        self.successResultOf(bench.h.registry.hangup(call_id))
        bench.flush()
        self.assertEqual([e.event for e in call.events], ["hangup"])
        self.assertEqual([c["call_id"] for c in bench.h.cdrs], [call_id])
        self.assertEqual(bench.server.calls[0].phase, ENDING)
        bench.run(9.9)
        self.assertIsNone(call.close_code)
        bench.run(0.2)
        self.assertEqual(call.close_code, 1000)
        self.assertEqual(bench.h.provider_cdrs, [])

    def test_a_late_cdr_is_attached_and_closes_the_connection(self):
        bench = self.bench = Bench(self)
        call, _ = bench.connect(raw(did=MANUAL_DID))
        incoming_call(call, did=MANUAL_DID)
        bench.flush()
        call_id = bench.call_of(call).call_id
        self.successResultOf(bench.h.registry.hangup(call_id))
        bench.run(2.0)
        call.send_text('{"event":"cdr","sessionId":"s","hangupCauseCode":"17","disposition":"BUSY","extra":[1]}')
        bench.run(0.9)
        self.assertIsNone(call.close_code)  # the provider closes after its cdr; it is given a moment
        bench.run(0.2)
        self.assertEqual(call.close_code, 1000)
        self.assertEqual(bench.h.provider_cdrs,
                         [(call_id, "optimaccs", {"sessionId": "s", "hangupCauseCode": "17", "hangupCauseCodeInt": 17,
                                                 "disposition": "BUSY", "extra": [1]})])

    def test_the_provider_hanging_up_ends_the_call(self):
        self.answer()
        self.call.hangup()
        self.bench.flush()
        snapshot = self.bench.call_of(self.call)
        self.assertEqual((snapshot.state, snapshot.cause, snapshot.hangup_by), ("RELEASED", "remote_hangup", "remote"))
        self.assertEqual(self.bench.h.provider_cdrs[0][2]["hangupBy"], "CALLER")
        self.assertEqual(self.bench.server.calls, [])

    def test_status_lists_the_connection(self):
        (entry,) = self.bench.server.status()["connections"]
        self.assertEqual(
            {k: entry[k] for k in ("phase", "session_id", "caller_id", "did", "call_id", "answered")},
            {"phase": "live", "session_id": self.call.session_id, "caller_id": "0811", "did": MANUAL_DID,
             "call_id": self.call_id, "answered": False},
        )


class _BesideABystander(SynchronousTestCase):
    """A raw call (``self.call``) beside a bystander echo call; after each test the bystander still
    hears itself and nothing logged a traceback. ``bench_options``: the Bench's keyword arguments."""

    bench_options: dict = {}

    def setUp(self):
        self.logs = LogCapture(self)
        self.bench = Bench(self, **self.bench_options)
        self.bystander, _ = self.bench.connect(CallScript(did=ECHO_DID))
        self.call, _ = self.bench.connect(raw())

    def tearDown(self):
        self.bench.run(0.5)
        self.assertIsNone(self.bystander.close_code)
        self.assertTrue(self.bystander.echo().matched)
        self.assertEqual(self.logs.tracebacks, [])


class BadInputTests(_BesideABystander):
    """Every bad input closes its own connection with a code and reason, or is ignored; others go on."""

    bench_options = {"max_message_size": 1024}

    def assertClosed(self, code, reason_part):
        self.bench.flush()
        self.assertEqual(self.call.close_code, code)
        self.assertIn(reason_part, self.call.close_reason)
        self.assertIn(f"closing with {code}", self.logs.text())
        self.assertEqual(self.bench.metric("gateway_optimaccs_closed_total", code=str(code)), 1)

    def assertStillOpen(self):
        self.bench.flush()
        self.assertIsNone(self.call.close_code)

    def test_invalid_json(self):
        self.call.send_text("{not json")
        self.assertClosed(1007, "not JSON")

    def test_json_that_is_not_an_object(self):
        self.call.send_text('["incoming_call"]')
        self.assertClosed(1007, "not a JSON object")

    def test_an_object_without_a_string_event(self):
        self.call.send_text('{"event": 5}')
        self.assertClosed(1007, "event")

    def test_text_that_is_not_utf8(self):
        self.call.send_text(b'{"event":"dtmf","digit":"\xff"}')
        self.bench.flush()
        self.assertEqual(self.call.close_code, 1007)

    def test_oversized_messages(self):
        incoming_call(self.call)
        self.call.send_binary(b"\x00" * 1500)
        self.bench.flush()
        self.assertEqual(self.call.close_code, 1009)
        snapshot = self.bench.call_of(self.call)
        self.assertEqual(snapshot.cause, "transport_lost")

    def test_an_oversized_text_message(self):
        self.call.send_text('{"event":"dtmf","digit":"' + "1" * 1500 + '"}')
        self.bench.flush()
        self.assertEqual(self.call.close_code, 1009)

    def test_an_unknown_event_is_ignored(self):
        self.call.send_text('{"event":"ringing"}')
        self.assertStillOpen()
        self.assertIn("unknown event 'ringing'", self.logs.text())
        self.assertEqual(self.bench.ignored("unknown"), 1)
        incoming_call(self.call)
        self.bench.flush()
        self.assertEqual([e.event for e in self.call.events], ["answer"])

    def test_incoming_call_with_missing_or_ill_typed_fields(self):
        self.call.send_text('{"event":"incoming_call","callerId":"1","didNumber":200,"sessionId":"s"}')
        self.assertClosed(1008, "'didNumber' must be a string, not int")
        other, _ = self.bench.connect(raw())
        other.send_text('{"event":"incoming_call","callerId":"1","didNumber":"200"}')
        self.bench.flush()
        self.assertEqual((other.close_code, other.close_reason),
                         (1008, "incoming_call: 'sessionId' must be a string, not missing"))
        self.assertEqual(len(self.bench.h.registry.calls(include_released=True)), 1)  # the bystander's

    def test_binary_audio_before_incoming_call(self):
        self.call.send_binary(b"\x00" * 320)
        self.assertClosed(1003, "binary audio before incoming_call")

    def test_a_second_incoming_call(self):
        incoming_call(self.call)
        self.bench.flush()
        incoming_call(self.call)
        self.assertClosed(1008, "one call per connection")
        self.assertEqual(self.bench.call_of(self.call).cause, "transport_lost")

    def test_no_incoming_call_within_the_setup_timeout(self):
        self.bench.run(29.9)
        self.assertStillOpen()
        self.bench.run(0.2)
        self.assertClosed(1008, "no incoming_call within 30 s")

    def test_a_bad_dtmf_digit_is_ignored(self):
        incoming_call(self.call)
        self.call.send_text('{"event":"dtmf","digit":"X"}')
        self.call.send_text('{"event":"dtmf"}')
        self.call.send_text('{"event":"dtmf","digit":"#"}')
        self.assertStillOpen()
        self.assertEqual([e.digit for e in self.bench.h.of(ev.DtmfReceived)], ["#"])
        self.assertEqual(self.bench.ignored("malformed"), 2)

    def test_events_before_incoming_call_are_ignored(self):
        for event in ("dtmf", "hangup", "cdr"):
            self.call.send_text(f'{{"event":"{event}","digit":"1"}}')
        self.assertStillOpen()
        self.assertEqual(self.bench.ignored("out_of_state"), 3)
        self.assertEqual(self.bench.h.provider_cdrs, [])

    def test_a_second_cdr_and_events_after_the_hangup_are_ignored(self):
        incoming_call(self.call)
        self.call.send_text('{"event":"cdr","hangupCauseCode":16}')
        self.call.send_text('{"event":"cdr","hangupCauseCode":17}')
        self.call.send_text('{"event":"hangup"}')
        self.call.send_text('{"event":"dtmf","digit":"1"}')
        self.call.send_binary(b"\x00" * 320)
        self.bench.run(1.1)
        self.assertEqual([cdr[2] for cdr in self.bench.h.provider_cdrs],
                         [{"hangupCauseCode": 16, "hangupCauseCodeInt": 16}])
        self.assertEqual(self.bench.h.of(ev.DtmfReceived), [])
        self.assertEqual(self.call.close_code, 1000)  # the call is over and its cdr is in


class BoundaryTests(_BesideABystander):
    """Every text message goes through gateway.boundary.load_json; ignored ones through an IgnoredBudget."""

    bench_options = {"setup_timeout": 300.0}

    def test_a_lone_surrogate_closes_1007_naming_the_field(self):
        self.call.send_text(b'{"event":"incoming_call","callerId":"\\ud800","didNumber":"555","sessionId":"p1"}')
        self.bench.flush()
        self.assertEqual(self.call.close_code, 1007)
        self.assertIn("callerId", self.call.close_reason)
        self.assertIn("surrogate", self.call.close_reason)
        self.assertEqual(len(self.bench.h.registry.calls(include_released=True)), 1)  # the bystander's

    def test_deep_json_closes_1007_not_1011(self):
        self.call.send_text(b"[" * 20000)
        self.bench.flush()
        self.assertEqual(self.call.close_code, 1007)
        self.assertIn("nested deeper", self.call.close_reason)

    def test_non_finite_numbers_close_1007(self):
        for number in ("NaN", "Infinity", "-Infinity", "1e999"):
            call, _ = self.bench.connect(raw())
            incoming_call(call)
            self.bench.flush()
            call.send_text(f'{{"event":"dtmf","digit":"1","duration":{number}}}')
            self.bench.flush()
            self.assertEqual(call.close_code, 1007, number)
            self.assertEqual(self.bench.call_of(call).cause, "transport_lost")
        self.assertEqual(self.bench.h.of(ev.DtmfReceived), [])

    def test_a_garbage_cause_code_ends_the_call_normally_and_keeps_the_providers_cdr(self):
        for number, code in enumerate(("--16", "\u00b2", "9" * 5000)):
            call, _ = self.bench.connect(raw())
            incoming_call(call)
            self.bench.flush()
            call.send_text('{"event":"cdr","sessionId":"%s","hangupCauseCode":"%s"}' % (call.session_id, code))
            call.send_text('{"event":"hangup"}')
            self.bench.run(1.1)
            self.assertEqual((call.close_code, self.bench.call_of(call).cause), (1000, "remote_hangup"))
            provider = self.bench.h.provider_cdrs[number][2]
            self.assertEqual(provider, {"sessionId": call.session_id, "hangupCauseCode": code})

    def test_10000_unknown_events_log_a_bounded_number_of_lines_and_count_10000(self):
        for _ in range(10_000):
            self.call.send_text('{"event":"bogus"}')
        self.bench.flush()
        self.assertIsNone(self.call.close_code)
        mine = [e for e in self.logs.events if "127.0.0.1:40002" in formatEvent(e)]
        self.assertLessEqual(len(mine), 6)
        self.assertEqual(self.bench.ignored("unknown"), 10_000)
        self.bench.run(61.0, step=1.0)
        self.call.send_text('{"event":"bogus"}')  # after a quiet minute: the summary, and a new run one by one
        self.bench.flush()
        self.assertIn("ignored 9995 more messages", self.logs.text())
        self.assertIn("unknown event 'bogus'", formatEvent(self.logs.events[-1]))
        for _ in range(6):
            self.call.send_text('{"event":"bogus"}')
        self.call.close()
        self.bench.flush()
        self.assertIn("ignored 2 more messages", self.logs.text())  # the budget is closed with the connection


class CorpusTests(SynchronousTestCase):
    """tests/corpus/optimaccs_inbound.json, case by case against the server (the same cases the lead's
    replay sends to the real daemon); a bystander call goes on through all of them."""

    def test_every_case(self):
        import sys
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
        from corpus import load

        logs = LogCapture(self)
        bench = Bench(self)
        bystander, _ = bench.connect(CallScript(did=ECHO_DID))
        for case in load("optimaccs_inbound"):
            call, _ = bench.connect(raw())
            bench.flush()
            for data, binary in case.built():
                (call.send_binary if binary else call.send_text)(data)
                bench.flush()
            bench.run(1.2)
            if case.outcome == "close":
                self.assertEqual(call.close_code, int(case.detail), f"{case.name}: {call.close_reason}")
                self.assertIn(case.extra.get("reason", ""), call.close_reason or "", case.name)
            else:
                self.assertEqual(case.outcome, "dropped", case.name)
                self.assertIsNone(call.close_code, f"{case.name}: {call.close_reason}")
                call.close()
                bench.flush()
        bench.run(0.5)
        self.assertIsNone(bystander.close_code)
        self.assertTrue(bystander.echo().matched)
        self.assertEqual(logs.tracebacks, [])
        ended = [c for c in bench.h.registry.calls(include_released=True) if c.state == "RELEASED"]
        self.assertEqual(len(bench.h.cdrs), len(ended))  # every call that ended has its CDR
        garbage = [cdr for _, _, cdr in bench.h.provider_cdrs if str(cdr.get("sessionId")).startswith("corpus-cause")]
        self.assertEqual([("hangupCauseCodeInt" in cdr) for cdr in garbage], [False] * 4)


class CapacityTests(SynchronousTestCase):
    def test_past_max_calls_a_connection_is_closed_1013_counted_and_logged_within_a_budget(self):
        logs = LogCapture(self)
        bench = Bench(self, max_calls=2)
        first, _ = bench.connect(CallScript(did=ECHO_DID))
        second, _ = bench.connect(CallScript(did=ECHO_DID))
        refused = [bench.connect(CallScript(did=ECHO_DID))[0] for _ in range(20)]
        bench.run(0.3)
        self.assertEqual([c.close_code for c in refused], [1013] * 20)
        self.assertIn("try again later", refused[0].close_reason)
        self.assertEqual((first.close_code, second.close_code), (None, None))
        self.assertEqual(bench.metric("gateway_optimaccs_closed_total", code="1013"), 20)
        self.assertEqual(bench.ignored("over_capacity"), 20)
        mine = [e for e in logs.events if e.get("log_namespace") == "gateway.drivers.optimaccs"
                and "too many calls" in formatEvent(e)]
        self.assertLessEqual(len(mine), 5)
        self.assertEqual(len(bench.h.registry.calls(include_released=True)), 2)
        self.assertEqual(len(bench.server.calls), 2)
        first.hangup()
        bench.run(1.5)
        third, _ = bench.connect(CallScript(did=ECHO_DID))
        bench.run(0.3)
        self.assertIsNone(third.close_code)
        self.assertIsNotNone(third.answered_at)
        self.assertEqual(logs.tracebacks, [])

    def refusal_lines(self, logs) -> list[str]:
        return [formatEvent(e) for e in logs.events
                if e.get("log_namespace") == "gateway.drivers.optimaccs" and "1013" in formatEvent(e)]

    def test_a_bursts_tail_is_summarised_a_quiet_minute_after_and_the_next_burst_is_logged_one_by_one(self):
        logs = LogCapture(self)
        bench = Bench(self, max_calls=1)
        bench.connect(CallScript(did=ECHO_DID))  # 127.0.0.1:40001, the one call
        for _ in range(8):  # 40002 .. 40009
            bench.connect(CallScript(did=ECHO_DID))
        bench.flush()
        lines = self.refusal_lines(logs)
        self.assertEqual([line.split(":")[1] for line in lines], ["40002", "40003", "40004", "40005", "40006"])
        self.assertIn("OptimaCCS 127.0.0.1:40006: connection closed with 1013: too many calls (1 open); "
                      "try again later (further ones are summarised)", lines[-1])
        bench.run(59.0, step=1.0)
        self.assertEqual(len(self.refusal_lines(logs)), 5)
        bench.run(1.0, step=1.0)  # a quiet minute: the burst is over, its tail is written without a new refusal
        self.assertEqual(self.refusal_lines(logs)[5:], [
            "OptimaCCS listener: 3 more connections closed with 1013 past max_calls in the last 60 s "
            "(the latest from 127.0.0.1:40009)"])
        late, _ = bench.connect(CallScript(did=ECHO_DID))  # 40010: a new burst, logged one by one again
        bench.flush()
        self.assertEqual(late.close_code, 1013)
        self.assertEqual(self.refusal_lines(logs)[6:], [
            "OptimaCCS 127.0.0.1:40010: connection closed with 1013: too many calls (1 open); try again later"])
        self.assertEqual(bench.ignored("over_capacity"), 9)
        self.assertEqual([c for c in bench.clock.getDelayedCalls() if "Refusals" in repr(c.func)], [])

    def test_stopping_writes_the_summary_still_unsaid(self):
        logs = LogCapture(self)
        bench = Bench(self, max_calls=1)
        bench.connect(CallScript(did=ECHO_DID))
        for _ in range(7):
            bench.connect(CallScript(did=ECHO_DID))
        bench.run(10.0, step=1.0)
        self.assertEqual(len(self.refusal_lines(logs)), 5)
        svc = OptimaccsService(bench.server)
        svc.startService()
        svc.stopService()
        self.assertEqual(self.refusal_lines(logs)[5:], [
            "OptimaCCS listener: 2 more connections closed with 1013 past max_calls in the last 10 s "
            "(the latest from 127.0.0.1:40008)"])
        self.assertEqual([c for c in bench.clock.getDelayedCalls() if "Refusals" in repr(c.func)], [])


class AccessTests(SynchronousTestCase):
    def refused(self, bench, call):
        bench.flush()
        self.assertIsNone(call.opened_at)
        self.assertEqual(bench.h.registry.calls(include_released=True), [])

    def test_the_secret_as_query_parameter_or_bearer_header(self):
        logs = LogCapture(self)
        bench = Bench(self, secret=Secret("s3cret"))
        for kwargs in ({}, {"query": "?token=wrong"}, {"headers": {"Authorization": "Bearer wrong"}}):
            call, _ = bench.connect(**kwargs)
            self.refused(bench, call)
        self.assertEqual(bench.metric("gateway_optimaccs_closed_total", code="403"), 3)
        self.assertIn("no secret offered", logs.text())
        self.assertNotIn("s3cret", logs.text())
        by_query, _ = bench.connect(query="?token=s3cret")
        by_header, _ = bench.connect(headers={"Authorization": "Bearer s3cret"})
        bench.run(0.1)
        self.assertEqual([e.event for e in by_query.events + by_header.events], ["answer", "answer"])

    def test_the_allow_list(self):
        bench = Bench(self, allow_from=["10.0.0.0/8", "192.0.2.7"])
        for host in ("10.1.2.3", "192.0.2.7"):
            call, _ = bench.connect(host=host)
            bench.flush()
            self.assertIsNotNone(call.opened_at)
        call, _ = bench.connect(host="192.0.2.8")
        bench.flush()
        self.assertIsNone(call.opened_at)

    def test_an_open_listener_is_a_warning_at_start(self):
        logs = LogCapture(self)
        OptimaccsService(Bench(self).server).startService()
        self.assertIn("accepts calls from anyone", logs.text())
        logs.events.clear()
        OptimaccsService(Bench(self, allow_from=["10.0.0.1"]).server).startService()
        self.assertNotIn("accepts calls from anyone", logs.text())


class BackpressureTests(SynchronousTestCase):
    def setUp(self):
        self.bench = Bench(self)

    def test_a_provider_that_stops_reading_pauses_the_echo_and_gets_paced_audio_after(self):
        call, server = self.bench.connect()
        self.bench.run(0.5)
        transport = server.transport
        leg = self.bench.server.calls[0]
        self.assertIs(transport.producer, leg.port.playout)
        transport.producer.pauseProducing()  # the provider's side of the socket is full
        received = call.frames_received
        self.bench.run(2.0)
        self.assertEqual(call.frames_received, received)
        self.assertGreaterEqual(transport.pauses, 1)  # the echo backed up to the socket: reading stopped
        transport.producer.resumeProducing()
        self.bench.run(0.1)
        self.assertLessEqual(call.frames_received - received, 6)  # paced, not a burst of the backlog

    def test_a_full_inbound_path_stops_reading_from_the_socket(self):
        call, server = self.bench.connect(CallScript(did=MANUAL_DID, stream_before_answer=True))
        leg = self.bench.server.calls[0]
        collector = FrameCollector()
        leg.port.source.connect(collector)
        collector.stop_reading()
        self.bench.run(1.0)
        self.assertEqual(server.transport.pauses, 1)
        collector.resume_reading()
        self.assertEqual(server.transport.resumes, 1)
        self.assertGreater(len(collector.frames), 30)


class WebSocketOptionsTests(SynchronousTestCase):
    def test_options_come_from_the_configuration(self):
        bench = Bench(self, max_message_size=4096, handshake_timeout=3.0, ping_interval=15.0, ping_timeout=5.0)
        factory = bench.factory
        self.assertEqual(
            (factory.maxMessagePayloadSize, factory.maxFramePayloadSize, factory.openHandshakeTimeout,
             factory.autoPingInterval, factory.autoPingTimeout, factory.utf8validateIncoming, factory.failByDrop),
            (4096, 4096, 3.0, 15.0, 5.0, True, False),
        )

    def test_a_silent_call_is_kept_alive_by_pings(self):
        bench = Bench(self, ping_interval=5.0, ping_timeout=2.0, setup_timeout=60.0)
        call, server = bench.connect(raw())
        pongs = []
        server.onPong = pongs.append
        bench.run(16.0, step=0.1)
        self.assertEqual(len(pongs), 3)
        self.assertIsNone(call.close_code)

    def test_an_unfinished_handshake_is_dropped(self):
        bench = Bench(self, handshake_timeout=3.0)
        server = bench.factory.buildProtocol(None)
        _, _, pump = iosim.connectedServerAndClient(
            lambda: server, protocol.Protocol,
            serverTransportFactory=lambda p: RecordingTransport(p, True), clock=bench.clock)
        bench.clock.advance(2.9)
        pump.flush()
        self.assertFalse(server.transport.disconnecting)
        bench.clock.advance(0.4)  # Autobahn checks its timers in 0.2 s buckets
        pump.flush()
        self.assertTrue(server.transport.disconnecting)


class InjectedClockTimerTests(SynchronousTestCase):
    """Autobahn's timers run on the server's clock, not on txaio's global reactor (here a decoy clock)."""

    HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:4143\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def connect(self, **options):
        """The server, and a peer that says only what the test writes and never answers a close."""
        self.bench = Bench(self, **options)
        self.decoy = txaio.config.loop = task.Clock()  # the Bench's cleanup puts txaio's loop back
        server = self.bench.factory.buildProtocol(None)
        peer, _, self.pump = iosim.connectedServerAndClient(
            lambda: server, protocol.Protocol, serverTransportFactory=lambda p: RecordingTransport(p, True),
            clock=self.bench.clock)
        return server, peer

    def advance(self, seconds):
        self.bench.clock.advance(seconds)
        self.pump.flush()

    def test_the_opening_handshake_timeout_fires_on_the_servers_clock(self):
        server, _ = self.connect(handshake_timeout=3.0)
        self.advance(2.99)
        self.assertFalse(server.transport.disconnecting)
        self.advance(0.01)
        self.assertTrue(server.transport.disconnecting)  # dropped at exactly handshake_timeout
        self.assertEqual(self.decoy.getDelayedCalls(), [])

    def test_the_closing_handshake_timeout_fires_on_the_servers_clock(self):
        logs = LogCapture(self)
        server, peer = self.connect(setup_timeout=2.0)
        self.assertFalse(self.bench.factory.failByDrop)
        peer.transport.write(self.HANDSHAKE)
        self.pump.flush()
        (call,) = self.bench.server.calls
        self.advance(2.0)  # no incoming_call: the gateway closes 1008; the peer never answers the close
        self.assertEqual(server.localCloseCode, 1008)
        self.assertFalse(server.transport.disconnecting)
        self.advance(server.closeHandshakeTimeout - 0.01)
        self.assertFalse(server.transport.disconnecting)
        self.advance(0.01)
        self.assertTrue(server.transport.disconnecting)  # the closing handshake timed out: dropped
        self.assertEqual((call.phase, self.bench.server.calls), ("closed", []))
        self.assertEqual(self.decoy.getDelayedCalls(), [])
        self.assertIn("closing handshake timeout", logs.text())


class StopTests(SynchronousTestCase):
    def test_stopping_closes_live_connections_and_lets_ending_ones_wait_for_their_cdr(self):
        bench = Bench(self, cdr_wait=5.0)
        live, _ = bench.connect(CallScript(did=MANUAL_DID))
        ending, _ = bench.connect(raw())
        incoming_call(ending)
        bench.flush()
        self.successResultOf(bench.h.registry.hangup(bench.call_of(ending).call_id))
        bench.flush()
        svc = OptimaccsService(bench.server)
        svc.startService()
        stopped = svc.stopService()
        bench.flush()
        self.assertEqual((live.close_code, live.close_reason), (1001, "the gateway is stopping"))
        self.assertEqual(bench.call_of(live).cause, "transport_lost")
        self.assertNoResult(stopped)
        ending.send_text('{"event":"cdr","hangupCauseCode":"16"}')
        bench.run(1.1)
        self.successResultOf(stopped)
        self.assertEqual(ending.close_code, 1000)
        self.assertEqual([c.phase for c in (bench.server.calls)], [])
        self.assertEqual(len(bench.h.provider_cdrs), 1)


class FreedTests(SynchronousTestCase):
    def test_an_ended_call_is_freed_at_once_not_at_a_full_garbage_collection(self):
        """Issue 18: an ended call's connection objects, port and buffers hung on reference cycles (the
        Autobahn protocol's own, the call's machine, the registry's leg), so they waited for Python's full
        collections, which came every few hundred calls with tens of milliseconds of pause."""
        import gc
        import weakref

        bench = Bench(self)
        bench.run(0.1)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        for _ in range(5):
            bench.connect(CallScript(did=ECHO_DID, caller_id="0811", hangup_after=0.5))
        bench.run(0.3)
        calls = [weakref.ref(call) for call in bench.server.calls]
        ports = [weakref.ref(call.port) for call in bench.server.calls]
        self.assertEqual(len(calls), 5)
        bench.run(2.0)
        bench._pumps.clear()  # the test's own hold on the finished connections
        bench.run(62.0, step=0.5)  # past the registry's retention of released calls
        self.assertEqual(bench.h.registry.calls(include_released=True), [])
        self.assertEqual(([r for r in calls if r() is not None], [r for r in ports if r() is not None]), ([], []))
