"""The Desktop API client: its sessions on a task.Clock (authentication, backoff, call control), a
link and the Patriot server simulator joined in memory on one clock (a hung Patriot found out by
the pings), and links over real TLS against the simulator (CA file, pinned fingerprint, a wrong
pin, a wrong key, a restarted server)."""

import json
import pathlib

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from core.harness import Harness
from gateway.confschema import ClientEndpoint, Secret
from gateway.context import Readiness
from gateway.patriot.config import DesktopConfig
from gateway.patriot.desktop import DesktopLink, desktop_endpoint
from gateway.patriot.line import Lines
from gateway.patriot.tls import load_ca_file
from gateway.sim import tlsutil
from gateway.sim.patriot_server import HOSTNAME, PatriotServerSim

from .support import FakeConnection, frame, new_metrics, status

API_KEY = "ABC123DEF456"


def make_link(harness, config, *, reactor, endpoint=None):
    metrics, prometheus = new_metrics()
    lines = Lines(harness.registry)
    readiness = Readiness()
    link = DesktopLink(0, config, reactor=reactor, endpoint=endpoint, line=lines.get("1001"), metrics=metrics,
                       component=readiness.register("patriot-desktop:0"))
    return link, prometheus, readiness


class DesktopSessionTests(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness()
        self.clock = self.harness.clock
        config = DesktopConfig(api_key=Secret(API_KEY), extension="1001")
        self.link, self.prometheus, self.readiness = make_link(self.harness, config, reactor=self.clock)
        self.link._policy = lambda attempt: min(1.0 * 1.5**attempt, 60.0)  # without jitter

    def open(self):
        connection = FakeConnection("127.0.0.1", 9009)
        session = self.link.session_opened(connection)
        (request,) = connection.take()
        self.assertEqual(request["type"], "authentication-request")
        self.assertEqual(request["payload"]["apiKey"], API_KEY)
        return session, connection, request["payload"]["requestId"]

    def authenticate(self):
        session, connection, request_id = self.open()
        session.frame_received(frame("authentication-response", {"requestId": request_id, "success": True}), False)
        return session, connection

    def up(self):
        return self.prometheus.get_sample_value("gateway_patriot_desktop_up", {"link": "0"})

    def test_authentication_brings_the_link_up_and_sends_the_status(self):
        self.assertEqual(self.up(), 0)
        session, connection = self.authenticate()
        self.assertEqual(connection.take(), [{"type": "call-status-update", "payload": status(False)}])
        self.assertTrue(self.readiness.ready)
        self.assertEqual(self.up(), 1)
        self.assertEqual(self.link.status()["up"], True)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no authentication timer left

    def test_every_request_id_is_new(self):
        ids = {self.open()[2] for _ in range(3)}
        self.assertEqual(len(ids), 3)

    def test_everything_before_authentication_is_ignored(self):
        session, connection, request_id = self.open()
        session.frame_received(frame("dial-request", {"phoneNo": "5551234", "rawPhoneNo": "5551234"}), False)
        session.frame_received(frame("call-status-request"), False)
        session.frame_received(frame("authentication-response", {"requestId": "other", "success": True}), False)
        self.assertEqual(connection.take(), [])
        self.assertFalse(session.authenticated)
        self.assertEqual(self.registry_calls(), [])

    def registry_calls(self):
        return self.harness.registry.calls()

    def test_refused_key_closes_and_each_unauthenticated_connection_lengthens_the_wait(self):
        self.assertEqual(self.link._retry_delay(1), 1.5)
        for rejections in range(1, 4):
            session, connection, request_id = self.open()
            session.frame_received(frame("authentication-response", {
                "requestId": request_id, "success": False, "error": "Invalid API key"}), False)
            self.assertEqual(connection.closes, [(4008, "authentication failed")])
            self.link.connection_lost(session, "closed with 4008: authentication failed")
            self.assertEqual(self.link.rejections, rejections)
            self.assertEqual(self.link._retry_delay(1), 1.5 ** (1 + rejections))
        self.assertFalse(self.readiness.ready)
        self.assertIn("next attempt in", self.readiness.not_ready()["patriot-desktop:0"])
        self.assertEqual(
            self.prometheus.get_sample_value("gateway_patriot_logins_total", {"mode": "desktop", "result": "failure"}), 3)
        self.authenticate()
        self.assertEqual(self.link.rejections, 0)

    def test_connection_lost_before_opening_counts_as_rejected(self):
        self.link.connection_lost(None, "certificate verify failed")
        self.assertEqual(self.link.rejections, 1)
        self.assertEqual(self.readiness.not_ready(), {"patriot-desktop:0": "certificate verify failed"})

    def test_unanswered_authentication_closes_after_the_timeout(self):
        session, connection, _ = self.open()
        self.clock.advance(9.9)
        self.assertEqual(connection.closes, [])
        self.clock.advance(0.1)
        self.assertEqual(connection.closes, [(4008, "no authentication-response")])
        session.frame_received(frame("authentication-response", {"requestId": "late", "success": True}), False)
        self.assertFalse(session.authenticated)

    def test_an_unreadable_authentication_response_is_a_failed_login_closed_4008(self):
        """4008 (policy, as the bridge closes a failed login), not 1000 (a normal close)."""
        session, connection, request_id = self.open()
        session.frame_received(('{"type":"authentication-response","payload":{"requestId":"%s","success":"yes"}}'
                                % request_id).encode(), False)
        self.assertEqual(connection.closes, [(4008, "unreadable authentication-response")])
        self.assertFalse(session.authenticated)

    def test_lost_after_authentication_goes_down_without_a_rejection(self):
        session, connection = self.authenticate()
        connection.take()
        self.link.connection_lost(session, "connection lost")
        self.assertEqual((self.link.rejections, self.up(), self.readiness.ready), (0, 0, False))
        self.assertIsNone(self.link.session)
        self.harness.registry.originate("1001", "5551234")
        self.assertEqual(connection.take(), [])

    def test_call_control_once_authenticated(self):
        session, connection = self.authenticate()
        connection.take()
        session.frame_received(frame("dial-request", {"phoneNo": "5551234", "rawPhoneNo": "555-1234"}), False)
        self.harness.advance(3.0)
        self.assertEqual(connection.statuses(), [status(True, True, "5551234")] * 2)
        (call,) = self.harness.registry.calls()
        self.assertEqual(call.attributes["raw_number"], "555-1234")
        self.assertIn("desktop link 0", call.attributes["requested_by"])
        self.harness.network.place_inbound("0299998888", "100")  # busy: refused by the core
        session.frame_received(frame("hangup-request"), False)
        self.assertEqual(connection.statuses(), [status(False, True, "5551234")])
        session.frame_received(frame("heartbeat"), False)  # not a Desktop API message: ignored
        session.frame_received(b"{bad", False)
        self.assertEqual(connection.take(), [])

    def test_stop_closes_the_connection(self):
        session, connection = self.authenticate()
        self.successResultOf(self.link.stopService())
        self.assertEqual(connection.closes, [(1000, "the gateway is stopping")])


class DeadPeerTests(SynchronousTestCase):
    """A link and the simulator over TLS in memory, every timer (Autobahn's pings too) on one clock."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        certificate = tlsutil.load_or_create(self.mktemp(), HOSTNAME)
        self.sim = PatriotServerSim(self.reactor, API_KEY, certificate)
        self.successResultOf(self.sim.listen(TCP4ServerEndpoint(self.reactor, 9009, interface="127.0.0.1")))
        config = DesktopConfig(api_key=Secret(API_KEY), extension="1001", url=f"wss://{HOSTNAME}:9009/ws/dialler/v1",
                               connect=ClientEndpoint("tcp:host=127.0.0.1:port=9009"),
                               fingerprint=certificate.fingerprint, ping_interval=10.0, ping_timeout=5.0)
        self.link, _, self.readiness = make_link(Harness(), config, reactor=self.reactor,
                                                 endpoint=desktop_endpoint(self.reactor, config))
        self.link._policy = lambda attempt: 2.0  # without jitter
        self.reasons = []  # why each connection ended, as the link was told
        lost = self.link.connection_lost
        self.link.connection_lost = lambda session, reason: (self.reasons.append(reason), lost(session, reason))
        self.link.startService()
        self.addCleanup(self.stop)
        self.pump = None

    def connect(self):
        """Complete the link's pending connection attempt: TLS, WebSocket handshake, authentication."""
        self.pump = iosim.ConnectionCompleter(self.reactor).succeedOnce()
        self.assertIsNotNone(self.pump, "the link made no connection attempt")
        self.pump.flush()

    def advance(self, seconds):
        self.reactor.advance(seconds)
        self.pump.flush()

    def stop(self):
        stopped = self.link.stopService()
        self.pump.flush()  # the closing handshake
        self.successResultOf(stopped)
        self.successResultOf(self.sim.stop())

    def test_a_hung_patriot_is_dropped_after_an_unanswered_ping_and_the_link_reconnects(self):
        self.connect()
        self.assertTrue(self.link.component.up)
        for _ in range(3):  # pings at 10, 20 and 30 s, each answered
            self.advance(10.0)
        self.assertEqual((self.link.component.up, self.reasons), (True, []))

        self.assertEqual(self.sim.freeze(), 1)
        self.advance(10.0)  # the ping at 40 s goes unanswered
        self.advance(4.9)
        self.assertEqual((self.link.component.up, self.reasons), (True, []))
        self.advance(0.1)  # ping_timeout after it
        self.assertFalse(self.link.component.up)
        (reason,) = self.reasons
        self.assertIn("WebSocket ping timeout", reason)
        self.assertEqual(self.readiness.not_ready(),
                         {"patriot-desktop:0": f"not connected to {self.link.config.url}; next attempt in 2.0 s"})

        self.reactor.advance(2.0)  # the ClientService's retry
        self.connect()
        self.assertEqual((self.link.component.up, self.sim.auth_successes), (True, 2))


class EndpointTests(SynchronousTestCase):
    def test_connect_overrides_the_address(self):
        reactor = MemoryReactorClock()
        config = DesktopConfig(api_key=Secret("k"), extension="1", connect=ClientEndpoint("tcp:host=10.1.2.3:port=9999"))
        endpoint = desktop_endpoint(reactor, config)
        endpoint.connect(object())
        host, port, *_ = reactor.tcpClients[0]
        self.assertEqual((host, port), ("10.1.2.3", 9999))  # TLS and Host: see the tests over the wire

    def test_plain_ws_has_no_tls(self):
        config = DesktopConfig(api_key=Secret("k"), extension="1", url="ws://127.0.0.1:9009/ws/dialler/v1")
        self.assertIsInstance(desktop_endpoint(MemoryReactorClock(), config), HostnameEndpoint)


# -- over real TLS against the Patriot server simulator -----------------------------------------


def reactor():
    from twisted.internet import reactor

    return reactor


@defer.inlineCallbacks
def wait_until(predicate, timeout=10.0, what="condition"):
    """Poll ``predicate`` on the reactor (for states only the code under test can see)."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        yield task.deferLater(reactor(), 0.02, lambda: None)
    raise AssertionError(f"no {what} within {timeout} s")


@pytest.fixture
def certificate(tmp_path):
    return tlsutil.load_or_create(tmp_path / "cert", HOSTNAME)


@pytest_twisted.async_yield_fixture
async def patriot(certificate):
    sim = PatriotServerSim(reactor(), API_KEY, certificate)
    await sim.listen(TCP4ServerEndpoint(reactor(), 0, interface="127.0.0.1"))
    yield sim
    await sim.stop()


@pytest_twisted.async_yield_fixture
async def links():
    """Starts links (``make(harness, sim, **options)``) and stops them all afterwards."""
    made = []

    def make(harness, sim, *, api_key=API_KEY, **options):
        port = sim.port.getHost().port
        config = DesktopConfig(api_key=Secret(api_key), extension="1001", url=f"wss://{HOSTNAME}:{port}/ws/dialler/v1",
                               connect=ClientEndpoint(f"tcp:host=127.0.0.1:port={port}"), **options)
        ca = load_ca_file(config.ca) if config.ca else None
        link, _, _ = make_link(harness, config, reactor=reactor(), endpoint=desktop_endpoint(reactor(), config, ca))
        link._policy = lambda attempt: 0.05  # retry fast, whatever the count
        made.append(link)
        link.startService()
        return link

    yield make
    for link in made:
        await link.stopService()


@pytest_twisted.ensureDeferred
async def test_ca_file_trust_then_dial_and_hangup_over_the_wire(patriot, links, certificate):
    harness = Harness()
    link = links(harness, patriot, ca=certificate.cert_path)
    (client,) = await patriot.wait_authenticated()
    assert client.http_headers["host"] == f"{HOSTNAME}:{patriot.port.getHost().port}"
    assert await patriot.wait_for("call-status-update") == patriot.messages("call-status-update")[0]
    await wait_until(lambda: link.component.up, what="link up")
    patriot.dial("5551234", "555 1234")
    update = await patriot.wait_for("call-status-update")
    assert (update.call_active, update.outbound, update.caller_id) == (True, True, "5551234")
    harness.advance(3.0)
    await patriot.wait_for("call-status-update", lambda u: u.call_active)  # answered
    patriot.hangup()
    update = await patriot.wait_for("call-status-update")
    assert (update.call_active, update.outbound, update.caller_id) == (False, True, "5551234")
    sent = [json.loads(r.text) for r in patriot.received if r.type == "authentication-request"]
    assert sent[0]["payload"]["apiKey"] == API_KEY


@pytest_twisted.ensureDeferred
async def test_pinned_fingerprint_alone_is_trusted(patriot, links, certificate):
    link = links(Harness(), patriot, fingerprint=certificate.fingerprint.lower())
    await patriot.wait_authenticated()
    await wait_until(lambda: link.component.up, what="link up")


@pytest_twisted.ensureDeferred
async def test_wrong_pin_is_refused_before_anything_is_sent(patriot, links, certificate):
    wrong = ":".join(["00"] * 32)
    link = links(Harness(), patriot, fingerprint=wrong)
    await wait_until(lambda: link.rejections >= 2, what="two refused connections")
    assert patriot.auth_attempts == 0
    assert not link.component.up


@pytest_twisted.ensureDeferred
async def test_ca_file_and_a_wrong_pin_is_refused(patriot, links, certificate):
    link = links(Harness(), patriot, ca=certificate.cert_path, fingerprint=":".join(["00"] * 32))
    await wait_until(lambda: link.rejections >= 1, what="a refused connection")
    assert patriot.auth_attempts == 0


@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_is_refused(patriot, links, tmp_path):
    other = tlsutil.load_or_create(tmp_path / "other", HOSTNAME)
    link = links(Harness(), patriot, ca=other.cert_path)
    await wait_until(lambda: link.rejections >= 1, what="a refused connection")
    assert patriot.auth_attempts == 0


@pytest_twisted.ensureDeferred
async def test_wrong_key_is_refused_and_retried(patriot, links, certificate):
    link = links(Harness(), patriot, api_key="WRONG", fingerprint=certificate.fingerprint)
    await wait_until(lambda: patriot.auth_failures >= 2 and link.rejections >= 2, what="two refused keys")
    assert patriot.auth_successes == 0
    assert not link.component.up


@pytest_twisted.ensureDeferred
async def test_restarted_patriot_is_reconnected_and_authenticated_again(patriot, links, certificate):
    link = links(Harness(), patriot, fingerprint=certificate.fingerprint)
    await patriot.wait_authenticated()
    await wait_until(lambda: link.component.up, what="link up")
    port = patriot.port.getHost().port
    await patriot.stop()
    await wait_until(lambda: not link.component.up, what="link down")
    await patriot.listen(TCP4ServerEndpoint(reactor(), port, interface="127.0.0.1"))
    await patriot.wait_authenticated()
    await wait_until(lambda: link.component.up, what="link up again")
    assert patriot.auth_successes == 2


@pytest_twisted.ensureDeferred
async def test_bad_input_from_patriot_is_harmless_and_a_huge_message_closes_the_link(patriot, links, certificate):
    harness = Harness()
    link = links(harness, patriot, fingerprint=certificate.fingerprint)
    await patriot.wait_authenticated()
    await wait_until(lambda: link.component.up, what="link up")
    reasons = []
    lost = link.connection_lost
    link.connection_lost = lambda session, reason: (reasons.append(reason), lost(session, reason))
    seen = len(patriot.status_updates)
    for raw in ['{"type": "dial-request"', "[]", '{"type": "sing"}', '{"type": "dial-request"}',
                '{"type": "dial-request", "payload": {"phoneNo": "12ab", "rawPhoneNo": "12ab"}}',
                '{"type": "dial-request", "payload": {"phoneNo": "' + "9" * 40 + '", "rawPhoneNo": "x"}}',
                b"\x00binary"]:
        patriot.send_raw(raw)
    patriot.request_status()
    updates = await patriot.wait_until(
        lambda: patriot.status_updates[seen:] if len(patriot.status_updates) >= seen + 4 else None,
        what="four call-status-updates")
    assert [u.call_active for u in updates] == [False] * 4  # three invalid dials and the request, answered
    assert harness.registry.calls(include_released=True) == []
    assert (link.component.up, reasons) == (True, [])
    patriot.send_raw("x" * 70000)  # larger than max_message_size
    await wait_until(lambda: reasons, what="the link closed")
    assert reasons[0].startswith("closed with 1009: "), reasons
    await wait_until(lambda: patriot.auth_successes == 2 and link.component.up, what="authenticated again")


class ServiceTests(SynchronousTestCase):
    """make_service: what the adapter asks of the daemon's context."""

    def context(self, text):
        from prometheus_client import CollectorRegistry

        from gateway import config
        from gateway.context import Context

        ctx = Context(reactor=MemoryReactorClock(), config=config.loads("[[extensions]]\nid = '1001'\n" + text, "x"),
                      state_dir=pathlib.Path("unused"), metrics=CollectorRegistry())
        ctx.registry = Harness().registry
        return ctx

    def test_bridge_listener_desktop_components_and_status(self):
        from gateway.patriot.service import make_service

        ctx = self.context("[patriot.bridge]\n[[patriot.desktop]]\napi_key = 'k'\nextension = '1001'\n"
                           "[[patriot.desktop]]\napi_key = 'k'\nextension = '1001'\nurl = 'ws://127.0.0.1:1/x'\n")
        svc = make_service(ctx)
        self.assertEqual([listener.name for listener in ctx.listeners], ["patriot-bridge"])
        self.assertEqual(sorted(ctx.readiness.not_ready()), ["listener:patriot-bridge", "patriot-desktop:0",
                                                             "patriot-desktop:1"])
        status_ = ctx.status["patriot"].status()
        self.assertEqual(status_["bridge"]["path"], "/dialler")
        self.assertEqual([link["url"] for link in status_["desktop"]],
                         ["wss://desktop-client-api.patriotsystems.com:9009/ws/dialler/v1", "ws://127.0.0.1:1/x"])
        self.assertEqual(list(status_["lines"]), ["1001"])  # both links share the extension's line
        self.assertIs(ctx.status["patriot"], svc)

    def test_unreadable_ca_file_is_a_configuration_error(self):
        from gateway.confschema import ConfigError
        from gateway.patriot.service import make_service

        ctx = self.context("[[patriot.desktop]]\napi_key = 'k'\nextension = '1001'\nca = '/nonexistent/ca.pem'\n")
        with self.assertRaises(ConfigError) as caught:
            make_service(ctx)
        self.assertIn("patriot.desktop[0].ca: cannot read certificates from '/nonexistent/ca.pem'", str(caught.exception))
