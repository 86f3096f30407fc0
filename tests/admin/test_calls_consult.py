"""The consult actions of the calls API (consult, alternate, transfer-to-consult, conference-in-consult),
through the admin router with its token, in memory (treq's StubTreq) over the real registry on the
simulated network."""

import json

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from core.harness import Harness
from gateway.admin.api import ApiRouter
from gateway.admin.calls import register_calls_api
from gateway.confschema import Secret

TOKEN = "consult-api-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "http://admin.test"


class ConsultApiTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        router = ApiRouter(Secret(TOKEN))
        register_calls_api(router, self.h.registry, self.h.network)
        self.client = StubTreq(router)
        code, call = self.call("POST", "/api/calls", {"extension": "1001", "number": "5551234"})
        self.primary = call["call_id"]
        self.h.advance(3.0)
        self.assertEqual(self.h.state(self.primary), "TALKING")

    def call(self, method, path, body=None, headers=AUTH, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        d = self.client.request(method, URL + path, headers=headers, data=data)
        self.client.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(response.content()))

    def consult(self, number="5552222"):
        code, consult = self.call("POST", f"/api/calls/{self.primary}/consult", {"number": number})
        self.assertEqual(code, 201, consult)
        self.h.advance(2.5)
        return consult

    def test_consult_answers_201_with_the_consult_call_linked_to_the_primary(self):
        consult = self.consult()
        self.assertEqual((consult["consult_of"], consult["extension"], consult["number"], consult["state"]),
                         (self.primary, "1001", "5552222", "DIALING"))
        code, primary = self.call("GET", f"/api/calls/{self.primary}")
        self.assertEqual((primary["state"], primary["consult"], primary["consults"]),
                         ("HELD", consult["call_id"], [consult["call_id"]]))
        self.assertEqual(self.call("GET", f"/api/calls/{consult['call_id']}")[1]["state"], "TALKING")
        listed = self.call("GET", "/api/calls?extension=1001")[1]["calls"]
        self.assertEqual([c["call_id"] for c in listed], [self.primary, consult["call_id"]])

    def test_alternate_then_releasing_the_consult_and_retrieving(self):
        consult = self.consult()["call_id"]
        code, after = self.call("POST", f"/api/calls/{consult}/alternate")
        self.assertEqual((code, after["call_id"], after["state"]), (200, consult, "HELD"))
        self.assertEqual(self.h.state(self.primary), "TALKING")
        code, ended = self.call("POST", f"/api/calls/{consult}/hangup")
        self.assertEqual((code, ended["state"], ended["hangup_by"]), (200, "RELEASED", "api"))
        self.assertEqual(self.call("POST", f"/api/calls/{self.primary}/hold")[1]["state"], "HELD")
        self.assertEqual(self.call("POST", f"/api/calls/{self.primary}/retrieve")[1]["state"], "TALKING")
        self.assertEqual(self.h.cdrs[-1]["consult_of"], self.primary)

    def test_transfer_to_consult(self):
        consult = self.consult()["call_id"]
        code, primary = self.call("POST", f"/api/calls/{consult}/transfer-to-consult")
        self.assertEqual((code, primary["call_id"], primary["cause"], primary["hangup_by"]),
                         (200, self.primary, "transferred", "api"))
        [new] = self.call("GET", "/api/calls")[1]["calls"]
        self.assertEqual((new["extension"], new["attributes"]["transferred_from"], new["attributes"]["consult_id"]),
                         (None, self.primary, consult))
        self.assertEqual([(c["call_id"], c["cause"]) for c in self.h.cdrs],
                         [(self.primary, "transferred"), (consult, "transferred")])

    def test_conference_in_consult(self):
        consult = self.consult()["call_id"]
        code, primary = self.call("POST", f"/api/calls/{self.primary}/conference-in-consult")
        self.assertEqual((code, primary["state"], primary["consult"]), (200, "TALKING", None))
        self.assertEqual([p["number"] for p in primary["parties"]], ["5551234", "5552222"])
        self.assertEqual(self.call("GET", f"/api/calls/{consult}")[1]["cause"], "conferenced")

    def test_errors_are_json_with_a_fitting_status_and_change_nothing(self):
        base = f"/api/calls/{self.primary}"
        cases = [
            ("consult", {}, 400, "bad_request"),
            ("consult", {"number": 5552222}, 400, "bad_request"),
            ("consult", {"number": "5552222", "extra": 1}, 400, "bad_request"),
            ("consult", {"number": "x y"}, 400, "invalid_argument"),
            ("consult", {"number": "1001"}, 400, "invalid_argument"),  # its own extension
        ]
        for action, body, status, error in cases:
            code, answer = self.call("POST", f"{base}/{action}", body)
            self.assertEqual((code, answer["error"]), (status, error), body)
        for action in ("alternate", "transfer-to-consult", "conference-in-consult"):
            code, answer = self.call("POST", f"{base}/{action}")
            self.assertEqual((code, answer["error"]), (409, "illegal_state"), action)
            self.assertEqual(self.call("POST", f"/api/calls/nope/{action}")[0], 404)
            self.assertEqual(self.call("POST", f"{base}/{action}", raw=b'{"by": "me"}')[0], 400)
        self.assertEqual(self.call("POST", "/api/calls/nope/consult", {"number": "5552222"})[0], 404)
        self.assertEqual((self.h.state(self.primary), len(self.h.registry.calls())), ("TALKING", 1))
        consult = self.consult("5559991")  # the network fails this dial after 0.5 s
        self.assertEqual(self.call("GET", f"/api/calls/{consult['call_id']}")[1]["cause"], "failed")
        self.assertEqual(self.call("GET", base)[1]["state"], "HELD")
        self.assertEqual(self.call("POST", f"{base}/consult", {"number": "5552222"}, headers={})[0], 401)
        self.assertEqual(len(self.h.registry.calls()), 1)

    def test_the_failure_paths_through_the_api(self):
        base = f"/api/calls/{self.primary}"
        # busy and unanswered consults end; the primary stays held and can be retrieved
        for number, cause, wait in (("5550001", "busy", 1.5), ("5558881", "no_answer", 10.5)):
            code, consult = self.call("POST", f"{base}/consult", {"number": number})
            self.h.advance(wait)
            self.assertEqual(self.call("GET", f"/api/calls/{consult['call_id']}")[1]["cause"], cause)
            self.assertEqual(self.call("GET", base)[1]["state"], "HELD")
        self.assertEqual(self.call("POST", f"{base}/retrieve")[1]["state"], "TALKING")
        # the consulted party hangs up
        consult = self.consult()["call_id"]
        self.h.network.party("5552222").hang_up()
        ended = self.call("GET", f"/api/calls/{consult}")[1]
        self.assertEqual((ended["cause"], ended["hangup_by"]), ("remote_hangup", "remote"))
        self.assertEqual(self.call("GET", base)[1]["consult"], None)
        # the primary party hangs up during a consult: the consult goes on, the phone with it
        consult = self.consult("5553333")["call_id"]
        self.h.network.party("5551234").hang_up()
        self.assertEqual(self.call("GET", base)[1]["cause"], "remote_hangup")
        self.assertEqual(self.call("GET", f"/api/calls/{consult}")[1]["state"], "TALKING")
        self.assertEqual(self.h.network.party("1001").state, "talking")
        self.assertEqual(self.call("POST", f"{base}/alternate")[0], 409)
        self.assertEqual(self.call("POST", f"/api/calls/{consult}/hangup")[1]["cause"], "normal")
        self.assertEqual(self.h.network.party("1001").state, "ended")
        self.assertEqual(self.h.registry.calls(), [])
