"""The lean audio path's direct socket send, on real loopback sockets: order, a full socket, TLS left alone.

The RFC 6455 cases (tests/test_rfc6455.py) run on a StringTransport, which is no TCP transport, so
:func:`gateway.wsaudio._send_now` never runs there; here a real server sends through it to a raw
client that reads frames with the RFC parser of tests/rfc6455_support.py.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer, protocol, tcp
from twisted.internet.task import deferLater

from gateway import wsaudio
from gateway.wsaudio import AudioFastPath
from gateway.wstimers import use_reactor
from tests.rfc6455_support import BINARY, CLIENT_HANDSHAKE, TEXT, parse_frames

TIMEOUT = 20


class _Sender(AudioFastPath, WebSocketServerProtocol):
    """On open, runs the test's ``script(self)``."""

    def onOpen(self):
        self.factory.opened.callback(self)


class _RawClient(protocol.Protocol):
    """Does the opening handshake by hand, then keeps every byte after the 101 response."""

    def __init__(self):
        self.buffer = b""
        self.handshaken = defer.Deferred()
        self.body = b""

    def connectionMade(self):
        self.transport.write(CLIENT_HANDSHAKE)

    def dataReceived(self, data):
        if not self.handshaken.called:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                assert self.buffer.startswith(b"HTTP/1.1 101"), self.buffer[:80]
                self.body = self.buffer[end + 4:]
                self.handshaken.callback(None)
            return
        self.body += data


@pytest.fixture
def server(reactor, cleanup):
    factory = use_reactor(WebSocketServerFactory(reactor=reactor), reactor)
    factory.protocol = _Sender
    factory.opened = defer.Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    cleanup(port.stopListening)
    return factory, port.getHost().port


@pytest.fixture
def reactor():
    from twisted.internet import reactor as global_reactor

    return global_reactor


@defer.inlineCallbacks
def _connect(reactor, server, cleanup):
    factory, port = server
    client = yield protocol.ClientCreator(reactor, _RawClient).connectTCP("127.0.0.1", port)
    cleanup(lambda: client.transport.abortConnection() if client.transport.connected else None)
    yield client.handshaken
    sender = yield factory.opened
    cleanup(lambda: sender.transport.abortConnection() if sender.transport.connected else None)
    return client, sender


@defer.inlineCallbacks
def _until(reactor, predicate, what):
    for _ in range(int(TIMEOUT / 0.01)):
        if predicate():
            return
        yield deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}; {predicate.__doc__ or ''}")


@pytest_twisted.inlineCallbacks
@pytest.mark.timeout(TIMEOUT)
def test_audio_goes_to_the_socket_at_once_and_keeps_its_order_with_buffered_text(reactor, server, cleanup):
    client, sender = yield _connect(reactor, server, cleanup)
    assert sender._direct and isinstance(sender.transport, tcp.Connection)
    transport = sender.transport
    assert all(hasattr(transport, name) for name in wsaudio.TRANSPORT)  # what _send_now reads of Twisted
    sender.sendAudio(b"\x01" * 320)
    assert not transport._tempDataBuffer and not transport.dataBuffer  # it went to the socket, not the buffer
    sender.sendMessage(b'{"event":"x"}', isBinary=False)  # Autobahn writes through the transport: buffered
    assert transport._tempDataBuffer
    sender.sendAudio(b"\x02" * 320)  # must queue behind the text, not overtake it
    sender.sendAudio(b"\x03" * 160)
    yield _until(reactor, lambda: len(client.body) >= 4 + 320 + 2 + 13 + 4 + 320 + 2 + 160, "the frames")
    frames = parse_frames(client.body)
    assert [(f.opcode, f.payload[:1], len(f.payload)) for f in frames] == [
        (BINARY, b"\x01", 320), (TEXT, b"{", 13), (BINARY, b"\x02", 320), (BINARY, b"\x03", 160)]
    assert all(f.fin and f.key is None for f in frames)
    assert sender.fast_out == 3


@pytest_twisted.inlineCallbacks
@pytest.mark.timeout(TIMEOUT)
def test_a_peer_that_stops_reading_gets_every_frame_in_order_once_it_reads_again(reactor, server, cleanup):
    client, sender = yield _connect(reactor, server, cleanup)
    import socket

    client.transport.pauseProducing()  # the peer stops reading: the socket buffers fill, sends go partial
    sender.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    client.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    frames = 600  # about 200 KB of audio frames, far more than the shrunk socket buffers hold
    for n in range(frames):
        sender.sendAudio(n.to_bytes(4, "big") + bytes(316))
    assert sender.transport._tempDataBuffer or sender.transport.dataBuffer  # the transport buffers the rest
    client.transport.resumeProducing()
    yield _until(reactor, lambda: len(client.body) >= frames * 324, f"every frame ({frames * 324} bytes)")
    got = parse_frames(client.body)
    assert [int.from_bytes(f.payload[:4], "big") for f in got] == list(range(frames))
    assert {len(f.payload) for f in got} == {320}


@pytest_twisted.inlineCallbacks
@pytest.mark.timeout(TIMEOUT)
def test_nothing_goes_to_the_socket_once_the_connection_closes(reactor, server, cleanup):
    client, sender = yield _connect(reactor, server, cleanup)
    sender.sendAudio(b"\x05" * 320)
    sender.transport.loseConnection()
    sender.sendAudio(b"\x06" * 320)  # disconnecting: never sent directly, the transport decides
    assert sender.transport._tempDataBuffer == [b"\x82\x7e\x01\x40" + b"\x06" * 320]
    yield _until(reactor, lambda: not client.transport.connected or len(client.body) >= 324, "the first frame")
    frames = parse_frames(client.body[:len(client.body) - len(client.body) % 324])
    assert frames[0].payload == b"\x05" * 320


def test_a_tls_transport_never_takes_the_direct_path():
    class FakeTLS(tcp.Connection):
        def __init__(self):  # no socket work: only the attributes the check reads
            self.TLS = True
            self.socket = object()

    sender = _Sender()
    sender.transport = FakeTLS()
    assert sender._direct is False
    plain = _Sender()
    plain.transport = object()  # not a TCP transport at all (e.g. a test's StringTransport)
    assert plain._direct is False


@pytest_twisted.inlineCallbacks
@pytest.mark.timeout(TIMEOUT)
def test_a_closed_connection_s_protocol_is_freed_without_a_garbage_collection(reactor, server, cleanup):
    """Autobahn fires ``is_closed`` with the protocol itself: the lean path lets go of it once fired, so an
    ended call's protocol is freed when Twisted drops it, not at Python's next full collection."""
    import gc
    import weakref

    factory, port = server
    client = yield protocol.ClientCreator(reactor, _RawClient).connectTCP("127.0.0.1", port)
    cleanup(lambda: client.transport.abortConnection() if client.transport.connected else None)
    yield client.handshaken
    sender = yield factory.opened
    factory.opened = None
    gc.collect()
    gc.disable()
    try:
        ref = weakref.ref(sender)
        closed = weakref.ref(sender.is_closed)  # not waited on: inlineCallbacks would reset its result
        del sender
        client.transport.loseConnection()
        yield _until(reactor, lambda: closed() is None or closed().called, "the server side's close")
        yield deferLater(reactor, 0.05, lambda: None)
        assert ref() is None
    finally:
        gc.enable()
