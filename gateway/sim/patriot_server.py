"""Patriot in server mode (``DesktopApiDialler``): the Desktop API a dialler client connects to.

Like Patriot, it serves WebSocket over TLS with a self-signed certificate for
``desktop-client-api.patriotsystems.com`` (see :mod:`gateway.sim.tlsutil`: the PEM path and the
SHA-256 fingerprint let a client trust it by CA file or by pin), on the path ``/ws/dialler/v1``
only (other paths are refused at the handshake with HTTP 404). A client must first send an
``authentication-request`` with the API key; the ``authentication-response`` echoes its
``requestId`` (or carries a generated one). Until a connection is authenticated every other frame
on it is recorded as ignored. After that, the simulator sends ``dial-request``, ``hangup-request``
and ``call-status-request`` to its authenticated clients and records what they send back
(``call-status-update``). ``freeze()`` hangs the open connections (a Patriot that stopped
answering while its TCP connections stay open) to test a client's dead-peer detection.
``answer_authentication_with(frames)`` makes it a hostile Patriot for the next authentication (the
bad-input corpus, ``tests/corpus/patriot_desktop.json``).

As a library::

    sim = PatriotServerSim(reactor, "KEY", tlsutil.load_or_create(tmp_path, HOSTNAME))
    port = yield sim.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    yield sim.wait_authenticated()
    sim.dial("+0123456789")
    update = yield sim.wait_for("call-status-update")
    yield sim.stop()            # and sim.listen(...) again on the same port to test reconnection

From the command line (commands on stdin: ``dial NUMBER [RAW]``, ``hangup``, ``status``,
``raw TEXT``, ``wait S``, ``expect TYPE``)::

    python -m gateway.sim patriot-server --port 9009 --api-key KEY [--cert-dir DIR]
"""

from __future__ import annotations

import argparse
import collections
import hmac
import sys
import tempfile
import uuid

import attrs
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory

from gateway.sim import tlsutil
from gateway.sim.patriot_client import (
    DEFAULT_TIMEOUT,
    PatriotPeerSim,
    ScriptError,
    SimProtocolMixin,
    Trace,
    parse_script,
    print_frame,
)
from gateway.sim.patriot_wire import AuthenticationRequest, AuthenticationResponse, PatriotMessage, encode

log = Logger()

#: The host name Patriot's certificate is made for (publicly resolving to 127.0.0.1).
HOSTNAME = "desktop-client-api.patriotsystems.com"

#: The only path Patriot serves the dialler API on.
PATH = "/ws/dialler/v1"

#: Patriot's default ``WebSocketServerPort``.
DEFAULT_PORT = 9009

INVALID_KEY = "Invalid API key"


class _ServerProtocol(SimProtocolMixin, WebSocketServerProtocol):
    authenticated = False
    #: hung: everything the client sends is dropped unread, so nothing (not even a pong) answers it
    frozen = False

    def dataReceived(self, data):
        if not self.frozen:
            super().dataReceived(data)

    def onConnect(self, request):
        self.factory.sim._handshake(self, request)


class _ServerFactory(WebSocketServerFactory):
    protocol = _ServerProtocol

    def __init__(self, sim, reactor):
        super().__init__(f"wss://{sim.certificate.hostname}", reactor=reactor)
        self.setProtocolOptions(webStatus=False)
        self.sim = sim


