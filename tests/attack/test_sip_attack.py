"""Hostile peers against the REAL daemon's SIP listener and RTP ports (``twistd gateway`` with ``[sip]``).

A stranger (127.0.0.2, no trunk) floods INVITEs; a trunk peer (127.0.0.1) sends malformed, oversized and
header-flooded messages over UDP and TCP, CANCEL/BYE for dialogs that do not exist, RTP with bad versions,
CSRC counts, extension lengths and padding, RTCP garbage, and strangers flood an allocated RTP port. After
each, the daemon is up, the damage is counted, no call or RTP port leaks, and a real call still works.
"""

import os
import random
import re
import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.task import deferLater

from gateway.testing import GatewayProcess, free_port
from tests.sip.test_daemon_sipp import cdrs, daemon_config
from tests.sip.test_sipp import free_udp_port
from tests.sip.torture import wire

pytestmark = pytest.mark.timeout(90)

STRANGER = "127.0.0.2"


def reactor():
    from twisted.internet import reactor as global_reactor

    return global_reactor


def pause(seconds):
    return deferLater(reactor(), seconds, lambda: None)


class Collector(protocol.DatagramProtocol):
    def __init__(self):
        self.received = []

    def datagramReceived(self, data, addr):
        self.received.append((data, addr))

    def statuses(self, since=0):
        return [int(d.split(b" ", 2)[1]) for d, _ in self.received[since:] if d.startswith(b"SIP/2.0 ")]


@pytest.fixture
def daemon(processes, tmp_path):
    async def start(**options):
        admin, sip_port, trunk_port = free_port(), free_udp_port(), free_udp_port()
        proc = GatewayProcess(reactor(), tmp_path, daemon_config(admin, sip_port, trunk_port=trunk_port, **options))
        processes.append(proc)
        await proc.start(admin)
        proc.sip_port, proc.trunk_port = sip_port, trunk_port
        return proc

    return start


@pytest.fixture
def udp(cleanup):
    """``udp(host, port=0)``: a Collector listening there (stopped at teardown)."""

    def listen(host, port=0):
        collector = Collector()
        listening = reactor().listenUDP(port, collector, interface=host)
        cleanup(lambda: pytest_twisted.blockon(defer.maybeDeferred(listening.stopListening)))
        collector.port = listening.getHost().port
        return collector

    return listen


def invite(did, host, port, branch, *, rtp_port=40000, call_id=None):
    sdp = f"v=0\no=- 1 1 IN IP4 {host}\ns=-\nc=IN IP4 {host}\nt=0 0\nm=audio {rtp_port} RTP/AVP 0\n"
    return wire(f"""INVITE sip:{did}@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP {host}:{port};branch={branch}
Max-Forwards: 70
From: <sip:+15559876@{host}>;tag=f{call_id or branch}
To: <sip:{did}@127.0.0.1>
Call-ID: {call_id or branch}@{host}
CSeq: 1 INVITE
Contact: <sip:carrier@{host}:{port}>
Content-Type: application/sdp
Content-Length: {{CL}}

""", sdp)


def in_dialog(method, host, port, branch, call_id, *, to_tag="", cseq=2, ruri="sip:600@127.0.0.1"):
    tag = f";tag={to_tag}" if to_tag else ""
    return wire(f"""{method} {ruri} SIP/2.0
Via: SIP/2.0/UDP {host}:{port};branch={branch}
Max-Forwards: 70
From: <sip:+15559876@{host}>;tag=f{call_id}
To: <sip:600@127.0.0.1>{tag}
Call-ID: {call_id}@{host}
CSeq: {cseq} {method}
Content-Length: 0

""")


def options(host, port, branch):
    return wire(f"""OPTIONS sip:127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP {host}:{port};branch={branch}
Max-Forwards: 70
From: <sip:probe@{host}>;tag=o{branch}
To: <sip:127.0.0.1>
Call-ID: {branch}@{host}
CSeq: 1 OPTIONS
Content-Length: 0

""")


