"""OptimaCCS echo benchmark: the daemon against two floors, steady, after a stall, at capacity, idle.

``python -m bench optimaccs-echo`` measures three servers in one run, each in its own process, with the
same load generator (this process):

- **gateway**: the real daemon (``twistd -n gateway``) with ``[optimaccs]`` on a loopback port and a
  DID routed to ``app:echo``; each connection sends ``incoming_call`` and streams once answered;
- **autobahn**: a minimal Autobahn WebSocket echo server (``onMessage`` -> ``sendMessage``);
- **tcp**: a plain Twisted TCP echo server (``dataReceived`` -> ``write``).

A streaming connection sends one 320-byte pcm16 frame (20 ms of 8 kHz audio) every 20 ms. The
generator is a lean hand-written WebSocket client. The connections are dealt into ``--phases`` groups
(default 10) that send in turn, one group every 20 ms / phases, as independent calls arrive in all
phases; ``--phases 1`` sends every frame of a 20 ms tick in one burst, where the last frame waits for the
server (and the generator) to handle all the others, so p99 grows with the number of calls long before
the server runs out of CPU. Client frames are masked with a zero key, so every connection of a group
sends the same bytes, built once per tick (the tick number and its send time at the head of the
payload, silence after), and written straight to each socket (through the transport only once a socket
would block). Latency is from the tick's send time to the receipt of the echo, in this process, so it
includes the generator's own pass over a group's sockets. The generator's garbage collector is off
while it measures (a full collection walks every latency list); it collects when a load closes.
Only frames sent inside a case's measured window count: frames of the warm-up are ignored, and a frame
of the window not echoed by the end of a 0.5 s drain is lost. The cases (``--cases``, default all),
each with a fresh process per server:

- **steady** (``--calls``, ``--seconds`` after ``--warmup``): CPU per echoed frame (the server process's
  own user+system time from ``/proc/<pid>/stat`` over the window plus the drain, divided by the window's
  frames that came back), the ratios to the floors, p50/p99 and frames lost;
- **stall** (``--stall-calls``): after the warm-up and one more second of streaming, the server process
  (for the gateway the ``twistd`` process itself) is stopped with SIGSTOP for ``--stall-ms`` and
  continued with SIGCONT (always paired, in a ``finally``), and streaming goes on for
  ``--stall-buckets`` seconds. Frames are bucketed by their send time: the second before the SIGSTOP,
  the stall itself (with the frames sent in the last 100 ms before it, which may still be in flight
  when it comes), then each second after the SIGCONT. Reported per bucket: p99, p50 and frames lost,
  and "recovered within" k s: the first k from which every later bucket's p99 is under 30 ms;
- **capacity**: the largest number of calls with p99 < 20 ms and no frame lost over a window of
  ``--capacity-seconds`` after ``--capacity-warmup``. It starts at ``--capacity-start`` calls, doubles
  while a step passes (up to ``--capacity-max``), then bisects between the last pass and the first fail
  down to ``--capacity-step`` calls. A step that fails is tried again, up to ``--capacity-tries`` windows
  in all (default 2), and passes if one of them passes: on a shared machine one descheduling of the
  server can cost a whole window its p99. One server process serves every step; each step opens new
  connections and closes them at its end, and the next step waits until the server has let go of them
  (for the gateway: until ``GET /api/calls`` lists no live call; for a floor: until its count of open
  sockets in ``/proc/<pid>/fd`` is back to what it was when idle);
- **memory**: the server's VmRSS (``/proc/<pid>/status``) growth per idle leg. ``--idle-rounds`` rounds
  each open ``--idle-calls`` more connections that finish their setup (for the gateway: the
  ``incoming_call`` is answered) and send no audio, then wait 1 s. The legs of earlier rounds stay
  open, so the last round's figure is the cost of that many more legs, with the first-use allocations
  (imports, caches, pools growing to their working size) paid in the earlier rounds and no memory freed
  by closed legs to reuse; that last round's figure is the one reported.

The gateway's paced playout adds up to one frame time (20 ms) by design: an echoed frame waits for its
slot in the leg's 20 ms schedule. The floors echo at once. ``--serve autobahn|tcp --port P`` runs one
floor server (used by the benchmark itself).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import signal
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
#: the capacity search's pass mark: p99 below this, and no frame lost
CAPACITY_P99_MS = 20.0
#: a stall bucket has recovered when its p99 is below this
RECOVERED_P99_MS = 30.0
#: frames sent this close before the SIGSTOP may still be in flight when it comes: they are the stall's
STALL_MARGIN = 0.1
#: tick number and send time at the head of every frame; the rest is silence
_STAMP = struct.Struct("!Id")
_SILENCE = bytes(FRAME - _STAMP.size)
_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # any 16 bytes in base64 will do
#: a client binary frame of FRAME bytes, masked with the zero key
_WS_HEADER = bytes([0x82, 0xFE]) + struct.pack("!H", FRAME) + b"\0\0\0\0"
_HANDSHAKE = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()

SERVERS = ("gateway", "autobahn", "tcp")
CASES = ("steady", "stall", "capacity", "memory")


def _sleep(reactor, seconds: float):
    return deferLater(reactor, seconds, lambda: None)


# -- the load generator ------------------------------------------------------------------------------

class _Probe(protocol.Protocol):
    """One connection of the load generator: raw TCP records, or WebSocket frames."""

    def __init__(self, load: "_Load", index: int) -> None:
        self.load = load
        self.index = index
        self.ready = False
        self.lost = defer.Deferred()
        self._rest = b""
        self._handshaken = not load.websocket
        self._socket = None  # set once ready: frames then go straight to it

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        if self.load.websocket:
            self.transport.write(_HANDSHAKE)
        else:
            self._ready()

    def connectionLost(self, reason=None):
        self._socket = None
        if not self.ready:
            self.load.failed(f"connection {self.index} closed before it was ready: {reason.getErrorMessage()}")
        self.lost.callback(None)

    def _ready(self) -> None:
        self.ready = True
        # Everything written before (the handshake, incoming_call) has been answered, so nothing of it
        # waits in the transport's buffer: writing to the socket directly keeps the order.
        self._socket = getattr(self.transport, "socket", None)
        self.load.connection_ready()

    def send(self, data: bytes) -> None:
        """Write ``data`` to the socket at once; through the transport (for good) once it would block."""
        sock = self._socket
        if sock is not None:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return  # the connection is gone; connectionLost follows
            if sent == len(data):
                return
            self._socket = None
            data = data[sent:]
        self.transport.write(data)

    def _send_text(self, text: bytes) -> None:
        self.transport.write(bytes([0x81, 0x80 | len(text)]) + b"\0\0\0\0" + text if len(text) < 126 else
                             bytes([0x81, 0xFE]) + struct.pack("!H", len(text)) + b"\0\0\0\0" + text)

    def dataReceived(self, data):
        sock = self._socket
        if sock is not None:
            # ACK at once, every read (Linux clears the flag by itself): with delayed ACKs, a server whose
            # congestion window a stall's burst of echoes filled waits for the ACK this side piggybacks on
            # its next frame, and every server (the TCP echo too) then showed a standing 20 ms after a stall.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        if self._rest:
            data = self._rest + data
            self._rest = b""
        if not self._handshaken:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._rest = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self.load.failed(f"connection {self.index}: handshake refused: {data[:80]!r}")
                self.transport.abortConnection()
                return
            data = data[end + 4:]
            self._handshaken = True
            greeting = self.load.greeting
            if greeting is None:
                self._ready()
            else:
                self._send_text(greeting(self.index))
        load = self.load
        first, per_tick = load.first, load.per_tick
        count, now, unpack = len(per_tick), time.perf_counter(), _STAMP.unpack_from
        if load.websocket:
            end = self._frames(data, first, per_tick, count, now, unpack)
        else:
            end = len(data) - len(data) % FRAME
            for pos in range(0, end, FRAME):
                tick, sent = unpack(data, pos)
                i = tick - first
                if 0 <= i < count:
                    per_tick[i].append(now - sent)
        if end < len(data):
            self._rest = data[end:]

    def _frames(self, data: bytes, first: int, per_tick: list, count: int, now: float, unpack) -> int:
        """Take the whole server frames at the head of ``data``; returns where the first incomplete one starts."""
        pos, size = 0, len(data)
        while size - pos >= 2:
            length, start = data[pos + 1] & 0x7F, pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, start = (data[pos + 2] << 8) | data[pos + 3], pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, start = int.from_bytes(data[pos + 2:pos + 10], "big"), pos + 10
            end = start + length
            if end > size:
                break
            opcode = data[pos] & 0x0F
            if opcode == 2:
                if length >= _STAMP.size:
                    tick, sent = unpack(data, start)
                    i = tick - first
                    if 0 <= i < count:
                        per_tick[i].append(now - sent)
            elif opcode == 1:
                if not self.ready and b'"answer"' in data[start:end]:
                    self._ready()
            elif opcode == 9:  # ping: pong with the same payload
                payload = data[start:end]
                self.send(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            pos = end
        return pos


class _Window:
    """The frames of one measured window: per tick, its send time, the frames sent and the echoes'
    latencies (seconds)."""

    def __init__(self, send_times: list[float], sent: list[int], per_tick: list[list[float]]) -> None:
        self.send_times = send_times
        self.sent = sent
        self.per_tick = per_tick

    def summary(self, since: float = float("-inf"), until: float = float("inf")) -> dict:
        """Frames sent, echoed, lost and p50/p99 (ms) of the ticks sent in [since, until)."""
        latencies, sent = [], 0
        for sent_at, frames, echoes in zip(self.send_times, self.sent, self.per_tick):
            if since <= sent_at < until:
                sent += frames
                latencies += echoes
        latencies.sort()
        return {"sent": sent, "echoed": len(latencies), "lost": sent - len(latencies),
                "p50_ms": _percentile(latencies, 0.50) * 1e3, "p99_ms": _percentile(latencies, 0.99) * 1e3}


class _Load:
    """The generator's connections to one server, the ticker, and the measured window.

    The connections are dealt round-robin into ``phases`` groups; the ticker fires every
    20 ms / ``phases`` and each firing (a "tick") sends one frame on every connection of the next group.
    """

    def __init__(self, reactor, port: int, websocket: bool, greeting=None, phases: int = 1) -> None:
        self.reactor = reactor
        self.port = port
        self.websocket = websocket
        self.greeting = greeting
        self.phases = phases
        self.probes: list[_Probe] = []
        self._groups: list[list[_Probe]] = [[] for _ in range(phases)]
        self.tick = 0
        #: the window: the first tick measured, and per tick from there the echoes' latencies
        self.first = 1 << 40
        self.per_tick: list[list[float]] = []
        self._send_times: list[float] = []
        self._sent: list[int] = []
        self._collecting = False
        self._header = _WS_HEADER if websocket else b""
        self._ticker = None
        self._ready = 0
        self._target = 0
        self._all_ready: defer.Deferred | None = None

    # connections

    @defer.inlineCallbacks
    def connect(self, calls: int, timeout: float = 60.0):
        """Open ``calls`` more connections; fires once every connection is ready to stream."""
        self._target = len(self.probes) + calls
        waiting = self._all_ready = defer.Deferred()
        try:
            for _ in range(calls):
                creator = protocol.ClientCreator(self.reactor, _Probe, self, len(self.probes))
                probe = yield creator.connectTCP("127.0.0.1", self.port, timeout=10)
                self._groups[len(self.probes) % self.phases].append(probe)
                self.probes.append(probe)
        except BaseException:
            waiting.addErrback(lambda failure: None)  # the connect error is the one to report
            raise
        if self._ready >= self._target and not waiting.called:
            waiting.callback(None)
        yield waiting.addTimeout(timeout, self.reactor)

    def connection_ready(self) -> None:
        self._ready += 1
        if self._ready >= self._target and self._all_ready is not None and not self._all_ready.called:
            self._all_ready.callback(None)

    def failed(self, reason: str) -> None:
        if self._all_ready is not None and not self._all_ready.called:
            self._all_ready.errback(RuntimeError(reason))

    def close(self) -> defer.Deferred:
        """Stop streaming and abort every connection; fires when all are gone."""
        self.stop()
        probes, self.probes, self._groups = self.probes, [], [[] for _ in range(self.phases)]
        for probe in probes:
            if probe.transport is not None and not probe.lost.called:
                probe.transport.abortConnection()
        return defer.DeferredList([probe.lost for probe in probes]).addCallback(lambda _: gc.collect())

    # streaming

    def start(self) -> None:
        self._ticker = task.LoopingCall.withCount(self._send)
        self._ticker.clock = self.reactor
        self._ticker.start(TICK / self.phases)

    def stop(self) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()

    def _send(self, count: int) -> None:
        """Send the next group's frames, and those of any group whose tick came while this process was
        busy (``count`` > 1: at most one round late; frames of a longer gap are not sent, nor counted)."""
        now = time.perf_counter()
        for _ in range(min(count, self.phases)):
            group = self._groups[self.tick % self.phases]
            frame = self._header + _STAMP.pack(self.tick, now) + _SILENCE
            if self._collecting:
                self.per_tick.append([])
                self._send_times.append(now)
                self._sent.append(len(group))
            for probe in group:
                probe.send(frame)
            self.tick += 1

    def open_window(self) -> None:
        """Measure from the next tick on."""
        self.first, self.per_tick, self._send_times, self._sent = self.tick, [], [], []
        self._collecting = True

    def close_window(self) -> _Window:
        """Measure no later tick; the window's echoes still count until the next window opens."""
        self._collecting = False
        return _Window(self._send_times, self._sent, self.per_tick)


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a gateway with ``--workers`` > 1: the parent and its workers)."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            children = pathlib.Path(f"/proc/{pids[i]}/task/{pids[i]}/children").read_text().split()
        except OSError:
            children = []
        pids += [int(child) for child in children]
        i += 1
    return pids