class PatriotServerSim(PatriotPeerSim):
    """Patriot's Desktop API for dialler clients holding ``api_key``, presenting ``certificate``.

    State a test reads: ``received`` (every frame from every client, in order, pre-auth ones with
    ``ignored=True``), ``clients`` (open connections), ``auth_attempts``, ``auth_successes``,
    ``auth_failures``, ``refused_paths`` (paths of refused handshakes), ``status_updates``.
    """

    def __init__(self, reactor, api_key: str, certificate: tlsutil.SelfSignedCertificate, *,
                 path: str = PATH, clock=None, trace: Trace | None = None):
        super().__init__(reactor, clock, trace)
        self.api_key = api_key
        self.certificate = certificate
        self.path = path
        self.clients: list[_ServerProtocol] = []
        self.auth_attempts = 0
        self.auth_successes = 0
        self.auth_failures = 0
        self.refused_paths: list[str] = []
        #: the connections whose authentication-request got hostile frames, in order
        self.hostile_connections: list[_ServerProtocol] = []
        self._hostile_answers: collections.deque = collections.deque()
        self.port = None
        self._factory = TLSMemoryBIOFactory(certificate.server_options(), False, _ServerFactory(self, reactor),
                                           clock=reactor)

    # -- life

    def listen(self, endpoint):
        """Listen on a TCP ``endpoint`` (TLS is added here); the Deferred fires with the listening port."""
        if self.port is not None:
            raise RuntimeError(f"already listening on {self.port.getHost()}")
        listening = endpoint.listen(self._factory)
        listening.addCallback(self._listening)
        return listening

    def _listening(self, port):
        self.port = port
        log.info("Patriot server simulator listening on {address}", address=port.getHost())
        return port

    def stop(self):
        """Stop listening and drop every connection; the Deferred fires once all are gone."""
        port, self.port = self.port, None
        stopped = defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
        for protocol in list(self._connections):
            protocol.dropConnection(abort=False)
        stopped.addCallback(lambda _: self._wait_closed())
        return stopped

    def freeze(self) -> int:
        """Hang every open connection (see ``_ServerProtocol.frozen``); the TCP connections stay
        open and later ones are served as usual. Returns how many were frozen."""
        for protocol in self._connections:
            protocol.frozen = True
        return len(self._connections)

    @property
    def authenticated_clients(self) -> list:
        return [client for client in self.clients if client.authenticated]

    @property
    def status_updates(self) -> list:
        """Every ``call-status-update`` received from an authenticated client, in order."""
        return self.messages("call-status-update")

    def wait_authenticated(self, count: int = 1, timeout=DEFAULT_TIMEOUT):
        """A Deferred firing with the authenticated clients once there are at least ``count``."""
        return self.wait_until(
            lambda: self.authenticated_clients if len(self.authenticated_clients) >= count else None,
            timeout, f"{count} authenticated client(s)",
        )

    # -- sending

    def send(self, message: PatriotMessage) -> int:
        """Send ``message`` to every authenticated client; returns how many it went to."""
        clients = self.authenticated_clients
        for client in clients:
            self._send_on(client, encode(message))
        return len(clients)

    def send_raw(self, data: str | bytes) -> int:
        """Send text (text frame) or bytes (binary frame) as they are to every open connection."""
        for client in self.clients:
            self._send_on(client, data)
        return len(self.clients)

    def answer_authentication_with(self, frames, *, then_close: bool = False) -> None:
        """Answer a later authentication-request with ``frames`` instead of an authentication-response.

        Queued: each call plays on one authentication-request, in order, and later ones are answered
        as usual. A frame is text (``str``) or binary (``bytes``); ``{requestId}`` in it becomes the
        request's requestId (``""`` when it has none). The connection stays unauthenticated and is
        appended to :attr:`hostile_connections`; ``then_close``: the server then closes it (1000).
        """
        self._hostile_answers.append((list(frames), then_close))

    # -- protocol events

    def _handshake(self, protocol, request):
        if request.path != self.path:
            self.refused_paths.append(request.path)
            log.info("refusing {peer}: no dialler API at {path}", peer=protocol.peer, path=request.path)
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, f"no dialler API at {request.path}")

    def _opened(self, protocol):
        self.clients.append(protocol)
        self._changed()

    def _received(self, protocol, payload, is_binary):
        record = self._read_frame(protocol, payload, is_binary)
        if record.type == AuthenticationRequest.TYPE:
            self._authenticate(protocol, record)
        elif not protocol.authenticated:
            log.info("ignoring {type} from {peer}: not authenticated", type=record.type, peer=protocol.peer)
            record = attrs.evolve(record, ignored=True)
        self._add(record)

    def _authenticate(self, protocol, record):
        """Answer an authentication request (also a malformed one, with its error)."""
        self.auth_attempts += 1
        request = record.message
        if self._hostile_answers:
            self._play_hostile(protocol, request.request_id if request is not None else None)
            return
        if request is None:
            success, error = False, record.error
        elif hmac.compare_digest(request.api_key.encode("utf-8"), self.api_key.encode("utf-8")):
            success, error = True, None
        else:
            success, error = False, INVALID_KEY
        protocol.authenticated = success
        if success:
            self.auth_successes += 1
        else:
            self.auth_failures += 1
            log.info("authentication of {peer} failed: {error}", peer=protocol.peer, error=error)
        request_id = request.request_id if request is not None and request.request_id else str(uuid.uuid4())
        self._send_on(protocol, encode(AuthenticationResponse(request_id, success, error)))

    def _play_hostile(self, protocol, request_id):
        frames, then_close = self._hostile_answers.popleft()
        request_id = request_id or ""
        log.info("answering the authentication of {peer} with {count} hostile frame(s)", peer=protocol.peer,
                 count=len(frames))
        self.hostile_connections.append(protocol)
        for frame in frames:
            if isinstance(frame, bytes):
                frame = frame.replace(b"{requestId}", request_id.encode("utf-8"))
            else:
                frame = frame.replace("{requestId}", request_id)
            self._send_on(protocol, frame)
        if then_close:
            protocol.sendClose(1000, "bye")
        self._changed()

    def _closed(self, protocol, code, reason):
        if protocol in self.clients:
            self.clients.remove(protocol)
        self._changed()


class _CommandLines(LineReceiver):
    """The CLI's stdin: each line is a script command run at once."""

    delimiter = b"\n"

    def __init__(self, sim):
        self.sim = sim

    def lineReceived(self, line):
        try:
            commands = parse_script([line.decode("utf-8", "replace")])
        except ScriptError as e:
            print(e, file=sys.stderr, flush=True)
            return
        self.sim.run_script(commands).addErrback(lambda f: print(f.getErrorMessage(), file=sys.stderr, flush=True))


def _arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m gateway.sim patriot-server", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port of the Desktop API (default %(default)s)")
    parser.add_argument("--interface", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--api-key", required=True,
                        help="the API key the dialler client must send in its authentication-request")
    parser.add_argument("--cert-dir", help="keep the certificate here (default: a new temporary directory)")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the server simulator, reading commands from stdin, until interrupted."""
    from twisted.internet import reactor, stdio
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.logger import globalLogBeginner, textFileLogObserver

    args = _arguments(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    certificate = tlsutil.load_or_create(args.cert_dir or tempfile.mkdtemp(prefix="patriot-sim-"), HOSTNAME)
    print(f"certificate {certificate.cert_path}\nsha256 {certificate.fingerprint}", flush=True)
    sim = PatriotServerSim(reactor, args.api_key, certificate, trace=print_frame)
    failures = []
    sim.listen(TCP4ServerEndpoint(reactor, args.port, interface=args.interface)).addErrback(failures.append)
    if failures:  # a TCP listen fails at once: the port is in use or not ours
        print(f"cannot listen on {args.interface}:{args.port}: {failures[0].getErrorMessage()}", file=sys.stderr)
        return 1
    stdio.StandardIO(_CommandLines(sim))
    reactor.run()
    return 0
