"""The Socket.IO client against real servers over loopback.

Every test runs against python-socketio (aiohttp) and, when ``node`` and the ``socket.io`` npm
package are installed, against the reference Node.js server too.
"""

from collections import defaultdict

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from gateway.chat.socketio import CallbackHandler, SocketIOClient

WAIT = 15.0


def within(d: defer.Deferred, seconds: float = WAIT) -> defer.Deferred:
    return d.addTimeout(seconds, reactor)


class Recorder:
    """Records what the client reports; ``wait(name, count)`` fires once it has seen that many."""

    def __init__(self):
        self.seen = defaultdict(list)
        self._waiters = defaultdict(list)
        self.handler = CallbackHandler(
            events={
                "greet": lambda *args: self.note("greet", args),
                "answer": lambda *args: self.note("answer", args),
                "blob": lambda *args: self.note("blob", args),
                "question": lambda text: f"answer to {text}",
            },
            connected=lambda client: self.note("connected", client),
            disconnected=lambda client, reason: self.note("disconnected", reason),
        )

    def note(self, name, value):
        self.seen[name].append(value)
        ready = [(count, d) for count, d in self._waiters[name] if len(self.seen[name]) >= count]
        for entry in ready:
            self._waiters[name].remove(entry)
            entry[1].callback(self.seen[name])

    def wait(self, name, count=1) -> defer.Deferred:
        if len(self.seen[name]) >= count:
            return defer.succeed(self.seen[name])
        d = defer.Deferred()
        self._waiters[name].append((count, d))
        return within(d)


@pytest.fixture(params=["python", "node"])
def server_kind(request):
    return request.getfixturevalue(f"{request.param}_echo_server")


def start_server(launcher, kind, port=0, ping_interval=25.0, ping_timeout=20.0):
    return launcher(kind.argv(port, ping_interval, ping_timeout), kind.env)


def make_client(port, recorder, **options):
    return SocketIOClient(
        reactor,
        TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        f"http://127.0.0.1:{port}",
        recorder.handler,
        retry_policy=lambda attempt: 0.2,
        ack_timeout=WAIT,
        **options,
    )


@pytest_twisted.inlineCallbacks
def test_connect_and_emit_with_ack(server_kind, server_launcher, service_runner):
    server = yield start_server(server_launcher, server_kind)
    recorder = Recorder()
    client = service_runner(make_client(server.port, recorder))
    yield within(client.when_connected())
    assert recorder.seen["connected"] == [client]
    assert (yield client.emit("echo", 1, "two", {"three": [3.5, None, True]})) == [1, "two", {"three": [3.5, None, True]}]
    assert (yield client.emit("echo")) == []


@pytest_twisted.inlineCallbacks
def test_auth_payload(server_kind, server_launcher, service_runner):
    server = yield start_server(server_launcher, server_kind)
    client = service_runner(make_client(server.port, Recorder(), auth={"token": "good"}))
    yield within(client.when_connected())
    assert (yield client.emit("whoami")) == [{"token": "good"}]


@pytest_twisted.inlineCallbacks
def test_refused_namespace_is_logged(server_kind, server_launcher, service_runner):
    server = yield start_server(server_launcher, server_kind)
    refused = defer.Deferred()

    def observe(event):
        if "refused namespace" in event.get("log_format", "") and not refused.called:
            refused.callback(event)

    globalLogPublisher.addObserver(observe)
    try:
        recorder = Recorder()
        client = service_runner(make_client(server.port, recorder, auth={"token": "bad"}))
        event = yield within(refused)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert event["error"]["message"] == "bad token"
    assert not client.connected
    assert recorder.seen["connected"] == []


@pytest_twisted.inlineCallbacks
def test_server_events_with_and_without_ack(server_kind, server_launcher, service_runner):
    server = yield start_server(server_launcher, server_kind)
    recorder = Recorder()
    client = service_runner(make_client(server.port, recorder))
    yield within(client.when_connected())
    assert (yield client.emit("trigger")) == [True]
    yield recorder.wait("blob")
    assert recorder.seen["greet"] == [({"hello": "world"},)]
    assert recorder.seen["answer"] == [("answer to life",)]
    assert recorder.seen["blob"] == [({"name": "x", "payload": b"\x00\x01\xff"},)]


@pytest_twisted.inlineCallbacks
def test_binary_attachments_both_ways(server_kind, server_launcher, service_runner):
    server = yield start_server(server_launcher, server_kind)
    client = service_runner(make_client(server.port, Recorder()))
    yield within(client.when_connected())
    payload = bytes(range(256))
    assert (yield client.emit("echo", payload, {"nested": [b"", b"\xff"]})) == [payload, {"nested": [b"", b"\xff"]}]


@pytest_twisted.inlineCallbacks
def test_heartbeat_keeps_the_link_past_several_ping_intervals(server_kind, server_launcher, service_runner):
    # The server pings every 0.2 s and drops a client that stays silent for 1.2 s.
    server = yield start_server(server_launcher, server_kind, ping_interval=0.2, ping_timeout=1.0)
    recorder = Recorder()
    client = service_runner(make_client(server.port, recorder))
    yield within(client.when_connected())
    yield deferLater(reactor, 2.0, lambda: None)
    assert recorder.seen["disconnected"] == []
    assert len(recorder.seen["connected"]) == 1
    assert (yield client.emit("echo", "still here")) == ["still here"]


@pytest_twisted.inlineCallbacks
def test_server_side_disconnect_reconnects(server_kind, server_launcher, service_runner):
    server = yield start_server(server_launcher, server_kind)
    recorder = Recorder()
    client = service_runner(make_client(server.port, recorder))
    yield within(client.when_connected())
    client.send("kick")
    yield recorder.wait("disconnected")
    yield recorder.wait("connected", 2)
    assert (yield client.emit("echo", 2)) == [2]


@pytest_twisted.inlineCallbacks
def test_reconnect_after_the_server_restarts(server_kind, server_launcher, service_runner):
    server = yield start_server(server_launcher, server_kind)
    recorder = Recorder()
    client = service_runner(make_client(server.port, recorder))
    yield within(client.when_connected())
    yield server.kill()
    yield recorder.wait("disconnected")
    assert not client.connected
    yield start_server(server_launcher, server_kind, port=server.port)
    connected = yield recorder.wait("connected", 2)
    assert connected == [client, client]
    assert (yield client.emit("echo", "again")) == ["again"]
