"""Generated audio: tones, cadences, in-band DTMF, speech-like noise and silence.

Each generator yields 20 ms payloads in a given codec, to be wrapped in frames
by a producer (:class:`~gateway.media.producers.PacedSource` for a simulated
party, :class:`~gateway.media.producers.FrameFeeder` toward a playout).
Steady tones are synthesised once per period (at most one second at 8 kHz for
whole-hertz frequencies) and then cycled, so they cost nothing per frame.
"""

from __future__ import annotations

import array
import itertools
import math
import random
import typing

from gateway.media.codecs import FRAME_MS, FRAME_SAMPLES, PCM16, RATE, converter, frame_size, silence
from gateway.media.frame import Frame, Stamper

__all__ = [
    "DTMF_FREQUENCIES",
    "HOLD_TONE",
    "cadence",
    "dtmf_frames",
    "silence_payloads",
    "speech_like",
    "synthesize",
    "tone",
]

#: digit -> (low group Hz, high group Hz), ITU-T Q.23
DTMF_FREQUENCIES = {
    digit: (low, high)
    for row, low in zip(("123A", "456B", "789C", "*0#D"), (697, 770, 852, 941))
    for digit, high in zip(row, (1209, 1336, 1477, 1633))
}

#: the default hold tone: (frequencies in Hz, ms on, ms off)
HOLD_TONE = ((425,), 400, 2600)


def synthesize(freqs: typing.Sequence[float], samples: int, amplitude: float = 0.3) -> bytes:
    """``samples`` of pcm16: the sum of sines at ``freqs``, each of peak ``amplitude`` (full scale 1)."""
    peak = amplitude * 32767
    steps = [2 * math.pi * f / RATE for f in freqs]
    return array.array("h", (round(peak * sum(math.sin(step * n) for step in steps)) for n in range(samples))).tobytes()


def _split(pcm: bytes, codec: str) -> list[bytes]:
    """Cut pcm16 audio (a whole number of frames) into 20 ms payloads of ``codec``."""
    convert = converter(PCM16, codec)
    size = frame_size(PCM16)
    return [convert(pcm[offset : offset + size]) for offset in range(0, len(pcm), size)]


def _period_frames(freqs: typing.Sequence[int]) -> int:
    """Frames after which a sum of whole-hertz sines repeats exactly."""
    period = 1  # samples
    for f in freqs:
        period = math.lcm(period, RATE // math.gcd(RATE, f))
    return math.lcm(period, FRAME_SAMPLES) // FRAME_SAMPLES


def _whole_hertz(freqs: typing.Sequence[float]) -> tuple[int, ...]:
    if not freqs or any(not 0 < f < RATE / 2 for f in freqs):
        raise ValueError(f"tone frequencies must be between 0 and {RATE // 2} Hz, not {list(freqs)}")
    return tuple(round(f) for f in freqs)


def tone(freqs: float | typing.Sequence[float], codec: str = PCM16, amplitude: float = 0.3) -> typing.Iterator[bytes]:
    """An endless steady tone (one frequency, or the sum of several), rounded to whole hertz."""
    whole = _whole_hertz([freqs] if isinstance(freqs, (int, float)) else freqs)
    pcm = synthesize(whole, _period_frames(whole) * FRAME_SAMPLES, amplitude)
    return itertools.cycle(_split(pcm, codec))


def cadence(
    freqs: typing.Sequence[float], on_ms: int, off_ms: int, codec: str = PCM16, amplitude: float = 0.3
) -> typing.Iterator[bytes]:
    """An endless on/off tone (ring-back, hold beeps); ``on_ms`` and ``off_ms`` round to whole frames."""
    on, off = round(on_ms / FRAME_MS), round(off_ms / FRAME_MS)
    if on < 1 or off < 0:
        raise ValueError(f"a cadence needs at least one frame of tone, not on={on_ms} ms off={off_ms} ms")
    pcm = synthesize(_whole_hertz(freqs), on * FRAME_SAMPLES, amplitude)
    return itertools.cycle(_split(pcm, codec) + [silence(codec)] * off)


def dtmf_frames(digit: str, duration_ms: int = 100, codec: str = PCM16) -> list[Frame]:
    """In-band DTMF: ``duration_ms`` (rounded up to whole 20 ms frames) of ``digit``'s dual tone.

    ``digit`` is one of ``0-9 * # A-D``; the frames are numbered from 0 and
    the first carries the marker. Write them to ``port.sink`` and wait for
    ``port.playout.checkpoint()`` to know when the tone has been played; while
    another producer (a bridge) feeds that sink, its frames interleave with
    the tone's, so suspend it for the digit.
    """
    try:
        pair = DTMF_FREQUENCIES[digit.upper()]
    except (KeyError, AttributeError):
        raise ValueError(f"not a DTMF digit: {digit!r} (expected one of 0-9 * # A-D)") from None
    if duration_ms <= 0:
        raise ValueError(f"DTMF duration must be positive, not {duration_ms} ms")
    frames = -(-duration_ms // FRAME_MS)
    stamp = Stamper(codec)
    return [stamp(payload) for payload in _split(synthesize(pair, frames * FRAME_SAMPLES, 0.35), codec)]


def silence_payloads(codec: str = PCM16) -> typing.Iterator[bytes]:
    """Endless digital silence."""
    return itertools.repeat(silence(codec))


def speech_like(codec: str = PCM16, seed: int | None = None) -> typing.Iterator[bytes]:
    """Endless noise with the rhythm of speech: low-passed bursts of 100-400 ms between pauses."""
    rng = random.Random(seed)
    convert = converter(PCM16, codec)
    smoothed = 0.0
    while True:
        frames = rng.randint(5, 20)
        level = rng.uniform(2000, 9000)
        for index in range(frames):
            # a raised-cosine envelope over the burst, like a syllable
            gain = level * (0.5 - 0.5 * math.cos(2 * math.pi * (index + 0.5) / frames))
            samples = array.array("h", bytes(frame_size(PCM16)))
            for n in range(FRAME_SAMPLES):
                smoothed += 0.45 * (rng.gauss(0.0, gain) - smoothed)
                samples[n] = max(-32768, min(32767, round(smoothed)))
            yield convert(samples.tobytes())
        yield from itertools.repeat(silence(codec), rng.randint(3, 15))
