"""SIP over UDP and TCP, and the endpoint that answers what needs no call: the door of the SIP stack.

- :class:`UDPTransport` (a ``DatagramProtocol``): one message per datagram.
- :class:`TCPTransportFactory` / :class:`TCPConnection`: a stream framed by
  Content-Length (:class:`~gateway.sip.message.StreamParser`); after a framing
  error the connection is answered (when it can be) and closed, since the
  stream cannot be re-synchronised.
- :class:`SIPEndpoint`: the transaction user over a
  :class:`~gateway.sip.transaction.TransactionLayer`. It refuses **INVITEs from
  hosts that are no configured trunk** (403, counted as
  ``gateway_sip_refused_total{reason="unknown_host"}``: an open SIP port is never
  a way into the phone network), answers what the UAS checks find wrong
  (416, 420, 415, 406 from :func:`~gateway.sip.message.request_problem`),
  answers ``OPTIONS`` with 200 (keep-alives from trunks), and hands the rest to
  the handlers registered per method (405 with ``Allow`` for a known method
  without one, 501 for an unknown method).

Malformed messages never reach the endpoint: the transport counts them in
``gateway_ignored_messages_total{adapter="sip",reason}`` (``malformed``,
``bad_text``, ``oversized``), logs them through a rate-limited
:class:`~gateway.boundary.IgnoredBudget` naming the peer and the problem, and
answers 400/505/513 when a response can be formed, or drops them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger

from gateway.boundary import IgnoredBudget, RateLimitedLog
from gateway.sip.message import (
    Limits,
    Message,
    Request,
    Response,
    SIPMessageError,
    StreamParser,
    error_response,
    parse_datagram,
    request_problem,
)
from gateway.sip.transaction import Peer, ServerTransaction, Timers, TransactionLayer, response_destination, stamp_via

__all__ = [
    "KNOWN_METHODS",
    "SIPEndpoint",
    "TCPConnection",
    "TCPTransportFactory",
    "TrunkMatcher",
    "UDPTransport",
    "parse_listen",
]

log = Logger()

KNOWN_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK",
                           "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH"})


def parse_listen(description: str) -> tuple[str, int, str]:
    """``udp:5060:interface=127.0.0.1`` (or ``tcp:...``) → ``("udp", 5060, "127.0.0.1")``.

    :raises ValueError: not ``udp|tcp:<port>[:interface=<address>]``.
    """
    parts = description.split(":")
    if len(parts) < 2 or parts[0].lower() not in ("udp", "tcp") or not parts[1].isdigit():
        raise ValueError(f"a SIP listen string is udp|tcp:<port>[:interface=<address>], not {description!r}")
    interface = ""
    for option in parts[2:]:
        name, _, value = option.partition("=")
        if name != "interface" or not value:
            raise ValueError(f"unknown option {option!r} in SIP listen string {description!r}")
        interface = value
    port = int(parts[1])
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range in {description!r}")
    return parts[0].lower(), port, interface


class TrunkMatcher:
    """Which configured trunk a source address belongs to (by IP address or network), if any.

    :param trunks: ``(name, address-or-network)`` pairs, already resolved to IP text (no DNS here).
    """

    def __init__(self, trunks: Iterable[tuple[str, str]]):
        self._networks = [(name, ipaddress.ip_network(address, strict=False)) for name, address in trunks]

    def match(self, host: str) -> str | None:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        for name, network in self._networks:
            if address.version == network.version and address in network:
                return name
        return None


Handler = Callable[[Request, ServerTransaction | None, Peer, str | None], None]


class SIPEndpoint:
    """The transaction user that guards the door (see the module docstring).

    :param clock: ``IReactorTime`` for the transaction timers.
    :param trunks: the :class:`TrunkMatcher` for INVITEs.
    :param sent_by: ``sent_by(transport)`` → this endpoint's ``host:port`` for its Via headers.
    :param registry: a prometheus registry for ``gateway_sip_refused_total`` (optional).
    """

    def __init__(self, clock: Any, trunks: TrunkMatcher, sent_by: Callable[[str], str], *, registry: Any = None,
                 timers: Timers = Timers(), random: Callable[[int], bytes] = os.urandom,
                 user_agent: str = "telephony-gateway", max_transactions: int = 10000):
        self.clock = clock
        self.trunks = trunks
        self.random = random
        self.user_agent = user_agent
        self.transports: dict[str, Any] = {}
        self.layer = TransactionLayer(clock, self._send, self, sent_by, timers=timers, random=random,
                                      max_server_transactions=max_transactions)
        #: method -> handler(request, transaction, source, trunk name or None)
        self.handlers: dict[str, Handler] = {"OPTIONS": self._options}
        #: called with (response, source) for responses that matched no transaction
        self.on_stray_response: Callable[[Response, Peer], None] | None = None
        #: refusals by reason, also counted in gateway_sip_refused_total when a registry is given
        self.refused: dict[str, int] = {}
        self._overload_log = RateLimitedLog(clock, log)
        self._stranger_log = RateLimitedLog(clock, log)
        self._refused_counter = None
        if registry is not None:
            from prometheus_client import Counter

            from gateway.metrics import define_metric

            self._refused_counter = define_metric(
                registry, Counter, "sip_refused",
                "SIP requests refused by the endpoint, by reason (unknown_host: an INVITE from no trunk).",
                ["reason"])

    # -- wiring
    def add_transport(self, name: str, transport: Any) -> None:
        """Register the transport that sends ``name`` (``UDP``/``TCP``) messages: ``transport.send(message, peer)``."""
        self.transports[name.upper()] = transport

    def _send(self, message: Message, peer: Peer) -> None:
        transport = self.transports.get(peer.transport.upper())
        if transport is None:
            log.warn("SIP: no {transport} transport to send to {host}:{port}", transport=peer.transport,
                     host=peer.host, port=peer.port)
            return
        transport.send(message, peer)

    def message_received(self, message: Message, source: Peer) -> None:
        """A parsed message from a transport.

        An INVITE from a host that is no trunk is answered 403 here, statelessly, before the transaction
        layer: an INVITE server transaction would send 100, retransmit the 403 until timer H (32 s, about
        ten copies toward a source address anyone can forge) and hold one of the ``max_transactions``
        places all that time, so a stranger's flood could leave the trunks' own INVITEs to get 503.
        """
        if (isinstance(message, Request) and message.method == "INVITE" and message.top_via is not None
                and self.trunks.match(source.host) is None):
            self._refuse_stranger(message, source)
            return
        self.layer.receive(message, source)

    def _refuse_stranger(self, request: Request, source: Peer) -> None:
        self._refuse("unknown_host")
        self._stranger_log.emit(
            "SIP: refused an INVITE from {host}:{port}, which is no configured trunk (403){more}",
            summary="SIP: refused {count} more INVITEs from hosts that are no configured trunk (403) in the last "
                    "{seconds:.0f} s, the latest from {host}:{port}",
            host=source.host, port=source.port)
        stamp_via(request, source)
        peer = source if source.reliable else response_destination(request.top_via, source.transport)  # type: ignore[arg-type]
        response = request.response(403, "Forbidden (not a configured trunk)", to_tag=self.new_tag())
        response.add("Server", self.user_agent)
        self._send(response, peer)

    def new_tag(self) -> str:
        return self.random(6).hex()

    def trusted(self, source: Peer) -> bool:
        """Whether ``source`` is a trunk's host (the transaction layer keeps places for them)."""
        return self.trunks.match(source.host) is not None

    def _refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self._refused_counter is not None:
            self._refused_counter.labels(reason).inc()

    def respond(self, transaction: ServerTransaction, status: int, reason: str | None = None,
                headers: Iterable[tuple[str, str]] = (), body: bytes = b"", *, to_tag: str | None = None) -> Response:
        """Answer ``transaction``'s request (a To tag made when none is given)."""
        response = transaction.request.response(status, reason, to_tag=to_tag or self.new_tag())
        for name, value in headers:
            response.add(name, value)
        response.add("Server", self.user_agent)
        response.body = body
        transaction.respond(response)
        return response

    # -- the transaction user
    def request_received(self, request: Request, transaction: ServerTransaction | None, source: Peer) -> None:
        trunk = self.trunks.match(source.host)
        if transaction is None:  # an ACK for a 2xx
            handler = self.handlers.get("ACK")
            if handler is not None:
                handler(request, None, source, trunk)
            return
        method = request.method
        if method == "INVITE" and trunk is None:
            self._refuse("unknown_host")
            log.warn("SIP: refused an INVITE from {host}:{port}, which is no configured trunk (403)",
                     host=source.host, port=source.port)
            self.respond(transaction, 403, "Forbidden (not a configured trunk)")
            return
        problem = request_problem(request)
        if problem is not None and method not in ("ACK", "CANCEL", "BYE"):
            status, reason, headers = problem
            self._refuse(f"status_{status}")
            self.respond(transaction, status, reason, headers)
            return
        handler = self.handlers.get(method)
        if handler is not None:
            handler(request, transaction, source, trunk)
        elif method in KNOWN_METHODS:
            self.respond(transaction, 405, headers=[("Allow", ", ".join(sorted(self.handlers)))])
        else:
            self.respond(transaction, 501)

    def overloaded(self, request: Request, source: Peer) -> None:
        """The transaction layer answered 503: too many live server transactions."""
        self._refuse("overloaded")
        self._overload_log.emit(
            "SIP: too many transactions, answered {method} from {host}:{port} with 503{more}",
            summary="SIP: too many transactions, {count} more requests answered 503 in the last {seconds:.0f} s",
            method=request.method[:40], host=source.host, port=source.port)

    def stray_response(self, response: Response, source: Peer) -> None:
        if self.on_stray_response is not None:
            self.on_stray_response(response, source)

    def _options(self, request: Request, transaction: ServerTransaction | None, source: Peer,
                 trunk: str | None) -> None:
        assert transaction is not None
        self.respond(transaction, 200, headers=[("Allow", ", ".join(sorted(self.handlers))),
                                                ("Accept", "application/sdp")])

    def close(self) -> None:
        self.layer.close()


