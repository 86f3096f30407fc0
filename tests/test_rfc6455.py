"""The RFC 6455 data path after the opening handshake, on both paths of issue 14: plain Autobahn and the
lean audio path (:class:`gateway.wsaudio.AudioFastPath` mixed into Autobahn's protocols).

Each case completes a real opening handshake on a StringTransport (timers on a task.Clock), feeds
raw frames built from the RFC (:mod:`rfc6455_support`), and asserts what the application sees
(``onMessage``) and what goes on the wire (the parsed output frames). Every case class below is
generated once per path and side: ``<Cases>_<Autobahn|Lean>_<Server|Client>``; the server-only and
client-only rules (masking direction) get their own classes. Options are the gateway's OptimaCCS
ones where they matter (failByDrop=False: a violation is answered with a close frame and its code).
"""

from __future__ import annotations

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import wsaudio
from rfc6455_support import (BINARY, CLIENT, CLOSE, CLOSED, CLOSING, CONT, KEY, LEAN, OPEN, PATHS, PING, PLAIN, PONG,
                             RSV1, RSV2, RSV3, SERVER, TEXT, ZERO_KEY, Connection, Frame, close_payload)

PROTOCOL_ERROR, INVALID_PAYLOAD, TOO_BIG, NORMAL = 1002, 1007, 1009, 1000

