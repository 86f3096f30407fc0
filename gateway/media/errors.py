"""Errors raised by the media plane (all are :class:`MediaError`)."""

__all__ = ["AppArgumentError", "MediaError", "PortBusy", "UnsupportedFormat"]


class MediaError(Exception):
    """Base of the media plane's errors."""


class UnsupportedFormat(MediaError):
    """An audio file is not in a format the media plane plays (8 kHz mono 16-bit PCM WAV)."""


class AppArgumentError(MediaError):
    """A media app was started with the wrong ports or argument."""


class PortBusy(MediaError):
    """A port's source or sink is already connected to something else."""
