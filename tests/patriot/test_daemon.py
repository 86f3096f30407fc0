"""Both Patriot modes through the real daemon (``twistd -n gateway``) on loopback.

One daemon serves the module: its Dialler Bridge, where Patriot client simulators log in as alice
(extension 1001, plain password) or bob (1002, hashed password), and one Desktop API link to a
Patriot server simulator (extension 1003, trusted by its pinned fingerprint). Calls run on the
simulated phone network. The address lockout gets a daemon of its own, since every simulator
connects from 127.0.0.1, and so does the bridge on an ssl: listener (wss://, its certificate
trusted by the client simulator).
"""

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint

from gateway.patriot import hashpw
from gateway.sim import tlsutil
from gateway.sim.patriot_client import PatriotClientSim
from gateway.sim.patriot_server import HOSTNAME, PatriotServerSim
from gateway.testing import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0
ALICE = {"userName": "alice", "password": "pw-alice"}
BOB = {"userName": "bob", "password": "pw-bob"}
API_KEY = "desk-k3y"

CONFIG = """
[[extensions]]
id = "1001"
[[extensions]]
id = "1002"
[[extensions]]
id = "1003"

[[routes]]
did = "100"
to = "extension:1001"
[[routes]]
did = "103"
to = "extension:1003"

[pbx.sim]
phone_answer_delay = 0.2
ring_time = 0.3
audio = "silence"
rules = [{{match = "555000[0-9]", outcome = "busy", after = 0.3}}]

[patriot.bridge]
listen = "{bridge_listen}"
heartbeat_timeout = {heartbeat_timeout}
max_init_failures = {max_init_failures}
block_time = 60.0
users = [
  {{username = "alice", password = "pw-alice", extension = "1001"}},
  {{username = "bob", password = "{bob_hash}", extension = "1002"}},
]
"""

DESKTOP = """
[[patriot.desktop]]
url = "wss://{host}:{port}/ws/dialler/v1"
connect = "tcp:host=127.0.0.1:port={port}"
fingerprint = "{fingerprint}"
api_key = "{api_key}"
extension = "1003"
retry_initial = 0.2
retry_max = 0.5
"""


def wait(d, seconds=WAIT):
    return d.addTimeout(seconds, reactor)


@defer.inlineCallbacks
def poll(check, what, timeout=WAIT):
    """Ask the daemon (``check`` returns a Deferred of a truth value) until it says yes."""
    for _ in range(int(timeout / 0.1)):
        if (yield check()):
            return
        yield task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"no {what} within {timeout} s")


