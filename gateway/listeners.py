"""Binding listening endpoints so that a port in use stops the daemon at start.

``StreamServerEndpointService`` only logs a failed listen, which leaves a
half-started daemon; :class:`Listener` binds synchronously when the service
starts and raises :class:`StartupError` naming the listener and its endpoint.
An ``ssl:`` endpoint gets the TLS versions and ciphers of :mod:`gateway.tlspolicy`.
"""

from __future__ import annotations

import errno
import socket

from twisted.application import service
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.tlspolicy import DEFAULT as DEFAULT_TLS

log = Logger()


class StartupError(Exception):
    """The daemon cannot start; the message is the one line an operator reads.

    ``listener`` names the listener that could not be bound, and ``in_use`` is
    true when its address is taken (another process, maybe another gateway).
    """

    def __init__(self, message: str, *, listener: str | None = None, in_use: bool = False):
        super().__init__(message)
        self.listener = listener
        self.in_use = in_use


class Listener(service.Service):
    """Serve one protocol factory on one endpoint string."""

    def __init__(self, reactor, name: str, description: str, factory, component, *, tls=DEFAULT_TLS):
        """``tls``: the :class:`gateway.tlspolicy.TlsPolicy` of an ``ssl:`` endpoint."""
        self.name = name
        self.description = str(description)
        self._reactor = reactor
        self._factory = factory
        # The listener's own log lines say what the factory's would.
        if hasattr(factory, "noisy"):
            factory.noisy = False
        self._component = component
        self._tls = tls
        self.port = None
        #: bind TCP with SO_REUSEPORT, so that every worker of ``[gateway] workers`` listens on the same port
        self.reuse_port = False

    def bind(self) -> None:
        """Listen now, or raise :class:`StartupError`."""
        if self.port is not None:
            return
        try:
            reactor = _ReusePortReactor(self._reactor) if self.reuse_port else self._reactor
            endpoint = self._tls.server_endpoint(reactor, self.description, name=self.name)
        except Exception as e:
            raise StartupError(f"cannot listen on {self.description} ({self.name}): {e}") from None
        outcome = []
        endpoint.listen(self._factory).addBoth(outcome.append)
        if not outcome:
            raise StartupError(f"listening on {self.description} ({self.name}) did not complete at start")
        if isinstance(outcome[0], Failure):
            error = outcome[0].value
            reason = getattr(error, "socketError", None) or error
            detail = getattr(reason, "strerror", None) or str(reason)
            raise StartupError(f"cannot listen on {self.description} ({self.name}): {detail}", listener=self.name,
                               in_use=getattr(reason, "errno", None) == errno.EADDRINUSE)
        self.port = outcome[0]
        self._component.set_up()
        address = getattr(self.port, "getHost", lambda: None)()
        log.info("{listener} listening on {endpoint} ({address})", listener=self.name,
                 endpoint=self.description, address=address)

    def privilegedStartService(self):
        # Bound here, before twistd sheds privileges, like strports.service.
        self.bind()
        super().privilegedStartService()

    def startService(self):
        self.bind()  # `twist` never calls privilegedStartService
        super().startService()

    def stopService(self):
        super().stopService()
        self._component.stopped()
        port, self.port = self.port, None
        if port is None:
            return None
        return maybeDeferred(port.stopListening)


class _ReusePortReactor:
    """The reactor, with ``listenTCP`` binding a ``SO_REUSEPORT`` socket (then adopted by the reactor).

    ``tcp:``, ``tcp6:`` and ``ssl:`` endpoints all listen through ``listenTCP``,
    so a worker's listener shares its port with the other workers' (Linux
    spreads the connections across them); other endpoint types are unchanged.
    """

    def __init__(self, reactor):
        self._reactor = reactor

    def __getattr__(self, name):
        return getattr(self._reactor, name)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        from twisted.internet.error import CannotListenError

        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((interface or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
            sock.listen(backlog)
            sock.setblocking(False)
            return self._reactor.adoptStreamPort(sock.fileno(), family, factory)
        except OSError as e:
            raise CannotListenError(interface, port, e) from None
        finally:
            sock.close()  # the reactor's port holds its own copy of the descriptor