#: one 20 ms frame of 8 kHz 16-bit audio, every byte value present
AUDIO = bytes(range(256)) + bytes(range(64))
#: close codes a peer may not send (RFC 6455 7.4.1/7.4.2 and Autobahn's list of the 1000-2999 it allows)
INVALID_CLOSE_CODES = (0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535)
#: close codes a peer may send
VALID_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999)
#: payload lengths around every length encoding boundary (7-bit up to 125, 16-bit up to 65535, then 64-bit)
LENGTHS = (0, 1, 2, 3, 4, 5, 125, 126, 127, 320, 65535, 65536)
#: text that is not UTF-8: a lone continuation byte, an overlong '/', an encoded surrogate, a code point
#: above U+10FFFF, and a valid start cut short
INVALID_UTF8 = (b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok \xe2\x82")


def audio(n: int, seed: int = 0) -> bytes:
    """``n`` bytes of distinct-looking audio (``seed`` tells frames apart)."""
    return bytes((i * 7 + seed * 31) & 0xFF for i in range(n))


class _Case:
    """One path on one side; the generated classes set ``path`` and ``side``."""

    path = PLAIN
    side = SERVER

    def setUp(self):
        self.clock = Clock()

    def connect(self, **options) -> Connection:
        connection = Connection(self.path, self.side, self.clock, **options).handshake()
        self.addCleanup(connection.lose)
        return connection

    def assert_failed(self, connection: Connection, code: int) -> list[Frame]:
        """The connection was failed with ``code``: a close frame carrying it is the last thing sent."""
        frames = connection.sent()
        self.assertTrue(frames, "nothing was sent: the connection was not failed")
        self.assertEqual((frames[-1].opcode, frames[-1].code), (CLOSE, code), frames)
        self.assertIn(connection.state, (CLOSING, CLOSED))
        return frames

    def assert_open_and_quiet(self, connection: Connection) -> None:
        self.assertEqual(connection.sent(), [])
        self.assertEqual(connection.state, OPEN)


class DataFrames(_Case):
    """Unfragmented data frames, the lean path's own case."""

    def test_one_binary_frame_is_one_binary_message(self):
        c = self.connect()
        c.feed(c.peer(BINARY, AUDIO))
        self.assertEqual(c.messages, [(AUDIO, True)])
        self.assertIs(type(c.messages[0][0]), bytes)
        self.assert_open_and_quiet(c)

    def test_back_to_back_binary_frames_in_one_read_all_arrive_in_order(self):
        c = self.connect()
        payloads = [audio(320, seed) for seed in range(10)] + [b"", b"x", audio(125, 11), audio(126, 12)]
        c.feed(b"".join(c.peer(BINARY, p, key=bytes((seed, 1, 2, 3))) for seed, p in enumerate(payloads)))
        self.assertEqual(c.messages, [(p, True) for p in payloads])
        self.assert_open_and_quiet(c)

    def test_every_payload_length_encoding(self):
        for n in LENGTHS:
            with self.subTest(length=n):
                c = self.connect()
                c.feed(c.peer(BINARY, audio(n, n)))
                self.assertEqual(c.messages, [(audio(n, n), True)])
                self.assert_open_and_quiet(c)

    def test_a_length_not_in_its_minimal_encoding_is_a_protocol_error(self):
        for n, form in ((0, 16), (125, 16), (320, 64), (65535, 64)):
            with self.subTest(length=n, bits=form):
                c = self.connect()
                c.feed(c.peer(BINARY, audio(n), form=form), c.peer(BINARY, AUDIO))
                self.assert_failed(c, PROTOCOL_ERROR)
                self.assertEqual(c.messages, [])

    def test_a_frame_arrives_only_once_it_is_whole(self):
        c = self.connect()
        data = c.peer(BINARY, AUDIO)
        c.feed(data[:-1])
        self.assertEqual(c.messages, [])
        c.feed(data[-1:])
        self.assertEqual(c.messages, [(AUDIO, True)])

    def test_a_text_frame_is_a_text_message(self):
        c = self.connect()
        text = "grüße, 電話 ☎ 🎧".encode()
        c.feed(c.peer(TEXT, text), c.peer(TEXT, b""))
        self.assertEqual(c.messages, [(text, False), (b"", False)])
        self.assert_open_and_quiet(c)

    def test_binary_payloads_are_not_checked_as_utf8(self):
        c = self.connect()
        c.feed(*(c.peer(BINARY, p) for p in INVALID_UTF8))
        self.assertEqual(c.messages, [(p, True) for p in INVALID_UTF8])
        self.assert_open_and_quiet(c)

    def test_text_binary_and_control_frames_mixed_in_one_read(self):
        c = self.connect()
        c.feed(c.peer(BINARY, audio(320, 1)) + c.peer(TEXT, b'{"event":"dtmf"}') + c.peer(PING, b"p")
               + c.peer(BINARY, audio(320, 2)) + c.peer(PONG, b"q") + c.peer(BINARY, audio(320, 3)))
        self.assertEqual(c.messages, [(audio(320, 1), True), (b'{"event":"dtmf"}', False),
                                      (audio(320, 2), True), (audio(320, 3), True)])
        self.assertEqual([(f.opcode, f.payload) for f in c.sent()], [(PONG, b"p")])


    def test_the_application_closing_from_on_message_still_hears_the_rest_of_the_read(self):
        # RFC 6455 5.5.1: after sending a close an endpoint may still receive data until the peer's close
        c = self.connect()
        c.protocol.on_message = lambda protocol: protocol.sendClose(NORMAL) if len(protocol.messages) == 1 else None
        c.feed(c.peer(BINARY, audio(320, 1)) + c.peer(BINARY, audio(320, 2)) + c.peer(TEXT, b"t")
               + c.peer(BINARY, audio(320, 3)))
        self.assertEqual(c.messages, [(audio(320, 1), True), (audio(320, 2), True), (b"t", False),
                                      (audio(320, 3), True)])
        self.assertEqual([(f.opcode, f.code) for f in c.sent()], [(CLOSE, NORMAL)])
        c.feed(c.peer(CLOSE, close_payload(NORMAL)))
        c.lose()
        self.assertEqual(c.protocol.closes, [(True, NORMAL, None)])

    def test_the_application_dropping_the_connection_from_on_message_hears_nothing_more(self):
        c = self.connect()
        c.protocol.on_message = lambda protocol: protocol.dropConnection(abort=True)
        c.feed(c.peer(BINARY, audio(320, 1)) + c.peer(BINARY, audio(320, 2)) + c.peer(TEXT, b"t"))
        c.feed(c.peer(BINARY, audio(320, 3)))
        self.assertEqual(c.messages, [(audio(320, 1), True)])
        self.assertEqual((c.state, c.transport.disconnecting), (CLOSED, True))


class Fragmentation(_Case):
    """RFC 6455 5.4: a message in a first frame and continuation frames, FIN on the last only."""

    CASES = (
        (BINARY, [b"\x01\x02", b"\x03"]),
        (BINARY, [audio(100, 1), audio(126, 2), audio(320, 3)]),
        (BINARY, [b"", audio(320), b""]),
        (BINARY, [bytes([i]) for i in range(9)]),
        (TEXT, [b"hel", b"lo"]),
        # a code point cut between fragments (U+260E, then U+1F3A7 over three fragments)
        (TEXT, [b"call \xe2", b"\x98\x8e ", b"\xf0\x9f", b"\x8e", b"\xa7"]),
        (TEXT, [b"", b"", b"x"]),
    )

    def fragments(self, c: Connection, opcode: int, parts: list[bytes]) -> list[bytes]:
        last = len(parts) - 1
        return [c.peer(opcode if i == 0 else CONT, p, fin=i == last) for i, p in enumerate(parts)]

    def test_a_fragmented_message_arrives_whole_once(self):
        for opcode, parts in self.CASES:
            with self.subTest(opcode=opcode, parts=len(parts)):
                c = self.connect()
                frames = self.fragments(c, opcode, parts)
                for each in frames[:-1]:
                    c.feed(each)
                    self.assertEqual(c.messages, [])
                c.feed(frames[-1], c.peer(BINARY, AUDIO))
                self.assertEqual(c.messages, [(b"".join(parts), opcode == BINARY), (AUDIO, True)])
                self.assert_open_and_quiet(c)

    def test_a_continuation_frame_outside_a_message_is_a_protocol_error(self):
        for fin in (True, False):
            with self.subTest(fin=fin):
                c = self.connect()
                c.feed(c.peer(CONT, AUDIO, fin=fin) + c.peer(BINARY, AUDIO))
                self.assert_failed(c, PROTOCOL_ERROR)
                self.assertEqual(c.messages, [])

    def test_a_continuation_after_a_finished_message_is_a_protocol_error(self):
        c = self.connect()
        c.feed(c.peer(BINARY, b"a", fin=False), c.peer(CONT, b"b"), c.peer(CONT, b"c"))
        self.assertEqual(c.messages, [(b"ab", True)])
        self.assert_failed(c, PROTOCOL_ERROR)

    def test_a_new_data_frame_inside_a_fragmented_message_is_a_protocol_error(self):
        for first, intruder, fin in ((BINARY, BINARY, True), (BINARY, BINARY, False), (BINARY, TEXT, True),
                                     (TEXT, BINARY, True), (TEXT, TEXT, True)):
            with self.subTest(first=first, intruder=intruder, fin=fin):
                c = self.connect()
                c.feed(c.peer(first, b"start", fin=False))
                c.feed(c.peer(intruder, AUDIO, fin=fin) + c.peer(CONT, b"end"))
                self.assert_failed(c, PROTOCOL_ERROR)
                self.assertEqual(c.messages, [])


class ControlFrames(_Case):
    """Ping, pong, and control frames between the fragments of a message (RFC 6455 5.4, 5.5)."""

    def test_a_ping_is_answered_with_a_pong_carrying_its_payload(self):
        for payload in (b"", b"x", b"\x00\xff" * 10, audio(125)):
            with self.subTest(length=len(payload)):
                c = self.connect()
                c.feed(c.peer(PING, payload))
                self.assertEqual([(f.fin, f.rsv, f.opcode, f.payload) for f in c.sent()],
                                 [(True, 0, PONG, payload)])
                self.assertEqual(c.messages, [])

    def test_a_ping_between_two_fragments_is_answered_and_the_message_still_arrives_whole(self):
        for opcode, parts in ((BINARY, (audio(200, 1), audio(120, 2))), (TEXT, (b"half \xe2\x98", b"\x8e done"))):
            with self.subTest(opcode=opcode):
                c = self.connect()
                c.feed(c.peer(opcode, parts[0], fin=False), c.peer(PING, b"are you there"))
                self.assertEqual([(f.opcode, f.payload) for f in c.sent()], [(PONG, b"are you there")])
                self.assertEqual(c.messages, [])
                c.feed(c.peer(PONG, b"unsolicited") + c.peer(PING, b"2") + c.peer(CONT, parts[1]))
                self.assertEqual(c.messages, [(b"".join(parts), opcode == BINARY)])
                self.assertEqual([(f.opcode, f.payload) for f in c.sent()], [(PONG, b"2")])
                self.assertEqual(c.state, OPEN)

    def test_an_unsolicited_pong_is_ignored(self):
        c = self.connect()
        c.feed(c.peer(PONG, b"nobody asked"), c.peer(PONG), c.peer(BINARY, AUDIO))
        self.assertEqual(c.messages, [(AUDIO, True)])
        self.assert_open_and_quiet(c)

    def test_a_fragmented_control_frame_is_a_protocol_error(self):
        for opcode in (PING, PONG, CLOSE):
            with self.subTest(opcode=opcode):
                c = self.connect()
                c.feed(c.peer(opcode, close_payload(NORMAL), fin=False) + c.peer(CONT, b"", fin=True)
                       + c.peer(BINARY, AUDIO))
                self.assert_failed(c, PROTOCOL_ERROR)
                self.assertEqual(c.messages, [])

    def test_a_control_payload_over_125_bytes_is_a_protocol_error(self):
        for opcode in (PING, PONG, CLOSE):
            with self.subTest(opcode=opcode):
                c = self.connect()
                c.feed(c.peer(opcode, close_payload(NORMAL, b"r" * 124)) + c.peer(BINARY, AUDIO))
                self.assert_failed(c, PROTOCOL_ERROR)
                self.assertEqual(c.messages, [])

    def test_a_data_frame_received_after_an_auto_ping_stands_for_the_pong(self):
        # Autobahn's autoPingRestartOnAnyTraffic: any data frame cancels the pong timeout
        c = self.connect(autoPingInterval=20, autoPingTimeout=10)
        self.clock.advance(20)
        self.assertEqual([f.opcode for f in c.sent()], [PING])
        self.clock.advance(9)
        c.feed(c.peer(BINARY, AUDIO))
        self.clock.advance(1)
        self.assertEqual((c.state, c.transport.disconnecting), (OPEN, False))
        self.clock.advance(19)
        self.assertEqual([f.opcode for f in c.sent()], [PING])  # the next auto ping, 20 s after the frame

    def test_without_traffic_an_unanswered_auto_ping_drops_the_connection(self):
        c = self.connect(autoPingInterval=20, autoPingTimeout=10)
        self.clock.advance(20)
        self.assertEqual([f.opcode for f in c.sent()], [PING])
        self.clock.advance(9)
        self.assertEqual(c.state, OPEN)
        self.clock.advance(1)
        self.assertEqual((c.state, c.transport.disconnecting), (CLOSED, True))


class CloseHandshake(_Case):
    """RFC 6455 5.5.1 and 7: the close frame, its codes and reason."""

    def test_a_peer_close_1000_is_answered_with_1000(self):
        for payload in (close_payload(NORMAL), close_payload(NORMAL, "fin de l'appel".encode())):
            with self.subTest(payload=payload):
                c = self.connect()
                c.feed(c.peer(CLOSE, payload))
                self.assertEqual([(f.opcode, f.code) for f in c.sent()], [(CLOSE, NORMAL)])
                self.assertEqual(c.protocol.remoteCloseCode, NORMAL)
                # a server drops TCP at once (RFC 6455 7.1.1); a client waits for the server to
                self.assertEqual(c.transport.disconnecting, self.side == SERVER)
                c.lose()
                self.assertEqual(c.protocol.closes, [(True, NORMAL, payload[2:].decode() or None)])

    def test_an_empty_close_is_answered(self):
        c = self.connect()
        c.feed(c.peer(CLOSE))
        self.assertEqual([f.opcode for f in c.sent()], [CLOSE])
        self.assertIsNone(c.protocol.remoteCloseCode)

    def test_every_valid_close_code_is_answered_with_a_clean_close(self):
        for code in VALID_CLOSE_CODES:
            with self.subTest(code=code):
                c = self.connect()
                c.feed(c.peer(CLOSE, close_payload(code, b"why")))
                self.assertEqual([(f.opcode, f.code) for f in c.sent()], [(CLOSE, NORMAL)])
                self.assertEqual(c.protocol.remoteCloseCode, code)
                self.assertFalse(c.protocol.failedByMe)

    def test_an_invalid_close_code_is_a_protocol_error(self):
        for code in INVALID_CLOSE_CODES:
            with self.subTest(code=code):
                c = self.connect()
                c.feed(c.peer(CLOSE, close_payload(code)))
                self.assert_failed(c, PROTOCOL_ERROR)
                self.assertTrue(c.protocol.failedByMe)

    def test_a_one_byte_close_payload_is_a_protocol_error(self):
        c = self.connect()
        c.feed(c.peer(CLOSE, b"\x03"))
        self.assert_failed(c, PROTOCOL_ERROR)

    def test_a_close_reason_that_is_not_utf8_is_invalid_payload(self):
        for reason in INVALID_UTF8:
            with self.subTest(reason=reason):
                c = self.connect()
                c.feed(c.peer(CLOSE, close_payload(NORMAL, reason)))
                self.assert_failed(c, INVALID_PAYLOAD)

    def test_our_close_is_completed_by_the_peers_reply(self):
        c = self.connect()
        c.protocol.sendClose(NORMAL, "bye")
        self.assertEqual([(f.opcode, f.payload) for f in c.sent()], [(CLOSE, close_payload(NORMAL, b"bye"))])
        self.assertEqual(c.state, CLOSING)
        c.feed(c.peer(CLOSE, close_payload(NORMAL)))
        self.assertEqual(c.sent(), [])  # a reply is not answered
        if self.side == SERVER:
            self.assertEqual((c.state, c.transport.disconnecting), (CLOSED, True))
        c.lose()
        self.assertEqual(c.protocol.closes, [(True, NORMAL, None)])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class Sizes(_Case):
    """maxFramePayloadSize and maxMessagePayloadSize: over either is 1009, at the limit is delivered."""

    def test_a_frame_at_the_frame_limit_arrives_and_one_byte_more_is_1009(self):
        for opcode, payload in ((BINARY, audio(400)), (TEXT, b"t" * 400)):
            with self.subTest(opcode=opcode):
                c = self.connect(maxFramePayloadSize=400, maxMessagePayloadSize=1000)
                c.feed(c.peer(opcode, payload))
                self.assertEqual(c.messages, [(payload, opcode == BINARY)])
                c.feed(c.peer(opcode, payload + payload[:1]), c.peer(BINARY, AUDIO))
                self.assert_failed(c, TOO_BIG)
                self.assertEqual(c.messages, [(payload, opcode == BINARY)])

    def test_a_single_frame_message_over_the_message_limit_is_1009(self):
        for frame_limit in (0, 400, 1000):
            with self.subTest(maxFramePayloadSize=frame_limit):
                c = self.connect(maxFramePayloadSize=frame_limit, maxMessagePayloadSize=300)
                c.feed(c.peer(BINARY, audio(300)))
                self.assertEqual(c.messages, [(audio(300), True)])
                c.feed(c.peer(BINARY, audio(301)))
                self.assert_failed(c, TOO_BIG)
                self.assertEqual(len(c.messages), 1)

    def test_a_fragmented_message_at_the_message_limit_arrives_and_one_byte_more_is_1009(self):
        for opcode in (BINARY, TEXT):
            with self.subTest(opcode=opcode):
                c = self.connect(maxFramePayloadSize=400, maxMessagePayloadSize=1000)
                c.feed(c.peer(opcode, b"a" * 400, fin=False), c.peer(CONT, b"b" * 400, fin=False),
                       c.peer(CONT, b"c" * 200))
                self.assertEqual(c.messages, [(b"a" * 400 + b"b" * 400 + b"c" * 200, opcode == BINARY)])
                c.feed(c.peer(opcode, b"a" * 400, fin=False), c.peer(CONT, b"b" * 400, fin=False),
                       c.peer(CONT, b"c" * 201))
                self.assert_failed(c, TOO_BIG)
                self.assertEqual(len(c.messages), 1)

    def test_no_limit_when_the_limits_are_zero(self):
        c = self.connect(maxFramePayloadSize=0, maxMessagePayloadSize=0)
        big = audio(70000)
        c.feed(c.peer(BINARY, big))
        self.assertEqual(c.messages, [(big, True)])

    def test_nothing_after_an_oversize_frame_reaches_the_application(self):
        c = self.connect(maxFramePayloadSize=400, maxMessagePayloadSize=400)
        c.feed(c.peer(BINARY, audio(320, 1)) + c.peer(BINARY, audio(401)) + c.peer(BINARY, audio(320, 2)))
        c.feed(c.peer(BINARY, audio(320, 3)), c.peer(TEXT, b"late"))
        self.assertEqual(c.messages, [(audio(320, 1), True)])
        self.assertEqual([(f.opcode, f.code) for f in c.sent()], [(CLOSE, TOO_BIG)])


class ReservedBitsAndOpcodes(_Case):
    """RFC 6455 5.2: RSV1-3 must be 0 without an extension; opcodes 3-7 and 11-15 are reserved."""

    def test_a_reserved_bit_is_a_protocol_error(self):
        for rsv in (RSV1, RSV2, RSV3, RSV1 | RSV2 | RSV3):
            for opcode in (BINARY, TEXT, PING, CONT):
                with self.subTest(rsv=rsv, opcode=opcode):
                    c = self.connect()
                    if opcode == CONT:
                        c.feed(c.peer(BINARY, b"first", fin=False))
                    c.feed(c.peer(opcode, AUDIO[:100], rsv=rsv) + c.peer(BINARY, AUDIO))
                    self.assert_failed(c, PROTOCOL_ERROR)
                    self.assertEqual(c.messages, [])

    def test_a_reserved_opcode_is_a_protocol_error(self):
        for opcode in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15):
            with self.subTest(opcode=opcode):
                c = self.connect()
                c.feed(c.peer(opcode, AUDIO[:100]) + c.peer(BINARY, AUDIO))
                self.assert_failed(c, PROTOCOL_ERROR)
                self.assertEqual(c.messages, [])


