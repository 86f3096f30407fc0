"""RFC 3261 transactions on task.Clock: every timer (A, B, D, E, F, G, H, I, J, K, and RFC 6026's L, M),
retransmissions over UDP and none over TCP, matching, Via branches, received and rport."""

import itertools

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.sip.message import Request, Response, parse_datagram
from gateway.sip.transaction import (
    BRANCH_COOKIE,
    Peer,
    TransactionLayer,
    TransactionTimeout,
    new_branch,
    response_destination,
)

UDP = Peer("UDP", "192.0.2.10", 5060)
TCP = Peer("TCP", "192.0.2.10", 5060)
CLIENT = Peer("UDP", "198.51.100.7", 40000)


class TU:
    def __init__(self):
        self.requests = []
        self.strays = []

    def request_received(self, request, transaction, source):
        self.requests.append((request, transaction, source))

    def stray_response(self, response, source):
        self.strays.append(response)


class LayerTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.sent = []
        self.tu = TU()
        counter = itertools.count()
        self.layer = TransactionLayer(self.clock, self.send, self.tu, lambda transport: "192.0.2.1:5060",
                                      random=lambda n: next(counter).to_bytes(n, "big"))
        self.responses = []
        self.timeouts = []

    def send(self, message, peer):
        # what goes on the wire must parse again
        self.sent.append((parse_datagram(message.to_bytes()), peer))

    def sent_lines(self):
        return [m.start_line() for m, _ in self.sent]

    def request(self, method="OPTIONS", branch=None, via_host="198.51.100.7:40000"):
        request = Request(method=method, uri="sip:bob@192.0.2.10")
        if branch is not None:
            request.add("Via", f"SIP/2.0/UDP {via_host};branch={branch};rport")
        request.headers += [("Max-Forwards", "70"), ("From", "<sip:alice@example.com>;tag=a1"),
                            ("To", "<sip:bob@example.com>"), ("Call-ID", "call-1@example.com"),
                            ("CSeq", f"1 {method}")]
        return request

    def advance_to(self, when):
        self.clock.advance(when - self.clock.seconds())

    def send_times(self, until, step=0.25):
        """When each message was sent, advancing the clock to ``until``."""
        times, seen = [], 0
        while True:
            while seen < len(self.sent):
                times.append(self.clock.seconds())
                seen += 1
            if self.clock.seconds() >= until:
                return times
            self.clock.advance(min(step, until - self.clock.seconds()))

    def reply(self, request, status, to_tag="b1"):
        return parse_datagram(request.response(status, to_tag=to_tag).to_bytes())


