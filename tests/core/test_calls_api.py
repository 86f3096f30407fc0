"""The calls API, through the admin router with its token, in memory (treq's StubTreq), on a task.Clock."""

import json

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.api import ApiRouter
from gateway.admin.calls import register_calls_api
from gateway.confschema import Secret

from .harness import Harness

TOKEN = "calls-api-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "http://admin.test"


class CallsApiTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        router = ApiRouter(Secret(TOKEN))
        register_calls_api(router, self.h.registry, self.h.network)
        self.client = StubTreq(router)

    def send(self, method, path, body=None, headers=AUTH):
        """The pending response Deferred of a request."""
        data = json.dumps(body).encode() if body is not None else None
        d = self.client.request(method, URL + path, headers=headers, data=data)
        self.client.flush()
        return d

    def answer(self, d):
        self.client.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(response.content()))

    def call(self, method, path, body=None, headers=AUTH):
        return self.answer(self.send(method, path, body, headers))

    def originate(self):
        code, call = self.call("POST", "/api/calls", {"extension": "1001", "number": "5551234"})
        self.assertEqual(code, 201)
        return call

    def test_the_token_is_required(self):
        self.assertEqual(self.call("GET", "/api/calls", headers={})[0], 401)
        self.assertEqual(self.call("POST", "/api/calls", {"extension": "1001", "number": "1"},
                                   headers={"Authorization": "Bearer nope"})[0], 401)
        self.assertEqual(self.h.registry.calls(), [])

    def test_click_to_dial_goes_dialing_then_talking_and_ends_cleanly(self):
        call = self.originate()
        self.assertEqual((call["state"], call["extension"], call["number"]), ("DIALING", "1001", "5551234"))
        self.h.advance(3.0)
        code, call = self.call("GET", f"/api/calls/{call['call_id']}")
        self.assertEqual((code, call["state"]), (200, "TALKING"))
        self.assertEqual([(p["number"], p["state"]) for p in call["parties"]], [("5551234", "TALKING")])
        self.assertEqual([leg["role"] for leg in call["legs"]], ["device", "party"])
        self.assertEqual((call["answered_at"], call["duration"]), ("1970-01-01T00:00:03.000Z", 3.0))
        code, listed = self.call("GET", "/api/calls")
        self.assertEqual([c["call_id"] for c in listed["calls"]], [call["call_id"]])
        code, ended = self.call("POST", f"/api/calls/{call['call_id']}/hangup")
        self.assertEqual((code, ended["state"], ended["cause"], ended["hangup_by"]), (200, "RELEASED", "normal", "api"))
        self.assertEqual(self.call("GET", "/api/calls")[1], {"calls": []})
        self.assertEqual([c["call_id"] for c in self.call("GET", "/api/calls?extension=1001")[1]["calls"]],
                         [call["call_id"]])
        self.assertEqual(len(self.h.cdrs), 1)

    def test_actions(self):
        call_id = self.originate()["call_id"]
        self.h.advance(3.0)
        base = f"/api/calls/{call_id}"
        self.assertEqual(self.call("POST", f"{base}/hold")[1]["state"], "HELD")
        self.assertEqual(self.call("POST", f"{base}/retrieve")[1]["state"], "TALKING")
        self.assertTrue(self.call("POST", f"{base}/mute")[1]["muted"])
        self.assertFalse(self.call("POST", f"{base}/unmute")[1]["muted"])
        pending = self.send("POST", f"{base}/dtmf", {"digits": "12", "duration_ms": 100, "gap_ms": 50})
        self.assertNoResult(pending)
        self.h.advance(0.2501)
        code, after = self.answer(pending)
        self.assertEqual((code, after["dtmf_count"]), (200, 2))
        self.assertEqual(self.h.network.party("5551234").digits_received, ["1", "2"])
        code, conf = self.call("POST", f"{base}/conference", {"destination": "5553333"})
        self.assertEqual(code, 200)
        self.h.advance(2.0)
        self.assertEqual([p["number"] for p in self.call("GET", base)[1]["parties"]], ["5551234", "5553333"])
        code, after = self.call("POST", f"{base}/remove_party", {"number": "5553333"})
        self.assertEqual([p["number"] for p in after["parties"]], ["5551234"])
        self.assertEqual(self.call("POST", f"{base}/transfer", {"destination": "1002"})[0], 200)
        self.h.advance(2.0)
        self.assertEqual(self.call("GET", base)[1]["cause"], "transferred")
        self.assertEqual(self.call("GET", "/api/calls?extension=1002")[1]["calls"][0]["state"], "TALKING")

    def test_inbound_through_the_simulated_network_answer_and_reject(self):
        code, call = self.call("POST", "/api/sim/inbound", {"caller_id": "0811222333", "did": "103"})
        self.assertEqual((code, call["state"], call["extension"], call["caller"]),
                         (201, "RINGING", "1003", "0811222333"))
        code, answered = self.call("POST", f"/api/calls/{call['call_id']}/answer")
        self.assertEqual((code, answered["state"]), (200, "TALKING"))
        code, call = self.call("POST", "/api/sim/inbound", {"caller_id": "0811222333", "did": "100"})
        code, rejected = self.call("POST", f"/api/calls/{call['call_id']}/reject")
        self.assertEqual((code, rejected["cause"]), (200, "rejected"))

    def test_simulated_caller_hangs_up_after_being_answered(self):
        code, call = self.call("POST", "/api/sim/inbound", {"caller_id": "0811222333", "did": "103",
                                                            "hang_up_after": 2})
        self.call("POST", f"/api/calls/{call['call_id']}/answer")
        self.h.advance(1.9)
        self.assertEqual(self.call("GET", f"/api/calls/{call['call_id']}")[1]["state"], "TALKING")
        self.h.advance(0.2)
        released = self.call("GET", f"/api/calls/{call['call_id']}")[1]
        self.assertEqual((released["state"], released["cause"]), ("RELEASED", "remote_hangup"))
        code, body = self.call("POST", "/api/sim/inbound", {"caller_id": "1", "did": "103", "hang_up_after": "soon"})
        self.assertEqual((code, body["error"]), (400, "bad_request"))

    def test_errors_are_json_with_a_fitting_status(self):
        cases = [
            ("GET", "/api/calls/nope", None, 404, "unknown_call"),
            ("POST", "/api/calls/nope/hold", None, 404, "unknown_call"),
            ("POST", "/api/calls", {"extension": "9999", "number": "1"}, 404, "unknown_extension"),
            ("POST", "/api/calls", {"extension": "1001"}, 400, "bad_request"),
            ("POST", "/api/calls", {"extension": "1001", "number": "x y"}, 400, "invalid_argument"),
            ("POST", "/api/sim/inbound", {"did": "100"}, 400, "bad_request"),
        ]
        for method, path, body, status, code in cases:
            answer = self.call(method, path, body)
            self.assertEqual((answer[0], answer[1]["error"]), (status, code), path)
        call_id = self.originate()["call_id"]
        base = f"/api/calls/{call_id}"
        code, body = self.call("POST", f"{base}/hold")
        self.assertEqual((code, body), (409, {"error": "illegal_state", "message": "cannot hold: the call is DIALING"}))
        self.assertEqual(self.call("POST", "/api/calls", {"extension": "1001", "number": "5"})[0], 409)
        self.h.advance(3.0)
        for action, body, status in (("transfer", {}, 400), ("dtmf", {"digits": "1x"}, 400),
                                     ("dtmf", {"digits": "1", "duration_ms": "long"}, 400),
                                     ("remove_party", {"number": "000"}, 404), ("explode", None, 404)):
            self.assertEqual(self.call("POST", f"{base}/{action}", body)[0], status, action)
        self.assertEqual(self.call("GET", base)[1]["state"], "TALKING")

    def test_delete_forgets_a_call(self):
        call_id = self.originate()["call_id"]
        self.assertEqual(self.call("DELETE", f"/api/calls/{call_id}"), (200, {"call_id": call_id, "disposed": True}))
        self.assertEqual(self.call("GET", f"/api/calls/{call_id}")[0], 404)
        self.assertEqual(self.h.cdrs[0]["cause"], "normal")

    def test_a_trailing_newline_is_refused_before_anything_is_dialled_or_sent(self):
        """Python's ``$`` matches before a final newline: "5550100\\n" and "1\\n" are 400s, with no call
        made, no party dialled and no digit sent (the core checks the whole value first)."""
        for number in ("5550100\n", "5550100\r\n", " 5550100", "5550100\x00"):
            code, body = self.call("POST", "/api/calls", {"extension": "1001", "number": number})
            self.assertEqual((code, body["error"]), (400, "invalid_argument"), repr(number))
        self.assertEqual((self.h.registry.calls(), self.h.cdrs), ([], []))
        call_id = self.originate()["call_id"]
        self.h.advance(3.0)
        base = f"/api/calls/{call_id}"
        for action, body in (("conference", {"destination": "5553333\n"}), ("transfer", {"destination": "1002\n"}),
                             ("transfer", {"destination": "5553333\r\n"}), ("dtmf", {"digits": "1\n"}),
                             ("dtmf", {"digits": "12\r\n"})):
            code, answer = self.call("POST", f"{base}/{action}", body)
            self.assertEqual((code, answer["error"]), (400, "invalid_argument"), (action, body))
            self.h.advance(1.0)
        call = self.call("GET", base)[1]
        self.assertEqual((call["state"], [p["number"] for p in call["parties"]], call["dtmf_count"]),
                         ("TALKING", ["5551234"], 0))
        self.assertEqual(self.h.network.party("5551234").digits_received, [])
        self.assertEqual([c["call_id"] for c in self.call("GET", "/api/calls")[1]["calls"]], [call_id])
