"""Tell systemd how the daemon is doing: readiness, status, watchdog, stopping.

The ``sd_notify`` protocol is one datagram of ``KEY=VALUE`` lines sent to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract socket
when it starts with ``@``), so it is implemented here without libsystemd.
Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.

:class:`Notifier` sends the messages; :class:`SystemdService` is the
``IService`` the daemon's ``MultiService`` holds: it pings the watchdog while
running, reports ``READY=1`` when :meth:`SystemdService.mark_ready` is called
(once every listener is bound) and ``STOPPING=1`` when it is stopped.
"""

from __future__ import annotations

import os
import socket

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

__all__ = ["Notifier", "PipeNotifier", "SystemdService"]


def _address(notify_socket: str) -> str:
    """The ``sendto`` address for ``$NOTIFY_SOCKET``: ``@name`` is abstract."""
    if notify_socket.startswith("@"):
        return "\0" + notify_socket[1:]
    return notify_socket


def _one_line(text: str) -> str:
    """A value for a ``KEY=VALUE`` line: a newline would start a new key."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends ``sd_notify`` messages; never raises.

    :param environ: the environment to read ``NOTIFY_SOCKET``,
        ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from.
    :param getpid: returns this process's id (for ``WATCHDOG_PID``).
    """

    log = Logger()

    def __init__(self, environ=os.environ, getpid=os.getpid):
        self._environ = environ
        self._getpid = getpid
        self._failing = False

    @property
    def enabled(self) -> bool:
        """Whether systemd asked for notifications (``$NOTIFY_SOCKET`` is set)."""
        return bool(self._environ.get("NOTIFY_SOCKET"))

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; return whether it was sent.

        A failure is logged once; after a later success, the next failure is
        logged again.
        """
        if not self.enabled:
            return False
        target = self._environ["NOTIFY_SOCKET"]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # never stall the reactor on a full queue
                sock.sendto("\n".join(lines).encode("utf-8"), _address(target))
        except OSError as e:
            if not self._failing:
                self.log.warn(
                    "cannot notify systemd at {socket}: {error}", socket=target, error=e
                )
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Report that start-up is complete (``READY=1``), with an optional status."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", "STATUS=" + _one_line(status))

    def stopping(self) -> bool:
        """Report that shutdown has begun (``STOPPING=1``)."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows."""
        return self.notify("STATUS=" + _one_line(text))

    def watchdog(self) -> bool:
        """Ping the watchdog (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None.

        None when notifications are off, the watchdog is off or malformed, or
        ``WATCHDOG_PID`` names another process.
        """
        if not self.enabled:
            return None
        pid = self._environ.get("WATCHDOG_PID")
        if pid is not None and pid != str(self._getpid()):
            return None
        try:
            usec = int(self._environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 2 / 1_000_000


class PipeNotifier(Notifier):
    """A worker's notifier (``[gateway] workers`` > 1): the same lines, to the parent over a pipe.

    Each message is its lines, each ended by a newline, written at once on
    ``fd`` (a pipe the parent reads, :data:`gateway.workers.NOTIFY_FD`); the
    watchdog interval comes from ``WATCHDOG_USEC`` in ``environ``, which the
    parent sets to its own. Never raises: a failed write is logged once.
    """

    def __init__(self, fd: int, environ=os.environ):
        super().__init__({"NOTIFY_SOCKET": f"fd:{fd}", "WATCHDOG_USEC": environ.get("WATCHDOG_USEC", "")})
        self._fd = fd
        try:
            os.set_blocking(fd, False)  # never stall the reactor on a parent that does not read
        except OSError:
            pass

    @property
    def enabled(self) -> bool:
        return True

    def notify(self, *lines: str) -> bool:
        data = "".join(_one_line(line) + "\n" for line in lines).encode("utf-8")
        try:
            os.write(self._fd, data)
        except OSError as e:
            if not self._failing:
                self.log.warn("cannot notify the parent process on fd {fd}: {error}", fd=self._fd, error=e)
            self._failing = True
            return False
        self._failing = False
        return True


class SystemdService(service.Service):
    """Watchdog pings while running, ``READY=1`` on demand, ``STOPPING=1`` on stop.

    Add it to the daemon's ``MultiService`` *last*: a ``MultiService`` stops
    its children in reverse order, so ``STOPPING=1`` then goes out first.

    :param notifier: a :class:`Notifier`.
    :param clock: an ``IReactorTime`` driving the watchdog pings.
    """

    name = "systemd"
    log = Logger()

    def __init__(self, notifier: Notifier, clock):
        self.notifier = notifier
        self._clock = clock
        self._watchdog: task.LoopingCall | None = None

    def startService(self):
        super().startService()
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        self._watchdog = task.LoopingCall(self.notifier.watchdog)
        self._watchdog.clock = self._clock
        self._watchdog.start(interval, now=True).addErrback(
            lambda f: self.log.failure("systemd watchdog pings stopped", f)
        )

    def mark_ready(self, status: str | None = None) -> None:
        """Tell systemd the gateway is up: call once every listener is bound."""
        self.notifier.ready(status)

    def stopService(self):
        self.notifier.stopping()
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        return super().stopService()
