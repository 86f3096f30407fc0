"""The media apps through their plugins: discovery, echo, bridge, mix, hold, play and record."""

import array
import pathlib
import shutil
import struct
import tempfile
import wave

from twisted.internet.task import Clock
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import gateway.plugins
from gateway.media import (
    ALAW,
    PCM16,
    ULAW,
    AppArgumentError,
    IConference,
    IMediaApp,
    IMediaSession,
    MediaPort,
    PortBusy,
    UnsupportedFormat,
    silence,
    transcode,
)
from gateway.media.testing import tone_power
from gateway.media.tones import synthesize


def constant(value, frames=1):
    """pcm16 frames whose every sample is ``value``."""
    return struct.pack("<h", value) * 160 * frames


def samples(pcm):
    return set(array.array("h", pcm))


class AppTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.apps = {app.name: app for app in getPlugins(IMediaApp, gateway.plugins)}
        self.wires = {}
        self.dir = pathlib.Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)

    def port(self, name, codec=PCM16):
        port = MediaPort(self.clock, codec, name=name)
        self.wires[name] = wire = []
        port.set_wire(wire.append)
        self.addCleanup(port.close)
        return port

    def start(self, app, ports, arg=None):
        session = self.apps[app].start(ports, self.clock, arg=arg, state_dir=self.dir)
        verifyObject(IMediaSession, session)
        self.addCleanup(session.stop)
        return session

    def run_for(self, frames):
        self.clock.pump([0] + [0.02] * frames)

    def heard(self, name, codec=PCM16):
        return b"".join(transcode(p, codec, PCM16) for p in self.wires[name])


class DiscoveryTests(AppTestCase):
    def test_all_apps_are_plugins(self):
        self.assertEqual(set(self.apps), {"echo", "play", "record", "bridge", "mix", "hold"})
        for app in self.apps.values():
            verifyObject(IMediaApp, app)
            self.assertTrue(IPlugin.providedBy(app))
            self.assertTrue(app.description)

    def test_wrong_ports_or_arguments(self):
        a, b = self.port("a"), self.port("b")
        self.assertRaises(AppArgumentError, self.apps["echo"].start, [a, b], self.clock)
        self.assertRaises(AppArgumentError, self.apps["bridge"].start, [a, a], self.clock)
        self.assertRaises(AppArgumentError, self.apps["echo"].start, [a], self.clock, arg="x")
        self.assertRaises(AppArgumentError, self.apps["play"].start, [a], self.clock)
        self.assertRaises(AppArgumentError, self.apps["record"].start, [a], self.clock)
        self.assertRaises(FileNotFoundError, self.apps["play"].start, [a], self.clock, arg="missing.wav",
                          state_dir=self.dir)
        self.start("echo", [a])
        self.assertRaises(PortBusy, self.apps["bridge"].start, [a, b], self.clock)
        self.assertIsNone(b.source.consumer)  # nothing touched on failure


class EchoTests(AppTestCase):
    def test_party_hears_itself(self):
        a = self.port("a", ULAW)
        session = self.start("echo", [a])
        a.receive(b"\x10" * 160 + b"\x20" * 100)
        a.receive(b"\x20" * 60)
        self.run_for(3)
        self.assertEqual(self.wires["a"], [b"\x10" * 160, b"\x20" * 160])
        session.stop()
        self.assertIsNone(self.successResultOf(session.finished))
        self.assertIsNone(a.source.consumer)


class BridgeTests(AppTestCase):
    def test_both_directions_with_transcoding(self):
        a, b = self.port("a", PCM16), self.port("b", ULAW)
        session = self.start("bridge", [a, b])
        speech_a = synthesize([440], 320)
        speech_b = transcode(synthesize([1000], 320), PCM16, ULAW)
        a.receive(speech_a)
        b.receive(speech_b)
        self.run_for(3)
        self.assertEqual(b"".join(self.wires["b"]), transcode(speech_a, PCM16, ULAW))
        self.assertEqual(b"".join(self.wires["a"]), transcode(speech_b, ULAW, PCM16))
        session.stop()
        self.assertEqual((a.source.consumer, b.source.consumer, a.sink.producer, b.sink.producer),
                         (None, None, None, None))


