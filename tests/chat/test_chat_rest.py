"""The chat server's REST API through treq (StubTreq, task.Clock): retries of 5xx and silence, clear failures."""

import json

from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gateway.chat.messages import Participant
from gateway.chat.rest import ChatRest, ChatServerError, ChatServerUnavailable, TranscriptNotFound
from gateway.chat.web import HttpClient

INIT_REPLY = {"conversationId": "c1", "participant": {"id": "p1", "name": "Ann"}, "requestId": "r1", "timestamp": "t"}
HANG = object()


class Scripted(Resource):
    """Answers requests in turn from ``replies``: ``(status, body)`` or HANG (never answers)."""

    isLeaf = True

    def __init__(self, *replies):
        super().__init__()
        self.replies = list(replies)
        self.requests = []

    def render(self, request):
        self.requests.append((request.method.decode(), request.path.decode(), request.content.read()))
        reply = self.replies.pop(0)
        if reply is HANG:
            return NOT_DONE_YET
        status, body = reply
        request.setResponseCode(status)
        return body if isinstance(body, bytes) else json.dumps(body).encode()


class ChatRestTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()

    def rest(self, resource, attempts=3):
        self.stub = StubTreq(resource)
        return ChatRest(self.clock, HttpClient(self.clock, self.stub), "http://chat.example:8080/", timeout=5, attempts=attempts,
                        retry_policy=lambda failures: 2.0 ** failures)

    def settle(self, d):
        self.stub.flush()
        return d

    def test_init_posts_the_body_and_gives_the_conversation(self):
        resource = Scripted((200, INIT_REPLY))
        d = self.settle(self.rest(resource).init({"channel": "sms", "phone": "+491"}))
        self.assertEqual(self.successResultOf(d), ("c1", Participant("p1", "Ann")))
        [(method, path, body)] = resource.requests
        self.assertEqual((method, path, json.loads(body)), ("POST", "/api/customer/init", {"channel": "sms", "phone": "+491"}))

    def test_500_and_503_are_retried_with_the_backoff_delays(self):
        resource = Scripted((503, {"error": "busy"}), (500, b"oops"), (200, INIT_REPLY))
        rest = self.rest(resource)
        d = self.settle(rest.init({"channel": "sms"}))
        self.assertEqual(len(resource.requests), 1)
        self.clock.advance(0.99)
        self.assertEqual(len(resource.requests), 1)
        self.clock.advance(0.01)  # 1 s after the first failure
        self.stub.flush()
        self.assertEqual(len(resource.requests), 2)
        self.assertNoResult(d)
        self.clock.advance(2)  # 2 s after the second
        self.stub.flush()
        self.assertEqual(self.successResultOf(d)[0], "c1")

    def test_after_every_attempt_failed_the_failure_says_what_happened_last(self):
        resource = Scripted((503, b"down"), (503, b"down"), (500, b"still broken"))
        d = self.settle(self.rest(resource).init({"channel": "sms"}))
        for _ in range(2):
            self.clock.advance(10)
            self.stub.flush()
        failure = self.failureResultOf(d, ChatServerUnavailable)
        message = str(failure.value)
        self.assertIn("POST http://chat.example:8080/api/customer/init failed 3 time(s)", message)
        self.assertIn("HTTP 500: still broken", message)
        self.assertEqual((failure.value.http_status, failure.value.code), (503, "chat_server_unavailable"))

    def test_an_unanswered_request_times_out_and_is_retried(self):
        resource = Scripted(HANG, (200, INIT_REPLY))
        d = self.settle(self.rest(resource).init({"channel": "sms"}))
        self.clock.advance(5)  # the timeout
        self.assertNoResult(d)
        self.clock.advance(1)  # the backoff
        self.stub.flush()
        self.assertEqual(self.successResultOf(d)[0], "c1")

    def test_silence_on_every_attempt_is_reported_as_such(self):
        d = self.settle(self.rest(Scripted(HANG, HANG), attempts=2).init({}))
        self.clock.pump([5, 1, 5])
        failure = self.failureResultOf(d, ChatServerUnavailable)
        self.assertIn("failed 2 time(s); last: RequestTimedOut: POST http://chat.example:8080/api/customer/init:"
                      " no complete answer within 5 s", str(failure.value))

    def test_other_refusals_fail_at_once(self):
        resource = Scripted((400, {"error": "channel is required"}))
        d = self.settle(self.rest(resource).init({}))
        failure = self.failureResultOf(d, ChatServerError)
        self.assertIn("HTTP 400", str(failure.value))
        self.assertEqual((failure.value.status, failure.value.http_status), (400, 502))
        self.assertEqual(len(resource.requests), 1)

    def test_an_unusable_init_answer_is_a_chat_server_error(self):
        d = self.settle(self.rest(Scripted((200, {"participant": {"id": "p"}}))).init({}))
        self.assertIn("unusable body", str(self.failureResultOf(d, ChatServerError).value))

    def test_an_init_answer_with_a_numeric_conversation_id_is_a_chat_server_error_not_converted(self):
        d = self.settle(self.rest(Scripted((200, {"conversationId": 5, "participant": {"id": "p"}}))).init({}))
        message = str(self.failureResultOf(d, ChatServerError).value)
        self.assertIn("unusable body", message)
        self.assertIn("conversationId is not a string: 5", message)

    def test_an_init_answer_the_boundary_refuses_is_a_chat_server_error_naming_the_problem(self):
        for body, problem in (
            (b'{"conversationId": "c\\ud800", "participant": {"id": "p1", "name": "Ann"}}', "lone UTF-16 surrogate"),
            (b'{"conversationId": "c1", "participant": {"id": "p1", "name": "\\udfff"}}', "participant.name"),
            (b'{"conversationId": "c1", "participant": {"id": "p1", "name": "Ann"}, "timestamp": NaN}', "NaN"),
            (b'{"conversationId": "c1", "participant": {"id": "p1", "name": "Ann"}, "x": 1e999}', "out of range"),
            (b'{"conversationId": "c1", "participant": {"id": "p1"}, "x": ' + b"[" * 50 + b"]" * 50 + b"}", "nested deeper"),
            (b'{"conversationId": "c1", "participant": {"id": "p1"}, "x": ' + b"[" * 100000 + b"}", "nested deeper"),
            (b"\xff\xfe not UTF-8", "not UTF-8"),
        ):
            with self.subTest(problem=problem):
                d = self.settle(self.rest(Scripted((200, body))).init({}))
                message = str(self.failureResultOf(d, ChatServerError).value)
                self.assertIn("unusable body", message)
                self.assertIn(problem, message)

    def test_a_pdf_transcript_comes_back_as_bytes(self):
        resource = Scripted((200, b"%PDF-1.4 ..."))
        d = self.settle(self.rest(resource).transcript("c 1/x", "pdf"))
        self.assertEqual(self.successResultOf(d), b"%PDF-1.4 ...")
        self.assertEqual(resource.requests[0][:2], ("GET", "/api/customer/transcript/c%201%2Fx/pdf"))

    def test_a_transcript_of_an_open_conversation_is_not_found(self):
        d = self.settle(self.rest(Scripted((404, b"still open"))).transcript("c1", "email"))
        failure = self.failureResultOf(d, TranscriptNotFound)
        self.assertIn("not ended yet", str(failure.value))
        self.assertEqual(failure.value.http_status, 404)

    def test_only_pdf_and_email_transcripts_exist(self):
        self.failureResultOf(self.rest(Scripted()).transcript("c1", "html"), ValueError)

    def test_cancelling_a_request_under_way_fails_with_cancelled_and_tries_no_more(self):
        resource = Scripted(HANG, (200, INIT_REPLY))
        d = self.settle(self.rest(resource).init({}))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.clock.advance(10)
        self.stub.flush()
        self.assertEqual(len(resource.requests), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelling_stops_the_retries(self):
        resource = Scripted((503, b"down"), (200, INIT_REPLY))
        d = self.settle(self.rest(resource).init({}))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.clock.advance(10)
        self.assertEqual(len(resource.requests), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