class Utf8(_Case):
    """RFC 6455 8.1: a text message that is not UTF-8 fails the connection with 1007."""

    def test_invalid_utf8_in_a_text_message_is_1007(self):
        for payload in INVALID_UTF8:
            with self.subTest(payload=payload):
                c = self.connect()
                c.feed(c.peer(TEXT, payload), c.peer(BINARY, AUDIO))
                self.assert_failed(c, INVALID_PAYLOAD)
                self.assertEqual(c.messages, [])

    def test_invalid_utf8_in_a_later_fragment_is_1007(self):
        c = self.connect()
        c.feed(c.peer(TEXT, "né".encode(), fin=False))
        self.assertEqual(c.sent(), [])
        c.feed(c.peer(CONT, b"\xff", fin=False), c.peer(CONT, b"x"), c.peer(BINARY, AUDIO))
        self.assert_failed(c, INVALID_PAYLOAD)
        self.assertEqual(c.messages, [])


def stream(c: Connection) -> tuple[bytes, list, list]:
    """Several frames as one byte stream: (the bytes, the messages they carry, the pong payloads they
    ask for)."""
    zero = {"key": ZERO_KEY} if c.side == SERVER else {}
    frames = [
        c.peer(BINARY, audio(320, 1)),
        c.peer(BINARY, audio(320, 2), **zero),
        c.peer(TEXT, '{"event":"media","seq":1,"name":"Zoë"}'.encode()),
        c.peer(PING, b"keepalive"),
        c.peer(BINARY, audio(100, 3)),
        c.peer(BINARY, audio(200, 4), fin=False),
        c.peer(PING, b"mid-message"),
        c.peer(CONT, audio(126, 5), fin=False),
        c.peer(CONT, audio(30, 6)),
        c.peer(BINARY, b""),
        c.peer(BINARY, audio(320, 7)),
        c.peer(TEXT, "snow ☃".encode(), fin=False),
        c.peer(CONT, b""),
        c.peer(BINARY, audio(320, 8)),
    ]
    messages = [(audio(320, 1), True), (audio(320, 2), True),
                ('{"event":"media","seq":1,"name":"Zoë"}'.encode(), False), (audio(100, 3), True),
                (audio(200, 4) + audio(126, 5) + audio(30, 6), True), (b"", True), (audio(320, 7), True),
                ("snow ☃".encode(), False), (audio(320, 8), True)]
    return b"".join(frames), messages, [b"keepalive", b"mid-message"]


