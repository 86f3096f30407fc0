"""SIP calls end to end in memory: two endpoints on task.Clock joined by a wire, the gateway's CallManager
on one side and a carrier (another CallManager, or raw handlers) on the other."""

import itertools
import re

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.boundary import budget_factory
from gateway.sip.call import CallManager, SIPCallError
from gateway.sip.digest import MAX_CHALLENGES, DigestClient, compute_response
from gateway.sip.message import parse_datagram
from gateway.sip.sdp import LocalMedia, parse_sdp
from gateway.sip.transaction import Peer
from gateway.sip.transport import SIPEndpoint, TrunkMatcher, UDPTransport

GATEWAY = ("10.0.0.1", 5060)
CARRIER = ("10.0.0.5", 5060)


class Wire:
    """Datagrams between the endpoints, delivered by pump(); ``drop`` filters them (e.g. lose an ACK)."""

    def __init__(self):
        self.queue = []
        self.udp = {}
        self.drop = lambda data, src, dst: False
        self.log = []

    def attach(self, address, udp):
        self.udp[address] = udp
        wire = self

        class Datagrams:
            def write(self, data, addr):
                wire.queue.append((data, address, tuple(addr)))

        udp.makeConnection(Datagrams())

    def pump(self):
        while self.queue:
            data, src, dst = self.queue.pop(0)
            self.log.append(data.split(b"\r\n", 1)[0].decode())
            if dst in self.udp and not self.drop(data, src, dst):
                self.udp[dst].datagramReceived(data, src)


class Events:
    def __init__(self):
        self.seen = []

    def ringing(self, call):
        self.seen.append("ringing")

    def answered(self, call, media):
        self.seen.append(("answered", media.codec, media.direction))

    def media_changed(self, call, media):
        self.seen.append(("media", media.direction))

    def ended(self, call, cause, detail):
        self.seen.append(("ended", cause))


class CallTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.wire = Wire()
        counter = itertools.count(1)
        self.random = lambda n: next(counter).to_bytes(n, "big")
        ports = itertools.count(30000, 2)
        self.incoming = []  # (call, events) offered to the gateway
        self.gateway = self.side(GATEWAY, [("carrier", CARRIER[0])], ports)
        self.gateway_calls = CallManager(self.gateway, contact="sip:gw@10.0.0.1:5060",
                                         media_factory=lambda cid: LocalMedia("10.0.0.1", next(ports), cid),
                                         on_incoming=self.offer, credentials={"carrier": DigestClient("gw", "pw")})
        self.carrier = self.side(CARRIER, [("gateway", GATEWAY[0])], ports)
        self.carrier_calls = CallManager(self.carrier, contact="sip:pbx@10.0.0.5:5060",
                                         media_factory=lambda cid: LocalMedia("10.0.0.5", next(ports), cid),
                                         on_incoming=self.offer)

    def side(self, address, trunks, ports):
        endpoint = SIPEndpoint(self.clock, TrunkMatcher(trunks), lambda t: f"{address[0]}:{address[1]}",
                               random=self.random)
        udp = UDPTransport(endpoint, budget_factory(self.clock, "sip")(f"{address}"))
        endpoint.add_transport("UDP", udp)
        self.wire.attach(address, udp)
        return endpoint

    def offer(self, call):
        events = Events()
        self.incoming.append((call, events))
        return events

    def tearDown(self):
        self.gateway_calls.close()
        self.carrier_calls.close()
        self.gateway.close()
        self.carrier.close()

    def carrier_dials(self):
        events = Events()
        call = self.carrier_calls.dial(Peer("UDP", *GATEWAY), "sip:+15551234@10.0.0.1", from_user="+15559876",
                                       from_host="10.0.0.5", events=events, trunk="gateway")
        self.wire.pump()
        [(inbound, inbound_events)] = self.incoming
        return call, events, inbound, inbound_events

    def gateway_dials(self):
        events = Events()
        call = self.gateway_calls.dial(Peer("UDP", *CARRIER), "sip:+15550001@10.0.0.5", from_user="gw",
                                       from_host="10.0.0.1", events=events, trunk="carrier")
        self.wire.pump()
        return call, events

    def answer(self, call):
        result = call.answer()
        self.wire.pump()
        return self.successResultOf(result)


