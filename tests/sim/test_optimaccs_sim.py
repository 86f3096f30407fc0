"""Tests of the OptimaCCS simulators: the inbound provider client and the fake outbound API.

Unit tests (SynchronousTestCase, task.Clock, iosim) pin down pacing, backpressure and the audio helpers;
integration tests (pytest-twisted, real loopback sockets) run the simulators against a tiny in-test
gateway and a real HTTP/WebSocket client.
"""

import json
import os
import sys
import tempfile
import wave

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import defer, task, utils
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.sim import audio
from gateway.sim.optimaccs import (
    ApiSettings,
    CallEnded,
    CallScript,
    DialRule,
    FakeProviderApi,
    InboundCall,
    TimedDigit,
    parse_dtmf_schedule,
    place_call,
    provider_factory,
)
from gateway.sim.optimaccs_api import _Loudspeaker
from gateway.sim.optimaccs_common import encode_json

PCM16 = audio.CODECS["pcm16"]
TOKEN = "t0ken"


# ---------------------------------------------------------------------------------------------- units


class PacerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.ticks = []
        self.pacer = audio.Pacer(self.clock, 0.02, self.ticks.append)

    def test_ticks_on_a_deadline_grid(self):
        self.pacer.start()
        for _ in range(49):
            self.clock.advance(0.02)
        self.assertEqual(sum(self.ticks), 50)
        self.assertEqual(set(self.ticks), {1})

    def test_a_late_callback_catches_up_without_drifting(self):
        self.pacer.start()
        self.clock.advance(0.05)  # the ticks due at 0.02 and 0.04 come together
        self.assertEqual(self.ticks, [1, 2])
        self.clock.advance(0.009)  # next deadline is 0.06, not 0.07
        self.assertEqual(self.ticks, [1, 2])
        self.clock.advance(0.001)
        self.assertEqual(self.ticks, [1, 2, 1])

    def test_stop_from_inside_a_tick(self):
        def tick(count):
            self.ticks.append(count)
            self.pacer.stop()

        self.pacer = audio.Pacer(self.clock, 0.02, tick)
        self.pacer.start()
        self.clock.advance(1)
        self.assertEqual(self.ticks, [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AudioHelperTests(SynchronousTestCase):
    def test_frame_sizes(self):
        self.assertEqual([audio.CODECS[name].frame_bytes for name in ("pcm16", "ulaw", "alaw")], [320, 160, 160])
        self.assertRaises(ValueError, audio.codec_named, "mp3")

    def test_frames_pad_then_fall_silent(self):
        frames = audio.frames(audio.tone(0.03), audio.CODECS["ulaw"])
        first, second, third = next(frames), next(frames), next(frames)
        self.assertEqual({len(first), len(second), len(third)}, {160})
        self.assertEqual(second[80:], b"\xff" * 80)
        self.assertEqual(third, b"\xff" * 160)

    def test_g711_round_trip_is_close(self):
        pcm = audio.tone(0.02, noise=0)
        for name in ("ulaw", "alaw"):
            codec = audio.CODECS[name]
            decoded = codec.decode(codec.encode(pcm))
            self.assertEqual(len(decoded), len(pcm))
            error = max(abs(a - b) for a, b in zip(memoryview(pcm).cast("h"), memoryview(decoded).cast("h")))
            self.assertLess(error, 400)

    def test_wav_round_trip_and_format_check(self):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        path = os.path.join(directory.name, "tone.wav")
        pcm = audio.tone(0.1)
        audio.write_wav(path, pcm)
        self.assertEqual(audio.read_wav(path), pcm)
        with wave.open(path, "wb") as stereo:
            stereo.setnchannels(2)
            stereo.setsampwidth(2)
            stereo.setframerate(8000)
            stereo.writeframes(pcm)
        self.assertRaises(ValueError, audio.read_wav, path)

    def test_echo_tolerates_leading_silence_and_late_start(self):
        sent = audio.tone(2)
        received = PCM16.silence * 30 + sent[640:4000]
        match = audio.compare_echo(sent, received, PCM16)
        self.assertTrue(match.matched)
        self.assertEqual((match.sent_offset, match.received_offset, match.compared), (640, 60, 3360))
        self.assertEqual(match.sent_digest, match.received_digest)

    def test_echo_detects_a_dropped_frame_even_in_a_steady_tone(self):
        sent = audio.tone(2)
        received = sent[:3200] + sent[3520:6400]
        self.assertFalse(audio.compare_echo(sent, received, PCM16).matched)
        self.assertFalse(audio.compare_echo(sent, b"", PCM16).matched)
        self.assertFalse(audio.compare_echo(sent, sent + b"\x01\x00", PCM16).matched)

    def test_echo_frames_without_gaps_matches_and_skips_none(self):
        sent = audio.tone(2)
        received = PCM16.silence * 30 + sent[640:4000]
        match = audio.compare_echo_frames(sent, received, PCM16)
        self.assertTrue(match.matched)
        self.assertEqual((match.sent_offset, match.received_offset, match.skipped_frames), (640, 60, 0))
        self.assertEqual(match.sent_digest, match.received_digest)

    def test_echo_frames_accepts_whole_frame_gaps_and_counts_them(self):
        sent = audio.tone(2)
        # frames 0-9, 11-19, 23-29 and half of 30: frame 10 and frames 20-22 trimmed
        received = sent[:3200] + sent[3520:6400] + sent[7360:9600 + 160]
        match = audio.compare_echo_frames(sent, received, PCM16)
        self.assertTrue(match.matched)
        self.assertEqual(match.skipped_frames, 4)
        self.assertFalse(audio.compare_echo(sent, received, PCM16).matched)  # strict: a gap fails
        self.assertTrue(audio.compare_echo(sent, received, PCM16, max_skipped=4).matched)
        refused = audio.compare_echo(sent, received, PCM16, max_skipped=3)
        self.assertEqual((refused.matched, refused.skipped_frames), (False, 4))

    def test_echo_frames_accepts_gaps_in_g711_too(self):
        ulaw = audio.codec_named("ulaw")
        sent = ulaw.encode(audio.tone(1))
        received = ulaw.silence * 80 + sent[160:800] + sent[1120:4000]
        match = audio.compare_echo_frames(sent, received, ulaw)
        self.assertEqual((match.matched, match.skipped_frames), (True, 2))

    def test_echo_frames_refuses_a_corrupted_frame(self):
        sent = audio.tone(2)
        corrupt = bytearray(sent[:6400])
        corrupt[3300] ^= 0x01  # one bit in frame 10
        self.assertFalse(audio.compare_echo_frames(sent, bytes(corrupt), PCM16).matched)
        self.assertFalse(audio.compare_echo_frames(sent, b"", PCM16).matched)
        self.assertFalse(audio.compare_echo_frames(sent, sent + b"\x01\x00", PCM16).matched)
        # a frame cut at a sample boundary that is not a frame boundary is no whole-frame gap
        self.assertFalse(audio.compare_echo_frames(sent, sent[:3200] + sent[3300:6400], PCM16).matched)

    def test_echo_frames_refuses_reordered_or_repeated_frames(self):
        sent = audio.tone(2)
        swapped = sent[:3200] + sent[3520:3840] + sent[3200:3520] + sent[3840:6400]
        self.assertFalse(audio.compare_echo_frames(sent, swapped, PCM16).matched)
        repeated = sent[:3520] + sent[3200:6400]
        self.assertFalse(audio.compare_echo_frames(sent, repeated, PCM16).matched)

    def test_dtmf_schedule(self):
        self.assertEqual(parse_dtmf_schedule("1@2.0, #@3.5"), (TimedDigit("1", 2.0), TimedDigit("#", 3.5)))
        self.assertEqual(parse_dtmf_schedule(""), ())
        for bad in ("1", "X@1", "1@-1", "1@soon"):
            self.assertRaises(ValueError, parse_dtmf_schedule, bad)


class LoudspeakerTests(SynchronousTestCase):
    def setUp(self):
        self.reached, self.heard = [], []
        self.speaker = _Loudspeaker(PCM16, 3200, self.reached.append)

    def test_checkpoint_is_reached_when_the_audio_before_it_has_played(self):
        self.speaker.mark("empty")
        self.speaker.feed(b"\x01" * 640)
        self.speaker.mark("a")
        self.speaker.feed(b"\x02" * 320)
        self.assertEqual(self.reached, ["empty"])
        self.speaker.play_frame(self.heard.append)
        self.assertEqual(self.reached, ["empty"])
        self.speaker.play_frame(lambda chunk: self.heard.append(list(self.reached)))
        self.assertEqual(self.heard, [b"\x01" * 320, ["empty"]])  # the mark comes after the audio
        self.assertEqual(self.reached, ["empty", "a"])
        self.speaker.play_frame(self.heard.append)
        self.speaker.play_frame(self.heard.append)
        self.assertEqual(self.heard[2:], [b"\x02" * 320])

    def test_interrupt_discards_and_releases_checkpoints(self):
        self.speaker.feed(b"\x01" * 1000)
        self.speaker.mark("b")
        self.speaker.interrupt()
        self.assertEqual((self.reached, self.speaker.discarded), (["b"], 1000))
        self.speaker.play_frame(self.heard.append)
        self.assertEqual(self.heard, [])

    def test_the_queue_is_bounded(self):
        self.speaker.feed(b"\x01" * 4000)
        self.assertEqual((self.speaker.queued, self.speaker.dropped), (3200, 800))


class _MemoryGateway(WebSocketServerProtocol):
    """The server end of an in-memory connection: keeps what it received."""

    def onOpen(self):
        self.texts, self.frames = [], []

    def onMessage(self, payload, isBinary):
        (self.frames if isBinary else self.texts).append(payload if isBinary else json.loads(payload))

    def send(self, message):
        self.sendMessage(encode_json(message), False)


class InboundCallMemoryTests(SynchronousTestCase):
    """The provider client over iosim, on a fake clock: deterministic pacing and backpressure."""

    def setUp(self):
        self.connect(CallScript(dtmf=(TimedDigit("4", 0.1),)))

    def connect(self, script):
        self.clock = MemoryReactorClock()
        self.call = InboundCall(script, self.clock)
        client_factory = provider_factory(self.clock, "ws://127.0.0.1:4143", self.call)
        server_factory = WebSocketServerFactory(reactor=self.clock)
        server_factory.protocol = _MemoryGateway
        client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None)
        )
        self.transport = client.transport

    def run_for(self, seconds):
        for _ in range(round(seconds / 0.01)):
            self.clock.advance(0.01)
            self.pump.flush()

    def test_incoming_call_first_then_paced_audio_only_after_answer(self):
        self.run_for(0.2)
        self.assertEqual([m["event"] for m in self.server.texts], ["incoming_call"])
        self.assertEqual(self.server.texts[0]["sessionId"], self.call.session_id)
        self.assertEqual(self.server.frames, [])
        self.server.send({"event": "answer"})
        self.pump.flush()
        self.run_for(1.0)
        self.assertEqual(len(self.server.frames), 51)  # t = 0, 0.02, ... 1.0
        self.assertEqual({len(frame) for frame in self.server.frames}, {320})
        self.assertEqual([m["event"] for m in self.server.texts], ["incoming_call", "dtmf"])

    def test_a_wav_file_is_streamed_as_it_is_then_silence(self):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        path = os.path.join(directory.name, "speech.wav")
        pcm = audio.tone(0.1, frequency=700)
        audio.write_wav(path, pcm)
        self.connect(CallScript(pcm=audio.read_wav(path)))
        self.server.send({"event": "answer"})
        self.pump.flush()
        self.run_for(0.2)
        sent = b"".join(self.server.frames)
        self.assertEqual(sent[:len(pcm)], pcm)
        self.assertEqual(set(sent[len(pcm):]), {0})
        self.assertGreater(len(sent), len(pcm))

    def test_registers_as_a_push_producer_and_stops_when_paused(self):
        self.assertIs(self.transport.producer, self.call.streamer)
        self.assertTrue(self.transport.streamingProducer)
        self.server.send({"event": "answer"})
        self.pump.flush()
        self.run_for(0.1)
        sent = len(self.server.frames)
        self.transport.producer.pauseProducing()
        self.run_for(1.0)
        self.assertEqual(len(self.server.frames), sent)
        self.transport.producer.resumeProducing()
        self.run_for(0.1)
        self.assertEqual(len(self.server.frames), sent + 6)
        self.assertEqual(self.call.streamer.pauses, 1)
        self.assertTrue(audio.compare_echo(self.call.sent_audio, b"".join(self.server.frames), PCM16).matched)

    def test_hangup_by_server_sends_cdr_with_string_cause_and_closes(self):
        self.server.send({"event": "answer"})
        self.pump.flush()
        self.run_for(2.0)
        self.server.send({"event": "hangup"})
        self.pump.flush()
        self.run_for(0.1)
        cdr = self.server.texts[-1]
        self.assertEqual(cdr["event"], "cdr")
        self.assertEqual(
            {key: cdr[key] for key in ("sessionId", "source", "destination", "duration", "billableSeconds",
                                       "disposition", "hangupBy", "hangupCauseCode", "hangupCauseText")},
            {"sessionId": self.call.session_id, "source": "081100000001", "destination": "0210000001",
             "duration": 2, "billableSeconds": 2, "disposition": "ANSWERED", "hangupBy": "CALLEE",
             "hangupCauseCode": "16", "hangupCauseText": "Call completed successfully"},
        )
        self.assertEqual(cdr["startTime"], "1970-01-01T00:00:00.000Z")
        self.assertEqual(self.successResultOf(self.call.ended), self.call)
        self.assertEqual(self.call.close_code, 1000)
        self.assertEqual(self.call.errors, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


# ---------------------------------------------------------------------------------- integration


def split_waiters(waiters, record):
    """(fired, still waiting) of (kind, count, Deferred) waiters, given a (kind, item) record.

    fired holds (Deferred, item) pairs for the caller to fire after it has kept the rest, since a
    callback may add a waiter.
    """
    fired, waiting = [], []
    for kind, count, waiter in waiters:
        seen = [item for name, item in record if name == kind]
        if len(seen) >= count:
            fired.append((waiter, seen[count - 1]))
        else:
            waiting.append((kind, count, waiter))
    return fired, waiting


class GatewayStub(WebSocketServerProtocol):
    """A tiny inbound gateway for the tests: records everything, echoes audio, answers when told."""

    def onOpen(self):
        self.record = []
        self.waiters = []
        self.closed = defer.Deferred()
        self.factory.connections.append(self)
        self.factory.notify()

    def onMessage(self, payload, isBinary):
        if isBinary:
            self.record.append(("audio", payload))
            self.sendMessage(payload, True)
        else:
            try:
                message = json.loads(payload)
            except ValueError:
                message = {"event": "not JSON", "text": payload}
            self.record.append((message["event"], message))
            if message["event"] == "incoming_call" and self.factory.auto_answer:
                self.send({"event": "answer"})
        self.notify()

    def onClose(self, wasClean, code, reason):
        if hasattr(self, "closed"):
            self.closed.callback(code)

    def send(self, message):
        self.sendMessage(json.dumps(message).encode(), False)

    def events(self):
        return [kind for kind, _ in self.record if kind != "audio"]

    def wait_for(self, kind, count=1):
        waiter = defer.Deferred()
        self.waiters.append((kind, count, waiter))
        self.notify()
        return waiter

    def notify(self):
        fired, self.waiters = split_waiters(self.waiters, self.record)
        for waiter, item in fired:
            waiter.callback(item)


class GatewayStubFactory(WebSocketServerFactory):
    protocol = GatewayStub

    def __init__(self, reactor):
        super().__init__(reactor=reactor)
        self.connections = []
        self.waiters = []
        self.handed_out = 0
        self.auto_answer = False

    def next_connection(self):
        """The next connection not yet handed out by this method (once it has opened)."""
        self.handed_out += 1
        waiter = defer.Deferred()
        self.waiters.append((self.handed_out, waiter))
        self.notify()
        return waiter

    def notify(self):
        ready = [(n, w) for n, w in self.waiters if len(self.connections) >= n]
        self.waiters = [(n, w) for n, w in self.waiters if len(self.connections) < n]
        for n, waiter in ready:
            waiter.callback(self.connections[n - 1])


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


def _reactor_state(reactor):
    selectables = [*reactor.getReaders(), *reactor.getWriters()]
    return {*reactor.getDelayedCalls(), *(s for s in selectables if "Waker" not in type(s).__name__)}


@pytest.fixture(autouse=True)
def leaves_the_reactor_clean(reactor):
    """Every test must clean up the ports, connections and timers it made (checked after teardown)."""
    before = _reactor_state(reactor)
    yield
    assert _reactor_state(reactor) <= before


@pytest_twisted.async_yield_fixture
async def gateway(reactor):
    factory = GatewayStubFactory(reactor)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    factory.url = f"ws://127.0.0.1:{port.getHost().port}"
    yield factory
    for connection in factory.connections:
        if connection.transport is not None and connection.transport.connected:
            connection.transport.abortConnection()
        await connection.closed
    await defer.maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_inbound_call_flow_against_an_echoing_gateway(reactor, gateway):
    call = place_call(reactor, gateway.url, CallScript(caller_id="0811222333", did="0215550100",
                                                       dtmf=(TimedDigit("5", 0.05),)))
    stub = await gateway.next_connection()
    incoming = await stub.wait_for("incoming_call")
    assert incoming == {"event": "incoming_call", "callerId": "0811222333", "didNumber": "0215550100",
                        "sessionId": call.session_id}
    stub.send({"event": "answer"})
    await stub.wait_for("dtmf")
    await stub.wait_for("audio", count=10)
    stub.send({"event": "dtmf", "digit": "1", "duration": 200})
    stub.send({"event": "interrupt"})
    await call.wait_for("interrupt")
    await call.wait_for("audio")
    stub.send({"event": "hangup"})
    cdr = await stub.wait_for("cdr")
    assert await call.ended is call
    assert await stub.closed == 1000

    assert stub.record[0][0] == "incoming_call"
    audio_at = [i for i, (kind, _) in enumerate(stub.record) if kind == "audio"]
    assert audio_at and {len(payload) for kind, payload in stub.record if kind == "audio"} == {320}
    assert stub.events() == ["incoming_call", "dtmf", "cdr"]
    assert [item for kind, item in stub.record if kind == "dtmf"] == [{"event": "dtmf", "digit": "5"}]
    assert [(d.digit, d.duration) for d in call.dtmf_received] == [("1", 200)]
    assert len(call.interrupts) == 1
    assert call.errors == []
    assert call.frames_before_answer == 0
    assert call.frames_received > 0 and call.echo().matched
    assert call.frame_sizes_received == {320} and call.bytes_received == 320 * call.frames_received
    assert [digit for _, digit in call.dtmf_sent] == ["5"]
    assert cdr["hangupBy"] == "CALLEE" and cdr["disposition"] == "ANSWERED"
    assert cdr["hangupCauseCode"] == "16" and cdr["answerTime"] is not None
    assert cdr == {"event": "cdr", **call.cdr}


@pytest_twisted.ensureDeferred
async def test_audio_waits_for_answer_unless_told_and_caller_can_abandon(reactor, gateway):
    call = place_call(reactor, gateway.url, CallScript(codec="ulaw", stream_before_answer=True,
                                                       abandon_after=0.3))
    stub = await gateway.next_connection()
    await stub.wait_for("audio", count=3)
    cdr = await stub.wait_for("cdr")
    await call.ended
    assert stub.events() == ["incoming_call", "hangup", "cdr"]
    assert {len(payload) for kind, payload in stub.record if kind == "audio"} == {160}
    assert (cdr["disposition"], cdr["hangupBy"], cdr["answerTime"], cdr["billableSeconds"]) == (
        "CANCEL", "CALLER", None, 0)
    assert call.frames_before_answer == call.frames_received > 0


@pytest_twisted.ensureDeferred
async def test_caller_hangs_up_after_answer(reactor, gateway):
    gateway.auto_answer = True
    call = place_call(reactor, gateway.url, CallScript(hangup_after=0.2))
    stub = await gateway.next_connection()
    cdr = await stub.wait_for("cdr")
    await call.ended
    assert stub.events() == ["incoming_call", "hangup", "cdr"]
    first_audio = next(i for i, (kind, _) in enumerate(stub.record) if kind == "audio")
    assert first_audio > 0
    assert (cdr["hangupBy"], cdr["disposition"]) == ("CALLER", "ANSWERED")


@pytest_twisted.ensureDeferred
async def test_inbound_client_is_strict_about_server_messages(reactor, gateway):
    call = place_call(reactor, gateway.url, CallScript())
    stub = await gateway.next_connection()
    await stub.wait_for("incoming_call")
    stub.send({"event": "dtmf", "digit": "1", "duration": 100})  # before answer
    stub.sendMessage(b"{not json", False)
    stub.send(["answer"])
    stub.send({"event": "transfer"})
    stub.send({"event": "answer"})
    stub.send({"event": "answer"})
    stub.send({"event": "dtmf", "digit": "A", "duration": 100})
    stub.send({"event": "dtmf", "digit": "2", "duration": 1500})
    stub.send({"event": "dtmf", "digit": "3"})
    stub.send({"event": "dtmf", "digit": "4", "duration": 1000, "extra": True})
    await call.wait_for("dtmf", count=5)
    stub.transport.loseConnection()
    await call.ended
    assert [d.digit for d in call.dtmf_received] == ["4"]
    assert len(call.errors) == 9, call.errors
    assert "connection closed without a hangup" in call.errors[-1]
    assert call.cdr is None
    with pytest.raises(CallEnded):
        await call.wait_for("hangup")


@pytest_twisted.ensureDeferred
async def test_raw_mode_sends_only_what_it_is_told(reactor, gateway):
    call = place_call(reactor, gateway.url, CallScript(raw=True))
    await call.wait_for("open")
    stub = await gateway.next_connection()
    call.send_text("not json at all")
    call.send_binary(b"\x01\x02\x03")
    await stub.wait_for("audio")
    call.close()
    await call.ended
    assert stub.record == [("not JSON", {"event": "not JSON", "text": b"not json at all"}),
                           ("audio", b"\x01\x02\x03")]
    assert call.errors == [] and call.frames_sent == 0


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_fails_ended(reactor):
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(WebSocketServerFactory())
    url = f"ws://127.0.0.1:{port.getHost().port}"
    await defer.maybeDeferred(port.stopListening)
    call = place_call(reactor, url, CallScript())
    with pytest.raises(Exception):
        await call.ended


@pytest_twisted.ensureDeferred
async def test_call_cli_places_calls_and_reports_json(reactor, gateway):
    gateway.auto_answer = True
    out, err, code = await utils.getProcessOutputAndValue(
        sys.executable,
        ["-m", "gateway.sim", "optimaccs", "call", "--url", gateway.url, "--calls", "2",
         "--codec", "alaw", "--dtmf", "9@0.05", "--hangup-after", "0.3"],
        env=dict(os.environ),
    )
    assert code == 0, err
    summaries = [json.loads(line) for line in out.decode().splitlines()]
    assert len(summaries) == 2 and len({s["sessionId"] for s in summaries}) == 2
    for summary in summaries:
        assert summary["echo"] and summary["errors"] == []
        assert summary["cdr"]["hangupBy"] == "CALLER" and summary["cdr"]["hangupCauseCode"] == "16"
    for stub in gateway.connections:
        await stub.closed
        assert stub.events() == ["incoming_call", "dtmf", "hangup", "cdr"]


# ------------------------------------------------------------------------- outbound fake API


class MediaClient(WebSocketClientProtocol):
    """A minimal client of the fake API's call WebSocket."""

    def onConnect(self, response):
        self.record = []
        self.waiters = []

    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        if isBinary:
            self.record.append(("audio", payload))
        else:
            message = json.loads(payload)
            self.record.append((message["event"], message))
        self.notify()

    def notify(self):
        fired, self.waiters = split_waiters(self.waiters, self.record)
        for waiter, item in fired:
            waiter.callback(item)

    def onClose(self, wasClean, code, reason):
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionRefusedError(reason))
        self.factory.closed.callback((code, reason))

    def wait_for(self, kind, count=1):
        waiter = defer.Deferred()
        self.waiters.append((kind, count, waiter))
        self.notify()
        return waiter

    def send(self, message):
        self.sendMessage(json.dumps(message).encode(), False)

    def events(self):
        return [kind for kind, _ in self.record if kind != "audio"]

    def statuses(self):
        return [item["data"]["status"] for kind, item in self.record if kind == "dialStatus"]


