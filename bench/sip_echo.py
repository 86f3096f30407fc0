"""SIP echo benchmark: the daemon's CPU per RTP packet echoed by ``app:echo``, against the OptimaCCS
WebSocket echo path, in the same run and the same daemon.

``python -m bench sip-echo [--calls N] [--seconds S] [--warmup W] [--phases P]`` starts one daemon
(``twistd -n gateway``) with ``[sip]`` (UDP on loopback, a trunk at this process's address) and
``[optimaccs]`` on loopback, both with a DID routed to ``app:echo``, then measures two cases one after
the other:

- **sip**: ``--calls`` SIP calls placed by this process (a lean UAC over raw UDP: INVITE with a PCMU
  offer, ACK to the 200, one RTP socket per call). Each call sends one 172-byte RTP packet (160 bytes of
  PCMU, 20 ms) every 20 ms, the calls dealt into ``--phases`` groups sending in turn; the gateway
  latches, feeds each packet into the leg's MediaPort, and the echo plays it back as RTP on the media
  clock.
- **websocket**: as many OptimaCCS connections (``incoming_call``, then 320-byte pcm16 frames every
  20 ms), with the generator of ``bench/optimaccs_echo.py``.

Reported for each: packets (frames) sent and echoed in the ``--seconds`` window after ``--warmup``, the
daemon's CPU (user+system of the process, from ``/proc``) per echoed packet in microseconds, and its CPU
share; then the ratio sip / websocket. Latency is not measured here (see ``optimaccs-echo``); RTCP and
the SIP signalling before the window are not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import struct
import sys
import tempfile
import time

from twisted.internet import defer, protocol, task
from twisted.internet.task import deferLater

ECHO_DID = "0210000999"
TICK = 0.020
PAYLOAD = b"\xff" * 160
_RTP = struct.Struct("!BBHII")


def _sleep(reactor, seconds):
    return deferLater(reactor, seconds, lambda: None)


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _RTPCall(protocol.DatagramProtocol):
    """One call's RTP socket: sends paced packets to the gateway, counts the echoes."""

    def __init__(self, load: "_SIPLoad", index: int) -> None:
        self.load = load
        self.index = index
        self.remote: tuple[str, int] | None = None
        self.seq = 0
        self.timestamp = 0
        self.ssrc = 0x5100 + index

    def datagramReceived(self, data, addr):
        if self.load.collecting:
            self.load.echoed += 1

    def send(self) -> None:
        if self.remote is None:
            return
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + 160) & 0xFFFFFFFF
        self.transport.write(_RTP.pack(0x80, 0, self.seq, self.timestamp, self.ssrc) + PAYLOAD, self.remote)


class _Signalling(protocol.DatagramProtocol):
    """The UAC's SIP socket (at the trunk's address): INVITE, ACK to each 200, BYE at the end."""

    def __init__(self, load: "_SIPLoad") -> None:
        self.load = load

    def datagramReceived(self, data, addr):
        head, _, body = data.partition(b"\r\n\r\n")
        text = head.decode("utf-8", "replace")
        if not text.startswith("SIP/2.0 200"):
            return
        call_id = re.search(r"(?mi)^Call-ID:\s*(\S+)", text).group(1)
        cseq = re.search(r"(?mi)^CSeq:\s*(\d+)\s+(\w+)", text)
        if cseq.group(2) != "INVITE":
            self.load.byes_answered += 1
            return
        to = re.search(r"(?mi)^To:\s*(.+)$", text).group(1).strip()
        call = self.load.by_call_id.get(call_id)
        if call is None:
            return
        media = re.search(rb"m=audio (\d+)", body)
        if call.remote is None and media is not None:
            call.remote = ("127.0.0.1", int(media.group(1)))
            call.to = to
            self.load.answered += 1
        self.transport.write(self.load.request("ACK", call, to=to, cseq=1), addr)


