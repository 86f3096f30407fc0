"""The unit of audio in the media plane: one RTP-like frame, and the stamper that numbers them.

A :class:`Frame` carries what an RTP packet would (codec, sample rate,
sequence number, timestamp, marker, payload), so a SIP/RTP driver can be added
later without touching the core. It is a slotted attrs class because one is
made for every 20 ms of every leg.
"""

from __future__ import annotations

import attrs

from gateway.media.codecs import FRAME_SAMPLES, RATE, check_codec

__all__ = ["Frame", "Stamper"]


@attrs.define(slots=True, weakref_slot=False)
class Frame:
    """One frame of audio.

    ``seq`` wraps at 2**16 and ``ts`` (in samples) at 2**32, as in RTP;
    ``marker`` is set on the first frame of a stream (a talkspurt).
    """

    codec: str
    rate: int
    seq: int
    ts: int
    marker: bool
    payload: bytes


class Stamper:
    """Turns successive payloads of one stream into numbered :class:`Frame` objects.

    Every payload is taken to be one frame (20 ms): the timestamp advances by
    the samples of one frame whatever the payload's length.
    """

    __slots__ = ("codec", "seq", "ts", "marker")

    def __init__(self, codec: str) -> None:
        self.codec = check_codec(codec)
        self.seq = 0
        self.ts = 0
        self.marker = True

    def __call__(self, payload: bytes) -> Frame:
        frame = Frame(self.codec, RATE, self.seq, self.ts, self.marker, payload)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + FRAME_SAMPLES) & 0xFFFFFFFF
        self.marker = False
        return frame

    def restart(self) -> None:
        """The next frame starts a new talkspurt (its marker is set)."""
        self.marker = True