def _ignore(budget: IgnoredBudget, error: SIPMessageError, peer: str) -> None:
    outcome = f"answered {error.status}" if error.status is not None else "dropped"
    budget.ignored(error.reason, f"from {peer}: {error} ({outcome})")


class UDPTransport(protocol.DatagramProtocol):
    """SIP over UDP: each datagram one message (RFC 3261 18).

    :param endpoint: gets ``message_received(message, Peer)``.
    :param budget: the :class:`IgnoredBudget` for refused datagrams.
    """

    def __init__(self, endpoint: SIPEndpoint, budget: IgnoredBudget, *, limits: Limits = Limits()):
        self.endpoint = endpoint
        self.budget = budget
        self.limits = limits
        self.keepalives = 0

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        host, port = addr[0], addr[1]
        if datagram.strip(b"\r\n") == b"":
            self.keepalives += 1  # a CRLF keep-alive
            return
        try:
            message = parse_datagram(datagram, limits=self.limits)
        except SIPMessageError as error:
            _ignore(self.budget, error, f"{host}:{port}")
            response = error_response(error, to_tag=self.endpoint.new_tag())
            if response is not None:
                self.send(response, Peer("UDP", host, port))
            return
        try:
            self.endpoint.message_received(message, Peer("UDP", host, port))
        except SIPMessageError as error:  # a view the parser checked cannot fail; kept as a last guard
            _ignore(self.budget, error, f"{host}:{port}")
        except Exception:
            log.failure("SIP: handling a message from {host}:{port} failed", host=host, port=port)

    def send(self, message: Message, peer: Peer) -> None:
        if self.transport is None:
            return
        try:
            self.transport.write(message.to_bytes(), (peer.host, peer.port))
        except OSError as error:
            log.warn("SIP: sending to {host}:{port} over UDP failed: {error}", host=peer.host, port=peer.port,
                     error=error)

    def stopProtocol(self) -> None:
        self.budget.close()


