"""Audio helpers for the peer simulators: test tones, WAV files, G.711, 20 ms pacing, echo checks.

Simulated telephony peers need *real* audio to send and a way to tell whether what came back is what
they sent. Everything here is 8 kHz mono; the linear format is 16-bit signed little-endian PCM
("pcm16"), the wire formats are pcm16, G.711 u-law and A-law. This module is deliberately independent
of ``gateway.media``: a simulator must not share code with the system it tests.
"""

import array
import functools
import hashlib
import math
import random
import sys
import warnings
import wave

import attrs

with warnings.catch_warnings():
    # audioop is deprecated from 3.11 and removed in 3.13, where the audioop-lts package provides it.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE_RATE = 8000
FRAME_SECONDS = 0.020
_PCM16_WIDTH = 2
#: seconds; timer callbacks this close to a deadline count as on time
_SCHEDULE_EPSILON = 1e-6


@attrs.frozen
class Codec:
    """A wire audio format: its name as the OptimaCCS API spells it and its byte layout."""

    name: str
    sample_width: int
    #: one sample of digital silence in this format
    silence: bytes

    @property
    def bytes_per_second(self):
        return SAMPLE_RATE * self.sample_width

    @property
    def frame_bytes(self):
        """Bytes in one 20 ms frame: 320 for pcm16, 160 for the G.711 laws."""
        return round(self.bytes_per_second * FRAME_SECONDS)

    def encode(self, pcm16):
        """Encode 16-bit linear PCM into this format."""
        return _ENCODERS[self.name](pcm16)

    def decode(self, data):
        """Decode data in this format into 16-bit linear PCM."""
        return _DECODERS[self.name](data)


_ENCODERS = {
    "pcm16": bytes,
    "ulaw": lambda pcm: audioop.lin2ulaw(pcm, _PCM16_WIDTH),
    "alaw": lambda pcm: audioop.lin2alaw(pcm, _PCM16_WIDTH),
}
_DECODERS = {
    "pcm16": bytes,
    "ulaw": lambda data: audioop.ulaw2lin(data, _PCM16_WIDTH),
    "alaw": lambda data: audioop.alaw2lin(data, _PCM16_WIDTH),
}

CODECS = {
    "pcm16": Codec("pcm16", 2, b"\x00\x00"),
    "ulaw": Codec("ulaw", 1, b"\xff"),
    "alaw": Codec("alaw", 1, b"\xd5"),
}


def codec_named(name):
    """The :class:`Codec` called ``name``; ``ValueError`` for a name the API does not define."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown codec {name!r} (expected one of {', '.join(CODECS)})") from None


def _to_pcm16(samples):
    pcm = array.array("h", samples)
    if sys.byteorder == "big":
        pcm.byteswap()
    return pcm.tobytes()


@functools.lru_cache(maxsize=8)
def tone(seconds, frequency=440.0, level=0.3, noise=64, seed=0):
    """A sine tone as pcm16, with a faint seeded noise floor.

    The noise (+-``noise`` LSB, about -54 dBFS by default) makes every frame of the signal distinct, so
    an echo check can tell a dropped, repeated or reordered frame from a correct stream, which it could
    not with a pure (periodic) tone.
    """
    rng = random.Random(seed)
    peak = level * 32767
    count = round(seconds * SAMPLE_RATE)
    step = 2 * math.pi * frequency / SAMPLE_RATE
    return _to_pcm16(
        max(-32768, min(32767, round(peak * math.sin(step * n)) + rng.randint(-noise, noise)))
        for n in range(count)
    )


def read_wav(path):
    """The samples of a WAV file as pcm16; ``ValueError`` unless it is 8 kHz mono 16-bit PCM."""
    try:
        with wave.open(str(path), "rb") as wav:
            shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
            if shape != (SAMPLE_RATE, 1, _PCM16_WIDTH):
                raise ValueError(
                    f"{path}: need 8000 Hz mono 16-bit PCM, got {shape[0]} Hz,"
                    f" {shape[1]} channel(s), {8 * shape[2]}-bit"
                )
            return wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as error:
        raise ValueError(f"{path}: not a PCM WAV file ({error})") from None


def write_wav(path, pcm16):
    """Write pcm16 samples as an 8 kHz mono WAV file."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(_PCM16_WIDTH)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm16)


