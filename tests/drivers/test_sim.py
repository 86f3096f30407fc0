"""The simulated phone network (driver ``sim``) on its own, on a task.Clock."""

import wave

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.core.errors import DriverError
from gateway.core.interfaces import IDriver, IDriverLeg, ILegEvents
from gateway.drivers.config import NumberRule, SimNetworkConfig
from gateway.drivers.sim import TONE_HZ, SimNetwork, run_clock
from gateway.media import PacedSource, tone
from gateway.media.testing import FrameCollector, tone_power
from gateway.media.tones import synthesize


@implementer(ILegEvents)
class Recorder:
    """What the driver reported, with the clock's time."""

    def __init__(self, clock):
        self.clock = clock
        self.reports = []

    def _add(self, *what):
        self.reports.append((round(self.clock.seconds(), 3), *what))

    def ringing(self):
        self._add("ringing")

    def answered(self):
        self._add("answered")

    def busy(self):
        self._add("busy")

    def no_answer(self):
        self._add("no_answer")

    def failed(self, reason):
        self._add("failed", reason)

    def hung_up(self, cause="remote_hangup"):
        self._add("hung_up", cause)

    def dtmf(self, digit, duration_ms=None):
        self._add("dtmf", digit, duration_ms)

    def provider_cdr(self, source, data):
        self._add("provider_cdr", source)


class FakeRegistry:
    """Takes inbound calls like the registry does: it returns the leg's events."""

    def __init__(self, clock):
        self.clock = clock
        self.calls = []

    def incoming(self, leg, *, caller_id, did, attributes=None):
        events = Recorder(self.clock)
        self.calls.append((leg, caller_id, did, attributes, events))
        return events


RULES = [
    NumberRule(match="555000.", outcome="busy", after=1.5),
    NumberRule(match="555.*", outcome="answer", after=4.0),  # never reached for 555000x: first match wins
    NumberRule(match="9", outcome="failed", after=0.25),
    NumberRule(match="8", outcome="no-answer", after=3.0),
]


class SimTestCase(SynchronousTestCase):
    def setUp(self):
        self.network = self.make()

    def make(self, **options):
        self.clock = task.Clock()
        self.registry = FakeRegistry(self.clock)
        config = SimNetworkConfig(**{"phone_answer_delay": 1.0, "ring_time": 2.0, "no_answer_timeout": 30.0,
                                     "audio": "silence", "rules": RULES, **options})
        network = SimNetwork(self.clock, config)
        network.wire(self.registry)
        return network

    def advance(self, seconds):
        run_clock(self.clock, seconds)

    def dial(self, address, extension=None):
        events = Recorder(self.clock)
        attributes = {"extension": extension} if extension else None
        leg = self.network.dial(address, events, caller_id="0811", attributes=attributes)
        return leg, events