class _SIPLoad:
    def __init__(self, reactor, sip_port: int, phases: int) -> None:
        self.reactor = reactor
        self.sip_port = sip_port
        self.phases = phases
        self.calls: list[_RTPCall] = []
        self.by_call_id: dict[str, _RTPCall] = {}
        self.ports = []
        self.answered = 0
        self.byes_answered = 0
        self.collecting = False
        self.sent = 0
        self.echoed = 0
        self.tick = 0
        self._ticker = None
        self.signalling = _Signalling(self)
        self.local_port = None

    def request(self, method: str, call: _RTPCall, *, to: str, cseq: int, body: bytes = b"") -> bytes:
        branch = f"z9hG4bKbench{call.index}x{method}{cseq}{time.monotonic_ns()}"
        lines = [f"{method} sip:{ECHO_DID}@127.0.0.1:{self.sip_port} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.local_port};branch={branch};rport",
                 "Max-Forwards: 70", f"From: <sip:bench{call.index}@127.0.0.1>;tag=bench{call.index}",
                 f"To: {to}", f"Call-ID: {call.call_id}", f"CSeq: {cseq} {method}",
                 f"Contact: <sip:bench@127.0.0.1:{self.local_port}>"]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    @defer.inlineCallbacks
    def connect(self, calls: int, signalling_port: int, timeout: float = 30.0):
        self.local_port = signalling_port
        self.ports.append(self.reactor.listenUDP(signalling_port, self.signalling, interface="127.0.0.1"))
        for index in range(calls):
            call = _RTPCall(self, index)
            port = self.reactor.listenUDP(0, call, interface="127.0.0.1")
            self.ports.append(port)
            call.call_id = f"bench-{index}-{os.getpid()}@127.0.0.1"
            self.by_call_id[call.call_id] = call
            self.calls.append(call)
            rtp_port = port.getHost().port
            sdp = (f"v=0\r\no=bench {index} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                   f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
                   f"a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n").encode()
            invite = self.request("INVITE", call, to=f"<sip:{ECHO_DID}@127.0.0.1>", cseq=1, body=sdp)
            self.signalling.transport.write(invite, ("127.0.0.1", self.sip_port))
            if index % 10 == 9:
                yield _sleep(self.reactor, 0.05)
        deadline = time.monotonic() + timeout
        while self.answered < calls:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.answered} of {calls} SIP calls were answered in {timeout} s")
            yield _sleep(self.reactor, 0.05)

    def start(self) -> None:
        self._ticker = task.LoopingCall(self._send)
        self._ticker.clock = self.reactor
        self._ticker.start(TICK / self.phases)

    def _send(self) -> None:
        group = self.calls[self.tick % self.phases::self.phases]
        for call in group:
            call.send()
        if self.collecting:
            self.sent += len(group)
        self.tick += 1

    @defer.inlineCallbacks
    def close(self):
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        for call in self.calls:
            if call.remote is not None:
                self.signalling.transport.write(self.request("BYE", call, to=call.to, cseq=2),
                                                ("127.0.0.1", self.sip_port))
        yield _sleep(self.reactor, 1.0)
        for port in self.ports:
            yield port.stopListening()


_CONFIG = """
[optimaccs]
listen = "tcp:{ws_port}:interface=127.0.0.1"
allow_from = ["127.0.0.1"]
max_calls = 100000

[sip]
listen = "udp:{sip_port}:interface=127.0.0.1"
rtp_ports = "{rtp_low}-{rtp_high}"
media_timeout = 0

[[sip.trunks]]
name = "bench"
proxy = "udp:127.0.0.1:{trunk_port}"

[[routes]]
did = "{did}"
to = "app:echo"
"""


