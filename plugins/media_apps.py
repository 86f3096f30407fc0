"""The bundled media apps as ``twisted.plugin`` plugins: echo, play, record, bridge, mix, hold.

Found with ``twisted.plugin.getPlugins(IMediaApp, gateway.plugins)``; what
each does is in :mod:`gateway.media.apps`.
"""

from __future__ import annotations

import typing

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.media import apps
from gateway.media.interfaces import IMediaApp


@implementer(IPlugin, IMediaApp)
@attrs.frozen
class MediaAppPlugin:
    """A media app: a name, a line of description, and the function that starts a session."""

    name: str
    description: str
    _start: typing.Callable

    def start(self, ports, clock, arg=None, state_dir=None):
        return self._start(ports, clock, arg=arg, state_dir=state_dir)


echo = MediaAppPlugin("echo", "The caller hears themself (one port).", apps.start_echo)
play = MediaAppPlugin("play", "Play an 8 kHz mono 16-bit WAV file to the party (arg: the file).", apps.start_play)
record = MediaAppPlugin("record", "Record what the party says to <state_dir>/<arg or port name>.wav.", apps.start_record)
bridge = MediaAppPlugin("bridge", "Two parties hear each other (two ports, any codecs).", apps.start_bridge)
mix = MediaAppPlugin("mix", "Conference: each party hears all the others, never itself.", apps.start_mix)
hold = MediaAppPlugin("hold", "Hold tone (or arg: a WAV of music) to the held party; its audio goes nowhere.", apps.start_hold)
