"""The call core's policies, the same for every adapter: cancelling an unanswered call, and what a
dial does while the extension is busy (issue 13, item 5)."""

import json

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.api import ApiRouter
from gateway.admin.calls import register_calls_api
from gateway.confschema import Secret
from gateway.core import events as ev
from gateway.core.errors import ExtensionBusy, IllegalState, InvalidArgument

from .harness import Harness

TOKEN = "policies-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class CancelTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.registry = self.h.registry

    def test_cancelling_a_call_still_dialling_out_hangs_it_up(self):
        call_id = self.successResultOf(self.registry.originate("1003", "5551234")).call_id  # 1003 rings
        self.assertEqual(self.h.state(call_id), "DIALING")
        snapshot = self.successResultOf(self.registry.cancel(call_id, by="desktop"))
        self.assertEqual((snapshot.state, snapshot.cause, snapshot.hangup_by), ("RELEASED", "normal", "desktop"))
        self.assertEqual(self.h.network.party("1003").state, "ended")
        self.assertEqual([c["cause"] for c in self.h.cdrs], ["normal"])
        self.assertEqual(self.h.commands[-1], ("cancel", "ok"))

    def test_cancelling_an_alerting_call_rejects_it(self):
        self.h.network.place_inbound("5551234", "103")
        call_id = self.registry.active_call_for("1003").call_id
        snapshot = self.successResultOf(self.registry.cancel(call_id))
        self.assertEqual((snapshot.state, snapshot.cause, snapshot.hangup_by), ("RELEASED", "rejected", "api"))

    def test_a_call_once_answered_cannot_be_cancelled(self):
        call_id = self.h.talking_call()
        error = self.failureResultOf(self.registry.cancel(call_id), IllegalState).value
        self.assertEqual(str(error), "cannot cancel: the call is TALKING")
        self.successResultOf(self.registry.hangup(call_id))
        self.failureResultOf(self.registry.cancel(call_id), IllegalState)


class IfBusyTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.registry = self.h.registry
        self.first = self.h.talking_call("1001", "5551234")

    def test_refuse_is_the_default(self):
        self.failureResultOf(self.registry.originate("1001", "5552222", if_busy="refuse"), ExtensionBusy)
        self.failureResultOf(self.registry.originate("1001", "5552222"), ExtensionBusy)
        self.assertEqual(self.h.state(self.first), "TALKING")

    def test_replace_ends_the_extensions_call_then_dials(self):
        second = self.successResultOf(self.registry.originate("1001", "5552222", if_busy="replace", by="desktop"))
        first = self.registry.call(self.first)
        self.assertEqual((first.state, first.cause, first.hangup_by), ("RELEASED", "normal", "desktop"))
        self.assertEqual((second.state, second.number), ("DIALING", "5552222"))
        types = [(e.type, e.call_id) for e in self.h.events if isinstance(e, (ev.CallEnded, ev.CallCreated))]
        self.assertEqual(types[-2:], [("CallEnded", self.first), ("CallCreated", second.call_id)])

    def test_replace_may_dial_the_party_of_the_call_it_replaces(self):
        self.successResultOf(self.registry.hangup(self.first))
        to_bob = self.successResultOf(self.registry.originate("1001", "1002")).call_id
        self.h.advance(5.0)
        self.assertEqual(self.h.state(to_bob), "TALKING")
        call_id = self.successResultOf(self.registry.originate("1001", "1002", if_busy="replace")).call_id
        self.assertEqual(self.h.state(to_bob), "RELEASED")
        self.assertEqual(self.h.state(call_id), "DIALING")

    def test_replace_keeps_the_call_when_the_dial_would_be_refused_anyway(self):
        other = self.h.talking_call("1002", "5553333")
        self.failureResultOf(self.registry.originate("1001", "1002", if_busy="replace"), ExtensionBusy)
        self.failureResultOf(self.registry.originate("1001", "nonsense", if_busy="replace"), InvalidArgument)
        self.assertEqual((self.h.state(self.first), self.h.state(other)), ("TALKING", "TALKING"))

    def test_anything_else_is_an_invalid_argument(self):
        error = self.failureResultOf(self.registry.originate("1001", "5552222", if_busy="queue"), InvalidArgument)
        self.assertEqual(str(error.value), "if_busy must be one of refuse, replace, not 'queue'")
        self.assertEqual(self.h.state(self.first), "TALKING")


class AdminApiTests(SynchronousTestCase):
    """The admin API has both policies, as the desktops do."""

    def setUp(self):
        self.h = Harness()
        router = ApiRouter(Secret(TOKEN))
        register_calls_api(router, self.h.registry, self.h.network)
        self.client = StubTreq(router)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        d = self.client.request(method, "http://admin.test" + path, headers=AUTH, data=data)
        self.client.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_cancel_a_call_still_dialling(self):
        code, call = self.call("POST", "/api/calls", {"extension": "1003", "number": "5551234"})
        self.assertEqual((code, call["state"]), (201, "DIALING"))
        code, error = self.call("POST", f"/api/calls/{call['call_id']}/reject")
        self.assertEqual((code, error["error"]), (409, "illegal_state"))  # reject is for alerting calls
        code, cancelled = self.call("POST", f"/api/calls/{call['call_id']}/cancel")
        self.assertEqual((code, cancelled["state"], cancelled["cause"], cancelled["hangup_by"]),
                         (200, "RELEASED", "normal", "api"))

    def test_dial_while_busy(self):
        first = self.call("POST", "/api/calls", {"extension": "1001", "number": "5551234"})[1]
        code, error = self.call("POST", "/api/calls", {"extension": "1001", "number": "5552222"})
        self.assertEqual((code, error["error"]), (409, "extension_busy"))
        code, second = self.call("POST", "/api/calls", {"extension": "1001", "number": "5552222", "if_busy": "replace"})
        self.assertEqual((code, second["state"]), (201, "DIALING"))
        self.assertEqual(self.call("GET", f"/api/calls/{first['call_id']}")[1]["cause"], "normal")
        code, error = self.call("POST", "/api/calls", {"extension": "1001", "number": "5553333", "if_busy": 1})
        self.assertEqual((code, error["error"]), (400, "bad_request"))
        code, error = self.call("POST", "/api/calls", {"extension": "1001", "number": "5553333", "if_busy": "later"})
        self.assertEqual((code, error["error"]), (400, "invalid_argument"))
