"""Assembly: the [optimaccs] adapter's service and listener, the driver plugin, and the wire helpers."""

import pathlib

from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import loads
from gateway.confschema import ConfigError
from gateway.context import Context
from gateway.core.interfaces import IDriverFactory
from gateway.drivers import optimaccs_wire as wire
from gateway.drivers.optimaccs import InboundServer, OptimaccsService, make_service
from gateway.drivers.optimaccs_out import OutboundDriver
from gateway.media import MediaPorts
from gateway.pluginload import find_plugin


def context(text: str) -> Context:
    return Context(reactor=MemoryReactorClock(), config=loads(text, "test.toml"), state_dir=pathlib.Path("."),
                   metrics=CollectorRegistry())


class ServiceTests(SynchronousTestCase):
    def test_make_service_asks_for_the_listener_and_shows_its_status(self):
        ctx = context('[optimaccs]\nlisten = "tcp:0:interface=127.0.0.1"\naudio = "alaw"\n')
        svc = make_service(ctx)
        self.assertIsInstance(svc, OptimaccsService)
        (listener,) = ctx.listeners
        self.assertEqual((listener.name, listener.description), ("optimaccs", "tcp:0:interface=127.0.0.1"))
        self.assertIn("listener:optimaccs", ctx.readiness.components)
        self.assertIsInstance(ctx.status["optimaccs"], InboundServer)
        self.assertEqual(ctx.status["optimaccs"].status(), {
            "listen": "tcp:0:interface=127.0.0.1", "max_calls": 200, "audio": "alaw",
            "access": {"secret": False, "allow_from": []}, "connections": []})

    def test_the_driver_plugin_needs_a_token(self):
        factory = find_plugin(IDriverFactory, "optimaccs")
        error = self.assertRaises(ConfigError, factory.build, context('[pbx]\ndriver = "optimaccs"\n'))
        self.assertEqual(error.path, "optimaccs.outbound.token")
        ctx = context('[pbx]\ndriver = "optimaccs"\n[optimaccs]\nenabled = false\n'
                      '[optimaccs.outbound]\ntoken = "t"\napi_url = "http://127.0.0.1:9"\n')
        driver = factory.build(ctx)
        self.assertIsInstance(driver, OutboundDriver)
        self.assertIs(ctx.status["optimaccs-outbound"], driver)
        driver.start()
        self.assertTrue(ctx.readiness.components["optimaccs:api"].up)
        self.successResultOf(driver.stop())

    def test_both_drivers_make_their_ports_through_the_context(self):
        ctx = context('[pbx]\ndriver = "optimaccs"\n[optimaccs]\nlisten = "tcp:0:interface=127.0.0.1"\n'
                      '[optimaccs.outbound]\ntoken = "t"\napi_url = "http://127.0.0.1:9"\n')
        ctx.media_ports = MediaPorts(300, lambda where, count: None)
        make_service(ctx)
        self.assertIs(ctx.status["optimaccs"].ports, ctx.media_ports)
        driver = find_plugin(IDriverFactory, "optimaccs").build(ctx)
        self.assertIs(driver.ports, ctx.media_ports)

    def test_the_shipped_listener_is_loopback_only_with_a_call_cap(self):
        from gateway.config import load
        from gateway.drivers.config import OptimaccsConfig

        for config in (load().optimaccs, OptimaccsConfig()):
            self.assertEqual((str(config.listen), config.max_calls), ("tcp:4143:interface=127.0.0.1", 200))
        ctx = context("[optimaccs]\n")
        make_service(ctx)
        (listener,) = ctx.listeners
        self.assertEqual(listener.description, "tcp:4143:interface=127.0.0.1")

    def test_bad_values_name_their_key(self):
        for text, path in (('allow_from = ["10.0.0.300"]', "optimaccs.allow_from"),
                           ("max_calls = 0", "optimaccs.max_calls"),
                           ('audio = "opus"', "optimaccs.audio"),
                           ('[optimaccs.outbound]\napi_url = "ftp://x"', "optimaccs.outbound.api_url")):
            error = self.assertRaises(ConfigError, loads, f"[optimaccs]\n{text}\n", "test.toml")
            self.assertEqual(error.path, path)


class WireTests(SynchronousTestCase):
    def test_parse_event(self):
        self.assertEqual(wire.parse_event(b'{"event":"hangup","x":1}'), ("hangup", {"event": "hangup", "x": 1}))
        for bad, why in ((b"{", "not JSON"), (b"[]", "not a JSON object but list"), (b'{"event":""}', "event"),
                         (b'{"x":1}', "event")):
            self.assertIn(why, str(self.assertRaises(wire.BadMessage, wire.parse_event, bad)))

    def test_incoming_call_fields(self):
        setup = wire.incoming_call({"callerId": "", "didNumber": " 021 ", "sessionId": "s"})
        self.assertEqual((setup.caller_id, setup.did, setup.session_id), ("", "021", "s"))
        self.assertRaises(wire.BadMessage, wire.incoming_call, {"callerId": "1", "didNumber": "", "sessionId": "s"})

    def test_digits_durations_and_cdrs(self):
        self.assertEqual([wire.keypad_digit(d) for d in ("5", "#", "a", "E", "12", 1, None)],
                         ["5", "#", "A", None, None, None, None])
        self.assertEqual([wire.clamp_duration(ms) for ms in (0, 1, 250, 5000)], [1, 1, 250, 1000])
        self.assertEqual(wire.normalise_cdr({"hangupCauseCode": "17", "source": None}),
                         {"hangupCauseCode": "17", "hangupCauseCodeInt": 17, "source": None})
        self.assertEqual(wire.normalise_cdr({"hangupCauseCode": "busy"}), {"hangupCauseCode": "busy"})
        self.assertEqual(wire.normalise_cdr({"hangupCauseCode": 16}), {"hangupCauseCode": 16, "hangupCauseCodeInt": 16})

    def test_a_garbage_cause_code_is_kept_verbatim_without_an_integer(self):
        for garbage in ("--16", "\u00b2", "9" * 5000, " 16", "16.0", True, 1.5, None, [16], {"code": 16}):
            self.assertEqual(wire.normalise_cdr({"hangupCauseCode": garbage}), {"hangupCauseCode": garbage})
        # the provider cannot forge the gateway's own field
        self.assertEqual(wire.normalise_cdr({"hangupCauseCode": "x", "hangupCauseCodeInt": 99}),
                         {"hangupCauseCode": "x"})

    def test_every_text_message_goes_through_the_boundary_policy(self):
        error = self.assertRaises(wire.BadMessage, wire.parse_event,
                                  b'{"event":"incoming_call","callerId":"\\ud800","didNumber":"555","sessionId":"p1"}')
        self.assertEqual(error.field, "callerId")
        self.assertIn("callerId", str(error))
        self.assertIn("surrogate", str(error))
        for bad, why in ((b"[" * 100000, "nested deeper"), (b'{"event":"dtmf","duration":NaN}', "NaN"),
                         (b'{"event":"dtmf","duration":Infinity}', "Infinity"),
                         (b'{"event":"dtmf","duration":1e999}', "out of range"),
                         (b'{"event":"dtmf","digit":"\xff"}', "UTF-8")):
            self.assertIn(why, str(self.assertRaises(wire.BadMessage, wire.parse_event, bad)))
