"""N-party conference mixing: each party hears the sum of the others, never itself.

A :class:`Conference` takes one frame from each party every 20 ms of its
clock (a party with nothing queued is silent this round), sums them in 32-bit
so nothing overflows on the way, subtracts each speaker's own contribution
(mix-minus) and saturates the result to 16 bits. Parties who did not speak all
hear the same full sum, computed once. Parties are added and removed while it
runs; with nobody speaking it stops scheduling until a frame comes.

Each party's input is a small bounded queue (the usual policy: pause the
party's source at high water, drop the oldest if frames still come); its drops
go to the party port's drop hook as ``"mix"`` (the metrics). Toward a
party the conference is a push producer of its sink: while that sink pauses
it, the party's share of the mix is skipped, never buffered: the conference
is real time and one slow leg must not hold up the others.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from zope.interface import implementer

from gateway.media.buffers import FrameQueue
from gateway.media.codecs import PCM16, audioop, converters_to  # audioop imported once, without its warning
from gateway.media.errors import AppArgumentError
from gateway.media.frame import Frame, Stamper
from gateway.media.interfaces import IConference, IFrameConsumer
from gateway.media.pacing import Pacer
from gateway.media.port import MediaPort, check_free

__all__ = ["Conference"]

#: frames a party may have waiting for the mixer (60 ms)
JITTER_FRAMES = 3


def _widen(pcm: bytes) -> bytes:
    """pcm16 -> the same sample values as 32-bit samples."""
    return audioop.mul(audioop.lin2lin(pcm, 2, 4), 4, 1 / 65536)


def _narrow(wide: bytes) -> bytes:
    """32-bit sample values -> pcm16, saturated to the 16-bit range."""
    # Scaled by 2**16 with saturation at the 32-bit bounds, the top half is the saturated 16-bit value.
    return audioop.lin2lin(audioop.mul(wide, 4, 65536), 4, 2)


@implementer(IFrameConsumer, IPushProducer)
class _Party:
    """One party: consumer of its port's frames (as pcm16), producer toward its port's sink."""

    #: the mix comes at the conference's 20 ms pace: the sink's jitter buffer applies (gateway.media.playout)
    realtime = True

    def __init__(self, conference: Conference, port: MediaPort) -> None:
        self.port = port
        self.queue: FrameQueue[bytes] = FrameQueue(JITTER_FRAMES, port.drop_hook("mix"))
        self.stamp = Stamper(PCM16)
        self.hears = True
        #: this round's frame as 32-bit samples, or None if the party was silent
        self.wide: bytes | None = None
        self._conference = conference
        self._to_pcm = converters_to(PCM16)

    # consumer of the party's source
    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.queue.set_producer(producer)

    def unregisterProducer(self) -> None:
        self.queue.set_producer(None)

    def write(self, frame: Frame) -> None:
        self.queue.push(self._to_pcm[frame.codec](frame.payload))
        self._conference.wake()

    # producer toward the party's sink
    def pauseProducing(self) -> None:
        self.hears = False

    def resumeProducing(self) -> None:
        self.hears = True

    def stopProducing(self) -> None:
        self._conference.remove(self.port)


@implementer(IConference)
class Conference:
    """A running mix of any number of ports (see the module docstring)."""

    def __init__(self, clock: IReactorTime, name: str = "mix") -> None:
        self.name = name
        self.finished: Deferred[None] = Deferred()
        self._parties: dict[MediaPort, _Party] = {}  # in joining order
        self._pacer = Pacer(clock, self._tick, name=name)

    @property
    def ports(self) -> list[MediaPort]:
        return list(self._parties)

    def add(self, port: MediaPort) -> None:
        if self.finished.called:
            raise AppArgumentError(f"{self.name}: the conference has ended")
        if port in self._parties:
            raise AppArgumentError(f"{self.name}: {port!r} is already a party")
        check_free(self.name, [port], source=True, sink=True)
        party = _Party(self, port)
        port.sink.registerProducer(party, True)
        port.source.connect(party)
        self._parties[port] = party

    def remove(self, port: MediaPort) -> None:
        """Let ``port`` go (a no-op if it is not a party: a closed port has left by itself)."""
        party = self._parties.pop(port, None)
        if party is None:
            return
        port.source.disconnect()
        if port.sink.producer is party:
            port.sink.unregisterProducer()
        port.sink.flush()

    def stop(self) -> None:
        for port in list(self._parties):
            self.remove(port)
        self._pacer.stop()
        if not self.finished.called:
            self.finished.callback(None)

    def wake(self) -> None:
        """A party has a frame: make sure the mixer is ticking."""
        self._pacer.start()

    def _tick(self) -> bool:
        parties = self._parties.values()
        total: bytes | None = None
        speakers = 0
        for party in parties:
            if party.queue:
                party.wide = wide = _widen(party.queue.pop())
                total = wide if total is None else audioop.add(total, wide, 4)
                speakers += 1
            else:
                party.wide = None
        if not speakers or total is None:  # total is None only without speakers
            return False
        everything: bytes | None = None  # what every non-speaker hears, made on first use
        for party in parties:
            if not party.hears:
                continue
            if party.wide is None:
                if everything is None:
                    everything = _narrow(total)
                heard = everything
            elif speakers > 1:
                heard = _narrow(audioop.add(total, audioop.mul(party.wide, 4, -1), 4))
            else:
                continue  # the only speaker: there is nothing else to hear
            party.port.sink.write(party.stamp(heard))
        return True
