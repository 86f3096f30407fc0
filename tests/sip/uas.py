"""A tiny SIP UAS built on gateway.sip's layers, for the tests against a real SIPp.

It answers OPTIONS (the endpoint does), REGISTER (200, the Contact echoed), an
INVITE from a trunk with 180 then 200 and an SDP answer (the 2xx re-sent until
the ACK), BYE in the dialog with 200 (481 outside), and CANCEL of an unanswered
INVITE with 200 and a 487. What it did is counted for the test to check.
"""

from __future__ import annotations

import itertools

from prometheus_client import CollectorRegistry

from gateway.boundary import budget_factory
from gateway.sip.dialog import Dialog, SuccessRetransmitter
from gateway.sip.rtp import RTPSession
from gateway.sip.sdp import LocalMedia, SDPError, parse_sdp
from gateway.sip.transport import SIPEndpoint, TCPTransportFactory, TrunkMatcher, UDPTransport

_sessions = itertools.count(1)


class TinyUAS:
    def __init__(self, reactor, port, trunks=(("loopback", "127.0.0.1"),), *, answer=True, rtp=False):
        self.reactor = reactor
        self.rtp = rtp
        #: with ``rtp``: each call's RTPSession, its listening port, and what it received
        self.sessions = []
        self.audio_packets = 0
        self.digits = []
        self.port = port
        self.answer = answer
        self.registry = CollectorRegistry()
        self.endpoint = SIPEndpoint(reactor, TrunkMatcher(trunks), lambda transport: f"127.0.0.1:{port}",
                                    registry=self.registry)
        self.udp = UDPTransport(self.endpoint, budget_factory(reactor, "sip", self.registry)("udp"))
        self.endpoint.add_transport("UDP", self.udp)
        self.tcp = TCPTransportFactory(self.endpoint, budget_factory(reactor, "sip", self.registry))
        self.endpoint.add_transport("TCP", self.tcp)
        handlers = self.endpoint.handlers
        handlers["INVITE"] = self.invite
        handlers["ACK"] = self.ack
        handlers["BYE"] = self.bye
        handlers["CANCEL"] = self.cancel
        handlers["REGISTER"] = self.register
        self.dialogs = {}  # (call_id, local tag) -> (dialog, retransmitter)
        self.counts = {"invite": 0, "ack": 0, "bye": 0, "register": 0, "cancelled": 0, "no_ack": 0}
        self.listening = None
        self.listening_tcp = None

    def start(self):
        self.listening = self.reactor.listenUDP(self.port, self.udp, interface="127.0.0.1")
        self.listening_tcp = self.reactor.listenTCP(self.port, self.tcp, interface="127.0.0.1")

    def stop(self):
        for _, retransmitter in self.dialogs.values():
            retransmitter.cancel()
        for session, listening in self.sessions:
            session.stop()
            listening.stopListening()
        self.endpoint.close()
        for connection in list(self.tcp.connections.values()):
            connection.transport.abortConnection()
        self.listening_tcp.stopListening()
        return self.listening.stopListening()

    def metric(self, name, **labels):
        return self.registry.get_sample_value(name, labels) or 0

    # -- handlers
    def register(self, request, tx, source, trunk):
        self.counts["register"] += 1
        headers = [("Contact", value) for value in request.get_all("Contact")]
        self.endpoint.respond(tx, 200, headers=headers + [("Expires", str(request.expires or 3600))])

    def invite(self, request, tx, source, trunk):
        self.counts["invite"] += 1
        session = listening = None
        media_port = 40000
        if self.rtp:
            session = RTPSession(self.reactor, audio_pt=-1, dtmf_pt=None, remote=("127.0.0.1", 9),
                                 on_audio=self._audio, on_digit=lambda digit, ms: self.digits.append((digit, ms)))
            listening = self.reactor.listenUDP(0, session, interface="127.0.0.1")
            self.sessions.append((session, listening))
            media_port = listening.getHost().port
        media = LocalMedia(address="127.0.0.1", port=media_port, session_id=str(next(_sessions)))
        try:
            body, agreed = media.answer(parse_sdp(request.body))
        except SDPError as error:
            self.endpoint.respond(tx, error.status)
            return
        if session is not None:
            session.audio_pt, session.dtmf_pt = agreed.payload_type, agreed.dtmf_payload_type
            session.remote = (agreed.remote_address, agreed.remote_port)
        tag = self.endpoint.new_tag()
        self.endpoint.respond(tx, 180, to_tag=tag)
        if not self.answer:
            return
        contact = [("Contact", f"<sip:uas@127.0.0.1:{self.port}>"), ("Content-Type", "application/sdp")]
        response = self.endpoint.respond(tx, 200, headers=contact, body=body, to_tag=tag)
        dialog = Dialog.as_uas(request, response)
        key = (dialog.call_id, dialog.local_tag)

        def no_ack():
            self.counts["no_ack"] += 1
            self.dialogs.pop(key, None)

        self.dialogs[key] = (dialog, SuccessRetransmitter(self.reactor, lambda: tx.respond(response), no_ack))

    def _audio(self, payload, packet):
        self.audio_packets += 1

    def ack(self, request, tx, source, trunk):
        entry = self.dialogs.get((request.call_id, request.to.tag))
        if entry is not None:
            self.counts["ack"] += 1
            entry[1].acked()

    def bye(self, request, tx, source, trunk):
        entry = self.dialogs.get((request.call_id, request.to.tag))
        if entry is None or not entry[0].matches(request):
            self.endpoint.respond(tx, 481)
            return
        entry[1].cancel()
        del self.dialogs[(request.call_id, request.to.tag)]
        self.counts["bye"] += 1
        self.endpoint.respond(tx, 200, to_tag=request.to.tag)

    def cancel(self, request, tx, source, trunk):
        invite = self.endpoint.layer.find_invite(request)
        if invite is None:
            self.endpoint.respond(tx, 481)
            return
        self.endpoint.respond(tx, 200)
        if invite.state == "proceeding":
            self.counts["cancelled"] += 1
            self.endpoint.respond(invite, 487, to_tag=(invite.last_response.to.tag if invite.last_response
                                                       else None))