class PartialReads(_Case):
    """A stream of frames cut anywhere gives the same messages, in the same order, as read whole."""

    def check(self, chunks: list[bytes], messages: list, pongs: list) -> None:
        c = Connection(self.path, self.side, self.clock).handshake()
        c.feed(*chunks)
        self.assertEqual(c.messages, messages, f"cut at {[len(x) for x in chunks]}")
        self.assertEqual([f.payload for f in c.sent() if f.opcode == PONG], pongs)
        self.assertEqual(c.state, OPEN)

    def test_read_whole(self):
        data, messages, pongs = stream(self.connect())
        self.check([data], messages, pongs)

    def test_cut_in_two_at_every_byte(self):
        data, messages, pongs = stream(self.connect())
        for at in range(1, len(data)):
            self.check([data[:at], data[at:]], messages, pongs)

    def test_a_one_byte_read_at_every_offset(self):
        data, messages, pongs = stream(self.connect())
        for at in range(1, len(data) - 1):
            self.check([data[:at], data[at:at + 1], data[at + 1:]], messages, pongs)

    def test_one_byte_at_a_time(self):
        data, messages, pongs = stream(self.connect())
        self.check([data[i:i + 1] for i in range(len(data))], messages, pongs)


class ServerMasking(_Case):
    """RFC 6455 5.1 and 5.3, server side: every client frame is masked, with any key."""

    def test_any_masking_key_unmasks(self):
        for key in (ZERO_KEY, KEY, b"\xff\xff\xff\xff", b"\x01\x00\x00\x00", b"\x00\x00\x00\x80"):
            with self.subTest(key=key):
                c = self.connect()
                for n in (0, 1, 3, 4, 5, 125, 126, 320, 1001):
                    c.feed(c.peer(BINARY, audio(n, n), key=key))
                self.assertEqual(c.messages, [(audio(n, n), True) for n in (0, 1, 3, 4, 5, 125, 126, 320, 1001)])

    def test_an_unmasked_client_frame_is_a_protocol_error(self):
        for opcode, payload in ((BINARY, AUDIO), (BINARY, b""), (TEXT, b"hi"), (PING, b"p")):
            with self.subTest(opcode=opcode, length=len(payload)):
                c = self.connect()
                c.feed(c.peer(opcode, payload, masked=False) + c.peer(BINARY, AUDIO))
                self.assert_failed(c, PROTOCOL_ERROR)
                self.assertEqual(c.messages, [])