class InviteClientTests(LayerTestCase):
    def start(self, peer=UDP):
        request = self.request("INVITE")
        tx = self.layer.invite(request, peer, self.responses.append, lambda: self.timeouts.append(True))
        return request, tx

    def test_the_via_has_a_new_branch_with_the_cookie_and_rport(self):
        request, _ = self.start()
        via = request.top_via
        self.assertTrue(via.branch.startswith(BRANCH_COOKIE))
        self.assertTrue(via.has_rport)
        self.assertEqual(via.sent_by, "192.0.2.1:5060")
        self.assertNotEqual(new_branch(), new_branch())

    def test_timer_a_retransmits_at_t1_doubling_and_timer_b_gives_up_at_64_t1(self):
        _, tx = self.start()
        self.assertEqual(self.send_times(31.9), [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        self.assertEqual(self.timeouts, [])
        self.advance_to(32)
        self.assertEqual(self.timeouts, [True])
        self.assertEqual(tx.state, "terminated")
        self.clock.advance(100)
        self.assertEqual(len(self.sent), 7)
        self.assertEqual(self.layer.count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_retransmission_over_tcp_but_timer_b_still_runs(self):
        self.start(TCP)
        self.assertEqual(self.send_times(31.9), [0])
        self.advance_to(32)
        self.assertEqual(self.timeouts, [True])

    def test_a_provisional_response_stops_timers_a_and_b(self):
        request, tx = self.start()
        self.clock.advance(0.6)
        self.layer.receive(self.reply(request, 180), UDP)
        self.assertEqual(tx.state, "proceeding")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual((len(self.sent), self.timeouts), (2, []))
        self.assertEqual([r.status for r in self.responses], [180])

    def test_a_failure_is_acked_and_timer_d_absorbs_its_retransmissions(self):
        request, tx = self.start()
        busy = self.reply(request, 486)
        self.layer.receive(busy, UDP)
        ack, peer = self.sent[-1]
        self.assertEqual(ack.method, "ACK")
        self.assertEqual(peer, UDP)
        self.assertEqual(ack.top_via.branch, request.top_via.branch)
        self.assertEqual((ack.cseq.seq, ack.cseq.method), (1, "ACK"))
        self.assertEqual(ack.to.tag, "b1")
        self.assertEqual(ack.uri, request.uri)
        self.assertEqual(tx.state, "completed")
        self.layer.receive(busy, UDP)
        self.assertEqual(self.sent_lines()[-2:], ["ACK sip:bob@192.0.2.10 SIP/2.0"] * 2)
        self.assertEqual([r.status for r in self.responses], [486])
        self.advance_to(31.9)
        self.assertEqual(tx.state, "completed")
        self.advance_to(32)
        self.assertEqual(tx.state, "terminated")
        self.layer.receive(busy, UDP)
        self.assertEqual(len(self.tu.strays), 1)

    def test_timer_d_is_zero_over_tcp(self):
        request, tx = self.start(TCP)
        self.layer.receive(self.reply(request, 603), TCP)
        self.assertEqual(tx.state, "terminated")
        self.assertEqual(self.sent[-1][0].method, "ACK")

    def test_a_2xx_is_passed_up_and_its_retransmissions_too_until_timer_m(self):
        request, tx = self.start()
        ok = self.reply(request, 200)
        self.layer.receive(ok, UDP)
        self.assertEqual(tx.state, "accepted")
        self.assertEqual(self.sent_lines(), ["INVITE sip:bob@192.0.2.10 SIP/2.0"])  # the TU ACKs a 2xx
        self.layer.receive(ok, UDP)
        self.assertEqual([r.status for r in self.responses], [200, 200])
        self.advance_to(32)
        self.assertEqual(tx.state, "terminated")
        self.layer.receive(ok, UDP)
        self.assertEqual(len(self.tu.strays), 1)

    def test_cancel_waits_for_a_provisional_response(self):
        request, tx = self.start()
        cancelled = []
        tx.cancel(cancelled.append)
        self.assertEqual(self.sent_lines(), ["INVITE sip:bob@192.0.2.10 SIP/2.0"])
        self.layer.receive(self.reply(request, 100), UDP)
        cancel, _ = self.sent[-1]
        self.assertEqual(cancel.method, "CANCEL")
        self.assertEqual(cancel.top_via.branch, request.top_via.branch)
        self.assertEqual(cancel.get_all("Via"), request.get_all("Via"))
        self.assertEqual((cancel.cseq.seq, cancel.cseq.method), (1, "CANCEL"))
        self.layer.receive(self.reply(cancel, 200), UDP)
        self.assertEqual([r.status for r in cancelled], [200])
        self.layer.receive(self.reply(request, 487), UDP)
        self.assertEqual([r.status for r in self.responses], [100, 487])
        self.assertEqual(self.sent[-1][0].method, "ACK")
        tx.cancel()  # after the final response: nothing
        self.assertEqual(self.sent[-1][0].method, "ACK")

    def test_a_response_for_another_sent_by_is_not_ours(self):
        request, tx = self.start()
        response = self.reply(request, 180)
        response.set("Via", str(response.top_via).replace("192.0.2.1:5060", "192.0.2.99:5060"))
        self.layer.receive(response, UDP)
        self.assertEqual(tx.state, "calling")
        self.assertEqual(len(self.tu.strays), 1)


class NonInviteClientTests(LayerTestCase):
    def test_timer_e_doubles_to_t2_and_timer_f_fails_the_request(self):
        result = self.layer.request(self.request(), UDP)
        self.assertEqual(self.send_times(31.9), [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        self.assertNoResult(result)
        self.advance_to(32)
        self.failureResultOf(result, TransactionTimeout)
        self.assertEqual(self.layer.count, 0)

    def test_after_a_provisional_timer_e_is_t2(self):
        request = self.request()
        self.layer.client(request, UDP, self.responses.append, lambda: None)
        self.clock.advance(0.5)
        self.layer.receive(self.reply(request, 100), UDP)
        self.clock.advance(1.0)  # the E set in trying (1 s) fires; from then on it is T2
        self.assertEqual(len(self.sent), 3)
        self.assertEqual(self.send_times(12, step=0.5)[3:], [5.5, 9.5])

    def test_no_retransmission_over_tcp(self):
        result = self.layer.request(self.request(), TCP)
        self.assertEqual(self.send_times(31.9), [0])
        self.advance_to(32)
        self.failureResultOf(result, TransactionTimeout)

    def test_timer_k_absorbs_retransmitted_finals(self):
        request = self.request()
        tx = self.layer.client(request, UDP, self.responses.append, lambda: None)
        ok = self.reply(request, 200)
        self.layer.receive(ok, UDP)
        self.layer.receive(ok, UDP)
        self.assertEqual([r.status for r in self.responses], [200])
        self.assertEqual(tx.state, "completed")
        self.advance_to(4.9)
        self.assertEqual(tx.state, "completed")
        self.advance_to(5)
        self.assertEqual(tx.state, "terminated")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timer_k_is_zero_over_tcp(self):
        request = self.request()
        result = self.layer.request(request, TCP)
        self.layer.receive(self.reply(request, 200), TCP)
        self.assertEqual(self.successResultOf(result).status, 200)
        self.assertEqual(self.layer.count, 0)


class InviteServerTests(LayerTestCase):
    def arrive(self, source=CLIENT, branch="z9hG4bKinv1"):
        request = self.request("INVITE", branch)
        self.layer.receive(parse_datagram(request.to_bytes()), source)
        return self.tu.requests[-1][1]

    def test_100_trying_at_once_and_again_for_a_retransmitted_invite(self):
        tx = self.arrive()
        self.assertEqual(self.sent_lines(), ["SIP/2.0 100 Trying"])
        self.assertIsNone(self.sent[0][0].to.tag)
        self.arrive()
        self.assertEqual(self.sent_lines(), ["SIP/2.0 100 Trying"] * 2)
        self.assertEqual(len(self.tu.requests), 1)
        tx.respond(tx.request.response(180, to_tag="t"))
        self.arrive()
        self.assertEqual(self.sent_lines()[-2:], ["SIP/2.0 180 Ringing"] * 2)

    def test_timer_g_retransmits_a_failure_and_timer_h_gives_up_on_the_ack(self):
        tx = self.arrive()
        missing = []
        tx.on_no_ack = lambda: missing.append(True)
        del self.sent[:]
        tx.respond(tx.request.response(486, to_tag="t"))
        self.assertEqual(self.send_times(31.9), [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        self.advance_to(32)
        self.assertEqual(missing, [True])
        self.assertEqual(tx.state, "terminated")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_ack_stops_g_and_h_and_timer_i_absorbs_acks(self):
        tx = self.arrive()
        response = tx.request.response(486, to_tag="t")
        tx.respond(response)
        ack = Request(method="ACK", uri="sip:bob@192.0.2.10")
        ack.headers = [("Via", tx.request.get("Via").split(";received")[0]), ("From", tx.request.get("From")),
                       ("To", response.get("To")), ("Call-ID", "call-1@example.com"), ("CSeq", "1 ACK")]
        self.layer.receive(parse_datagram(ack.to_bytes()), CLIENT)
        self.assertEqual(tx.state, "confirmed")
        self.assertIsNone(tx.timer("G"))
        self.assertIsNone(tx.timer("H"))
        self.layer.receive(parse_datagram(ack.to_bytes()), CLIENT)
        self.assertEqual(len(self.tu.requests), 1)  # ACKs absorbed
        self.advance_to(4.9)
        self.assertEqual(tx.state, "confirmed")
        self.advance_to(5)
        self.assertEqual(tx.state, "terminated")
        self.assertEqual(len(self.sent), 2)

    def test_over_tcp_no_g_and_timer_i_is_zero(self):
        tx = self.arrive(Peer("TCP", "198.51.100.7", 40001))
        tx.respond(tx.request.response(500, to_tag="t"))
        self.assertIsNone(tx.timer("G"))
        self.assertIsNotNone(tx.timer("H"))
        ack = make_ack_for(tx.request, "t")
        self.layer.receive(ack, Peer("TCP", "198.51.100.7", 40001))
        self.assertEqual(tx.state, "terminated")

    def test_a_2xx_moves_to_accepted_and_timer_l_absorbs_invites(self):
        tx = self.arrive()
        tx.respond(tx.request.response(200, to_tag="t"))
        self.assertEqual(tx.state, "accepted")
        self.arrive()
        self.assertEqual(self.sent_lines(), ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"])
        tx.respond(tx.request.response(200, to_tag="t"))  # the TU's retransmission passes
        self.assertEqual(len(self.sent), 3)
        ack = make_ack_for(tx.request, "t")  # an ACK reusing the INVITE's branch goes to the TU
        self.layer.receive(ack, CLIENT)
        self.assertEqual([r.method for r, t, _ in self.tu.requests], ["INVITE", "ACK"])
        self.assertIsNone(self.tu.requests[-1][1])
        self.advance_to(32)
        self.assertEqual(tx.state, "terminated")

    def test_an_ack_with_a_new_branch_goes_to_the_tu(self):
        self.arrive()
        ack = make_ack_for(self.tu.requests[0][0], "t", branch="z9hG4bKack2")
        self.layer.receive(ack, CLIENT)
        self.assertEqual(self.tu.requests[-1][0].method, "ACK")

    def test_cancel_finds_its_invite(self):
        tx = self.arrive()
        cancel = self.request("CANCEL", "z9hG4bKinv1")
        self.layer.receive(parse_datagram(cancel.to_bytes()), CLIENT)
        cancel_request, cancel_tx, _ = self.tu.requests[-1]
        self.assertIsNot(cancel_tx, tx)
        self.assertIs(self.layer.find_invite(cancel_request), tx)


def make_ack_for(request, to_tag, branch=None):
    ack = Request(method="ACK", uri=request.uri)
    via = request.get("Via").split(";received")[0]
    if branch:
        via = via.replace("z9hG4bKinv1", branch)
    ack.headers = [("Via", via), ("From", request.get("From")), ("To", f"{request.get('To')};tag={to_tag}"),
                   ("Call-ID", request.call_id), ("CSeq", f"{request.cseq.seq} ACK")]
    return parse_datagram(ack.to_bytes())


class NonInviteServerTests(LayerTestCase):
    def arrive(self, source=CLIENT, branch="z9hG4bKopt1", via_host="198.51.100.7:40000"):
        self.layer.receive(parse_datagram(self.request("OPTIONS", branch, via_host).to_bytes()), source)
        return self.tu.requests[-1][1]

    def test_retransmissions_get_the_last_response_and_timer_j_ends_it(self):
        tx = self.arrive()
        self.arrive()
        self.assertEqual((self.sent, len(self.tu.requests)), ([], 1))  # trying: absorbed
        tx.respond(tx.request.response(100))
        self.arrive()
        self.assertEqual(self.sent_lines(), ["SIP/2.0 100 Trying"] * 2)
        tx.respond(tx.request.response(200, to_tag="t"))
        self.arrive()
        self.assertEqual(self.sent_lines()[-2:], ["SIP/2.0 200 OK"] * 2)
        tx.respond(tx.request.response(500, to_tag="t"))  # no second final
        self.assertEqual(len(self.sent), 4)
        self.advance_to(31.9)
        self.assertEqual(tx.state, "completed")
        self.advance_to(32)
        self.assertEqual(tx.state, "terminated")
        self.arrive()
        self.assertEqual(len(self.tu.requests), 2)  # a new transaction now

    def test_timer_j_is_zero_over_tcp(self):
        tx = self.arrive(Peer("TCP", "198.51.100.7", 40001))
        tx.respond(tx.request.response(200, to_tag="t"))
        self.assertEqual(tx.state, "terminated")

    def test_received_and_rport_are_stamped_and_the_response_goes_there(self):
        tx = self.arrive(Peer("UDP", "203.0.113.5", 31000), via_host="10.0.0.5:5060")
        via = tx.request.top_via
        self.assertEqual((via.received, via.rport), ("203.0.113.5", 31000))
        tx.respond(tx.request.response(200, to_tag="t"))
        response, peer = self.sent[-1]
        self.assertEqual(peer, Peer("UDP", "203.0.113.5", 31000))
        self.assertEqual(response.top_via.received, "203.0.113.5")

    def test_without_rport_the_response_goes_to_received_and_the_via_port(self):
        request = self.request("OPTIONS")
        request.add("Via", "SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bKx")
        self.layer.receive(parse_datagram(request.to_bytes()), Peer("UDP", "203.0.113.5", 31000))
        tx = self.tu.requests[-1][1]
        self.assertIsNone(tx.request.top_via.param("rport"))
        self.assertEqual(tx.peer, Peer("UDP", "203.0.113.5", 5070))
        self.assertEqual(response_destination(tx.request.top_via, "UDP"), tx.peer)

    def test_rfc_2543_requests_match_without_a_cookie(self):
        request = self.request("OPTIONS")
        request.add("Via", "SIP/2.0/UDP 198.51.100.7:40000")
        self.layer.receive(parse_datagram(request.to_bytes()), CLIENT)
        tx = self.tu.requests[-1][1]
        tx.respond(tx.request.response(200, to_tag="t"))
        self.layer.receive(parse_datagram(request.to_bytes()), CLIENT)
        self.assertEqual((len(self.tu.requests), len(self.sent)), (1, 2))

    def test_close_cancels_every_timer(self):
        tx = self.arrive()
        tx.respond(tx.request.response(200, to_tag="t"))
        self.layer.request(self.request(), UDP)
        self.layer.close()
        self.assertEqual((self.layer.count, self.clock.getDelayedCalls()), (0, []))


class ResponseTests(SynchronousTestCase):
    def test_a_response_via_is_used_as_it_stands(self):
        response = Response(status=200)
        response.headers.append(("Via", "SIP/2.0/UDP [2001:db8::5]:5062;branch=z9hG4bKx"))
        self.assertEqual(response_destination(response.top_via, "UDP"), Peer("UDP", "2001:db8::5", 5062))
