"""The plug point for media apps: :class:`IMediaApp`, and the sessions they start.

Bundled apps are ``twisted.plugin`` plugins in ``plugins/media_apps.py``,
found with ``twisted.plugin.getPlugins(IMediaApp, gateway.plugins)``; an
operator's own apps are modules providing ``IPlugin`` and ``IMediaApp`` in a
directory listed in ``[gateway] plugin_dirs``.
"""

from __future__ import annotations

import os
import typing

from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from zope.interface import Attribute, Interface

if typing.TYPE_CHECKING:
    from gateway.media.frame import Frame
    from gateway.media.port import MediaPort

__all__ = ["IConference", "IFrameConsumer", "IMediaApp", "IMediaSession"]


class IFrameConsumer(IConsumer):
    """An ``IConsumer`` whose ``write`` takes :class:`~gateway.media.frame.Frame` objects, fed by push producers.

    What every frame consumer of the media plane provides (a port's sink, the
    mixer's parties, a recorder, :class:`~gateway.media.producers.BytesConsumer`)
    and what :meth:`FrameProducer.connect <gateway.media.producers.FrameProducer.connect>`
    takes. Twisted's ``IConsumer`` is typed for bytes, hence the two overrides.
    """

    def registerProducer(producer: IPushProducer, streaming: bool) -> None:  # type: ignore[override]
        """Be fed by ``producer``, which is paused while this consumer cannot keep up."""

    def write(data: Frame) -> None:  # type: ignore[override]
        """One frame (any codec, any payload length)."""


class IMediaApp(Interface):
    """Something to do with the audio of one or more ports: echo, play, record, bridge, mix, hold."""

    name = Attribute("Short unique name used in routing and configuration, e.g. 'echo'.")
    description = Attribute("One line for humans.")

    def start(
        ports: typing.Sequence[MediaPort],
        clock: IReactorTime,
        arg: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> IMediaSession:
        """Start the app on ``ports`` (a sequence of MediaPort) and return its IMediaSession.

        ``clock`` is an IReactorTime; ``arg`` is the app's argument (a file to
        play, a recording's name...); ``state_dir`` is a directory the app may
        read or write (recordings, prompts). Raises
        :class:`gateway.media.errors.MediaError` (wrong number of ports, bad
        argument, unsupported file, port already in use) without touching the
        ports.
        """


class IMediaSession(Interface):
    """A running media app."""

    finished = Attribute(
        "Deferred fired once when the session ends, by itself or by stop(). Its value depends on"
        " the app: play gives True if the file played to its end (False if stopped first), record"
        " the path of the WAV file written, the others None."
    )

    def stop() -> None:
        """Detach from the ports, discarding audio the session queued toward them. Idempotent.

        Closing a port does not end the sessions using it: stop them.
        """


class IConference(IMediaSession):
    """A session whose set of ports changes while it runs (the ``mix`` app)."""

    def add(port: MediaPort) -> None:
        """Add ``port`` as a party: it hears the others and they hear it."""

    def remove(port: MediaPort) -> None:
        """Remove ``port``; audio queued toward it is discarded. A no-op if it is not a party."""