def rtp(seq, *, version=2, payload_type=0, csrc=0, extension=None, padding=None, payload=b"\xff" * 160, ssrc=0x1234):
    first = (version << 6) | (0x20 if padding is not None else 0) | (0x10 if extension is not None else 0) | csrc
    packet = struct.pack("!BBHII", first, payload_type, seq & 0xFFFF, seq * 160, ssrc)
    packet += b"".join(struct.pack("!I", i) for i in range(csrc))
    if extension is not None:
        packet += extension
    packet += payload
    if padding is not None:
        packet += padding
    return packet


async def metric(proc, name, **labels):
    return await proc.metric_sum(name, **labels)


async def assert_alive(proc, client, host):
    """OPTIONS from ``client`` is answered 200 and /healthz is ok; no traceback in the output."""
    before = len(client.received)
    client.transport.write(options(host, client.port, f"z9hG4bKalive{random.randrange(10**9)}"),
                           ("127.0.0.1", proc.sip_port))
    for _ in range(30):
        if 200 in client.statuses(before):
            break
        await pause(0.1)
    assert 200 in client.statuses(before), client.received[before:]
    _, health = await proc.api("GET", "/healthz", expect=200)
    assert health == {"status": "ok"}
    assert "Traceback" not in proc.output and "Unhandled" not in proc.output, proc.output[-5000:]


