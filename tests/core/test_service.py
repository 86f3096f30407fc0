"""The call core assembled from a configuration: drivers from plugins, API, metrics, start and stop."""

import json
import pathlib

from prometheus_client import generate_latest
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.api import ApiRouter
from gateway.admin.metrics import make_metrics_registry
from gateway.config import ConfigError, loads
from gateway.confschema import Secret
from gateway.context import Context
from gateway.callservice import make_service
from gateway.drivers.sim import run_clock
from gateway.store import MemoryCdrStore

BASE = """
[gateway]
node = "core-test"
shutdown_grace = 2.0

[pbx.sim]
phone_answer_delay = 1.0
ring_time = 2.0
audio = "silence"

[[extensions]]
id = "1001"
device = "sim"

[[routes]]
did = "100"
to = "extension:1001"
"""


class ServiceTests(SynchronousTestCase):
    def context(self, extra=""):
        reactor = MemoryReactorClock()
        ctx = Context(reactor=reactor, config=loads(BASE + extra, "test"),
                      state_dir=pathlib.Path(self.mktemp()), metrics=make_metrics_registry())
        ctx.store = MemoryCdrStore(reactor)
        ctx.api = ApiRouter(Secret("t"))
        return ctx

    def advance(self, ctx, seconds):
        run_clock(ctx.reactor, seconds)

    def test_assembly_start_a_call_and_stop(self):
        ctx = self.context()
        svc = make_service(ctx)
        self.assertIs(ctx.status["calls"], ctx.registry)
        svc.startService()
        client = StubTreq(ctx.api)
        d = client.post("http://admin/api/calls", json.dumps({"extension": "1001", "number": "5551234"}).encode(),
                        headers={"Authorization": "Bearer t"})
        client.flush()
        self.assertEqual(self.successResultOf(d).code, 201)
        self.advance(ctx, 3.0)
        [call] = ctx.registry.calls()
        self.assertEqual(call.state, "TALKING")
        text = generate_latest(ctx.metrics).decode()
        self.assertIn('gateway_calls{state="TALKING"} 1.0', text)
        self.assertIn('gateway_legs{state="TALKING"} 2.0', text)
        self.assertIn('gateway_call_commands_total{command="originate",result="ok"} 1.0', text)
        stopped = svc.stopService()
        self.assertNoResult(stopped)
        self.advance(ctx, 2.0)
        self.successResultOf(stopped)
        cdr = self.successResultOf(ctx.store.cdr(call.call_id))
        self.assertEqual((cdr["cause"], cdr["node"]), ("shutdown", "core-test"))
        text = generate_latest(ctx.metrics).decode()
        self.assertIn('gateway_calls_ended_total{cause="shutdown"} 1.0', text)
        self.assertIn('gateway_call_duration_seconds_count{direction="outbound"} 1.0', text)
        self.assertEqual([c for c in ctx.reactor.getDelayedCalls() if c.active()], [])

    def test_the_demo_generator_places_inbound_calls(self):
        demo = 'audio = "silence"\ninbound_every = 10.0\ninbound_did = "100"\ninbound_duration = 5.0'
        ctx = self.context()
        ctx.config = loads(BASE.replace('audio = "silence"', demo), "test")
        svc = make_service(ctx)
        svc.startService()
        self.advance(ctx, 10.0)
        [call] = ctx.registry.calls()
        self.assertEqual((call.direction, call.caller, call.extension), ("inbound", "5550100", "1001"))
        self.advance(ctx, 6.0)
        self.assertEqual(ctx.registry.call(call.call_id).cause, "remote_hangup")
        self.successResultOf(svc.stopService())

    def test_an_unknown_driver_names_the_key(self):
        ctx = self.context('\n[[extensions]]\nid = "1002"\ndevice = "carrier-pigeon:coop"\n')
        error = self.assertRaises(ConfigError, make_service, ctx)
        self.assertEqual(error.path, "extensions[1].device")
        self.assertIn("no driver plugin named 'carrier-pigeon' (known: optimaccs, sim, sip)", str(error))

    def test_a_route_to_an_unknown_app_is_refused(self):
        ctx = self.context('\n[[routes]]\ndid = "200"\nto = "app:karaoke"\n')
        error = self.assertRaises(ConfigError, make_service, ctx)
        self.assertEqual(error.path, "routes[1].to")
