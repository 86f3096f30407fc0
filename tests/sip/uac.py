"""A tiny SIP UAC built on gateway.sip's layers, for the tests against a SIPp UAS: it places a call (digest
on 401/407), ACKs the 2xx (again for each retransmission), holds and retrieves by re-INVITE, and hangs up."""

from __future__ import annotations

import itertools

from twisted.internet import defer

from gateway.sip.dialog import Dialog
from gateway.sip.digest import DigestClient, best_challenge, parse_challenge
from gateway.sip.message import Request
from gateway.sip.sdp import LocalMedia, parse_sdp
from gateway.sip.transaction import Peer, TransactionTimeout
from gateway.sip.transport import SIPEndpoint, TrunkMatcher, UDPTransport
from gateway.boundary import budget_factory

_calls = itertools.count(1)


class TinyUAC:
    def __init__(self, reactor, port, *, username=None, password=None):
        self.reactor = reactor
        self.port = port
        self.endpoint = SIPEndpoint(reactor, TrunkMatcher([]), lambda transport: f"127.0.0.1:{port}")
        self.udp = UDPTransport(self.endpoint, budget_factory(reactor, "sip")("udp"))
        self.endpoint.add_transport("UDP", self.udp)
        self.endpoint.on_stray_response = self._stray
        self.digest = DigestClient(username, password) if username else None
        self.acks = {}  # call-id -> (ack request, peer): re-sent for a retransmitted 2xx
        self.statuses = []  # every final and provisional status of INVITEs, in order
        self.listening = None

    def start(self):
        self.listening = self.reactor.listenUDP(self.port, self.udp, interface="127.0.0.1")

    def stop(self):
        self.endpoint.close()
        return self.listening.stopListening()

    def _stray(self, response, source):
        if 200 <= response.status < 300 and response.cseq.method == "INVITE":
            entry = self.acks.get(response.call_id)
            if entry is not None:
                self.endpoint.layer.send(*entry)

    def _invite(self, request: Request, peer: Peer) -> defer.Deferred:
        """The INVITE's final response (2xx ACKed; 3xx-6xx ACKed by the transaction)."""
        result = defer.Deferred()
        sent = []

        def on_response(response):
            if not result.called:
                self.statuses.append(response.status)
            if response.status < 200:
                return
            if 200 <= response.status < 300:
                dialog = Dialog.as_uac(request, response) if not sent else sent[0]
                if not sent:
                    sent.append(dialog)
                ack = dialog.ack(request)
                self.endpoint.layer.send_stateless(ack, peer)
                self.acks[request.call_id] = (ack, peer)
            if not result.called:
                result.callback(response)

        def on_timeout():
            if not result.called:
                result.errback(TransactionTimeout("no final response to INVITE"))

        self.endpoint.layer.invite(request, peer, on_response, on_timeout)
        return result

    async def call(self, host, port, number, *, hold=True):
        """Call ``number`` at ``host:port``: answer, (hold, retrieve,) hang up. Returns what happened."""
        peer = Peer("UDP", host, port)
        media = LocalMedia(address="127.0.0.1", port=41000, session_id=str(next(_calls)))
        call_id = f"uac-{next(_calls)}@127.0.0.1"
        tag = self.endpoint.new_tag()

        def invite(cseq, authorization=None):
            request = Request(method="INVITE", uri=f"sip:{number}@{host}:{port}")
            request.headers += [("Max-Forwards", "70"), ("From", f"<sip:gateway@127.0.0.1>;tag={tag}"),
                                ("To", f"<sip:{number}@{host}:{port}>"), ("Call-ID", call_id),
                                ("CSeq", f"{cseq} INVITE"), ("Contact", f"<sip:gateway@127.0.0.1:{self.port}>"),
                                ("Content-Type", "application/sdp")]
            if authorization:
                request.headers.append(authorization)
            request.body = media.offer()
            return request

        request = invite(1)
        response = await self._invite(request, peer)
        if response.status in (401, 407) and self.digest is not None:
            name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
            challenge = best_challenge(parse_challenge(v, proxy=response.status == 407)
                                       for v in response.get_all(name))
            authorization = (challenge.header, self.digest.authorization(challenge, "INVITE", request.uri))
            request = invite(2, authorization)
            response = await self._invite(request, peer)
        outcome = {"answer": response.status}
        if response.status >= 300:
            return outcome
        dialog = Dialog.as_uac(request, response)
        outcome["agreed"] = media.accept_answer(parse_sdp(response.body))
        if hold:
            for held in (True, False):
                reinvite = dialog.request("INVITE")
                reinvite.headers += [("Contact", f"<sip:gateway@127.0.0.1:{self.port}>"),
                                     ("Content-Type", "application/sdp")]
                reinvite.body = media.offer(hold=held)
                answer = await self._invite(reinvite, peer)
                outcome["hold" if held else "retrieve"] = (answer.status,
                                                          media.accept_answer(parse_sdp(answer.body)).direction)
        bye = dialog.request("BYE")
        outcome["bye"] = (await self.endpoint.layer.request(bye, peer)).status
        return outcome