class DialTests(SimTestCase):
    def test_provides_the_driver_interfaces(self):
        verifyObject(IDriver, self.network)
        leg, _ = self.dial("5551234")
        verifyObject(IDriverLeg, leg)
        self.assertEqual((self.network.name, leg.driver), ("sim", "sim"))

    def test_phones_answer_by_themselves(self):
        for address, answer_at in (("", 1.0), ("answer=2.5", 2.5), ("answer=0", 0.0)):
            leg, events = self.dial(address, extension="1001")
            start = self.clock.seconds()
            self.advance(3.0)
            self.assertEqual([(round(t - start, 3), what) for t, what in events.reports],
                             [(0.0, "ringing"), (answer_at, "answered")], address)
            self.assertEqual((leg.party.kind, leg.party.number, leg.party.state), ("phone", "1001", "talking"))

    def test_a_manual_phone_rings_until_answered_or_the_timeout(self):
        leg, events = self.dial("manual", extension="1003")
        self.advance(10)
        self.assertEqual(events.reports, [(0.0, "ringing")])
        self.successResultOf(leg.answer())
        self.assertEqual(events.reports[-1], (10.0, "answered"))
        other, events = self.dial("manual", extension="1004")
        self.advance(30)
        self.assertEqual(events.reports[-1], (40.0, "no_answer"))
        self.assertEqual(other.party.state, "ended")

    def test_a_bad_phone_address_is_refused(self):
        for address in ("answer=soon", "auto", "manual:now"):
            self.assertRaises(DriverError, self.dial, address, "1001")
        self.assertEqual(self.network.live, [])

    def test_numbers_follow_the_first_matching_rule(self):
        cases = {
            "5550001": [(0.0, "ringing"), (1.5, "busy")],
            "5551234": [(0.0, "ringing"), (4.0, "answered")],
            "9": [(0.0, "ringing"), (0.25, "failed", "simulated failure")],
            "8": [(0.0, "ringing"), (3.0, "no_answer")],
            "99": [(0.0, "ringing"), (2.0, "answered")],  # rules match the whole number
        }
        for number, expected in cases.items():
            network = self.make()
            self.network = network
            leg, events = self.dial(number)
            self.advance(5)
            self.assertEqual(events.reports, expected, number)

    def test_a_rule_can_make_the_party_hang_up_after_answering(self):
        self.network = self.make(rules=[NumberRule(match="5557...", after=0.5, hang_up_after=2.0), *RULES])
        leg, events = self.dial("5557001")
        self.advance(5)
        self.assertEqual(events.reports, [(0.0, "ringing"), (0.5, "answered"), (2.5, "hung_up", "remote_hangup")])
        self.assertEqual((leg.party.state, self.network.live), ("ended", []))

    def test_ringing_longer_than_the_timeout_is_no_answer(self):
        self.network = self.make(ring_time=40.0)
        leg, events = self.dial("1234")
        self.advance(45)
        self.assertEqual(events.reports, [(0.0, "ringing"), (30.0, "no_answer")])

    def test_an_empty_number_is_refused(self):
        self.assertRaises(DriverError, self.dial, "")


