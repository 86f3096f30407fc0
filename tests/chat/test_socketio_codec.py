"""The Engine.IO and Socket.IO packet codecs: round trips, the URL, and malformed input."""

from twisted.trial.unittest import SynchronousTestCase

from gateway.chat import engineio
from gateway.chat.socketio import Packet, PacketError, PacketType, decode_packet, encode_packet, reassemble

OPEN = '{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'


class EngineIOCodecTests(SynchronousTestCase):
    def test_text_packets(self):
        self.assertEqual(engineio.decode_packet(b"2", False), engineio.Packet(engineio.PacketType.PING, ""))
        self.assertEqual(engineio.decode_packet(b"4hello", False), engineio.Packet(engineio.PacketType.MESSAGE, "hello"))
        self.assertEqual(engineio.encode_packet(engineio.Packet(engineio.PacketType.PONG, "probe")), (b"3probe", False))

    def test_binary_frame_is_a_message(self):
        packet = engineio.decode_packet(b"\x00\x01", True)
        self.assertEqual(packet, engineio.Packet(engineio.PacketType.MESSAGE, b"\x00\x01"))
        self.assertEqual(engineio.encode_packet(packet), (b"\x00\x01", True))

    def test_binary_data_only_in_messages(self):
        with self.assertRaises(PacketError):
            engineio.encode_packet(engineio.Packet(engineio.PacketType.PING, b"x"))

    def test_malformed_frames(self):
        for payload in (b"", b"9", b"x", b"\xff\xfe", "٣".encode()):
            with self.subTest(payload=payload), self.assertRaises(PacketError):
                engineio.decode_packet(payload, False)

    def test_a_frame_that_is_not_utf8_is_bad_text(self):
        with self.assertRaises(PacketError) as caught:
            engineio.decode_packet(b"4\xff\xfe", False)
        self.assertEqual(caught.exception.reason, "bad_text")
        with self.assertRaises(PacketError) as caught:
            engineio.decode_packet(b"9", False)
        self.assertEqual(caught.exception.reason, "malformed")

    def test_handshake(self):
        handshake = engineio.Handshake.from_json(OPEN)
        self.assertEqual(handshake.sid, "abc")
        self.assertEqual(handshake.ping_interval, 25.0)
        self.assertEqual(handshake.ping_timeout, 20.0)
        self.assertEqual(handshake.liveness, 45.0)
        self.assertEqual(handshake.max_payload, 1000000)

    def test_bad_handshakes(self):
        for text in ("nope", "[]", '{"pingInterval":1,"pingTimeout":1}', '{"sid":"a","pingInterval":"1","pingTimeout":1}',
                     '{"sid":"a","pingInterval":1,"pingTimeout":-1}', '{"sid":"a","pingInterval":true,"pingTimeout":1}',
                     '{"sid":"a","pingInterval":1,"pingTimeout":1,"upgrades":"x"}'):
            with self.subTest(text=text), self.assertRaises(PacketError):
                engineio.Handshake.from_json(text)

    def test_websocket_url(self):
        self.assertEqual(engineio.websocket_url("http://chat:8080"), "ws://chat:8080/socket.io/?EIO=4&transport=websocket")
        self.assertEqual(engineio.websocket_url("https://chat/", "/custom/path/"),
                         "wss://chat/custom/path/?EIO=4&transport=websocket")
        self.assertEqual(engineio.websocket_url("https://chat?token=a b"), "wss://chat/socket.io/?token=a+b&EIO=4&transport=websocket")
        for bad in ("ftp://chat", "http://", "http://chat/admin"):
            with self.subTest(url=bad), self.assertRaises(ValueError):
                engineio.websocket_url(bad)


class SocketIOCodecTests(SynchronousTestCase):
    def assertRoundTrip(self, packet, text):
        self.assertEqual(encode_packet(packet), [text])
        self.assertEqual(decode_packet(text), packet)

    def test_round_trips(self):
        self.assertRoundTrip(Packet(PacketType.CONNECT), "0")
        self.assertRoundTrip(Packet(PacketType.CONNECT, "/admin", {"token": "t"}), '0/admin,{"token":"t"}')
        self.assertRoundTrip(Packet(PacketType.CONNECT, data={"sid": "x"}), '0{"sid":"x"}')
        self.assertRoundTrip(Packet(PacketType.DISCONNECT, "/admin"), "1/admin,")
        self.assertRoundTrip(Packet(PacketType.EVENT, data=["hello", 1]), '2["hello",1]')
        self.assertRoundTrip(Packet(PacketType.EVENT, "/admin", ["project:delete", 123], 456), '2/admin,456["project:delete",123]')
        self.assertRoundTrip(Packet(PacketType.ACK, "/admin", [], 456), "3/admin,456[]")
        self.assertRoundTrip(Packet(PacketType.ACK, data=["a"], id=123), '3123["a"]')
        self.assertRoundTrip(Packet(PacketType.CONNECT_ERROR, data={"message": "Not authorized"}), '4{"message":"Not authorized"}')

    def test_binary_event_encodes_placeholders(self):
        packet = Packet(PacketType.EVENT, data=["upload", {"file": b"\x01\x02", "parts": [b"\x03"]}], id=7)
        self.assertEqual(
            encode_packet(packet),
            ['52-7["upload",{"file":{"_placeholder":true,"num":0},"parts":[{"_placeholder":true,"num":1}]}]',
             b"\x01\x02", b"\x03"],
        )

    def test_binary_ack_decodes_and_reassembles(self):
        packet = decode_packet('61-/admin,456[{"_placeholder":true,"num":0}]')
        self.assertEqual((packet.type, packet.namespace, packet.id, packet.attachments),
                         (PacketType.BINARY_ACK, "/admin", 456, 1))
        self.assertEqual(reassemble(packet, [b"\xff"]), Packet(PacketType.BINARY_ACK, "/admin", [b"\xff"], 456))

    def test_binary_round_trip(self):
        original = Packet(PacketType.EVENT, data=["blob", b"abc", {"x": [b"", 1]}])
        text, *buffers = encode_packet(original)
        self.assertEqual(reassemble(decode_packet(text), buffers), Packet(PacketType.BINARY_EVENT, data=original.data))

    def test_namespace_query_is_dropped(self):
        self.assertEqual(decode_packet('0/admin?x=1,{"sid":"s"}').namespace, "/admin")

    def test_bad_placeholders(self):
        packet = decode_packet('51-["x",{"_placeholder":true,"num":3}]')
        with self.assertRaises(PacketError):
            reassemble(packet, [b"a"])
        with self.assertRaises(PacketError):
            reassemble(packet, [])

    def test_malformed(self):
        for text in ("", "7", "x", "2", "2{}", "2[]", "2[1]", "3[]", '31{"a":1}', "21", "2[oops", '5["x"]',
                     '5x-["x"]', '50-["x"]', '1{"a":1}', '11', '0[1]', "45", '2/chat'):
            with self.subTest(text=text), self.assertRaises(PacketError):
                decode_packet(text)

    def test_unencodable(self):
        with self.assertRaises(PacketError):
            encode_packet(Packet(PacketType.EVENT, data=["x", object()]))
        with self.assertRaises(PacketError):
            encode_packet(Packet(PacketType.EVENT, data=["x", float("nan")]))
        with self.assertRaises(PacketError):
            encode_packet(Packet(PacketType.CONNECT, data={"blob": b"x"}))


