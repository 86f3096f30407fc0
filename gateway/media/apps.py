"""The bundled media apps' sessions and their start functions (the plugins wrap these).

Every ``start_*`` function has the :meth:`IMediaApp.start
<gateway.media.interfaces.IMediaApp.start>` signature, checks its ports and
argument before touching anything, and returns an ``IMediaSession``:

- ``echo`` (1 port): the party hears itself.
- ``bridge`` (2 ports): each hears the other; codecs may differ (the sink
  transcodes).
- ``play`` (1 port, arg: WAV path, relative to ``state_dir`` if given): the
  file toward the party; ``finished`` gives True once it has all been played.
- ``record`` (1 port, ``state_dir`` required, arg: file name stem, default the
  port's name): what the party says, into ``<state_dir>/<stem>.wav``;
  ``finished`` gives the path.
- ``hold`` (1 port, arg: optional WAV path of music, default a hold tone): the
  tone or music toward the held party; what it says goes nowhere.
- ``mix`` (any number of ports, more added and removed while it runs): a
  conference, see :mod:`gateway.media.mixer`.

A session only claims what it uses: ``play`` the sink, ``record`` the source,
so a prompt can be played while the same port is recorded.
"""

from __future__ import annotations

import os
import pathlib
import typing

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.media.errors import AppArgumentError
from gateway.media.frame import Frame
from gateway.media.interfaces import IFrameConsumer, IMediaSession
from gateway.media.mixer import Conference
from gateway.media.port import MediaPort, check_free
from gateway.media.producers import FrameFeeder
from gateway.media.tones import HOLD_TONE, cadence
from gateway.media.wav import WavRecorder, wav_payloads

__all__ = [
    "FeedSession",
    "LinkSession",
    "RecordSession",
    "start_bridge",
    "start_echo",
    "start_hold",
    "start_mix",
    "start_play",
    "start_record",
]

log = Logger()

#: what every app takes as the files it reads or the directory it writes in
StrPath = typing.Union[str, "os.PathLike[str]"]


@implementer(IMediaSession)
class _Session:
    """Ending exactly once: ``stop()`` or the session itself ends it, then it detaches."""

    #: what ``finished`` gives when the session is stopped from outside
    stopped_result: object = None

    def __init__(self) -> None:
        self.finished: Deferred[object] = Deferred()

    def stop(self) -> None:
        self._end(self.stopped_result)

    def _end(self, result: object) -> None:
        if self.finished.called:
            return
        self._detach()
        self.finished.callback(result)

    def _detach(self) -> None:
        raise NotImplementedError


class LinkSession(_Session):
    """Each ``(from_port, to_port)`` link sends what ``from_port``'s party says to ``to_port``'s party."""

    def __init__(self, links: typing.Sequence[tuple[MediaPort, MediaPort]]) -> None:
        super().__init__()
        self.links = list(links)
        for src, dst in self.links:
            src.source.connect(dst.sink)

    def _detach(self) -> None:
        for src, dst in self.links:
            src.source.disconnect()
            dst.flush()


@implementer(IFrameConsumer)
class _Discard:
    """Takes a party's frames and drops them (a held party's voice goes nowhere)."""

    def __init__(self) -> None:
        self.frames_discarded = 0

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, frame: Frame) -> None:
        self.frames_discarded += 1


class FeedSession(_Session):
    """Plays ``payloads`` (in the port's codec) to ``port``; ``finished`` gives True once all were played.

    With ``silence_party`` the party's own audio is claimed and discarded
    (hold); stopped early, ``finished`` gives False.
    """

    stopped_result = False

    def __init__(self, port: MediaPort, payloads: typing.Iterator[bytes], silence_party: bool = False) -> None:
        super().__init__()
        self.port = port
        self._payloads = payloads
        self.discard = _Discard() if silence_party else None
        self._feeder = FrameFeeder(payloads, port.codec, name=port.name)
        self._feeder.done.addCallbacks(self._fed, self._failed)
        if self.discard is not None:
            port.source.connect(self.discard)
        self._feeder.connect(port.sink)

    def _fed(self, _: None) -> None:
        self.port.playout.checkpoint().addCallback(lambda _: self._end(True))

    def _failed(self, failure: Failure) -> None:
        # already logged by the feeder, with the source named
        self._end(False)

    def _detach(self) -> None:
        self._feeder.disconnect()
        close = getattr(self._payloads, "close", None)
        if close is not None:
            close()
        if self.discard is not None:
            self.port.source.disconnect()
        self.port.flush()


