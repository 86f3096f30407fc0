"""OptimaCCS echo benchmark: the daemon's CPU per echoed frame, echo latency and loss, against two floors.

``python -m bench optimaccs-echo [--calls 200] [--seconds 10] [--warmup 2]`` runs, one after another and
with the same load generator (this process):

- **gateway**: the real daemon (``twistd -n gateway``) with ``[optimaccs]`` on a loopback port and a
  DID routed to ``app:echo``; each connection sends ``incoming_call`` and streams once answered;
- **autobahn**: a minimal Autobahn WebSocket echo server (``onMessage`` -> ``sendMessage``);
- **tcp**: a plain Twisted TCP echo server (``dataReceived`` -> ``write``).

Each of ``--calls`` connections sends one 320-byte pcm16 frame (20 ms of 8 kHz audio) every 20 ms.
The generator is a lean hand-written WebSocket client (client frames masked with a zero key, so a frame
is its header plus the payload) so that it stays well below one core. Every frame carries its tick
number and send time; after the warm-up a window of ``--seconds`` is measured:

- CPU per echoed frame: the server process's own user+system time (``/proc/<pid>/stat``) over the
  window plus a short drain, divided by the frames of the window that came back;
- p50/p99 echo latency (send to receipt of the echo, in this process);
- frames lost: frames of the window sent but not echoed by the end of the drain.

The gateway's paced playout adds up to one frame time (20 ms) by design: an echoed frame waits for its
slot in the leg's 20 ms schedule. The floors echo at once. ``--serve autobahn|tcp --port P`` runs one
floor server (used by the benchmark itself).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import struct
import sys
import tempfile
import time

from twisted.internet import defer, protocol, task
from twisted.internet.task import deferLater

FRAME = 320
TICK = 0.020
ECHO_DID = "0210000999"
DRAIN = 0.5
#: tick number and send time at the head of every frame; the rest is silence
_STAMP = struct.Struct("!Id")
_SILENCE = bytes(FRAME - _STAMP.size)
_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # any 16 bytes in base64 will do


# -- the load generator ------------------------------------------------------------------------------

class _Probe(protocol.Protocol):
    """One connection of the load generator: raw TCP records, or WebSocket frames (``websocket``)."""

    def __init__(self, run: "_Run", index: int, websocket: bool, greeting: bytes | None) -> None:
        self.run = run
        self.index = index
        self.websocket = websocket
        self.greeting = greeting
        self.ready = False
        self._buffer = bytearray()
        self._handshaken = not websocket
        self._header = bytes([0x82, 0xFE]) + struct.pack("!H", FRAME) + b"\0\0\0\0" if websocket else b""

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        if self.websocket:
            self.transport.write(
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        else:
            self._ready()

    def send_frame(self, tick: int, now: float) -> None:
        self.transport.write(self._header + _STAMP.pack(tick, now) + _SILENCE)

    def _ready(self) -> None:
        self.ready = True
        self.run.connection_ready()

    def _send_text(self, text: bytes) -> None:
        self.transport.write(bytes([0x81, 0x80 | len(text)]) + b"\0\0\0\0" + text if len(text) < 126 else
                             bytes([0x81, 0xFE]) + struct.pack("!H", len(text)) + b"\0\0\0\0" + text)

    def dataReceived(self, data):
        buffer = self._buffer
        buffer += data
        if not self._handshaken:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.run.failed(f"connection {self.index}: handshake refused: {bytes(buffer[:80])!r}")
                self.transport.abortConnection()
                return
            del buffer[:end + 4]
            self._handshaken = True
            if self.greeting is None:
                self._ready()
            else:
                self._send_text(self.greeting)
        if self.websocket:
            self._frames(buffer)
        else:
            while len(buffer) >= FRAME:
                self.run.echoed(bytes(buffer[:_STAMP.size]))
                del buffer[:FRAME]

    def _frames(self, buffer: bytearray) -> None:
        while len(buffer) >= 2:
            opcode, length, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, start = struct.unpack_from("!H", buffer, 2)[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, start = struct.unpack_from("!Q", buffer, 2)[0], 10
            if len(buffer) < start + length:
                return
            payload = bytes(buffer[start:start + length])
            del buffer[:start + length]
            if opcode == 2:
                self.run.echoed(payload[:_STAMP.size])
            elif opcode == 1 and not self.ready and b'"answer"' in payload:
                self._ready()
            elif opcode == 9:  # ping: pong with the same payload
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)


class _Run:
    """One measured run against one server: connections, the ticker, the counters."""

    def __init__(self, reactor, calls: int) -> None:
        self.reactor = reactor
        self.calls = calls
        self.probes: list[_Probe] = []
        self.tick = 0
        self.window = (0, 0)  # ticks [first, end) measured
        self.latencies: list[float] = []
        self.received = 0
        self._all_ready = defer.Deferred()
        self._ready = 0

    def connection_ready(self) -> None:
        self._ready += 1
        if self._ready == self.calls:
            self._all_ready.callback(None)

    def failed(self, reason: str) -> None:
        if not self._all_ready.called:
            self._all_ready.errback(RuntimeError(reason))

    def echoed(self, stamp: bytes) -> None:
        tick, sent = _STAMP.unpack(stamp)
        first, end = self.window
        if first <= tick < end:
            self.received += 1
            self.latencies.append(time.perf_counter() - sent)

    def send(self) -> None:
        now = time.perf_counter()
        tick = self.tick
        for probe in self.probes:
            probe.send_frame(tick, now)
        self.tick += 1

    @defer.inlineCallbacks
    def measure(self, port: int, websocket: bool, greeting, server_pid: int, warmup: float, seconds: float):
        for index in range(self.calls):
            creator = protocol.ClientCreator(self.reactor, _Probe, self, index, websocket,
                                             greeting(index) if greeting else None)
            self.probes.append((yield creator.connectTCP("127.0.0.1", port)))
        yield self._all_ready
        ticker = task.LoopingCall(self.send)
        ticker.clock = self.reactor
        ticker.start(TICK)
        yield deferLater(self.reactor, warmup, lambda: None)
        cpu_before, own_before, wall_before = _cpu_seconds(server_pid), time.process_time(), time.perf_counter()
        self.window = (self.tick, 1 << 32)
        yield deferLater(self.reactor, seconds, lambda: None)
        self.window = (self.window[0], self.tick)
        ticker.stop()
        yield deferLater(self.reactor, DRAIN, lambda: None)
        cpu = _cpu_seconds(server_pid) - cpu_before
        wall = time.perf_counter() - wall_before
        own = time.process_time() - own_before
        for probe in self.probes:
            probe.transport.abortConnection()
        sent = (self.window[1] - self.window[0]) * self.calls
        latencies = sorted(self.latencies)
        return {
            "sent": sent,
            "echoed": self.received,
            "lost": sent - self.received,
            "cpu_us_per_frame": cpu / max(1, self.received) * 1e6,
            "server_cpu_share": cpu / wall,
            "generator_cpu_share": own / wall,
            "p50_ms": _percentile(latencies, 0.50) * 1e3,
            "p99_ms": _percentile(latencies, 0.99) * 1e3,
        }


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the servers -------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@defer.inlineCallbacks
def _listening(reactor, port: int, timeout: float = 20.0):
    for _ in range(int(timeout / 0.05)):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        yield deferLater(reactor, 0.05, lambda: None)
    raise RuntimeError(f"nothing listens on port {port}")


class _Floor(protocol.ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        self.ended.callback(None)


@defer.inlineCallbacks
def _floor_server(reactor, kind: str):
    """Start ``--serve kind`` in a child process: (port, pid, stop)."""
    port = _free_port()
    child = _Floor()
    argv = [sys.executable, "-m", "bench.optimaccs_echo", "--serve", kind, "--port", str(port)]
    transport = reactor.spawnProcess(child, sys.executable, argv, env=os.environ, path=os.getcwd())
    yield _listening(reactor, port)

    def stop():
        transport.signalProcess("TERM")
        return child.ended

    return port, transport.pid, stop


@defer.inlineCallbacks
def _gateway(reactor, workdir: str):
    """Start the daemon with a DID routed to app:echo: (port, pid, stop)."""
    from gateway.testing import GatewayProcess, free_port

    admin, port = free_port(), free_port()
    config = GatewayProcess.config(admin, (
        f'[optimaccs]\nlisten = "tcp:{port}:interface=127.0.0.1"\nallow_from = ["127.0.0.1"]\n\n'
        f'[[routes]]\ndid = "{ECHO_DID}"\nto = "app:echo"\n'
    ))
    daemon = GatewayProcess(reactor, workdir, config)
    yield daemon.start(admin)

    def stop():
        return daemon.stop()

    return port, daemon.transport.pid, stop


def _incoming_call(index: int) -> bytes:
    return json.dumps({"event": "incoming_call", "callerId": f"bench{index}", "didNumber": ECHO_DID,
                       "sessionId": f"bench-{index}"}).encode()


# -- the benchmark -------------------------------------------------------------------------------------

SERVERS = ("gateway", "autobahn", "tcp")


@defer.inlineCallbacks
def _measure_all(reactor, options):
    results = {}
    with tempfile.TemporaryDirectory(prefix="optimaccs-echo-") as workdir:
        for kind in SERVERS:
            if kind == "gateway":
                port, pid, stop = yield _gateway(reactor, workdir)
            else:
                port, pid, stop = yield _floor_server(reactor, kind)
            try:
                run = _Run(reactor, options.calls)
                results[kind] = yield run.measure(port, kind != "tcp", _incoming_call if kind == "gateway" else None,
                                                  pid, options.warmup, options.seconds)
            finally:
                yield stop()
            sys.stderr.write(f"{kind}: {results[kind]}\n")
    return results


def report(results: dict, options) -> str:
    from bench.media_bench import machine

    lines = [
        f"Machine: {machine()}",
        f"{options.calls} connections x 50 frames/s of {FRAME} bytes, {options.warmup:g} s warm-up, "
        f"{options.seconds:g} s measured\n",
        "| server | CPU µs/echoed frame | x autobahn | x tcp | server CPU (of one core) | p50 ms | p99 ms "
        "| frames lost | generator CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    floors = results["autobahn"]["cpu_us_per_frame"], results["tcp"]["cpu_us_per_frame"]
    for kind, r in results.items():
        lines.append(
            f"| {kind} | {r['cpu_us_per_frame']:,.1f} | {r['cpu_us_per_frame'] / floors[0]:.1f} "
            f"| {r['cpu_us_per_frame'] / floors[1]:.1f} | {r['server_cpu_share']:.0%} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['lost']:,} of {r['sent']:,} | {r['generator_cpu_share']:.0%} |")
    return "\n".join(lines)


def serve(kind: str, port: int) -> int:
    """Run one floor server until SIGTERM."""
    from twisted.internet import reactor

    if kind == "autobahn":
        from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

        class Echo(WebSocketServerProtocol):
            def onMessage(self, payload, isBinary):
                self.sendMessage(payload, isBinary)

        factory = WebSocketServerFactory()
        factory.protocol = Echo
    else:
        class Echo(protocol.Protocol):
            def dataReceived(self, data):
                self.transport.write(data)

        factory = protocol.Factory.forProtocol(Echo)
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=1024)
    reactor.run()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench optimaccs-echo", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="connections (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per server (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of streaming before measuring (default 2)")
    parser.add_argument("--serve", choices=("autobahn", "tcp"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve:
        return serve(options.serve, options.port)

    def run(reactor):
        return _measure_all(reactor, options).addCallback(lambda results: print(report(results, options)))

    task.react(run)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