class InboundTests(CallTestCase):
    def test_ring_answer_and_the_caller_hangs_up(self):
        outbound, out_events, call, events = self.carrier_dials()
        self.assertEqual((call.caller, call.callee, call.trunk), ("+15559876", "+15551234", "carrier"))
        call.ring()
        self.wire.pump()
        self.assertEqual(out_events.seen, ["ringing"])
        agreed = self.answer(call)
        self.assertEqual((agreed.codec, agreed.direction, agreed.dtmf_payload_type), ("PCMU", "sendrecv", 101))
        self.assertEqual(events.seen, [("answered", "PCMU", "sendrecv")])
        self.assertEqual(out_events.seen, ["ringing", ("answered", "PCMU", "sendrecv")])
        self.clock.advance(40)  # the ACK stopped the 2xx retransmission
        self.wire.pump()
        self.assertEqual(self.wire.log.count("SIP/2.0 200 OK"), 1)
        outbound.hangup()
        self.wire.pump()
        self.assertEqual(events.seen[-1], ("ended", "remote_hangup"))
        self.assertEqual(out_events.seen[-1], ("ended", "normal"))
        self.assertEqual(self.wire.log[-2:], ["BYE sip:gw@10.0.0.1:5060 SIP/2.0", "SIP/2.0 200 OK"])
        self.assertEqual(self.gateway_calls.calls, {})

    def test_rejections_map_to_the_callers_causes(self):
        for status, cause in ((486, "busy"), (603, "rejected"), (480, "no_answer"), (404, "failed")):
            self.incoming.clear()
            _, out_events, call, events = self.carrier_dials()
            call.reject(status)
            self.wire.pump()
            self.assertEqual(out_events.seen[-1], ("ended", cause), status)
            self.assertEqual(events.seen[-1], ("ended", "rejected"))

    def test_the_caller_cancels_before_the_answer(self):
        outbound, out_events, call, events = self.carrier_dials()
        call.ring()
        self.wire.pump()
        outbound.hangup()
        self.wire.pump()
        self.assertEqual(events.seen, [("ended", "cancelled")])
        self.assertEqual(out_events.seen, ["ringing", ("ended", "cancelled")])
        self.assertIn("CANCEL sip:+15551234@10.0.0.1 SIP/2.0", self.wire.log)
        self.assertIn("SIP/2.0 487 Request Terminated", self.wire.log)
        self.failureResultOf(call.answer(), SIPCallError)

    def test_without_an_ack_the_call_ends_no_ack_with_a_bye(self):
        _, out_events, call, events = self.carrier_dials()
        self.wire.drop = lambda data, src, dst: data.startswith(b"ACK ") or data.startswith(b"SIP/2.0 200")
        result = call.answer()
        self.wire.pump()
        for _ in range(70):
            self.clock.advance(0.5)
            self.wire.pump()
        self.failureResultOf(result, SIPCallError)
        self.assertEqual(events.seen, [("ended", "no_ack")])
        self.assertEqual(self.wire.log.count("SIP/2.0 200 OK"), 11)  # sent, then re-sent 10 times in 32 s
        self.assertIn("BYE sip:pbx@10.0.0.5:5060 SIP/2.0", self.wire.log)

    def test_an_offer_without_a_codec_we_take_is_488(self):
        self.carrier_calls.media_factory = lambda cid: LocalMedia("10.0.0.5", 4000, cid, codecs=())
        events = Events()
        self.carrier_calls.dial(Peer("UDP", *GATEWAY), "sip:1@10.0.0.1", from_user="2", from_host="10.0.0.5",
                                events=events)
        self.wire.pump()
        self.assertEqual(self.incoming, [])
        self.assertEqual(events.seen, [("ended", "failed")])
        self.assertIn("SIP/2.0 488 Not Acceptable Here", self.wire.log)

    def test_no_events_means_480(self):
        self.gateway_calls.on_incoming = lambda call: None
        events = Events()
        self.carrier_calls.dial(Peer("UDP", *GATEWAY), "sip:1@10.0.0.1", from_user="2", from_host="10.0.0.5",
                                events=events)
        self.wire.pump()
        self.assertEqual(events.seen, [("ended", "no_answer")])

    def test_requests_for_unknown_dialogs_get_481(self):
        outbound, _, call, _ = self.carrier_dials()
        self.answer(call)
        bye = outbound.dialog.request("BYE")
        bye.set("Call-ID", "nobody@example")
        result = self.carrier.layer.request(bye, Peer("UDP", *GATEWAY))
        self.wire.pump()
        self.assertEqual(self.successResultOf(result).status, 481)