def _signal_tree(pid: int, sig: int) -> None:
    for each in _tree(pid):
        try:
            os.kill(each, sig)
        except ProcessLookupError:
            pass


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its descendants so far (Linux ``/proc``)."""
    total = 0
    for each in _tree(pid):
        fields = pathlib.Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _rss_kb(pid: int) -> int:
    """The resident set size of process ``pid`` and its descendants, in KB (``VmRSS`` of ``/proc/<pid>/status``)."""
    total = 0
    for each in _tree(pid):
        for line in pathlib.Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                break
        else:
            raise RuntimeError(f"no VmRSS for process {each}")
    return total


def _sockets(pid: int) -> int:
    """How many sockets process ``pid`` has open."""
    count = 0
    for entry in os.scandir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(entry.path).startswith("socket:")
        except OSError:
            pass
    return count


# -- the servers -------------------------------------------------------------------------------------

#: key -> kill(): the children started and not stopped yet, killed if the run is cut short
_children: dict[object, object] = {}
#: the pids stopped with SIGSTOP right now
_stopped: set[int] = set()


def _emergency_cleanup() -> None:
    """At reactor shutdown: continue any stopped child, and kill every child still running."""
    for pid in list(_stopped):
        try:
            _signal_tree(pid, signal.SIGCONT)
        except OSError:
            pass
    _stopped.clear()
    for kill in list(_children.values()):
        kill()


def _free_port() -> int:
    from gateway.testing import free_port

    return free_port()


@defer.inlineCallbacks
def _listening(reactor, port: int, timeout: float = 20.0):
    for _ in range(int(timeout / 0.05)):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        yield _sleep(reactor, 0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class _Floor(protocol.ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        self.ended.callback(None)


class _Server:
    """One server process: its kind, port and pid, how to stop it and how to wait until it is idle."""

    def __init__(self, reactor, kind: str, port: int, pid: int, stop, daemon=None, key=None, workers: int = 1) -> None:
        self.reactor = reactor
        #: the gateway's [gateway] workers: with more than 1, each worker's API is on the admin port + its number
        self.workers = workers
        self.kind = kind
        self.port = port
        self.pid = pid
        self._stop = stop
        self.daemon = daemon
        self.key = pid if key is None else key
        self.idle_sockets = None

    @property
    def websocket(self) -> bool:
        return self.kind != "tcp"

    @property
    def greeting(self):
        return _incoming_call if self.kind == "gateway" else None

    def load(self, phases: int) -> _Load:
        return _Load(self.reactor, self.port, self.websocket, self.greeting, phases)

    @defer.inlineCallbacks
    def settle(self, timeout: float = 60.0):
        """Wait until the server holds no connection (call) of the generator any more."""
        deadline = time.monotonic() + timeout
        while True:
            if self.daemon is not None and self.workers > 1:
                from gateway.testing import GatewayProcess

                left = 0
                for index in range(1, self.workers + 1):
                    worker = GatewayProcess(self.reactor, self.daemon.workdir)  # only its API: on admin port + index
                    worker.admin_port = self.daemon.admin_port + index
                    _, body = yield worker.api("GET", "/api/calls", expect=200)
                    left += len(body["calls"])
                what = "live calls"
            elif self.daemon is not None:
                _, body = yield self.daemon.api("GET", "/api/calls", expect=200)
                left = len(body["calls"])
                what = "live calls"
            else:
                left = _sockets(self.pid) - self.idle_sockets
                what = "open connections"
            if left <= 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind}: {left} {what} remain {timeout:g} s after the connections closed")
            yield _sleep(self.reactor, 0.1)

    @defer.inlineCallbacks
    def stop(self):
        if self.pid in _stopped:  # never stop a stopped process: SIGTERM would wait for a SIGCONT
            _signal_tree(self.pid, signal.SIGCONT)
            _stopped.discard(self.pid)
        try:
            yield self._stop()
        finally:
            _children.pop(self.key, None)


@defer.inlineCallbacks
def _floor_server(reactor, kind: str):
    port = _free_port()
    child = _Floor()
    argv = [sys.executable, "-m", "bench.optimaccs_echo", "--serve", kind, "--port", str(port)]
    transport = reactor.spawnProcess(child, sys.executable, argv, env=os.environ, path=os.getcwd())
    pid = transport.pid

    def kill():
        if not child.ended.called:
            transport.signalProcess("KILL")

    _children[pid] = kill

    @defer.inlineCallbacks
    def stop():
        if not child.ended.called:
            transport.signalProcess("TERM")
            timer = reactor.callLater(10, kill)
            yield child.ended
            if timer.active():
                timer.cancel()

    server = _Server(reactor, kind, port, pid, stop)
    try:
        yield _listening(reactor, port)
        yield _sleep(reactor, 0.3)  # the check's connection is closed by now
        server.idle_sockets = _sockets(pid)
    except BaseException:
        yield server.stop()
        raise
    return server


#: the daemon's config beside the admin section: the echo route, and room for every call the bench opens
_GATEWAY_CONFIG = (
    '[optimaccs]\nlisten = "tcp:{port}:interface=127.0.0.1"\nallow_from = ["127.0.0.1"]\nmax_calls = 100000\n\n'
    '[[routes]]\ndid = "{did}"\nto = "app:echo"\n'
)


@defer.inlineCallbacks
def _gateway(reactor, workdir: str, workers: int = 1):
    """Start the daemon with a DID routed to app:echo (``workers`` > 1: a parent and that many workers)."""
    from gateway.testing import GatewayProcess, free_port

    admin, port = free_port(), free_port()
    while workers > 1 and not all(_port_free(admin + i) for i in range(1, workers + 1)):
        admin = free_port()  # the workers' admin APIs are on the next ports
    config = GatewayProcess.config(admin, _GATEWAY_CONFIG.format(port=port, did=ECHO_DID))
    config = config.replace("[gateway]\n", f"[gateway]\nworkers = {workers}\n", 1)
    home = tempfile.mkdtemp(dir=workdir)
    # The log goes to a file: GatewayProcess keeps and searches all of a child's output in this process,
    # which would take the generator's time while it measures.
    log = os.path.join(home, "gateway.log")
    daemon = GatewayProcess(reactor, home, config, args=["--logfile", log])
    _children[daemon] = daemon.kill
    try:
        yield daemon.start(admin)
        started = time.monotonic()
        while workers > 1:  # the parent answers /healthz at once; /readyz once every worker is ready
            code, _ = yield daemon.api("GET", "/readyz")
            if code == 200:
                break
            if daemon.ended.called or time.monotonic() - started > 60:
                raise RuntimeError(f"the gateway's {workers} workers were not ready in 60 s")
            yield _sleep(reactor, 0.1)
    except BaseException:
        daemon.kill()
        if daemon.transport is not None:
            yield daemon.ended
        _children.pop(daemon, None)
        if os.path.exists(log):
            sys.stderr.write(f"the gateway's log:\n{pathlib.Path(log).read_text(errors='replace')[-4000:]}\n")
        raise
    return _Server(reactor, "gateway", port, daemon.transport.pid, daemon.stop, daemon, key=daemon, workers=workers)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start(reactor, kind: str, workdir: str, workers: int = 1):
    return _gateway(reactor, workdir, workers) if kind == "gateway" else _floor_server(reactor, kind)


def _incoming_call(index: int) -> bytes:
    return json.dumps({"event": "incoming_call", "callerId": f"bench{index}", "didNumber": ECHO_DID,
                       "sessionId": f"bench-{index}"}).encode()


# -- the cases ---------------------------------------------------------------------------------------

@defer.inlineCallbacks
def steady(reactor, server: _Server, options):
    """``--calls`` streaming for ``--seconds``: CPU per echoed frame, latency, loss."""
    load = server.load(options.phases)
    try:
        yield load.connect(options.calls)
        load.start()
        yield _sleep(reactor, options.warmup)
        cpu_before, own_before, wall_before = _cpu_seconds(server.pid), time.process_time(), time.perf_counter()
        load.open_window()
        yield _sleep(reactor, options.seconds)
        window = load.close_window()
        load.stop()
        own, own_wall = time.process_time() - own_before, time.perf_counter() - wall_before
        yield _sleep(reactor, DRAIN)
        cpu = _cpu_seconds(server.pid) - cpu_before
        wall = time.perf_counter() - wall_before
    finally:
        yield load.close()
    result = window.summary()
    result.update(cpu_us_per_frame=cpu / max(1, result["echoed"]) * 1e6, server_cpu_share=cpu / wall,
                  generator_cpu_share=own / own_wall)
    return result


@defer.inlineCallbacks
def stall(reactor, server: _Server, options):
    """``--stall-calls`` streaming; SIGSTOP the server for ``--stall-ms``; per-second buckets by send time."""
    load = server.load(options.phases)
    try:
        yield load.connect(options.stall_calls)
        load.start()
        yield _sleep(reactor, options.warmup)
        load.open_window()
        yield _sleep(reactor, 1.0 + STALL_MARGIN)
        sys.stderr.write(f"stall {server.kind}: SIGSTOP {server.pid} for {options.stall_ms:g} ms\n")
        stopped_at = time.perf_counter()
        _signal_tree(server.pid, signal.SIGSTOP)  # with --workers, the parent and every worker
        _stopped.add(server.pid)
        try:
            yield _sleep(reactor, options.stall_ms / 1000)
        finally:
            _signal_tree(server.pid, signal.SIGCONT)
            _stopped.discard(server.pid)
            continued_at = time.perf_counter()
        yield _sleep(reactor, options.stall_buckets)
        window = load.close_window()
        load.stop()
        yield _sleep(reactor, DRAIN)
    finally:
        yield load.close()
    buckets = [window.summary(continued_at + k, continued_at + k + 1) for k in range(options.stall_buckets)]
    recovered = next((k for k in range(len(buckets))
                      if all(b["p99_ms"] < RECOVERED_P99_MS for b in buckets[k:])), None)
    return {
        "before": window.summary(stopped_at - STALL_MARGIN - 1.0, stopped_at - STALL_MARGIN),
        "stall": window.summary(stopped_at - STALL_MARGIN, continued_at),
        "after": buckets,
        "stalled_ms": (continued_at - stopped_at) * 1e3,
        "recovered_within": recovered,
        "total": window.summary(),
    }


@defer.inlineCallbacks
def capacity(reactor, server: _Server, options):
    """The largest N (a multiple of ``--capacity-step``) with p99 < 20 ms and no frame lost."""
    steps = []

    @defer.inlineCallbacks
    def trial(calls: int):
        load = server.load(options.phases)
        result = {"calls": calls}
        try:
            yield load.connect(calls)
            load.start()
            yield _sleep(reactor, options.capacity_warmup)
            own_before, wall_before = time.process_time(), time.perf_counter()
            load.open_window()
            yield _sleep(reactor, options.capacity_seconds)
            window = load.close_window()
            load.stop()
            result["generator_cpu_share"] = (time.process_time() - own_before) / (time.perf_counter() - wall_before)
            yield _sleep(reactor, DRAIN)
            result.update(window.summary())
            result["passed"] = (result["sent"] > 0 and result["lost"] == 0
                                and result["p99_ms"] < CAPACITY_P99_MS)
        except defer.TimeoutError:
            result.update(passed=False, error="not every connection was ready within 60 s")
        except Exception as e:  # e.g. a connection refused or closed before it was ready: the step failed
            result.update(passed=False, error=f"{type(e).__name__}: {e}".splitlines()[0][:120])
        finally:
            yield load.close()
            yield server.settle()
        sys.stderr.write(f"  capacity {server.kind} {calls}: {result}\n")
        return result

    @defer.inlineCallbacks
    def attempt(calls: int):
        """A step passes when one of up to ``--capacity-tries`` windows passes."""
        tries = []
        for _ in range(options.capacity_tries):
            tries.append((yield trial(calls)))
            if tries[-1]["passed"]:
                break
        steps.append({"calls": calls, "tries": tries, "passed": tries[-1]["passed"]})
        return tries[-1]["passed"]

    step = options.capacity_step
    top = options.capacity_max // step * step
    calls = min(max(step, options.capacity_start // step * step), top)
    passed, failed = 0, None
    while True:
        if (yield attempt(calls)):
            passed = calls
            if calls >= top:
                break
            calls = min(calls * 2, top)
        else:
            failed = calls
            break
    while failed is not None and failed - passed > step:
        calls = max(passed + step, (passed + failed) // 2 // step * step)
        if (yield attempt(calls)):
            passed = calls
        else:
            failed = calls
    return {"calls": passed, "capped": passed >= top, "steps": steps,
            "generator_cpu_share": max(t.get("generator_cpu_share", 0.0) for s in steps for t in s["tries"])}


@defer.inlineCallbacks
def memory(reactor, server: _Server, options):
    """VmRSS growth per idle leg: rounds of ``--idle-calls`` more legs, earlier rounds kept open."""
    yield _sleep(reactor, 1.0)  # the fresh server settles
    load = server.load(options.phases)
    rounds = []
    try:
        for _ in range(options.idle_rounds):
            before = _rss_kb(server.pid)
            yield load.connect(options.idle_calls)
            yield _sleep(reactor, 1.0)
            rounds.append((_rss_kb(server.pid) - before) / options.idle_calls)
        rss = _rss_kb(server.pid)
    finally:
        yield load.close()
    return {"kb_per_leg": rounds[-1], "rounds": rounds, "rss_kb": rss,
            "legs": options.idle_calls * options.idle_rounds}


CASE_FUNCTIONS = {"steady": steady, "stall": stall, "capacity": capacity, "memory": memory}


@defer.inlineCallbacks
def _measure_all(reactor, options):
    """{case: {server: result or {"error": text}}}: every case, a fresh process per server and case."""
    results = {}
    trigger = reactor.addSystemEventTrigger("before", "shutdown", _emergency_cleanup)
    # No collector pause in the generator while it measures: a full collection walks every latency list.
    # The hot path makes no cycles; whatever the rest makes is collected when a load's connections close.
    gc.disable()
    try:
        with tempfile.TemporaryDirectory(prefix="optimaccs-echo-") as workdir:
            for case in options.cases:
                results[case] = {}
                for kind in options.servers:
                    try:
                        server = yield _start(reactor, kind, workdir, options.workers)
                        try:
                            result = yield CASE_FUNCTIONS[case](reactor, server, options)
                        finally:
                            yield server.stop()
                    except Exception as e:  # one broken server or case does not lose the others
                        result = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
                    results[case][kind] = result
                    sys.stderr.write(f"{case} {kind}: {result}\n")
    finally:
        gc.enable()
        _emergency_cleanup()
        reactor.removeSystemEventTrigger(trigger)
    return results


# -- the report --------------------------------------------------------------------------------------

def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"


def _error_row(kind: str, result: dict, columns: int) -> str | None:
    if "error" not in result:
        return None
    return f"| {kind} | error: {result['error'].replace('|', '/')} |" + " |" * (columns - 2)


def report(results: dict, options) -> str:
    from bench.media_bench import machine

    lines = [f"Machine: {machine()}; load average at start {options.load_at_start:.2f}",
             f"Load generator: this process, the connections in {options.phases} phases "
             f"{TICK * 1e3 / options.phases:g} ms apart"]
    if getattr(options, "workers", 1) != 1:
        lines.append(f"Gateway: [gateway] workers = {options.workers} (the parent and its workers measured together)")
    if "steady" in results:
        rows = results["steady"]
        floors = [rows.get(k, {}).get("cpu_us_per_frame") for k in ("autobahn", "tcp")]
        lines += [
            "", "### Steady",
            f"{options.calls} connections x 50 frames/s of {FRAME} bytes, {options.warmup:g} s warm-up, "
            f"{options.seconds:g} s measured\n",
            "| server | CPU µs/echoed frame | x autobahn | x tcp | server CPU (of one core) | p50 ms | p99 ms "
            "| frames lost | generator CPU |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kind, r in rows.items():
            error = _error_row(kind, r, 10)
            if error:
                lines.append(error)
                continue
            ratios = [f"{r['cpu_us_per_frame'] / floor:.2f}" if floor else "-" for floor in floors]
            lines.append(
                f"| {kind} | {r['cpu_us_per_frame']:,.1f} | {ratios[0]} | {ratios[1]} | {r['server_cpu_share']:.0%} "
                f"| {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {r['lost']:,} of {r['sent']:,} "
                f"| {r['generator_cpu_share']:.0%} |")
    if "stall" in results:
        rows = results["stall"]
        seconds = [f"{k}-{k + 1} s" for k in range(options.stall_buckets)]
        lines += [
            "", "### Stall recovery",
            f"{options.stall_calls} connections; after {options.warmup:g} s warm-up and 1 s more, the server "
            f"process SIGSTOPped for {options.stall_ms:g} ms, then SIGCONT. Frames by send time: a second "
            f"before the SIGSTOP, the stall (and the {STALL_MARGIN * 1e3:.0f} ms before it), then each second after "
            f"the SIGCONT. p99 ms; recovered within: "
            f"the first second from which every bucket's p99 < {RECOVERED_P99_MS:g} ms\n",
            f"| server | before | stall | {' | '.join(seconds)} | recovered within | frames lost |",
            "|---|" + "---:|" * (len(seconds) + 4),
        ]
        for kind, r in rows.items():
            error = _error_row(kind, r, len(seconds) + 5)
            if error:
                lines.append(error)
                continue
            within = (f"{r['recovered_within']} s" if r["recovered_within"] is not None
                      else f"not within {options.stall_buckets} s")
            lines.append(
                f"| {kind} | {_ms(r['before']['p99_ms'])} | {_ms(r['stall']['p99_ms'])} | "
                + " | ".join(_ms(b["p99_ms"]) for b in r["after"])
                + f" | {within} | {r['total']['lost']:,} of {r['total']['sent']:,} |")
        lines += [
            "", "Stall recovery, p50 ms (frames lost) per bucket; the stall lasted (ms):\n",
            f"| server | before | stall | {' | '.join(seconds)} | stall ms |",
            "|---|" + "---:|" * (len(seconds) + 3),
        ]
        for kind, r in rows.items():
            if "error" in r:
                continue
            cells = [r["before"], r["stall"], *r["after"]]
            lines.append(f"| {kind} | " + " | ".join(f"{_ms(b['p50_ms'])} ({b['lost']:,})" for b in cells)
                         + f" | {r['stalled_ms']:.0f} |")
    if "capacity" in results:
        rows = results["capacity"]
        floor = rows.get("autobahn", {}).get("calls")
        lines += [
            "", "### Capacity",
            f"The largest number of calls with p99 < {CAPACITY_P99_MS:g} ms and no frame lost over "
            f"{options.capacity_seconds:g} s after {options.capacity_warmup:g} s warm-up; from "
            f"{options.capacity_start} calls doubling, then bisecting to {options.capacity_step}, "
            f"at most {options.capacity_max}; a step passes when one of {options.capacity_tries} tries does. "
            f"Steps: calls, then each try: ok, or its p99 ms/frames lost\n",
            "| server | calls | x autobahn | steps | generator CPU (most) |",
            "|---|---:|---:|---|---:|",
        ]
        for kind, r in rows.items():
            error = _error_row(kind, r, 5)
            if error:
                lines.append(error)
                continue
            steps = ", ".join(f"{s['calls']} " + " then ".join(
                "ok" if t["passed"] else t["error"] if "error" in t else f"p99 {_ms(t['p99_ms'])}/{t['lost']:,} lost"
                for t in s["tries"]) for s in r["steps"])
            ratio = f"{r['calls'] / floor:.2f}" if floor else "-"
            lines.append(f"| {kind} | {'≥' if r['capped'] else ''}{r['calls']} | {ratio} | {steps} "
                         f"| {r['generator_cpu_share']:.0%} |")
    if "memory" in results:
        rows = results["memory"]
        lines += [
            "", "### Memory per idle leg",
            f"VmRSS growth per leg that finished its setup and sends no audio: {options.idle_rounds} rounds of "
            f"{options.idle_calls} more legs (earlier rounds kept open), 1 s after each; the last round counts\n",
            "| server | KB per idle leg | each round, KB per leg | RSS with all legs open, MB |",
            "|---|---:|---|---:|",
        ]
        for kind, r in rows.items():
            error = _error_row(kind, r, 4)
            if error:
                lines.append(error)
                continue
            lines.append(f"| {kind} | {r['kb_per_leg']:.1f} | {', '.join(f'{x:.1f}' for x in r['rounds'])} "
                         f"| {r['rss_kb'] / 1024:.1f} |")
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
            def connectionMade(self):
                self.transport.setTcpNoDelay(True)  # as Autobahn and the gateway do: no Nagle delay

            def dataReceived(self, data):
                self.transport.write(data)

        factory = protocol.Factory.forProtocol(Echo)
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=1024)
    reactor.run()
    return 0


def _names(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        wrong = [name for name in names if name not in allowed]
        if wrong or not names:
            raise argparse.ArgumentTypeError(f"expected some of {','.join(allowed)}, got {text!r}")
        return [name for name in allowed if name in names]
    return parse


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
        return value
    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench optimaccs-echo", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--cases", type=_names(CASES), default=list(CASES), help="cases to run (default all: steady,stall,capacity,memory)")
    add("--servers", type=_names(SERVERS), default=list(SERVERS), help="servers to measure (default all: gateway,autobahn,tcp)")
    add("--calls", type=_positive(int), default=50, help="steady: connections (default 50)")
    add("--seconds", type=_positive(float), default=10.0, help="steady: measured seconds per server (default 10)")
    add("--warmup", type=_positive(float), default=2.0, help="steady, stall: seconds of streaming before measuring (default 2)")
    add("--stall-calls", type=_positive(int), default=50, help="stall: connections (default 50)")
    add("--stall-ms", type=_positive(float), default=200.0, help="stall: how long the server is stopped (default 200)")
    add("--stall-buckets", type=_positive(int), default=6, help="stall: seconds measured after the SIGCONT (default 6)")
    add("--capacity-seconds", type=_positive(float), default=5.0, help="capacity: measured seconds per step (default 5)")
    add("--capacity-warmup", type=_positive(float), default=2.0, help="capacity: warm-up seconds per step (default 2)")
    add("--capacity-start", type=_positive(int), default=50, help="capacity: the first step's calls (default 50)")
    add("--capacity-step", type=_positive(int), default=25, help="capacity: the granularity in calls (default 25)")
    add("--capacity-max", type=_positive(int), default=400, help="capacity: the most calls tried (default 400)")
    add("--capacity-tries", type=_positive(int), default=2,
        help="capacity: windows a step may take to pass, against a shared machine's hiccups (default 2)")
    add("--idle-calls", type=_positive(int), default=100, help="memory: legs opened per round (default 100)")
    add("--idle-rounds", type=_positive(int), default=3, help="memory: rounds, the last one reported (default 3)")
    add("--phases", type=_positive(int), default=10,
        help="connections send in this many phases spread over the 20 ms (default 10; 1: all in one burst)")
    add("--workers", type=int, default=1,
        help="gateway: its [gateway] workers (default 1; N > 1: a parent and N workers on one port, "
             "their CPU and memory summed, all of them stopped by the stall case)")
    add("--serve", choices=("autobahn", "tcp"), help=argparse.SUPPRESS)
    add("--port", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve:
        return serve(options.serve, options.port)
    if options.capacity_max < options.capacity_step:
        parser.error("--capacity-max must be at least --capacity-step")
    options.load_at_start = os.getloadavg()[0]

    @defer.inlineCallbacks
    def run(reactor):
        results = yield _measure_all(reactor, options)
        print(report(results, options))
        if any("error" in r for rows in results.values() for r in rows.values()):
            raise SystemExit(1)

    task.react(run)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
