"""Soak benchmark: the real daemon under a mixed load for minutes or hours, sampled as it goes.

``python -m bench soak [--minutes 60] [--calls 40]`` starts ``twistd -n gateway`` (on its embedded
SQLite) with an OptimaCCS listener whose DID is routed to ``app:echo``, a Patriot Dialler Bridge user,
and the chat connector toward ``python -m gateway.sim chat-server``, then runs, from this process:

- ``--calls`` concurrent OptimaCCS echo calls, each lasting ``--call-min``..``--call-max`` seconds
  (20..60, drawn from ``--seed``) and replaced at once: one 320-byte pcm16 frame every 20 ms (the lean
  WebSocket client of :mod:`bench.optimaccs_echo`'s kind), then ``hangup``, the provider ``cdr`` and a
  close, as the provider does;
- a Patriot operator (:class:`gateway.sim.patriot_client.PatriotClientSim`, heartbeats every 5 s)
  dialling a simulated number every ``--patriot-every`` seconds (10) and hanging up once it answered;
- an inbound SMS every ``--sms-every`` seconds (5) through ``POST /api/sms/inbound`` into the chat
  connector (20 customer numbers in turn);
- admin API polling every ``--poll-every`` seconds (2): status, calls, metrics, CDRs, SMS in turn.

Every ``--sample-seconds`` (30) it samples the daemon's RSS, file descriptors and threads (``/proc``),
its CPU share of one core, the echo's p50/p99 latency and the frames lost in that interval (calls that
ended in it: frames sent and not echoed), the frames the daemon's jitter buffer trimmed, calls
completed, CDRs, provider CDRs and SMS stored (read from the SQLite file) against what was sent, the
log's size and the tracebacks in it. At the end it prints a markdown table of the samples, and after
the warm-up (``--warmup-minutes``, 2): RSS growth per completed call (least squares of RSS against
calls completed), p99 at the end against the first sample after the warm-up, and the totals of lost
frames, missing records and tracebacks.

Latencies are kept as a fixed histogram per interval and the log is scanned as it arrives and written
to a file, so the harness itself stays the same size for an hour. The exit status is non-zero only
when the harness fails (the daemon does not start or dies, a simulator cannot be started); the
targets are for the README, not asserts.

``--tracemalloc N`` runs the daemon under :mod:`tracemalloc` (``N`` frames per traceback; it slows the
daemon down) and prints the 25 biggest growths between a snapshot at the end of the warm-up and one
at the end of the load, grouped by the allocating line.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import pathlib
import random
import re
import resource
import signal
import sqlite3
import struct
import sys
import tempfile
import time

from twisted.internet import defer, protocol, task
from twisted.internet.task import deferLater

from bench.optimaccs_echo import _KEY, _STAMP, FRAME, TICK, _cpu_seconds

ECHO_DID = "0210000999"
PATRIOT_USER = {"userName": "soak", "password": "soak-password"}
SMS_NUMBERS = 20
#: seconds a call's echo may still arrive after it stopped streaming, before it hangs up
DRAIN = 0.5
#: seconds a call may take to be answered, and to be closed after its hangup
ANSWER_TIMEOUT = 15.0
CLOSE_TIMEOUT = 20.0
_SILENCE = bytes(FRAME - _STAMP.size)
_HEADER = bytes([0x82, 0xFE]) + struct.pack("!H", FRAME) + b"\0\0\0\0"
_TRACEBACK = b"Traceback (most recent call last)"


# -- bounded accounting ---------------------------------------------------------------------------------

class Histogram:
    """Echo latencies of one interval in 0.1 ms buckets up to 5 s (and one overflow bucket): fixed size."""

    STEP = 1e-4
    BUCKETS = 50_000

    def __init__(self) -> None:
        self.counts = array.array("I", bytes(4 * (self.BUCKETS + 1)))
        self.total = 0

    def add(self, seconds: float) -> None:
        self.counts[min(self.BUCKETS, max(0, int(seconds / self.STEP)))] += 1
        self.total += 1

    def percentile(self, q: float) -> float:
        """The latency (seconds) below which a ``q`` share of the interval's echoes came back; NaN if none."""
        if not self.total:
            return float("nan")
        wanted, seen = max(1, int(q * self.total + 0.5)), 0
        for bucket, count in enumerate(self.counts):
            seen += count
            if seen >= wanted:
                return (bucket + 1) * self.STEP
        return self.BUCKETS * self.STEP

    def reset(self) -> None:
        self.counts = array.array("I", bytes(4 * (self.BUCKETS + 1)))
        self.total = 0