class HoldTests(CallTestCase):
    def connected(self):
        outbound, out_events, call, events = self.carrier_dials()
        self.answer(call)
        return outbound, out_events, call, events

    def test_the_gateway_holds_and_retrieves(self):
        outbound, out_events, call, events = self.connected()
        held = call.hold()
        self.wire.pump()
        self.assertEqual(self.successResultOf(held).direction, "sendonly")
        self.assertEqual(out_events.seen[-1], ("media", "recvonly"))
        retrieved = call.retrieve()
        self.wire.pump()
        self.assertEqual(self.successResultOf(retrieved).direction, "sendrecv")
        self.assertEqual(out_events.seen[-1], ("media", "sendrecv"))
        self.assertEqual(events.seen[-2:], [("media", "sendonly"), ("media", "sendrecv")])
        self.clock.advance(40)
        self.wire.pump()
        self.assertNotIn(("ended", "no_ack"), out_events.seen)

    def test_the_carrier_holds_and_retrieves(self):
        outbound, out_events, call, events = self.connected()
        outbound.hold()
        self.wire.pump()
        self.assertEqual(events.seen[-1], ("media", "recvonly"))
        self.assertFalse(call.negotiated.send)
        outbound.retrieve()
        self.wire.pump()
        self.assertEqual(events.seen[-1], ("media", "sendrecv"))

    def test_a_re_invite_while_ours_is_pending_is_491(self):
        outbound, _, call, _ = self.connected()
        ours = call.hold()
        theirs = outbound.hold()
        self.wire.pump()
        self.assertEqual(self.wire.log.count("SIP/2.0 491 Request Pending"), 2)
        self.failureResultOf(ours, SIPCallError)
        self.failureResultOf(theirs, SIPCallError)
        again = call.hold()  # the glare is over: a new attempt goes through
        self.wire.pump()
        self.assertEqual(self.successResultOf(again).direction, "sendonly")

    def test_a_second_re_invite_while_one_is_pending_is_refused_locally(self):
        _, _, call, _ = self.connected()
        first = call.hold()
        self.failureResultOf(call.retrieve(), SIPCallError)
        self.wire.pump()
        self.successResultOf(first)

    def test_both_hold_then_the_gateway_retrieves_while_the_carrier_still_holds(self):
        outbound, _, call, events = self.connected()
        call.hold()
        self.wire.pump()
        outbound.hold()
        self.wire.pump()
        self.assertEqual(events.seen[-1], ("media", "inactive"))
        retrieved = call.retrieve()
        self.wire.pump()
        self.assertEqual(self.successResultOf(retrieved).direction, "recvonly")

    def test_hold_before_the_answer_fails(self):
        _, _, call, _ = self.carrier_dials()
        self.failureResultOf(call.hold(), SIPCallError)


