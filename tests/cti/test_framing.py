"""Unit tests of the HIS link framing, the envelope value objects and the names table."""

import json
import uuid

from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from gateway.cti import envelope as env
from gateway.cti import framing
from gateway.cti.framing import ABSOLUTE_MAX_FRAME_SIZE, FramedJSONProtocol, encode_frame
from gateway.cti.names import (
    BodyError,
    Channel,
    ChannelGroupInit,
    ChannelInit,
    ControlStatus,
    ConversationInit,
    CtiNames,
    InteractionInit,
    Party,
    SessionInit,
    SessionLogin,
)


class Recorder(FramedJSONProtocol):
    """Keeps what it was given."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.messages = []
        self.rejected = []

    def messageReceived(self, obj):
        self.messages.append(obj)

    def frameRejected(self, reason):
        self.rejected.append(reason)


def raw_frame(payload, byteorder="big"):
    return len(payload).to_bytes(4, byteorder) + payload


class FramingTests(SynchronousTestCase):
    def setUp(self):
        self.logged = []
        self.patch(framing, "log", Logger(observer=self.logged.append))
        self.transport = StringTransport()
        self.protocol = self.connect(Recorder())

    def connect(self, protocol):
        protocol.makeConnection(self.transport)
        return protocol

    def test_send_message_writes_a_big_endian_length_prefixed_utf8_frame(self):
        self.protocol.sendMessage({"name": "é"})
        payload = json.dumps({"name": "é"}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.assertEqual(self.transport.value(), len(payload).to_bytes(4, "big") + payload)

    def test_many_frames_in_one_chunk(self):
        messages = [{"n": i} for i in range(50)]
        self.protocol.dataReceived(b"".join(encode_frame(m) for m in messages))
        self.assertEqual(self.protocol.messages, messages)

    def test_data_split_at_every_byte_boundary(self):
        messages = [{"a": 1}, {"b": "two"}, {"c": [3]}]
        stream = b"".join(encode_frame(m) for m in messages)
        for cut in range(len(stream) + 1):
            protocol = self.connect(Recorder())
            protocol.dataReceived(stream[:cut])
            protocol.dataReceived(stream[cut:])
            self.assertEqual(protocol.messages, messages, f"split at {cut}")

    def test_data_one_byte_at_a_time(self):
        messages = [{"a": 1}, {"b": 2}]
        for byte in b"".join(encode_frame(m) for m in messages):
            self.protocol.dataReceived(bytes([byte]))
        self.assertEqual(self.protocol.messages, messages)

    def test_oversized_frame_is_skipped_and_the_next_delivered(self):
        big = encode_frame({"padding": "x" * 100})
        stream = big + encode_frame({"ok": True})
        for cut in range(len(stream) + 1):
            protocol = self.connect(Recorder(max_frame_size=20))
            protocol.dataReceived(stream[:cut])
            protocol.dataReceived(stream[cut:])
            self.assertEqual(protocol.messages, [{"ok": True}], f"split at {cut}")
            self.assertEqual(len(protocol.rejected), 1)
        self.assertIn(str(len(big) - 4), protocol.rejected[0])
        self.assertFalse(self.transport.disconnecting)
        warning = self.logged[-1]
        self.assertIn(str(len(big) - 4), warning["reason"])
        self.assertEqual(warning["peer"], "192.168.1.1:54321")

    def test_invalid_utf8_is_survived(self):
        self.protocol.dataReceived(raw_frame(b'{"a": "\xff"}') + encode_frame({"next": 1}))
        self.assertEqual(self.protocol.messages, [{"next": 1}])
        self.assertIn("not UTF-8", self.protocol.rejected[0])
        self.assertFalse(self.transport.disconnecting)

    def test_invalid_json_is_survived(self):
        self.protocol.dataReceived(raw_frame(b"{not json") + raw_frame(b"") + encode_frame({"next": 1}))
        self.assertEqual(self.protocol.messages, [{"next": 1}])
        self.assertEqual(len(self.protocol.rejected), 2)
        self.assertIn("not JSON", self.protocol.rejected[0])
        self.assertFalse(self.transport.disconnecting)

    def test_frames_go_through_the_boundary_policy(self):
        self.protocol.dataReceived(
            raw_frame(b'{"a": NaN}') + raw_frame(b'{"a": {"b": "x\\ud800"}}') + raw_frame(b"[" * 40 + b"]" * 40)
            + raw_frame(b'{"a": 1e999}') + encode_frame({"next": "\U0001f600"})
        )
        self.assertEqual(self.protocol.messages, [{"next": "\U0001f600"}])
        first, surrogate, deep, overflow = self.protocol.rejected
        self.assertIn("NaN is not a JSON number", first)
        self.assertIn("field 'a.b': holds a lone UTF-16 surrogate", surrogate)
        self.assertIn("nested deeper than 32", deep)
        self.assertIn("out of range", overflow)
        self.assertFalse(self.transport.disconnecting)

    def test_json_that_is_not_an_object_is_survived(self):
        self.protocol.dataReceived(raw_frame(b"[1, 2]") + encode_frame({"next": 1}))
        self.assertEqual(self.protocol.messages, [{"next": 1}])
        self.assertIn("list", self.protocol.rejected[0])

    def test_length_over_the_absolute_limit_drops_the_link(self):
        self.protocol.dataReceived((ABSOLUTE_MAX_FRAME_SIZE + 1).to_bytes(4, "big") + b"xx")
        self.assertTrue(self.transport.disconnecting)
        self.assertIn("absolute limit", self.protocol.rejected[0])
        self.protocol.dataReceived(encode_frame({"after": 1}))
        self.assertEqual(self.protocol.messages, [])

    def test_little_endian(self):
        protocol = self.connect(Recorder(byteorder="little"))
        protocol.dataReceived(encode_frame({"x": 1}, "little") + encode_frame({"y": 2}, "little"))
        self.assertEqual(protocol.messages, [{"x": 1}, {"y": 2}])
        self.transport.clear()
        protocol.sendMessage({"z": 3})
        self.assertEqual(self.transport.value()[:4], (7).to_bytes(4, "little"))

    def test_big_endian_stream_read_as_little_endian_is_a_broken_length(self):
        protocol = self.connect(Recorder(byteorder="little"))
        protocol.dataReceived(encode_frame({"x": 1}, "big"))
        self.assertTrue(self.transport.disconnecting)

    def test_a_failing_message_handler_does_not_stop_the_link(self):
        class Failing(Recorder):
            def messageReceived(self, obj):
                super().messageReceived(obj)
                raise RuntimeError("handler bug")

        protocol = self.connect(Failing())
        protocol.dataReceived(encode_frame({"a": 1}) + encode_frame({"b": 2}))
        self.assertEqual(protocol.messages, [{"a": 1}, {"b": 2}])
        self.assertEqual(len([e for e in self.logged if "log_failure" in e]), 2)

    def test_bad_settings_are_refused(self):
        self.assertRaises(ValueError, Recorder, byteorder="middle")
        self.assertRaises(ValueError, Recorder, max_frame_size=0)
        self.assertRaises(ValueError, Recorder, max_frame_size=ABSOLUTE_MAX_FRAME_SIZE + 1)


class EnvelopeTests(SynchronousTestCase):
    def test_parses_a_query(self):
        message = env.Envelope.from_json(
            {"header": {"type": "cti.query", "name": "session.query.init", "target": "alice", "requestId": "r1"}, "body": {"name": "alice"}}
        )
        self.assertEqual(message.type, env.MessageType.QUERY)
        self.assertEqual((message.name, message.target, message.request_id), ("session.query.init", "alice", "r1"))
        self.assertEqual(message.body, {"name": "alice"})

    def test_round_trips_through_json(self):
        original = env.failure(env.request("conversation.request.hold", "a.b.c.d.e"), "no such call")
        self.assertEqual(env.Envelope.from_json(json.loads(json.dumps(original.to_json()))), original)

    def test_event_without_body_has_an_empty_body(self):
        message = env.Envelope.from_json({"header": {"type": "cti.event", "name": "conversation.talking", "target": "t"}})
        self.assertEqual(message.body, {})
        self.assertIsNone(message.request_id)

    def assertInvalid(self, obj, expected):
        with self.assertRaises(env.EnvelopeError) as raised:
            env.Envelope.from_json(obj)
        self.assertIn(expected, str(raised.exception))

    def test_validation_errors_are_readable(self):
        header = {"type": "cti.request", "name": "conversation.request.hold", "target": "t", "requestId": "r"}
        cases = [
            ([], "message is a list"),
            ({"body": {}}, "no header"),
            ({"header": "x"}, "header is a str"),
            ({"header": dict(header, type="cti.gossip")}, "'cti.gossip' is not one of cti.query, cti.request"),
            ({"header": {k: v for k, v in header.items() if k != "name"}}, "header.name is missing"),
            ({"header": dict(header, target="")}, "header.target is missing"),
            ({"header": dict(header, name=7)}, "header.name is a int"),
            ({"header": {k: v for k, v in header.items() if k != "requestId"}}, "has no requestId"),
            ({"header": dict(header, type="cti.query", requestId=None)}, "has no requestId"),
            ({"header": header, "body": [1]}, "body is a list, not an object"),
            ({"header": dict(header, type="cti.response")}, "has no result"),
            ({"header": dict(header, type="cti.response", result="MAYBE")}, "'MAYBE' is not one of SUCCESS, FAILURE"),
        ]
        for obj, expected in cases:
            self.assertInvalid(obj, expected)

    def test_query_and_request_get_guid_request_ids(self):
        first, second = env.query("channel.query.init", "t"), env.request("channel.request.dial", "t", {"destination": "1"})
        self.assertEqual(str(uuid.UUID(first.request_id)), first.request_id)
        self.assertNotEqual(first.request_id, second.request_id)
        self.assertEqual(second.body, {"destination": "1"})

    def test_response_repeats_name_target_and_request_id(self):
        original = env.query("conversation.query.init", "a.b.c.d.e")
        answer = env.success(original, {"conversation-state": "RINGING"})
        self.assertEqual(
            answer.to_json(),
            {
                "header": {
                    "type": "cti.response",
                    "name": "conversation.query.init",
                    "target": "a.b.c.d.e",
                    "requestId": original.request_id,
                    "result": "SUCCESS",
                },
                "body": {"conversation-state": "RINGING"},
            },
        )
        self.assertTrue(answer.ok)
        refused = env.failure(original, "unknown call")
        self.assertFalse(refused.ok)
        self.assertEqual(refused.to_json()["header"]["errorMessage"], "unknown call")

    def test_event_has_no_request_id(self):
        self.assertEqual(
            env.event("conversation.held", "t").to_json(),
            {"header": {"type": "cti.event", "name": "conversation.held", "target": "t"}, "body": {}},
        )

    def test_only_queries_and_requests_are_answered(self):
        self.assertRaises(ValueError, env.success, env.event("conversation.held", "t"))


class NamesTests(SynchronousTestCase):
    def test_defaults_follow_the_key_pattern(self):
        names = CtiNames()
        self.assertEqual(names.control_query_status, "control.query.status")
        self.assertEqual(names.channel_interaction, "channel.interaction")
        self.assertEqual(names.session_request_notready, "session.request.notready")
        self.assertEqual(names.conversation_transfer_failed, "conversation.transfer.failed")
        self.assertEqual(names.statuses, ("STARTED", "STOPPED", "DEGRADED"))

    def test_from_mapping_overrides_and_keeps_defaults(self):
        names = CtiNames.from_mapping({"channel_interaction": "channel.newinteraction", "status_started": "RUNNING"})
        self.assertEqual(names.channel_interaction, "channel.newinteraction")
        self.assertEqual(names.status_started, "RUNNING")
        self.assertEqual(names.conversation_held, "conversation.held")
        self.assertIn("channel.newinteraction", names.events("channel"))

    def test_capability_keys_are_names(self):
        names = CtiNames()
        self.assertEqual(names.capability_channel_groups, "channel-groups-supported")
        self.assertEqual(names.capability("blind_transfer"), "blind-transfer")
        renamed = CtiNames.from_mapping({"capability_channel_groups": "channelGroupsSupported"})
        self.assertEqual(renamed.capability("channel_groups"), "channelGroupsSupported")
        self.assertNotIn("channel-groups-supported", names.events("control"), "a capability is not a message")
        with self.assertRaises(ValueError) as raised:
            CtiNames.from_mapping({"capability_hold": "mute"})
        self.assertIn("each capability name must be distinct; repeated: mute", str(raised.exception))
        # a capability may be spelt like a message or a status value: they are different namespaces
        CtiNames.from_mapping({"capability_hold": "conversation.held", "capability_answer": "STARTED"})

    def test_from_mapping_rejects_unknown_keys(self):
        with self.assertRaises(ValueError) as raised:
            CtiNames.from_mapping({"conversation_hold": "x", "channel_interaction": "y"})
        self.assertIn("unknown key(s) in [cti.names]: conversation_hold", str(raised.exception))

    def test_bad_values_are_rejected(self):
        self.assertRaises(ValueError, CtiNames.from_mapping, {"conversation_held": ""})
        self.assertRaises(ValueError, CtiNames.from_mapping, {"conversation_held": 3})
        with self.assertRaises(ValueError) as raised:
            CtiNames.from_mapping({"conversation_held": "conversation.talking"})
        self.assertIn("repeated: conversation.talking", str(raised.exception))

    def test_lookups(self):
        names = CtiNames()
        self.assertEqual(names.init_query("control"), "control.query.status")
        self.assertEqual(names.init_query("conversation"), "conversation.query.init")
        self.assertIn("conversation.started", names.events("conversation"))
        self.assertNotIn("conversation.request.hold", names.events("conversation"))
        self.assertEqual(names.events("session"), frozenset())
        self.assertEqual(names.required_properties("conversation.request.senddtmf"), ("digits",))
        self.assertEqual(names.required_properties("conversation.held"), ())


class BodyTests(SynchronousTestCase):
    def test_agreed_bodies_round_trip(self):
        names = CtiNames()
        cases = [
            (ControlStatus("DEGRADED", "PSTN down"), lambda b: ControlStatus.from_body(b, names)),
            (SessionLogin("alice"), SessionLogin.from_body),
            (SessionInit("cg1"), SessionInit.from_body),
            (ChannelGroupInit([Channel("tel", "1001")]), ChannelGroupInit.from_body),
            (ChannelInit("ACTIVATED", ["i1"]), ChannelInit.from_body),
            (InteractionInit("ALERTING", "c1", data={"ani": "555"}), InteractionInit.from_body),
            (ConversationInit("TALKING", [Party("555", "Bob")]), ConversationInit.from_body),
        ]
        for value, parse in cases:
            self.assertEqual(parse(json.loads(json.dumps(value.to_body()))), value)

    def test_documented_shapes(self):
        self.assertEqual(SessionInit("cg1").to_body(), {"channelgroup": {"id": "cg1"}})
        self.assertEqual(
            ConversationInit("RINGING", [Party("555"), Party("556", None), Party("557", "Bob")]).to_body(),
            {"conversation-state": "RINGING",
             "parties": [{"number": "555", "name": ""}, {"number": "556", "name": ""}, {"number": "557", "name": "Bob"}]},
        )
        self.assertEqual(
            ChannelGroupInit([Channel("tel", "1001")]).to_body(),
            {"channels": [{"id": "tel", "end-point": "1001", "type": "telephony"}]},
        )
        self.assertEqual(ChannelInit("ACTIVATED").to_body(), {"state": "ACTIVATED", "interactions": []})

    def assertBad(self, parse, body, expected):
        with self.assertRaises(BodyError) as raised:
            parse(body)
        self.assertIn(expected, str(raised.exception))

    def test_bad_bodies_are_explained(self):
        self.assertBad(lambda b: ControlStatus.from_body(b, CtiNames()), {"status": "UP"}, "not one of STARTED")
        self.assertBad(SessionInit.from_body, {"channelgroup": "cg1"}, "'channelgroup' must be an object")
        self.assertBad(ChannelGroupInit.from_body, {}, "'channels' must be an array")
        self.assertBad(ChannelGroupInit.from_body, {"channels": [{"id": "t"}]}, "'end-point'")
        self.assertBad(ChannelInit.from_body, {"state": "ACTIVATED"}, "'interactions'")
        self.assertBad(ConversationInit.from_body, {"conversation-state": "RINGING", "parties": []}, "must not be empty")
        self.assertBad(
            ConversationInit.from_body, {"conversation-state": "RINGING", "parties": [{"number": "1"}]},
            "'name' must be a string (empty when unknown)",
        )
        self.assertBad(ConversationInit.from_body, {"conversation-state": "ON", "parties": [{"number": "1"}]}, "not one of RINGING")
        self.assertBad(InteractionInit.from_body, {"interaction-state": "STARTED"}, "'conversations' must be an object")
        self.assertBad(
            InteractionInit.from_body, {"interaction-state": "DIALING", "conversations": {}}, "no 'primary' in state DIALING"
        )

    def test_primary_is_optional_once_the_interaction_ended(self):
        self.assertEqual(InteractionInit.from_body({"interaction-state": "ENDED", "conversations": {}}), InteractionInit("ENDED"))