class _LogScanner(protocol.ProcessProtocol):
    """The daemon's output: written to a file as it comes, tracebacks counted, only a tail kept."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "wb")
        self.size = 0
        self.tracebacks = 0
        self.tail = bytearray()
        self.ended = defer.Deferred()
        self.lines_waiters: list = []

    @property
    def output(self) -> bytearray:  # what GatewayProcess.output decodes (its error messages)
        return self.tail

    def outReceived(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()
        self.size += len(data)
        joined = bytes(self.tail[-len(_TRACEBACK):]) + data
        self.tracebacks += joined.count(_TRACEBACK) - bytes(self.tail[-len(_TRACEBACK):]).count(_TRACEBACK)
        self.tail += data
        del self.tail[:-16384]

    errReceived = outReceived

    def _check(self) -> None:
        pass

    def processEnded(self, reason) -> None:
        self.file.close()
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.ended.callback(code if sig is None else -sig)


def _daemon_class():
    from gateway.testing import GatewayProcess

    class SoakDaemon(GatewayProcess):
        """The daemon with its output to ``gateway.log`` (scanned, not kept), optionally under tracemalloc."""

        tracemalloc_frames = 0

        def spawn(self, wrapper=()) -> None:
            runner = os.path.join(os.path.dirname(sys.executable), "twistd")
            argv = [sys.executable, "-m", "bench.soak", "--run-daemon", str(self.tracemalloc_frames), runner,
                    "--nodaemon", "--pidfile=", "gateway", "--config", self.config_path]
            self._proto = _LogScanner(os.path.join(self.workdir, "gateway.log"))
            self.transport = self.reactor.spawnProcess(self._proto, sys.executable, argv, env=self.env,
                                                       path=self.workdir)

    return SoakDaemon


def run_daemon(frames: int, argv: list[str]) -> None:
    """``--run-daemon N twistd ...``: run twistd in this process; with N > 0 under tracemalloc, SIGUSR2
    dumping a snapshot to ``$SOAK_SNAPSHOT_DIR/snapshot-<n>.tracemalloc``."""
    if frames > 0:
        import tracemalloc

        tracemalloc.start(frames)
        taken = [0]

        def dump(signum, stack):
            taken[0] += 1
            path = os.path.join(os.environ.get("SOAK_SNAPSHOT_DIR", "."), f"snapshot-{taken[0]}.tracemalloc")
            tracemalloc.take_snapshot().dump(path + ".part")
            os.replace(path + ".part", path)

        signal.signal(signal.SIGUSR2, dump)
    from twisted.scripts.twistd import run

    sys.argv = argv
    run()


# -- the load ---------------------------------------------------------------------------------------------

class _Call(protocol.Protocol):
    """One OptimaCCS echo call over a lean WebSocket client: incoming_call, stream, hangup + cdr, close."""

    def __init__(self, load: "Load", number: int, duration: float) -> None:
        self.load = load
        self.number = number
        self.session = f"soak-{number}"
        self.duration = duration
        self.buffer = bytearray()
        self.handshaken = False
        self.streaming = False
        self.hung_up = False
        self.sent = 0
        self.echoed = 0
        self.started = time.time()
        self.answered = None
        self.timer = None

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.transport.write(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        self.timer = self.load.reactor.callLater(ANSWER_TIMEOUT, self._give_up, "not answered")

    def _text(self, payload: dict) -> None:
        text = json.dumps(payload).encode()
        head = bytes([0x81, 0x80 | len(text)]) if len(text) < 126 else bytes([0x81, 0xFE]) + struct.pack("!H", len(text))
        self.transport.write(head + b"\0\0\0\0" + text)

    def send_frame(self, tick: int, now: float) -> None:
        self.sent += 1
        self.transport.write(_HEADER + _STAMP.pack(tick, now) + _SILENCE)

    def dataReceived(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.handshaken:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self._give_up(f"handshake refused: {bytes(buffer[:40])!r}")
                return
            del buffer[:end + 4]
            self.handshaken = True
            self._text({"event": "incoming_call", "callerId": f"soak{self.number % 1000}", "didNumber": ECHO_DID,
                        "sessionId": self.session})
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
                self.echoed += 1
                tick, sent = _STAMP.unpack_from(payload)
                self.load.latency.add(time.perf_counter() - sent)
            elif opcode == 1:
                self._event(payload)
            elif opcode == 9:
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif opcode == 8:
                self.transport.write(bytes([0x88, 0x82]) + b"\0\0\0\0" + struct.pack("!H", 1000))
                self.transport.loseConnection()

    def _event(self, payload: bytes) -> None:
        try:
            event = json.loads(payload).get("event")
        except ValueError:
            event = None
        if event == "answer" and self.answered is None:
            self.answered = time.time()
            self._cancel_timer()
            self.streaming = True
            self.load.streaming.add(self)
            self.timer = self.load.reactor.callLater(self.duration if self.load.running else 0, self._stop_streaming)
        elif event == "hangup" and not self.hung_up:
            self.load.calls_hung_up_by_gateway += 1
            self._stop_streaming()

    def _stop_streaming(self) -> None:
        self.streaming = False
        self.load.streaming.discard(self)
        self._cancel_timer()
        self.timer = self.load.reactor.callLater(DRAIN, self._hang_up)

    def _hang_up(self) -> None:
        self.hung_up = True
        end = time.time()
        iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"  # noqa: E731
        self._text({"event": "hangup"})
        self._text({"event": "cdr", "sessionId": self.session, "source": f"soak{self.number % 1000}",
                    "destination": ECHO_DID, "startTime": iso(self.started), "answerTime": iso(self.answered),
                    "endTime": iso(end), "duration": int(end - self.started),
                    "billableSeconds": int(end - self.answered), "disposition": "ANSWERED", "hangupBy": "CALLER",
                    "hangupCauseCode": "16", "hangupCauseText": "Normal Clearing"})
        self.transport.write(bytes([0x88, 0x82]) + b"\0\0\0\0" + struct.pack("!H", 1000))
        self.load.ended(self)
        self.timer = self.load.reactor.callLater(CLOSE_TIMEOUT, self._give_up, "not closed after the hangup")

    def _give_up(self, why: str) -> None:
        self.timer = None
        self.load.problem(f"call {self.session}: {why}")
        if not self.hung_up:
            self.hung_up = True
            self.load.ended(self, failed=True)
        self.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def connectionLost(self, reason=None) -> None:
        self._cancel_timer()
        self.load.streaming.discard(self)
        if not self.hung_up:
            self.hung_up = True
            self.load.problem(f"call {self.session}: connection lost before the hangup")
            self.load.ended(self, failed=True)
        else:
            self.load.closed(self)


class Load:
    """The OptimaCCS calls: started, streamed, ended and replaced; counters per interval and in all."""

    def __init__(self, reactor, port: int, calls: int, rng: random.Random, call_min: float, call_max: float):
        self.reactor = reactor
        self.port = port
        self.target = calls
        self.rng = rng
        self.call_min, self.call_max = call_min, call_max
        self.streaming: set[_Call] = set()
        self.live: set[_Call] = set()
        self.latency = Histogram()
        self.started = self.completed = self.closed_calls = self.failed = 0
        self.frames_sent = self.frames_echoed = 0
        self.interval_lost = 0
        self.calls_hung_up_by_gateway = 0
        self.problems = 0
        self.last_problems: list[str] = []
        self.running = False
        self.tick = 0
        self._ticker = task.LoopingCall(self._send)
        self._ticker.clock = reactor

    def start(self) -> None:
        self.running = True
        for _ in range(self.target):
            self._start_one()
        self._ticker.start(TICK)

    def _start_one(self) -> None:
        if not self.running:
            return
        self.started += 1
        call = _Call(self, self.started, self.rng.uniform(self.call_min, self.call_max))
        self.live.add(call)
        creator = protocol.ClientCreator(self.reactor, lambda: call)
        creator.connectTCP("127.0.0.1", self.port).addErrback(self._not_connected, call)

    def _not_connected(self, failure, call: _Call) -> None:
        self.live.discard(call)
        self.failed += 1
        self.problem(f"call {call.session}: cannot connect: {failure.getErrorMessage()}")
        self.reactor.callLater(1.0, self._start_one)

    def _send(self) -> None:
        now = time.perf_counter()
        tick = self.tick
        for call in self.streaming:
            call.send_frame(tick, now)
        self.tick += 1

    def ended(self, call: _Call, failed: bool = False) -> None:
        """The call hung up (or failed): account its frames, start its replacement at once."""
        self.frames_sent += call.sent
        self.frames_echoed += call.echoed
        self.interval_lost += call.sent - call.echoed
        if failed:
            self.failed += 1
            self.live.discard(call)
        else:
            self.completed += 1
        self._start_one()

    def closed(self, call: _Call) -> None:
        self.closed_calls += 1
        self.live.discard(call)

    def problem(self, text: str) -> None:
        self.problems += 1
        self.last_problems = (self.last_problems + [text])[-5:]

    @defer.inlineCallbacks
    def stop(self):
        """No new calls; every live one ends as usual; fires once all are closed (or given up)."""
        self.running = False
        for call in list(self.streaming):
            call._stop_streaming()
        deadline = time.monotonic() + DRAIN + CLOSE_TIMEOUT + 2
        while self.live and time.monotonic() < deadline:
            yield deferLater(self.reactor, 0.1, lambda: None)
        if self._ticker.running:
            self._ticker.stop()
        for call in list(self.live):
            call.transport.abortConnection()


class Side:
    """The Patriot operator, the SMS and the admin polling: each a loop with its counters."""

    def __init__(self, reactor, daemon, bridge_url: str, patriot_every: float, sms_every: float, poll_every: float):
        self.reactor = reactor
        self.daemon = daemon
        self.bridge_url = bridge_url
        self.every = {"patriot": patriot_every, "sms": sms_every, "poll": poll_every}
        self.patriot_calls = self.patriot_failures = 0
        self.sms_sent = self.sms_refused = 0
        self.polls = self.poll_failures = 0
        self.running = False
        self.patriot = None
        self._loops: list[defer.Deferred] = []
        self._problems: list[str] = []

    def start(self) -> None:
        from gateway.sim.patriot_client import PatriotClientSim

        self.running = True
        self.patriot = PatriotClientSim(self.reactor, self.bridge_url, PATRIOT_USER)
        self.patriot.start()
        self._loops = [self._patriot_loop(), self._poll_loop()]
        if self.every["sms"] is not None:
            self._loops.append(self._sms_loop())

    @defer.inlineCallbacks
    def stop(self):
        self.running = False
        for loop in self._loops:
            yield loop
        if self.patriot is not None:
            yield self.patriot.stop()

    @defer.inlineCallbacks
    def _pause(self, what: str, began: float):
        left = self.every[what] - (self.reactor.seconds() - began)
        while left > 0 and self.running:
            yield deferLater(self.reactor, min(left, 0.5), lambda: None)
            left = self.every[what] - (self.reactor.seconds() - began)

    @defer.inlineCallbacks
    def _patriot_loop(self):
        sim = self.patriot
        try:
            response = yield sim.wait_for("init-response", timeout=30)
        except Exception as e:
            self.patriot_failures += 1
            self._problems.append(f"patriot login: {e}")
            return
        if not response.success:
            self.patriot_failures += 1
            return
        yield sim.wait_for("call-status-update", timeout=10)  # the first: no call
        while self.running:
            began = self.reactor.seconds()
            try:
                sim.dial("5551234")
                update = yield sim.wait_for("call-status-update", timeout=10)  # dialling
                if update.call_active:
                    yield sim.wait_for("call-status-update", timeout=10)  # answered
                    yield deferLater(self.reactor, 2.0, lambda: None)
                    sim.hangup()
                    yield sim.wait_for("call-status-update", lambda u: not u.call_active, timeout=10)
                self.patriot_calls += 1
                # what the sim keeps of the frames it received is not needed any more
                if not sim._waiters:
                    del sim.received[:]
                    sim._claimed.clear()
            except Exception as e:
                self.patriot_failures += 1
                self._problems = (self._problems + [f"patriot: {e}"])[-5:]
            yield self._pause("patriot", began)

    @defer.inlineCallbacks
    def _sms_loop(self):
        number = 0
        while self.running:
            began = self.reactor.seconds()
            number += 1
            try:
                code, _ = yield self.daemon.api("POST", "/api/sms/inbound", {
                    "from": f"+49151000{number % SMS_NUMBERS:05d}", "text": f"soak message {number}",
                    "id": f"soak-sms-{number}"})
                if code == 200:
                    self.sms_sent += 1
                else:
                    self.sms_refused += 1
            except Exception as e:
                self.sms_refused += 1
                self._problems = (self._problems + [f"sms: {e}"])[-5:]
            yield self._pause("sms", began)

    @defer.inlineCallbacks
    def _poll_loop(self):
        paths = ("/api/status", "/api/calls", "/metrics", "/api/cdrs?limit=20", "/api/sms?limit=20")
        turn = 0
        while self.running:
            began = self.reactor.seconds()
            path = paths[turn % len(paths)]
            turn += 1
            try:
                if path == "/metrics":
                    yield self.daemon.metric_sum("gateway_calls_active")
                else:
                    yield self.daemon.api("GET", path, expect=200)
                self.polls += 1
            except Exception as e:
                self.poll_failures += 1
                self._problems = (self._problems + [f"poll {path}: {e}"])[-5:]
            yield self._pause("poll", began)


# -- sampling ---------------------------------------------------------------------------------------------

def _proc(pid: int) -> dict:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss": int(fields["VmRSS"].split()[0]) * 1024, "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _store_counts(path: str) -> dict:
    """CDRs, provider CDRs and inbound SMS (stored, delivered) in the daemon's SQLite file."""
    counts = {"cdrs": -1, "provider_cdrs": -1, "sms": -1, "sms_delivered": -1}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            counts["cdrs"] = conn.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0]
            counts["provider_cdrs"] = conn.execute("SELECT COUNT(*) FROM provider_cdrs").fetchone()[0]
            counts["sms"], counts["sms_delivered"] = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(status = 'delivered'), 0) FROM sms WHERE direction = 'inbound'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        pass
    return counts


