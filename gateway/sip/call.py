"""SIP calls: the UA core of the trunk driver, with no knowledge of the call core.

:class:`CallManager` sits on a :class:`~gateway.sip.transport.SIPEndpoint` and
turns INVITE dialogs into :class:`SIPCall` objects with a small surface the
``sip`` driver plugin maps onto the core's leg interface:

- **inbound**: an INVITE from a trunk (the endpoint already refused strangers)
  becomes a call handed to ``on_incoming(call)``, which returns the call's
  :class:`CallEvents` (or rejects it). The SDP offer is answered up front
  (488 when nothing fits). :meth:`SIPCall.ring` sends 180,
  :meth:`SIPCall.answer` the 200 with SDP (re-sent until the ACK; without an
  ACK the call ends with cause ``no_ack`` and a BYE), :meth:`SIPCall.reject`
  a final error (486 busy, 404/480 no route, 603 decline). A CANCEL ends it
  ``cancelled`` (200 to the CANCEL, 487 to the INVITE), a BYE ``remote_hangup``.
- **outbound**: :meth:`CallManager.dial` sends the INVITE (digest on 401/407,
  once per nonce); 180/183 call ``ringing``; a 2xx is ACKed (again for each
  retransmission) and calls ``answered``; 486/600 end it ``busy``, 603
  ``rejected``, 408/480 ``no_answer``, 487 ``cancelled``, anything else
  ``failed``. :meth:`SIPCall.hangup` CANCELs before the answer, BYEs after it.
- **hold and retrieve** both ways: :meth:`SIPCall.hold` / :meth:`SIPCall.retrieve`
  send a re-INVITE offering ``sendonly`` / ``sendrecv``; a peer's re-INVITE is
  answered with the reverse direction (491 while ours is pending), and either
  way ``media_changed`` reports the new :class:`~gateway.sip.sdp.Negotiated`.

In-dialog requests go to the trunk's address (the peer the INVITE came from or
went to), through the route set's Route headers: a trunk is one address, and
a Contact behind NAT may not be reachable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger

from gateway.sip.dialog import Dialog, DialogError, SuccessRetransmitter
from gateway.sip.digest import MAX_CHALLENGES, ChallengeAnswers, DigestClient
from gateway.sip.message import Request, Response, SipURI
from gateway.sip.sdp import LocalMedia, Negotiated, SDPError, parse_sdp
from gateway.sip.transaction import InviteClientTransaction, Peer, ServerTransaction
from gateway.sip.transport import SIPEndpoint

__all__ = ["CAUSES", "CallEvents", "CallManager", "MAX_CHALLENGES", "SIPCall", "SIPCallError"]

log = Logger()

#: why a call ended
CAUSES = frozenset({"normal", "remote_hangup", "busy", "rejected", "no_answer", "cancelled", "failed", "no_ack"})
#: final responses to our INVITE and the cause they end the call with (others: failed)
OUTBOUND_CAUSES = {486: "busy", 600: "busy", 603: "rejected", 408: "no_answer", 480: "no_answer",
                   487: "cancelled"}


class SIPCallError(Exception):
    """A call operation that cannot be done in the call's state (or the peer refused it)."""


class CallEvents(Protocol):
    """What a call reports to its user (the driver)."""

    def ringing(self, call: SIPCall) -> None: ...

    def answered(self, call: SIPCall, media: Negotiated) -> None: ...

    def media_changed(self, call: SIPCall, media: Negotiated) -> None: ...

    def ended(self, call: SIPCall, cause: str, detail: str) -> None: ...


