"""The link's promise: every query and request gets exactly one response, whatever the handler does."""

import json

from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

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
        self.handler = Handler()
        self.transport = StringTransport()
        self.link = BridgeLink(self.handler)
        self.link.makeConnection(self.transport)

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
                    {"header": {"type": "cti.nonsense", "name": "q", "target": "t", "requestId": "r"}}]:
            self.receive(obj)
        self.assertEqual(self.sent(), [])
        self.assertEqual(self.handler.observed, [("rejected", None)] * 3)

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