class Sampler:
    """One row per interval, and the summary."""

    def __init__(self, reactor, daemon, load: Load, side: Side, db_path: str) -> None:
        self.reactor = reactor
        self.daemon = daemon
        self.load = load
        self.side = side
        self.db_path = db_path
        self.rows: list[dict] = []
        self.began = time.monotonic()
        self._cpu = _cpu_seconds(daemon.transport.pid)
        self._at = self.began

    @defer.inlineCallbacks
    def sample(self, label: str | None = None):
        pid = self.daemon.transport.pid
        now = time.monotonic()
        cpu = _cpu_seconds(pid)
        share = (cpu - self._cpu) / max(1e-9, now - self._at)
        self._cpu, self._at = cpu, now
        try:
            trimmed = yield self.daemon.frames_trimmed()
        except Exception:
            trimmed = -1
        load, side = self.load, self.side
        row = {
            "label": label or f"{(now - self.began) / 60:.1f}",
            "minutes": (now - self.began) / 60,
            **_proc(pid),
            "cpu": share,
            "p50": load.latency.percentile(0.50) * 1e3,
            "p99": load.latency.percentile(0.99) * 1e3,
            "echoes": load.latency.total,
            "lost": load.interval_lost,
            "trimmed": trimmed,
            "completed": load.completed,
            "failed": load.failed,
            "patriot": side.patriot_calls,
            "cdrs_expected": load.completed + side.patriot_calls,
            "provider_expected": load.completed,
            "sms_expected": side.sms_sent,
            **_store_counts(self.db_path),
            "log": self.daemon._proto.size,
            "tracebacks": self.daemon._proto.tracebacks,
            "harness_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        load.latency.reset()
        load.interval_lost = 0
        self.rows.append(row)
        sys.stderr.write(f"soak {row['label']} min: rss {row['rss'] / 1e6:.1f} MB, calls {row['completed']}, "
                         f"p99 {row['p99']:.1f} ms, lost {row['lost']}, cdrs {row['cdrs']}/{row['cdrs_expected']}, "
                         f"sms {row['sms']}/{row['sms_expected']}, tracebacks {row['tracebacks']}\n")
        return row


def _slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")


def summary(rows: list[dict], warmup_minutes: float) -> dict:
    """Slopes after the warm-up and the totals (the last row is the final count after the load stopped)."""
    steady = [r for r in rows[:-1] if r["minutes"] >= warmup_minutes] or rows[-2:-1]
    final = rows[-1]
    first = steady[0] if steady else final
    last_measured = rows[-2] if len(rows) > 1 else final
    return {
        "rss_per_call": _slope([r["completed"] for r in steady], [r["rss"] for r in steady]),
        "rss_per_minute": _slope([r["minutes"] for r in steady], [r["rss"] for r in steady]),
        "rss_first": first["rss"], "rss_last": last_measured["rss"],
        "steady_samples": len(steady),
        "p99_after_warmup": first["p99"], "p99_end": last_measured["p99"],
        "lost": sum(r["lost"] for r in rows), "trimmed": final["trimmed"],
        "completed": final["completed"], "failed": final["failed"], "patriot": final["patriot"],
        "cdrs_missing": final["cdrs_expected"] - final["cdrs"],
        "provider_cdrs_missing": final["provider_expected"] - final["provider_cdrs"],
        "sms_missing": final["sms_expected"] - final["sms"],
        "sms_undelivered": final["sms"] - final["sms_delivered"],
        "tracebacks": final["tracebacks"],
    }


def report(rows: list[dict], result: dict, options) -> str:
    from bench.media_bench import machine

    lines = [
        f"Machine: {machine()}",
        f"{options.calls} concurrent OptimaCCS echo calls of {options.call_min:g}-{options.call_max:g} s, "
        f"Patriot dial/hangup every {options.patriot_every:g} s, "
        f"{'no SMS' if options.sms_every is None else f'SMS every {options.sms_every:g} s'}, "
        f"admin poll every {options.poll_every:g} s; {options.minutes:g} min, seed {options.seed}\n",
        "| min | RSS MB | fds | threads | CPU | p50 ms | p99 ms | echoes | lost | trimmed | calls | failed "
        "| patriot | CDRs stored/expected | provider CDRs | SMS stored/sent (delivered) | log KB | tracebacks |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['rss'] / 1e6:.1f} | {r['fds']} | {r['threads']} | {r['cpu']:.0%} "
            f"| {r['p50']:.1f} | {r['p99']:.1f} | {r['echoes']:,} | {r['lost']:,} | {r['trimmed']:,} "
            f"| {r['completed']:,} | {r['failed']} | {r['patriot']} | {r['cdrs']:,}/{r['cdrs_expected']:,} "
            f"| {r['provider_cdrs']:,}/{r['provider_expected']:,} | {r['sms']}/{r['sms_expected']} "
            f"({r['sms_delivered']}) | {r['log'] / 1e3:,.0f} | {r['tracebacks']} |")
    s = result["summary"]
    lines += [
        "",
        f"After the {options.warmup_minutes:g}-minute warm-up ({s['steady_samples']} samples):",
        f"- RSS growth per completed call: **{s['rss_per_call']:,.0f} bytes/call** "
        f"({s['rss_per_minute'] / 1e3:,.1f} KB/min; {s['rss_first'] / 1e6:.1f} -> {s['rss_last'] / 1e6:.1f} MB)",
        f"- p99 echo latency: {s['p99_after_warmup']:.1f} ms after the warm-up, {s['p99_end']:.1f} ms at the end "
        f"({s['p99_end'] / s['p99_after_warmup'] if s['p99_after_warmup'] else float('nan'):.2f}x)",
        f"- calls completed {s['completed']:,} (failed {s['failed']}), Patriot calls {s['patriot']}",
        f"- frames lost {s['lost']:,} (the daemon's jitter buffer trimmed {s['trimmed']:,})",
        f"- CDRs missing {s['cdrs_missing']}, provider CDRs missing {s['provider_cdrs_missing']}, "
        f"SMS missing {s['sms_missing']} (not yet delivered {s['sms_undelivered']})",
        f"- tracebacks {s['tracebacks']}; SIGTERM exit status {result['exit_code']} in {result['stop_seconds']:.1f} s",
        f"- the harness's own peak RSS: {rows[0]['harness_rss'] / 1e6:.1f} MB at the first sample, "
        f"{rows[-1]['harness_rss'] / 1e6:.1f} MB at the end",
    ]
    if result.get("problems"):
        lines.append(f"- harness notes ({result['problem_count']}): " + "; ".join(result["problems"]))
    return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------------------------

def _config(admin: int, optimaccs: int, bridge: int, chat_port: int | None) -> str:
    from gateway.testing import GatewayProcess

    extra = (
        f'[optimaccs]\nlisten = "tcp:{optimaccs}:interface=127.0.0.1"\nallow_from = ["127.0.0.1"]\n'
        f'max_calls = 1000\n\n'
        '[[extensions]]\nid = "1001"\nname = "Soak operator"\ndevice = "sim"\n\n'
        f'[[routes]]\ndid = "{ECHO_DID}"\nto = "app:echo"\n\n'
        '[[routes]]\ndid = "*"\nto = "extension:1001"\n\n'
        '[pbx.sim]\nphone_answer_delay = 0.2\nring_time = 0.5\naudio = "silence"\n\n'
        f'[patriot.bridge]\nlisten = "tcp:{bridge}:interface=127.0.0.1"\n'
        f'users = [{{username = "{PATRIOT_USER["userName"]}", password = "{PATRIOT_USER["password"]}", '
        'extension = "1001"}]\n\n'
    )
    if chat_port is not None:
        extra += (f'[chat]\nenabled = true\nurl = "http://127.0.0.1:{chat_port}"\nreconnect_initial = 0.5\n'
                  'reconnect_max = 2.0\nretry_initial = 0.5\nretry_max = 5.0\n\n')
    return GatewayProcess.config(admin, extra)


class _ChatServer(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self._seen = bytearray()

    def outReceived(self, data: bytes) -> None:
        if not self.ready.called:
            self._seen += data
            match = re.search(rb"listening on [\d.]+:(\d+)", self._seen)
            if match:
                self.ready.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"the chat server simulator exited: {bytes(self._seen[-500:])!r}"))
        self.ended.callback(None)