class ProviderUnderTest:
    """The fake API on a loopback port, plus an HTTP client and a WebSocket client for it."""

    def __init__(self, reactor, api, port):
        self.reactor = reactor
        self.api = api
        self.port = port
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        self.clients = []

    async def request(self, method, path, body=None, token=TOKEN, raw=None):
        headers = {"Content-Type": ["application/json"]}
        if token is not None:
            headers["Authorization"] = [f"Bearer {token}"]
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        response = await self.http.request(method, self.base + path, data=data, headers=headers)
        return response.code, json.loads(await response.content())

    async def dial(self, number, **fields):
        code, reply = await self.request("POST", "/pbx/call", {"phoneNumber": number, **fields})
        assert code == 200, reply
        return reply["data"]

    async def join(self, session_id, token=TOKEN):
        url = f"ws://127.0.0.1:{self.port.getHost().port}/ws/{session_id}"
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        factory = WebSocketClientFactory(url, headers=headers, reactor=self.reactor)
        factory.protocol = MediaClient
        factory.opened, factory.closed = defer.Deferred(), defer.Deferred()
        self.clients.append(factory)
        await HostnameEndpoint(self.reactor, "127.0.0.1", self.port.getHost().port).connect(factory)
        return await factory.opened


@pytest_twisted.async_yield_fixture
async def provider(reactor):
    """A function making a running fake API with the given settings; everything stops at teardown."""
    running = []

    async def start(**settings):
        api = FakeProviderApi(reactor, ApiSettings(**{"token": TOKEN, "dial_time": 0.02, "ring_time": 0.05,
                                                      **settings}))
        running.append(ProviderUnderTest(reactor, api, await api.listen(reactor)))
        return running[-1]

    yield start
    for under_test in running:
        await under_test.pool.closeCachedConnections()
        await under_test.api.shutdown()
        for factory in under_test.clients:
            await factory.closed
        await under_test.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_rest_authentication_validation_and_errors(provider):
    p = await provider()
    assert await p.request("POST", "/pbx/call", {"phoneNumber": "0811"}, token=None) == (
        401, {"status": 401, "errors": "Authentication token is required", "data": None})
    assert await p.request("POST", "/pbx/call", {"phoneNumber": "0811"}, token="wrong") == (
        401, {"status": 401, "errors": "Invalid authentication token", "data": None})
    phone_error = {"code": 422, "message": "Validation failed",
                   "errors": {"phoneNumber": ["Phone Number containing only digits."]}}
    assert await p.request("POST", "/pbx/call", {"phoneNumber": "+62 811"}) == (422, phone_error)
    assert await p.request("POST", "/pbx/call", {}) == (422, phone_error)
    code, reply = await p.request("POST", "/pbx/call", {"phoneNumber": "0811", "timeout": 0,
                                                        "audio": {"input": "mp3"}})
    assert code == 422 and set(reply["errors"]) == {"timeout", "audio.input"}
    assert (await p.request("POST", "/pbx/call", raw=b"[1, 2"))[0] == 400
    assert (await p.request("GET", "/pbx/call"))[0] == 405
    assert (await p.request("GET", "/nowhere"))[0] == 404
    assert await p.request("POST", "/pbx/hangup", {"sessionId": "nope"}) == (
        404, {"status": 404, "errors": "Session not found or already ended", "data": None})
    assert (await p.request("GET", "/v1/cdr/nope"))[0] == 404
    assert [r.status for r in p.api.requests] == [401, 401, 422, 422, 422, 400, 405, 404, 404, 404]
    assert p.api.requests[2].body == {"phoneNumber": "+62 811"}
    assert p.api.sessions == {}


