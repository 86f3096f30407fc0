"""The bundled SMS transports: sim (kept, switchable down) and http (a webhook POST per SMS), and their plugins."""

import json

from treq.testing import StubTreq
from twisted.internet import task
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

from gateway.chat import socketio
from gateway.chat.interfaces import ISmsTransport, ISmsTransportFactory, OutboundSms, SmsRejected
from gateway.chat.testing import FakeSmsTransport, FakeSocketIOClient
from gateway.chat.transports import HttpTransport, SimTransport, TransportDown
from gateway.chat.web import HttpClient, RequestTimedOut
from gateway.pluginload import find_plugin
from gateway.tlspolicy import TlsPolicy

SMS = OutboundSms("sms-1", "+4915100", "Hello", "reply", "c1")


class Webhook(Resource):
    """Answers each POST with ``status`` (None: never answers) and keeps what it got."""

    isLeaf = True

    def __init__(self, status=200):
        super().__init__()
        self.status = status
        self.received = []

    def render_POST(self, request):
        self.received.append((request.getHeader("authorization"), json.loads(request.content.read())))
        if self.status is None:
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        return b"provider says hi"


class FakeSmsTransportTests(SynchronousTestCase):
    """The shipped fake: keeps what it takes, answers as scripted."""

    def test_it_keeps_what_it_takes_and_fails_as_scripted(self):
        transport = FakeSmsTransport()
        self.assertTrue(verifyObject(ISmsTransport, transport))
        transport.fail_next(TransportDown("not now"))
        transport.fail_next(SmsRejected("never"))
        self.failureResultOf(transport.send(SMS), TransportDown)
        self.failureResultOf(transport.send(SMS), SmsRejected)
        self.assertIsNone(self.successResultOf(transport.send(SMS)))
        self.assertEqual((transport.sent, transport.status()), ([SMS], {"name": "fake", "sent": 1}))
        transport.stop()
        self.assertTrue(transport.stopped)

    def test_the_socketio_fake_lives_in_the_testing_module_and_keeps_its_old_name(self):
        """Production modules define no test fakes; the old import path still works."""
        self.assertIs(socketio.FakeSocketIOClient, FakeSocketIOClient)
        self.assertNotIn("class FakeSocketIOClient", open(socketio.__file__, encoding="utf-8").read())


class SimTransportTests(SynchronousTestCase):
    def test_it_keeps_what_it_sends_and_can_be_switched_down(self):
        clock = task.Clock()
        clock.advance(1700000000)
        transport = SimTransport(clock)
        verifyObject(ISmsTransport, transport)
        self.successResultOf(transport.send(SMS))
        self.assertEqual(list(transport.sent), [{"id": "sms-1", "to": "+4915100", "text": "Hello", "kind": "reply",
                                                 "conversationId": "c1", "sentAt": "2023-11-14T22:13:20.000000Z"}])
        transport.down = True
        self.failureResultOf(transport.send(SMS), TransportDown)
        self.assertEqual(transport.status(), {"name": "sim", "sent": 1, "down": True})


class HttpTransportTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()

    def send(self, webhook, token="s3cret"):
        stub = StubTreq(webhook)
        transport = HttpTransport(HttpClient(self.clock, stub), "https://sms.example/send", token=token, timeout=5)
        d = transport.send(SMS)
        stub.flush()
        return transport, d

    def test_a_2xx_answer_means_sent(self):
        webhook = Webhook(202)
        transport, d = self.send(webhook)
        self.successResultOf(d)
        self.assertEqual(webhook.received, [("Bearer s3cret", {"id": "sms-1", "to": "+4915100", "text": "Hello",
                                                                "kind": "reply", "conversationId": "c1"})])
        self.assertEqual(transport.status(), {"name": "http", "url": "https://sms.example/send", "sent": 1})

    def test_without_a_token_no_authorization_is_sent(self):
        webhook = Webhook()
        self.send(webhook, token="")
        self.assertIsNone(webhook.received[0][0])

    def test_400_413_422_refuse_for_good_the_rest_means_later(self):
        for status in (400, 413, 422):
            failure = self.failureResultOf(self.send(Webhook(status))[1], SmsRejected)
            self.assertIn(f"HTTP {status} provider says hi", str(failure.value))
        for status in (401, 404, 429, 500, 503):
            self.failureResultOf(self.send(Webhook(status))[1], TransportDown)

    def test_no_answer_in_time_means_later(self):
        _, d = self.send(Webhook(None))
        self.clock.advance(5)
        self.failureResultOf(d, RequestTimedOut)


class PluginTests(SynchronousTestCase):
    def test_both_transports_are_plugins(self):
        for name in ("sim", "http"):
            plugin = find_plugin(ISmsTransportFactory, name)
            verifyObject(ISmsTransportFactory, plugin)
            self.assertEqual(plugin.name, name)


class PooledClientTlsTests(SynchronousTestCase):
    def test_the_pooled_client_takes_the_tls_policys_https_policy_with_the_trust(self):
        asked = []

        class Policy(TlsPolicy):
            def https_policy(self, trust_root=None):
                asked.append(trust_root)
                return super().https_policy(trust_root)

        trust = object()
        client = HttpClient.pooled(MemoryReactorClock(), trust, Policy())
        self.addCleanup(client.close)
        self.assertEqual(asked, [trust], "one policy for HTTPS: tlspolicy.HttpsPolicy, not a copy of it")
