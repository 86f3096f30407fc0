"""SIP transactions (RFC 3261 section 17, with RFC 6026's Accepted state) on an injected clock.

The four machines, each with its timers run on the ``clock`` handed to
:class:`TransactionLayer` (``IReactorTime``: ``callLater``, ``seconds``):

- INVITE client (:class:`InviteClientTransaction`): timer A retransmits over
  UDP (T1, doubling), B gives up (64*T1, a 408 to the TU), D absorbs
  retransmitted final responses (32 s over UDP, 0 over TCP) and re-sends the
  ACK the transaction built for a 3xx-6xx; M (RFC 6026) passes retransmitted
  2xx to the TU for 64*T1, which re-ACKs them. :meth:`~InviteClientTransaction.cancel`
  sends a CANCEL, waiting for a provisional response first (RFC 3261 9.1).
- non-INVITE client (:class:`ClientTransaction`): E retransmits (T1 doubling to
  T2; T2 once provisional), F gives up (64*T1), K absorbs retransmissions (T4
  over UDP, 0 over TCP).
- INVITE server (:class:`InviteServerTransaction`): a 100 Trying at once,
  G retransmits a 3xx-6xx (T1 doubling to T2) until the ACK, H gives up on the
  ACK (64*T1, the TU is told), I absorbs ACKs (T4 over UDP, 0 over TCP); L
  (RFC 6026) absorbs retransmitted INVITEs after a 2xx for 64*T1.
- non-INVITE server (:class:`ServerTransaction`): J absorbs retransmitted
  requests after the final response (64*T1 over UDP, 0 over TCP).

Nothing is retransmitted over a reliable transport (TCP, TLS, SCTP, WS).
The 2xx to an INVITE is the TU's to retransmit until the ACK arrives
(RFC 3261 13.3.1.4): :class:`gateway.sip.dialog.SuccessRetransmitter`.

Matching follows RFC 3261 17.1.3 and 17.2.3: a response by its top Via branch
and CSeq method; a request by branch, sent-by and method (an ACK matching its
INVITE), with the RFC 2543 rules for a branch without the ``z9hG4bK`` cookie.
The server side stamps the top Via with ``received`` and, when the client asked
for it (RFC 3581), ``rport``, and answers to that address
(:func:`response_destination`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from gateway.sip.message import Message, Request, Response, Via, parse_via

__all__ = [
    "BRANCH_COOKIE",
    "ClientTransaction",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "Peer",
    "ServerTransaction",
    "Timers",
    "TransactionLayer",
    "TransactionTimeout",
    "make_ack",
    "make_cancel",
    "new_branch",
    "response_destination",
    "stamp_via",
]

log = Logger()

#: RFC 3261 8.1.1.7: a branch starting with this was made by an RFC 3261 element
BRANCH_COOKIE = "z9hG4bK"
RELIABLE = frozenset({"TCP", "TLS", "SCTP", "WS", "WSS"})


@attrs.frozen
class Timers:
    """RFC 3261's timer base values (table 4), in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    #: timer D over an unreliable transport
    d: float = 32.0


@attrs.frozen
class Peer:
    """Where a message goes or came from: the transport name (``UDP``, ``TCP``) and an address."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport.upper() in RELIABLE


class TransactionTimeout(Exception):
    """A client transaction got no final response (timer B or F)."""


def new_branch(random: Callable[[int], bytes] = os.urandom) -> str:
    """A Via branch unique in space and time, with RFC 3261's magic cookie."""
    return BRANCH_COOKIE + random(10).hex()


def stamp_via(request: Request, source: Peer) -> None:
    """RFC 3261 18.2.1 and RFC 3581: add ``received`` (the packet's source address) to the top Via, and
    ``rport`` (its source port) when the client asked for it with an empty rport."""
    value = request.get("Via")
    if value is None:
        return
    via = parse_via(value)
    changed = via
    if via.host.strip("[]") != source.host or via.has_rport:
        changed = changed.with_param("received", source.host)
    if via.has_rport and via.rport is None:
        changed = changed.with_param("rport", str(source.port))
    if changed is not via:
        request.headers[[k for k, _ in request.headers].index("Via")] = ("Via", str(changed))


def response_destination(via: Via, transport: str) -> Peer:
    """Where a response to a request with top Via ``via`` goes (RFC 3261 18.2.2, RFC 3581 4)."""
    host = via.received or via.host
    port = via.rport or via.port or 5060
    return Peer(transport, host.strip("[]") if host.startswith("[") else host, port)


