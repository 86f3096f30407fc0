"""The Patriot message codec: every type in both directions, every kind of bad frame."""

import json

from twisted.trial.unittest import SynchronousTestCase

from gateway.patriot import messages as m

#: (wire text as in the vendor's examples, the value object it parses to)
EXAMPLES = [
    (
        '{"type":"init-request","payload":{"userName":"123456","password":"ABC123DEF456"}}',
        m.InitRequest({"userName": "123456", "password": "ABC123DEF456"}),
    ),
    ('{"type":"init-request","payload":{}}', m.InitRequest({})),
    ('{"type":"init-response","payload":{"success":true}}', m.InitResponse(True)),
    (
        '{"type":"init-response","payload":{"success":false,"error":"bad password"}}',
        m.InitResponse(False, "bad password"),
    ),
    ('{"type":"heartbeat"}', m.Heartbeat()),
    ('{"type":"heartbeat-response"}', m.HeartbeatResponse()),
    (
        '{"type":"dial-request","payload":{"phoneNo":"+0123456789","rawPhoneNo":"+01 (2) 3-456-789"}}',
        m.DialRequest("+0123456789", "+01 (2) 3-456-789"),
    ),
    ('{"type":"hangup-request"}', m.HangupRequest()),
    ('{"type":"call-status-request"}', m.CallStatusRequest()),
    ('{"type":"call-status-update","payload":{"callActive":false}}', m.CallStatusUpdate(False)),
    (
        '{"type":"call-status-update","payload":{"callActive":true,"outbound":true,"callerId":"123-456-789"}}',
        m.CallStatusUpdate(True, outbound=True, caller_id="123-456-789"),
    ),
    (
        '{"type":"authentication-request","payload":{"apiKey":"ABC123DEF456","requestId":"123456"}}',
        m.AuthenticationRequest("ABC123DEF456", request_id="123456"),
    ),
    ('{"type":"authentication-request","payload":{"apiKey":"K"}}', m.AuthenticationRequest("K")),
    (
        '{"type":"authentication-response","payload":{"requestId":"123456","success":true}}',
        m.AuthenticationResponse("123456", True),
    ),
    (
        '{"type":"authentication-response","payload":{"requestId":"9","success":false,"error":"Invalid API key"}}',
        m.AuthenticationResponse("9", False, error="Invalid API key"),
    ),
]


class ParseAndEncodeTests(SynchronousTestCase):
    def test_every_type_parses_and_encodes_to_the_same_text(self):
        for text, message in EXAMPLES:
            with self.subTest(text=text):
                self.assertEqual(m.parse(text), message)
                self.assertEqual(m.encode(message), text)

    def test_every_type_is_covered(self):
        self.assertEqual({message.TYPE for _, message in EXAMPLES}, set(m.MESSAGE_TYPES))

    def test_bytes_are_read_as_utf8(self):
        text = '{"type":"call-status-update","payload":{"callActive":true,"callerId":"Zoë"}}'
        self.assertEqual(m.parse(text.encode("utf-8")), m.CallStatusUpdate(True, caller_id="Zoë"))

    def test_pretty_printed_json_is_accepted(self):
        text = json.dumps({"type": "dial-request", "payload": {"phoneNo": "123", "rawPhoneNo": "1 2 3"}}, indent=4)
        self.assertEqual(m.parse(text), m.DialRequest("123", "1 2 3"))

    def test_unknown_payload_fields_are_ignored(self):
        text = '{"type":"init-response","payload":{"success":true,"extra":[1,2]},"id":7}'
        self.assertEqual(m.parse(text), m.InitResponse(True))

    def test_null_optional_field_reads_as_absent(self):
        text = '{"type":"call-status-update","payload":{"callActive":false,"outbound":null,"callerId":null}}'
        self.assertEqual(m.parse(text), m.CallStatusUpdate(False))

    def test_payload_on_a_type_without_one_is_ignored(self):
        self.assertEqual(m.parse('{"type":"heartbeat","payload":{"x":1}}'), m.Heartbeat())

    def test_encoding_is_compact_and_leaves_absent_optionals_out(self):
        self.assertEqual(
            m.encode(m.CallStatusUpdate(True, outbound=False)),
            '{"type":"call-status-update","payload":{"callActive":true,"outbound":false}}',
        )

    def test_values_are_type_checked_on_construction(self):
        with self.assertRaises(TypeError):
            m.CallStatusUpdate("yes")
        with self.assertRaises(TypeError):
            m.InitRequest(["not", "an", "object"])