class Gateway:
    """A daemon with the bridge on a loopback port and, optionally, a Patriot server it links to."""

    def __init__(self, workdir, *, heartbeat_timeout=2.0, max_init_failures=100, desktop=True, bridge_tls=False):
        self.workdir = workdir
        self.bridge_url = None
        #: the bridge's own certificate when it listens on ssl: (wss://), trusted by the clients
        self.bridge_certificate = tlsutil.load_or_create(workdir / "bridge-cert", "localhost") if bridge_tls else None
        self.heartbeat_timeout = heartbeat_timeout
        self.max_init_failures = max_init_failures
        self.patriot = None
        if desktop:
            self.certificate = tlsutil.load_or_create(workdir / "patriot-cert", HOSTNAME)
            self.patriot = PatriotServerSim(reactor, API_KEY, self.certificate)
        self.patriot_port = free_port()
        self.daemon = None
        self.clients = []

    @defer.inlineCallbacks
    def start(self):
        bridge_port, admin = free_port(), free_port()
        tls = self.bridge_certificate
        if tls is None:
            bridge_listen, self.bridge_url = (f"tcp:{bridge_port}:interface=127.0.0.1",
                                              f"ws://127.0.0.1:{bridge_port}/dialler")
        else:
            bridge_listen = f"ssl:{bridge_port}:interface=127.0.0.1:privateKey={tls.key_path}:certKey={tls.cert_path}"
            self.bridge_url = f"wss://{tls.hostname}:{bridge_port}/dialler"
        config = CONFIG.format(bridge_listen=bridge_listen, heartbeat_timeout=self.heartbeat_timeout,
                               max_init_failures=self.max_init_failures,
                               bob_hash=hashpw.hash_password(BOB["password"]))
        if self.patriot is not None:
            yield self.listen_patriot()
            config += DESKTOP.format(host=HOSTNAME, port=self.patriot_port, fingerprint=self.certificate.fingerprint,
                                     api_key=API_KEY)
        self.daemon = GatewayProcess(reactor, self.workdir, GatewayProcess.config(admin, config))
        yield self.daemon.start(admin)

    def listen_patriot(self):
        return self.patriot.listen(TCP4ServerEndpoint(reactor, self.patriot_port, interface="127.0.0.1"))

    @defer.inlineCallbacks
    def stop(self):
        for client in self.clients:
            yield client.stop()
        if self.daemon is not None:
            yield self.daemon.stop()  # the exit status is the daemon's own business (tests/integration)
            assert "gateway stopped" in self.daemon.output
            assert "Traceback" not in self.daemon.output, self.daemon.output
        if self.patriot is not None:
            yield self.patriot.stop()

    def client(self, payload, *, path="/dialler", **options):
        """A Patriot client simulator logging in with ``payload``, stopped at the end."""
        options.setdefault("reconnect", False)
        if self.bridge_certificate is not None:
            options.setdefault("trust_root", self.bridge_certificate.trust_root())
        sim = PatriotClientSim(reactor, self.bridge_url.replace("/dialler", path), payload, **options)
        self.clients.append(sim)
        sim.start()
        return sim

    @defer.inlineCallbacks
    def logged_in(self, payload=ALICE, **options):
        sim = self.client(payload, **options)
        response = yield sim.wait_for("init-response", timeout=WAIT)
        assert response.success, response
        first = yield sim.wait_for("call-status-update", timeout=WAIT)
        assert not first.call_active
        return sim

    @defer.inlineCallbacks
    def text(self, path):
        response = yield treq.get(f"http://127.0.0.1:{self.daemon.admin_port}{path}", timeout=10)
        return (yield response.text())

    @defer.inlineCallbacks
    def live_calls(self, extension):
        _, body = yield self.daemon.api("GET", "/api/calls")
        return [call for call in body["calls"] if call["extension"] == extension]

    @defer.inlineCallbacks
    def desktop_up(self):
        metrics = yield self.text("/metrics")
        return 'gateway_patriot_desktop_up{link="0"} 1.0' in metrics


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    made = Gateway(tmp_path_factory.mktemp("patriot-daemon"))
    pytest_twisted.blockon(made.start())
    yield made
    pytest_twisted.blockon(made.stop())


def status_of(update):
    return update.call_active, update.outbound, update.caller_id


def next_status(sim, predicate=None):
    return sim.wait_for("call-status-update", predicate, timeout=WAIT)


# -- Patriot as client: the Dialler Bridge --------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_bridge_dial_answered_then_hung_up_from_patriot(gateway):
    sim = yield gateway.logged_in(ALICE)
    sim.dial("+5551234", "+555 (1234)")
    assert status_of((yield next_status(sim))) == (True, True, "+5551234")  # dialing
    assert status_of((yield next_status(sim))) == (True, True, "+5551234")  # answered
    (call,) = yield gateway.live_calls("1001")
    assert call["state"] == "TALKING"
    assert call["attributes"]["raw_number"] == "+555 (1234)"
    sim.request_status()
    assert status_of((yield next_status(sim))) == (True, True, "+5551234")
    sim.hangup()
    assert status_of((yield next_status(sim))) == (False, True, "+5551234")
    assert (yield gateway.live_calls("1001")) == []
    code, status = yield gateway.daemon.api("GET", "/api/status")
    assert code == 200 and status["patriot"]["lines"]["1001"]["callActive"] is False


@pytest_twisted.inlineCallbacks
def test_bridge_inbound_call_hung_up_by_the_far_end(gateway):
    sim = yield gateway.logged_in(ALICE)
    yield gateway.daemon.api("POST", "/api/sim/inbound", {"caller_id": "0299998888", "did": "100",
                                                          "hang_up_after": 0.5}, expect=201)
    assert status_of((yield next_status(sim))) == (True, False, "0299998888")  # ringing
    assert status_of((yield next_status(sim))) == (True, False, "0299998888")  # answered by the phone
    assert status_of((yield next_status(sim))) == (False, False, "0299998888")  # the caller hung up