class MixTests(AppTestCase):
    def test_each_party_hears_the_others_never_itself(self):
        a, b, c = self.port("a"), self.port("b"), self.port("c", ALAW)
        conference = self.start("mix", [a, b, c])
        verifyObject(IConference, conference)
        a.receive(constant(1000))
        b.receive(constant(2000))
        c.receive(transcode(constant(4000), PCM16, ALAW))
        self.run_for(2)
        c_value = array.array("h", transcode(transcode(constant(4000), PCM16, ALAW), ALAW, PCM16))[0]
        self.assertEqual(samples(self.heard("a")), {2000 + c_value})
        self.assertEqual(samples(self.heard("b")), {1000 + c_value})
        self.assertEqual(samples(self.heard("c", ALAW)), samples(transcode(transcode(constant(3000), PCM16, ALAW), ALAW, PCM16)))

    def test_saturation_and_the_lone_speaker(self):
        a, b, c = self.port("a"), self.port("b"), self.port("c")
        self.start("mix", [a, b, c])
        a.receive(constant(30000))
        b.receive(constant(30000))
        self.run_for(1)
        self.assertEqual(samples(self.heard("c")), {32767})
        self.assertEqual(samples(self.heard("a")), {30000})
        a.receive(constant(-30000))
        b.receive(constant(-30000))
        self.run_for(1)
        self.assertEqual(samples(self.heard("c")[320:]), {-32768})
        for wire in self.wires.values():
            wire.clear()
        a.receive(constant(500))  # only a speaks: a hears nothing, b and c hear a
        self.run_for(2)
        self.assertEqual((self.wires["a"], samples(self.heard("b")), samples(self.heard("c"))), ([], {500}, {500}))

    def test_add_and_remove_parties_while_running(self):
        a, b, c = self.port("a"), self.port("b"), self.port("c")
        conference = self.start("mix", [a, b])
        a.receive(constant(100))
        self.run_for(1)
        conference.add(c)
        a.receive(constant(100))
        c.receive(constant(7))
        self.run_for(1)
        self.assertEqual(samples(self.heard("b")), {100, 107})
        self.assertEqual(samples(self.heard("c")), {100})
        conference.remove(b)
        self.assertIsNone(b.source.consumer)
        a.receive(constant(100))
        b.receive(constant(9999))
        self.run_for(1)
        self.assertEqual(samples(self.heard("c")), {100})
        self.assertEqual(len(self.wires["b"]), 2)
        conference.remove(b)  # again: nothing happens
        self.assertRaises(AppArgumentError, conference.add, a)
        c.close()  # a closed port leaves the conference by itself...
        self.assertEqual(conference.ports, [a])
        conference.remove(c)  # ...so removing it later is harmless
        self.assertRaises(PortBusy, conference.add, c)

    def test_a_party_whose_wire_stalls_is_skipped_not_buffered(self):
        a, b = self.port("a"), self.port("b")
        self.start("mix", [a, b])
        b.playout.pauseProducing()  # b's transport cannot keep up
        for _ in range(60):
            a.receive(constant(5))
            self.clock.advance(0.02)
        # b's playout paused the mix toward b at its high water (38 of 50 frames): nothing dropped
        self.assertEqual((b.playout.queued, b.playout.frames_dropped), (38, 0))
        b.playout.resumeProducing()
        self.run_for(40)
        self.assertEqual(len(self.wires["b"]), 38)
        a.receive(constant(6))
        self.run_for(1)
        self.assertEqual(samples(self.wires["b"][-1]), {6})

    def test_idle_conference_schedules_nothing(self):
        a, b = self.port("a"), self.port("b")
        conference = self.start("mix", [a, b])
        a.receive(constant(1))
        self.run_for(3)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        conference.stop()
        self.assertIsNone(self.successResultOf(conference.finished))
        self.assertEqual(conference.ports, [])


