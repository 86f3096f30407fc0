"""The OptimaCCS outbound driver against the fake provider API (REST via StubTreq, WebSocket via iosim)."""

import base64
import hashlib
import re

import attrs
import txaio
from treq.testing import StubTreq
from twisted.internet import defer, protocol, task
from twisted.test import iosim
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gateway.confschema import Secret
from gateway.core import events as ev
from gateway.core.errors import DriverError
from gateway.drivers.config import OptimaccsOutboundConfig
from gateway.drivers.optimaccs_api import (
    ProviderApi,
    ProviderFailure,
    RequestTimedOut,
    Unauthorized,
    ValidationFailed,
    digits_only,
    media_url,
)
from gateway.media import PCM16, Frame, MediaPorts
from gateway.sim.optimaccs import ApiSettings, TimedDigit

from .outbound_bench import TOKEN, Bench

NUMBER = "6281234567"
PHONE_TONE = 425  # what the simulated phone of extension 1001 sends; the fake callee echoes it


class ProviderApiTests(SynchronousTestCase):
    """The REST client: request shape and typed failures carrying the provider's message."""

    def setUp(self):
        self.bench = Bench(self)
        self.provider = self.bench.provider

    def api(self, token=TOKEN, **outbound):
        config = OptimaccsOutboundConfig(api_url="http://provider.test/", token=Secret(token), **outbound)
        return ProviderApi(StubTreq(self.bench.site.resource), self.bench.clock, config, "ulaw")

    def test_place_call_sends_digits_codecs_timeout_and_caller_id(self):
        placed = self.successResultOf(self.api(caller_id="0215550100", ring_timeout=25).place_call("+62 811-1234"))
        request = self.provider.requests[-1]
        self.assertEqual((request.method, request.path, request.headers["authorization"]),
                         ("POST", "/pbx/call", f"Bearer {TOKEN}"))
        self.assertEqual(request.body, {"phoneNumber": "628111234", "timeout": 25, "callerId": "0215550100",
                                        "audio": {"input": "ulaw", "output": "ulaw"}})
        self.assertEqual(placed.phone_number, "628111234")
        self.assertEqual(placed.endpoint_url, f"ws://provider.test/ws/{placed.session_id}")
        self.successResultOf(self.api().place_call("1", caller_id="777"))
        self.assertEqual(self.provider.requests[-1].body["callerId"], "777")

    def test_401_is_unauthorized_with_the_providers_message(self):
        error = self.failureResultOf(self.api(token="wrong").place_call(NUMBER), Unauthorized).value
        self.assertEqual((error.status, error.provider_message), (401, "Invalid authentication token"))
        self.assertEqual(error.code, "driver_error")
        self.assertIn("401: Invalid authentication token", str(error))

    def test_422_is_validation_failed_with_the_field_errors(self):
        error = self.failureResultOf(self.api().place_call("no digits"), ValidationFailed).value
        self.assertEqual(error.status, 422)
        self.assertEqual(error.errors, {"phoneNumber": ["Phone Number containing only digits."]})
        self.assertEqual(error.provider_message,
                         "Validation failed (phoneNumber: Phone Number containing only digits.)")

    def test_500_is_a_provider_failure(self):
        self.provider.fail_next_calls(1, "Failed to initiate call")
        error = self.failureResultOf(self.api().place_call(NUMBER), ProviderFailure).value
        self.assertEqual((error.status, error.provider_message), (500, "Failed to initiate call"))

    def test_hangup_and_its_refusal(self):
        placed = self.successResultOf(self.api().place_call(NUMBER))
        self.successResultOf(self.api().hangup(placed.session_id))
        self.assertEqual(self.provider.requests[-1].body, {"sessionId": placed.session_id})
        error = self.failureResultOf(self.api().hangup(placed.session_id), ProviderFailure).value
        self.assertEqual((error.status, error.provider_message), (404, "Session not found or already ended"))

    def test_media_url_and_digits(self):
        self.assertEqual(media_url("https://media.example:8443/ws/x?y=1", "a b"), "wss://media.example:8443/ws/a%20b")
        self.assertEqual(media_url("wss://m.example/anything", "s1"), "wss://m.example/ws/s1")
        self.assertRaises(DriverError, media_url, "ftp://m.example/", "s1")
        self.assertEqual(digits_only("+62 (811) 12-34"), "628111234")

    def test_digits_are_ascii_digits_only(self):
        # str.isdigit() says yes to an Arabic-Indic three and a superscript two: neither is dialled
        self.assertEqual(digits_only("+62 \u0663\u00b2811\uff11 2"), "628112")
        self.assertEqual(digits_only("\u0663\u00b2"), "")

    def test_one_close_code_for_refused_text_on_both_websockets(self):
        from gateway.drivers import optimaccs, optimaccs_out, optimaccs_wire

        self.assertEqual(optimaccs_wire.CLOSE_INVALID, 1007)
        self.assertEqual(optimaccs.CLOSE_INVALID, optimaccs_wire.CLOSE_INVALID)
        self.assertFalse(hasattr(optimaccs_out, "CLOSE_INVALID"))  # no second copy to drift
        self.assertIn(optimaccs_wire.CLOSE_INVALID, optimaccs_out.PROTOCOL_CLOSES)


