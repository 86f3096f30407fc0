"""The admin site's own routes in memory, and one real loopback round trip through the Site."""

import json

import pytest
import pytest_twisted
import treq
from prometheus_client import CONTENT_TYPE_LATEST, Counter
from treq.testing import StubTreq
from twisted.internet import task
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, HTTPConnectionPool

import gateway
from gateway.admin.metrics import make_metrics_registry
from gateway.metrics import define_metric
from gateway.admin.site import make_site
from gateway.config import load
from gateway.confschema import Secret
from gateway.context import Context
from gateway.store import MemoryCdrStore

TOKEN = "s3cret-T0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "http://admin.test"


class FakeAdapter:
    def __init__(self, status):
        self._status = status

    def status(self):
        return self._status


def make_context(reactor, state_dir):
    return Context(
        reactor=reactor,
        config=load(None),
        state_dir=state_dir,
        metrics=make_metrics_registry(),
        store=MemoryCdrStore(reactor),
    )


class SiteTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.ctx = make_context(self.clock, self.mktemp())
        self.site = make_site(self.ctx, Secret(TOKEN))
        self.client = StubTreq(self.site.resource)

    def get(self, path, headers=AUTH):
        d = self.client.get(URL + path, headers=headers)
        self.client.flush()
        response = self.successResultOf(d)
        return response.code, response.headers, self.successResultOf(response.content())

    def get_json(self, path, headers=AUTH):
        code, _, body = self.get(path, headers)
        return code, json.loads(body)

    def add_cdrs(self, *ended):
        for i, ended_at in enumerate(ended):
            self.successResultOf(self.ctx.store.add_cdr({"call_id": f"c{i}", "ended_at": ended_at, "cause": "normal"}))

    def test_the_router_is_ctx_api_and_takes_routes_from_other_rooms(self):
        self.assertIs(self.ctx.api, self.site.resource)
        self.ctx.api.route("GET", "/api/calls", lambda r: {"calls": []})
        self.assertEqual(self.get_json("/api/calls"), (200, {"calls": []}))

    def test_healthz_needs_no_token(self):
        self.assertEqual(self.get_json("/healthz", {}), (200, {"status": "ok"}))

    def test_readyz_lists_what_is_not_ready(self):
        self.assertEqual(self.get_json("/readyz", {}), (200, {"ready": True}))
        self.ctx.readiness.register("admin").set_up()
        self.ctx.readiness.register("patriot")
        link = self.ctx.readiness.register("optimaccs")
        link.set_up()
        link.set_down("connection refused")
        self.assertEqual(
            self.get_json("/readyz", {}),
            (503, {"ready": False, "not_ready": {"patriot": "not started", "optimaccs": "connection refused"}}),
        )

    def test_metrics_are_the_prometheus_text_of_ctx_metrics(self):
        define_metric(self.ctx.metrics, Counter, "test_calls", "Calls in this test.").inc()
        code, headers, body = self.get("/metrics", {})
        self.assertEqual((code, headers.getRawHeaders("content-type")), (200, [CONTENT_TYPE_LATEST]))
        self.assertIn(b"\ngateway_test_calls_total 1.0\n", body)
        self.assertIn(b"python_info{", body)

    def test_status_gathers_every_adapter_with_node_and_version(self):
        self.ctx.status["patriot"] = FakeAdapter({"mode": "server", "clients": 2})
        self.ctx.status["cti"] = FakeAdapter({"link": "up"})
        self.ctx.adapters = {"patriot": "on (bridge off, 1 desktop link)", "cti": "on", "chat": "off (enabled = false)"}
        self.assertEqual(self.get_json("/api/status", {})[0], 401)
        self.assertEqual(
            self.get_json("/api/status"),
            (
                200,
                {
                    "patriot": {"mode": "server", "clients": 2},
                    "cti": {"link": "up"},
                    "adapters": {"patriot": "on (bridge off, 1 desktop link)", "cti": "on", "chat": "off (enabled = false)"},
                    "node": self.ctx.config.gateway.node,
                    "version": gateway.__version__,
                },
            ),
        )

    def test_cdrs_since_and_limit(self):
        self.add_cdrs("2024-05-01T08:00:00Z", "2024-05-01T09:00:00Z", "2024-05-01T10:00:00Z")
        self.assertEqual(self.get_json("/api/cdrs", {})[0], 401)

        def ids(path):
            code, body = self.get_json(path)
            self.assertEqual(code, 200)
            return [c["call_id"] for c in body["cdrs"]]

        self.assertEqual(ids("/api/cdrs"), ["c0", "c1", "c2"])
        self.assertEqual(ids("/api/cdrs?since=2024-05-01T09:00:00Z"), ["c1", "c2"])
        self.assertEqual(ids("/api/cdrs?since=2024-05-01T11:00:00%2B02:00&limit=1"), ["c1"])
        self.assertEqual(ids("/api/cdrs?since=&limit="), ["c0", "c1", "c2"])
        self.assertEqual(ids("/api/cdrs?limit=1000"), ["c0", "c1", "c2"])

    def test_bad_cdr_query_bounds_are_a_400_naming_the_field(self):
        for query, field in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=-5", "limit"),
            ("limit=ten", "limit"),
            ("limit=%C2%B2", "limit"),
            ("since=yesterday", "since"),
            ("since=2024-13-01T00:00:00Z", "since"),
        ]:
            code, body = self.get_json(f"/api/cdrs?{query}")
            self.assertEqual((code, body["error"], body["field"]), (400, "bad_request", field), query)

    def test_one_cdr_by_call_id(self):
        self.add_cdrs("2024-05-01T08:00:00Z")
        expected = {"call_id": "c0", "ended_at": "2024-05-01T08:00:00Z", "cause": "normal", "provider_cdrs": []}
        self.assertEqual(self.get_json("/api/cdrs/c0"), (200, expected))
        code, body = self.get_json("/api/cdrs/nope")
        self.assertEqual((code, body["error"]), (404, "not_found"))


@pytest.fixture
def http_pool():
    from twisted.internet import reactor

    pool = HTTPConnectionPool(reactor, persistent=False)
    yield treq.client.HTTPClient(Agent(reactor, pool=pool))
    pytest_twisted.blockon(pool.closeCachedConnections())


@pytest.fixture
def listening(tmp_path):
    from twisted.internet import reactor

    ctx = make_context(reactor, tmp_path)
    port = reactor.listenTCP(0, make_site(ctx, Secret(TOKEN)), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_over_real_loopback_http(listening, http_pool):
    with capturedLogs() as events:
        health = await http_pool.get(listening + "/healthz")
        assert (health.code, await health.json()) == (200, {"status": "ok"})
        refused = await http_pool.get(listening + "/api/status", headers={"Authorization": "Bearer nope"})
        assert refused.code == 401
        await refused.content()
        status = await http_pool.get(listening + "/api/status", headers=AUTH)
        assert status.code == 200
        assert (await status.json())["version"] == gateway.__version__
    assert TOKEN not in repr(events)
    # no access log: only the refused request is logged, naming the peer
    [refusal] = [e for e in events if not e.get("log_namespace", "").startswith("twisted.web.client")]
    assert (refusal["log_level"], refusal["path"]) == (LogLevel.warn, "/api/status")
    assert refusal["peer"].startswith("127.0.0.1:")