class HostileInputTests(SynchronousTestCase):
    """Every decode error is a PacketError, never a ValueError out of int() or json; numbers are bounded."""

    def test_open_packet_heartbeat_must_be_finite_positive_and_at_most_ten_minutes(self):
        for interval in ("NaN", "Infinity", "-Infinity", "1e999", "0", "-1", "600001", "1e300", '"25000"', "null", "true",
                         "9" * 4300, "-" + "9" * 400):
            text = '{"sid":"a","pingInterval":%s,"pingTimeout":20000}' % interval
            with self.subTest(pingInterval=interval), self.assertRaises(PacketError):
                engineio.Handshake.from_json(text)
            text = '{"sid":"a","pingInterval":25000,"pingTimeout":%s}' % interval
            with self.subTest(pingTimeout=interval), self.assertRaises(PacketError):
                engineio.Handshake.from_json(text)
        limit = engineio.Handshake.from_json('{"sid":"a","pingInterval":600000,"pingTimeout":0.5}')
        self.assertEqual((limit.ping_interval, limit.ping_timeout), (600.0, 0.0005))

    def test_open_packet_sid_must_be_a_sane_string(self):
        for sid in ('""', '"' + "a" * 257 + '"', '"a\\nb"', '"\\ud800"', "[]", "7"):
            with self.subTest(sid=sid[:20]), self.assertRaises(PacketError):
                engineio.Handshake.from_json('{"sid":%s,"pingInterval":1,"pingTimeout":1}' % sid)
        self.assertEqual(engineio.Handshake.from_json('{"sid":"%s","pingInterval":1,"pingTimeout":1}' % ("a" * 256)).sid, "a" * 256)

    def test_open_packet_max_payload_must_be_finite(self):
        for value in ("NaN", "Infinity", "-1", "1e999"):
            with self.subTest(maxPayload=value), self.assertRaises(PacketError):
                engineio.Handshake.from_json('{"sid":"a","pingInterval":1,"pingTimeout":1,"maxPayload":%s}' % value)

    def test_a_huge_ack_id_is_a_packet_error(self):
        for text in ("2" + "9" * 4300 + '["x"]', "3" + "1" * 4300 + "[]", "2" + "1" * 17 + '["x"]'):
            with self.subTest(digits=len(text)), self.assertRaises(PacketError) as caught:
                decode_packet(text)
            self.assertIn("ack id of", str(caught.exception))
        self.assertEqual(decode_packet("2" + "9" * 16 + '["x"]').id, 9999999999999999)

    def test_a_huge_or_excessive_attachment_count_is_a_packet_error(self):
        with self.assertRaises(PacketError) as caught:
            decode_packet("5" + "9" * 4300 + '-["x"]')
        self.assertEqual(caught.exception.reason, "malformed")
        with self.assertRaises(PacketError) as caught:
            decode_packet('511-["x"]')
        self.assertEqual(caught.exception.reason, "oversized")
        self.assertEqual(decode_packet('511-["x"]', max_attachments=11).attachments, 11)
        self.assertEqual(decode_packet('510-["x"]').attachments, 10)

    def test_json_the_boundary_refuses_is_a_packet_error(self):
        for text, reason in (('2["x",NaN]', "malformed"), ('2["x",Infinity]', "malformed"), ('2["x",1e999]', "malformed"),
                             ("2" + "[" * 100 + "]" * 100, "malformed"), ("2" + "[" * 100000, "malformed"),
                             ('2["x","\\ud800"]', "bad_text"), ('2["\\udfff"]', "bad_text"), ('2["x",{"\\ud800":1}]', "bad_text"),
                             ('0{"sid":"\\ud83d"}', "bad_text")):
            with self.subTest(text=text[:30]), self.assertRaises(PacketError) as caught:
                decode_packet(text)
            self.assertEqual(caught.exception.reason, reason)
        self.assertEqual(decode_packet('2["x","\\ud83d\\ude00"]').data, ["x", "\U0001f600"])