@pytest_twisted.ensureDeferred
async def test_rest_500_injection_then_success(provider):
    p = await provider()
    p.api.fail_next_calls(1, "Trunk down")
    assert await p.request("POST", "/pbx/call", {"phoneNumber": "0811"}) == (
        500, {"status": 500, "errors": "Trunk down", "data": None})
    code, reply = await p.request("POST", "/pbx/call", {"phoneNumber": "0811", "timeout": 30,
                                                        "callerId": "0215550100"})
    session_id = reply["data"]["sessionId"]
    assert (code, reply["status"], reply["errors"]) == (200, 200, "")
    assert reply["data"] == {"phoneNumber": "0811", "sessionId": session_id,
                             "endpointUrl": f"ws://127.0.0.1:{p.port.getHost().port}/ws/{session_id}"}
    session = await p.api.wait_for_session()
    assert (session.session_id, session.caller_id, session.timeout, session.state) == (
        session_id, "0215550100", 30, "created")


@pytest_twisted.ensureDeferred
async def test_websocket_handshake_requires_the_bearer_token(provider):
    p = await provider()
    session_id = (await p.dial("0811"))["sessionId"]
    for token, target in ((None, session_id), ("wrong", session_id), (TOKEN, "unknown")):
        with pytest.raises(ConnectionRefusedError):
            await p.join(target, token=token)
    assert [(r.path, r.status) for r in p.api.requests[1:]] == [
        (f"/ws/{session_id}", 401), (f"/ws/{session_id}", 401), ("/ws/unknown", 404)]
    assert p.api.sessions[session_id].state == "created"
    client = await p.join(session_id)
    await client.wait_for("dialStatus")
    with pytest.raises(ConnectionRefusedError):
        await p.join(session_id)
    assert p.api.requests[-1].status == 409


