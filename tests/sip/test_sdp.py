"""SDP offer/answer: G.711 and telephone-event, ptime 20, directions for hold and retrieve."""

import random

from twisted.trial.unittest import SynchronousTestCase

from gateway.sip.sdp import LocalMedia, SDPError, parse_sdp, reverse


def sdp(*media, connection="192.0.2.20", version=1):
    lines = ["v=0", f"o=peer 42 {version} IN IP4 192.0.2.20", "s=call", f"c=IN IP4 {connection}", "t=0 0",
             *media]
    return ("\r\n".join(lines) + "\r\n").encode()


AUDIO = ("m=audio 40000 RTP/AVP 8 0 18 100", "a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000",
         "a=rtpmap:18 G729/8000", "a=rtpmap:100 telephone-event/8000", "a=fmtp:100 0-15", "a=ptime:20")


def local():
    return LocalMedia(address="192.0.2.1", port=30000, session_id="7")


class OfferTests(SynchronousTestCase):
    def test_the_offer_lists_pcmu_pcma_and_telephone_event_with_ptime_20(self):
        media = local()
        offer = media.offer()
        self.assertIn(b"m=audio 30000 RTP/AVP 0 8 101\r\n", offer)
        for line in (b"a=rtpmap:0 PCMU/8000", b"a=rtpmap:8 PCMA/8000", b"a=rtpmap:101 telephone-event/8000",
                     b"a=fmtp:101 0-16", b"a=ptime:20", b"a=sendrecv", b"c=IN IP4 192.0.2.1"):
            self.assertIn(line + b"\r\n", offer)
        parsed = parse_sdp(offer)
        self.assertEqual((parsed.session_id, parsed.version), ("7", 1))
        self.assertEqual(parse_sdp(media.offer()).version, 2)

    def test_hold_offers_sendonly_or_inactive_and_retrieve_sendrecv(self):
        media = local()
        self.assertIn(b"a=sendonly\r\n", media.offer(hold=True))
        self.assertIn(b"a=inactive\r\n", media.offer(peer_holds=True))
        self.assertIn(b"a=sendrecv\r\n", media.offer(hold=False))
        self.assertIn(b"a=recvonly\r\n", media.offer(peer_holds=True))

    def test_accepting_the_answer_to_a_hold(self):
        media = local()
        media.offer(hold=True)
        agreed = media.accept_answer(parse_sdp(sdp("m=audio 40000 RTP/AVP 0", "a=recvonly")))
        self.assertEqual((agreed.direction, agreed.send, agreed.receive), ("sendonly", True, False))
        media.offer(hold=False)
        agreed = media.accept_answer(parse_sdp(sdp("m=audio 40000 RTP/AVP 0 101", "a=rtpmap:101 telephone-event/8000")))
        self.assertEqual((agreed.codec, agreed.payload_type, agreed.dtmf_payload_type, agreed.direction),
                         ("PCMU", 0, 101, "sendrecv"))
        self.assertEqual((agreed.remote_address, agreed.remote_port), ("192.0.2.20", 40000))

    def test_an_answer_refusing_audio_or_picking_another_codec_fails(self):
        media = local()
        media.offer()
        for answer in (sdp("m=audio 0 RTP/AVP 0"), sdp("m=audio 4000 RTP/AVP 18"), sdp("m=video 4000 RTP/AVP 31")):
            with self.assertRaises(SDPError) as caught:
                media.accept_answer(parse_sdp(answer))
            self.assertEqual(caught.exception.status, 488)