@defer.inlineCallbacks
def _measure(reactor, pid: int, load, options):
    from bench.optimaccs_echo import _cpu_seconds

    load.start()
    yield _sleep(reactor, options.warmup)
    cpu_before, wall_before = _cpu_seconds(pid), time.perf_counter()
    load.collecting = True
    yield _sleep(reactor, options.seconds)
    load.collecting = False
    cpu = _cpu_seconds(pid) - cpu_before
    wall = time.perf_counter() - wall_before
    return cpu, wall


@defer.inlineCallbacks
def run(reactor, options):
    from bench.optimaccs_echo import _cpu_seconds, _incoming_call, _Load
    from gateway.testing import GatewayProcess, free_port

    admin, ws_port, sip_port, trunk_port = free_port(), free_port(), _udp_port(), _udp_port()
    rtp_low = 30000 + (os.getpid() % 200) * 100
    config = GatewayProcess.config(admin, _CONFIG.format(
        ws_port=ws_port, sip_port=sip_port, trunk_port=trunk_port, rtp_low=rtp_low,
        rtp_high=rtp_low + 2 * options.calls + 51, did=ECHO_DID))
    home = tempfile.mkdtemp()
    daemon = GatewayProcess(reactor, home, config, args=["--logfile", os.path.join(home, "gateway.log")])
    results = {}
    try:
        yield daemon.start(admin)
        pid = daemon.transport.pid
        # -- sip
        sip = _SIPLoad(reactor, sip_port, options.phases)
        try:
            yield sip.connect(options.calls, trunk_port)
            cpu, wall = yield _measure(reactor, pid, sip, options)
            results["sip"] = {"sent": sip.sent, "echoed": sip.echoed, "cpu_s": cpu, "wall_s": wall}
        finally:
            yield sip.close()
        yield _sleep(reactor, 1.0)
        # -- websocket (OptimaCCS)
        ws = _Load(reactor, ws_port, True, _incoming_call, options.phases)
        try:
            yield ws.connect(options.calls)
            ws.start()
            yield _sleep(reactor, options.warmup)
            cpu_before, wall_before = _cpu_seconds(pid), time.perf_counter()
            ws.open_window()
            yield _sleep(reactor, options.seconds)
            window = ws.close_window()
            ws.stop()
            yield _sleep(reactor, 0.5)
            cpu, wall = _cpu_seconds(pid) - cpu_before, time.perf_counter() - wall_before
            summary = window.summary()
            results["websocket"] = {"sent": summary["sent"], "echoed": summary["echoed"], "cpu_s": cpu,
                                    "wall_s": wall}
        finally:
            yield ws.close()
    finally:
        yield daemon.stop()
    return results


def report(results: dict, options) -> str:
    lines = [f"sip-echo: {options.calls} calls each way, {options.seconds:g} s window after {options.warmup:g} s, "
             f"{options.phases} phases, one daemon",
             f"{'path':<10} {'sent':>8} {'echoed':>8} {'lost%':>6} {'cpu us/pkt':>11} {'cpu share':>10}"]
    per = {}
    for name in ("sip", "websocket"):
        r = results.get(name)
        if r is None:
            continue
        us = r["cpu_s"] / max(1, r["echoed"]) * 1e6
        per[name] = us
        lost = 100 * (1 - r["echoed"] / max(1, r["sent"]))
        lines.append(f"{name:<10} {r['sent']:>8} {r['echoed']:>8} {lost:>6.1f} {us:>11.1f} "
                     f"{r['cpu_s'] / r['wall_s']:>10.2f}")
    if len(per) == 2:
        lines.append(f"sip / websocket CPU per packet: {per['sip'] / per['websocket']:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sip-echo", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--phases", type=int, default=10)
    options = parser.parse_args(argv)
    from twisted.internet import reactor

    outcome = {}

    def go():
        d = run(reactor, options)
        d.addCallbacks(lambda results: outcome.update(results=results),
                       lambda failure: outcome.update(error=failure))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if "error" in outcome:
        outcome["error"].printTraceback(file=sys.stderr)
        return 1
    print(report(outcome["results"], options))
    return 0