@defer.inlineCallbacks
def _start_chat(reactor, port: int):
    chat = _ChatServer()
    argv = [sys.executable, "-u", "-m", "gateway.sim", "chat-server", "--port", str(port)]
    transport = reactor.spawnProcess(chat, sys.executable, argv, env=os.environ, path=os.getcwd())
    yield chat.ready.addTimeout(30, reactor)

    def stop():
        if not chat.ended.called:
            transport.signalProcess("KILL")
        return chat.ended

    return stop


@defer.inlineCallbacks
def _wait(reactor, seconds: float, daemon):
    """Sleep, failing at once if the daemon dies meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if daemon.ended.called:
            raise RuntimeError(f"the daemon exited during the soak:\n{daemon.output}")
        yield deferLater(reactor, max(0.0, min(0.5, end - time.monotonic())), lambda: None)


def _snapshot(daemon, snapdir: str, number: int, reactor):
    path = os.path.join(snapdir, f"snapshot-{number}.tracemalloc")
    daemon.signal(signal.SIGUSR2)

    @defer.inlineCallbacks
    def wait():
        for _ in range(1200):
            if os.path.exists(path):
                return path
            yield deferLater(reactor, 0.1, lambda: None)
        raise RuntimeError("the daemon wrote no tracemalloc snapshot in 120 s")

    return wait()


def tracemalloc_report(first: str, second: str, top: int = 25) -> str:
    import tracemalloc

    filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    old = tracemalloc.Snapshot.load(first).filter_traces(filters)
    new = tracemalloc.Snapshot.load(second).filter_traces(filters)
    lines = [f"tracemalloc, between the end of the warm-up and the end of the load (top {top} by growth):"]
    for stat in new.compare_to(old, "traceback")[:top]:
        lines.append(f"{stat.size_diff / 1e3:+10.1f} KB {stat.count_diff:+8d} blocks")
        lines.extend(f"      {line}" for line in stat.traceback.format(limit=6, most_recent_first=True) if line.strip())
    return "\n".join(lines)


@defer.inlineCallbacks
def soak(reactor, options):
    from gateway.testing import free_port

    rng = random.Random(options.seed)
    workdir = options.workdir or tempfile.mkdtemp(prefix="soak-")
    os.makedirs(workdir, exist_ok=True)
    admin, optimaccs, bridge = free_port(), free_port(), free_port()
    stop_chat = None
    chat_port = None
    if not options.no_chat:
        chat_port = free_port()
        stop_chat = yield _start_chat(reactor, chat_port)
    daemon = _daemon_class()(reactor, workdir, _config(admin, optimaccs, bridge, chat_port),
                             env={"SOAK_SNAPSHOT_DIR": workdir, "PYTHONPATH": os.pathsep.join(
                                 [str(pathlib.Path(__file__).resolve().parent.parent),
                                  *filter(None, [os.environ.get("PYTHONPATH")])])})
    daemon.tracemalloc_frames = options.tracemalloc
    result = {"exit_code": None, "stop_seconds": float("nan")}
    load = side = None
    try:
        yield daemon.start(admin, timeout=60)
        sys.stderr.write(f"soak: daemon pid {daemon.transport.pid}, work directory {workdir}\n")
        load = Load(reactor, optimaccs, options.calls, rng, options.call_min, options.call_max)
        side = Side(reactor, daemon, f"ws://127.0.0.1:{bridge}/dialler", options.patriot_every, options.sms_every,
                    options.poll_every)
        sampler = Sampler(reactor, daemon, load, side, os.path.join(workdir, "var", "gateway.sqlite"))
        load.start()
        side.start()
        total = options.minutes * 60
        snapshots = []
        warmup_snapshot_due = options.tracemalloc > 0
        while True:
            elapsed = time.monotonic() - sampler.began
            left = total - elapsed
            if left <= 0:
                break
            yield _wait(reactor, min(options.sample_seconds - (elapsed % options.sample_seconds), left), daemon)
            yield sampler.sample()
            if warmup_snapshot_due and time.monotonic() - sampler.began >= options.warmup_minutes * 60:
                warmup_snapshot_due = False
                snapshots.append((yield _snapshot(daemon, workdir, 1, reactor)))
        if options.tracemalloc > 0:
            snapshots.append((yield _snapshot(daemon, workdir, len(snapshots) + 1, reactor)))
        yield side.stop()
        yield load.stop()
        yield _wait(reactor, 3.0, daemon)  # the last CDRs and SMS reach the store
        yield sampler.sample("end")
        stopping = time.monotonic()
        result["exit_code"] = yield daemon.stop()
        result["stop_seconds"] = time.monotonic() - stopping
        result["summary"] = summary(sampler.rows, options.warmup_minutes)
        result["problem_count"] = load.problems + len(side._problems)
        result["problems"] = (load.last_problems + side._problems)[-6:]
        print(report(sampler.rows, result, options))
        sys.stdout.flush()
        if len(snapshots) == 2:
            print()
            print(tracemalloc_report(*snapshots))
        if options.json:
            with open(options.json, "w") as f:
                json.dump({"rows": sampler.rows, **result}, f, indent=1, default=str)
    finally:
        if side is not None and side.running:
            yield side.stop()
        if load is not None and load.running:
            yield load.stop()
        yield daemon.stop()
        if stop_chat is not None:
            yield stop_chat()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="minutes of load (default 60; fractions allowed)")
    parser.add_argument("--calls", type=int, default=40, help="concurrent OptimaCCS echo calls (default 40)")
    parser.add_argument("--call-min", type=float, default=20.0, help="shortest call, seconds (default 20)")
    parser.add_argument("--call-max", type=float, default=60.0, help="longest call, seconds (default 60)")
    parser.add_argument("--seed", type=int, default=18, help="random seed of the call durations (default 18)")
    parser.add_argument("--sample-seconds", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--warmup-minutes", type=float, default=2.0, help="minutes left out of the slopes (default 2)")
    parser.add_argument("--patriot-every", type=float, default=10.0, help="seconds between Patriot dials (default 10)")
    parser.add_argument("--sms-every", type=float, default=5.0, help="seconds between inbound SMS (default 5)")
    parser.add_argument("--poll-every", type=float, default=2.0, help="seconds between admin polls (default 2)")
    parser.add_argument("--no-chat", action="store_true", help="no chat server simulator, no SMS")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="run the daemon under tracemalloc and print the growth after the warm-up")
    parser.add_argument("--workdir", help="the daemon's directory (default: a new temporary one, kept)")
    parser.add_argument("--json", help="also write the samples and the summary to this file")
    if argv and argv[0] == "--run-daemon":
        run_daemon(int(argv[1]), argv[2:])
        return 0
    options = parser.parse_args(argv)
    if options.no_chat:
        options.sms_every = None
    failed = []

    def run(reactor):
        return soak(reactor, options).addErrback(lambda f: failed.append(f) or f)

    try:
        task.react(run)
    except SystemExit as e:
        return int(e.code or 0) if not failed else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
