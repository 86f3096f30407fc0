"""The [chat] configuration and the assembled service: transport plugin, routes, readiness, status, TLS trust."""

import pathlib

from prometheus_client import CollectorRegistry
from twisted.application import service
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.api import ApiRouter
from gateway.chat.config import ChatConfig, HttpTransportConfig
from gateway.chat.service import ChatService, make_service
from gateway.chat.transports import HttpTransport, SimTransport
from gateway.config import loads
from gateway.confschema import ConfigError, Secret
from gateway.context import Context
from gateway.sim.tlsutil import generate_self_signed
from gateway.store import MemoryCdrStore


class ConfigTests(SynchronousTestCase):
    def config_error(self, text):
        with self.assertRaises(ConfigError) as caught:
            loads(text, "x.toml")
        return str(caught.exception)

    def test_defaults(self):
        config = ChatConfig()
        self.assertTrue(config.enabled)  # a [chat] section present is on; etc/gateway.toml turns it off
        self.assertEqual((config.url, config.path, config.id, config.channel, config.transport),
                         ("http://127.0.0.1:8081", "/socket.io", "sms", "sms", "sim"))
        self.assertIsNone(loads("", "x.toml").chat)

    def test_bad_settings_name_the_key(self):
        for text, message in [
            ('[chat]\nurl = "ws://chat:8080"\n', "x.toml: chat.url: expected http(s)://host[:port] without a path"),
            ('[chat]\nurl = "http://chat:8080/api"\n', "chat.url: expected http(s)://host[:port] without a path"),
            ('[chat]\npath = "socket.io"\n', "chat.path: must start with '/'"),
            ('[chat]\nrequest_attempts = 0\n', "chat.request_attempts: must be at least 1"),
            ('[chat]\nidle_timeout = -1\n', "chat.idle_timeout: must not be negative"),
            ('[chat]\nid = ""\n', "chat.id: must not be empty"),
            ('[chat]\ntransport = "http"\n', "x.toml: chat: transport = 'http' needs [chat.http] url"),
            ('[chat.http]\nurl = "ftp://x"\n', "chat.http.url: expected an http(s) URL"),
            ('[chat]\nsecret = 1\n', "chat.secret: unknown key"),
            ('[chat]\nmax_message_size = 100\n', "chat.max_message_size: must be from 1024 to 1073741824 bytes"),
            ('[chat]\nmax_attachments = -1\n', "chat.max_attachments: must not be negative"),
        ]:
            self.assertIn(message, self.config_error(text))


class ServiceTests(SynchronousTestCase):
    def context(self, **settings):
        reactor = MemoryReactorClock()
        config = loads("", "x.toml")
        config = type(config)(chat=ChatConfig(enabled=True, **settings))
        ctx = Context(reactor=reactor, config=config, state_dir=pathlib.Path(self.mktemp()), metrics=CollectorRegistry())
        ctx.store = MemoryCdrStore(reactor)
        ctx.api = ApiRouter(Secret("t"))
        return ctx

    def test_the_service_is_wired_to_the_context(self):
        ctx = self.context()
        service = make_service(ctx)
        self.assertEqual(service.name, "chat")
        self.assertIs(ctx.status["chat"], service.connector)
        self.assertIsInstance(service.connector.transport, SimTransport)
        self.assertEqual(ctx.readiness.not_ready(), {"chat": "not started"})
        routes = {(r.method, r.pattern) for r in ctx.api._routes}
        self.assertTrue({("POST", "/api/sms/inbound"), ("GET", "/api/sms"), ("POST", "/api/chat/transcript/{id}/{type}"),
                         ("GET", "/api/sms/sim/sent")} <= routes)
        self.assertIn("gateway_sms_pending", {m.name for m in ctx.metrics.collect()})

    def test_the_link_takes_its_limits_and_counts_what_it_ignores_on_the_metrics(self):
        self.assertEqual((ChatConfig().max_message_size, ChatConfig().max_attachments), (1 << 20, 10))
        ctx = self.context(max_message_size=4096, max_attachments=3)
        factory = make_service(ctx).link.factory
        self.assertEqual((factory.maxMessagePayloadSize, factory.maxFramePayloadSize, factory.max_attachments),
                         (4096, 4096, 3))
        factory.budget("tcp4:127.0.0.1:8081").ignored("bad_text", "an event with a lone surrogate")
        self.assertEqual(
            ctx.metrics.get_sample_value("gateway_ignored_messages_total", {"adapter": "chat", "reason": "bad_text"}), 1
        )

    def test_the_http_transport_is_built_from_its_section(self):
        ctx = self.context(transport="http", http=HttpTransportConfig(url="https://sms.example/send"))
        self.assertIsInstance(make_service(ctx).connector.transport, HttpTransport)

    def test_an_unknown_transport_is_a_configuration_error(self):
        with self.assertRaises(ConfigError) as caught:
            make_service(self.context(transport="carrier-pigeon"))
        self.assertIn("chat.transport: no SMS transport plugin named 'carrier-pigeon' (known: http, sim)", str(caught.exception))

    def test_an_unreadable_trust_file_is_a_configuration_error(self):
        with self.assertRaises(ConfigError) as caught:
            make_service(self.context(url="https://chat.example", tls_ca_file="/nonexistent/ca.pem"))
        self.assertIn("chat.tls_ca_file: cannot read /nonexistent/ca.pem", str(caught.exception))

    def test_an_https_url_with_a_trusted_certificate(self):
        path = pathlib.Path(self.mktemp())
        path.write_bytes(generate_self_signed("chat.example").cert_pem)
        service = make_service(self.context(url="https://chat.example", tls_ca_file=str(path)))
        self.assertEqual(service.link.factory.url, "wss://chat.example/socket.io/?EIO=4&transport=websocket")


class LifeCycleTests(SynchronousTestCase):
    """ChatService connects once the connector has taken its conversations and pending SMS from the store."""

    class Connector:
        def __init__(self):
            self.loaded = defer.Deferred()
            self.stopped = False

        def start(self):
            return self.loaded

        def stop(self):
            self.stopped = True
            return defer.succeed(None)

    def setUp(self):
        self.connector = self.Connector()
        self.link = service.Service()
        self.chat = ChatService(self.connector, self.link, [])

    def test_the_link_starts_once_the_store_was_read(self):
        self.chat.startService()
        self.assertFalse(self.link.running)
        self.connector.loaded.callback(None)
        self.assertTrue(self.link.running)
        self.successResultOf(defer.maybeDeferred(self.chat.stopService))
        self.assertFalse(self.link.running)

    def test_the_link_starts_even_when_the_store_could_not_be_read(self):
        self.chat.startService()
        self.connector.loaded.errback(RuntimeError("disk gone"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(self.link.running)

    def test_stopped_before_the_store_was_read_the_link_never_starts(self):
        self.chat.startService()
        self.successResultOf(defer.maybeDeferred(self.chat.stopService))
        self.connector.loaded.callback(None)
        self.assertTrue(self.connector.stopped)
        self.assertFalse(self.link.running)