@pytest_twisted.inlineCallbacks
def test_bridge_busy_number_ends_the_call(gateway):
    sim = yield gateway.logged_in(ALICE)
    sim.dial("5550001")
    assert status_of((yield next_status(sim))) == (True, True, "5550001")
    assert status_of((yield next_status(sim, lambda u: not u.call_active))) == (False, True, "5550001")


@pytest_twisted.inlineCallbacks
def test_bridge_same_user_twice_and_a_hashed_password(gateway):
    first = yield gateway.logged_in(ALICE)
    second = yield gateway.logged_in(ALICE)
    bob = yield gateway.logged_in(BOB)
    first.dial("5551234")
    for sim in (first, second):
        assert status_of((yield next_status(sim, lambda u: u.call_active))) == (True, True, "5551234")
    second.hangup()
    for sim in (first, second):
        assert status_of((yield next_status(sim, lambda u: not u.call_active))) == (False, True, "5551234")
    bob.request_status()
    assert not (yield next_status(bob)).call_active
    assert len(bob.messages("call-status-update")) == 2  # nothing of alice's call


@pytest_twisted.inlineCallbacks
def test_bridge_wrong_password_gets_success_false_and_cannot_dial(gateway):
    clock = task.Clock()  # heartbeats only when the test says
    sim = gateway.client({"userName": "bob", "password": "guess"}, clock=clock)
    response = yield sim.wait_for("init-response", timeout=WAIT)
    assert (response.success, response.error) == (False, "invalid user name or password")
    sim.dial("5551234")
    clock.advance(5.0)  # a heartbeat
    watcher = yield gateway.logged_in(BOB)  # messages on another connection get through
    watcher.request_status()
    yield next_status(watcher)
    assert (yield gateway.live_calls("1002")) == []
    yield sim.wait_for("heartbeat-response", timeout=WAIT)  # heartbeats are answered even so (spec 000)
    assert [r.type for r in sim.received] == ["init-response", "heartbeat-response"]


@pytest_twisted.inlineCallbacks
def test_bridge_heartbeats_are_answered_and_a_silent_connection_is_dropped(gateway):
    clock = task.Clock()
    sim = yield gateway.logged_in(ALICE, clock=clock)
    clock.advance(5.0)
    yield sim.wait_for("heartbeat-response", timeout=WAIT)
    clock.advance(5.0)
    yield sim.wait_for("heartbeat-response", timeout=WAIT)
    assert sim.heartbeat_responses == 2
    yield sim.wait_disconnected(timeout=WAIT)  # nothing more sent: dropped after heartbeat_timeout
    assert sim.protocol is None


@pytest_twisted.inlineCallbacks
def test_bridge_bad_input_leaves_other_sessions_alone(gateway):
    victim = yield gateway.logged_in(ALICE)
    bystander = yield gateway.logged_in(BOB)
    for raw in ['{"type": "dial-request"', "[]", '{"type": "sing"}', '{"type": "dial-request"}',
                '{"type": "dial-request", "payload": {"phoneNo": "12ab", "rawPhoneNo": "12ab"}}',
                '{"type": "dial-request", "payload": {"phoneNo": "", "rawPhoneNo": ""}}',
                '{"type": "dial-request", "payload": {"phoneNo": "' + "9" * 40 + '", "rawPhoneNo": "x"}}',
                b"\x00binary"]:
        victim.send_raw(raw)
    for _ in range(4):  # each invalid dial-request is answered with the status (no call)
        assert not (yield next_status(victim)).call_active
    victim.request_status()
    assert not (yield next_status(victim)).call_active
    assert (yield gateway.live_calls("1001")) == []
    victim.send_raw("x" * 70000)  # larger than max_message_size
    yield victim.wait_disconnected(timeout=WAIT)
    assert victim.closes[-1][0] == 1009
    bystander.request_status()
    assert not (yield next_status(bystander)).call_active
    assert bystander.protocol is not None


