"""The [cti] configuration, the endpoint it gives, the telephony watch, and the assembled service."""

import pathlib

from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import loads
from gateway.confschema import ConfigError
from gateway.context import Context, Readiness
from gateway.core.registry import Registry
from gateway.cti.config import CtiConfig
from gateway.cti.endpoint import bridge_endpoint
from gateway.cti.health import TelephonyWatch
from gateway.cti.names import CtiNames
from gateway.cti.service import make_service, retry_delay
from gateway.drivers.optimaccs_out import READINESS as OPTIMACCS_OUTBOUND
from gateway.sim.tlsutil import generate_self_signed

AGENTS = '[[extensions]]\nid = "1001"\n\n[cti]\nenabled = true\nagents = [{agent = "alice", extension = "1001"}]\n'


class ConfigTests(SynchronousTestCase):
    def config_error(self, text):
        with self.assertRaises(ConfigError) as caught:
            loads(text, "x.toml")
        return str(caught.exception)

    def test_defaults(self):
        config = CtiConfig()
        self.assertTrue(config.enabled)  # a [cti] section present is on; etc/gateway.toml turns it off
        self.assertEqual((config.processor, config.byte_order, config.max_frame_size), ("PROC", "big", 1024 * 1024))
        self.assertEqual(config.names, CtiNames())

    def test_names_are_overridden_one_by_one(self):
        config = loads(AGENTS + '\n[cti.names]\nchannel_interaction = "channel.newcall"\n', "x.toml").cti
        self.assertEqual(config.names.channel_interaction, "channel.newcall")
        self.assertEqual(config.names.conversation_held, "conversation.held")
        self.assertEqual(config.agent("alice").extension, "1001")
        self.assertIsNone(config.agent("bob"))

    def test_bad_settings_name_the_key(self):
        for text, message in [
            ('[cti]\nnames = {channel_newcall = "x"}\n', "x.toml: cti: unknown key(s) in [cti.names]: channel_newcall"),
            ('[cti]\nnames = {control_status = "x", channel_interaction = "x"}\n',
             "each message name must be distinct"),
            ('[cti]\nbyte_order = "middle"\n', "x.toml: cti.byte_order: expected 'big' or 'little'"),
            ('[cti]\nmax_frame_size = 0\n', "x.toml: cti.max_frame_size: must be between 1 and"),
            ('[cti]\ntls_ca_file = "ca.pem"\n', "tls_ca_file is set but connect 'tcp:host=127.0.0.1:port=9500' is not"),
            (AGENTS.replace('}]', '}, {agent = "alice", extension = "1001"}]'), "agent 'alice' is configured twice"),
            ('[cti]\nenabled = true\nagents = [{agent = "a", extension = "9"}]\n',
             "cti.agents[0].extension: no extension"),
        ]:
            self.assertIn(message, self.config_error(text))


