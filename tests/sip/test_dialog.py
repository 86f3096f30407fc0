"""Dialogs (route sets, loose and strict routing, CSeq order, the ACK to a 2xx) and the 2xx retransmission."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.sip.dialog import Dialog, DialogError, SuccessRetransmitter
from gateway.sip.message import parse_datagram
from tests.sip.torture import wire

INVITE = wire("""INVITE sip:bob@gw.example.com SIP/2.0
Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bKnashds8
Record-Route: <sip:p2.example.com;lr>
Record-Route: <sip:p1.example.com;lr>
Max-Forwards: 70
To: Bob <sip:bob@example.com>
From: Alice <sip:alice@example.com>;tag=1928301774
Call-ID: a84b4c76e66710
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.example.com>
Authorization: Digest username="a", realm="r", nonce="n", uri="sip:bob@gw.example.com", response="x"
Content-Length: 0

""")


def ok_for(invite, record_routes=None):
    response = invite.response(200, to_tag="b5")
    response.add("Contact", "<sip:bob@192.0.2.4:5070;transport=udp>")
    for value in record_routes or invite.get_all("Record-Route"):
        response.add("Record-Route", value)
    return parse_datagram(response.to_bytes())


class DialogTests(SynchronousTestCase):
    def test_a_uas_dialog_routes_in_record_route_order_to_the_contact(self):
        invite = parse_datagram(INVITE)
        dialog = Dialog.as_uas(invite, ok_for(invite))
        self.assertEqual(dialog.id, ("a84b4c76e66710", "b5", "1928301774"))
        bye = dialog.request("BYE")
        self.assertEqual(bye.uri, "sip:alice@pc33.example.com")
        self.assertEqual(bye.get_all("Route"), ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"])
        self.assertEqual((bye.cseq.seq, bye.from_.tag, bye.to.tag), (1, "b5", "1928301774"))
        self.assertEqual(str(dialog.next_hop().uri), "sip:p2.example.com;lr")

    def test_a_uac_dialog_reverses_the_record_route(self):
        invite = parse_datagram(INVITE)
        dialog = Dialog.as_uac(invite, ok_for(invite))
        self.assertEqual(dialog.remote_target, "sip:bob@192.0.2.4:5070;transport=udp")
        reinvite = dialog.request("INVITE")
        self.assertEqual(reinvite.get_all("Route"), ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"])
        self.assertEqual(reinvite.cseq.seq, 314160)
        self.assertEqual((reinvite.from_.tag, reinvite.to.tag), ("1928301774", "b5"))

    def test_the_ack_to_a_2xx_keeps_the_invite_cseq_and_credentials(self):
        invite = parse_datagram(INVITE)
        dialog = Dialog.as_uac(invite, ok_for(invite))
        ack = dialog.ack(invite)
        self.assertEqual((ack.cseq.seq, ack.cseq.method), (314159, "ACK"))
        self.assertEqual(ack.get("Authorization"), invite.get("Authorization"))
        self.assertEqual(dialog.local_seq, 314159)

    def test_a_strict_router_gets_the_request_uri(self):
        invite = parse_datagram(INVITE)
        dialog = Dialog.as_uac(invite, ok_for(invite, ["<sip:p1.example.com;lr>", "<sip:strict.example.com>"]))
        bye = dialog.request("BYE")
        self.assertEqual(bye.uri, "sip:strict.example.com")
        self.assertEqual(bye.get_all("Route"), ["<sip:p1.example.com;lr>", "<sip:bob@192.0.2.4:5070;transport=udp>"])

    def test_remote_cseq_must_grow_and_requests_match_by_tags(self):
        invite = parse_datagram(INVITE)
        dialog = Dialog.as_uas(invite, ok_for(invite))
        peer = Dialog.as_uac(invite, ok_for(invite))
        bye = peer.request("BYE")
        self.assertTrue(dialog.matches(bye))
        self.assertTrue(dialog.accept_remote_cseq(bye))
        self.assertFalse(dialog.accept_remote_cseq(bye))
        self.assertTrue(dialog.accept_remote_cseq(peer.ack(invite)))
        other = peer.request("BYE")
        other.set("Call-ID", "other")
        self.assertFalse(dialog.matches(other))

    def test_no_contact_no_dialog(self):
        invite = parse_datagram(INVITE)
        invite.remove("Contact")
        with self.assertRaises(DialogError):
            Dialog.as_uas(invite, ok_for(invite))


class SuccessRetransmitterTests(SynchronousTestCase):
    def test_the_2xx_is_resent_t1_doubling_to_t2_until_64_t1(self):
        clock, sent, gave_up = Clock(), [], []
        SuccessRetransmitter(clock, lambda: sent.append(clock.seconds()), lambda: gave_up.append(clock.seconds()))
        for _ in range(200):
            clock.advance(0.25)
        self.assertEqual(sent, [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        self.assertEqual(gave_up, [32])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_the_ack_stops_it(self):
        clock, sent, gave_up = Clock(), [], []
        retransmitter = SuccessRetransmitter(clock, lambda: sent.append(1), lambda: gave_up.append(1))
        for _ in range(8):
            clock.advance(0.25)
        retransmitter.acked()
        clock.advance(100)
        self.assertEqual((len(sent), gave_up, clock.getDelayedCalls()), (2, [], []))