@pytest.mark.parametrize("number, status, disposition, cause", [
    ("08110000", "Busy", "BUSY", 17),
    ("08119999", "Failed", "FAILED", 38),
])
@pytest_twisted.ensureDeferred
async def test_busy_and_failed_numbers(provider, number, status, disposition, cause):
    p = await provider()
    session_id = (await p.dial(number))["sessionId"]
    client = await p.join(session_id)
    await client.factory.closed
    assert client.statuses() == p.api.sessions[session_id].statuses == ["Dialing", status]
    assert client.events() == ["dialStatus", "dialStatus", "cdr", "hangup"]
    cdr = client.record[2][1]["data"]
    assert (cdr["disposition"], cdr["hangupCauseCode"], cdr["answerTime"]) == (disposition, cause, None)
    assert isinstance(cdr["hangupCauseCode"], int)
    code, stored = await p.request("GET", f"/v1/cdr/{session_id}")
    assert code == 200 and {k: stored["data"][k] for k in cdr} == cdr
    assert set(stored["data"]) - set(cdr) == {"createdAt", "updatedAt"}


@pytest_twisted.ensureDeferred
async def test_unanswered_number_rings_until_the_timeout(provider):
    p = await provider()
    client = await p.join((await p.dial("08118888", timeout=1))["sessionId"])
    cdr = (await client.wait_for("cdr"))["data"]
    await client.factory.closed
    assert client.statuses() == ["Dialing", "Ringing"]
    assert (cdr["disposition"], cdr["hangupCauseCode"], cdr["hangupBy"]) == ("NO ANSWER", 19, None)