class ErrorTests(SynchronousTestCase):
    def assertRejected(self, data, reason_part, message_type=None, **kwargs):
        with self.assertRaises(m.PatriotMessageError) as caught:
            m.parse(data, **kwargs)
        error = caught.exception
        self.assertIn(reason_part, error.reason)
        self.assertEqual(str(error), error.reason)
        self.assertEqual(error.message_type, message_type)
        self.assertIsInstance(error, ValueError)

    def test_invalid_json(self):
        self.assertRejected('{"type": "heartbeat"', "invalid JSON")
        self.assertRejected("", "invalid JSON")

    def test_json_constants_that_are_not_json(self):
        self.assertRejected('{"type":"call-status-update","payload":{"callActive":NaN}}', "invalid JSON")

    def test_nesting_too_deep_for_the_decoder(self):
        self.assertRejected("[" * 100_000, "invalid JSON")

    def test_not_utf8(self):
        self.assertRejected(b'{"type":"\xff"}', "not UTF-8")

    def test_bad_text_is_classified_by_the_boundarys_reason(self):
        error = self.assertRaises(m.PatriotMessageError, m.parse, b'{"type":"\xff"}')
        self.assertEqual(error.kind, "bad_text")
        error = self.assertRaises(m.PatriotMessageError, m.parse, '{"type":"heartbeat","x":"\ud800"}')
        self.assertEqual(error.kind, "bad_text")  # a str frame holding a lone surrogate itself
        error = self.assertRaises(m.PatriotMessageError, m.parse, '{"type": "heartbeat", "payload": NaN}')
        self.assertEqual(error.kind, "malformed")

    def test_a_lone_surrogate_in_a_key_is_named_where_it_is(self):
        self.assertRejected(b'{"type":"init-request","payload":{"\\ud800":"x"}}',
                            "init-request: a key in field 'payload' holds a lone UTF-16 surrogate", "init-request")
        self.assertRejected(b'{"type":"init-request","\\udc80x":1,"payload":{}}',
                            "init-request: the key '\\\\udc80x' holds a lone UTF-16 surrogate", "init-request")
        self.assertRejected(b'{"type":"init-request","payload":"{\\"\\\\ud800\\":1}"}',
                            "init-request: the key 'payload.\\\\ud800' holds", "init-request")

    def test_not_an_object(self):
        self.assertRejected('["heartbeat"]', "must be a JSON object, not an array")
        self.assertRejected('"heartbeat"', "must be a JSON object, not a string")
        self.assertRejected("null", "must be a JSON object, not null")

    def test_missing_type(self):
        self.assertRejected('{"payload":{}}', "no 'type'")

    def test_ill_typed_type(self):
        self.assertRejected('{"type":5}', "'type' must be a string, not a number")
        self.assertRejected('{"type":null}', "'type' must be a string, not null")

    def test_unknown_type(self):
        self.assertRejected('{"type":"make-coffee"}', "unknown message type 'make-coffee'")

    def test_payload_not_an_object(self):
        self.assertRejected('{"type":"hangup-request","payload":"now"}', "payload must be an object", "hangup-request")
        self.assertRejected('{"type":"init-request","payload":[1]}', "payload must be an object", "init-request")

    def test_missing_payload(self):
        for type_ in ("init-request", "init-response", "dial-request", "call-status-update",
                      "authentication-request", "authentication-response"):
            with self.subTest(type=type_):
                self.assertRejected(json.dumps({"type": type_}), "payload missing", type_)
                self.assertRejected(json.dumps({"type": type_, "payload": None}), "payload missing", type_)

    def test_missing_required_fields(self):
        cases = [
            ("init-response", {}, "'success' missing"),
            ("dial-request", {"rawPhoneNo": "1"}, "'phoneNo' missing"),
            ("dial-request", {"phoneNo": "1"}, "'rawPhoneNo' missing"),
            ("call-status-update", {"outbound": True}, "'callActive' missing"),
            ("authentication-request", {"requestId": "1"}, "'apiKey' missing"),
            ("authentication-response", {"success": True}, "'requestId' missing"),
            ("authentication-response", {"requestId": "1"}, "'success' missing"),
            ("init-response", {"success": None}, "'success' missing"),
        ]
        for type_, payload, reason in cases:
            with self.subTest(type=type_, payload=payload):
                self.assertRejected(json.dumps({"type": type_, "payload": payload}), reason, type_)

    def test_ill_typed_fields(self):
        cases = [
            ("init-response", {"success": "true"}, "'success' must be a boolean, not a string"),
            ("init-response", {"success": 1}, "'success' must be a boolean, not a number"),
            ("init-response", {"success": False, "error": 3}, "'error' must be a string, not a number"),
            ("dial-request", {"phoneNo": 123, "rawPhoneNo": "123"}, "'phoneNo' must be a string, not a number"),
            ("dial-request", {"phoneNo": "123", "rawPhoneNo": ["1"]}, "'rawPhoneNo' must be a string, not an array"),
            ("call-status-update", {"callActive": "no"}, "'callActive' must be a boolean, not a string"),
            ("call-status-update", {"callActive": True, "outbound": 0}, "'outbound' must be a boolean"),
            ("call-status-update", {"callActive": True, "callerId": {}}, "'callerId' must be a string, not an object"),
            ("authentication-request", {"apiKey": True}, "'apiKey' must be a string, not a boolean"),
            ("authentication-request", {"apiKey": "k", "requestId": 1}, "'requestId' must be a string"),
            ("authentication-response", {"requestId": "1", "success": "yes"}, "'success' must be a boolean"),
        ]
        for type_, payload, reason in cases:
            with self.subTest(type=type_, payload=payload):
                self.assertRejected(json.dumps({"type": type_, "payload": payload}), reason, type_)