def make_ack(request: Request, response: Response) -> Request:
    """The ACK to a 3xx-6xx (RFC 3261 17.1.1.3): same Request-URI, top Via, Route, Call-ID, From and CSeq
    number as the INVITE, the To of the response."""
    ack = Request(method="ACK", uri=request.uri)
    ack.headers.append(("Via", request.get_all("Via")[0]))
    for value in request.get_all("Route"):
        ack.headers.append(("Route", value))
    ack.headers.extend([("Max-Forwards", "70"), ("From", request.get("From") or ""),
                        ("To", response.get("To") or ""), ("Call-ID", request.get("Call-ID") or ""),
                        ("CSeq", f"{request.cseq.seq} ACK")])
    return ack


def make_cancel(request: Request) -> Request:
    """The CANCEL of an INVITE (RFC 3261 9.1): its Request-URI, top Via (same branch), Route, Call-ID,
    From, To and CSeq number."""
    cancel = Request(method="CANCEL", uri=request.uri)
    cancel.headers.append(("Via", request.get_all("Via")[0]))
    for value in request.get_all("Route"):
        cancel.headers.append(("Route", value))
    cancel.headers.extend([("Max-Forwards", "70"), ("From", request.get("From") or ""),
                           ("To", request.get("To") or ""), ("Call-ID", request.get("Call-ID") or ""),
                           ("CSeq", f"{request.cseq.seq} CANCEL")])
    return cancel


class TransactionUser(Protocol):
    """What the layer above (the UA core) is told."""

    def request_received(self, request: Request, transaction: ServerTransaction | None, source: Peer) -> None:
        """A new request (``transaction`` None: an ACK that matched no transaction, i.e. the ACK to a 2xx)."""

    def stray_response(self, response: Response, source: Peer) -> None:
        """A response that matched no client transaction (a 2xx retransmitted after the INVITE's ended)."""