def frames(pcm16, codec, loop=False):
    """Endless 20 ms frames of ``pcm16`` encoded in ``codec``.

    The last frame is padded with silence; then the signal is repeated if ``loop``, else followed by
    silence: a phone line never stops carrying audio.
    """
    size = codec.frame_bytes
    quiet = codec.silence * (size // codec.sample_width)
    encoded = codec.encode(pcm16)
    encoded += quiet[:-len(encoded) % size]
    while True:
        for start in range(0, len(encoded), size):
            yield encoded[start:start + size]
        if not (loop and encoded):
            break
    while True:
        yield quiet


class Pacer:
    """Calls ``tick(count)`` on a deadline schedule: tick n is due at start + n * interval.

    The schedule is anchored once, at :meth:`start`, so late timer callbacks never make it drift: a late call
    gets the number of ticks that fell due since the previous one (``count`` > 1) and the next call is
    aimed at the next deadline, not at now + interval. :meth:`stop` may be called from inside ``tick``.
    """

    def __init__(self, clock, interval, tick):
        self._clock = clock
        self._interval = interval
        self._tick = tick
        self._call = None
        self._anchor = 0.0
        self._done = 0
        self.running = False

    def start(self):
        """Start (or restart, re-anchored at now) with a tick due immediately."""
        self.stop()
        self.running = True
        self._anchor = self._clock.seconds()
        self._done = 0
        self._run()

    def stop(self):
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _run(self):
        self._call = None
        now = self._clock.seconds()
        due = int((now - self._anchor + _SCHEDULE_EPSILON) / self._interval) + 1
        count, self._done = due - self._done, due
        if count > 0:
            self._tick(count)
        if self.running:
            # aim a hair early: a clock summing float steps may land just short of the deadline
            delay = self._anchor + self._done * self._interval - self._clock.seconds() - _SCHEDULE_EPSILON / 2
            self._call = self._clock.callLater(max(0.0, delay), self._run)


@attrs.frozen
class EchoMatch:
    """The outcome of :func:`compare_echo`."""

    #: whether the received stream is a contiguous piece of the sent one
    matched: bool
    #: where in the sent stream the echo begins
    sent_offset: int
    #: leading bytes of silence skipped in the received stream
    received_offset: int
    #: bytes compared (all the received stream after its leading silence)
    compared: int
    #: SHA-256 of the compared part of each stream
    sent_digest: str
    received_digest: str
    #: whole sent frames missing from the echo (always 0 for the strict comparison)
    skipped_frames: int = 0


def _leading_silence(data, codec):
    samples = len(data) // codec.sample_width
    for index in range(samples):
        start = index * codec.sample_width
        if data[start:start + codec.sample_width] != codec.silence:
            return start
    return samples * codec.sample_width


def _aligned_find(haystack, needle, width):
    position = haystack.find(needle)
    while position > 0 and position % width:
        position = haystack.find(needle, position + 1)
    return position


def compare_echo(sent, received, codec, probe_bytes=320, max_skipped=0):
    """Whether ``received`` is an echo of ``sent``, tolerant of a leading offset.

    The received stream may start with silence (a jitter buffer filling up) and at any point of the sent
    stream (echo switched on after the call started), and may stop early; but every byte after its
    leading silence must equal the sent stream from the point where they first agree.

    With ``max_skipped`` > 0 the echo may also miss up to that many whole frames (a jitter buffer trimming
    a backlog): see :func:`compare_echo_frames`; ``skipped_frames`` says how many were missing.
    """
    if max_skipped > 0:
        match = compare_echo_frames(sent, received, codec)
        return attrs.evolve(match, matched=match.matched and match.skipped_frames <= max_skipped)
    skip = _leading_silence(received, codec)
    rest = bytes(received[skip:])
    sent = bytes(sent)
    offset = _aligned_find(sent, rest[:probe_bytes], codec.sample_width) if rest else -1
    compared = sent[offset:offset + len(rest)] if offset >= 0 else b""
    return EchoMatch(
        matched=bool(rest) and compared == rest,
        sent_offset=offset,
        received_offset=skip,
        compared=len(rest),
        sent_digest=hashlib.sha256(compared).hexdigest(),
        received_digest=hashlib.sha256(rest).hexdigest(),
    )


def compare_echo_frames(sent, received, codec):
    """Whether ``received`` is an echo of ``sent`` that may lack whole frames; how many it lacks.

    As :func:`compare_echo`, the received stream may start with silence and at any point of the sent
    stream. From its first frame on, the received stream cut into frames of ``codec.frame_bytes`` (the
    last one may be short: a prefix) must be an in-order subsequence of the sent stream cut the same way
    from where they first agree: every received frame equal to a sent frame, order kept, none repeated.
    ``skipped_frames`` counts the sent frames left out between the first and the last frame received.
    """
    size = codec.frame_bytes
    skip = _leading_silence(received, codec)
    rest = bytes(received[skip:])
    sent = bytes(sent)
    offset = _aligned_find(sent, rest[:size], codec.sample_width) if rest else -1
    kept = []
    position = offset  # where in ``sent`` the next received frame may start
    skipped = 0
    matched = offset >= 0
    if matched:
        for start in range(0, len(rest), size):
            piece = rest[start:start + size]
            gap = 0
            while position < len(sent) and sent[position:position + len(piece)] != piece:
                position += size
                gap += 1
            if position >= len(sent):
                matched = False
                break
            skipped += gap
            kept.append(sent[position:position + len(piece)])
            position += size
    compared = b"".join(kept)
    return EchoMatch(
        matched=matched,
        sent_offset=offset,
        received_offset=skip,
        compared=len(rest),
        sent_digest=hashlib.sha256(compared).hexdigest(),
        received_digest=hashlib.sha256(rest).hexdigest(),
        skipped_frames=skipped,
    )