class _Stalling(Resource):
    """Answers 200 with the start of a body and never ends it; ``trickle``: one more byte every second."""

    isLeaf = True

    def __init__(self, clock, head: bytes | None = b'{"status":200,"data":{', trickle: bool = False):
        super().__init__()
        self.clock, self.head, self.trickle = clock, head, trickle
        self.lost = []
        self._loops = []

    def render(self, request):
        request.notifyFinish().addErrback(lambda failure: self.lost.append(request.path))
        if self.head is None:
            return NOT_DONE_YET  # not even the headers
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.write(self.head)
        if self.trickle:
            loop = task.LoopingCall(lambda: request.channel is not None and request.write(b" "))
            loop.clock = self.clock
            loop.start(1.0, now=False)
            self._loops.append(loop)
        return NOT_DONE_YET

    def stop(self):
        for loop in self._loops:
            if loop.running:
                loop.stop()


class RequestTimeoutTests(SynchronousTestCase):
    """``request_timeout`` bounds the whole request on the given clock, the reply's body included."""

    def setUp(self):
        self.clock = task.Clock()

    def api(self, resource):
        config = OptimaccsOutboundConfig(api_url="http://provider.test/", token=Secret(TOKEN), request_timeout=10.0)
        self.stub = StubTreq(resource)
        return ProviderApi(self.stub, self.clock, config, "ulaw")

    def advance(self, seconds, step=0.5):
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.stub.flush()

    def test_a_body_that_never_ends_times_out_and_the_connection_is_dropped(self):
        provider = _Stalling(self.clock)
        placed = self.api(provider).place_call(NUMBER)
        self.stub.flush()
        self.advance(9.5)
        self.assertNoResult(placed)
        self.advance(0.5)
        error = self.failureResultOf(placed, RequestTimedOut).value
        self.assertEqual((error.kind, error.status), ("timeout", 200))
        self.assertEqual(error.reason, "POST /pbx/call: no complete reply within 10 s "
                                       "(the provider answered 200 but its body did not end)")
        self.assertEqual(provider.lost, [b"/pbx/call"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_trickled_body_times_out_at_request_timeout(self):
        provider = _Stalling(self.clock, trickle=True)
        self.addCleanup(provider.stop)
        hangup = self.api(provider).hangup("s1")
        self.advance(10.0)
        self.assertEqual(self.failureResultOf(hangup, RequestTimedOut).value.status, 200)
        self.assertEqual(provider.lost, [b"/pbx/hangup"])

    def test_no_reply_at_all_times_out_the_same_way(self):
        placed = self.api(_Stalling(self.clock, head=None)).place_call(NUMBER)
        self.advance(10.0)
        error = self.failureResultOf(placed, RequestTimedOut).value
        self.assertEqual((error.kind, error.status), ("timeout", None))
        self.assertIn("(no reply)", error.reason)


class OutboundCallTests(SynchronousTestCase):
    def setUp(self):
        self.bench = Bench(self)
        self.registry = self.bench.registry

    def party_events(self, call_id):
        party = next(leg.leg_id for leg in self.registry.call(call_id).legs if leg.role == "party")
        return [e.type for e in self.bench.events if e.leg_id == party]

    def test_dialing_ringing_connected_audio_both_ways_then_hangup_with_the_providers_cdr(self):
        call_id = self.bench.talking(NUMBER)
        session = self.bench.session()
        self.assertEqual(session.statuses, ["Dialing", "Ringing", "Connected"])
        self.assertEqual(self.bench.connections, [f"ws://provider.test/ws/{session.session_id}"])
        self.assertEqual(self.party_events(call_id), ["LegCreated", "LegDialing", "LegRinging", "LegAnswered"])
        phone = self.bench.network.party("1001")
        phone.forget_heard()
        self.bench.run(0.5)
        self.assertTrue(phone.heard_tone(PHONE_TONE))  # sent to the provider, echoed by its callee
        self.assertGreater(session.audio_bytes_received, 0)

        self.successResultOf(self.registry.hangup(call_id))
        self.bench.run(0.1)
        self.assertEqual([m.event for m in session.received], ["hangup"])
        (cdr,) = self.bench.cdrs
        self.assertEqual((cdr["call_id"], cdr["cause"]), (call_id, "normal"))
        ((attached_to, source, provider_cdr),) = self.bench.provider_cdrs
        self.assertEqual((attached_to, source), (call_id, "optimaccs"))
        self.assertEqual((provider_cdr["disposition"], provider_cdr["hangupCauseCode"],
                          provider_cdr["hangupCauseCodeInt"], provider_cdr["hangupBy"]), ("ANSWERED", 16, 16, "CALLER"))
        self.assertEqual((session.errors, self.bench.driver.legs), ([], []))

    def test_ringing_at_the_provider_shows_on_the_dialled_leg_in_the_api_and_the_status_feed(self):
        from gateway.admin.status_feed import call_view

        call_id = self.registry.originate("1001", NUMBER).result.call_id
        self.bench.run(1.1)  # the phone answered; the provider is dialling
        party = self.registry.call(call_id).legs[-1]
        self.assertEqual((party.driver, party.state, party.alerting_at), ("optimaccs", "DIALING", None))
        self.bench.run(0.3)  # Ringing
        self.assertEqual(self.bench.session().statuses, ["Dialing", "Ringing"])
        snapshot = self.registry.call(call_id)
        party = snapshot.legs[-1]
        self.assertEqual(party.state, "DIALING")
        self.assertIsNotNone(party.alerting_at)
        for view in (snapshot.to_dict(), call_view(snapshot)):  # GET /api/calls, the status page's feed
            leg = view["legs"][-1]
            self.assertRegex(leg["alerting_at"], r"^\d{4}-\d\d-\d\dT.*Z$")
            self.assertIsNone(leg["answered_at"])
        self.bench.run(1.2)  # Connected
        party = self.registry.call(call_id).legs[-1]
        self.assertEqual(party.state, "TALKING")
        self.assertLess(party.alerting_at, party.answered_at)

    def test_the_legs_port_comes_from_the_drivers_factory_and_reports_its_drops(self):
        drops = []
        self.bench.driver.ports = MediaPorts(200, lambda where, count: drops.append(where))
        call_id = self.bench.talking(NUMBER)
        port = self.bench.leg.port
        port.sink.write(Frame(PCM16, 8000, 0, 0, False, bytes(320 * 30)))  # 10 frames fit
        self.assertGreaterEqual(port.playout.frames_dropped, 19)
        self.assertEqual(drops, ["playout"] * port.playout.frames_dropped)
        self.successResultOf(self.registry.hangup(call_id))
        self.bench.run(0.1)

    def test_busy_failed_and_unanswered_numbers(self):
        bench = self.bench = Bench(self, outbound={"ring_timeout": 3})
        outcomes = {}
        for number in ("6281110000", "6281119999", "6281118888"):
            call_id = bench.registry.originate("1001", number).result.call_id
            bench.run(5.0)
            outcomes[number] = bench.registry.call(call_id).cause
        self.assertEqual(outcomes, {"6281110000": "busy", "6281119999": "failed", "6281118888": "no_answer"})
        self.assertEqual([c[2]["disposition"] for c in bench.provider_cdrs], ["BUSY", "FAILED", "NO ANSWER"])
        (failed,) = bench.of(ev.LegFailed)
        self.assertEqual(failed.reason, "the provider could not connect the call")
        self.assertEqual(bench.driver.legs, [])

    def test_refusals_fail_the_leg_with_the_providers_message_and_readiness_follows(self):
        self.bench.provider.fail_next_calls(1, "Failed to initiate call")
        call_id = self.registry.originate("1001", NUMBER).result.call_id
        self.bench.run(1.5)
        (failed,) = self.bench.of(ev.LegFailed, call_id)
        self.assertEqual(failed.reason, "the provider answered 500: Failed to initiate call")
        self.assertEqual((self.bench.readiness.up, self.bench.readiness.reason),
                         (False, "driver optimaccs: the provider answered 500: Failed to initiate call"))
        self.bench.talking(NUMBER)
        self.assertTrue(self.bench.readiness.up)

    def test_a_wrong_token_fails_every_call(self):
        bench = self.bench = Bench(self, token="wrong")
        call_id = bench.registry.originate("1001", NUMBER).result.call_id
        bench.run(1.5)
        self.assertEqual(bench.of(ev.LegFailed, call_id)[0].reason,
                         "the provider answered 401: Invalid authentication token")
        self.assertFalse(bench.readiness.up)

    def test_dtmf_both_ways(self):
        bench = self.bench = Bench(self, ApiSettings(token=TOKEN, callee_dtmf=(TimedDigit("7", 0.3),)))
        call_id = bench.talking(NUMBER)
        sent = bench.registry.send_dtmf(call_id, "5#", 200, 50)
        bench.run(0.5)
        self.successResultOf(sent)
        self.assertEqual([(digit, ms) for _, digit, ms in bench.session().dtmf_received], [("5", 200), ("#", 200)])
        self.assertEqual([e.digit for e in bench.of(ev.DtmfReceived, call_id)], ["7"])
        self.failureResultOf(bench.registry.send_dtmf(call_id, "B"), DriverError)

    def test_the_callee_hanging_up_ends_the_call(self):
        bench = self.bench = Bench(self, ApiSettings(token=TOKEN, callee_hangup_after=1.0))
        call_id = bench.talking(NUMBER)
        bench.run(1.5)
        snapshot = bench.registry.call(call_id)
        self.assertEqual((snapshot.state, snapshot.cause), ("RELEASED", "remote_hangup"))
        self.assertEqual(bench.provider_cdrs[0][2]["hangupBy"], "CALLEE")
        self.assertEqual(bench.driver.legs, [])

    def test_the_media_connection_lost_while_talking_is_transport_lost(self):
        call_id = self.bench.talking(NUMBER)
        self.bench.provider_side.loseConnection()
        self.bench.flush()
        self.assertEqual(self.registry.call(call_id).cause, "transport_lost")
        self.assertEqual(self.bench.driver.legs, [])

    def test_flush_interrupts_and_a_checkpoint_fires_once_the_provider_played_the_audio(self):
        self.bench.talking(NUMBER)
        leg, session = self.bench.leg, self.bench.session()
        reached = leg.checkpoint()
        self.assertNoResult(reached)
        self.bench.run(0.2)
        self.successResultOf(reached)
        self.assertEqual([name for _, name in session.checkpoints], ["gw-1"])
        leg.flush()
        self.bench.flush()
        self.assertEqual(len(session.interruptions), 1)

    def test_hanging_up_before_the_request_went_out_places_nothing(self):
        call_id = self.bench.talking(NUMBER)
        self.successResultOf(self.registry.transfer(call_id, "6289990001"))
        self.successResultOf(self.registry.hangup(call_id))
        self.bench.run(0.5)
        self.assertEqual(len(self.bench.provider.sessions), 1)
        self.assertEqual(self.bench.driver.legs, [])

    def test_hanging_up_while_the_request_is_in_flight_hangs_up_by_rest(self):
        placed = self.successResultOf(self.bench.driver.api.place_call(NUMBER))
        stalled = defer.Deferred()
        self.bench.driver.api.place_call = lambda *args: stalled
        leg = self.bench.driver.dial(NUMBER, _Events())
        self.bench.clock.advance(0)
        self.successResultOf(leg.hangup("normal"))
        stalled.callback(placed)
        self.assertEqual(self.bench.provider.requests[-1].path, "/pbx/hangup")
        self.successResultOf(leg.done)

    def test_a_provider_that_stalls_the_reply_body_fails_the_leg_after_request_timeout(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        provider = _Stalling(self.bench.clock, trickle=True)
        self.addCleanup(provider.stop)
        stub = self.bench.driver.api._http = StubTreq(provider)
        leg_events = _Events()
        leg = self.bench.driver.dial(NUMBER, leg_events)
        self.bench.clock.advance(0)  # POST /pbx/call goes out
        for _ in range(int(self.bench.config.outbound.request_timeout * 2)):
            self.bench.clock.advance(0.5)
            stub.flush()
        self.assertEqual(leg_events.told, [("failed", "POST /pbx/call: no complete reply within 10 s "
                                                     "(the provider answered 200 but its body did not end)")])
        self.successResultOf(leg.done)
        self.assertEqual(self.bench.driver.legs, [])
        self.assertEqual(self.bench.metric("gateway_optimaccs_outbound_failed_total", kind="timeout"), 1)
        self.assertFalse(self.bench.readiness.up)
        self.assertIn("the provider did not place the call (timeout)", "\n".join(formatEvent(e) for e in events))

    def test_a_hangup_while_the_reply_body_stalls_lets_the_leg_go_after_request_timeout(self):
        provider = _Stalling(self.bench.clock)
        stub = self.bench.driver.api._http = StubTreq(provider)
        leg_events = _Events()
        leg = self.bench.driver.dial(NUMBER, leg_events)
        self.bench.clock.advance(0)
        stub.flush()
        self.successResultOf(leg.hangup("normal"))
        self.bench.clock.advance(self.bench.config.outbound.request_timeout)
        self.successResultOf(leg.done)
        self.assertEqual((leg_events.told, self.bench.driver.legs), ([], []))

    def test_hangup_by_rest_or_both(self):
        for method, expected in (("rest", ([], ["/pbx/hangup"])), ("both", (["hangup"], ["/pbx/hangup"]))):
            bench = Bench(self, outbound={"hangup": method})
            call_id = bench.talking(NUMBER)
            bench.registry.hangup(call_id)
            bench.run(0.2)
            sent = [m.event for m in bench.session().received]
            rest = [r.path for r in bench.provider.requests if r.path == "/pbx/hangup"]
            self.assertEqual((sent, rest), expected, method)
            self.assertEqual(bench.driver.legs, [])

    def test_an_operator_phone_reached_through_the_provider(self):
        call_id = self.registry.originate("2001", "1001").result.call_id
        self.bench.run(0.1)
        self.assertEqual(self.bench.session().phone_number, "628110000200" + "1")
        self.failureResultOf(self.registry.answer(call_id), DriverError)
        self.bench.run(2.5)  # the operator's phone answers (Connected); then 1001 rings and answers
        snapshot = self.registry.call(call_id)
        self.assertEqual(snapshot.state, "TALKING")
        self.assertEqual([leg.driver for leg in snapshot.legs], ["optimaccs", "sim"])

    def test_a_refused_media_handshake_fails_the_leg_and_hangs_up_by_rest(self):
        leg_events = _Events()
        self.bench.driver.dial(NUMBER, leg_events)
        self.bench.clock.advance(0)  # placed; the WebSocket handshake runs on the next flush
        self.bench.provider.settings = attrs.evolve(self.bench.provider.settings, token="rotated")
        self.bench.run(0.1)
        ((outcome, reason),) = leg_events.told
        self.assertEqual(outcome, "failed")
        self.assertIn("the provider closed the media connection", reason)
        self.assertEqual([(r.path, r.status) for r in self.bench.provider.requests][1:], [
            (f"/ws/{self.bench.session().session_id}", 401), ("/pbx/hangup", 401)])
        self.assertEqual(self.bench.driver.legs, [])

    def test_a_media_connection_that_cannot_be_made_fails_the_leg(self):
        self.bench.driver._connect = lambda url, factory: defer.fail(ConnectionRefusedError("refused"))
        leg_events = _Events()
        self.bench.driver.dial(NUMBER, leg_events)
        self.bench.clock.advance(0)
        self.assertEqual(leg_events.told, [
            ("failed", "the provider's media WebSocket could not be opened: refused")])
        self.assertEqual(self.bench.provider.requests[-1].path, "/pbx/hangup")
        self.assertEqual(self.bench.driver.legs, [])

    def test_a_number_without_digits_is_refused_at_once(self):
        self.assertRaises(DriverError, self.bench.driver.dial, "+--", _Events())

    def test_stop_hangs_up_what_is_left(self):
        self.bench.talking(NUMBER)
        stopped = self.bench.driver.stop()
        self.bench.run(0.1)
        self.successResultOf(stopped)
        self.assertEqual([m.event for m in self.bench.session().received], ["hangup"])

    def test_status(self):
        self.bench.talking(NUMBER)
        (entry,) = self.bench.driver.status()["calls"]
        self.assertEqual((entry["number"], entry["stage"], entry["session_id"]),
                         (NUMBER, "talking", self.bench.session().session_id))


class MediaTimerTests(SynchronousTestCase):
    """The media WebSocket's Autobahn timers run on the driver's clock, not on txaio's global reactor
    (here a decoy clock)."""

    def setUp(self):
        self.bench = Bench(self)
        self.decoy = txaio.config.loop = task.Clock()  # the Bench's cleanup puts txaio's loop back
        self.bench.driver._connect = self._connect
        self.provider = None

    def _connect(self, url, factory):
        """The media connection to a provider that answers nothing by itself."""
        self.received = []
        silent = protocol.Protocol()
        silent.dataReceived = self.received.append
        client, self.provider, self.pump = iosim.connectedServerAndClient(
            lambda: silent, lambda: factory.buildProtocol(None), clock=self.bench.clock)
        return defer.succeed(client)

    def advance(self, seconds):
        self.bench.clock.advance(seconds)
        self.pump.flush()

    def dial(self):
        events = _Events()
        leg = self.bench.driver.dial(NUMBER, events)
        self.bench.clock.advance(0)  # POST /pbx/call, then the media connection
        self.pump.flush()
        self.assertIn(b"GET /ws/", self.received[0])
        return leg, events

    def test_the_opening_handshake_timeout_fires_on_the_drivers_clock(self):
        leg, events = self.dial()
        timeout = self.bench.config.outbound.request_timeout
        self.advance(timeout - 0.01)
        self.assertEqual((leg.stage, events.told), ("connecting", []))
        self.advance(0.01)
        ((outcome, reason),) = events.told
        self.assertEqual(outcome, "failed")
        self.assertIn("opening handshake timeout", reason)
        self.successResultOf(leg.done)
        self.assertEqual(self.decoy.getDelayedCalls(), [])

    def test_the_closing_handshake_timeout_fires_on_the_drivers_clock(self):
        leg, events = self.dial()
        key = re.search(rb"Sec-WebSocket-Key: (\S+)", self.received[0]).group(1)
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.provider.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.pump.flush()
        self.assertEqual(leg.stage, "dialing")
        self.assertFalse(leg._link.protocol.factory.failByDrop)
        leg.hangup("normal")  # the hangup event, then cdr_wait for a cdr that never comes, then the close
        self.advance(self.bench.config.cdr_wait)
        media = leg._link.protocol
        self.assertEqual(media.localCloseCode, 1000)  # sent; the provider never answers it
        self.advance(media.closeHandshakeTimeout - 0.01)
        self.assertNoResult(leg.done)
        self.advance(0.01)
        self.successResultOf(leg.done)  # the closing handshake timed out: dropped, the leg let go
        self.assertTrue(media.wasCloseHandshakeTimeout)
        self.assertEqual(self.decoy.getDelayedCalls(), [])


class _Events:
    """An ILegEvents that keeps what it is told."""

    def __init__(self):
        self.told = []

    def __getattr__(self, name):
        return lambda *args: self.told.append((name, *args))

