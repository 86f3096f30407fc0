"""The three telephony codecs the gateway carries, and conversion between them.

All audio is 8 kHz mono. ``pcm16`` is 16-bit signed little-endian linear PCM
(320 bytes per 20 ms), ``ulaw`` and ``alaw`` are G.711 (160 bytes per 20 ms).
Conversion uses the standard ``audioop`` module (on Python >= 3.13 the
``audioop-lts`` package provides it under the same name). G.711 <-> G.711 goes
through a 256-entry translation table, so it costs one ``bytes.translate``.

Callers on a hot path resolve a converter once with :func:`converter` and call
it per frame (a consumer of frames in any codec indexes :func:`converters_to`
with each frame's codec); :func:`transcode` is the one-shot form.

``audioop`` (and the mixer and tone synthesis built on it) work in the host's
byte order, which is ``pcm16``'s little-endian on every supported host
(x86-64, AArch64); importing this module on a big-endian host fails loudly.
"""

from __future__ import annotations

import sys
import typing
import warnings

with warnings.catch_warnings():
    # Python 3.11/3.12 warn that audioop leaves the stdlib in 3.13; audioop-lts
    # provides the same module from then on (a dependency in setup.cfg).
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop as audioop  # re-exported: the mixer takes it from here, without the warning

if sys.byteorder != "little":  # pragma: no cover - no big-endian host is supported
    raise ImportError("gateway.media needs a little-endian host: pcm16 is handled in native byte order")

__all__ = [
    "ALAW",
    "CODECS",
    "FRAME_MS",
    "FRAME_SAMPLES",
    "PCM16",
    "RATE",
    "ULAW",
    "check_codec",
    "converter",
    "converters_to",
    "frame_size",
    "silence",
    "transcode",
]

PCM16 = "pcm16"
ULAW = "ulaw"
ALAW = "alaw"
#: codec name -> bytes per sample
CODECS = {PCM16: 2, ULAW: 1, ALAW: 1}
#: the sample rate of every codec here (samples per second)
RATE = 8000
#: the frame duration used everywhere in the media plane
FRAME_MS = 20
#: samples in one frame
FRAME_SAMPLES = RATE * FRAME_MS // 1000

#: the byte value that encodes linear 0 (silence) in each codec
_SILENT_BYTE = {PCM16: 0x00, ULAW: 0xFF, ALAW: 0xD5}


def check_codec(codec: str) -> str:
    """Return ``codec`` if it is known, else raise ``ValueError`` naming the choices."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {', '.join(sorted(CODECS))}")
    return codec


def frame_size(codec: str, ms: int = FRAME_MS) -> int:
    """Bytes of ``ms`` milliseconds of ``codec`` audio (20 ms: pcm16 320, G.711 160)."""
    samples, remainder = divmod(RATE * ms, 1000)
    if remainder:
        raise ValueError(f"{ms} ms is not a whole number of samples at {RATE} Hz")
    return samples * CODECS[check_codec(codec)]


def silence(codec: str, ms: int = FRAME_MS) -> bytes:
    """``ms`` milliseconds of digital silence in ``codec``."""
    return bytes([_SILENT_BYTE[check_codec(codec)]]) * frame_size(codec, ms)


def _identity(payload: bytes) -> bytes:
    return payload


def _g711_table(decode: typing.Callable[[bytes, int], bytes], encode: typing.Callable[[bytes, int], bytes]) -> bytes:
    """A ``bytes.translate`` table mapping each byte of one G.711 law to the other."""
    return bytes(encode(decode(bytes([value]), 2), 2)[0] for value in range(256))


_ULAW_TO_ALAW = _g711_table(audioop.ulaw2lin, audioop.lin2alaw)
_ALAW_TO_ULAW = _g711_table(audioop.alaw2lin, audioop.lin2ulaw)

_CONVERTERS: dict[str, dict[str, typing.Callable[[bytes], bytes]]] = {
    PCM16: {
        PCM16: _identity,
        ULAW: lambda payload: audioop.lin2ulaw(payload, 2),
        ALAW: lambda payload: audioop.lin2alaw(payload, 2),
    },
    ULAW: {
        PCM16: lambda payload: audioop.ulaw2lin(payload, 2),
        ULAW: _identity,
        ALAW: lambda payload: payload.translate(_ULAW_TO_ALAW),
    },
    ALAW: {
        PCM16: lambda payload: audioop.alaw2lin(payload, 2),
        ULAW: lambda payload: payload.translate(_ALAW_TO_ULAW),
        ALAW: _identity,
    },
}


def converter(src: str, dst: str) -> typing.Callable[[bytes], bytes]:
    """The function turning ``src`` payloads into ``dst`` payloads (identity if equal)."""
    return _CONVERTERS[check_codec(src)][check_codec(dst)]


def transcode(payload: bytes, src: str, dst: str) -> bytes:
    """``payload`` (``src`` codec) re-encoded as ``dst``; returned unchanged if they match."""
    return converter(src, dst)(payload)


def converters_to(dst: str) -> dict[str, typing.Callable[[bytes], bytes]]:
    """Source codec -> the function turning its payloads into ``dst`` payloads.

    For a consumer of frames in any codec on a hot path: one lookup per frame,
    ``convert[frame.codec](frame.payload)``, with nothing resolved or remembered.
    """
    check_codec(dst)
    return {src: table[dst] for src, table in _CONVERTERS.items()}
