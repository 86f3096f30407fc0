"""The link's promise: every query and request gets exactly one response, whatever the handler does."""

import json

from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway import boundary
from gateway.boundary import budget_factory
from gateway.core.errors import IllegalState
from gateway.cti import envelope as env
from gateway.cti.framing import encode_frame
from gateway.cti.link import BridgeLink, Refusal, Reply


class Handler:
    """Answers with whatever the test put in ``answers`` (name -> value, exception or Deferred)."""

    def __init__(self):
        self.answers = {}
        self.seen = []
        self.observed = []
        self.links = []

    def link_made(self, link):
        self.links.append(("made", link))

    def link_lost(self, link, reason):
        self.links.append(("lost", link))

    def observe(self, direction, message):
        self.observed.append((direction, message.type.value if message else None))

    def handle(self, message):
        self.seen.append(message)
        answer = self.answers.get(message.name)
        if isinstance(answer, Exception):
            raise answer
        return answer


class LinkTests(SynchronousTestCase):
    def setUp(self):
        self.logged = []
        self.patch(boundary, "log", Logger(observer=self.logged.append))
        self.handler = Handler()
        self.transport = StringTransport()
        self.clock = task.Clock()
        self.link = BridgeLink(self.handler, clock=self.clock)
        self.link.makeConnection(self.transport)

    def receive_raw(self, payload):
        """One frame carrying ``payload`` (bytes) exactly as given."""
        self.link.dataReceived(len(payload).to_bytes(4, "big") + payload)

    def raw_sent(self):
        """The headers of the frames written so far, decoded as plain JSON (and forget them)."""
        data, offset, headers = self.transport.value(), 0, []
        while offset < len(data):
            length = int.from_bytes(data[offset : offset + 4], "big")
            headers.append(json.loads(data[offset + 4 : offset + 4 + length].decode("utf-8"))["header"])
            offset += 4 + length
        self.transport.clear()
        return headers

    def ignored_lines(self):
        return [e for e in self.logged if e.get("adapter") == "cti"]

    def receive(self, obj):
        self.link.dataReceived(encode_frame(obj))

    def sent(self):
        """The envelopes written so far (and forget them)."""
        data, offset, messages = self.transport.value(), 0, []
        while offset < len(data):
            length = int.from_bytes(data[offset : offset + 4], "big")
            messages.append(env.Envelope.from_json(json.loads(data[offset + 4 : offset + 4 + length])))
            offset += 4 + length
        self.transport.clear()
        return messages

    def ask(self, name="conversation.request.hold", body=None):
        message = env.request(name, "a.cg.tel.i.primary", body)
        self.receive(message.to_json())
        return message

    def only_response(self, original):
        (response,) = self.sent()
        self.assertEqual(
            (response.type, response.name, response.target, response.request_id),
            (env.MessageType.RESPONSE, original.name, original.target, original.request_id),
        )
        return response

    def test_a_body_is_a_success(self):
        self.handler.answers["conversation.request.hold"] = {"x": 1}
        response = self.only_response(self.ask())
        self.assertEqual((response.ok, response.body), (True, {"x": 1}))

    def test_none_is_an_empty_success(self):
        response = self.only_response(self.ask())
        self.assertEqual((response.ok, response.body), (True, {}))

    def test_after_runs_once_the_response_is_written(self):
        written = []
        self.handler.answers["conversation.request.dispose"] = Reply({}, lambda: written.append(self.transport.value()))
        self.ask("conversation.request.dispose")
        self.assertTrue(written[0], "the response was on the wire when after() ran")
        self.only_response(self.handler.seen[0])

    def test_a_refusal_is_a_failure_with_its_message(self):
        self.handler.answers["conversation.request.hold"] = Refusal("no such thing")
        response = self.only_response(self.ask())
        self.assertEqual((response.ok, response.header.error_message), (False, "no such thing"))

    def test_a_call_error_is_a_failure_with_its_message(self):
        self.handler.answers["conversation.request.hold"] = IllegalState("hold", "RINGING")
        response = self.only_response(self.ask())
        self.assertEqual(response.header.error_message, "cannot hold: the call is RINGING")

    def test_a_bug_is_a_failure_naming_the_error_type_only(self):
        self.handler.answers["conversation.request.hold"] = KeyError("secret detail")
        response = self.only_response(self.ask())
        self.assertEqual(
            response.header.error_message,
            "internal error of the gateway handling conversation.request.hold (KeyError)",
        )
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_a_deferred_answer_is_sent_when_it_fires(self):
        d = defer.Deferred()
        self.handler.answers["conversation.request.senddtmf"] = d
        original = self.ask("conversation.request.senddtmf", {"digits": "1"})
        self.assertEqual(self.sent(), [])
        d.callback(None)
        self.assertTrue(self.only_response(original).ok)

    def test_a_failed_deferred_is_a_failure(self):
        self.handler.answers["conversation.request.transfer"] = defer.fail(Refusal("busy"))
        response = self.only_response(self.ask("conversation.request.transfer"))
        self.assertEqual(response.header.error_message, "busy")

    def test_an_answer_after_the_link_is_lost_is_not_written(self):
        d = defer.Deferred()
        self.handler.answers["conversation.request.senddtmf"] = d
        self.ask("conversation.request.senddtmf")
        self.link.connectionLost(Failure(ConnectionError("gone")))
        d.callback(None)
        self.assertEqual(self.sent(), [])

    def test_a_malformed_request_that_names_itself_is_answered(self):
        header = {"type": "cti.request", "name": "x.request.y", "target": "t", "requestId": "r1"}
        self.receive({"header": header, "body": [1, 2]})
        (response,) = self.sent()
        self.assertEqual(
            (response.name, response.target, response.request_id, response.ok), ("x.request.y", "t", "r1", False)
        )
        self.assertEqual(response.header.error_message, "malformed message: body is a list, not an object")
        self.assertEqual(self.handler.seen, [])

    def test_malformed_messages_without_a_request_id_are_only_logged(self):
        for obj in [{"body": {}}, {"header": {"type": "cti.query", "name": "q", "target": "t"}},
                    {"header": {"type": "cti.query", "name": "q", "target": "t", "requestId": None}},
                    {"header": {"type": "cti.request", "name": "q", "target": "t", "requestId": 7}}]:
            self.receive(obj)
        self.assertEqual(self.sent(), [])
        self.assertEqual(self.handler.observed, [("rejected", None)] * 4)
        self.assertEqual([e["reason"] for e in self.ignored_lines()], ["malformed"] * 4)
        self.assertIn("no requestId to answer", self.ignored_lines()[-1]["detail"])

    # -- issue 12: a requestId is always answered, echoing what it can ----------------------------

    def test_a_request_with_a_request_id_but_a_bad_header_is_answered_echoing_what_it_can(self):
        full = {"type": "cti.request", "name": "conversation.request.hold", "target": "t", "requestId": "r1"}
        cases = [
            ({k: v for k, v in full.items() if k != "target"}, {"name": "conversation.request.hold"}, "target"),
            (dict(full, target=""), {"name": "conversation.request.hold"}, "header.target is missing"),
            ({k: v for k, v in full.items() if k != "name"}, {"target": "t"}, "header.name is missing"),
            (dict(full, name=["x"]), {"target": "t"}, "header.name is a list"),
            (dict(full, target={"a": 1}), {"name": "conversation.request.hold"}, "header.target is a dict"),
            ({k: v for k, v in full.items() if k != "type"}, {"name": "conversation.request.hold", "target": "t"},
             "header.type None is not one of"),
            (dict(full, type="cti.gossip"), {"name": "conversation.request.hold", "target": "t"}, "'cti.gossip'"),
            (dict(full, type=3), {"name": "conversation.request.hold", "target": "t"}, "header.type 3"),
            ({"requestId": "r1"}, {}, "header.type None"),
        ]
        for header, echoed, problem in cases:
            with self.subTest(header=header):
                self.receive({"header": header, "body": {}})
                (response,) = self.raw_sent()
                # 004 makes name and target part of every response header: "" when the request had none
                expected = {"type": "cti.response", "requestId": "r1", "result": "FAILURE", "name": "", "target": "",
                            **echoed}
                self.assertEqual({k: v for k, v in response.items() if k != "errorMessage"}, expected)
                self.assertIn("malformed message", response["errorMessage"])
                self.assertIn(problem, response["errorMessage"])
        self.assertEqual(self.handler.seen, [])
        # events and responses are never answered, even with a requestId
        self.receive({"header": {"type": "cti.event", "name": "x.y", "requestId": "r1"}})
        self.receive({"header": {"type": "cti.response", "name": "x.y", "target": "t", "requestId": "r2"}})
        self.assertEqual(self.raw_sent(), [])

    # -- the boundary: every frame through load_json --------------------------------------------

    def test_a_lone_surrogate_in_the_target_is_answered_with_failure(self):
        self.receive_raw(b'{"header":{"type":"cti.request","name":"conversation.request.hold",'
                         b'"target":"a.cg.tel.\\ud800.primary","requestId":"r-1"},"body":{}}')
        (response,) = self.raw_sent()
        self.assertEqual(response["requestId"], "r-1")
        self.assertEqual(response["result"], "FAILURE")
        self.assertEqual(response["name"], "conversation.request.hold")
        self.assertEqual(response["target"], "a.cg.tel.\\ud800.primary", "echoed with the surrogate escaped")
        self.assertIn("'header.target'", response["errorMessage"])
        self.assertIn("surrogate", response["errorMessage"])
        self.assertEqual(self.handler.seen, [])
        (line,) = self.ignored_lines()
        self.assertEqual((line["peer"], line["reason"]), ("192.168.1.1:54321", "bad_text"))
        self.assertIn("header.target", line["detail"])

    def test_a_lone_surrogate_in_the_request_id_is_answered_with_the_id_escaped(self):
        self.receive_raw(b'{"header":{"type":"cti.query","name":"conversation.query.init",'
                         b'"target":"t","requestId":"r-\\udfff"}}')
        (response,) = self.raw_sent()
        self.assertEqual(response["requestId"], "r-\\udfff")
        self.assertEqual((response["result"], response["target"]), ("FAILURE", "t"))
        self.assertIn("'header.requestId'", response["errorMessage"])
        # a valid surrogate pair is one character like any other
        self.receive_raw(b'{"header":{"type":"cti.request","name":"conversation.request.hold",'
                         b'"target":"t","requestId":"r-\\ud83d\\ude00"}}')
        (response,) = self.sent()
        self.assertEqual((response.ok, response.request_id), (True, "r-\U0001f600"))

    def test_a_lone_surrogate_in_a_body_property_is_answered_naming_it(self):
        self.receive_raw(b'{"header":{"type":"cti.request","name":"conversation.request.transfer",'
                         b'"target":"t","requestId":"r-2"},"body":{"destination":"55\\ud83d"}}')
        (response,) = self.raw_sent()
        self.assertEqual((response["requestId"], response["result"]), ("r-2", "FAILURE"))
        self.assertIn("'body.destination'", response["errorMessage"])
        self.assertEqual(self.handler.seen, [])

    def test_a_lone_surrogate_in_a_top_level_key_is_answered_naming_the_key(self):
        self.receive_raw(b'{"header":{"type":"cti.request","name":"conversation.request.hold",'
                         b'"target":"t","requestId":"r-3"},"\\ud800":1}')
        (response,) = self.raw_sent()
        self.assertEqual((response["requestId"], response["result"]), ("r-3", "FAILURE"))
        self.assertIn("'\\\\ud800'", response["errorMessage"])
        self.assertIn("a key holds a lone UTF-16 surrogate", response["errorMessage"])
        self.assertEqual(self.handler.seen, [])
        (line,) = self.ignored_lines()
        self.assertEqual(line["reason"], "bad_text")

    def test_frames_that_are_not_json_by_the_policy_are_dropped_and_the_link_goes_on(self):
        hold = b'{"header":{"type":"cti.request","name":"conversation.request.hold","target":"t","requestId":"r"},'
        frames = [
            hold + b'"body":{"x":NaN}}',
            hold + b'"body":{"x":Infinity}}',
            hold + b'"body":{"x":1e999}}',
            hold + b'"body":' + b"[" * 40 + b"]" * 40 + b"}",
            hold + b'"body":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            b"\xff\xfe",
        ]
        for frame in frames:
            self.receive_raw(frame)
        self.assertEqual(self.raw_sent(), [])
        self.assertEqual(self.handler.observed, [("rejected", None)] * len(frames))
        original = self.ask()
        self.assertTrue(self.only_response(original).ok)
        self.assertFalse(self.transport.disconnecting)
        details = [e["detail"] for e in self.ignored_lines()]
        self.assertEqual(len(details), 5, "the first five are logged one by one")
        for detail, problem in zip(details, ["NaN", "Infinity", "out of range", "nested deeper", "nested deeper"]):
            self.assertIn(problem, detail)


    def test_a_link_without_budgets_takes_the_clock_it_is_given(self):
        self.assertRaises(TypeError, BridgeLink, self.handler)
        for i in range(8):
            self.receive(env.event("conversation.held", f"t{i}").to_json())
        self.assertEqual(len(self.ignored_lines()), 5)
        self.clock.advance(61)  # only this clock says a quiet minute has passed
        self.receive(env.event("conversation.held", "t").to_json())
        self.assertEqual([e.get("count") for e in self.ignored_lines()[5:]], [3, None])

    def test_an_ignored_message_is_described_briefly_whatever_its_body(self):
        body = {"pad": "x" * 900_000, "list": list(range(10_000)), "deep": [[[[[["y" * 1000]]]]]]}
        self.receive(env.event("conversation.held", "t", body).to_json())
        (line,) = self.ignored_lines()
        self.assertIn("cti.event conversation.held on t", line["detail"])
        self.assertLessEqual(len(line["detail"]), 300)
        short = env.event("conversation.held", "t", body).describe(limit=300)
        self.assertLessEqual(len(short), 300)
        self.assertIn("'pad': 'xxx", short)

    def test_bad_frames_are_survived(self):
        self.link.dataReceived(b"\x00\x00\x00\x03{{{" + b"\x00\x00\x00\x02\xff\xfe")
        original = self.ask()
        self.assertTrue(self.only_response(original).ok)
        self.assertEqual(self.handler.observed.count(("rejected", None)), 2)

    def test_events_and_responses_from_the_bridge_are_ignored(self):
        self.receive(env.event("conversation.held", "t").to_json())
        self.receive(env.success(env.query("q", "t")).to_json())
        self.assertEqual((self.sent(), self.handler.seen), ([], []))

    def test_the_handler_sees_the_link_come_and_go(self):
        self.link.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.handler.links, [("made", self.link), ("lost", self.link)])