class _Transaction:
    """What the four machines share: state, timers, the layer, the peer."""

    state: str

    def __init__(self, layer: TransactionLayer, key: tuple[str, ...], peer: Peer):
        self.layer = layer
        self.key = key
        self.peer = peer
        self._timers: dict[str, Any] = {}
        #: called once when the transaction ends
        self.on_terminated: Callable[[], None] | None = None

    @property
    def reliable(self) -> bool:
        return self.peer.reliable

    def _start(self, name: str, delay: float, fire: Callable[[], None]) -> None:
        self._cancel(name)
        self._timers[name] = self.layer.clock.callLater(delay, self._fired, name, fire)

    def _fired(self, name: str, fire: Callable[[], None]) -> None:
        self._timers.pop(name, None)
        fire()

    def _cancel(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def timer(self, name: str) -> Any:
        """The running timer ``name`` (``"A"``, ``"B"``, ...) or None (for tests and debugging)."""
        return self._timers.get(name)

    def _after(self, name: str, delay: float, fire: Callable[[], None]) -> None:
        """``fire`` after ``delay``, or now when the delay is zero (a reliable transport's D, I, J, K)."""
        if delay <= 0:
            fire()
        else:
            self._start(name, delay, fire)

    def _send(self, message: Message) -> None:
        self.layer.send(message, self.peer)

    def terminate(self) -> None:
        if self.state == "terminated":
            return
        self.state = "terminated"
        for name in list(self._timers):
            self._cancel(name)
        self.layer._forget(self)
        if self.on_terminated is not None:
            self.on_terminated()


# -------------------------------------------------------------------------------------------------
# client transactions


class ClientTransaction(_Transaction):
    """A non-INVITE client transaction (RFC 3261 17.1.2)."""

    def __init__(self, layer: TransactionLayer, request: Request, peer: Peer,
                 on_response: Callable[[Response], None], on_timeout: Callable[[], None]):
        branch = request.top_via.branch if request.top_via else None
        super().__init__(layer, (branch or "", request.method), peer)
        self.request = request
        self.on_response = on_response
        self.on_timeout = on_timeout
        self.state = "trying"
        self._interval = layer.timers.t1

    def start(self) -> None:
        self._send(self.request)
        if not self.reliable:
            self._start("E", self._interval, self._retransmit)
        self._start("F", 64 * self.layer.timers.t1, self._timed_out)

    def _retransmit(self) -> None:
        self._send(self.request)
        timers = self.layer.timers
        self._interval = timers.t2 if self.state == "proceeding" else min(2 * self._interval, timers.t2)
        self._start("E", self._interval, self._retransmit)

    def _timed_out(self) -> None:
        self.terminate()
        self.on_timeout()

    def response_received(self, response: Response) -> None:
        if self.state in ("completed", "terminated"):
            return  # a retransmitted final response, absorbed (timer K)
        if response.status < 200:
            self.state = "proceeding"
            self.on_response(response)
            return
        self.state = "completed"
        self._cancel("E")
        self._cancel("F")
        self.on_response(response)
        self._after("K", self.layer.timers.t4 if not self.reliable else 0, self.terminate)


class InviteClientTransaction(_Transaction):
    """An INVITE client transaction (RFC 3261 17.1.1, RFC 6026 Accepted state)."""

    def __init__(self, layer: TransactionLayer, request: Request, peer: Peer,
                 on_response: Callable[[Response], None], on_timeout: Callable[[], None]):
        branch = request.top_via.branch if request.top_via else None
        super().__init__(layer, (branch or "", "INVITE"), peer)
        self.request = request
        self.on_response = on_response
        self.on_timeout = on_timeout
        self.state = "calling"
        self._interval = layer.timers.t1
        self._ack: Request | None = None
        self._cancel_wanted = False
        #: the CANCEL's client transaction, once sent
        self.cancel_transaction: ClientTransaction | None = None
        self._cancel_handlers: tuple[Callable[[Response], None], Callable[[], None]] | None = None

    def start(self) -> None:
        self._send(self.request)
        if not self.reliable:
            self._start("A", self._interval, self._retransmit)
        self._start("B", 64 * self.layer.timers.t1, self._timed_out)

    def _retransmit(self) -> None:
        self._send(self.request)
        self._interval *= 2
        self._start("A", self._interval, self._retransmit)

    def _timed_out(self) -> None:
        self.terminate()
        self.on_timeout()

    def cancel(self, on_response: Callable[[Response], None] | None = None,
               on_timeout: Callable[[], None] | None = None) -> None:
        """CANCEL this INVITE: now if a provisional response came, else as soon as one does (RFC 3261 9.1).
        Nothing happens once a final response came."""
        if self.state not in ("calling", "proceeding") or self._cancel_wanted:
            return
        self._cancel_wanted = True
        self._cancel_handlers = (on_response or (lambda response: None), on_timeout or (lambda: None))
        if self.state == "proceeding":
            self._send_cancel()

    def _send_cancel(self) -> None:
        assert self._cancel_handlers is not None
        self.cancel_transaction = self.layer.client(make_cancel(self.request), self.peer, *self._cancel_handlers)

    def response_received(self, response: Response) -> None:
        status = response.status
        if self.state in ("calling", "proceeding"):
            self._cancel("A")
            if status < 200:
                if self.state == "calling":
                    self._cancel("B")
                    self.state = "proceeding"
                    if self._cancel_wanted:
                        self._send_cancel()
                self.on_response(response)
            elif status < 300:
                self._cancel("B")
                self.state = "accepted"
                self.on_response(response)
                self._start("M", 64 * self.layer.timers.t1, self.terminate)
            else:
                self._cancel("B")
                self.state = "completed"
                self._ack = make_ack(self.request, response)
                self._send(self._ack)
                self.on_response(response)
                self._after("D", self.layer.timers.d if not self.reliable else 0, self.terminate)
        elif self.state == "accepted" and 200 <= status < 300:
            self.on_response(response)  # the TU re-ACKs a retransmitted 2xx
        elif self.state == "completed" and status >= 300 and self._ack is not None:
            self._send(self._ack)


# -------------------------------------------------------------------------------------------------
# server transactions


class ServerTransaction(_Transaction):
    """A non-INVITE server transaction (RFC 3261 17.2.2)."""

    def __init__(self, layer: TransactionLayer, key: tuple[str, ...], request: Request, peer: Peer):
        super().__init__(layer, key, peer)
        self.request = request
        self.state = "trying"
        self.last_response: Response | None = None

    def respond(self, response: Response) -> None:
        """Send ``response`` (the TU's); a final one ends the transaction after timer J."""
        if self.state in ("completed", "terminated"):
            return
        self.last_response = response
        self._send(response)
        if response.status < 200:
            self.state = "proceeding"
        else:
            self.state = "completed"
            self._after("J", 64 * self.layer.timers.t1 if not self.reliable else 0, self.terminate)

    def request_retransmitted(self, request: Request, source: Peer) -> None:
        if self.state in ("proceeding", "completed") and self.last_response is not None:
            self._send(self.last_response)


class InviteServerTransaction(ServerTransaction):
    """An INVITE server transaction (RFC 3261 17.2.1, RFC 6026 Accepted state)."""

    def __init__(self, layer: TransactionLayer, key: tuple[str, ...], request: Request, peer: Peer):
        super().__init__(layer, key, request, peer)
        self.state = "proceeding"
        self._interval = layer.timers.t1
        #: called when timer H fires: the ACK to a 3xx-6xx never came
        self.on_no_ack: Callable[[], None] | None = None

    def start(self, trying: bool = True) -> None:
        if trying:
            self.respond(self.request.response(100))

    def respond(self, response: Response) -> None:
        status = response.status
        if self.state == "accepted" and 200 <= status < 300:
            self._send(response)  # the TU's 2xx retransmission
            return
        if self.state != "proceeding":
            return
        self.last_response = response
        self._send(response)
        timers = self.layer.timers
        if status < 200:
            return
        if status < 300:
            self.state = "accepted"
            self._start("L", 64 * timers.t1, self.terminate)
            return
        self.state = "completed"
        if not self.reliable:
            self._start("G", self._interval, self._retransmit)
        self._start("H", 64 * timers.t1, self._no_ack)

    def _retransmit(self) -> None:
        assert self.last_response is not None
        self._send(self.last_response)
        self._interval = min(2 * self._interval, self.layer.timers.t2)
        self._start("G", self._interval, self._retransmit)

    def _no_ack(self) -> None:
        self.terminate()
        if self.on_no_ack is not None:
            self.on_no_ack()

    def request_retransmitted(self, request: Request, source: Peer) -> None:
        if request.method == "ACK":
            if self.state == "accepted":
                self.layer.tu.request_received(request, None, source)  # the ACK to the 2xx (RFC 6026 8.7)
            elif self.state == "completed":
                self.state = "confirmed"
                self._cancel("G")
                self._cancel("H")
                self._after("I", self.layer.timers.t4 if not self.reliable else 0, self.terminate)
            return
        if self.state in ("proceeding", "completed") and self.last_response is not None:
            self._send(self.last_response)
        # accepted: a retransmitted INVITE is absorbed (RFC 6026 8.7)


# -------------------------------------------------------------------------------------------------
# the layer


class TransactionLayer:
    """The transactions of one SIP endpoint, on ``clock``.

    :param clock: ``IReactorTime`` for every timer.
    :param send: ``send(message, peer)``, the transport (serialises and writes).
    :param tu: the transaction user (:class:`TransactionUser`).
    :param sent_by: ``sent_by(transport)`` → the ``host:port`` this endpoint puts in its Via.
    """

    def __init__(self, clock: Any, send: Callable[[Message, Peer], None], tu: TransactionUser,
                 sent_by: Callable[[str], str], *, timers: Timers = Timers(),
                 random: Callable[[int], bytes] = os.urandom, max_server_transactions: int = 10000,
                 stranger_share: float = 0.5):
        self.clock = clock
        #: past this many live server transactions a new request gets 503 statelessly (a flood cannot
        #: make the layer hold unbounded state); counted in ``overloaded``
        self.max_server_transactions = max_server_transactions
        #: the share of those places that requests from sources the TU does not trust (``tu.trusted(peer)``
        #: false: hosts that are no trunk) may hold together, so that their flood leaves the rest to trunks
        self.stranger_places = max(1, int(max_server_transactions * stranger_share))
        self._strangers: set[tuple[str, ...]] = set()
        self.overloaded = 0
        self._send = send
        self.tu = tu
        self.sent_by = sent_by
        self.timers = timers
        self.random = random
        self._clients: dict[tuple[str, ...], ClientTransaction | InviteClientTransaction] = {}
        self._servers: dict[tuple[str, ...], ServerTransaction] = {}

    def send(self, message: Message, peer: Peer) -> None:
        self._send(message, peer)

    # -- client side
    def _prepare(self, request: Request, peer: Peer) -> None:
        """Put this endpoint's Via (a new branch, rport) on top of ``request``."""
        via = f"SIP/2.0/{peer.transport.upper()} {self.sent_by(peer.transport)};branch={new_branch(self.random)};rport"
        request.add("Via", via, first=True)

    def client(self, request: Request, peer: Peer, on_response: Callable[[Response], None],
               on_timeout: Callable[[], None]) -> ClientTransaction:
        """Start a non-INVITE client transaction (a CANCEL keeps the INVITE's Via and branch)."""
        if request.method != "CANCEL":
            self._prepare(request, peer)
        transaction = ClientTransaction(self, request, peer, on_response, on_timeout)
        self._clients[transaction.key] = transaction
        transaction.start()
        return transaction

    def invite(self, request: Request, peer: Peer, on_response: Callable[[Response], None],
               on_timeout: Callable[[], None]) -> InviteClientTransaction:
        """Start an INVITE client transaction."""
        self._prepare(request, peer)
        transaction = InviteClientTransaction(self, request, peer, on_response, on_timeout)
        self._clients[transaction.key] = transaction
        transaction.start()
        return transaction

    def send_stateless(self, request: Request, peer: Peer) -> None:
        """Send ``request`` outside any transaction, with this endpoint's Via and a new branch: the ACK
        to a 2xx (RFC 3261 13.2.2.4), sent again by the TU for each retransmitted 2xx."""
        if request.get("Via") is None:
            self._prepare(request, peer)
        self.send(request, peer)

    def request(self, request: Request, peer: Peer) -> defer.Deferred[Response]:
        """A non-INVITE request's final response (provisional ones are skipped); fails with
        :class:`TransactionTimeout` when none comes."""
        result: defer.Deferred[Response] = defer.Deferred()

        def on_response(response: Response) -> None:
            if response.status >= 200 and not result.called:
                result.callback(response)

        def on_timeout() -> None:
            if not result.called:
                result.errback(TransactionTimeout(f"no final response to {request.method} from {peer.host}"))

        self.client(request, peer, on_response, on_timeout)
        return result

    # -- input
    def receive(self, message: Message, source: Peer) -> None:
        """A message the transport parsed, from ``source``."""
        if isinstance(message, Response):
            self._response(message, source)
        elif isinstance(message, Request):
            self._request(message, source)

    def _response(self, response: Response, source: Peer) -> None:
        via = response.top_via
        if via is None:
            return
        transaction = self._clients.get((via.branch or "", response.cseq.method))
        if transaction is None or via.sent_by != self.sent_by(transaction.peer.transport).lower():
            self.tu.stray_response(response, source)
            return
        transaction.response_received(response)

    def server_key(self, request: Request, method: str | None = None) -> tuple[str, ...]:
        """The key matching ``request`` to its server transaction (RFC 3261 17.2.3); ``method`` overrides."""
        via = request.top_via
        assert via is not None
        method = method or ("INVITE" if request.method == "ACK" else request.method)
        if via.branch and via.branch.startswith(BRANCH_COOKIE):
            return (via.branch, via.sent_by, method)
        # RFC 2543: Request-URI, tags, Call-ID, CSeq number and top Via (the To tag left out, as an ACK's
        # carries the tag the response added)
        return ("2543", request.uri, request.from_.tag or "", request.call_id, str(request.cseq.seq), str(via),
                method)

    def _request(self, request: Request, source: Peer) -> None:
        stamp_via(request, source)
        key = self.server_key(request)
        transaction = self._servers.get(key)
        if transaction is not None:
            transaction.request_retransmitted(request, source)
            return
        if request.method == "ACK":
            self.tu.request_received(request, None, source)
            return
        peer = response_destination(request.top_via, source.transport) if not source.reliable else source  # type: ignore[arg-type]
        trusted = getattr(self.tu, "trusted", None)
        stranger = trusted is not None and not trusted(source)
        if len(self._servers) >= self.max_server_transactions or (
                stranger and len(self._strangers) >= self.stranger_places):
            self.overloaded += 1
            busy = request.response(503, to_tag=self.random(6).hex())
            busy.add("Retry-After", "5")
            self.send(busy, peer)
            notify = getattr(self.tu, "overloaded", None)
            if notify is not None:
                notify(request, source)
            return
        server: ServerTransaction
        if request.method == "INVITE":
            server = InviteServerTransaction(self, key, request, peer)
        else:
            server = ServerTransaction(self, key, request, peer)
        self._servers[key] = server
        if stranger:
            self._strangers.add(key)
        if isinstance(server, InviteServerTransaction):
            server.start()
        self.tu.request_received(request, server, source)

    def find_invite(self, cancel: Request) -> InviteServerTransaction | None:
        """The INVITE server transaction a CANCEL is for (RFC 3261 9.2)."""
        transaction = self._servers.get(self.server_key(cancel, "INVITE"))
        return transaction if isinstance(transaction, InviteServerTransaction) else None

    def _forget(self, transaction: _Transaction) -> None:
        if self._clients.get(transaction.key) is transaction:
            del self._clients[transaction.key]
        if self._servers.get(transaction.key) is transaction:
            del self._servers[transaction.key]
            self._strangers.discard(transaction.key)

    @property
    def count(self) -> int:
        """Transactions alive (client and server)."""
        return len(self._clients) + len(self._servers)

    def close(self) -> None:
        """End every transaction and cancel its timers (the endpoint is stopping)."""
        for transaction in [*self._clients.values(), *self._servers.values()]:
            transaction.terminate()