class RecordSession(_Session):
    """Writes what ``port``'s party says to a WAV file; ``finished`` gives its path."""

    def __init__(self, port: MediaPort, recorder: WavRecorder) -> None:
        super().__init__()
        self.port = port
        self.recorder = recorder
        self.stopped_result = recorder.path
        port.source.connect(recorder)

    def _detach(self) -> None:
        self.port.source.disconnect()
        self.recorder.close()
        log.info("recorded {frames} frames of {port} to {path}", frames=self.recorder.frames_written,
                 port=self.port, path=self.recorder.path)


def _ports(app: str, ports: typing.Iterable[MediaPort], count: int | None = None) -> list[MediaPort]:
    """``ports`` as a list, checked: ``count`` of them (any number if None), all different."""
    checked = list(ports)
    if count is not None and len(checked) != count:
        raise AppArgumentError(f"{app} takes {count} port(s), not {len(checked)}")
    if len(set(map(id, checked))) != len(checked):
        raise AppArgumentError(f"{app} needs different ports")
    return checked


def _no_arg(app: str, arg: object) -> None:
    if arg is not None:
        raise AppArgumentError(f"{app} takes no argument, not {arg!r}")


def _file(app: str, arg: StrPath | None, state_dir: StrPath | None) -> pathlib.Path:
    """The file named by ``arg``; a relative name is taken under ``state_dir`` when one is given."""
    if not arg:
        raise AppArgumentError(f"{app} needs a file name argument")
    path = pathlib.Path(os.fspath(arg))
    return path if path.is_absolute() or state_dir is None else pathlib.Path(state_dir) / path


def start_echo(
    ports: typing.Sequence[MediaPort], clock: IReactorTime, arg: str | None = None, state_dir: StrPath | None = None
) -> LinkSession:
    (port,) = _ports("echo", ports, 1)
    _no_arg("echo", arg)
    check_free("echo", [port], source=True, sink=True)
    return LinkSession([(port, port)])


def start_bridge(
    ports: typing.Sequence[MediaPort], clock: IReactorTime, arg: str | None = None, state_dir: StrPath | None = None
) -> LinkSession:
    a, b = _ports("bridge", ports, 2)
    _no_arg("bridge", arg)
    check_free("bridge", [a, b], source=True, sink=True)
    return LinkSession([(a, b), (b, a)])


def start_play(
    ports: typing.Sequence[MediaPort], clock: IReactorTime, arg: str | None = None, state_dir: StrPath | None = None
) -> FeedSession:
    (port,) = _ports("play", ports, 1)
    path = _file("play", arg, state_dir)
    check_free("play", [port], source=False, sink=True)
    return FeedSession(port, wav_payloads(path, port.codec))


def start_record(
    ports: typing.Sequence[MediaPort], clock: IReactorTime, arg: str | None = None, state_dir: StrPath | None = None
) -> RecordSession:
    (port,) = _ports("record", ports, 1)
    if state_dir is None:
        raise AppArgumentError("record needs a state_dir to write recordings in")
    check_free("record", [port], source=True, sink=False)
    return RecordSession(port, WavRecorder(state_dir, arg or port.name or "recording"))


def start_hold(
    ports: typing.Sequence[MediaPort], clock: IReactorTime, arg: str | None = None, state_dir: StrPath | None = None
) -> FeedSession:
    (port,) = _ports("hold", ports, 1)
    check_free("hold", [port], source=True, sink=True)
    if arg is None:
        freqs, on_ms, off_ms = HOLD_TONE
        payloads = cadence(freqs, on_ms, off_ms, port.codec)
    else:
        payloads = wav_payloads(_file("hold", arg, state_dir), port.codec, loop=True)
    return FeedSession(port, payloads, silence_party=True)


def start_mix(
    ports: typing.Sequence[MediaPort], clock: IReactorTime, arg: str | None = None, state_dir: StrPath | None = None
) -> Conference:
    parties = _ports("mix", ports)
    _no_arg("mix", arg)
    check_free("mix", parties, source=True, sink=True)
    conference = Conference(clock)
    for port in parties:
        conference.add(port)
    return conference