class BudgetTests(SynchronousTestCase):
    """Ignored and refused messages: counted, logged within a per-connection budget, summarised at the end."""

    def setUp(self):
        self.clock = task.Clock()
        self.logged = []
        self.metrics = CollectorRegistry()
        budgets = budget_factory(self.clock, "cti", self.metrics, logger=Logger(observer=self.logged.append))
        self.transport = StringTransport()
        self.link = BridgeLink(Handler(), max_frame_size=1024, budgets=budgets)
        self.link.makeConnection(self.transport)

    def count(self, reason):
        value = self.metrics.get_sample_value(
            "gateway_ignored_messages_total", {"adapter": "cti", "reason": reason}
        )
        return value or 0

    def test_a_flood_of_ignored_messages_is_counted_but_logged_within_the_budget(self):
        for i in range(50):
            self.link.dataReceived(encode_frame(env.event("conversation.held", f"t{i}").to_json()))
        self.link.dataReceived(encode_frame({"header": "nonsense"}))
        self.link.dataReceived(b"\x00\x00\x00\x01{")
        self.link.dataReceived(encode_frame({"padding": "x" * 2000}))
        self.assertEqual((self.count("unknown"), self.count("malformed"), self.count("oversized")), (50, 2, 1))
        self.assertEqual(len(self.logged), 5)
        self.assertTrue(all(e["peer"] == "192.168.1.1:54321" for e in self.logged))
        self.clock.advance(61)
        # after a quiet minute: the 48 unsaid are summarised and the next one is logged by itself
        self.link.dataReceived(encode_frame(env.event("conversation.held", "t").to_json()))
        self.assertEqual(len(self.logged), 7)
        self.assertEqual(self.logged[-2]["count"], 48)
        self.assertEqual(self.logged[-1]["reason"], "unknown")

    def test_a_frame_that_is_not_utf8_is_counted_as_bad_text(self):
        self.link.dataReceived(b"\x00\x00\x00\x02\xff\xfe")
        self.link.dataReceived(b"\x00\x00\x00\x01{")
        self.assertEqual((self.count("bad_text"), self.count("malformed")), (1, 1))
        self.assertEqual([e["reason"] for e in self.logged], ["bad_text", "malformed"])

    def test_the_budget_is_closed_when_the_link_is_lost(self):
        for i in range(7):
            self.link.dataReceived(encode_frame(env.success(env.query("q", "t")).to_json()))
        self.assertEqual(len(self.logged), 5)
        self.link.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.logged[-1]["count"], 2, "what was still unsaid is summarised")
