"""Fakes and probes for testing code that uses the media plane (no mocks of its internals needed).

- :class:`FrameCollector`: an ``IConsumer`` of frames that keeps them, and can
  stop and resume reading (pausing and resuming its producer).
- :func:`tone_power`: the Goertzel power of one frequency in pcm16 audio, to
  check which tones a stream carries.
"""

from __future__ import annotations

import array
import math

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from gateway.media.codecs import PCM16, RATE, transcode
from gateway.media.frame import Frame
from gateway.media.interfaces import IFrameConsumer

__all__ = ["FrameCollector", "tone_power"]


@implementer(IFrameConsumer)
class FrameCollector:
    """Keeps every frame written to it; ``stop_reading()`` pauses the registered producer."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.producer: IPushProducer | None = None

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("FrameCollector already has a producer")
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, frame: Frame) -> None:
        self.frames.append(frame)

    def stop_reading(self) -> None:
        self._producer().pauseProducing()

    def resume_reading(self) -> None:
        self._producer().resumeProducing()

    def _producer(self) -> IPushProducer:
        if self.producer is None:
            raise RuntimeError("FrameCollector has no producer to pause or resume")
        return self.producer

    def pcm(self) -> bytes:
        """Everything received, as pcm16."""
        return b"".join(transcode(frame.payload, frame.codec, PCM16) for frame in self.frames)


def tone_power(pcm: bytes, freq: float) -> float:
    """Goertzel power of ``freq`` in pcm16 ``pcm``, normalised by the number of samples squared."""
    samples = array.array("h", pcm)
    coeff = 2 * math.cos(2 * math.pi * freq / RATE)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - coeff * s1 * s2) / max(1, len(samples)) ** 2