@pytest_twisted.ensureDeferred
async def test_an_answered_call_outlives_the_ring_timeout_until_the_callee_hangs_up(provider):
    p = await provider()
    session_id = (await p.dial("0811", timeout=1))["sessionId"]
    client = await p.join(session_id)
    await client.wait_for("dialStatus", count=3)
    session = p.api.sessions[session_id]
    with pytest.raises(RuntimeError):
        p.api.sessions[(await p.dial("08110000"))["sessionId"]].callee_hangs_up()  # not connected yet
    await task.deferLater(p.reactor, 1.2, lambda: None)
    assert (session.state, client.events()) == ("connected", ["dialStatus"] * 3)
    session.callee_hangs_up()
    cdr = (await client.wait_for("cdr"))["data"]
    await client.factory.closed
    assert client.events()[-2:] == ["cdr", "hangup"]
    assert (cdr["disposition"], cdr["hangupBy"], cdr["hangupCauseCode"]) == ("ANSWERED", "CALLEE", 16)


@pytest_twisted.ensureDeferred
async def test_connected_call_echoes_and_orders_checkpoints(provider):
    p = await provider(rules=(DialRule("7777", "busy"),))
    session_id = (await p.dial("08110000"))["sessionId"]  # no longer busy: the rules were replaced
    client = await p.join(session_id)
    await client.wait_for("dialStatus", count=3)
    assert client.statuses() == ["Dialing", "Ringing", "Connected"]
    sent = audio.tone(0.3)
    client.sendMessage(sent[:3200], True)
    client.send({"event": "checkPoint", "data": "first"})
    client.sendMessage(sent[3200:], True)
    client.send({"event": "checkPoint", "data": "second"})
    client.send({"event": "dtmf", "data": {"digit": "4", "duration": 500}})
    client.send({"event": "dtmf", "data": {"digit": "E"}})
    await client.wait_for("CheckPoint", count=2)
    echoed_before = {}
    echoed = 0
    for kind, item in client.record:
        if kind == "audio":
            echoed += len(item)
        elif kind == "CheckPoint":
            echoed_before[item["data"]] = echoed
    assert echoed_before == {"first": 3200, "second": len(sent)}
    assert b"".join(item for kind, item in client.record if kind == "audio") == sent
    client.send({"event": "hangup"})
    cdr = (await client.wait_for("cdr"))["data"]
    await client.factory.closed
    assert client.events()[-2:] == ["cdr", "hangup"]
    assert (cdr["disposition"], cdr["hangupBy"], cdr["hangupCauseCode"]) == ("ANSWERED", "CALLER", 16)
    assert cdr["answerTime"] is not None and cdr["destination"] == "08110000"
    session = p.api.sessions[session_id]
    assert [digit for _, digit, _ in session.dtmf_received] == ["4"]
    assert len(session.errors) == 1 and "'E'" in session.errors[0]