class SIPCall:
    """One INVITE dialog, inbound or outbound."""

    def __init__(self, manager: CallManager, *, direction: str, call_id: str, local_tag: str, peer: Peer,
                 media: LocalMedia, trunk: str | None):
        self.manager = manager
        self.direction = direction
        self.call_id = call_id
        self.local_tag = local_tag
        self.peer = peer
        self.media = media
        self.trunk = trunk
        self.events: CallEvents | None = None
        #: "incoming", "calling", "ringing", "answered", "ended"
        self.state = "incoming" if direction == "inbound" else "calling"
        self.cause: str | None = None
        self.dialog: Dialog | None = None
        self.negotiated: Negotiated | None = None
        self.caller: str | None = None
        self.callee: str | None = None
        # inbound
        self.invite: Request | None = None
        self.server_transaction: ServerTransaction | None = None
        self._answer_body = b""
        self._answered: defer.Deferred[Negotiated] | None = None
        self._retransmitters: dict[int, SuccessRetransmitter] = {}  # by INVITE CSeq number
        # outbound
        self.client_transaction: InviteClientTransaction | None = None
        self._ack: Request | None = None
        self._cancelled = False
        self._challenges = ChallengeAnswers()
        self._reinvite: defer.Deferred[Negotiated] | None = None

    def __repr__(self) -> str:
        return f"<SIPCall {self.direction} {self.call_id} {self.state}>"

    # -- shared
    def _end(self, cause: str, detail: str = "") -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        self.cause = cause
        for retransmitter in self._retransmitters.values():
            retransmitter.cancel()
        self._retransmitters.clear()
        self.manager._forget(self)
        log.info("SIP call {call_id} ({direction}, trunk {trunk}) ended: {cause} {detail}", call_id=self.call_id,
                 direction=self.direction, trunk=self.trunk, cause=cause, detail=detail)
        if self._answered is not None and not self._answered.called:
            self._answered.errback(SIPCallError(f"the call ended: {cause} {detail}".strip()))
        if self._reinvite is not None and not self._reinvite.called:
            self._reinvite.errback(SIPCallError(f"the call ended: {cause} {detail}".strip()))
        if self.events is not None:
            self.events.ended(self, cause, detail)

    def _headers(self) -> list[tuple[str, str]]:
        return [("Contact", f"<{self.manager.contact}>"), ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")]

    def hangup(self) -> defer.Deferred[None]:
        """End the call: BYE once answered; CANCEL (outbound) or 480 (inbound) before."""
        if self.state == "ended":
            return defer.succeed(None)
        if self.state != "answered":
            if self.direction == "outbound":
                self.cancel()
            else:
                self.reject(480)
            return defer.succeed(None)
        assert self.dialog is not None
        bye = self.dialog.request("BYE")
        self._end("normal")
        result = self.manager.endpoint.layer.request(bye, self.peer)
        return result.addCallbacks(lambda response: None, lambda failure: None)

    def hold(self) -> defer.Deferred[Negotiated]:
        """Put the peer on hold (re-INVITE offering sendonly)."""
        return self._reoffer(True)

    def retrieve(self) -> defer.Deferred[Negotiated]:
        """Take the peer off hold (re-INVITE offering sendrecv)."""
        return self._reoffer(False)

    def _reoffer(self, hold: bool) -> defer.Deferred[Negotiated]:
        if self.state != "answered" or self.dialog is None:
            return defer.fail(SIPCallError(f"cannot re-INVITE a call that is {self.state}"))
        if self._reinvite is not None and not self._reinvite.called:
            return defer.fail(SIPCallError("a re-INVITE is already pending"))
        result: defer.Deferred[Negotiated] = defer.Deferred()
        self._reinvite = result
        request = self.dialog.request("INVITE")
        request.headers += [*self._headers(), ("Content-Type", "application/sdp")]
        # the peer holds us while what was agreed last lets us not send (it offered sendonly or inactive)
        peer_holds = self.negotiated is not None and not self.negotiated.send
        previous = self.media.wanted
        request.body = self.media.offer(hold=hold, peer_holds=peer_holds)
        dialog = self.dialog

        def refused(reason: str) -> None:
            self.media.wanted = previous  # a refused offer changes nothing (RFC 3264 8)
            if not result.called:
                result.errback(SIPCallError(reason))

        def on_response(response: Response) -> None:
            if response.status < 200:
                return
            if response.status < 300:
                ack = dialog.ack(request)
                self.manager.endpoint.layer.send_stateless(ack, self.peer)
                if result.called:
                    return
                try:
                    agreed = self.media.accept_answer(parse_sdp(response.body))
                except SDPError as error:
                    refused(f"the re-INVITE's answer: {error}")
                    return
                self.negotiated = agreed
                if self.events is not None:  # the event before the Deferred, whose callbacks may end the call
                    self.events.media_changed(self, agreed)
                result.callback(agreed)
            elif not result.called:
                refused(f"the re-INVITE was refused: {response.status} {response.reason}")

        def on_timeout() -> None:
            refused("no answer to the re-INVITE")
            self.hangup()

        self.manager.endpoint.layer.invite(request, self.peer, on_response, on_timeout)
        return result

    # -- inbound
    def ring(self) -> None:
        """Send 180 Ringing."""
        if self.state == "incoming" and self.server_transaction is not None:
            self.state = "ringing"
            self.manager.endpoint.respond(self.server_transaction, 180, headers=self._headers(),
                                          to_tag=self.local_tag)

    def answer(self) -> defer.Deferred[Negotiated]:
        """Send 200 with the SDP answer; fires with what was agreed when the ACK comes."""
        if self.direction != "inbound" or self.state not in ("incoming", "ringing"):
            return defer.fail(SIPCallError(f"cannot answer a call that is {self.state}"))
        assert self.server_transaction is not None and self.invite is not None
        self._answered = defer.Deferred()
        response = self.manager.endpoint.respond(
            self.server_transaction, 200, headers=[*self._headers(), ("Content-Type", "application/sdp")],
            body=self._answer_body, to_tag=self.local_tag)
        self.dialog = Dialog.as_uas(self.invite, response)
        self.state = "answered"
        transaction = self.server_transaction
        self._retransmitters[self.invite.cseq.seq] = SuccessRetransmitter(
            self.manager.clock, lambda: transaction.respond(response), self._no_ack, timers=self.manager.timers)
        return self._answered

    def _no_ack(self) -> None:
        if self.dialog is not None and self.state == "answered":
            bye = self.dialog.request("BYE")
            self.manager.endpoint.layer.request(bye, self.peer).addErrback(lambda failure: None)
        self._end("no_ack", "no ACK to the 200")

    def reject(self, status: int = 486) -> None:
        """Refuse an inbound call that is not answered (486 busy, 404/480 no route, 603 decline)."""
        if self.direction != "inbound" or self.state not in ("incoming", "ringing"):
            return
        assert self.server_transaction is not None
        self.manager.endpoint.respond(self.server_transaction, status, to_tag=self.local_tag)
        self._end("rejected", f"answered {status}")

    def _ack_received(self, request: Request) -> None:
        retransmitter = self._retransmitters.pop(request.cseq.seq, None)
        if retransmitter is None:
            return
        retransmitter.acked()
        if self._answered is not None and not self._answered.called and self.negotiated is not None:
            if self.events is not None:
                self.events.answered(self, self.negotiated)
            self._answered.callback(self.negotiated)

    def _cancel_received(self) -> None:
        if self.state in ("incoming", "ringing") and self.server_transaction is not None:
            self.manager.endpoint.respond(self.server_transaction, 487, to_tag=self.local_tag)
            self._end("cancelled", "the caller cancelled")

    def _bye_received(self, transaction: ServerTransaction) -> None:
        self.manager.endpoint.respond(transaction, 200, to_tag=self.local_tag)
        self._end("remote_hangup")

    def _reinvite_received(self, request: Request, transaction: ServerTransaction) -> None:
        if self._reinvite is not None and not self._reinvite.called:
            self.manager.endpoint.respond(transaction, 491, to_tag=self.local_tag)  # glare (RFC 3261 14.2)
            return
        try:
            body, agreed = self.media.answer(parse_sdp(request.body))
        except SDPError as error:
            self.manager.endpoint.respond(transaction, error.status, to_tag=self.local_tag)
            return
        response = self.manager.endpoint.respond(
            transaction, 200, headers=[*self._headers(), ("Content-Type", "application/sdp")], body=body,
            to_tag=self.local_tag)
        self._retransmitters[request.cseq.seq] = SuccessRetransmitter(
            self.manager.clock, lambda: transaction.respond(response), self._no_ack, timers=self.manager.timers)
        self.negotiated = agreed
        if self.events is not None:
            self.events.media_changed(self, agreed)

    # -- outbound
    def cancel(self) -> None:
        """CANCEL an outbound call not yet answered (it ends ``cancelled`` on the 487)."""
        if self.direction == "outbound" and self.state in ("calling", "ringing") and self.client_transaction:
            self._cancelled = True
            self.client_transaction.cancel()

    def _send_invite(self, request: Request) -> None:
        self.invite = request
        self.client_transaction = self.manager.endpoint.layer.invite(
            request, self.peer, lambda response: self._invite_response(request, response), self._invite_timeout)

    def _invite_timeout(self) -> None:
        self._end("failed", f"no answer to the INVITE from {self.peer.host}:{self.peer.port}")

    def _invite_response(self, request: Request, response: Response) -> None:
        status = response.status
        if request is not self.invite:
            return  # an answer to an INVITE a digest retry replaced
        if status < 200:
            if status in (180, 183) and self.state == "calling":
                self.state = "ringing"
                if self.events is not None:
                    self.events.ringing(self)
            return
        if status < 300:
            if self._ack is not None:
                self.manager.endpoint.layer.send(self._ack, self.peer)  # a retransmitted 2xx
                return
            try:
                self.dialog = Dialog.as_uac(request, response)
            except DialogError as error:
                self._end("failed", f"the 200 cannot set up a dialog: {error}")
                return
            self._ack = self.dialog.ack(request)
            self.manager.endpoint.layer.send_stateless(self._ack, self.peer)
            if self._cancelled:
                self.state = "answered"
                self.hangup()
                return
            try:
                self.negotiated = self.media.accept_answer(parse_sdp(response.body))
            except SDPError as error:
                self.state = "answered"
                assert self.dialog is not None
                self.manager.endpoint.layer.request(self.dialog.request("BYE"), self.peer).addErrback(
                    lambda failure: None)
                self._end("failed", f"the answer's SDP: {error}")
                return
            self.state = "answered"
            if self.events is not None:
                self.events.answered(self, self.negotiated)
            return
        if status in (401, 407) and self._authenticate(request, response):
            return
        cause = OUTBOUND_CAUSES.get(status, "failed")
        if self._cancelled and status == 487:
            cause = "cancelled"
        self._end(cause, f"{status} {response.reason}")

    def _authenticate(self, request: Request, response: Response) -> bool:
        digest = self.manager.credentials.get(self.trunk or "")
        if digest is None:
            return False
        challenge = self._challenges.next(response)
        if challenge is None:
            return False
        retry = Request(method="INVITE", uri=request.uri)
        retry.headers = [(k, v) for k, v in request.headers if k not in ("Via", "Authorization",
                                                                         "Proxy-Authorization", "CSeq")]
        retry.headers.append(("CSeq", f"{request.cseq.seq + 1} INVITE"))
        retry.headers.append((challenge.header, digest.authorization(challenge, "INVITE", request.uri)))
        retry.body = request.body
        self._send_invite(retry)
        return True


class CallManager:
    """The INVITE dialogs of one SIP endpoint (see the module docstring).

    :param endpoint: the :class:`SIPEndpoint`; the manager registers its INVITE, ACK, BYE and CANCEL handlers.
    :param contact: this gateway's contact URI (``sip:gateway@host:port``).
    :param media_factory: ``media_factory(call_id)`` → the :class:`LocalMedia` of a new call (its RTP
        address and port).
    :param on_incoming: ``on_incoming(call)`` → the call's :class:`CallEvents`; it may ``reject`` the call.
    :param credentials: trunk name → :class:`DigestClient` for outbound INVITEs.
    :param on_media_unused: ``on_media_unused(media)`` when an INVITE the media was made for is refused
        (488: the driver frees its RTP ports). A ``media_factory`` raising answers the INVITE 503.
    """

    def __init__(self, endpoint: SIPEndpoint, *, contact: str, media_factory: Callable[[str], LocalMedia],
                 on_incoming: Callable[[SIPCall], CallEvents | None] | None = None,
                 credentials: dict[str, DigestClient] | None = None,
                 on_media_unused: Callable[[LocalMedia], None] | None = None):
        self.endpoint = endpoint
        self.clock = endpoint.clock
        self.timers = endpoint.layer.timers
        self.contact = contact
        self.media_factory = media_factory
        self.on_incoming = on_incoming
        self.credentials = credentials or {}
        self.on_media_unused = on_media_unused
        self.calls: dict[tuple[str, str], SIPCall] = {}
        self._by_invite: dict[int, SIPCall] = {}
        handlers = endpoint.handlers
        handlers["INVITE"] = self._invite
        handlers["ACK"] = self._ack
        handlers["BYE"] = self._bye
        handlers["CANCEL"] = self._cancel
        endpoint.on_stray_response = self._stray

    def _forget(self, call: SIPCall) -> None:
        self.calls.pop((call.call_id, call.local_tag), None)
        for key, value in list(self._by_invite.items()):
            if value is call:
                del self._by_invite[key]

    def _find(self, request: Request) -> SIPCall | None:
        tag = request.to.tag
        return self.calls.get((request.call_id, tag)) if tag else None

    # -- inbound
    def _invite(self, request: Request, transaction: ServerTransaction | None, source: Peer,
                trunk: str | None) -> None:
        assert transaction is not None
        if request.to.tag is not None:
            call = self._find(request)
            if call is None or call.state != "answered" or call.dialog is None:
                self.endpoint.respond(transaction, 481)
                return
            if not call.dialog.accept_remote_cseq(request):
                self.endpoint.respond(transaction, 500, to_tag=call.local_tag)
                return
            call._reinvite_received(request, transaction)
            return
        try:
            media = self.media_factory(request.call_id)
        except Exception as error:
            log.error("SIP: no media for the INVITE {call_id} from {host}:{port}: {error} (503)",
                      call_id=request.call_id, host=source.host, port=source.port, error=error)
            self.endpoint.respond(transaction, 503, headers=[("Retry-After", "5")])
            return
        call = SIPCall(self, direction="inbound", call_id=request.call_id, local_tag=self.endpoint.new_tag(),
                       peer=transaction.peer, media=media, trunk=trunk)
        call.invite = request
        call.server_transaction = transaction
        uri = request.request_uri
        call.callee = uri.user if isinstance(uri, SipURI) else None
        from_uri = request.from_.uri
        call.caller = from_uri.user if isinstance(from_uri, SipURI) else None
        try:
            call._answer_body, call.negotiated = media.answer(parse_sdp(request.body))
        except SDPError as error:
            self.endpoint.respond(transaction, error.status, to_tag=call.local_tag)
            if self.on_media_unused is not None:
                self.on_media_unused(media)
            return
        self.calls[(call.call_id, call.local_tag)] = call
        self._by_invite[id(transaction)] = call
        events = self.on_incoming(call) if self.on_incoming is not None else None
        if call.state == "ended":
            return
        if events is None:
            call.reject(480)
            return
        call.events = events

    def _ack(self, request: Request, transaction: ServerTransaction | None, source: Peer, trunk: str | None) -> None:
        call = self._find(request)
        if call is not None:
            call._ack_received(request)

    def _bye(self, request: Request, transaction: ServerTransaction | None, source: Peer, trunk: str | None) -> None:
        assert transaction is not None
        call = self._find(request)
        if call is None or call.dialog is None or not call.dialog.matches(request):
            self.endpoint.respond(transaction, 481)
            return
        call._bye_received(transaction)

    def _cancel(self, request: Request, transaction: ServerTransaction | None, source: Peer,
                trunk: str | None) -> None:
        assert transaction is not None
        invite = self.endpoint.layer.find_invite(request)
        call = self._by_invite.get(id(invite)) if invite is not None else None
        if call is None:
            self.endpoint.respond(transaction, 481)
            return
        self.endpoint.respond(transaction, 200, to_tag=call.local_tag)
        call._cancel_received()

    def _stray(self, response: Response, source: Peer) -> None:
        if 200 <= response.status < 300 and response.cseq.method == "INVITE":
            tag = response.from_.tag
            call = self.calls.get((response.call_id, tag or ""))
            if call is not None and call._ack is not None:
                self.endpoint.layer.send(call._ack, call.peer)

    # -- outbound
    def dial(self, peer: Peer, uri: str, *, from_user: str, from_host: str, events: CallEvents,
             trunk: str | None = None, display: str | None = None) -> SIPCall:
        """Call ``uri`` through ``peer`` (the trunk's proxy); reports through ``events``."""
        call_id = f"{self.endpoint.random(12).hex()}@{from_host}"
        call = SIPCall(self, direction="outbound", call_id=call_id, local_tag=self.endpoint.new_tag(), peer=peer,
                       media=self.media_factory(call_id), trunk=trunk)
        call.events = events
        call.caller, call.callee = from_user, uri
        self.calls[(call.call_id, call.local_tag)] = call
        name = f'"{display}" ' if display else ""
        request = Request(method="INVITE", uri=uri)
        request.headers += [("Max-Forwards", "70"), ("From", f"{name}<sip:{from_user}@{from_host}>;tag={call.local_tag}"),
                            ("To", f"<{uri}>"), ("Call-ID", call_id), ("CSeq", "1 INVITE"), *call._headers(),
                            ("Content-Type", "application/sdp")]
        request.body = call.media.offer()
        call._send_invite(request)
        return call

    def close(self) -> None:
        """End every call's timers (the endpoint is stopping); the calls end with cause ``failed``."""
        for call in list(self.calls.values()):
            call._end("failed", "the SIP endpoint stopped")

