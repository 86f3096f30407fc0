"""The Socket.IO client against real servers over loopback.

Every test runs against python-socketio (aiohttp) and, when ``node`` and the ``socket.io`` npm
package are installed, against the reference Node.js server too (see conftest.py).
"""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

SERVER_EVENTS = ("greet", "answer", "blob")
ANSWERS = {"question": lambda text: f"answer to {text}"}


@pytest.fixture(params=["python", "node"])
def server_kind(request):
    return request.getfixturevalue(f"{request.param}_echo_server")


@pytest.fixture
def start_server(server_kind, server_launcher):
    """``start(port=0, ping_interval=25, ping_timeout=20) -> Deferred[url]``."""

    def start(port=0, ping_interval=25.0, ping_timeout=20.0):
        started = server_launcher(server_kind.argv(port, ping_interval, ping_timeout), server_kind.env)
        return started.addCallback(lambda process: (f"http://127.0.0.1:{process.port}", process))

    return start


@pytest_twisted.inlineCallbacks
def test_connect_and_emit_with_ack(start_server, socketio_client):
    url, _ = yield start_server()
    client, recorder = socketio_client(url)
    yield recorder.wait("connected")
    assert client.connected
    assert (yield client.emit("echo", 1, "two", {"three": [3.5, None, True]})) == [1, "two", {"three": [3.5, None, True]}]
    assert (yield client.emit("echo")) == []


@pytest_twisted.inlineCallbacks
def test_auth_payload(start_server, socketio_client):
    url, _ = yield start_server()
    client, recorder = socketio_client(url, auth={"token": "good"})
    yield recorder.wait("connected")
    assert (yield client.emit("whoami")) == [{"token": "good"}]


@pytest_twisted.inlineCallbacks
def test_refused_namespace_is_logged(start_server, socketio_client):
    url, _ = yield start_server()
    refused = defer.Deferred()

    def observe(event):
        if "refused namespace" in event.get("log_format", "") and not refused.called:
            refused.callback(event)

    globalLogPublisher.addObserver(observe)
    try:
        client, recorder = socketio_client(url, auth={"token": "bad"})
        event = yield refused.addTimeout(15.0, reactor)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert event["error"]["message"] == "bad token"
    assert not client.connected
    assert recorder.seen["connected"] == []


@pytest_twisted.inlineCallbacks
def test_server_events_with_and_without_ack(start_server, socketio_client):
    url, _ = yield start_server()
    client, recorder = socketio_client(url, record=SERVER_EVENTS, answer=ANSWERS)
    yield recorder.wait("connected")
    assert (yield client.emit("trigger")) == [True]
    yield recorder.wait("blob")
    assert recorder.seen["greet"] == [({"hello": "world"},)]
    assert recorder.seen["answer"] == [("answer to life",)]
    assert recorder.seen["blob"] == [({"name": "x", "payload": b"\x00\x01\xff"},)]


@pytest_twisted.inlineCallbacks
def test_binary_attachments_both_ways(start_server, socketio_client):
    url, _ = yield start_server()
    client, recorder = socketio_client(url)
    yield recorder.wait("connected")
    payload = bytes(range(256))
    assert (yield client.emit("echo", payload, {"nested": [b"", b"\xff"]})) == [payload, {"nested": [b"", b"\xff"]}]


@pytest_twisted.inlineCallbacks
def test_heartbeat_keeps_the_link_past_several_ping_intervals(server_kind, start_server, socketio_client):
    # The server pings every 0.2 s (python-engineio: 1 s, since it announces a fraction truncated to
    # whole seconds, and the client refuses a pingInterval of 0) and drops a client that stays
    # silent for interval + timeout; the client drops a link that is silent for pingInterval + pingTimeout.
    interval = 0.2 if server_kind.name == "node" else 1.0
    url, _ = yield start_server(ping_interval=interval, ping_timeout=1.0)
    client, recorder = socketio_client(url)
    yield recorder.wait("connected")
    yield deferLater(reactor, 10 * interval, lambda: None)
    assert recorder.seen["disconnected"] == []
    assert len(recorder.seen["connected"]) == 1
    assert (yield client.emit("echo", "still here")) == ["still here"]


@pytest_twisted.inlineCallbacks
def test_server_side_disconnect_reconnects(start_server, socketio_client):
    url, _ = yield start_server()
    client, recorder = socketio_client(url)
    yield recorder.wait("connected")
    client.send("kick")
    yield recorder.wait("disconnected")
    yield recorder.wait("connected", 2)
    assert (yield client.emit("echo", 2)) == [2]


@pytest_twisted.inlineCallbacks
def test_reconnect_after_the_server_restarts(start_server, socketio_client):
    url, server = yield start_server()
    client, recorder = socketio_client(url)
    yield recorder.wait("connected")
    yield server.kill()
    yield recorder.wait("disconnected")
    assert not client.connected
    yield start_server(port=server.port)
    assert (yield recorder.wait("connected", 2)) == [client, client]
    assert (yield client.emit("echo", "again")) == ["again"]
