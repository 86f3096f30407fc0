"""The admin API's boundary: every JSON body through gateway.boundary, unknown keys refused, answers always UTF-8.

Driven in memory (treq's StubTreq over the real router) on the call core's
harness (the real registry and simulated network on a task.Clock).
"""

import json

from core.harness import Harness
from treq.testing import StubTreq
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.api import ApiRouter
from gateway.admin.calls import register_calls_api
from gateway.confschema import Secret

TOKEN = "boundary-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "http://admin.test"


class ApiBoundaryTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.router = ApiRouter(Secret(TOKEN))
        register_calls_api(self.router, self.h.registry, self.h.network)
        self.client = StubTreq(self.router)

    def raw(self, method, path, data=None):
        d = self.client.request(method, URL + path, headers=AUTH, data=data)
        self.client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        body.decode("utf-8")  # every answer is valid UTF-8
        return response.code, json.loads(body)

    def call(self, method, path, body=None):
        return self.raw(method, path, None if body is None else json.dumps(body).encode())

    def talking_call(self) -> str:
        code, call = self.call("POST", "/api/calls", {"extension": "1001", "number": "5551234"})
        self.assertEqual(code, 201)
        self.h.advance(3.0)
        return call["call_id"]

    # -- bodies through load_json --------------------------------------------------------------

    def test_sim_inbound_with_a_lone_surrogate_is_a_400_naming_the_field(self):
        code, body = self.raw("POST", "/api/sim/inbound", b'{"caller_id": "\\ud800", "did": "100"}')
        self.assertEqual((code, body["error"], body["field"]), (400, "bad_request", "caller_id"))
        self.assertIn("surrogate", body["message"])
        self.assertEqual(self.h.registry.calls(), [])

    def test_non_finite_numbers_and_deep_json_are_a_400(self):
        call_id = self.talking_call()
        for data in (b'{"digits": "1", "duration_ms": NaN}', b'{"digits": "1", "gap_ms": 1e999}',
                     b'{"digits": "1", "gap_ms": Infinity}', b'{"digits": ' + b"[" * 40 + b"]" * 40 + b"}"):
            code, body = self.raw("POST", f"/api/calls/{call_id}/dtmf", data)
            self.assertEqual((code, body["error"]), (400, "bad_request"), data[:40])
        code, body = self.raw("POST", "/api/calls", b'{"extension": "1001", "number": "1", "attributes": {"k": "\\udfff"}}')
        self.assertEqual((code, body["field"]), (400, "attributes.k"))
        self.assertEqual([c.call_id for c in self.h.registry.calls()], [call_id])

    # -- numbers that reach a timer -----------------------------------------------------------

    def test_hang_up_after_must_be_a_sane_number_of_seconds(self):
        with capturedLogs() as events:
            for data in (b'{"caller_id": "1", "did": "100", "hang_up_after": ' + b"9" * 4000 + b"}",
                         b'{"caller_id": "1", "did": "100", "hang_up_after": 1e308}',
                         b'{"caller_id": "1", "did": "100", "hang_up_after": 86400.5}',
                         b'{"caller_id": "1", "did": "100", "hang_up_after": 0}',
                         b'{"caller_id": "1", "did": "100", "hang_up_after": -1}',
                         b'{"caller_id": "1", "did": "100", "hang_up_after": true}',
                         b'{"caller_id": "1", "did": "100", "hang_up_after": "5"}'):
                code, body = self.raw("POST", "/api/sim/inbound", data)
                self.assertEqual((code, body["error"], body["field"]), (400, "bad_request", "hang_up_after"),
                                 data[-30:])
                self.assertLess(len(body["message"]), 200)
        self.assertEqual(self.h.registry.calls(), [])
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.critical or e.get("log_failure")], [])
        code, call = self.call("POST", "/api/sim/inbound", {"caller_id": "1", "did": "100", "hang_up_after": 86400})
        self.assertEqual(code, 201)

    def test_dtmf_duration_and_gap_are_bounded_naming_the_field(self):
        call_id = self.talking_call()
        for field, value in (("duration_ms", 10**4000), ("duration_ms", 1e308), ("duration_ms", 19), ("gap_ms", -1),
                             ("gap_ms", 1001), ("gap_ms", 2.5), ("duration_ms", "100")):
            data = b'{"digits": "1", "%s": %s}' % (field.encode(), json.dumps(value).encode())
            code, body = self.raw("POST", f"/api/calls/{call_id}/dtmf", data)
            self.assertEqual((code, body["error"], body["field"]), (400, "bad_request", field),
                             (field, str(value)[:20]))
            self.assertLess(len(body["message"]), 200)
        self.assertEqual(self.h.network.party("5551234").digits_received, [])

    # -- unknown keys -------------------------------------------------------------------------

    def test_an_unknown_key_is_a_400_naming_it(self):
        call_id = self.talking_call()
        code, body = self.call("POST", f"/api/calls/{call_id}/dtmf", {"digits": "1", "duration": 500})
        self.assertEqual((code, body["error"], body["field"]), (400, "bad_request", "duration"))
        self.assertIn("unknown key 'duration'", body["message"])
        self.assertIn("duration_ms", body["message"])  # the known keys are listed
        self.assertEqual(self.h.network.party("5551234").digits_received, [])
        for path, payload in [
            ("/api/calls", {"extension": "1001", "number": "1", "priority": 1}),
            (f"/api/calls/{call_id}/transfer", {"destination": "1002", "blind": True}),
            (f"/api/calls/{call_id}/conference", {"destinaton": "1002"}),
            (f"/api/calls/{call_id}/remove_party", {"number": "1", "x": 1}),
            (f"/api/calls/{call_id}/hangup", {"cause": "busy"}),
            ("/api/sim/inbound", {"caller_id": "1", "did": "100", "after": 1}),
        ]:
            code, body = self.call("POST", path, payload)
            self.assertEqual((code, body["error"]), (400, "bad_request"), path)
            self.assertIn("unknown key", body["message"], path)
        self.assertEqual(self.call("GET", f"/api/calls/{call_id}")[1]["state"], "TALKING")

    def test_actions_without_a_body_take_none_or_an_empty_object(self):
        call_id = self.talking_call()
        self.assertEqual(self.raw("POST", f"/api/calls/{call_id}/hold")[1]["state"], "HELD")
        self.assertEqual(self.raw("POST", f"/api/calls/{call_id}/retrieve", b"{}")[1]["state"], "TALKING")
        self.assertEqual(self.raw("POST", f"/api/calls/{call_id}/mute", b"not json")[0], 400)
        self.assertEqual(self.raw("DELETE", f"/api/calls/{call_id}", b'{"force": true}')[0], 400)

    # -- answers are always UTF-8 JSON --------------------------------------------------------

    def test_an_answer_holding_a_lone_surrogate_or_nan_is_sent_escaped_not_a_500(self):
        # As if a surrogate had got past every boundary into what a handler returns: the
        # listing must not fail for every call because of one call's content.
        self.router.route("GET", "/api/odd", lambda r: {"calls": [{"callerId": "\ud800x", "mos": float("nan")}]})
        with capturedLogs() as events:
            code, body = self.call("GET", "/api/odd")
        self.assertEqual((code, body), (200, {"calls": [{"callerId": "\\ud800x", "mos": "NaN"}]}))
        [warning] = [e for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual(warning["field"], "calls[0].callerId")


class StatusEncodingTests(SynchronousTestCase):
    def test_api_status_with_an_adapter_holding_a_lone_surrogate_is_a_200(self):
        from twisted.internet import task

        from admin.test_site import FakeAdapter, make_context
        from gateway.admin.site import make_site

        ctx = make_context(task.Clock(), self.mktemp())
        ctx.status["chat"] = FakeAdapter({"peer": "bad\udc80name", "conversations": 1})
        client = StubTreq(make_site(ctx, Secret(TOKEN)).resource)
        d = client.get(URL + "/api/status", headers=AUTH)
        client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content()).decode("utf-8")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["chat"], {"peer": "bad\\udc80name", "conversations": 1})


