"""RTP for the SIP leg (RFC 3550, RFC 4733): packets, receive statistics, RTCP reports, DTMF events,
and the UDP socket of one leg with symmetric RTP and a media timeout.

Independent of the media plane: payloads go in and out as bytes, so the
driver can feed a :class:`~gateway.media` port from :class:`RTPSession`'s
``on_audio`` and send what the port plays out with :meth:`RTPSession.send_audio`.

- :class:`RTPPacket`: parse (strictly: version 2, lengths that add up, at most
  15 CSRCs, a bounded header extension, padding inside the packet) and serialise.
- :class:`ReceiveStats`: RFC 3550 A.1 sequence tracking with wrap-around and
  probation, A.3 loss (cumulative and per-report fraction), A.8 interarrival
  jitter; the numbers RTCP reports, the metrics and the CDR want.
- :func:`sender_report`, :func:`receiver_report`, :func:`parse_rtcp`: the RTCP
  SR and RR (RFC 3550 6.4), enough to count loss and jitter both ways.
- :class:`DTMFEvent`, :class:`DTMFReceiver`, :func:`dtmf_packets`: RFC 4733
  telephone-events: a digit is reported once per event (start, and the three
  redundant end packets deduplicated by timestamp), and a digit is sent as
  packets every 20 ms with a growing duration and three end packets.
- :class:`RTPSession`: the UDP ``DatagramProtocol`` of one leg. It **latches**
  onto the source address of the first valid packet (symmetric RTP: a peer
  behind NAT is answered where its packets come from, not where its SDP says),
  drops and counts packets from any other address (an RTP flood from an
  unexpected address never reaches the call), drops what is not RTP or not the
  negotiated payload types, and calls ``on_media_timeout`` after
  ``media_timeout`` seconds without a packet.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from twisted.internet import protocol
from twisted.logger import Logger

__all__ = [
    "DTMFEvent",
    "DTMFReceiver",
    "RTPError",
    "RTPPacket",
    "RTPSession",
    "ReceiveStats",
    "ReportBlock",
    "dtmf_packets",
    "parse_rtcp",
    "receiver_report",
    "sender_report",
]

log = Logger()
_HEADER = struct.Struct("!BBHII")

RTP_VERSION = 2
#: the largest RTP packet accepted (a 20 ms G.711 packet is 172 bytes)
MAX_PACKET = 1500
#: RFC 4733 event codes of the DTMF digits
DIGITS = "0123456789*#ABCD"
#: seconds between 1900 (NTP) and 1970 (Unix)
NTP_EPOCH = 2208988800


class RTPError(ValueError):
    """A datagram that is not an RTP or RTCP packet we accept."""


@attrs.frozen
class RTPPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()

    @classmethod
    def parse(cls, data: bytes) -> RTPPacket:
        """:raises RTPError: not version 2, too short or long, lengths that do not add up."""
        if len(data) < 12:
            raise RTPError(f"{len(data)} bytes is shorter than an RTP header")
        if len(data) > MAX_PACKET:
            raise RTPError(f"{len(data)} bytes is over {MAX_PACKET}")
        first, second, sequence, timestamp, ssrc = struct.unpack_from("!BBHII", data)
        if first >> 6 != RTP_VERSION:
            raise RTPError(f"RTP version {first >> 6}, not 2")
        count = first & 0x0F
        offset = 12 + 4 * count
        if len(data) < offset:
            raise RTPError("the CSRC list runs past the packet")
        csrcs = struct.unpack_from(f"!{count}I", data, 12) if count else ()
        if first & 0x10:  # header extension
            if len(data) < offset + 4:
                raise RTPError("the header extension runs past the packet")
            (words,) = struct.unpack_from("!H", data, offset + 2)
            offset += 4 + 4 * words
            if len(data) < offset:
                raise RTPError("the header extension runs past the packet")
        end = len(data)
        if first & 0x20:  # padding
            padding = data[-1]
            if padding == 0 or end - padding < offset:
                raise RTPError("bad padding")
            end -= padding
        return cls(payload_type=second & 0x7F, sequence=sequence, timestamp=timestamp, ssrc=ssrc,
                   payload=bytes(data[offset:end]), marker=bool(second & 0x80), csrcs=tuple(csrcs))

    def to_bytes(self) -> bytes:
        header = struct.pack("!BBHII", (RTP_VERSION << 6) | len(self.csrcs),
                             (0x80 if self.marker else 0) | self.payload_type, self.sequence & 0xFFFF,
                             self.timestamp & 0xFFFFFFFF, self.ssrc)
        return header + b"".join(struct.pack("!I", c) for c in self.csrcs) + self.payload


# -------------------------------------------------------------------------------------------------
# receive statistics (RFC 3550 appendix A)

MAX_DROPOUT = 3000
MAX_MISORDER = 100
#: packets in sequence before a new source counts (RFC 3550 suggests 2; 1 keeps the first audio frame:
#: the session latches onto one address anyway)
MIN_SEQUENTIAL = 1
SEQ_MOD = 1 << 16


class ReceiveStats:
    """What arrived from one source: RFC 3550 A.1 sequence validation, A.3 loss, A.8 jitter.

    :param clock_rate: the payload's RTP clock (8000 for G.711).
    """

    def __init__(self, clock_rate: int = 8000):
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self.max_seq = 0
        self.cycles = 0
        self.base_seq = 0
        self.bad_seq = SEQ_MOD + 1
        self.probation = MIN_SEQUENTIAL
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.jitter = 0.0  # in timestamp units
        self._transit: int | None = None
        #: packets refused as out of sequence (a jump, a restart being checked)
        self.discarded = 0

    def _init(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def update(self, packet: RTPPacket, arrival: float) -> bool:
        """Count ``packet``, which arrived at ``arrival`` seconds; False when it is to be discarded."""
        seq = packet.sequence
        if self.ssrc != packet.ssrc:
            self.ssrc = packet.ssrc
            self._init(seq)
            self.max_seq = (seq - 1) % SEQ_MOD
            self.probation = MIN_SEQUENTIAL
            self._transit = None
        if self.probation:
            if seq == (self.max_seq + 1) % SEQ_MOD:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init(seq)
                    self.received += 1
                    self._jitter(packet, arrival)
                    return True
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            self.discarded += 1
            return False
        delta = (seq - self.max_seq) % SEQ_MOD
        if delta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += SEQ_MOD
            self.max_seq = seq
        elif delta <= SEQ_MOD - MAX_MISORDER:
            if seq == self.bad_seq:
                self._init(seq)  # the source restarted
            else:
                self.bad_seq = (seq + 1) % SEQ_MOD
                self.discarded += 1
                return False
        # else: a duplicate or reordered packet, counted
        self.received += 1
        self._jitter(packet, arrival)
        return True

    def _jitter(self, packet: RTPPacket, arrival: float) -> None:
        transit = int(arrival * self.clock_rate) - packet.timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            self.jitter += (d - self.jitter) / 16
        self._transit = transit

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        if self.ssrc is None or self.probation:
            return 0
        return self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Packets lost so far (negative with duplicates, as RFC 3550 allows)."""
        return self.expected - self.received

    @property
    def jitter_ms(self) -> float:
        return 1000.0 * self.jitter / self.clock_rate

    def report_block(self, last_sr: int = 0, delay_since_sr: int = 0) -> ReportBlock:
        """The report block for an RR or SR, and the start of a new interval (fraction lost since the last)."""
        expected_interval = self.expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior, self.received_prior = self.expected, self.received
        lost_interval = expected_interval - received_interval
        fraction = 0 if expected_interval == 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        lost = max(-(1 << 23), min((1 << 23) - 1, self.lost))
        return ReportBlock(ssrc=self.ssrc or 0, fraction_lost=min(fraction, 255), cumulative_lost=lost,
                           highest_seq=self.extended_max & 0xFFFFFFFF, jitter=int(self.jitter),
                           last_sr=last_sr, delay_since_sr=delay_since_sr)


