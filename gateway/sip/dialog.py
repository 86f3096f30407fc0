"""Dialogs and the UA core's share of the INVITE (RFC 3261 sections 12, 13.3.1.4, 13.2.2.4).

- :class:`Dialog`: the state one INVITE's 2xx sets up on either side (Call-ID,
  tags, CSeq numbers, remote target, route set) and the requests built inside
  it, with loose routing (RFC 3261 12.2.1.1: a route set whose first URI has
  ``lr`` is sent as Route headers to the remote target; a strict router gets
  the Request-URI itself) and the ACK to a 2xx.
- :class:`SuccessRetransmitter`: the UAS core re-sends its 2xx to an INVITE
  (T1 doubling to T2) until the ACK comes, and gives up at 64*T1 (the TU then
  ends the call with a BYE); over every transport, as RFC 3261 13.3.1.4 asks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from gateway.sip.message import NameAddr, Request, Response, SipURI, parse_name_addr, parse_uri
from gateway.sip.transaction import Timers

__all__ = ["Dialog", "DialogError", "SuccessRetransmitter"]


class DialogError(ValueError):
    """A request or response cannot set up or continue a dialog (no Contact, no tag, an old CSeq)."""


@attrs.define
class Dialog:
    """One dialog, from the point of view of this UA."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    #: the route set, in the order requests carry it (each a name-addr text)
    route_set: list[str]
    local_seq: int
    remote_seq: int | None = None

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def as_uas(cls, request: Request, response: Response) -> Dialog:
        """The dialog a UAS's 2xx (or 1xx with a To tag) to ``request`` creates (RFC 3261 12.1.1)."""
        contact = _contact(request)
        local_tag = response.to.tag
        if local_tag is None:
            raise DialogError("the response has no To tag")
        return cls(call_id=request.call_id, local_tag=local_tag, remote_tag=request.from_.tag or "",
                   local_uri=str(request.to.uri), remote_uri=str(request.from_.uri), remote_target=contact,
                   route_set=list(request.get_all("Record-Route")), local_seq=0, remote_seq=request.cseq.seq)

    @classmethod
    def as_uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog a 2xx (or 1xx with a To tag) to our ``request`` creates (RFC 3261 12.1.2)."""
        contact = _contact(response)
        remote_tag = response.to.tag
        if remote_tag is None:
            raise DialogError("the response has no To tag")
        return cls(call_id=request.call_id, local_tag=request.from_.tag or "", remote_tag=remote_tag,
                   local_uri=str(request.from_.uri), remote_uri=str(request.to.uri), remote_target=contact,
                   route_set=list(reversed(response.get_all("Record-Route"))), local_seq=request.cseq.seq)

    def matches(self, request: Request) -> bool:
        """Whether a request from the peer belongs to this dialog (Call-ID, To tag ours, From tag theirs)."""
        return (request.call_id == self.call_id and request.to.tag == self.local_tag
                and (request.from_.tag or "") == self.remote_tag)

    def accept_remote_cseq(self, request: Request) -> bool:
        """RFC 3261 12.2.2: False for a request (other than ACK/CANCEL) older than the last one (a 500)."""
        if request.method in ("ACK", "CANCEL"):
            return True
        seq = request.cseq.seq
        if self.remote_seq is not None and seq <= self.remote_seq:
            return False
        self.remote_seq = seq
        return True

    def next_hop(self) -> NameAddr:
        """Where a request in this dialog is sent first: the first route, else the remote target."""
        if self.route_set:
            return parse_name_addr(self.route_set[0], "Route")
        return NameAddr(parse_uri(self.remote_target, "Contact"))

    def request(self, method: str, *, cseq: int | None = None) -> Request:
        """A new request in this dialog (RFC 3261 12.2.1.1), its CSeq the next local number (or ``cseq``)."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        routes = list(self.route_set)
        uri = self.remote_target
        if routes:
            first = parse_name_addr(routes[0], "Route").uri
            if isinstance(first, SipURI) and not first.has_param("lr"):
                # a strict router: it becomes the Request-URI, the remote target the last route
                uri = str(attrs.evolve(first, headers=None))
                routes = routes[1:] + [f"<{self.remote_target}>"]
        request = Request(method=method, uri=uri)
        for route in routes:
            request.headers.append(("Route", route))
        request.headers += [
            ("Max-Forwards", "70"),
            ("From", f"<{self.local_uri}>;tag={self.local_tag}"),
            ("To", f"<{self.remote_uri}>" + (f";tag={self.remote_tag}" if self.remote_tag else "")),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        return request

    def ack(self, invite: Request) -> Request:
        """The ACK to a 2xx for ``invite`` (RFC 3261 13.2.2.4): the INVITE's CSeq number, its credentials."""
        ack = self.request("ACK", cseq=invite.cseq.seq)
        for name in ("Authorization", "Proxy-Authorization"):
            for value in invite.get_all(name):
                ack.headers.append((name, value))
        return ack


def _contact(message: Request | Response) -> str:
    contacts = message.contacts
    if len(contacts) != 1 or contacts[0].star or contacts[0].uri is None:
        raise DialogError("a dialog needs exactly one Contact URI")
    return str(contacts[0].uri)


class SuccessRetransmitter:
    """Re-sends a 2xx to an INVITE until :meth:`acked` (RFC 3261 13.3.1.4).

    :param clock: ``IReactorTime``.
    :param send: sends the 2xx once more (the server transaction's ``respond``).
    :param on_timeout: called when no ACK came within 64*T1 (the TU then sends BYE).
    """

    def __init__(self, clock: Any, send: Callable[[], None], on_timeout: Callable[[], None], *,
                 timers: Timers = Timers()):
        self._clock = clock
        self._send = send
        self._on_timeout = on_timeout
        self._timers = timers
        self._interval = timers.t1
        self._retransmit = clock.callLater(self._interval, self._again)
        self._give_up = clock.callLater(64 * timers.t1, self._timed_out)
        self.done = False

    def _again(self) -> None:
        self._send()
        self._interval = min(2 * self._interval, self._timers.t2)
        self._retransmit = self._clock.callLater(self._interval, self._again)

    def _timed_out(self) -> None:
        self._stop()
        self._on_timeout()

    def _stop(self) -> None:
        self.done = True
        for call in (self._retransmit, self._give_up):
            if call.active():
                call.cancel()

    def acked(self) -> None:
        """The ACK came: stop."""
        if not self.done:
            self._stop()

    cancel = acked
