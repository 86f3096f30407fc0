"""The admin API router, driven in memory through treq's StubTreq (real twisted.web requests, no sockets)."""

import json

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived

from gateway.admin.api import ApiError, ApiResponse, ApiRouter
from gateway.confschema import Secret

TOKEN = "s3cret-T0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "http://admin.test"


class CallStateError(Exception):
    """Shaped like the call core's errors: a status and a code on the exception."""

    http_status = 409
    code = "illegal_state"


class DriverRefused(Exception):
    http_status = 502
    code = "driver_refused"


class RouterTests(SynchronousTestCase):
    def setUp(self):
        self.router = ApiRouter(Secret(TOKEN))
        self.client = StubTreq(self.router)

    def request(self, method, path, headers=AUTH, **kwargs):
        """(status, headers, body bytes) of a request that completes without help."""
        d = self.client.request(method, URL + path, headers=headers, **kwargs)
        self.client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response.code, response.headers, body

    def json_request(self, method, path, headers=AUTH, **kwargs):
        code, response_headers, body = self.request(method, path, headers, **kwargs)
        self.assertEqual(response_headers.getRawHeaders("content-type"), ["application/json; charset=utf-8"])
        return code, response_headers, json.loads(body)

    def test_the_token_is_required_on_api_paths(self):
        self.router.route("GET", "/api/thing", lambda r: {"ok": True})
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
            with capturedLogs() as events:
                code, response_headers, body = self.json_request("GET", "/api/thing", headers)
            self.assertEqual(code, 401, headers)
            self.assertEqual(body["error"], "unauthorized")
            self.assertEqual(response_headers.getRawHeaders("www-authenticate"), ['Bearer realm="gateway"'])
            [event] = [e for e in events if e["log_level"] is LogLevel.warn]
            self.assertEqual(event["peer"], "127.0.0.1:31337")
            self.assertNotIn(TOKEN, repr(events))

    def test_the_right_token_gets_through(self):
        self.router.route("GET", "/api/thing", lambda r: {"ok": True})
        self.assertEqual(self.json_request("GET", "/api/thing")[::2], (200, {"ok": True}))
        lowercase = {"Authorization": f"bearer {TOKEN}"}
        self.assertEqual(self.json_request("GET", "/api/thing", lowercase)[0], 200)

    def test_without_the_token_even_unknown_api_paths_say_401(self):
        self.assertEqual(self.json_request("GET", "/api/no/such", {})[0], 401)

    def test_paths_outside_api_need_no_token(self):
        self.router.route("GET", "/healthz", lambda r: {"status": "ok"})
        self.assertEqual(self.json_request("GET", "/healthz", {})[::2], (200, {"status": "ok"}))

    def test_unknown_paths_are_a_json_404(self):
        self.router.route("GET", "/api/thing", lambda r: {})
        for path in ("/api/nothing", "/api/thing/more", "/api/thing/", "/elsewhere", "/"):
            code, _, body = self.json_request("GET", path)
            self.assertEqual((code, body["error"]), (404, "not_found"), path)

    def test_a_known_path_with_a_wrong_method_is_a_json_405_with_allow(self):
        self.router.route("GET", "/api/calls/{id}", lambda r: {})
        self.router.route("DELETE", "/api/calls/{id}", lambda r: {})
        code, headers, body = self.json_request("POST", "/api/calls/c1")
        self.assertEqual((code, body["error"]), (405, "method_not_allowed"))
        self.assertEqual(headers.getRawHeaders("allow"), ["DELETE, GET"])

    def test_parameters_and_query_reach_the_handler_decoded(self):
        seen = []
        self.router.route("POST", "/api/calls/{id}/{action}", lambda r: seen.append(r) or {})
        self.request("POST", "/api/calls/a%2Fb%20c/hold?reason=x%26y&reason=2&empty=&caf%C3%A9=%E2%82%AC")
        [request] = seen
        self.assertEqual((request.method, request.path), ("POST", "/api/calls/a/b c/hold"))
        self.assertEqual(request.params, {"id": "a/b c", "action": "hold"})
        self.assertEqual(request.query, {"reason": "x&y", "empty": "", "café": "€"})

    def test_routes_are_tried_in_the_order_they_were_added(self):
        self.router.route("GET", "/api/calls/active", lambda r: "literal")
        self.router.route("GET", "/api/calls/{id}", lambda r: r.params["id"])
        self.assertEqual(self.json_request("GET", "/api/calls/active")[2], "literal")
        self.assertEqual(self.json_request("GET", "/api/calls/c7")[2], "c7")

    def test_a_request_that_is_not_utf8_is_a_400(self):
        self.router.route("GET", "/api/calls/{id}", lambda r: {})
        self.assertEqual(self.json_request("GET", "/api/calls/%FF")[0], 400)
        self.assertEqual(self.json_request("GET", "/api/calls/c1?q=%FF")[0], 400)

    def test_json_bodies(self):
        self.router.route("POST", "/api/echo", lambda r: r.json())
        body = json.dumps({"digits": "12#", "n": [1, 2]}).encode()
        for content_type in ("application/json", "text/plain"):  # the Content-Type is not held against anyone
            headers = {**AUTH, "Content-Type": content_type}
            self.assertEqual(self.json_request("POST", "/api/echo", headers, data=body)[::2], (200, {"digits": "12#", "n": [1, 2]}))
        for bad in (b"{nope", b"", b"[1, 2]", b'"text"', b"\xff\xfe{", b"[" * 100000):
            code, _, answer = self.json_request("POST", "/api/echo", data=bad)
            self.assertEqual((code, answer["error"]), (400, "bad_request"), bad[:10])

    def test_api_errors_carry_their_status_code_details_and_headers(self):
        def refuse(request):
            raise ApiError(422, "no such digit", code="bad_digit", headers={"X-Hint": "0-9*#"}, digit="x")

        self.router.route("POST", "/api/dtmf", refuse)
        code, headers, body = self.json_request("POST", "/api/dtmf")
        self.assertEqual((code, body), (422, {"error": "bad_digit", "message": "no such digit", "digit": "x"}))
        self.assertEqual(headers.getRawHeaders("x-hint"), ["0-9*#"])

    def test_the_call_cores_errors_render_with_their_own_status(self):
        def hold(request):
            raise CallStateError("call c1 is RINGING: hold needs TALKING")

        self.router.route("POST", "/api/hold", hold)
        code, _, body = self.json_request("POST", "/api/hold")
        self.assertEqual((code, body), (409, {"error": "illegal_state", "message": "call c1 is RINGING: hold needs TALKING"}))

    def test_server_side_typed_errors_are_logged_without_a_traceback(self):
        self.router.route("POST", "/api/dial", lambda r: defer.fail(DriverRefused("trunk busy")))
        with capturedLogs() as events:
            code, _, body = self.json_request("POST", "/api/dial")
        self.assertEqual((code, body["error"]), (502, "driver_refused"))
        [event] = [e for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual((event["peer"], str(event["error"])), ("127.0.0.1:31337", "trunk busy"))

    def test_a_bug_is_a_500_with_an_id_and_the_traceback_only_in_the_log(self):
        self.router.route("GET", "/api/broken", lambda r: 1 / 0)
        with capturedLogs() as events:
            code, _, body = self.request("GET", "/api/broken")
        self.assertEqual(code, 500)
        answer = json.loads(body)
        self.assertEqual(answer["error"], "internal")
        [event] = [e for e in events if "log_failure" in e]
        self.assertEqual(answer["message"], f"internal error, see the log (id {event['error_id']})")
        self.assertNotIn(b"Traceback", body)
        self.assertNotIn(b"ZeroDivision", body)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_a_result_that_is_not_json_is_a_500_too(self):
        self.router.route("GET", "/api/odd", lambda r: {"when": object()})
        code, _, body = self.json_request("GET", "/api/odd")
        self.assertEqual((code, body["error"]), (500, "internal"))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_api_response_sets_status_headers_and_raw_bytes(self):
        self.router.route("POST", "/api/calls", lambda r: ApiResponse(201, {"id": "c9"}, {"Location": "/api/calls/c9"}))
        self.router.route("GET", "/page", lambda r: ApiResponse(200, b"<h1>hi</h1>", {"Content-Type": "text/html"}))
        code, headers, body = self.json_request("POST", "/api/calls")
        self.assertEqual((code, body, headers.getRawHeaders("location")), (201, {"id": "c9"}, ["/api/calls/c9"]))
        code, headers, body = self.request("GET", "/page")
        self.assertEqual((code, body, headers.getRawHeaders("content-type")), (200, b"<h1>hi</h1>", ["text/html"]))

    def test_handlers_may_answer_later(self):
        later, awaited = defer.Deferred(), defer.Deferred()
        self.router.route("GET", "/api/later", lambda r: later)

        async def coroutine(request):
            return {"value": await awaited}

        self.router.route("GET", "/api/coroutine", coroutine)
        first = self.client.get(URL + "/api/later", headers=AUTH)
        second = self.client.get(URL + "/api/coroutine", headers=AUTH)
        self.client.flush()
        self.assertNoResult(first)
        self.assertNoResult(second)
        later.callback(7)
        awaited.callback(7)
        self.client.flush()
        self.assertEqual(self.successResultOf(self.successResultOf(first).json()), 7)
        self.assertEqual(self.successResultOf(self.successResultOf(second).json()), {"value": 7})

    def test_an_answer_for_a_client_that_left_is_dropped_quietly(self):
        later = defer.Deferred()
        self.router.route("GET", "/api/slow", lambda r: later)
        d = self.client.get(URL + "/api/slow", headers=AUTH)
        self.client.flush()
        d.cancel()  # the client gives up and closes the connection
        self.client.flush()
        self.failureResultOf(d, ResponseNeverReceived)
        later.callback({"too": "late"})  # trial fails the test if this logs an error

    def test_routes_are_checked_when_added(self):
        self.router.route("GET", "/api/calls/{id}", lambda r: {})
        for method, pattern in [
            ("get", "/api/calls/{other}"),
            ("GET", "api/calls"),
            ("GET", "/api/calls/{id"),
            ("GET", "/api/{a}/{a}"),
            ("GET", "/api/x{id}"),
        ]:
            with self.assertRaises(ValueError, msg=pattern):
                self.router.route(method, pattern, lambda r: {})

    def test_an_empty_token_is_refused(self):
        with self.assertRaises(ValueError):
            ApiRouter(Secret(""))