class ClientMasking(_Case):
    """RFC 6455 5.1, client side: a masked server frame is refused."""

    def test_a_masked_server_frame_is_a_protocol_error(self):
        for opcode, payload, key in ((BINARY, AUDIO, KEY), (BINARY, AUDIO, ZERO_KEY), (BINARY, b"", KEY),
                                     (TEXT, b"hi", KEY), (PING, b"p", KEY)):
            with self.subTest(opcode=opcode, key=key):
                c = self.connect()
                c.feed(c.peer(opcode, payload, masked=True, key=key) + c.peer(BINARY, AUDIO))
                self.assert_failed(c, PROTOCOL_ERROR)
                self.assertEqual(c.messages, [])


class SendAudio(_Case):
    """``sendAudio(payload)``: one binary frame; on plain Autobahn the reference is ``sendMessage``."""

    def test_one_fin_binary_frame_carrying_the_payload(self):
        c = self.connect()
        for n in LENGTHS:
            c.protocol.sendAudio(audio(n, n))
            frames = c.sent()
            self.assertEqual([(f.fin, f.rsv, f.opcode, f.payload) for f in frames], [(True, 0, BINARY, audio(n, n))])
            self.assertEqual(frames[0].key is None, self.side == SERVER)

    def test_a_client_masks_every_frame_with_a_fresh_key_and_a_server_none(self):
        if self.side == SERVER:
            self.assertEqual(set(self.connect_and_send_keys(3)), {None})
        else:
            keys = self.connect_and_send_keys(1100)  # past the lean path's pool of 1024 keys
            self.assertEqual(len(set(keys)), len(keys))

    def connect_and_send_keys(self, count: int) -> list:
        c = self.connect()
        for i in range(count):
            c.protocol.sendAudio(audio(320, i))
        frames = c.sent()
        self.assertEqual([f.payload for f in frames], [audio(320, i) for i in range(count)])
        return [f.key for f in frames]

    def test_the_peer_receives_what_was_sent(self):
        # across paths too: what one path sends, the other reads
        for peer_path in PATHS:
            with self.subTest(peer=peer_path.name):
                c = self.connect()
                other = Connection(peer_path, CLIENT if self.side == SERVER else SERVER, self.clock).handshake()
                self.addCleanup(other.lose)
                payloads = [audio(320, i) for i in range(5)] + [b"", audio(65536)]
                for p in payloads:
                    c.protocol.sendAudio(p)
                other.feed(c.transport.value())
                self.assertEqual(other.messages, [(p, True) for p in payloads])
                self.assertEqual((other.state, other.transport.value()), (OPEN, b""))

    def test_nothing_is_sent_before_the_handshake(self):
        c = Connection(self.path, self.side, self.clock)
        before = c.transport.value()  # a client's opening request
        c.protocol.sendAudio(AUDIO)
        self.assertEqual(c.transport.value(), before)
        c.handshake()
        c.protocol.sendAudio(AUDIO)
        self.assertEqual([f.payload for f in c.sent()], [AUDIO])

    def test_nothing_is_sent_while_closing_or_after_the_close(self):
        c = self.connect()
        c.protocol.sendClose(NORMAL)
        self.assertEqual([f.opcode for f in c.sent()], [CLOSE])
        c.protocol.sendAudio(AUDIO)
        self.assertEqual(c.sent(), [])
        c.feed(c.peer(CLOSE, close_payload(NORMAL)))
        c.protocol.sendAudio(AUDIO)
        c.lose()
        c.protocol.sendAudio(AUDIO)
        self.assertEqual(c.sent(), [])

    def test_nothing_is_sent_after_the_peer_closed(self):
        c = self.connect()
        c.feed(c.peer(CLOSE, close_payload(NORMAL)))
        self.assertEqual([f.opcode for f in c.sent()], [CLOSE])
        c.protocol.sendAudio(AUDIO)
        self.assertEqual(c.sent(), [])