@pytest_twisted.inlineCallbacks
def test_bridge_refuses_another_path(gateway):
    sim = gateway.client(ALICE, path="/elsewhere")
    yield sim.wait_until(lambda: sim.closes or None, timeout=WAIT, what="refused handshake")
    assert sim.connections == 0
    assert "404" in str(sim.closes[0][1])


# -- Patriot as server: the Desktop API link -------------------------------------------------------


def updates(patriot, after, count):
    """The ``count`` call-status-updates the Patriot server receives after the first ``after``."""
    def check():
        new = patriot.status_updates[after:after + count]
        return [status_of(u) for u in new] if len(new) == count else None

    return patriot.wait_until(check, WAIT, f"{count} call-status-updates")


@pytest_twisted.inlineCallbacks
def test_desktop_link_dials_reports_inbound_and_is_ready(gateway):
    patriot = gateway.patriot
    yield poll(gateway.desktop_up, "desktop link up")
    yield wait(patriot.wait_authenticated())
    code, ready = yield gateway.daemon.api("GET", "/readyz", token=None)
    assert (code, ready) == (200, {"ready": True})
    seen = len(patriot.status_updates)
    patriot.dial("5551234", "555-1234")
    assert (yield updates(patriot, seen, 2)) == [(True, True, "5551234")] * 2  # dialing, answered
    patriot.hangup()
    assert (yield updates(patriot, seen + 2, 1)) == [(False, True, "5551234")]
    yield gateway.daemon.api("POST", "/api/sim/inbound", {"caller_id": "0811222333", "did": "103",
                                                          "hang_up_after": 0.3}, expect=201)
    assert (yield updates(patriot, seen + 3, 3)) == [(True, False, "0811222333")] * 2 + [(False, False, "0811222333")]


@pytest_twisted.inlineCallbacks
def test_desktop_link_reconnects_to_a_restarted_patriot(gateway):
    patriot = gateway.patriot
    yield poll(gateway.desktop_up, "desktop link up")
    successes = patriot.auth_successes
    yield patriot.stop()

    @defer.inlineCallbacks
    def down():
        code, body = yield gateway.daemon.api("GET", "/readyz", token=None)
        return code == 503 and "patriot-desktop:0" in body["not_ready"]

    yield poll(down, "desktop link down in /readyz")
    assert not (yield gateway.desktop_up())
    yield gateway.listen_patriot()
    yield wait(patriot.wait_authenticated())
    yield poll(gateway.desktop_up, "desktop link up again")
    assert patriot.auth_successes == successes + 1
    assert patriot.auth_failures == 0


# -- the lockout, on a daemon of its own ---------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_bridge_refuses_an_address_after_too_many_failed_inits(tmp_path):
    gateway = Gateway(tmp_path, max_init_failures=2, desktop=False)
    yield gateway.start()
    try:
        first = gateway.client({"userName": "alice", "password": "guess-1"})
        yield first.wait_for("init-response", timeout=WAIT)
        second = gateway.client({"userName": "alice", "password": "guess-2"})
        response = yield second.wait_for("init-response", timeout=WAIT)
        assert not response.success
        yield second.wait_disconnected(timeout=WAIT)
        assert second.closes[-1][0] == 4008
        yield first.wait_disconnected(timeout=WAIT)  # every unauthenticated connection of the address
        assert first.closes[-1][0] == 4008
        third = gateway.client(ALICE)
        yield third.wait_until(lambda: third.closes or None, timeout=WAIT, what="refused handshake")
        assert third.connections == 0 and "403" in str(third.closes[0][1])
        status = yield gateway.daemon.api("GET", "/api/status")
        assert "127.0.0.1" in status[1]["patriot"]["bridge"]["blocked"]
    finally:
        yield gateway.stop()


@pytest_twisted.inlineCallbacks
def test_bridge_on_an_ssl_listener_is_wss(tmp_path):
    gateway = Gateway(tmp_path, desktop=False, bridge_tls=True)
    yield gateway.start()
    try:
        assert gateway.bridge_url.startswith("wss://")
        sim = yield gateway.logged_in(ALICE)
        sim.dial("5551234")
        assert status_of((yield next_status(sim))) == (True, True, "5551234")
        sim.hangup()
        assert status_of((yield next_status(sim, lambda u: not u.call_active))) == (False, True, "5551234")
    finally:
        yield gateway.stop()