class OutboundTests(CallTestCase):
    def test_dial_ringing_answered_and_hang_up(self):
        call, events = self.gateway_dials()
        [(remote, remote_events)] = self.incoming
        remote.ring()
        self.wire.pump()
        self.answer(remote)
        self.assertEqual(events.seen, ["ringing", ("answered", "PCMU", "sendrecv")])
        call.hangup()
        self.wire.pump()
        self.assertEqual(remote_events.seen[-1], ("ended", "remote_hangup"))
        self.assertEqual(events.seen[-1], ("ended", "normal"))

    def test_cancel_before_the_answer(self):
        call, events = self.gateway_dials()
        [(remote, remote_events)] = self.incoming
        call.hangup()  # no provisional yet: the CANCEL waits for one
        self.wire.pump()
        self.assertNotIn("CANCEL sip:+15550001@10.0.0.5 SIP/2.0", self.wire.log[:2])
        self.assertEqual(events.seen[-1], ("ended", "cancelled"))
        self.assertEqual(remote_events.seen[-1], ("ended", "cancelled"))

    def test_a_lost_ack_is_sent_again_for_the_retransmitted_200(self):
        call, events = self.gateway_dials()
        [(remote, remote_events)] = self.incoming
        acks = []

        def drop_first_ack(data, src, dst):
            if data.startswith(b"ACK "):
                acks.append(data)
                return len(acks) == 1
            return False

        self.wire.drop = drop_first_ack
        result = remote.answer()
        self.wire.pump()
        self.assertNoResult(result)
        self.clock.advance(0.5)
        self.wire.pump()
        self.assertEqual(len(acks), 2)
        self.successResultOf(result)
        self.assertEqual(events.seen, [("answered", "PCMU", "sendrecv")])

    def test_digest_on_401(self):
        seen = []

        def carrier_invite(request, tx, source, trunk):
            seen.append(request.get("Authorization"))
            if request.get("Authorization") is None:
                self.carrier.respond(tx, 401, headers=[("WWW-Authenticate",
                                                        'Digest realm="carrier", nonce="abc", qop="auth"')])
                return
            fields = dict(re.findall(r'(\w+)="?([^",]+)"?', request.get("Authorization")))
            good = compute_response(algorithm="MD5", username="gw", realm="carrier", password="pw", nonce="abc",
                                    method="INVITE", uri=request.uri, qop="auth", nc=fields["nc"],
                                    cnonce=fields["cnonce"])
            if fields["response"] != good:
                self.carrier.respond(tx, 403)
                return
            body, _ = LocalMedia("10.0.0.5", 4000, "s").answer(parse_sdp(request.body))
            self.carrier.respond(tx, 200, headers=[("Contact", "<sip:pbx@10.0.0.5>"),
                                                   ("Content-Type", "application/sdp")], body=body)

        self.carrier.handlers["INVITE"] = carrier_invite
        call, events = self.gateway_dials()
        self.assertEqual(len(seen), 2)
        self.assertEqual(events.seen, [("answered", "PCMU", "sendrecv")])
        self.assertEqual(call.invite.cseq.seq, 2)
        self.assertIn("ACK sip:pbx@10.0.0.5 SIP/2.0", self.wire.log)

    def test_a_second_challenge_fails_the_call(self):
        self.carrier.handlers["INVITE"] = lambda request, tx, source, trunk: self.carrier.respond(
            tx, 407, headers=[("Proxy-Authenticate", 'Digest realm="carrier", nonce="abc"')])
        _, events = self.gateway_dials()
        self.assertEqual(events.seen, [("ended", "failed")])
        self.assertEqual(self.wire.log.count("SIP/2.0 407 Proxy Authentication Required"), 2)

    def test_a_carrier_challenging_every_invite_with_a_fresh_nonce_fails_the_call(self):
        """A hostile or broken carrier that answers each INVITE with a new nonce (or a stale one) must not
        make the gateway send INVITEs for ever."""
        invites = []

        def carrier_invite(request, tx, source, trunk):
            invites.append(request)
            if len(invites) > 20:
                self.carrier.respond(tx, 403)  # end the test's loop if the gateway never gives up
                return
            nonce, stale = (f"n{len(invites)}", "") if len(invites) % 2 else ("n1", ", stale=true")
            self.carrier.respond(tx, 401, headers=[("WWW-Authenticate",
                                                    f'Digest realm="carrier", nonce="{nonce}"{stale}')])

        self.carrier.handlers["INVITE"] = carrier_invite
        _, events = self.gateway_dials()
        self.assertEqual(events.seen, [("ended", "failed")])
        self.assertLessEqual(len(invites), 1 + MAX_CHALLENGES)

    def test_no_answer_at_all_fails_after_timer_b(self):
        self.wire.drop = lambda data, src, dst: dst == CARRIER
        _, events = self.gateway_dials()
        self.clock.advance(32)
        self.assertEqual(events.seen, [("ended", "failed")])