class EndpointTests(SynchronousTestCase):
    def config(self, connect, ca_file=""):
        return CtiConfig(connect=connect, tls_ca_file=ca_file)

    def ca_file(self):
        path = pathlib.Path(self.mktemp())
        path.write_bytes(generate_self_signed("bridge.example").cert_pem)
        return str(path)

    def test_a_tcp_endpoint_connects_where_it_says(self):
        reactor = MemoryReactorClock()
        bridge_endpoint(reactor, self.config("tcp:host=127.0.0.1:port=9500")).connect(_NoFactory())
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 9500))

    def test_a_ca_file_needs_a_plain_tls_address(self):
        reactor, ca = MemoryReactorClock(), self.ca_file()
        bridge_endpoint(reactor, self.config("tls:bridge.example:9501:timeout=5", ca))
        bridge_endpoint(reactor, self.config("tls:host=bridge.example:port=9501", ca))
        for connect, message in [
            ("tls:bridge.example:9501:certificate=c.pem", "unsupported option(s) certificate"),
            ("tls:bridge.example", "no host and port"),
            ("tls:bridge.example:https", "bad port or timeout"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                bridge_endpoint(reactor, self.config(connect, ca))
            self.assertIn(message, str(caught.exception))

    def test_an_unreadable_ca_file_is_a_config_error(self):
        empty = pathlib.Path(self.mktemp())
        empty.write_text("no certificate here")
        for path, message in [("/nonexistent/ca.pem", "cannot read"), (str(empty), "holds no PEM certificate")]:
            with self.assertRaises(ConfigError) as caught:
                bridge_endpoint(MemoryReactorClock(), self.config("tls:h:1", path))
            self.assertIn(message, str(caught.exception))


class _NoFactory:
    def buildProtocol(self, addr):
        return None


class TelephonyWatchTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.readiness = Readiness()
        self.changes = []
        self.watch = TelephonyWatch(self.clock, self.readiness, CtiConfig().telephony, 1.0,
                                    lambda up, reason: self.changes.append((up, reason)))

    def test_changes_of_the_matching_components_are_reported(self):
        """The default patterns cover the OptimaCCS listener and the outbound driver's link."""
        listener = self.readiness.register("listener:optimaccs")
        driver = self.readiness.register(OPTIMACCS_OUTBOUND)
        self.readiness.register("listener:admin")  # down, but not telephony
        self.watch.start()
        self.assertEqual(self.changes, [(False, "listener:optimaccs: not started; optimaccs:api: not started")])
        listener.set_up()
        self.clock.advance(1.0)
        self.assertEqual(self.changes[-1], (False, "optimaccs:api: not started"))
        driver.set_up()
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.changes[-1], (True, None))
        self.assertEqual(len(self.changes), 3)
        self.watch.stop()
        driver.set_down("gone")
        self.clock.advance(5.0)
        self.assertEqual(len(self.changes), 3)

    def test_a_failing_observer_is_logged_and_the_watch_goes_on(self):
        def changed(up, reason):
            self.changes.append((up, reason))
            if not up:
                raise RuntimeError("observer broke")

        watch = TelephonyWatch(self.clock, self.readiness, ["listener:optimaccs"], 1.0, changed)
        listener = self.readiness.register("listener:optimaccs")
        watch.start()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        listener.set_up()
        self.clock.advance(1.0)
        self.assertEqual(self.changes, [(False, "listener:optimaccs: not started"), (True, None)])
        watch.stop()

    def test_nothing_to_watch_is_up(self):
        self.watch.start()
        self.assertEqual(self.changes, [])
        self.watch.stop()


class ServiceTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        config = loads(AGENTS + 'reconnect_initial = 2.0\nbyte_order = "little"\nmax_frame_size = 4096\n', "x.toml")
        self.ctx = Context(reactor=self.reactor, config=config, state_dir=pathlib.Path(self.mktemp()),
                           metrics=CollectorRegistry())
        self.ctx.registry = Registry(self.reactor, {}, extensions=config.extensions)
        self.service = make_service(self.ctx)

    def test_it_connects_and_retries_with_backoff(self):
        self.service.startService()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 9500))
        self.assertEqual(self.ctx.readiness.not_ready(), {"cti:PROC": "connecting to 127.0.0.1:9500 (attempt 1)"})
        self.assertEqual(self.ctx.status["cti"].status()["connected"], False)
        connector = self.reactor.connectors[0]
        self.reactor.tcpClients[0][2].clientConnectionFailed(connector, ConnectionRefusedError())
        # /readyz says why (gateway.linkwatch): the endpoint, the error, the next attempt
        self.assertRegex(self.ctx.readiness.not_ready()["cti:PROC"],
                         r"^connecting to 127\.0\.0\.1:9500: connection refused; retry 1 in (2|2\.\d|3) s$")
        self.reactor.advance(1.9)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(1.1)  # 2 s and a jitter of up to 1 s
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.successResultOf(self.service.stopService())
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_links_are_framed_as_configured(self):
        self.service.startService()
        link = self.reactor.tcpClients[0][2].buildProtocol(None)._wrappedProtocol
        self.assertEqual((link.byteorder, link.max_frame_size), ("little", 4096))
        self.successResultOf(self.service.stopService())

    def test_the_delay_doubles_up_to_the_maximum(self):
        delay = retry_delay(1.0, 5.0)
        for attempt, low in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (40, 5.0)]:
            self.assertTrue(low <= delay(attempt) < low + 0.5, (attempt, delay(attempt)))

    def test_metrics_are_defined(self):
        self.assertEqual(self.ctx.metrics.get_sample_value("gateway_cti_connections_total"), 0.0)
