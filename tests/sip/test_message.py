"""The SIP message parser and serialiser: RFC 4475's torture messages, framing, limits, and a fuzz loop."""

import random

from twisted.trial.unittest import SynchronousTestCase

from gateway.sip.message import (
    Limits,
    Request,
    Response,
    SIPMessageError,
    SipURI,
    StreamParser,
    URI,
    error_response,
    parse_datagram,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    request_problem,
)
from tests.sip.torture import DBLREQ, ESC02, INTMETH, LONGREQ, MPART_BODY, MPART01, TORTURE, WSINV, wire

OPTIONS = wire("""OPTIONS sip:gw@192.0.2.1 SIP/2.0
Via: SIP/2.0/UDP 192.0.2.9:5062;branch=z9hG4bK776asdhds;rport
Max-Forwards: 70
To: <sip:gw@192.0.2.1>
From: "Alice" <sip:alice@192.0.2.9>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.example.com
CSeq: 63104 OPTIONS
Contact: <sip:alice@192.0.2.9:5062>
Content-Length: 0

""")


def outcome(data):
    """What the transport does with ``data``: "valid", ("uas", code), a response code, or "drop"."""
    try:
        message = parse_datagram(data)
    except SIPMessageError as error:
        if error.status is None:
            return "drop"
        response = error_response(error, to_tag="gwtag")
        assert response is not None and response.status == error.status
        return error.status
    if isinstance(message, Request):
        problem = request_problem(message)
        if problem is not None and message.method != "MESSAGE":
            return ("uas", problem[0])
    return "valid"


class TortureTests(SynchronousTestCase):
    """Each RFC 4475 message gets the outcome the RFC asks for (one generated test per message)."""


def _make(name, section, data, expected):
    def test(self):
        self.assertEqual(outcome(data), expected, f"RFC 4475 {section} {name}")
    test.__name__ = f"test_{section.replace('.', '_')}_{name}"
    test.__doc__ = f"RFC 4475 {section} ({name}): {expected}"
    return test


for _entry in TORTURE:
    _test = _make(*_entry)
    setattr(TortureTests, _test.__name__, _test)


