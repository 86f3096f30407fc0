"""What the admin site reads before a request reaches the router: body cap, token before body, deadline, connections.

In memory, the real :class:`~gateway.admin.site.AdminSite` builds its channels over ``StringTransport``
on a ``task.Clock``; at the end, the same over real loopback sockets.
"""

import os
import pathlib
import tempfile

import pytest
import pytest_twisted
from prometheus_client import generate_latest
from twisted.internet import defer, protocol, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.site import REFUSAL_LINGER, make_site
from gateway.config import ConfigError, loads
from gateway.confschema import Secret

from .test_site import TOKEN, make_context

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
BEARER = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
MiB = 1 << 20


class HalfClosingTransport(StringTransport):
    """A StringTransport that, like TCP, can close its writing side only."""

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


def status_of(data: bytes) -> int | None:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


class LimitsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.ctx = make_context(self.clock, self.mktemp())
        self.site = make_site(self.ctx, Secret(TOKEN))
        self.ctx.api.route("POST", "/api/echo", lambda request: {"bytes": len(request.raw.content.getvalue())})
        self.ctx.api.route("POST", "/echo", lambda request: {"bytes": len(request.raw.content.getvalue())})

    def connect(self, transport_class=HalfClosingTransport):
        channel = self.site.buildProtocol(PEER)
        transport = transport_class(peerAddress=PEER)
        channel.makeConnection(transport)
        return channel, transport

    def refused(self, reason: str) -> float:
        return self.ctx.metrics.get_sample_value("gateway_admin_refused_total", {"reason": reason}) or 0.0

    # -- the token and the cap, before the body --------------------------------------------------------

    def test_a_huge_body_without_the_token_is_a_401_before_any_of_it_is_read(self):
        channel, transport = self.connect()
        with capturedLogs() as events:
            channel.dataReceived(b"POST /api/status HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000000\r\n\r\n")
        self.assertEqual(status_of(transport.value()), 401)
        self.assertIn(b"WWW-Authenticate: Bearer", transport.value())
        self.assertIn(b"Connection: close", transport.value())
        self.assertTrue(transport.write_closed)
        request = channel.requests[-1]
        self.assertIsNone(request.content)  # no file, no buffer
        answered = len(transport.value())
        channel.dataReceived(b"A" * MiB)  # what the peer still sends is dropped unread
        self.assertEqual((len(transport.value()), request.content), (answered, None))
        # the router's own line for a refused token, naming the peer
        [line] = [e for e in events if "bearer" in str(e.get("reason", ""))]
        self.assertEqual((line["peer"], line["path"]), ("192.0.2.7:40000", "/api/status"))
        self.assertEqual(self.refused("unauthorized_body"), 1)

    def test_a_wrong_token_or_a_chunked_body_without_one_is_a_401_too(self):
        for head in (b"Authorization: Bearer nope\r\nContent-Length: 10\r\n", b"Transfer-Encoding: chunked\r\n"):
            channel, transport = self.connect()
            channel.dataReceived(b"POST /api/echo HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
            self.assertEqual(status_of(transport.value()), 401, head)
            self.assertIsNone(channel.requests[-1].content)

    def test_a_declared_body_over_the_cap_is_a_413_before_it_is_read(self):
        for path in (b"/api/echo", b"/echo"):
            channel, transport = self.connect()
            with capturedLogs() as events:
                channel.dataReceived(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + BEARER
                                     + b"Content-Length: %d\r\n\r\n" % (MiB + 1))
            self.assertEqual(status_of(transport.value()), 413, path)
            self.assertIsNone(channel.requests[-1].content)
            [line] = [e for e in events if e.get("problem")]
            self.assertEqual(line["peer"], "192.0.2.7:40000")
            self.assertIn(f"a declared body of {MiB + 1} bytes", line["problem"])
        self.assertEqual(self.refused("body_too_large"), 2)

    def test_a_body_at_the_cap_is_taken_in_memory(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST /api/echo HTTP/1.1\r\nHost: x\r\n" + BEARER + b"Content-Length: %d\r\n\r\n" % MiB)
        self.assertNotIsInstance(channel.requests[-1].content, type(tempfile.TemporaryFile()))
        channel.dataReceived(b"x" * MiB)
        self.assertEqual(status_of(transport.value()), 200)
        self.assertTrue(transport.value().endswith(b'{"bytes": %d}' % MiB))
        self.assertFalse(transport.write_closed or transport.disconnecting)

    def test_a_chunked_body_is_cut_with_a_413_when_it_passes_the_cap(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST /api/echo HTTP/1.1\r\nHost: x\r\n" + BEARER + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"c" * 0x10000 + b"\r\n"
        for _ in range(16):  # exactly the cap: still taken
            channel.dataReceived(chunk)
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(chunk)
        self.assertEqual(status_of(transport.value()), 413)
        self.assertLessEqual(len(channel.requests[-1].content.getvalue()), MiB)
        answered = len(transport.value())
        channel.dataReceived(chunk * 4)
        self.assertEqual(len(transport.value()), answered)

    def test_a_chunked_body_within_the_cap_is_taken(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST /api/echo HTTP/1.1\r\nHost: x\r\n" + BEARER + b"Transfer-Encoding: chunked\r\n\r\n"
                             + b"3\r\nabc\r\n0\r\n\r\n")
        self.assertTrue(transport.value().endswith(b'{"bytes": 3}'))

    def test_the_cap_is_the_configured_one(self):
        self.ctx = make_context(self.clock, self.mktemp())
        self.ctx.config = loads('[admin]\nmax_body_size = 2048\n', "t.toml")
        self.site = make_site(self.ctx, Secret(TOKEN))
        channel, transport = self.connect()
        channel.dataReceived(b"POST /api/x HTTP/1.1\r\nHost: x\r\n" + BEARER + b"Content-Length: 2049\r\n\r\n")
        self.assertEqual(status_of(transport.value()), 413)
        self.assertIn(b"larger than 2048 bytes", transport.value())

    def test_a_refused_connection_is_cut_after_the_linger(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST /api/status HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
        channel.dataReceived(b"B" * MiB)  # read and dropped, up to max_body_size ...
        self.assertEqual(transport.producerState, "producing")
        channel.dataReceived(b"B")  # ... then reading stops until the cut
        self.assertEqual(transport.producerState, "paused")
        self.clock.advance(REFUSAL_LINGER - 0.1)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)  # aborted
        channel.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_without_half_close_the_connection_is_closed(self):
        channel, transport = self.connect(StringTransport)
        channel.dataReceived(b"POST /api/status HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n")
        self.assertEqual(status_of(transport.value()), 401)
        self.assertTrue(transport.disconnecting)

        # without a body it is the router's usual 401, and the connection stays open
        channel, transport = self.connect()
        channel.dataReceived(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status_of(transport.value()), 401)
        self.assertNotIn(b"Connection: close", transport.value())
        self.assertFalse(transport.write_closed or transport.disconnecting)
        self.assertEqual(self.refused("unauthorized_body"), 1)  # only the one with a body

    # -- the request deadline ---------------------------------------------------------------------------

    def test_headers_trickled_in_are_cut_with_a_408_at_the_deadline(self):
        channel, transport = self.connect()
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")
        with capturedLogs() as events:
            for i in range(5):  # a header line every 5 s keeps the idle timeout away, not the deadline
                self.clock.advance(5)
                channel.dataReceived(b"X-a%d: b\r\n" % i)
            self.assertEqual(transport.value(), b"")
            self.clock.advance(5)
        self.assertEqual(status_of(transport.value()), 408)
        self.assertTrue(transport.write_closed)
        [line] = [e for e in events if e.get("problem")]
        self.assertIn("not in whole within 30 s", line["problem"])
        self.assertEqual(self.refused("request_timeout"), 1)

    def test_a_body_trickled_in_is_cut_at_the_deadline_counted_from_the_first_byte(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST /api/echo HTTP/1.1\r\n")
        self.clock.advance(20)
        channel.dataReceived(b"Host: x\r\n" + BEARER + b"Content-Length: 100\r\n\r\n")
        for _ in range(9):
            self.clock.advance(1)
            channel.dataReceived(b"a")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(1)
        self.assertEqual(status_of(transport.value()), 408)

    def test_a_byte_at_a_time_request_line_is_cut_too(self):
        channel, transport = self.connect()
        for byte in b"GET /healthz":
            channel.dataReceived(bytes([byte]))
            self.clock.advance(5)
        self.assertEqual(status_of(transport.value()), 408)

    def test_a_request_in_time_and_its_long_answer_are_not_cut_the_next_request_has_its_own_deadline(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST /api/echo HTTP/1.1\r\nHost: x\r\n" + BEARER + b"Content-Length: 2\r\n\r\n")
        self.clock.advance(29)
        channel.dataReceived(b"{}")
        self.assertEqual(status_of(transport.value()), 200)
        self.clock.advance(31)
        self.assertNotIn(b"408", transport.value())
        # the next request on the connection gets its own deadline
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")
        self.clock.advance(29.9)
        channel.dataReceived(b"Host: x\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertNotIn(b"408", transport.value())
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")
        self.clock.advance(30)
        self.assertIn(b"HTTP/1.1 408", transport.value())

    def test_a_pipelined_request_gets_its_deadline_once_the_first_is_answered(self):
        channel, transport = self.connect()
        hold = defer.Deferred()
        self.ctx.api.route("GET", "/slow", lambda request: hold)
        channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n")
        self.clock.advance(60)  # the first is being answered: no deadline runs meanwhile
        self.assertEqual(transport.value(), b"")
        hold.callback({"slow": True})
        self.assertEqual(transport.value().count(b"HTTP/1.1 200"), 1)
        self.clock.advance(30)
        self.assertEqual(status_of(transport.value().rpartition(b"HTTP/1.1 ")[1]
                                   + transport.value().rpartition(b"HTTP/1.1 ")[2]), 408)

    def test_the_deadline_is_the_configured_one(self):
        self.ctx = make_context(self.clock, self.mktemp())
        self.ctx.config = loads('[admin]\nrequest_timeout = 2.5\n', "t.toml")
        self.site = make_site(self.ctx, Secret(TOKEN))
        channel, transport = self.connect()
        channel.dataReceived(b"GET /")
        self.clock.advance(2.4)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(status_of(transport.value()), 408)

        # a connection lost before its deadline leaves no timer
        lingering = self.clock.getDelayedCalls()
        channel, transport = self.connect()
        channel.dataReceived(b"GET /")
        channel.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), lingering)

    # -- connections ------------------------------------------------------------------------------------

    def test_past_max_connections_a_connection_gets_a_503_and_is_closed(self):
        self.ctx.config = loads('[admin]\nmax_connections = 2\n', "t.toml")
        self.site = make_site(self.ctx, Secret(TOKEN))
        (first, _), (second, _) = self.connect(), self.connect()
        self.assertEqual(self.site.open_channels, 2)
        with capturedLogs() as events:
            busy, transport = self.connect()
        self.assertEqual(status_of(transport.value()), 503)
        self.assertIn(b"Retry-After", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertIn("2 connections are open", [e for e in events if e.get("problem")][0]["problem"])
        self.assertEqual(self.refused("too_many_connections"), 1)
        first.connectionLost(None)
        self.assertEqual(self.site.open_channels, 1)
        third, transport = self.connect()
        third.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status_of(transport.value()), 200)

    def test_refusals_are_logged_rate_limited_and_all_counted(self):
        with capturedLogs() as events:
            for _ in range(50):  # fifty slow senders at once
                self.connect()[0].dataReceived(b"GET /")
            self.clock.advance(30)
            self.site.stopFactory()
        lines = [e for e in events if e.get("problem")]
        self.assertEqual(len(lines), 6)  # five one by one, then a summary of the rest
        self.assertEqual(lines[-1]["count"], 45)
        self.assertEqual(self.refused("request_timeout"), 50)
        self.assertIn(b'gateway_admin_refused_total{reason="request_timeout"} 50.0', generate_latest(self.ctx.metrics))

    def test_limits_are_checked_when_the_configuration_loads(self):
        for text, key in (("max_body_size = 0", "admin.max_body_size"), ("request_timeout = 0", "admin.request_timeout"),
                          ("request_timeout = nan", "admin.request_timeout"),
                          ("max_connections = 0", "admin.max_connections")):
            with self.assertRaises(ConfigError) as caught:
                loads(f"[admin]\n{text}\n", "t.toml")
            self.assertEqual(caught.exception.path, key, text)
            self.assertIn("must be between", caught.exception.problem)


# -- over real loopback sockets ------------------------------------------------------------------------


class Peer(protocol.Protocol):
    def __init__(self):
        self.received = b""
        self.got = defer.Deferred()
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.received += data
        if b"\r\n\r\n" in self.received and not self.got.called:
            self.got.callback(self.received)

    def connectionLost(self, reason):
        self.closed.callback(self.received)


def temp_files() -> set[str]:
    """This process's open files in the temporary directory (twisted.web's request bodies went there)."""
    tmp = pathlib.Path(tempfile.gettempdir()).resolve()
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(tmp)):
            found.add(target)
    return found


@pytest.fixture
def site_port(tmp_path):
    from twisted.internet import reactor

    ctx = make_context(reactor, tmp_path)
    site = make_site(ctx, Secret(TOKEN))
    site.request_timeout = 1.0
    ctx.api.route("POST", "/api/echo", lambda request: {"bytes": len(request.raw.content.getvalue())})
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield port.getHost().port
    pytest_twisted.blockon(port.stopListening())


async def open_peer(port: int) -> Peer:
    from twisted.internet import reactor

    peer = Peer()
    await protocol.ClientCreator(reactor, lambda: peer).connectTCP("127.0.0.1", port)
    return peer


async def within(d, seconds: float):
    from twisted.internet import reactor

    return await d.addTimeout(seconds, reactor)


@pytest_twisted.ensureDeferred
async def test_real_socket_4gb_without_token_is_answered_before_any_body_byte(site_port):
    before = temp_files()  # pytest's own capture files
    for head, status in ((b"", b"401"), (BEARER, b"413")):
        peer = await open_peer(site_port)
        peer.transport.write(b"POST /api/echo HTTP/1.1\r\nHost: x\r\n" + head + b"Content-Length: 4000000000\r\n\r\n")
        answer = await within(peer.got, 5)  # no body byte was sent: nothing can have been buffered
        assert answer.startswith(b"HTTP/1.1 " + status)
        peer.transport.write(b"B" * MiB)  # read and dropped while the gateway lingers
        assert temp_files() == before
        assert (await within(peer.closed, 10)).startswith(b"HTTP/1.1 " + status)


@pytest_twisted.ensureDeferred
async def test_real_socket_a_body_under_the_cap_goes_to_no_file(site_port):
    from twisted.internet import reactor

    before = temp_files()  # pytest's own capture files
    peer = await open_peer(site_port)
    peer.transport.write(b"POST /api/echo HTTP/1.1\r\nHost: x\r\n" + BEARER + b"Content-Length: 500000\r\n\r\n"
                         + b"x" * 300000)
    await task.deferLater(reactor, 0.2)
    assert temp_files() == before  # twisted.web would have opened a temporary file for a body over 100,000 bytes
    peer.transport.write(b"x" * 200000)
    assert (await within(peer.got, 5)).startswith(b"HTTP/1.1 200")
    peer.transport.loseConnection()
    await peer.closed


@pytest_twisted.ensureDeferred
async def test_real_socket_a_slow_sender_is_cut_at_the_deadline(site_port):
    from twisted.internet import reactor

    peer = await open_peer(site_port)
    peer.transport.write(b"POST /api/echo HTTP/1.1\r\nHost: x\r\n")
    start = reactor.seconds()
    trickle = task.LoopingCall(lambda: peer.transport.write(b"X-a: b\r\n"))
    trickle.clock = reactor
    trickle.start(0.2)
    try:
        answer = await within(peer.closed, 5)
    finally:
        trickle.stop()
    assert answer.startswith(b"HTTP/1.1 408")
    assert 0.9 <= reactor.seconds() - start < 4