# -------------------------------------------------------------------------------------------------
# RTCP (RFC 3550 6.4)


@attrs.frozen
class ReportBlock:
    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_seq: int
    jitter: int
    last_sr: int = 0
    delay_since_sr: int = 0

    def to_bytes(self) -> bytes:
        lost = self.cumulative_lost & 0xFFFFFF
        return struct.pack("!IIIIII", self.ssrc, (self.fraction_lost << 24) | lost, self.highest_seq, self.jitter,
                           self.last_sr, self.delay_since_sr)

    @classmethod
    def parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, lost_word, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", data, offset)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)


def ntp_timestamp(unix_seconds: float) -> int:
    """The 64-bit NTP timestamp of a Unix time."""
    seconds = int(unix_seconds) + NTP_EPOCH
    fraction = int((unix_seconds % 1) * (1 << 32))
    return ((seconds & 0xFFFFFFFF) << 32) | (fraction & 0xFFFFFFFF)


def sender_report(ssrc: int, *, unix_seconds: float, rtp_timestamp: int, packets: int, octets: int,
                  blocks: tuple[ReportBlock, ...] = ()) -> bytes:
    ntp = ntp_timestamp(unix_seconds)
    body = struct.pack("!IQIII", ssrc, ntp, rtp_timestamp & 0xFFFFFFFF, packets & 0xFFFFFFFF,
                       octets & 0xFFFFFFFF)
    body += b"".join(block.to_bytes() for block in blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 200, (len(body) + 4) // 4 - 1) + body


def receiver_report(ssrc: int, blocks: tuple[ReportBlock, ...] = ()) -> bytes:
    body = struct.pack("!I", ssrc) + b"".join(block.to_bytes() for block in blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 201, (len(body) + 4) // 4 - 1) + body


@attrs.frozen
class RTCPReport:
    """An SR or RR: who sent it, the middle 32 bits of its NTP time (SR only), and its report blocks."""

    kind: str
    ssrc: int
    blocks: tuple[ReportBlock, ...]
    ntp_middle: int | None = None
    packets: int | None = None
    octets: int | None = None


def parse_rtcp(data: bytes) -> list[RTCPReport]:
    """The SRs and RRs of a compound RTCP packet (other packet types skipped).

    :raises RTPError: not RTCP version 2, or a length that runs past the datagram.
    """
    if len(data) > MAX_PACKET:
        raise RTPError(f"{len(data)} bytes is over {MAX_PACKET}")
    reports: list[RTCPReport] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise RTPError("a truncated RTCP header")
        first, kind, words = struct.unpack_from("!BBH", data, offset)
        if first >> 6 != RTP_VERSION:
            raise RTPError(f"RTCP version {first >> 6}, not 2")
        end = offset + 4 * (words + 1)
        if end > len(data):
            raise RTPError("an RTCP packet runs past the datagram")
        count = first & 0x1F
        if kind == 200:
            if end - offset < 28 + 24 * count:
                raise RTPError("a short sender report")
            ssrc, ntp, _, packets, octets = struct.unpack_from("!IQIII", data, offset + 4)
            blocks = tuple(ReportBlock.parse(data, offset + 28 + 24 * i) for i in range(count))
            reports.append(RTCPReport("SR", ssrc, blocks, (ntp >> 16) & 0xFFFFFFFF, packets, octets))
        elif kind == 201:
            if end - offset < 8 + 24 * count:
                raise RTPError("a short receiver report")
            (ssrc,) = struct.unpack_from("!I", data, offset + 4)
            blocks = tuple(ReportBlock.parse(data, offset + 8 + 24 * i) for i in range(count))
            reports.append(RTCPReport("RR", ssrc, blocks))
        offset = end
    return reports


# -------------------------------------------------------------------------------------------------
# RFC 4733 telephone-events


@attrs.frozen
class DTMFEvent:
    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        return DIGITS[self.event] if 0 <= self.event < len(DIGITS) else None

    @classmethod
    def parse(cls, payload: bytes) -> DTMFEvent:
        if len(payload) < 4:
            raise RTPError("a telephone-event payload is 4 bytes")
        event, flags, duration = struct.unpack_from("!BBH", payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def to_bytes(self) -> bytes:
        return struct.pack("!BBH", self.event, (0x80 if self.end else 0) | (self.volume & 0x3F),
                           self.duration & 0xFFFF)


class DTMFReceiver:
    """Turns telephone-event packets into digits, each reported once with its duration (RFC 4733 2.5.1.3:
    an event is its timestamp; updates and the redundant end packets are one digit).

    A digit is reported at its first end packet; if the end packets were all lost, when the next event
    starts or at :meth:`flush`.
    """

    def __init__(self, on_digit: Callable[[str, int], None], clock_rate: int = 8000):
        self.on_digit = on_digit
        self.clock_rate = clock_rate
        self._pending: tuple[int, str, int] | None = None  # (timestamp, digit, duration) not yet reported
        self._reported: int | None = None  # the timestamp of the digit reported last
        self.digits = 0

    def packet(self, packet: RTPPacket) -> None:
        event = DTMFEvent.parse(packet.payload)
        if event.digit is None or packet.timestamp == self._reported:
            return
        if self._pending is not None and self._pending[0] != packet.timestamp:
            self.flush()
        self._pending = (packet.timestamp, event.digit, event.duration)
        if event.end:
            self.flush()

    def flush(self) -> None:
        """Report the digit in progress, if any (its end packets never came)."""
        if self._pending is None:
            return
        timestamp, digit, duration = self._pending
        self._pending = None
        self._reported = timestamp
        self.digits += 1
        self.on_digit(digit, 1000 * duration // self.clock_rate)


def dtmf_packets(digit: str, *, duration_ms: int, timestamp: int, volume: int = 10, ptime_ms: int = 20,
                 clock_rate: int = 8000) -> Iterator[tuple[DTMFEvent, bool, int]]:
    """The telephone-event payloads sending ``digit`` (RFC 4733 2.5.1): ``(event, marker, timestamp)``,
    one every ``ptime_ms``, the duration growing, then the end packet three times."""
    code = DIGITS.index(digit.upper())
    step = clock_rate * ptime_ms // 1000
    total = max(step, clock_rate * duration_ms // 1000)
    duration = step
    first = True
    while duration < total:
        yield DTMFEvent(code, False, volume, duration), first, timestamp
        first = False
        duration += step
    for _ in range(3):
        yield DTMFEvent(code, True, volume, min(total, 0xFFFF)), first, timestamp
        first = False


# -------------------------------------------------------------------------------------------------
# one leg's socket


class RTPSession(protocol.DatagramProtocol):
    """The RTP socket of one SIP leg (see the module docstring).

    :param clock: ``IReactorTime``.
    :param payload_types: the negotiated audio payload type and the telephone-event one (or None).
    :param remote: where to send until a packet latches (the SDP's address and port).
    :param on_audio: ``on_audio(payload, packet)`` for each audio packet in sequence.
    :param on_digit: ``on_digit(digit, duration_ms)`` for each RFC 4733 digit.
    :param on_media_timeout: called once after ``media_timeout`` seconds without a packet (0: never).
    """

    def __init__(self, clock: Any, *, audio_pt: int, dtmf_pt: int | None, remote: tuple[str, int],
                 on_audio: Callable[[bytes, RTPPacket], None], on_digit: Callable[[str, int], None] | None = None,
                 on_media_timeout: Callable[[], None] | None = None, media_timeout: float = 0.0,
                 random: Callable[[int], bytes] = os.urandom):
        self.clock = clock
        self.audio_pt = audio_pt
        self.dtmf_pt = dtmf_pt
        self.remote = remote
        self.latched = False
        self.on_audio = on_audio
        self.dtmf = DTMFReceiver(on_digit) if on_digit is not None else None
        self.on_media_timeout = on_media_timeout
        self.media_timeout = media_timeout
        self.stats = ReceiveStats()
        self.ssrc = int.from_bytes(random(4), "big")
        self.sequence = int.from_bytes(random(2), "big")
        self.timestamp = int.from_bytes(random(4), "big")
        self.sent_packets = 0
        self.sent_octets = 0
        #: datagrams dropped, by reason: "address" (not the latched source), "malformed", "payload_type"
        self.dropped: dict[str, int] = {}
        self.last_received: float | None = None
        self._timeout_call: Any = None
        self._armed_at = 0.0
        self.timed_out = False

    def startProtocol(self) -> None:
        self._arm()

    def stopProtocol(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None

    def _arm(self) -> None:
        """Make sure the media timeout runs. A packet only notes its arrival (``last_received``); the timer
        checks it when it fires and waits the rest (no timer is moved per packet)."""
        if self.media_timeout > 0 and not self.timed_out:
            if self._timeout_call is None or not self._timeout_call.active():
                self._armed_at = self.clock.seconds()
                self._timeout_call = self.clock.callLater(self.media_timeout, self._expired)

    def _expired(self) -> None:
        self._timeout_call = None
        if self.media_timeout <= 0:
            return
        now = self.clock.seconds()
        last = max(self.last_received or 0.0, self._armed_at)
        if last + self.media_timeout > now:
            self._timeout_call = self.clock.callLater(last + self.media_timeout - now, self._expired)
            return
        self.timed_out = True
        log.warn("RTP: no packet for {seconds} s from {host}:{port}: media timeout", seconds=self.media_timeout,
                 host=self.remote[0], port=self.remote[1])
        if self.on_media_timeout is not None:
            self.on_media_timeout()

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        source = (addr[0], addr[1])
        if self.latched and source != self.remote:
            self._drop("address")
            return
        try:
            packet = RTPPacket.parse(datagram)
        except RTPError:
            self._drop("malformed")
            return
        if packet.payload_type not in (self.audio_pt, self.dtmf_pt):
            self._drop("payload_type")
            return
        if not self.latched:
            self.latched = True  # symmetric RTP: answer where the packets come from
            self.remote = source
        now = self.last_received = self.clock.seconds()
        if self._timeout_call is None:
            self._arm()
        if not self.stats.update(packet, now):
            return
        if packet.payload_type == self.dtmf_pt:
            if self.dtmf is not None:
                try:
                    self.dtmf.packet(packet)
                except RTPError:
                    self._drop("malformed")
            return
        self.on_audio(packet.payload, packet)

    def send_audio(self, payload: bytes, samples: int = 160, marker: bool = False) -> None:
        """Send one audio packet (``samples`` per packet: 160 for 20 ms of G.711)."""
        # the hot path: the header packed straight, no RTPPacket made
        sequence = self.sequence
        self.sequence = (sequence + 1) & 0xFFFF
        timestamp = self.timestamp
        self.timestamp = (timestamp + samples) & 0xFFFFFFFF
        transport = self.transport
        if transport is None:
            return
        self.sent_packets += 1
        self.sent_octets += len(payload)
        try:
            transport.write(_HEADER.pack(0x80, (0x80 if marker else 0) | self.audio_pt, sequence, timestamp,
                                         self.ssrc) + payload, self.remote)
        except OSError as error:
            log.warn("RTP: sending to {host}:{port} failed: {error}", host=self.remote[0], port=self.remote[1],
                     error=error)

    def send_digit_packet(self, event: DTMFEvent, marker: bool, timestamp: int) -> None:
        if self.dtmf_pt is None:
            return
        self._send(RTPPacket(self.dtmf_pt, self.sequence, timestamp, self.ssrc, event.to_bytes(), marker))

    def _send(self, packet: RTPPacket) -> None:
        self.sequence = (self.sequence + 1) & 0xFFFF
        if self.transport is None:
            return
        data = packet.to_bytes()
        self.sent_packets += 1
        self.sent_octets += len(packet.payload)
        try:
            self.transport.write(data, self.remote)
        except OSError as error:
            log.warn("RTP: sending to {host}:{port} failed: {error}", host=self.remote[0], port=self.remote[1],
                     error=error)
