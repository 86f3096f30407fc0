"""The connector's admin routes through the real ApiRouter (StubTreq): SMS in and out, lists, conversations, transcripts."""

import json
import pathlib

from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.api import ApiRouter
from gateway.chat.admin import Transcripts, add_routes
from gateway.chat.rest import ChatServerUnavailable, TranscriptNotFound
from gateway.confschema import Secret
from gateway.store import MemoryCdrStore

from .bench import ConnectorBench, FakeRest

TOKEN = "admin-token"
NUMBER = "+4915100000001"


class AdminRouteTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.store = MemoryCdrStore(self.clock)
        self.rest = FakeRest()
        self.bench = ConnectorBench.build(self.clock, self.store, self.rest)
        self.directory = pathlib.Path(self.mktemp())
        router = ApiRouter(Secret(TOKEN))
        transcripts = Transcripts(self.rest, self.directory, lambda f, *args: defer.maybeDeferred(f, *args))
        add_routes(router, self.bench.connector, self.store, transcripts)
        self.bench.transport.add_routes(router)
        self.stub = StubTreq(router)

    def start(self, method, path, body=None, token=TOKEN):
        headers = {"Authorization": [f"Bearer {token}"]} if token else {}
        d = self.stub.request(method, "http://gateway" + path, headers=headers, **({"json": body} if body is not None else {}))
        self.stub.flush()
        return d

    def finish(self, d):
        self.stub.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        return response.code, json.loads(content)

    def call(self, method, path, body=None, token=TOKEN):
        return self.finish(self.start(method, path, body, token))

    def test_an_inbound_sms_is_answered_once_stored_and_a_repeat_is_marked_duplicate(self):
        code, reply = self.call("POST", "/api/sms/inbound", {"from": NUMBER, "text": "hello", "id": "prov-1"})
        self.assertEqual(code, 200)
        self.assertEqual((reply["duplicate"], reply["sms"]["status"], reply["sms"]["text"], reply["sms"]["seq"]), (False, "pending", "hello", 1))
        code, reply = self.call("POST", "/api/sms/inbound", {"from": NUMBER, "text": "hello", "id": "prov-1"})
        self.assertEqual((code, reply["duplicate"], reply["sms"]["seq"]), (200, True, 1))

    def test_inbound_needs_the_token_and_a_number_and_a_text(self):
        self.assertEqual(self.call("POST", "/api/sms/inbound", {"from": NUMBER, "text": "x"}, token=None)[0], 401)
        for body in ({"text": "x"}, {"from": NUMBER}, {"from": NUMBER, "text": "x", "id": 7}):
            code, reply = self.call("POST", "/api/sms/inbound", body)
            self.assertEqual((code, reply["error"]), (400, "bad_request"))
        self.assertEqual(self.successResultOf(self.store.list_sms()), [])

    def test_an_sms_with_bad_text_from_a_transport_plugin_is_refused_before_it_is_stored(self):
        # A transport plugin hands inbound SMS to the connector directly, not through the admin API.
        with self.assertRaises(ValueError) as caught:
            self.bench.connector.receive_sms(NUMBER, "broken \ud800 text")
        self.assertEqual(str(caught.exception), "field 'text': holds a lone UTF-16 surrogate")
        self.assertEqual(self.successResultOf(self.store.list_sms()), [])

    def test_an_outbound_sms_is_answered_once_stored_then_sent_by_the_transport(self):
        code, reply = self.call("POST", "/api/sms/outbound", {"to": NUMBER, "text": "Your code is 1234"})
        self.assertEqual(code, 200)
        sms = reply["sms"]
        self.assertEqual((sms["direction"], sms["number"], sms["text"], sms["kind"], sms["status"], sms["seq"]),
                         ("outbound", NUMBER, "Your code is 1234", "operator", "pending", 1))
        [sent] = self.call("GET", "/api/sms/sim/sent")[1]["sent"]
        self.assertEqual((sent["id"], sent["to"], sent["kind"]), (sms["uid"], NUMBER, "operator"))
        code, reply = self.call("GET", "/api/sms?direction=outbound")
        self.assertEqual([(r["uid"], r["status"]) for r in reply["sms"]], [(sms["uid"], "delivered")])

    def test_outbound_needs_the_token_and_a_number_and_a_text(self):
        self.assertEqual(self.call("POST", "/api/sms/outbound", {"to": NUMBER, "text": "x"}, token=None)[0], 401)
        for body in ({"text": "x"}, {"to": NUMBER}, {"to": NUMBER, "text": ""}, {"to": 7, "text": "x"},
                     {"to": NUMBER, "text": "x" * 1601}):
            code, reply = self.call("POST", "/api/sms/outbound", body)
            self.assertEqual((code, reply["error"]), (400, "bad_request"))
        code, reply = self.finish(self.stub.request("POST", "http://gateway/api/sms/outbound", data=b"[1]",
                                                    headers={"Authorization": [f"Bearer {TOKEN}"]}))
        self.assertEqual((code, reply["error"]), (400, "bad_request"))
        self.assertEqual(self.successResultOf(self.store.list_sms()), [])
        self.assertEqual(list(self.bench.transport.sent), [])

    def test_an_sms_or_conversation_for_something_that_is_no_phone_number_is_a_400_naming_the_field(self):
        for path, body, field in (
            ("/api/sms/inbound", {"from": "+1555\n", "text": "x"}, "from"),
            ("/api/sms/outbound", {"to": "\u0000", "text": "x"}, "to"),
            ("/api/sms/outbound", {"to": " +4917000", "text": "x"}, "to"),
            ("/api/chat/conversations", {"number": "+49 170 000"}, "number"),
        ):
            with self.subTest(body=body):
                code, reply = self.call("POST", path, body)
                self.assertEqual(code, 400)
                self.assertIn("not a phone number", reply["message"])
                self.assertIn(f"field {field!r}", reply["message"])
        self.assertEqual(self.successResultOf(self.store.list_sms()), [])
        self.assertEqual(self.rest.bodies, [])

    def test_sms_are_listed_oldest_first_narrowed_by_the_query(self):
        self.bench.connect()
        for text in ("one", "two"):
            self.call("POST", "/api/sms/inbound", {"from": NUMBER, "text": text})
        self.call("POST", "/api/sms/inbound", {"from": "+222", "text": "other"})
        code, reply = self.call("GET", "/api/sms?number=%2B4915100000001&direction=inbound&limit=5")
        self.assertEqual((code, [r["text"] for r in reply["sms"]]), (200, ["one", "two"]))
        code, reply = self.call("GET", "/api/sms?after=2")
        self.assertEqual([r["text"] for r in reply["sms"]], ["other"])
        for query in ("direction=up", "limit=0", "after=x"):
            self.assertEqual(self.call("GET", f"/api/sms?{query}")[0], 400)

    def test_a_conversation_is_opened_listed_and_ended(self):
        self.bench.connect()
        d = self.start("POST", "/api/chat/conversations", {"number": NUMBER, "firstName": "Ann", "lastName": ""})
        self.bench.ack("joinConversation")
        code, reply = self.finish(d)
        self.assertEqual((code, reply["conversation"]["conversationId"], reply["conversation"]["number"]), (200, "c1", NUMBER))
        self.assertEqual(self.rest.bodies[0]["firstName"], "Ann")
        self.assertNotIn("lastName", self.rest.bodies[0])  # empty: left out
        self.assertEqual([c["conversationId"] for c in self.call("GET", "/api/chat/conversations")[1]["conversations"]], ["c1"])

        d = self.start("POST", "/api/chat/conversations/c1/end")
        self.bench.ack("endConversation")
        self.assertEqual(self.finish(d), (200, {"ended": "c1"}))
        self.assertEqual(self.call("GET", "/api/chat/conversations")[1], {"conversations": []})
        self.assertEqual(self.call("POST", "/api/chat/conversations/c1/end")[0], 404)

    def test_conversation_and_transcript_bodies_are_read_strictly(self):
        self.bench.connect()
        self.rest.transcripts["c1"] = b""
        for path, data, field in (
            ("/api/chat/conversations", b'{"number": "+4915100000001", "firstName": 42}', "firstName"),
            ("/api/chat/conversations", b'{"number": "+4915100000001", "email": null}', "email"),
            ("/api/chat/conversations", b'{"number": "+4915100000001", "firstname": "Ann"}', "firstname"),
            ("/api/chat/conversations", b'{"number": "+4915100000001", "comment": "\\ud800"}', "comment"),
            ("/api/chat/conversations", b"number=1", None),
            ("/api/chat/conversations/c1/end", b'{"foo": 1, "reason": "x"}', "foo"),
            ("/api/chat/conversations/c1/end", b'{"reason": "\\ud800"}', "reason"),
            ("/api/chat/conversations/c1/end", b"[1]", None),
            ("/api/chat/transcript/c1/email", b"not json", None),
            ("/api/chat/transcript/c1/email", b'{"to": "a@b.c"}', "to"),
            ("/api/chat/transcript/c1/pdf", b"\xff\xfe", None),
        ):
            with self.subTest(path=path, data=data):
                d = self.stub.request("POST", "http://gateway" + path, headers={"Authorization": [f"Bearer {TOKEN}"]},
                                      data=data)
                code, reply = self.finish(d)
                self.assertEqual((code, reply["error"], reply.get("field")), (400, "bad_request", field))
                if field:
                    self.assertIn(repr(field), reply["message"])
        self.assertEqual(self.rest.bodies, [])  # no conversation was opened

    def test_opening_a_conversation_without_the_chat_server_is_503(self):
        code, reply = self.call("POST", "/api/chat/conversations", {"number": NUMBER})
        self.assertEqual((code, reply["error"]), (503, "chat_server_unavailable"))
        self.bench.connect()
        self.rest.failure = ChatServerUnavailable("POST /api/customer/init failed 3 time(s); last: HTTP 503: busy")
        code, reply = self.call("POST", "/api/chat/conversations", {"number": NUMBER})
        self.assertEqual((code, reply["error"]), (503, "chat_server_unavailable"))
        self.assertIn("last: HTTP 503", reply["message"])
        self.assertEqual(self.call("POST", "/api/chat/conversations", {"number": ""})[0], 400)

    def test_a_pdf_transcript_is_saved_to_a_file(self):
        self.rest.transcripts["c/1"] = b"%PDF-1.4 transcript"
        code, reply = self.call("POST", "/api/chat/transcript/c%2F1/pdf")
        self.assertEqual(code, 200)
        path = pathlib.Path(reply["path"])
        self.assertEqual((path.parent, path.name, reply["bytes"]), (self.directory, "c_1.pdf", 19))
        self.assertEqual(path.read_bytes(), b"%PDF-1.4 transcript")

    def test_an_email_transcript_is_requested(self):
        self.rest.transcripts["c1"] = b""
        self.assertEqual(self.call("POST", "/api/chat/transcript/c1/email"),
                         (200, {"conversationId": "c1", "type": "email", "requested": True}))

    def test_a_transcript_the_server_does_not_have_is_404(self):
        self.rest.transcripts["c1"] = TranscriptNotFound("the chat server has no pdf transcript of conversation c1", 404)
        code, reply = self.call("POST", "/api/chat/transcript/c1/pdf")
        self.assertEqual((code, reply["error"]), (404, "not_found"))
        self.assertEqual(self.call("POST", "/api/chat/transcript/c1/html")[0], 404)

    def test_the_sim_transport_shows_what_it_sent_and_can_be_switched_down(self):
        self.assertEqual(self.call("GET", "/api/sms/sim/sent"), (200, {"sent": []}))
        self.assertEqual(self.call("POST", "/api/sms/sim/state", {"down": True}), (200, {"name": "sim", "sent": 0, "down": True}))
        self.assertTrue(self.bench.transport.down)
        self.assertEqual(self.call("POST", "/api/sms/sim/state", {"down": "yes"})[0], 400)
