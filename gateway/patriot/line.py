"""A Patriot user's line: the extension's current call as Patriot sees it, and the commands on it.

Both Patriot modes share this. A :class:`Line` follows one extension through the call core (an
:class:`~gateway.core.interfaces.ICallControl`) and turns the extension's current call into
Patriot's ``call-status-update`` ``{callActive, outbound, callerId}``: it asks for the extension's
live call once, when made, and from then on diffs the call snapshot each event of the extension
comes with (no look at the other calls); it tells every listener (each
connection logged in for that extension) each time the call gets further: a new call (dialing or
ringing), answered, ended. Hold and retrieve change nothing Patriot can show, and the legs of a
call being torn down do not make it look "dialing" again. When the call ends the last update keeps
its ``outbound`` and ``callerId`` with ``callActive: false``.

``callerId`` is the other party: the dialled number of an outbound call, the caller of an
inbound one.

:meth:`Line.dial` and :meth:`Line.hangup` are Patriot's ``dial-request`` and ``hangup-request``:
click-to-dial from the extension, and hanging up its current call. A dial while the extension has
a live call is the call core's ``if_busy`` policy: refused (``ExtensionBusy``), or that call is
ended first (``replace=True``, from the connection's ``dial_while_busy = "replace"``).

:class:`Lines` hands out one line per extension, so that the same user on two workstations (or
two users bound to one extension) see the same call and act on it.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from gateway.core.states import LegState
from gateway.patriot.messages import CallStatusUpdate

log = Logger()

#: ``hangup_by`` of calls Patriot hangs up
HANGUP_BY = "desktop"

#: a call-status-update before any call
IDLE = CallStatusUpdate(call_active=False)

#: how far a call got, as Patriot hears of it: an update goes out each time a call gets further
ALERTING, CONNECTED, ENDED = range(3)


def status_of(call) -> CallStatusUpdate:
    """The ``call-status-update`` of a live call snapshot."""
    outbound = call.direction == "outbound"
    return CallStatusUpdate(call_active=True, outbound=outbound, caller_id=call.number if outbound else call.caller)


class Line:
    """One extension's current call, as Patriot's call status, and Patriot's commands on it."""

    def __init__(self, registry, extension: str):
        self.extension = extension
        self.status = IDLE
        #: the call the status is about (the last one, once it ended), and how far it got
        self.call_id: str | None = None
        self._phase = ENDED
        self._registry = registry
        self._listeners: list[Callable[[CallStatusUpdate], None]] = []
        self._unsubscribe = registry.subscribe(self._refresh, extension=extension)
        active = registry.active_call_for(extension)
        if active is not None:
            self._refresh(None, active)

    def listen(self, listener: Callable[[CallStatusUpdate], None]) -> Callable[[], None]:
        """Call ``listener(update)`` on every change; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def close(self) -> None:
        """Stop following the extension."""
        self._unsubscribe()
        self._listeners.clear()

    # -- commands

    def dial(self, phone_no: str, raw_phone_no: str, requested_by: str, *, replace: bool = False) -> defer.Deferred:
        """Click-to-dial ``phone_no`` from the extension; fires with the call's snapshot.

        With ``replace``, the core hangs up a live call of the extension first (``if_busy="replace"``);
        without, it refuses the dial with :class:`~gateway.core.errors.ExtensionBusy`. Other failures
        are the core's ``CallError``.
        """
        attributes = {"raw_number": raw_phone_no, "requested_by": requested_by}
        return self._registry.originate(self.extension, phone_no, attributes=attributes,
                                        if_busy="replace" if replace else "refuse", by=HANGUP_BY)

    def hangup(self) -> defer.Deferred:
        """Hang up the extension's current call; fires with its id, or ``None`` when there was none."""
        active = self._registry.active_call_for(self.extension)
        if active is None:
            return defer.succeed(None)
        return self._registry.hangup(active.call_id, by=HANGUP_BY).addCallback(lambda _: active.call_id)

    # -- events

    def _refresh(self, event, call) -> None:
        """An event of one of the extension's calls, with that call's snapshot: tell what changed."""
        if call.state is not LegState.RELEASED:
            phase = CONNECTED if call.state in (LegState.TALKING, LegState.HELD) else ALERTING
            if call.call_id == self.call_id and phase <= self._phase:
                return  # no news, or a call being torn down (its legs go before it does)
            self._announce(call.call_id, phase, status_of(call))
        elif call.call_id == self.call_id and self.status.call_active:
            self._announce(self.call_id, ENDED, CallStatusUpdate(
                call_active=False, outbound=self.status.outbound, caller_id=self.status.caller_id))

    def _announce(self, call_id: str, phase: int, status: CallStatusUpdate) -> None:
        self.call_id, self._phase, self.status = call_id, phase, status
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                log.failure("Patriot listener {listener} of extension {extension} failed",
                            listener=listener, extension=self.extension)

    def to_dict(self) -> dict:
        """The line for the status page."""
        return {"extension": self.extension, "call_id": self.call_id, "listeners": len(self._listeners),
                **self.status.to_payload()}


class Lines:
    """One :class:`Line` per extension, made when first asked for."""

    def __init__(self, registry):
        self._registry = registry
        self._lines: dict[str, Line] = {}

    def get(self, extension: str) -> Line:
        """The line of ``extension``."""
        line = self._lines.get(extension)
        if line is None:
            line = self._lines[extension] = Line(self._registry, extension)
        return line

    def close(self) -> None:
        for line in self._lines.values():
            line.close()
        self._lines.clear()

    def to_dict(self) -> dict:
        return {extension: line.to_dict() for extension, line in sorted(self._lines.items())}