class HoldTests(AppTestCase):
    def test_tone_out_nothing_forwarded(self):
        agent, customer = self.port("agent"), self.port("customer", ULAW)
        bridge = self.start("bridge", [agent, customer])
        bridge.stop()
        hold = self.start("hold", [customer])
        customer.receive(silence(ULAW, 1000))
        self.run_for(20)
        self.assertEqual(self.wires["agent"], [])
        self.assertEqual(hold.discard.frames_discarded, 50)
        heard = self.heard("customer", ULAW)
        self.assertGreater(tone_power(heard, 425), 100 * tone_power(heard, 800))
        self.assertRaises(PortBusy, self.apps["bridge"].start, [agent, customer], self.clock)
        hold.stop()
        self.assertFalse(self.successResultOf(hold.finished))
        self.assertEqual(customer.playout.queued, 0)
        self.start("bridge", [agent, customer])


class PlayRecordTests(AppTestCase):
    def write_wav(self, name, pcm, rate=8000, channels=1, width=2):
        path = self.dir / name
        with wave.open(str(path), "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(width)
            w.setframerate(rate)
            w.writeframes(pcm)
        return path

    def test_record_then_play_round_trip(self):
        caller = self.port("call-42", ULAW)
        recording = self.start("record", [caller])
        spoken = transcode(synthesize([300, 700], 160 * 25), PCM16, ULAW)
        caller.receive(spoken)
        recording.stop()
        path = self.successResultOf(recording.finished)
        self.assertEqual(path, self.dir / "call-42.wav")
        with wave.open(str(path)) as w:
            self.assertEqual((w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()), (8000, 1, 2, 4000))
            self.assertEqual(w.readframes(4000), transcode(spoken, ULAW, PCM16))

        listener = self.port("listener", ALAW)
        play = self.start("play", [listener], arg="call-42.wav")
        self.run_for(30)
        self.assertEqual(b"".join(self.wires["listener"]), transcode(transcode(spoken, ULAW, PCM16), PCM16, ALAW))
        self.assertTrue(self.successResultOf(play.finished))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_recordings_never_overwrite(self):
        port = self.port("same")
        paths = []
        for arg in (None, None, "../same"):
            session = self.start("record", [port], arg=arg)
            session.stop()
            paths.append(self.successResultOf(session.finished).name)
        self.assertEqual(paths, ["same.wav", "same-1.wav", "_same.wav"])  # no way out of state_dir
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), sorted(paths))

    def test_play_stopped_early_is_flushed(self):
        port = self.port("p")
        play = self.start("play", [port], arg=self.write_wav("long.wav", bytes(320 * 200)))
        self.run_for(5)
        self.assertEqual(port.playout.queued, 38 - 6)  # paused at high water: the file is not read ahead
        play.stop()
        self.assertFalse(self.successResultOf(play.finished))
        self.assertEqual((port.playout.queued, port.sink.producer), (0, None))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_play_partial_last_frame_is_padded(self):
        port = self.port("p", ULAW)
        self.start("play", [port], arg=self.write_wav("short.wav", constant(1000) + b"\x10\x00" * 10))
        self.run_for(3)
        self.assertEqual(len(self.wires["p"]), 2)
        self.assertEqual(self.wires["p"][1][10:], silence(ULAW)[10:])

    def test_other_formats_are_refused_clearly(self):
        port = self.port("p")
        cases = [
            (self.write_wav("wide.wav", bytes(640), rate=16000), "16000 Hz, 1 channel(s), 16-bit"),
            (self.write_wav("stereo.wav", bytes(640), channels=2), "8000 Hz, 2 channel(s), 16-bit"),
            (self.write_wav("narrow.wav", bytes(320), width=1), "8000 Hz, 1 channel(s), 8-bit"),
        ]
        not_wav = self.dir / "prompt.mp3"
        not_wav.write_bytes(b"ID3\x03" + bytes(100))
        cases.append((not_wav, "not a PCM WAV file"))
        for path, expected in cases:
            with self.assertRaises(UnsupportedFormat) as caught:
                self.apps["play"].start([port], self.clock, arg=str(path))
            self.assertIn(expected, str(caught.exception))
            self.assertIn(str(path), str(caught.exception))
        self.assertIsNone(port.sink.producer)
