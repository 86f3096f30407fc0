"""The status page's routes and stream tickets, in memory through the admin site (StubTreq, task.Clock)."""

import json

from treq.testing import StubTreq
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.metrics import make_metrics_registry
from gateway.admin.site import make_site
from gateway.admin.status_page import MAX_TICKETS, STREAM_PATH, TICKET_TTL, Tickets
from gateway.config import load
from gateway.confschema import Secret
from gateway.context import Context
from gateway.store import MemoryCdrStore

TOKEN = "st4tus-T0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "http://admin.test"


class TicketTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.tickets = Tickets(self.clock)

    def test_a_ticket_is_good_once(self):
        ticket = self.tickets.issue()
        self.assertGreaterEqual(len(ticket), 40)
        self.assertTrue(self.tickets.redeem(ticket))
        self.assertFalse(self.tickets.redeem(ticket))

    def test_unknown_and_empty_tickets_are_refused(self):
        self.tickets.issue()
        self.assertFalse(self.tickets.redeem("made-up"))
        self.assertFalse(self.tickets.redeem(""))

    def test_a_ticket_expires(self):
        ticket = self.tickets.issue()
        self.clock.advance(TICKET_TTL)
        self.assertFalse(self.tickets.redeem(ticket))

    def test_tickets_are_different(self):
        self.assertEqual(len({self.tickets.issue() for _ in range(10)}), 10)

    def test_expired_tickets_are_forgotten_and_the_oldest_make_room(self):
        for _ in range(5):
            self.tickets.issue()
        self.clock.advance(TICKET_TTL)
        self.tickets.issue()
        self.assertEqual(len(self.tickets), 1)
        first = self.tickets.issue()
        for _ in range(MAX_TICKETS):
            last = self.tickets.issue()
        self.assertEqual(len(self.tickets), MAX_TICKETS)
        self.assertFalse(self.tickets.redeem(first))
        self.assertTrue(self.tickets.redeem(last))


class PageRoutesTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        ctx = Context(reactor=self.clock, config=load(None), state_dir=self.mktemp(),
                      metrics=make_metrics_registry(), store=MemoryCdrStore(self.clock))
        self.site = make_site(ctx, Secret(TOKEN))
        self.client = StubTreq(self.site.resource)

    def request(self, method, path, headers=None):
        d = self.client.request(method, URL + path, headers=headers or {}, allow_redirects=False)
        self.client.flush()
        response = self.successResultOf(d)
        return response.code, response.headers, self.successResultOf(response.content())

    def test_root_and_status_redirect_to_the_page(self):
        for path in ("/", "/status"):
            code, headers, _ = self.request("GET", path)
            self.assertEqual((code, headers.getRawHeaders("Location")), (302, ["status/"]))

    def test_the_page_needs_no_token_and_locks_itself_down(self):
        code, headers, body = self.request("GET", "/status/")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("Content-Type"), ["text/html; charset=utf-8"])
        self.assertIn(b'<script src="status.js" defer></script>', body)
        policy = headers.getRawHeaders("Content-Security-Policy")[0]
        for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "form-action 'none'"):
            self.assertIn(directive, policy)
        self.assertEqual(headers.getRawHeaders("X-Content-Type-Options"), ["nosniff"])

    def test_the_assets_are_served_with_their_types_and_nothing_else_is(self):
        code, headers, body = self.request("GET", "/status/status.js")
        self.assertEqual((code, headers.getRawHeaders("Content-Type")), (200, ["text/javascript; charset=utf-8"]))
        self.assertIn(b"EventSource", body)
        code, headers, _ = self.request("GET", "/status/status.css")
        self.assertEqual((code, headers.getRawHeaders("Content-Type")), (200, ["text/css; charset=utf-8"]))
        for path in ("/status/status.html", "/status/..%2Fapi.py", "/status/nope.js"):
            self.assertEqual(self.request("GET", path)[0], 404, path)

    def test_the_page_refers_to_no_external_asset(self):
        for name in ("", "status.js", "status.css"):
            body = self.request("GET", f"/status/{name}")[2].decode()
            self.assertNotIn("http://", body, name)
            self.assertNotIn("https://", body, name)
            self.assertNotIn("//cdn", body, name)

    def test_a_ticket_needs_the_token(self):
        self.assertEqual(self.request("POST", "/api/status/ticket")[0], 401)
        self.assertEqual(self.request("POST", "/api/status/ticket", {"Authorization": "Bearer nope"})[0], 401)
        code, _, body = self.request("POST", "/api/status/ticket", AUTH)
        answer = json.loads(body)
        self.assertEqual((code, answer["expires_in"]), (200, TICKET_TTL))
        self.assertIsInstance(answer["ticket"], str)

    def test_a_ticket_request_takes_no_body(self):
        for data, field in ((b'{"foo": 1}', "foo"), (b"[1, 2]", None), (b"\xff\xfe", None), (b"ticket please", None)):
            d = self.client.request("POST", URL + "/api/status/ticket", headers=AUTH, data=data)
            self.client.flush()
            response = self.successResultOf(d)
            answer = json.loads(self.successResultOf(response.content()))
            self.assertEqual((response.code, answer["error"], answer.get("field")), (400, "bad_request", field), data)
            self.assertNotIn("ticket", answer)
        for data in (b"", b"{}"):
            d = self.client.request("POST", URL + "/api/status/ticket", headers=AUTH, data=data)
            self.client.flush()
            self.assertEqual(self.successResultOf(d).code, 200, data)

    def test_the_stream_is_served_beside_the_router(self):
        self.assertEqual(list(self.site.streams), [STREAM_PATH])
        self.assertEqual(self.request("GET", "/status/events")[0], 404)  # the router alone does not know it
