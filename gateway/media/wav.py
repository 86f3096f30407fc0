"""WAV files in and out: prompts and hold music to play, recordings to write.

Only 8 kHz mono 16-bit PCM WAV is played (no resampling); any other file is
refused with :class:`~gateway.media.errors.UnsupportedFormat` naming what it
is. Recordings are written in the same format.

File access is plain blocking I/O on small local files, in 20 ms pieces
through Python's buffered files: cheap enough for the reactor thread.
"""

from __future__ import annotations

import os
import pathlib
import re
import typing
import wave

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from gateway.media.codecs import FRAME_SAMPLES, PCM16, RATE, converter, converters_to, frame_size
from gateway.media.errors import UnsupportedFormat
from gateway.media.frame import Frame
from gateway.media.interfaces import IFrameConsumer

__all__ = ["WavRecorder", "open_wav", "wav_payloads"]


def open_wav(path: str | os.PathLike[str]) -> wave.Wave_read:
    """Open ``path`` for reading; raise UnsupportedFormat unless it is 8 kHz mono 16-bit PCM."""
    try:
        reader = wave.open(os.fspath(path), "rb")
    except (wave.Error, EOFError) as e:
        raise UnsupportedFormat(f"{path}: not a PCM WAV file ({e or 'truncated'})") from None
    found = (reader.getframerate(), reader.getnchannels(), reader.getsampwidth())
    if found != (RATE, 1, 2):
        reader.close()
        rate, channels, width = found
        raise UnsupportedFormat(
            f"{path}: {rate} Hz, {channels} channel(s), {8 * width}-bit; only {RATE} Hz mono 16-bit PCM WAV"
            f" is supported (convert it, e.g. sox in.wav -r {RATE} -c 1 -b 16 out.wav)"
        )
    return reader


def wav_payloads(path: str | os.PathLike[str], codec: str = PCM16,
                 loop: bool = False) -> typing.Generator[bytes, None, None]:
    """20 ms payloads of ``codec`` from a WAV file, the last padded with silence; ``loop`` repeats it.

    The file is opened and checked now (so a bad file fails here); the
    generator closes it when exhausted or closed.
    """
    return _payloads(open_wav(path), converter(PCM16, codec), loop)


def _payloads(
    reader: wave.Wave_read, convert: typing.Callable[[bytes], bytes], loop: bool
) -> typing.Generator[bytes, None, None]:
    size = frame_size(PCM16)
    with reader:
        while True:
            data = reader.readframes(FRAME_SAMPLES)
            if not data:
                if not (loop and reader.getnframes()):
                    return
                reader.rewind()
                continue
            if len(data) < size:
                data += bytes(size - len(data))
            yield convert(data)


def _safe_stem(stem: str) -> str:
    """``stem`` usable as a file name: no separators, no leading dot, not empty."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".") or "recording"


@implementer(IFrameConsumer)
class WavRecorder:
    """An ``IConsumer`` of frames (any codec) writing them to a new 8 kHz mono 16-bit WAV file.

    The file is ``<directory>/<stem>.wav``, or ``<stem>-<n>.wav`` if that
    exists: a recording never overwrites another. Call :meth:`close` to finish it.
    """

    def __init__(self, directory: str | os.PathLike[str], stem: str) -> None:
        self.path, self._file = self._create(pathlib.Path(directory), _safe_stem(stem))
        self._wav: wave.Wave_write | None = wave.open(self._file, "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(RATE)
        self._to_pcm = converters_to(PCM16)
        self.producer: IPushProducer | None = None
        self.frames_written = 0

    @staticmethod
    def _create(directory: pathlib.Path, stem: str) -> tuple[pathlib.Path, typing.BinaryIO]:
        directory.mkdir(parents=True, exist_ok=True)
        n = 0
        while True:
            path = directory / (f"{stem}.wav" if n == 0 else f"{stem}-{n}.wav")
            try:
                return path, open(path, "xb")
            except FileExistsError:
                n += 1

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, frame: Frame) -> None:
        if self._wav is None:
            return
        self._wav.writeframesraw(self._to_pcm[frame.codec](frame.payload))
        self.frames_written += 1

    def close(self) -> None:
        """Finish the header and close the file (idempotent)."""
        if self._wav is not None:
            self._wav.close()
            self._file.close()
            self._wav = None
