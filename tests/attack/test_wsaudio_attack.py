"""Raw WebSocket frames against the REAL daemon's OptimaCCS inbound listener (the lean audio path of
:mod:`gateway.wsaudio`): every payload length encoding, huge declared lengths, a wrong mask bit, a frame
split at every byte, a flood of tiny binary frames, audio before ``incoming_call`` and after the close.

Each case runs on its own connection and ends with the protocol's close code (or keeps the call up), the
daemon stays up and answers, and every call that began has its CDR.
"""

import base64
import json
import os
import socket
import struct

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from gateway.testing import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(120)

ECHO_DID = "0210000200"


def reactor():
    from twisted.internet import reactor as global_reactor

    return global_reactor


def pause(seconds):
    return deferLater(reactor(), seconds, lambda: None)


def frame(opcode, payload, *, fin=True, masked=True, encoding=None, declared=None, rsv=0):
    """One frame; ``encoding`` 7/16/64 forces the length field (non-minimal too); ``declared`` lies about it."""
    length = len(payload) if declared is None else declared
    encoding = encoding or (7 if length < 126 else 16 if length < 1 << 16 else 64)
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if masked else 0
    if encoding == 7:
        head += bytes([bit | length])
    elif encoding == 16:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWS:
    """A blocking WebSocket client speaking raw frames (short timeouts: the daemon is another process)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = head.split(b"\r\n\r\n", 1)[1]

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _read(self, timeout):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return None
        except OSError:
            return b""
        return chunk

    def frames(self):
        """The complete frames buffered so far: (opcode, payload)."""
        out = []
        while len(self.buffer) >= 2:
            length, start = self.buffer[1] & 0x7F, 2
            if length == 126:
                length, start = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif length == 127:
                length, start = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < start + length:
                break
            out.append((self.buffer[0] & 0x0F, self.buffer[start:start + length]))
            self.buffer = self.buffer[start + length:]
        return out

    async def until(self, predicate, timeout=5.0):
        """Read frames until ``predicate(opcode, payload)`` holds for one (returned) or the stream ends (None)."""
        deadline = reactor().seconds() + timeout
        seen = []
        while reactor().seconds() < deadline:
            for item in self.frames():
                seen.append(item)
                if predicate(*item):
                    return item
            chunk = self._read(0.05)
            if chunk == b"":
                return None
            if chunk:
                self.buffer += chunk
            else:
                await pause(0.02)
        raise AssertionError(f"nothing matched within {timeout} s; saw {[(o, p[:60]) for o, p in seen][-10:]}")

    async def close_code(self, timeout=5.0):
        item = await self.until(lambda opcode, payload: opcode == 8, timeout)
        if item is None:
            return None
        return struct.unpack("!H", item[1][:2])[0] if len(item[1]) >= 2 else 1005

    def close(self):
        self.sock.close()


def incoming_call(session):
    return json.dumps({"event": "incoming_call", "callerId": "0811", "didNumber": ECHO_DID,
                       "sessionId": session}).encode()


async def answered(port, session):
    ws = RawWS(port)
    ws.send(frame(1, incoming_call(session)))
    await ws.until(lambda opcode, payload: opcode == 1 and b'"answer"' in payload, 10)
    return ws


@pytest.fixture
def daemon(processes, tmp_path):
    async def start():
        admin, inbound = free_port(), free_port()
        config = GatewayProcess.config(admin, (
            f'[optimaccs]\nlisten = "tcp:{inbound}:interface=127.0.0.1"\ncdr_wait = 0.5\n\n'
            '[[extensions]]\nid = "1001"\ndevice = "sim"\n\n'
            f'[[routes]]\ndid = "{ECHO_DID}"\nto = "app:echo"\n'))
        proc = GatewayProcess(reactor(), tmp_path, config)
        processes.append(proc)
        await proc.start(admin)
        proc.inbound = inbound
        return proc

    return start


async def assert_alive(proc):
    _, health = await proc.api("GET", "/healthz", expect=200)
    assert health == {"status": "ok"}
    assert "Traceback" not in proc.output and "Unhandled" not in proc.output, proc.output[-5000:]


AUDIO = b"\xd5" * 160


@pytest_twisted.ensureDeferred
async def test_audio_before_the_call_and_bad_framing_get_their_close_codes(daemon):
    proc = await daemon()
    cases = [
        ("audio before incoming_call", frame(2, AUDIO), 1003),
        ("an unmasked client frame", frame(2, AUDIO, masked=False), 1002),
        ("a 64-bit length for 160 bytes (not minimal)", frame(2, AUDIO, encoding=64), 1002),
        ("a 16-bit length for 100 bytes (not minimal)", frame(2, AUDIO[:100], encoding=16), 1002),
        ("a declared length of 2^63-1", frame(2, b"", declared=(1 << 63) - 1), 1009),
        ("a declared length with the top bit set", frame(2, b"", declared=1 << 63), 1002),
        ("a declared 70000 past max_message_size (65536)", frame(2, b"", declared=70000) + b"\0" * 64, 1009),
        ("reserved bits", frame(2, AUDIO, rsv=4), 1002),
        ("a reserved opcode", frame(3, AUDIO), 1002),
        ("a fragmented control frame", frame(9, b"x", fin=False), 1002),
    ]
    for name, data, expected in cases:
        ws = RawWS(proc.inbound)
        if "audio before" not in name:
            ws.send(frame(1, incoming_call(f"bad-{len(name)}-{expected}")))
            await ws.until(lambda opcode, payload: opcode == 1 and b'"answer"' in payload, 10)
        ws.send(data)
        try:
            code = await ws.close_code()
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
        ws.close()
        assert code == expected, (name, code)
    await assert_alive(proc)


@pytest_twisted.ensureDeferred
async def test_every_length_encoding_and_a_frame_split_at_every_byte_are_echoed(daemon):
    proc = await daemon()
    ws = await answered(proc.inbound, "split")
    whole = frame(2, AUDIO)
    for payload in (AUDIO[:125], AUDIO, b"\xd5" * 320, b"\xd5" * 4000):
        ws.send(frame(2, payload))
    for cut in range(1, len(whole)):
        ws.send(whole[:cut])
        await pause(0.003)  # each piece its own segment (TCP_NODELAY is the sender's own business)
        ws.send(whole[cut:])
    for size in (1, 2, 3, 7):  # in runs of a few bytes
        for start in range(0, len(whole), size):
            ws.send(whole[start:start + size])
    got = []
    await ws.until(lambda opcode, payload: opcode == 2 and got.append(payload) is None and len(got) >= 50, 10)
    assert set(got) <= {b"\xd5" * len(p) for p in got}
    ws.send(frame(8, struct.pack("!H", 1000)))
    assert await ws.close_code() == 1000
    ws.close()
    await assert_alive(proc)


@pytest_twisted.ensureDeferred
async def test_a_flood_of_tiny_frames_and_frames_after_the_close_cost_no_log_line_each(daemon):
    proc = await daemon()
    lines_before = proc.output.count("\n")
    ws = await answered(proc.inbound, "flood")
    burst = b"".join(frame(2, b"\xd5") for _ in range(2000))
    for _ in range(10):  # 20000 one-byte frames
        ws.send(burst)
    ws.send(frame(1, b'{"event":"nonsense"}') * 200)  # unknown events: counted, logged rate-limited
    ws.send(frame(8, struct.pack("!H", 1000)) + burst + frame(1, b"{}") * 10)  # frames after our close
    code = await ws.close_code(timeout=15)
    ws.close()
    assert code == 1000, code
    other = await answered(proc.inbound, "after-flood")  # the listener still serves
    for _ in range(25):
        other.send(frame(2, AUDIO))
        await pause(0.02)
    await other.until(lambda opcode, payload: opcode == 2, 10)
    other.send(frame(8, struct.pack("!H", 1000)))
    await other.close_code()
    other.close()
    await pause(1.0)
    new_lines = proc.output.count("\n") - lines_before
    assert new_lines < 60, proc.output[-4000:]
    for _ in range(50):
        _, body = await proc.api("GET", "/api/cdrs?limit=100", expect=200)
        if len(body["cdrs"]) >= 2:
            break
        await pause(0.2)
    assert len(body["cdrs"]) == 2, body
    await assert_alive(proc)
