"""Whether the telephony side is up, as the readiness board says.

The bridge must learn when the gateway cannot carry calls even though the link is fine (for example
the OptimaCCS listener is not bound, or the outbound driver lost its provider). The readiness board
(``ctx.readiness``, behind ``/readyz``) already knows each listener and link; :class:`TelephonyWatch`
looks at the components whose names match ``[cti] telephony`` (shell patterns) every
``health_interval`` seconds and reports each change.
"""

from __future__ import annotations

import fnmatch

from twisted.internet import task
from twisted.logger import Logger

log = Logger()


class TelephonyWatch:
    """Calls ``changed(up, reason)`` whenever the matching components go down, change, or all come back.

    A ``changed`` that raises is logged; the watch goes on.

    :param readiness: the readiness board (``gateway.context.Readiness``).
    :param patterns: shell patterns of component names (``listener:optimaccs``, ``optimaccs*``).
    """

    def __init__(self, clock, readiness, patterns, interval, changed):
        self.readiness = readiness
        self.patterns = tuple(patterns)
        self.changed = changed
        self._reason = None
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = clock
        self._interval = interval

    def down(self) -> dict[str, str]:
        """Name -> reason of every matching component that is down."""
        return {
            name: reason
            for name, reason in self.readiness.not_ready().items()
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)
        }

    def reason(self) -> str | None:
        down = self.down()
        return "; ".join(f"{name}: {why}" for name, why in sorted(down.items())) or None

    def check(self) -> None:
        reason = self.reason()
        if reason != self._reason:
            self._reason = reason
            try:
                self.changed(reason is None, reason)
            except Exception:
                log.failure("HIS: reporting a change of the telephony side failed: {reason}", reason=reason)

    def start(self) -> None:
        d = self._loop.start(self._interval, now=True)
        d.addErrback(lambda f: log.failure("HIS: the telephony watch stopped", f))

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
