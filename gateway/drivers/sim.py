"""The simulated phone network: driver ``sim``, the default PBX side, and the test bench for the core.

:class:`SimNetwork` behaves like a small phone network inside the process:

- **extension phones** (dialled with ``attributes["extension"]``): they ring,
  then answer by themselves after ``[pbx.sim] phone_answer_delay`` (or
  ``sim:answer=N`` seconds), or ring until answered through the registry with
  ``sim:manual``;
- **numbers**: they ring and answer after ``ring_time``, unless the first
  ``[[pbx.sim.rules]]`` entry matching the whole number says busy, no-answer,
  failed or answer after N seconds (an answering rule's ``hang_up_after``
  makes the party hang up by itself that long after answering); anything
  still ringing after ``no_answer_timeout`` ends with no answer;
- **callers**: :meth:`SimNetwork.place_inbound` delivers an inbound call to the
  registry (the admin API's ``POST /api/sim/inbound`` and the optional demo
  generator, ``inbound_every``, use it).

Every simulated party (:class:`SimParty`) sends real audio (``audio``: tone,
speech-like noise or silence, or ``audio_file``) paced on the clock once
connected, and takes in what the gateway sends it: tests read
``frames_received``, ask :meth:`SimParty.heard_tone`, see the DTMF digits it
received, and make it send DTMF, hang up or lose its connection.
"""

from __future__ import annotations

import collections
import itertools
import re
import typing

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from gateway.core.errors import DriverError
from gateway.core.interfaces import IDriverLeg, IInboundDriver
from gateway.media import PCM16, RATE, BytesConsumer, MediaPorts, PacedSource, silence_payloads, speech_like, tone
from gateway.media import transcode, wav_payloads
from gateway.media.testing import tone_power

if typing.TYPE_CHECKING:  # pragma: no cover
    from gateway.core.interfaces import IInboundCalls
    from gateway.drivers.config import NumberRule

__all__ = ["SimLeg", "SimNetwork", "SimParty", "TONE_HZ", "run_clock"]

log = Logger()

NAME = "sim"
#: the frequency of ``audio = "tone"``
TONE_HZ = 425
#: seconds of received audio a party keeps for tone checks
HEARING_SECONDS = 4.0
_HEARING_BYTES = int(HEARING_SECONDS * RATE) * 2  # pcm16
_BLOCK_BYTES = 1600  # 100 ms of pcm16
#: ended parties kept for inspection
HISTORY = 200
#: the most recent ended parties that also keep what they heard (HEARING_SECONDS each); an older one
#: in the history lets its audio go, so the history holds a few hundred KB instead of up to 13 MB
HEARD_HISTORY = 20

PHONE, NUMBER, CALLER = "phone", "number", "caller"
RINGING, TALKING, ENDED = "ringing", "talking", "ended"

_PHONE_ADDRESS = re.compile(r"(?:|manual|answer=([0-9]+(?:\.[0-9]+)?))\Z")  # \Z: $ also matches before a final newline


def run_clock(clock, seconds: float) -> None:
    """Let ``seconds`` pass on a ``task.Clock`` as a reactor would: every timer runs at its own time,
    in order, so timers set by timers keep their exact times (``Clock.advance`` alone runs everything
    due at the end time). For tests driving the simulated network."""
    moment = clock.seconds() + seconds
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls() if call.getTime() <= moment]
        if not due:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, moment - clock.seconds()))


