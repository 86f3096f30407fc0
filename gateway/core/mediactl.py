"""The one place where call state becomes media wiring.

After every change of a call the registry calls :meth:`MediaController.update`;
the controller works out which media sessions the call's legs need now and
starts, stops or re-shapes sessions to match:

- a call routed to a media app: that app on the inbound leg's port once it talks;
- held remote legs: the ``hold`` app on each (they hear the hold tone, nothing
  is forwarded either way);
- two talking legs: ``bridge``; three or more: ``mix`` (each hears the others,
  never itself), grown and shrunk in place as parties come and go;
- a muted leg: its port discards the party's audio.

A primary and its consult call (``ICallControl.consult``) each have a device leg carrying the same
phone port. Each call is wired from its own legs as above; the registry keeps at most one of the two
with talking parties, so the phone is in one bridge or mix at a time (the held call's parties hear
hold), and a call that ends stops only its own sessions.

The registry's logic therefore reads as call logic, and the media plane's
apps are used only through :class:`gateway.media.IMediaApp`.
"""

from __future__ import annotations

import os
import typing

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.core.model import Call
from gateway.core.states import LegState

__all__ = ["MediaController"]

log = Logger()

#: (app name, ports, argument): one media session a call needs
Spec = typing.Tuple[str, typing.Tuple[typing.Any, ...], typing.Optional[str]]


class _AppListener(typing.Protocol):
    """Who is told that a call's routed app ended by itself: the registry."""

    def app_finished(self, call_id: str) -> None: ...


def _wanted(call: Call) -> list[Spec]:
    """The sessions ``call`` needs in its present state."""
    if call.ended:
        return []
    connected = [leg for leg in call.live_legs if not leg.pending and leg.port is not None]
    talking = tuple(leg.port for leg in connected if leg.state is LegState.TALKING)
    if call.app is not None:
        return [(call.app, talking[:1], call.app_arg)] if talking else []
    specs: list[Spec] = [("hold", (leg.port,), None) for leg in connected if leg.state is LegState.HELD]
    if len(talking) == 2:
        specs.append(("bridge", talking, None))
    elif len(talking) > 2:
        specs.append(("mix", talking, None))
    return specs


class MediaController:
    """Keeps each call's media sessions in line with its legs."""

    def __init__(self, clock: IReactorTime, apps: typing.Mapping[str, typing.Any],
                 state_dir: str | os.PathLike[str] | None = None) -> None:
        """``apps``: name -> IMediaApp (at least bridge, mix and hold for calls between parties);
        ``state_dir``: where apps find prompts and write recordings."""
        self._clock = clock
        self._apps = dict(apps)
        self._state_dir = state_dir
        #: told when a routed app ends by itself (a prompt played out): see :meth:`wire`
        self._calls: _AppListener | None = None
        self._sessions: dict[str, dict[Spec, typing.Any]] = {}

    def wire(self, calls: _AppListener) -> None:
        """Tell ``calls`` (the registry) ``app_finished(call_id)`` when a routed app ends by itself.
        Whoever assembles the core calls it once, after both exist (``gateway.callservice``)."""
        self._calls = calls

    @property
    def app_names(self) -> set[str]:
        return set(self._apps)

    def sessions(self, call_id: str) -> dict[Spec, typing.Any]:
        """The running sessions of a call (for status and tests)."""
        return dict(self._sessions.get(call_id, {}))

    def update(self, call: Call) -> bool:
        """Make the call's media match its legs; False if a needed session could not start."""
        current = self._sessions.setdefault(call.call_id, {})
        wanted = _wanted(call)
        self._reshape_mix(current, wanted)
        for spec in [s for s in current if s not in wanted]:
            current.pop(spec).stop()
        ok = all(self._start(call, spec, current) for spec in wanted if spec not in current)
        for leg in call.live_legs:
            if leg.port is not None:
                leg.port.muted = leg.muted
        if not current and call.ended:
            del self._sessions[call.call_id]
        return ok

    def _reshape_mix(self, current: dict[Spec, typing.Any], wanted: list[Spec]) -> None:
        """A running conference takes new parties and lets leavers go instead of restarting."""
        old = next((s for s in current if s[0] == "mix"), None)
        new = next((s for s in wanted if s[0] == "mix"), None)
        if old is None or new is None or old == new:
            return
        session = current.pop(old)
        for port in old[1]:
            if port not in new[1]:
                session.remove(port)
        for port in new[1]:
            if port not in old[1]:
                session.add(port)
        current[new] = session

    def _start(self, call: Call, spec: Spec, current: dict[Spec, typing.Any]) -> bool:
        name, ports, arg = spec
        app = self._apps.get(name)
        try:
            if app is None:
                raise LookupError(f"no media app named {name!r}")
            session = app.start(list(ports), self._clock, arg=arg, state_dir=self._state_dir)
        except Exception as e:
            log.error("call {call_id}: media app {app} could not start: {error}",
                      call_id=call.call_id, app=name, error=e)
            return False
        current[spec] = session
        if name == call.app:
            session.finished.addBoth(self._finished, call.call_id, spec, session)
        return True

    def _finished(self, result: object, call_id: str, spec: Spec, session: object) -> None:
        if isinstance(result, Failure):
            log.failure("call {call_id}: media app {app} failed", result, call_id=call_id, app=spec[0])
        current = self._sessions.get(call_id, {})
        if current.get(spec) is session:  # it ended by itself, not through stop()
            del current[spec]
            if self._calls is not None:
                self._calls.app_finished(call_id)