class AnswerTests(SynchronousTestCase):
    def test_the_first_offered_codec_we_take_wins_and_dtmf_keeps_its_payload_type(self):
        body, agreed = local().answer(parse_sdp(sdp(*AUDIO)))
        self.assertEqual((agreed.codec, agreed.payload_type, agreed.dtmf_payload_type), ("PCMA", 8, 100))
        self.assertEqual((agreed.remote_address, agreed.remote_port, agreed.ptime), ("192.0.2.20", 40000, 20))
        answer = parse_sdp(body)
        [audio] = answer.media
        self.assertEqual((audio.port, audio.formats, audio.direction), (30000, ("8", "100"), "sendrecv"))
        self.assertEqual(audio.encoding(100), ("TELEPHONE-EVENT", 8000))

    def test_a_dynamic_payload_type_for_pcmu_is_used(self):
        _, agreed = local().answer(parse_sdp(sdp("m=audio 40000 RTP/AVP 96", "a=rtpmap:96 pcmu/8000")))
        self.assertEqual((agreed.codec, agreed.payload_type, agreed.dtmf_payload_type), ("PCMU", 96, None))

    def test_other_streams_are_refused_with_port_0_in_the_same_order(self):
        offer = sdp("m=video 50000 RTP/AVP 31", *AUDIO, "m=audio 40002 RTP/AVP 0")
        body, _ = local().answer(parse_sdp(offer))
        media = parse_sdp(body).media
        self.assertEqual([(m.kind, m.port) for m in media], [("video", 0), ("audio", 30000), ("audio", 0)])

    def test_no_codec_we_take_is_488(self):
        with self.assertRaises(SDPError) as caught:
            local().answer(parse_sdp(sdp("m=audio 40000 RTP/AVP 18", "a=rtpmap:18 G729/8000")))
        self.assertEqual(caught.exception.status, 488)
        with self.assertRaises(SDPError):
            local().answer(parse_sdp(sdp("m=audio 40000 RTP/AVP 96", "a=rtpmap:96 PCMU/16000")))

    def test_a_peer_hold_is_answered_by_the_reverse_direction(self):
        cases = {"sendonly": "recvonly", "inactive": "inactive", "recvonly": "sendonly", "sendrecv": "sendrecv"}
        for offered, expected in cases.items():
            body, agreed = local().answer(parse_sdp(sdp("m=audio 40000 RTP/AVP 0", f"a={offered}")))
            self.assertEqual(agreed.direction, expected, offered)
            self.assertIn(f"a={expected}\r\n".encode(), body)
            self.assertEqual(reverse(offered), {"sendonly": "recvonly", "recvonly": "sendonly"}.get(offered, offered))

    def test_rfc_2543_hold_by_a_zero_address(self):
        _, agreed = local().answer(parse_sdp(sdp("m=audio 40000 RTP/AVP 0", connection="0.0.0.0")))
        self.assertFalse(agreed.send)
        self.assertTrue(agreed.receive)

    def test_while_we_hold_our_answer_is_sendonly(self):
        media = local()
        media.offer(hold=True)
        _, agreed = media.answer(parse_sdp(sdp("m=audio 40000 RTP/AVP 0")))
        self.assertEqual(agreed.direction, "sendonly")

    def test_session_level_direction_applies_to_the_media(self):
        _, agreed = local().answer(parse_sdp(sdp("a=sendonly", "m=audio 40000 RTP/AVP 0")))
        self.assertEqual(agreed.direction, "recvonly")


class ParseTests(SynchronousTestCase):
    def test_refused(self):
        for body in (b"", b"v=1\r\n", b"v=0\r\nnot a line\r\n", b"v=0\r\nm=audio x RTP/AVP 0\r\n",
                     b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n", b"v=0\r\no=a b\r\n", b"v=0\r\nc=IN IP4\r\n",
                     b"v=0\r\n\xff\r\n", b"v=0\r\n" + b"a=x\r\n" * 300, b"v=0\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:300 X/8000\r\n"):
            with self.assertRaises(SDPError, msg=body[:40]) as caught:
                parse_sdp(body)
            self.assertEqual(caught.exception.status, 400)

    def test_lf_line_ends_are_read(self):
        self.assertEqual(parse_sdp(sdp(*AUDIO).replace(b"\r\n", b"\n")).media[0].port, 40000)

    def test_fuzz_only_sdp_errors(self):
        rng = random.Random(3264)
        base = sdp(*AUDIO)
        for _ in range(2000):
            data = bytearray(base)
            for _ in range(rng.randrange(1, 6)):
                pos = rng.randrange(len(data))
                data[pos] = rng.choice(b"=\r\n :/0123456789amvc\xff")
            try:
                local().answer(parse_sdp(bytes(data)))
            except SDPError:
                pass