class PhoneNumberTests(SynchronousTestCase):
    def dial(self, number):
        return json.dumps({"type": "dial-request", "payload": {"phoneNo": number, "rawPhoneNo": number}})

    def test_sanitised_characters_are_accepted(self):
        self.assertEqual(m.parse(self.dial("+44*123#")).phone_no, "+44*123#")

    def test_empty(self):
        with self.assertRaises(m.PatriotMessageError) as caught:
            m.parse(self.dial(""))
        self.assertIn("empty", caught.exception.reason)
        self.assertEqual(caught.exception.message_type, "dial-request")

    def test_characters_outside_the_sanitised_set(self):
        for number in ("+01 (2) 3", "12a", "1-2", "١٢٣"):
            with self.subTest(number=number):
                with self.assertRaises(m.PatriotMessageError) as caught:
                    m.parse(self.dial(number))
                self.assertIn("characters other than", caught.exception.reason)

    def test_default_length_bound(self):
        self.assertEqual(m.parse(self.dial("1" * 32)).phone_no, "1" * 32)
        with self.assertRaises(m.PatriotMessageError) as caught:
            m.parse(self.dial("1" * 33))
        self.assertIn("33 characters, more than 32", caught.exception.reason)

    def test_length_bound_is_a_parameter(self):
        self.assertEqual(m.parse(self.dial("1" * 40), max_phone_length=40).phone_no, "1" * 40)
        with self.assertRaises(m.PatriotMessageError):
            m.parse(self.dial("12345"), max_phone_length=4)

    def test_check_phone_number_directly(self):
        self.assertEqual(m.check_phone_number("*99#"), "*99#")
        with self.assertRaises(m.PatriotMessageError):
            m.check_phone_number("99 1")