class ValidMessageTests(SynchronousTestCase):
    def test_wsinv_reads_every_tortuous_header(self):
        message = parse_datagram(WSINV)
        self.assertIsInstance(message, Request)
        self.assertEqual(message.method, "INVITE")
        self.assertEqual(message.to.tag, "1918181833n")
        self.assertEqual(str(message.to.uri), "sip:vivekg@chair-dnrc.example.com")
        self.assertEqual(message.from_.display, 'J Rosenberg \\"')
        self.assertEqual(message.from_.tag, "98asjd8")
        self.assertEqual(message.max_forwards, 68)
        self.assertEqual((message.cseq.seq, message.cseq.method), (9, "INVITE"))
        self.assertEqual([(v.transport, v.host, v.branch) for v in message.vias], [
            ("UDP", "192.0.2.2", "390skdjuw"),
            ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
            ("UDP", "192.168.255.111", "z9hG4bK30239"),
        ])
        [contact] = message.contacts
        self.assertEqual(contact.display, 'Quoted string ""')
        self.assertEqual(contact.param("newparam"), "newvalue")
        self.assertEqual(contact.param("q"), "0.33")
        self.assertIsNone(contact.param("secondparam"))
        [route] = message.routes
        self.assertTrue(route.uri.has_param("lr"))
        self.assertEqual(message.get("NewFangledHeader"), "newfangled value continued newfangled value")
        self.assertEqual(message.get("Subject"), "")
        self.assertEqual(len(message.body), 150)
        self.assertEqual(message.content_type, "application/sdp")

    def test_intmeth_keeps_unusual_characters(self):
        message = parse_datagram(INTMETH)
        self.assertEqual(message.method, "!interesting-Method0123456789_*+`.%indeed'~")
        self.assertEqual(message.to.display, "BEL:\x07 NUL:\x00 DEL:\x7f")
        self.assertEqual(message.from_.display, "token1~` token2'+_ token3*%!.-")
        self.assertEqual(message.get("extensionHeader-!.%*+_`'~"), "\ufeff\u5927\u505c\u96fb")
        uri = message.request_uri
        self.assertEqual(uri.host, "example.com")
        self.assertEqual(uri.password, "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")

    def test_esc02_an_escaped_method_or_header_name_is_not_the_real_one(self):
        message = parse_datagram(ESC02)
        self.assertEqual(message.method, "RE%47IST%45R")
        self.assertEqual([str(c.uri) for c in message.contacts],
                         ["sip:alias1@host1.example.com", "sip:alias3@host3.example.com"])
        self.assertEqual(message.get("C%6Fntact"), "<sip:alias2@host2.example.com>")
        self.assertTrue(message.top_via.has_rport)
        self.assertIsNone(message.top_via.rport)

    def test_dblreq_ignores_the_octets_past_content_length(self):
        message, used = parse_message(DBLREQ)
        self.assertEqual(message.method, "REGISTER")
        self.assertEqual(message.body, b"")
        self.assertEqual(DBLREQ[used:].lstrip(b"\r\n")[:6], b"INVITE")

    def test_a_multipart_body_is_kept_as_bytes(self):
        self.assertEqual(parse_datagram(MPART01).body, MPART_BODY)

    def test_longreq_keeps_33_vias_in_order(self):
        message = parse_datagram(LONGREQ)
        self.assertEqual([v.host for v in message.vias][:2], ["sip33.example.com", "sip32.example.com"])
        self.assertEqual(len(message.vias), 33)

    def test_valid_messages_survive_a_round_trip(self):
        for name, _, data, expected in TORTURE:
            if expected != "valid" or name == "dblreq":
                continue
            message = parse_datagram(data)
            again = parse_datagram(message.to_bytes())
            self.assertEqual(again.headers, message.headers, name)
            self.assertEqual(again.body, message.body, name)
            self.assertEqual(again.start_line(), message.start_line(), name)

    def test_serialise_writes_compact_headers_in_full_and_the_real_content_length(self):
        message = parse_datagram(OPTIONS)
        message.body = b"v=0\r\n"
        message.set("Content-Type", "application/sdp")
        text = message.to_bytes()
        self.assertIn(b"\r\nContent-Length: 5\r\n\r\nv=0\r\n", text)
        self.assertTrue(text.startswith(b"OPTIONS sip:gw@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5062;"))

    def test_a_response_copies_the_dialog_headers_and_adds_the_to_tag(self):
        request = parse_datagram(OPTIONS)
        response = request.response(200, to_tag="abc")
        again = parse_datagram(response.to_bytes())
        self.assertIsInstance(again, Response)
        self.assertEqual((again.status, again.reason), (200, "OK"))
        self.assertEqual(again.to.tag, "abc")
        self.assertEqual(again.from_.tag, "1928301774")
        self.assertEqual(again.get("Via"), request.get("Via"))
        self.assertIsNone(request.response(100, to_tag="abc").to.tag)

    def test_a_via_gets_received_and_rport(self):
        via = parse_via("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;rport")
        via = via.with_param("received", "192.0.2.1").with_param("rport", "6000")
        self.assertEqual(str(via), "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;rport=6000;received=192.0.2.1")
        self.assertEqual(via.rport, 6000)

    def test_uris(self):
        uri = parse_uri("sips:+15551234;phone-context=x@[2001:db8::1]:5061;transport=tcp;lr")
        self.assertIsInstance(uri, SipURI)
        self.assertEqual((uri.scheme, uri.user, uri.host, uri.port), ("sips", "+15551234;phone-context=x",
                                                                      "[2001:db8::1]", 5061))
        self.assertEqual(uri.param("transport"), "tcp")
        self.assertIsInstance(parse_uri("tel:+1-555-1234"), URI)
        for bad in ("sip:", "sip:host:0", "sip:host:99999", "sip:ho st", "sip:300.1.1.1", "sip:[::g]",
                    "sip:a%zzb@host", "sip:host;=x", "nocolon"):
            with self.assertRaises(SIPMessageError, msg=bad):
                parse_uri(bad)

    def test_name_addr_forms(self):
        self.assertEqual(str(parse_name_addr('"A \\"q\\"" <sip:a@b>;tag=1')), '"A \\"q\\"" <sip:a@b>;tag=1')
        self.assertTrue(parse_name_addr("*", allow_star=True).star)
        with self.assertRaises(SIPMessageError):
            parse_name_addr("*")