class ChatRoutesUnknownKeysTests(SynchronousTestCase):
    """The chat connector's routes take bodies too: the same rule."""

    def test_every_chat_route_with_a_body_refuses_an_unknown_key(self):
        from chat.bench import ConnectorBench, FakeRest
        from twisted.internet import defer, task

        from gateway.chat.admin import Transcripts, add_routes
        from gateway.store import MemoryCdrStore

        clock = task.Clock()
        store = MemoryCdrStore(clock)
        rest = FakeRest()
        bench = ConnectorBench.build(clock, store, rest)
        router = ApiRouter(Secret(TOKEN))
        add_routes(router, bench.connector, store, Transcripts(rest, self.mktemp(), defer.maybeDeferred))
        bench.transport.add_routes(router)
        client = StubTreq(router)
        for path, payload in [
            ("/api/sms/inbound", {"from": "+15550100", "text": "hi", "sender": "x"}),
            ("/api/sms/outbound", {"to": "+15550100", "text": "hi", "from": "x"}),
            ("/api/chat/conversations", {"number": "+15550100", "firstname": "Ann"}),
            ("/api/sms/sim/state", {"down": True, "for": 3}),
        ]:
            d = client.request("POST", URL + path, headers=AUTH, data=json.dumps(payload).encode())
            client.flush()
            response = self.successResultOf(d)
            body = json.loads(self.successResultOf(response.content()))
            self.assertEqual((response.code, body["error"]), (400, "bad_request"), path)
            self.assertIn("unknown key", body["message"], path)
        self.assertFalse(bench.transport.down)