class AudioTests(SimTestCase):
    def talking(self, **options):
        self.network = self.make(**options)
        leg, events = self.dial("1234")
        self.advance(2.0)
        collector = FrameCollector()
        leg.port.source.connect(collector)
        self.advance(1.0)
        return leg, collector

    def test_a_party_sends_paced_audio_once_connected(self):
        leg, collector = self.talking(audio="tone")
        self.assertIn(len(collector.frames), (49, 50, 51))
        pcm = collector.pcm()
        self.assertGreater(tone_power(pcm, TONE_HZ), 100 * tone_power(pcm, 1000))

    def test_silence_and_noise(self):
        _, collector = self.talking(audio="silence")
        self.assertEqual(set(collector.pcm()), {0})
        _, collector = self.talking(audio="noise")
        self.assertGreater(len(set(collector.pcm())), 100)

    def test_a_wav_file(self):
        path = self.mktemp() + ".wav"
        with wave.open(path, "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(8000)
            f.writeframes(synthesize([1000], 8000))
        _, collector = self.talking(audio_file=path)
        pcm = collector.pcm()
        self.assertGreater(tone_power(pcm, 1000), 100 * tone_power(pcm, TONE_HZ))

    def test_a_party_counts_and_recognises_what_it_hears(self):
        leg, _ = self.talking()
        source = PacedSource(self.clock, tone(600), "pcm16")
        source.connect(leg.port.sink)
        self.advance(1.0)
        party = leg.party
        self.assertGreater(party.frames_received, 40)
        self.assertEqual(party.bytes_received, 320 * party.frames_received)
        self.assertTrue(party.heard_tone(600, share=0.9))
        self.assertFalse(party.heard_tone(900))
        party.forget_heard()
        self.assertEqual(party.tone_level(600), 0.0)
        source.disconnect()

    def test_a_party_can_change_what_it_says(self):
        leg, collector = self.talking()
        leg.party.play_tone(750)
        collector.frames.clear()
        self.advance(0.5)
        pcm = collector.pcm()
        self.assertGreater(tone_power(pcm, 750), 100 * tone_power(pcm, TONE_HZ))


class DtmfAndEndingTests(SimTestCase):
    def setUp(self):
        super().setUp()
        self.leg, self.events = self.dial("5551234")
        self.advance(4.0)

    def test_send_dtmf_fires_when_the_tone_ends_and_the_party_records_it(self):
        d = self.leg.send_dtmf("7", 120)
        self.clock.advance(0.119)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.successResultOf(d)
        self.assertEqual(self.leg.party.digits_received, ["7"])
        self.assertEqual(self.leg.party.dtmf_log, [("7", 120, 4.0, 4.12)])

    def test_the_party_sends_dtmf(self):
        d = self.leg.party.send_dtmf("#", 80)
        self.clock.advance(0.08)
        self.successResultOf(d)
        self.assertEqual(self.events.reports[-1], (4.08, "dtmf", "#", 80))

    def test_hangup_from_the_gateway(self):
        self.successResultOf(self.leg.hangup("normal"))
        self.assertEqual((self.leg.party.state, self.leg.port.closed), ("ended", True))
        self.assertEqual(self.network.live, [])
        self.assertIs(self.network.party("5551234"), self.leg.party)
        self.successResultOf(self.leg.hangup("normal"))
        self.failureResultOf(self.leg.answer(), DriverError)
        self.failureResultOf(self.leg.send_dtmf("1", 100), DriverError)
        self.assertEqual(self.events.reports[-1][1], "answered")  # nothing reported back
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_the_party_hangs_up_or_drops(self):
        self.leg.party.hang_up()
        self.assertEqual(self.events.reports[-1], (4.0, "hung_up", "remote_hangup"))
        other, events = self.dial("5552222")
        self.advance(4.0)
        other.party.drop()
        self.assertEqual(events.reports[-1][1:], ("hung_up", "transport_lost"))
        self.assertEqual(self.network.live, [])

    def test_a_dialled_number_cannot_be_answered_from_the_gateway(self):
        leg, _ = self.dial("5553333")
        self.failureResultOf(leg.answer(), DriverError)

    def test_stop_ends_every_leg(self):
        self.dial("5554444")
        self.successResultOf(self.network.stop())
        self.assertEqual(self.network.live, [])
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])


class InboundTests(SimTestCase):
    def test_place_inbound_hands_the_call_to_the_registry(self):
        leg = self.network.place_inbound("0811222333", "100", attributes={"x": 1})
        [(delivered, caller_id, did, attributes, events)] = self.registry.calls
        self.assertIs(delivered, leg)
        self.assertEqual((caller_id, did, attributes, leg.direction), ("0811222333", "100", {"x": 1}, "inbound"))
        self.assertIs(leg.events, events)
        self.successResultOf(leg.answer())
        self.assertEqual(leg.party.state, "talking")

    def test_without_a_registry_nothing_can_be_placed(self):
        network = SimNetwork(self.clock, SimNetworkConfig())
        self.assertRaises(DriverError, network.place_inbound, "1", "2")

    def test_the_demo_generator(self):
        self.network = self.make(inbound_every=5.0, inbound_caller="777", inbound_did="100", inbound_duration=3.0)
        self.network.start()
        self.advance(4.9)
        self.assertEqual(self.registry.calls, [])
        self.advance(0.2)
        [(leg, caller_id, did, _, events)] = self.registry.calls
        self.assertEqual((caller_id, did), ("777", "100"))
        self.advance(1.0)
        leg.answer()
        self.advance(3.0)
        self.assertEqual(events.reports[-1][1:], ("hung_up", "remote_hangup"))
        self.advance(6.0)
        self.assertEqual(len(self.registry.calls), 3)
        self.successResultOf(self.network.stop())
        self.advance(20)
        self.assertEqual(len(self.registry.calls), 3)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])