@pytest_twisted.ensureDeferred
async def test_interruption_discards_queued_audio(provider):
    p = await provider(dial_time=0.0, ring_time=0.0)
    session_id = (await p.dial("0811", audio={"input": "ulaw", "output": "pcm16"}))["sessionId"]
    client = await p.join(session_id)
    await client.wait_for("dialStatus", count=3)
    client.sendMessage(audio.CODECS["ulaw"].encode(audio.tone(5.0)), True)
    client.send({"event": "interruption"})
    client.send({"event": "checkPoint", "data": "after"})
    await client.wait_for("CheckPoint")
    session = p.api.sessions[session_id]
    assert session.loudspeaker.discarded > 0
    assert session.loudspeaker.played + session.loudspeaker.discarded == 40000
    assert sum(len(item) for kind, item in client.record if kind == "audio") == 2 * session.loudspeaker.played
    assert len(session.interruptions) == 1


@pytest_twisted.ensureDeferred
async def test_callee_dtmf_rest_hangup_and_callee_hangup(provider):
    p = await provider(callee_dtmf=(TimedDigit("7", 0.01),), media="tone")
    session_id = (await p.dial("0811"))["sessionId"]
    client = await p.join(session_id)
    dtmf = await client.wait_for("dtmf")
    assert dtmf == {"event": "dtmf", "data": {"sessionId": session_id, "digit": "7"}}
    await client.wait_for("audio", count=3)
    assert await p.request("POST", "/pbx/hangup", {"sessionId": session_id}) == (
        200, {"status": 200, "errors": "", "data": {"sessionId": session_id}})
    cdr = (await client.wait_for("cdr"))["data"]
    assert (cdr["hangupBy"], cdr["disposition"]) == ("CALLER", "ANSWERED")

    p2 = await provider(callee_hangup_after=0.05)
    client2 = await p2.join((await p2.dial("0812"))["sessionId"])
    cdr2 = (await client2.wait_for("cdr"))["data"]
    assert (cdr2["hangupBy"], cdr2["disposition"], cdr2["hangupCauseCode"]) == ("CALLEE", "ANSWERED", 16)