class LeanPathEngaged(_Case):
    """On the lean path, audio frames really take it both ways (else every case above would only test
    Autobahn twice), and everything else really goes to Autobahn."""

    def test_audio_frames_in_take_the_lean_path_and_the_rest_does_not(self):
        c = self.connect()
        c.feed(stream(c)[0])
        # the unfragmented binary frames of the stream (the fragmented one and the text go to Autobahn)
        self.assertEqual(c.protocol.fast_in, 6)

    def test_audio_frames_out_take_the_lean_path(self):
        c = self.connect()
        for _ in range(3):
            c.protocol.sendAudio(AUDIO)
        self.assertEqual(c.protocol.fast_out, 3)
        self.assertEqual(len(c.sent()), 3)

    def test_the_seam_is_still_there_on_an_open_protocol(self):
        c = self.connect()
        wsaudio.check_autobahn()
        for name in wsaudio.SEAM:
            self.assertTrue(callable(getattr(WebSocketProtocol, name, None)), name)
        for name in wsaudio.STATE:
            self.assertTrue(hasattr(c.protocol, name), name)


class GatewayProtocols(SynchronousTestCase):
    """The OptimaCCS legs really use the lean path these cases test (the mixin before Autobahn's class)."""

    def test_both_optimaccs_websocket_protocols_take_the_lean_path(self):
        from gateway.drivers.optimaccs import _ProviderProtocol
        from gateway.drivers.optimaccs_out import _MediaProtocol
        for protocol in (_ProviderProtocol, _MediaProtocol):
            self.assertIs(protocol.processData, wsaudio.AudioFastPath.processData, protocol)
            self.assertIs(protocol.sendAudio, wsaudio.AudioFastPath.sendAudio, protocol)


_BOTH = (DataFrames, Fragmentation, ControlFrames, CloseHandshake, Sizes, ReservedBitsAndOpcodes, Utf8, PartialReads,
         SendAudio)
_GENERATED = [(cases, path, side) for cases in _BOTH for path in PATHS for side in (SERVER, CLIENT)]
_GENERATED += [(ServerMasking, path, SERVER) for path in PATHS] + [(ClientMasking, path, CLIENT) for path in PATHS]
_GENERATED += [(LeanPathEngaged, LEAN, side) for side in (SERVER, CLIENT)]
for _cases, _path, _side in _GENERATED:
    _name = f"{_cases.__name__}_{_path.name}_{_side}"
    globals()[_name] = type(_name, (_cases, SynchronousTestCase), {"path": _path, "side": _side,
                                                                   "__module__": __name__})
del _cases, _path, _side, _name