@pytest_twisted.ensureDeferred
async def test_a_strangers_invite_flood_gets_one_403_each_no_retransmissions_and_no_call(daemon, udp):
    proc = await daemon()
    stranger = udp(STRANGER)
    for i in range(200):
        stranger.transport.write(invite("600", STRANGER, stranger.port, f"z9hG4bKflood{i}"), ("127.0.0.1", proc.sip_port))
        if i % 50 == 49:
            await pause(0.05)
    await pause(2.5)  # the old stateful 403 was re-sent at 0.5 s and 1.5 s (timer G), and went on for 32 s
    statuses = stranger.statuses()
    assert statuses.count(403) == 200 and set(statuses) == {403}, sorted(set(statuses))
    assert await metric(proc, "gateway_sip_refused_total", reason="unknown_host") == 200
    _, calls = await proc.api("GET", "/api/calls", expect=200)
    assert calls["calls"] == []
    assert len(re.findall(r"refused an INVITE from 127\.0\.0\.2", proc.output)) <= 6, "one log line per INVITE"
    trunk = udp("127.0.0.1", proc.trunk_port)
    await assert_alive(proc, trunk, "127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_cancel_bye_and_stray_acks_for_unknown_dialogs(daemon, udp):
    proc = await daemon()
    trunk = udp("127.0.0.1", proc.trunk_port)
    stranger = udp(STRANGER)
    for client, host in ((trunk, "127.0.0.1"), (stranger, STRANGER)):
        before = len(client.received)
        for method in ("CANCEL", "BYE"):
            client.transport.write(in_dialog(method, host, client.port, f"z9hG4bK{method}{host}", f"nodialog{method}",
                                             to_tag="x1"), ("127.0.0.1", proc.sip_port))
        client.transport.write(in_dialog("ACK", host, client.port, f"z9hG4bKack{host}", "nodialogack", to_tag="x1",
                                         cseq=1), ("127.0.0.1", proc.sip_port))
        await pause(0.5)
        assert sorted(client.statuses(before)) == [481, 481], client.received[before:]
    await assert_alive(proc, trunk, "127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_oversized_and_header_flooded_messages_over_udp_and_tcp(daemon, udp):
    proc = await daemon(transport="tcp")
    trunk = udp("127.0.0.1", proc.trunk_port)
    flood = options("127.0.0.1", trunk.port, "z9hG4bKhdr").replace(b"Content-Length: 0\r\n",
                                                                  b"X-F: a\r\n" * 400 + b"Content-Length: 0\r\n")
    long_line = options("127.0.0.1", trunk.port, "z9hG4bKlong").replace(b"Content-Length: 0\r\n",
                                                                       b"X-L: " + b"a" * 20000 + b"\r\nContent-Length: 0\r\n")
    before = len(trunk.received)
    for data in (flood, long_line, b"\x00" * 60000, b"INVITE " + b"\xff" * 3000):
        trunk.transport.write(data, ("127.0.0.1", proc.sip_port))
    await pause(0.5)
    assert all(status >= 400 for status in trunk.statuses(before)), trunk.statuses(before)

    # TCP: each abuse is answered (when it can be) and the connection closed; the listener takes the next one
    cases = [
        flood,
        long_line,
        b"OPTIONS sip:x SIP/2.0\r\n" + b"X: y\r\n" * 20000,  # a head that never ends
        options("127.0.0.1", 5060, "z9hG4bKcl").replace(b"Content-Length: 0", b"Content-Length: 999999999999"),
        b"\r\n" * 100000 + b"garbage\r\n\r\n",
    ]
    for data in cases:
        sock = socket.create_connection(("127.0.0.1", proc.sip_port), timeout=5)
        try:
            sock.sendall(data)
        except OSError:
            pass  # the daemon closed first: that is the point
        sock.settimeout(0.1)
        answer, closed = b"", False
        for _ in range(50):
            await pause(0.1)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            answer += chunk
        sock.close()
        assert closed, (data[:60], answer[:200])
    await assert_alive(proc, trunk, "127.0.0.1")
    assert await metric(proc, "gateway_ignored_messages_total", adapter="sip") >= 7


async def answered_call(proc, trunk, media, call_id="attack1"):
    """An INVITE from the trunk into the echo (DID 600) with our RTP socket; returns (to_tag, rtp_port)."""
    before = len(trunk.received)
    trunk.transport.write(invite("600", "127.0.0.1", trunk.port, f"z9hG4bK{call_id}", rtp_port=media.port,
                                 call_id=call_id), ("127.0.0.1", proc.sip_port))
    for _ in range(100):
        ok = [d for d, _ in trunk.received[before:] if d.startswith(b"SIP/2.0 200")]
        if ok:
            break
        await pause(0.1)
    assert ok, trunk.received[before:]
    response = ok[0].decode()
    to_tag = re.search(r"^To:.*;tag=([^;\r\n]+)", response, re.M | re.I).group(1)
    port = int(re.search(r"^m=audio (\d+)", response, re.M).group(1))
    return to_tag, port


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest_twisted.ensureDeferred
async def test_rtp_floods_and_malformed_rtp_and_rtcp_leave_the_call_working_and_the_ports_freed(daemon, udp):
    proc = await daemon()
    trunk = udp("127.0.0.1", proc.trunk_port)
    media = udp("127.0.0.1")
    to_tag, rtp_port = await answered_call(proc, trunk, media)
    trunk.transport.write(in_dialog("ACK", "127.0.0.1", trunk.port, "z9hG4bKack1", "attack1", to_tag=to_tag, cseq=1),
                          ("127.0.0.1", proc.sip_port))
    # a stranger floods the RTP and RTCP ports with valid-looking RTP first (before the latch)
    stranger = udp(STRANGER)
    for seq in range(300):
        stranger.transport.write(rtp(seq, ssrc=0xBAD), ("127.0.0.1", rtp_port))
        stranger.transport.write(b"\x80\xc8" + b"\xff" * 50, ("127.0.0.1", rtp_port + 1))
        if seq % 100 == 99:
            await pause(0.05)
    # malformed RTP from the trunk's own address: bad versions, CSRC counts past the end, extension lengths
    # past the end, padding longer than the packet, truncated headers; RTCP garbage
    bad = [rtp(1, version=0), rtp(1, version=1), rtp(1, version=3), rtp(1, csrc=15, payload=b""),
           rtp(1, extension=b"\xbe\xde\xff\xff", payload=b""), rtp(1, padding=b"\x00" * 3 + b"\xff", payload=b""),
           rtp(1, padding=b"\x00", payload=b""), b"\x80", b"", b"\x80\x00\x00", rtp(1, payload_type=127)]
    for packet in bad * 20:
        media.transport.write(packet, ("127.0.0.1", rtp_port))
    for junk in (b"", b"\x80", b"\x81\xc9\x00\xff" + b"\x00" * 4, b"\x80\xc8\x00\x06" + b"\x00" * 10, b"\xff" * 1400):
        media.transport.write(junk, ("127.0.0.1", rtp_port + 1))
    await pause(0.3)
    # the real audio from the SDP's address: echoed back to it, none of it to the stranger
    before = len(media.received)
    for seq in range(100, 150):
        media.transport.write(rtp(seq), ("127.0.0.1", rtp_port))
        await pause(0.02)
    await pause(0.5)
    echoed = [d for d, addr in media.received[before:] if addr[1] == rtp_port and len(d) >= 12 and d[0] >> 6 == 2]
    assert len(echoed) >= 20, len(echoed)
    assert not [d for d, addr in stranger.received if addr[1] == rtp_port], "RTP sent to the stranger"
    assert await metric(proc, "gateway_sip_rtp_dropped_total", reason="address") >= 300
    assert await metric(proc, "gateway_sip_rtp_dropped_total", reason="malformed") >= 100
    # hang up: 200, the CDR stored, both ports free again
    before = len(trunk.received)
    trunk.transport.write(in_dialog("BYE", "127.0.0.1", trunk.port, "z9hG4bKbye1", "attack1", to_tag=to_tag, cseq=3),
                          ("127.0.0.1", proc.sip_port))
    await pause(0.5)
    assert 200 in trunk.statuses(before)
    records = await cdrs(proc, 1)
    assert len(records) == 1
    for _ in range(30):
        if port_is_free(rtp_port) and port_is_free(rtp_port + 1):
            break
        await pause(0.1)
    assert port_is_free(rtp_port) and port_is_free(rtp_port + 1)
    await assert_alive(proc, trunk, "127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_a_trunk_that_never_acks_gets_a_bounded_200_retransmission_then_a_bye(daemon, udp):
    """RFC 3261 13.3.1.4: the 200 is re-sent (T1 doubling to T2) for 64*T1 = 32 s, then the call ends with a BYE
    (cause no_ack), its CDR stored and its RTP ports freed."""
    proc = await daemon()
    trunk = udp("127.0.0.1", proc.trunk_port)
    media = udp("127.0.0.1")
    _, rtp_port = await answered_call(proc, trunk, media, call_id="noack")
    for _ in range(400):
        if any(d.startswith(b"BYE ") for d, _ in trunk.received):
            break
        await pause(0.1)
    oks = [d for d, _ in trunk.received if d.startswith(b"SIP/2.0 200")]
    assert 5 <= len(oks) <= 12, len(oks)
    assert any(d.startswith(b"BYE ") for d, _ in trunk.received)
    await pause(1.0)
    assert len([d for d, _ in trunk.received if d.startswith(b"SIP/2.0 200")]) == len(oks), "200 after the BYE"
    records = await cdrs(proc, 1)
    assert records and records[0]["cause"] != "normal", records
    assert port_is_free(rtp_port) and port_is_free(rtp_port + 1)


def closed_by_peer(sock, wait=0.0):
    sock.settimeout(wait or 0.01)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


@pytest_twisted.ensureDeferred
async def test_a_stranger_holding_tcp_connections_is_capped_per_address(daemon, udp):
    """16 connections from one address at most (the 17th on is closed at once, counted); the trunk still
    connects and is answered."""
    proc = await daemon(transport="tcp")
    held = []
    try:
        for _ in range(20):
            sock = socket.socket()
            sock.bind((STRANGER, 0))
            sock.connect(("127.0.0.1", proc.sip_port))
            sock.sendall(b"OPTIONS sip:x SIP/2.0\r\nVia: ")  # a message begun, never ended
            held.append(sock)
        await pause(0.5)
        closed = [closed_by_peer(sock) for sock in held]
        assert closed == [False] * 16 + [True] * 4, closed
        assert await metric(proc, "gateway_sip_refused_total", reason="tcp_connections") == 4
        trunk = socket.create_connection(("127.0.0.1", proc.sip_port), timeout=5)
        trunk.sendall(options("127.0.0.1", 5060, "z9hG4bKtcptrunk").replace(b"UDP", b"TCP"))
        answer = b""
        for _ in range(30):
            await pause(0.1)
            trunk.settimeout(0.05)
            try:
                answer += trunk.recv(4096)
            except socket.timeout:
                continue
            if b"\r\n\r\n" in answer:
                break
        trunk.close()
        assert answer.startswith(b"SIP/2.0 200"), answer
    finally:
        for sock in held:
            sock.close()
    trunk_udp = udp("127.0.0.1", proc.trunk_port)
    await assert_alive(proc, trunk_udp, "127.0.0.1")


def udp_sockets(pid):
    """How many UDP sockets the process ``pid`` has open (its RTP/RTCP pairs and the SIP socket)."""
    inodes = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            count += sum(1 for line in f.readlines()[1:] if line.split()[9] in inodes)
    return count


@pytest_twisted.ensureDeferred
async def test_trunk_invites_with_bad_sdp_or_hung_up_at_once_leak_no_rtp_ports(daemon, udp):
    proc = await daemon()
    trunk = udp("127.0.0.1", proc.trunk_port)
    pid = proc.transport.pid
    base = udp_sockets(pid)
    good = invite("600", "127.0.0.1", trunk.port, "z9hG4bKx", rtp_port=40000).decode()
    head, _, sdp = good.partition("\r\n\r\n")
    bodies = {
        "no body": "",
        "not sdp": "hello\r\n",
        "no audio": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 4000 RTP/AVP 31\r\n",
        "no codec of ours": sdp.replace("RTP/AVP 0", "RTP/AVP 18"),
        "port 0": sdp.replace("m=audio 40000", "m=audio 0"),
        "port 70000": sdp.replace("m=audio 40000", "m=audio 70000"),
        "1000 m-lines": sdp + "m=audio 4002 RTP/AVP 0\r\n" * 1000,
        "a huge attribute": sdp + "a=x:" + "y" * 30000 + "\r\n",
    }
    for i, (name, body) in enumerate(bodies.items()):
        message = head.replace("z9hG4bKx", f"z9hG4bKsdp{i}")
        message = re.sub(r"Content-Length: \d+", f"Content-Length: {len(body.encode())}", message)
        if not body:
            message = message.replace("Content-Type: application/sdp\r\n", "")
        trunk.transport.write((message + "\r\n\r\n" + body).encode(), ("127.0.0.1", proc.sip_port))
        await pause(0.2)
    # and calls the trunk CANCELs at once, before any answer
    for i in range(10):
        data = invite("700", "127.0.0.1", trunk.port, f"z9hG4bKcx{i}", rtp_port=40000, call_id=f"cx{i}")
        trunk.transport.write(data, ("127.0.0.1", proc.sip_port))
        cancel = data.decode().split("\r\n\r\n")[0].replace("INVITE sip:700", "CANCEL sip:700", 1)
        cancel = cancel.replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL").replace("Content-Type: application/sdp\r\n", "")
        cancel = re.sub(r"Content-Length: \d+", "Content-Length: 0", cancel)
        trunk.transport.write((cancel + "\r\n\r\n").encode(), ("127.0.0.1", proc.sip_port))
    for _ in range(50):
        if udp_sockets(pid) == base:
            break
        await pause(0.1)
    assert udp_sockets(pid) == base, (base, udp_sockets(pid))
    _, calls = await proc.api("GET", "/api/calls", expect=200)
    assert calls["calls"] == [], calls
    statuses = trunk.statuses()
    assert 500 not in statuses and all(s < 500 or s == 503 for s in statuses), statuses
    await assert_alive(proc, trunk, "127.0.0.1")