class SimParty:
    """The far end of one simulated leg: a phone, a dialled number, or a caller."""

    def __init__(self, network: "SimNetwork", kind: str, number: str | None, extension: str | None = None) -> None:
        self.network = network
        self.kind = kind
        self.number = number
        self.extension = extension
        self.state = RINGING
        self.leg: SimLeg | None = None
        self.frames_received = 0
        self.bytes_received = 0
        #: digits the gateway sent, in order, and (digit, duration_ms, started, ended) for each
        self.digits_received: list[str] = []
        self.dtmf_log: list[tuple[str, int, float, float]] = []
        #: seconds after being connected when the party hangs up by itself (None: never)
        self.hang_up_after: float | None = None
        self._heard = bytearray()
        self._payloads: typing.Iterator[bytes] | None = None

    def __repr__(self) -> str:
        return f"<SimParty {self.kind} {self.number} {self.state}>"

    # -- what the party does ---------------------------------------------------

    def answer(self) -> None:
        """Pick up (a ringing phone or number): the gateway is told the leg answered."""
        self.leg._party_answered()

    def hang_up(self) -> None:
        """Hang up: the gateway hears ``remote_hangup``."""
        self.leg._party_ended("hung_up", "remote_hangup")

    def drop(self) -> None:
        """Lose the connection: the gateway hears ``transport_lost``."""
        self.leg._party_ended("hung_up", "transport_lost")

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> defer.Deferred:
        """Press a key: the gateway is told once the tone has lasted ``duration_ms``."""
        return self.leg._party_dtmf(digit, duration_ms)

    def play(self, payloads: typing.Iterator[bytes]) -> None:
        """Send these 20 ms payloads (in the leg's codec) from now on, e.g. ``tone(600)``."""
        self._payloads = payloads
        if self.state == TALKING:
            self.leg._start_audio()

    def play_tone(self, hz: float) -> None:
        self.play(tone(hz, self.leg.port.codec))

    # -- what the party heard --------------------------------------------------

    @property
    def heard(self) -> bytes:
        """The last seconds of audio received, as pcm16 (empty for an ended party older than the
        :data:`HEARD_HISTORY` most recent ones)."""
        return bytes(self._heard)

    def tone_level(self, hz: float) -> float:
        """The share (0..1) of the recently heard energy that is at ``hz`` (measured in 100 ms blocks,
        so a tone heard in bursts counts as fully as a steady one)."""
        pcm = bytes(self._heard)
        energy = sum(x * x for x in memoryview(pcm).cast("h"))
        if not energy:
            return 0.0
        blocks = (pcm[i : i + _BLOCK_BYTES] for i in range(0, len(pcm), _BLOCK_BYTES))
        # Goertzel: for a steady tone, 2 * power * samples is the tone's energy in the block
        at_hz = sum(2 * tone_power(block, hz) * (len(block) // 2) for block in blocks)
        return min(1.0, at_hz / energy)

    def heard_tone(self, hz: float, share: float = 0.1) -> bool:
        """Whether ``hz`` carries at least ``share`` of what the party recently heard."""
        return self.tone_level(hz) >= share

    def forget_heard(self) -> None:
        """Start the hearing window afresh (e.g. before checking a change of media)."""
        self._heard.clear()

    def _hear(self, payload: bytes) -> None:
        self.frames_received += 1
        self.bytes_received += len(payload)
        codec = self.leg.port.codec
        self._heard += payload if codec == PCM16 else transcode(payload, codec, PCM16)
        excess = len(self._heard) - _HEARING_BYTES
        if excess > 0:
            del self._heard[:excess]

    def _next_payloads(self) -> typing.Iterator[bytes]:
        if self._payloads is None:
            self._payloads = self.network._audio(self.leg.port.codec)
        return self._payloads


@implementer(IDriverLeg)
class SimLeg:
    """One leg on the simulated network, between the gateway and a :class:`SimParty`."""

    driver = NAME

    def __init__(self, network: "SimNetwork", party: SimParty, direction: str, events=None) -> None:
        self.network = network
        self.party = party
        self.direction = direction
        self.events = events
        party.leg = self
        clock = network.clock
        self._clock = clock
        self.port = network.ports.port(clock, network.codec, name=f"sim:{party.number}")
        self.port.set_wire(party._hear)
        self._timers: list = []
        self._source: PacedSource | None = None

    def __repr__(self) -> str:
        return f"<SimLeg {self.direction} {self.party!r}>"

    @property
    def over(self) -> bool:
        return self.party.state == ENDED

    # -- IDriverLeg ------------------------------------------------------------

    def answer(self) -> defer.Deferred:
        if self.over:
            return defer.fail(DriverError(NAME, f"the call with {self.party.number} is over"))
        if self.party.kind == NUMBER:
            return defer.fail(DriverError(NAME, f"{self.party.number} is a dialled number; it answers by itself"))
        if self.party.kind == CALLER:
            self._connect()
        else:
            self._party_answered()
        return defer.succeed(None)

    def hangup(self, cause) -> defer.Deferred:
        self._finish()
        return defer.succeed(None)

    def send_dtmf(self, digit: str, duration_ms: int) -> defer.Deferred:
        if self.party.state != TALKING:
            return defer.fail(DriverError(NAME, f"cannot send DTMF to {self.party.number}: {self.party.state}"))
        started = self._clock.seconds()

        def ended():
            self.party.digits_received.append(digit)
            self.party.dtmf_log.append((digit, duration_ms, started, self._clock.seconds()))

        return task.deferLater(self._clock, duration_ms / 1000, ended)

    def flush(self) -> None:
        self.port.flush()

    # -- the network's side ------------------------------------------------------

    def _after(self, seconds: float, what: typing.Callable, *args) -> None:
        self._timers.append(self._clock.callLater(seconds, what, *args))

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def _report(self, method: str, *args) -> None:
        if self.events is not None:
            getattr(self.events, method)(*args)

    def _ring(self, outcome: str, after: float | None) -> None:
        """Alert now; after ``after`` seconds (None: never) the outcome happens, else no answer at the timeout."""
        self._after(0, self._report, "ringing")
        timeout = self.network.config.no_answer_timeout
        if after is None or after >= timeout:
            self._after(timeout, self._party_ended, "no_answer")
        elif outcome == "answer":
            self._after(after, self._party_answered)
        else:
            outcomes = {"busy": ("busy",), "no-answer": ("no_answer",), "failed": ("failed", "simulated failure")}
            self._after(after, self._party_ended, *outcomes[outcome])

    def _connect(self) -> None:
        self._cancel_timers()
        self.party.state = TALKING
        self._start_audio()
        if self.party.hang_up_after is not None:
            self._after(self.party.hang_up_after, self._party_ended, "hung_up", "remote_hangup")

    def _start_audio(self) -> None:
        if self._source is not None:
            self._source.disconnect()
        self._source = PacedSource(self._clock, self.party._next_payloads(), self.port.codec, name=self.port.name)
        self._source.connect(BytesConsumer(self.port.receive))

    def _party_answered(self) -> None:
        if self.party.state != RINGING:
            return
        self._connect()
        self._report("answered")

    def _party_ended(self, method: str, *args) -> None:
        if self.over:
            return
        self._finish()
        self._report(method, *args)

    def _party_dtmf(self, digit: str, duration_ms: int) -> defer.Deferred:
        if self.party.state != TALKING:
            return defer.fail(DriverError(NAME, f"{self.party.number} is not talking"))
        return task.deferLater(self._clock, duration_ms / 1000, self._report, "dtmf", digit, duration_ms)

    def _finish(self) -> None:
        if self.over:
            return
        self._cancel_timers()
        if self._source is not None:
            self._source.disconnect()
            self._source = None
        self.party.state = ENDED
        self.port.close()
        self.network._ended(self)


@implementer(IInboundDriver)
class SimNetwork:
    """The simulated phone network, and the ``sim`` driver in front of it."""

    name = NAME

    def __init__(self, clock, config, *, codec: str = PCM16, ports: MediaPorts = MediaPorts()) -> None:
        """``config``: a ``gateway.drivers.config.SimNetworkConfig``; ``ports`` makes each leg's
        MediaPort (the daemon's ``ctx.media_ports``). Inbound calls go to the core once
        :meth:`wire` has been called."""
        self.clock = clock
        self.config = config
        self.codec = codec
        self.ports = ports
        self._inbound: IInboundCalls | None = None
        self.live: list[SimLeg] = []
        self.history: collections.deque[SimParty] = collections.deque(maxlen=HISTORY)
        self._generator: task.LoopingCall | None = None
        self._noise_seeds = itertools.count(1)

    def wire(self, inbound_calls: IInboundCalls) -> None:
        """Deliver inbound calls to ``inbound_calls`` (the registry's door for drivers). Whoever
        assembles the core calls it once, after the network and the registry both exist
        (``gateway.callservice.CoreService.wire``)."""
        self._inbound = inbound_calls

    # -- IDriver ---------------------------------------------------------------

    def dial(self, address, events, caller_id=None, attributes=None) -> SimLeg:
        extension = (attributes or {}).get("extension")
        if extension is not None:
            match = _PHONE_ADDRESS.match(address or "")
            if match is None:
                raise DriverError(NAME, f"bad phone address {address!r}: expected manual or answer=SECONDS")
            leg = self._leg(SimParty(self, PHONE, extension, extension), "outbound", events)
            if address == "manual":
                leg._ring("answer", None)
            else:
                delay = float(match.group(1)) if match.group(1) else self.config.phone_answer_delay
                leg._ring("answer", delay)
            return leg
        if not address:
            raise DriverError(NAME, "no number to dial")
        leg = self._leg(SimParty(self, NUMBER, address), "outbound", events)
        rule = self._rule(address)
        if rule is None:
            leg._ring("answer", self.config.ring_time)
        else:
            leg.party.hang_up_after = rule.hang_up_after
            leg._ring(rule.outcome, rule.after)
        return leg

    def start(self) -> None:
        every = self.config.inbound_every
        if every > 0 and self._generator is None:
            self._generator = task.LoopingCall(self._demo_call)
            self._generator.clock = self.clock
            self._generator.start(every, now=False).addErrback(
                lambda f: log.failure("the demo call generator stopped", f))

    def stop(self) -> defer.Deferred:
        if self._generator is not None and self._generator.running:
            self._generator.stop()
        self._generator = None
        for leg in list(self.live):
            leg._finish()
        return defer.succeed(None)

    # -- inbound calls ---------------------------------------------------------

    def place_inbound(self, caller_id: str, did: str, *, attributes: dict | None = None,
                      hang_up_after: float | None = None) -> SimLeg:
        """A caller dials ``did``: the registry receives the call (and routes it). With
        ``hang_up_after`` the caller hangs up that many seconds after being answered."""
        inbound = self._inbound
        if inbound is None:
            raise DriverError(NAME, "no call registry to deliver the call to")
        leg = self._leg(SimParty(self, CALLER, caller_id), "inbound", None)
        leg.party.hang_up_after = hang_up_after
        leg.events = inbound.incoming(leg, caller_id=caller_id, did=did, attributes=attributes)
        return leg

    def _demo_call(self) -> None:
        try:
            self.place_inbound(self.config.inbound_caller, self.config.inbound_did,
                               hang_up_after=self.config.inbound_duration)
        except DriverError as e:
            log.warn("demo inbound call not placed: {error}", error=e)

    # -- parties -----------------------------------------------------------------

    def _leg(self, party: SimParty, direction: str, events) -> SimLeg:
        leg = SimLeg(self, party, direction, events)
        self.live.append(leg)
        return leg

    def _ended(self, leg: SimLeg) -> None:
        if leg in self.live:
            self.live.remove(leg)
        leg.party._payloads = None  # an ended party sends nothing more
        self.history.append(leg.party)
        if len(self.history) > HEARD_HISTORY:
            self.history[-HEARD_HISTORY - 1]._heard = bytearray()

    def parties(self) -> list[SimParty]:
        """Every party, ended ones (the most recent) first, live ones last."""
        return [*self.history, *(leg.party for leg in self.live)]

    def party(self, number: str) -> SimParty:
        """The most recent party with ``number`` (a phone's number is its extension id)."""
        found = [p for p in self.parties() if p.number == number]
        if not found:
            raise LookupError(f"no simulated party {number!r}")
        live = [p for p in found if p.state != ENDED]
        return (live or found)[-1]

    def _rule(self, number: str) -> NumberRule | None:
        """The first ``[[pbx.sim.rules]]`` entry matching the whole number, if any."""
        for rule in self.config.rules:
            if re.fullmatch(rule.match, number):
                return rule
        return None

    def _audio(self, codec: str) -> typing.Iterator[bytes]:
        if self.config.audio_file:
            return wav_payloads(self.config.audio_file, codec, loop=True)
        if self.config.audio == "tone":
            return tone(TONE_HZ, codec)
        if self.config.audio == "noise":
            return speech_like(codec, seed=next(self._noise_seeds))
        return silence_payloads(codec)