class RefusalTests(SynchronousTestCase):
    def test_a_400_copies_what_could_be_read_and_tags_to(self):
        from tests.sip.torture import BADINV01
        with self.assertRaises(SIPMessageError) as caught:
            parse_datagram(BADINV01)
        response = error_response(caught.exception, to_tag="t1")
        self.assertEqual(response.status, 400)
        self.assertIn("Via", response.reason)
        self.assertEqual(response.get("Via"), "SIP/2.0/UDP 192.0.2.15;;,;,,")
        self.assertEqual(response.get("To"), "sip:j.user@example.com;tag=t1")
        self.assertEqual(response.get("Call-ID"), "badinv01.0ha0isndaksdjasdf3234nas")
        self.assertTrue(response.to_bytes().startswith(b"SIP/2.0 400 Bad Request (Via: "))

    def test_an_ack_is_never_answered(self):
        data = OPTIONS.replace(b"OPTIONS", b"ACK").replace(b"Max-Forwards: 70", b"Max-Forwards: 700")
        with self.assertRaises(SIPMessageError) as caught:
            parse_datagram(data)
        self.assertIsNone(caught.exception.status)
        self.assertIsNone(error_response(caught.exception))

    def test_bytes_that_are_not_utf8_are_bad_text(self):
        with self.assertRaises(SIPMessageError) as caught:
            parse_datagram(OPTIONS.replace(b"Alice", b"Al\xffce"))
        self.assertEqual(caught.exception.reason, "bad_text")
        self.assertIsNone(caught.exception.status)

    def test_a_bare_cr_or_lf_in_the_head_is_dropped(self):
        for bad in (b"Al\nice", b"Al\rice"):
            with self.assertRaises(SIPMessageError) as caught:
                parse_datagram(OPTIONS.replace(b"Alice", bad))
            self.assertIsNone(caught.exception.status)

    def test_size_limits(self):
        with self.assertRaises(SIPMessageError) as caught:
            parse_datagram(OPTIONS + b"x" * 70000)
        self.assertEqual((caught.exception.reason, caught.exception.status), ("oversized", None))
        many = OPTIONS.replace(b"Content-Length: 0", b"X-A: 1\r\n" * 300 + b"Content-Length: 0")
        with self.assertRaises(SIPMessageError) as caught:
            parse_datagram(many)
        self.assertEqual((caught.exception.reason, caught.exception.status), ("oversized", 513))
        with self.assertRaises(SIPMessageError) as caught:
            parse_datagram(OPTIONS.replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 10\r\n\r\n0123456789"),
                           limits=Limits(max_body=5))
        self.assertEqual(caught.exception.reason, "oversized")

    def test_missing_headers_and_framing(self):
        for data in (b"", b"\r\n\r\n", b"OPTIONS sip:a@b SIP/2.0\r\n", b"garbage\x00\r\n\r\n",
                     OPTIONS.replace(b"Call-ID", b"X-Call-ID"), OPTIONS.replace(b"\r\nVia", b"\r\n Via")):
            with self.assertRaises(SIPMessageError, msg=data[:40]):
                parse_datagram(data)


class StreamTests(SynchronousTestCase):
    def test_messages_are_framed_by_content_length_whatever_the_chunks(self):
        two = OPTIONS + b"\r\n\r\n" + WSINV
        for size in (1, 7, 100, len(two)):
            parser = StreamParser()
            got = []
            for i in range(0, len(two), size):
                got.extend(parser.feed(two[i:i + size]))
            self.assertEqual([m.method for m in got], ["OPTIONS", "INVITE"], size)
            self.assertEqual(len(got[1].body), 150)
            self.assertEqual(parser.keepalives, 2)

    def test_a_stream_message_needs_a_content_length(self):
        with self.assertRaises(SIPMessageError) as caught:
            StreamParser().feed(OPTIONS.replace(b"Content-Length: 0\r\n", b""))
        self.assertEqual(caught.exception.field, "Content-Length")
        self.assertEqual(caught.exception.status, 400)

    def test_an_endless_head_is_refused(self):
        parser = StreamParser(Limits(max_message=1000))
        parser.feed(b"OPTIONS sip:a@b SIP/2.0\r\n")
        with self.assertRaises(SIPMessageError) as caught:
            parser.feed(b"X-A: " + b"a" * 1000)
        self.assertEqual(caught.exception.reason, "oversized")


class FuzzTests(SynchronousTestCase):
    """No input raises anything but SIPMessageError (hypothesis is not installed: a seeded loop)."""

    def check(self, data):
        try:
            message = parse_datagram(data)
        except SIPMessageError as error:
            error_response(error, to_tag="x")
            return
        message.to_bytes()
        if isinstance(message, Request):
            request_problem(message)

    def test_random_bytes(self):
        rng = random.Random(4475)
        alphabet = b"\r\n :;,<>\"\\/=@%[]?SIPVvia0123456789abcdefgtT\x00\xff\t"
        for _ in range(3000):
            length = rng.randrange(0, 300)
            if rng.random() < 0.5:
                data = bytes(rng.randrange(256) for _ in range(length))
            else:
                data = b"INVITE sip:a@b SIP/2.0\r\n" + bytes(rng.choice(alphabet) for _ in range(length)) + b"\r\n\r\n"
            self.check(data)

    def test_mutated_torture_messages(self):
        rng = random.Random(3261)
        corpus = [data for _, _, data, _ in TORTURE] + [OPTIONS]
        for _ in range(4000):
            data = bytearray(rng.choice(corpus))
            for _ in range(rng.randrange(1, 6)):
                op = rng.randrange(4)
                pos = rng.randrange(len(data) + 1)
                if op == 0 and data:
                    data[min(pos, len(data) - 1)] = rng.randrange(256)
                elif op == 1:
                    data[pos:pos] = bytes([rng.choice(b"\r\n :;,<>\"\\%@\t")])
                elif op == 2:
                    del data[pos:pos + rng.randrange(1, 20)]
                else:
                    data = data[:pos]
            self.check(bytes(data))