class TCPConnection(protocol.Protocol):
    """One SIP over TCP connection (RFC 3261 18.3), framed by Content-Length.

    Bounded (see :class:`TCPTransportFactory`): a message begun must be complete within
    ``message_timeout``, and a connection silent for ``idle_timeout`` is closed.
    """

    factory: TCPTransportFactory

    def __init__(self) -> None:
        self.parser: StreamParser | None = None
        self.peer: Peer | None = None
        self.budget: IgnoredBudget | None = None
        self._message_timer: Any = None
        self._idle_timer: Any = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        address: Any = self.transport.getPeer()
        factory = self.factory
        too_many = factory.too_many(address.host)
        if too_many is not None:
            factory.refuse(address.host, address.port, f"refused: {too_many}")
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.peer = Peer("TCP", address.host, address.port)
        self.parser = StreamParser(factory.limits)
        self.budget = factory.budget(f"{address.host}:{address.port}")
        factory.connections[(address.host, address.port)] = self
        if factory.idle_timeout:
            self._idle_timer = factory.clock.callLater(factory.idle_timeout, self._timed_out, "idle_timeout")

    def _timed_out(self, which: str) -> None:
        if which == "idle_timeout":
            self._idle_timer = None
        else:
            self._message_timer = None
        seconds = getattr(self.factory, which)
        assert self.peer is not None
        problem = (f"no complete message within {seconds:g} s" if which == "message_timeout"
                   else f"nothing received for {seconds:g} s")
        self.factory.refuse(self.peer.host, self.peer.port, f"{problem}; closed", reason=f"tcp_{which}")
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _timers(self, progress: bool) -> None:
        """After bytes came: the idle timer starts over; the message timer runs while a message is begun
        and starts over with each complete message (a busy peer's pipelined messages are progress)."""
        factory = self.factory
        if self._idle_timer is not None:
            self._idle_timer.reset(factory.idle_timeout)
        if progress and self._message_timer is not None:
            self._message_timer.cancel()
            self._message_timer = None
        if self.parser is not None and self.parser.pending:
            if self._message_timer is None and factory.message_timeout:
                self._message_timer = factory.clock.callLater(factory.message_timeout, self._timed_out,
                                                              "message_timeout")
        elif self._message_timer is not None:
            self._message_timer.cancel()
            self._message_timer = None

    def dataReceived(self, data: bytes) -> None:
        if self.parser is None:
            return  # refused at connectionMade
        assert self.peer is not None and self.budget is not None
        try:
            messages = self.parser.feed(data)
        except SIPMessageError as error:
            _ignore(self.budget, error, f"{self.peer.host}:{self.peer.port}")
            response = error_response(error, to_tag=self.factory.endpoint.new_tag())
            if response is not None:
                self.transport.write(response.to_bytes())  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._timers(bool(messages))
        for message in messages:
            try:
                self.factory.endpoint.message_received(message, self.peer)
            except Exception:
                log.failure("SIP: handling a message from {host}:{port} failed", host=self.peer.host,
                            port=self.peer.port)

    def connectionLost(self, reason: Any = None) -> None:
        for timer in (self._message_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._message_timer = self._idle_timer = None
        if self.peer is not None and self.factory.connections.get((self.peer.host, self.peer.port)) is self:
            del self.factory.connections[(self.peer.host, self.peer.port)]
        if self.budget is not None:
            self.budget.close()


class TCPTransportFactory(protocol.ServerFactory):
    """Accepts SIP over TCP; sends a message to a peer over its open connection.

    Anyone may connect, so the connections are bounded: at most ``max_connections`` open and
    ``max_per_host`` from one address (past either, a new one is closed at once, counted in
    ``gateway_sip_refused_total{reason="tcp_connections"}``); a message begun must be complete within
    ``message_timeout`` seconds (a peer trickling a head byte by byte holds no connection and buffer for
    good; ``reason="tcp_message_timeout"``) and a connection silent for ``idle_timeout`` seconds is
    closed (``reason="tcp_idle_timeout"``; 0: never). Each is logged, rate-limited, naming the peer. Requests toward trunks go over UDP, so closing an idle connection loses nothing.
    """

    protocol = TCPConnection  # type: ignore[assignment]

    def __init__(self, endpoint: SIPEndpoint, budget: Callable[[str], IgnoredBudget], *,
                 limits: Limits = Limits(), max_connections: int = 256, max_per_host: int = 16,
                 message_timeout: float = 10.0, idle_timeout: float = 600.0):
        self.endpoint = endpoint
        self.clock = endpoint.clock
        self.budget = budget
        self.limits = limits
        self.max_connections = max_connections
        self.max_per_host = max_per_host
        self.message_timeout = message_timeout
        self.idle_timeout = idle_timeout
        self.connections: dict[tuple[str, int], TCPConnection] = {}
        self._refusals = RateLimitedLog(self.clock, log)

    def too_many(self, host: str) -> str | None:
        """Why a new connection from ``host`` is refused, or None."""
        if len(self.connections) >= self.max_connections:
            return f"{self.max_connections} SIP TCP connections are open"
        if sum(1 for other, _ in self.connections if other == host) >= self.max_per_host:
            return f"{self.max_per_host} SIP TCP connections from {host} are open"
        return None

    def refuse(self, host: str, port: int, why: str, *, reason: str = "tcp_connections") -> None:
        """Count (``gateway_sip_refused_total{reason}``) and log, rate-limited, a connection refused or ended."""
        self.endpoint._refuse(reason)
        self._refusals.emit("SIP: TCP connection from {host}:{port}: {why}{more}",
                            summary="SIP: {count} more TCP connections refused or closed in the last {seconds:.0f} s, "
                                    "the latest from {host}:{port}: {why}",
                            host=host, port=port, why=why)

    def send(self, message: Message, peer: Peer) -> None:
        connection = self.connections.get((peer.host, peer.port))
        if connection is None or connection.transport is None:
            log.warn("SIP: no TCP connection to {host}:{port} to send on", host=peer.host, port=peer.port)
            return
        connection.transport.write(message.to_bytes())

