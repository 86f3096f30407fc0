"""The ``sip`` driver: SIP trunks (a PBX or a carrier) as the audio leg, on :mod:`gateway.sip`.

A thin map between the SIP call layer (:class:`gateway.sip.call.CallManager`,
:class:`~gateway.sip.call.SIPCall`) and the core's driver interfaces:

- **inbound**: an INVITE from a trunk's host (the endpoint answers any other
  with 403, counted) gets 100 at once and 180, then becomes a leg delivered to
  ``IInboundCalls.incoming`` with the Request-URI's user as the DID; the core
  routes it through ``[[routes]]``. The core answering sends the 200 with SDP
  (its Deferred fires with the ACK); the core ending the leg unanswered sends
  486 (busy), 404 (no route), 603 (rejected) or 480. The caller's CANCEL or BYE
  is ``remote_hangup``.
- **outbound**: ``dial("<trunk>:<number>")`` (a ``sip:`` device, or a dialled
  number through ``[pbx] driver = "sip"``: a bare number goes through the
  first trunk) sends the INVITE to the trunk's proxy, digest on 401/407;
  180/183 is ringing; 486/600 busy, 603 rejected, 408/480 no answer, 487 after
  our CANCEL nothing more, anything else failed. ``hangup`` before the answer
  is a CANCEL.
- **hold**: the core's hold or retrieve of a SIP leg (``LegHeld`` /
  ``LegRetrieved``) sends a re-INVITE (``sendonly`` / ``sendrecv``); a peer's
  re-INVITE holding us (``sendonly``/``inactive``) or retrieving is answered by
  the call layer and becomes the core's ``hold``/``retrieve`` of the call.
- **media**: :class:`LegMedia`, one RTP/RTCP port pair per leg from
  ``[sip] rtp_ports``: symmetric RTP (latching only onto a source on the SDP's
  or the trunk's host, so another address's flood is dropped and counted),
  G.711 payloads straight into the leg's :class:`~gateway.media.MediaPort`
  (its codec is the negotiated one; an outbound leg's port is PCMU and an
  A-law answer is translated per packet), the port's paced playout (the
  process's media clock, its jitter buffer) out as RTP with one SSRC, sequence
  and timestamp, RFC 4733 DTMF both ways, RTCP SR/RR every 5 s, and the
  ``media_timeout``. Loss and jitter go to the metrics and, when the leg ends,
  into the provider CDR (source ``sip``).
- **registration**: one :class:`~gateway.sip.register.Registration` per trunk
  with ``register = true``; its state is the readiness component
  ``sip:<trunk>`` and part of ``status()`` (``/api/status``, the status page).
"""

from __future__ import annotations

import socket
import typing

from prometheus_client import Counter, Gauge, Histogram
from twisted.internet import defer, error as neterror
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from gateway.boundary import budget_factory
from gateway.core.errors import DriverError
from gateway.core.events import LegHeld, LegRetrieved
from gateway.core.interfaces import IDriverLeg, IInboundDriver
from gateway.media import MediaPorts
from gateway.media.codecs import ALAW, ULAW, converter, silence
from gateway.metrics import define_metric
from gateway.sip.call import CallManager, SIPCall
from gateway.sip.config import NUMBER, SipConfig, parse_rtp_ports, split_device
from gateway.sip.digest import DigestClient
from gateway.sip.register import Registration
from gateway.sip.rtp import RTPError, RTPSession, dtmf_packets, parse_rtcp, receiver_report, sender_report
from gateway.sip.sdp import LocalMedia, Negotiated
from gateway.sip.transaction import Peer
from gateway.sip.transport import SIPEndpoint, TCPTransportFactory, TrunkMatcher, UDPTransport, parse_listen

if typing.TYPE_CHECKING:  # pragma: no cover
    from gateway.core.interfaces import IInboundCalls, ILegEvents

__all__ = ["LegMedia", "RTPPorts", "SipDriver", "SipLeg", "build_driver"]

log = Logger()

NAME = "sip"
#: seconds between RTCP reports of a leg
RTCP_INTERVAL = 5.0
#: the codec of the media plane for each SDP codec
_CODECS = {"PCMU": ULAW, "PCMA": ALAW}
#: what the core's hangup cause answers an inbound INVITE not yet answered
_REJECT_STATUS = {"busy": 486, "no_route": 404, "rejected": 603}
_DTMF_STEP = 0.02
#: inbound RTP is delivered in sequence order: a packet ahead of the one due is held until the gap fills,
#: or until this many are held, when each still missing one becomes 20 ms of silence (a lost packet then
#: delays the audio behind it by at most this many packets, in order; nothing is added while in order)
REORDER_WINDOW = 3


class SipMetrics:
    """The driver's metrics (``gateway_sip_*``) on the daemon's registry (None: not counted)."""

    def __init__(self, registry: typing.Any) -> None:
        self.registry = registry
        if registry is None:
            return
        self.rtp_packets = define_metric(registry, Counter, "sip_rtp_packets",
                                         "RTP packets of SIP legs, by direction (in, out).", ["direction"])
        self.rtp_dropped = define_metric(registry, Counter, "sip_rtp_dropped",
                                         "RTP datagrams dropped, by reason (address: not the leg's latched or "
                                         "expected source; malformed; payload_type).", ["reason"])
        self.rtp_lost = define_metric(registry, Counter, "sip_rtp_lost",
                                      "RTP packets lost toward the gateway (RFC 3550 expected - received), "
                                      "counted when a leg ends.")
        self.jitter = define_metric(registry, Histogram, "sip_rtp_jitter_ms",
                                    "Interarrival jitter of each SIP leg's RTP when it ends (RFC 3550), ms.",
                                    buckets=(1, 2, 5, 10, 20, 40, 80, 160))
        self.media_timeouts = define_metric(registry, Counter, "sip_media_timeouts",
                                            "SIP calls ended because no RTP came for [sip] media_timeout.")
        self.calls = define_metric(registry, Counter, "sip_calls",
                                   "SIP calls by direction and how they ended (the call layer's cause).",
                                   ["direction", "cause"])
        self.registered = define_metric(registry, Gauge, "sip_trunk_registered",
                                        "1 while the trunk's registration holds, else 0.", ["trunk"])
        self.dtmf = define_metric(registry, Counter, "sip_dtmf_digits",
                                  "RFC 4733 digits, by direction (in, out).", ["direction"])

    def inc(self, name: str, *labels: str, amount: float = 1) -> None:
        if self.registry is not None and amount:
            metric = getattr(self, name)
            (metric.labels(*labels) if labels else metric).inc(amount)


class RTPPorts:
    """Even/odd UDP port pairs from ``[sip] rtp_ports`` (RTP on the even port, RTCP on the next)."""

    def __init__(self, reactor: typing.Any, low: int, high: int, interface: str) -> None:
        self.reactor = reactor
        self.low = low + (low & 1)
        self.high = high
        self.interface = interface
        self._next = self.low

    def listen(self, rtp: DatagramProtocol, rtcp: DatagramProtocol) -> tuple[typing.Any, typing.Any, int]:
        """Bind both protocols on the next free pair; DriverError when the range is exhausted."""
        pairs = (self.high - self.low + 1) // 2
        for _ in range(pairs):
            port = self._next
            self._next = port + 2 if port + 3 <= self.high else self.low
            try:
                rtp_port = self.reactor.listenUDP(port, rtp, interface=self.interface)
            except neterror.CannotListenError:
                continue
            try:
                rtcp_port = self.reactor.listenUDP(port + 1, rtcp, interface=self.interface)
            except neterror.CannotListenError:
                rtp_port.stopListening()
                continue
            return rtp_port, rtcp_port, port
        raise DriverError(NAME, f"no free RTP port pair in {self.low}-{self.high}")


class _RTCP(DatagramProtocol):
    """A leg's RTCP socket: reports from the peer, kept for the CDR."""

    def __init__(self, media: LegMedia) -> None:
        self.media = media

    def datagramReceived(self, datagram: bytes, addr: typing.Any) -> None:
        self.media.rtcp_received(datagram, addr)


class _Session(RTPSession):
    """The leg's RTPSession: drops counted in the metrics, and latching only onto an expected host."""

    media: LegMedia

    def _drop(self, reason: str) -> None:
        super()._drop(reason)
        self.media.driver.metrics.inc("rtp_dropped", reason)

    def startProtocol(self) -> None:
        pass  # the media timeout starts once the call is answered (LegMedia.start_timeout)

    def datagramReceived(self, datagram: bytes, addr: typing.Any) -> None:
        if not self.latched and addr[0] not in self.media.expected_hosts:
            self._drop("address")
            return
        self.media.packets_in += 1
        super().datagramReceived(datagram, addr)


class _DTMFTap:
    """The session's DTMF receiver, telling the leg's reordering where each telephone-event packet is."""

    def __init__(self, receiver: typing.Any, media: LegMedia) -> None:
        self.receiver = receiver
        self.media = media

    def packet(self, packet: typing.Any) -> None:
        self.media.dtmf_packet(packet)
        self.receiver.packet(packet)

    def flush(self) -> None:
        self.receiver.flush()


class LegMedia:
    """One leg's RTP: the sockets, the MediaPort wiring, DTMF, RTCP, statistics."""

    def __init__(self, driver: SipDriver, trunk_host: str) -> None:
        self.driver = driver
        #: the leg, once the call is one (an INVITE's media exists before its leg)
        self.leg: SipLeg | None = None
        clock = driver.reactor
        self.clock = clock
        self.expected_hosts = {trunk_host}
        self.session = _Session(clock, audio_pt=0, dtmf_pt=101, remote=(trunk_host, 0), on_audio=self._audio,
                                on_digit=self._digit, on_media_timeout=self._timed_out)
        self.session.media = self
        if self.session.dtmf is not None:
            self.session.dtmf = _DTMFTap(self.session.dtmf, self)  # type: ignore[assignment]
        self.rtcp = _RTCP(self)
        self.rtp_port, self.rtcp_port, self.port = driver.rtp_ports.listen(self.session, self.rtcp)
        self.local = LocalMedia(driver.address, self.port, str(int(clock.seconds() * 1000) % 10**10))
        self.negotiated: Negotiated | None = None
        self.packets_in = 0
        #: audio packets taken (whatever their SSRC: the statistics start over with a new one)
        self.audio_in = 0
        #: reordering: the next sequence number due, its source, the packets held until it comes
        self._next_seq: int | None = None
        self._ssrc: int | None = None
        self._held: dict[int, bytes] = {}
        self._silence = b""
        #: packets dropped as older than what was played (duplicates, too late), and gaps filled with silence
        self.late = 0
        self.concealed = 0
        self.remote_reports: list[tuple[int, int, int]] = []  # (fraction lost /256, cumulative lost, jitter)
        #: converters from the wire codec into the port's and back, when they differ
        self._to_port: typing.Callable[[bytes], bytes] | None = None
        self._from_port: typing.Callable[[bytes], bytes] | None = None
        self._sending_digit = False
        self._digits: list[typing.Any] = []
        self._rtcp_timer: typing.Any = None
        self._rtcp_remote: tuple[str, int] | None = None
        self.closed = False
        #: the media timeout runs once the call is answered
        self.timing = False

    def start_timeout(self) -> None:
        """The call is answered: from now on ``[sip] media_timeout`` without RTP ends it."""
        self.timing = True
        session = self.session
        session.media_timeout = self.driver.config.media_timeout
        if session.media_timeout and not session.timed_out and (self.negotiated is None or self.negotiated.receive):
            session._arm()

    # -- set up by the negotiation
    def apply(self, agreed: Negotiated) -> None:
        """Use what the SDP agreed: payload types, where to send, the codec translation, the direction."""
        first = self.negotiated is None
        self.negotiated = agreed
        session = self.session
        session.audio_pt = agreed.payload_type
        session.dtmf_pt = agreed.dtmf_payload_type
        self.expected_hosts.add(agreed.remote_address)
        if not session.latched:
            session.remote = (agreed.remote_address, agreed.remote_port)
        self._rtcp_remote = (agreed.remote_address, agreed.remote_port + 1)
        leg = self.leg
        assert leg is not None, "a leg's media is applied once it is a leg"
        wire = _CODECS[agreed.codec]
        self._silence = silence(wire)
        port_codec = leg.port.codec
        self._to_port = None if wire == port_codec else converter(wire, port_codec)
        self._from_port = None if wire == port_codec else converter(port_codec, wire)
        if agreed.receive:
            if self.timing and session.media_timeout and not session.timed_out:
                session._arm()
        else:
            session.stop()  # on hold by the peer (inactive, or we hold): no media is due
        if first:
            leg.port.set_wire(self._write)
            leg.port.upstream = self.rtp_port
            self._rtcp_timer = self.clock.callLater(RTCP_INTERVAL, self._send_rtcp)

    # -- from the party
    def _audio(self, payload: bytes, packet: typing.Any) -> None:
        """An audio packet from the party, into the port in sequence order (see :data:`REORDER_WINDOW`)."""
        self.audio_in += 1
        if self.leg is not None:
            self._in_order(payload, packet)

    def dtmf_packet(self, packet: typing.Any) -> None:
        """A telephone-event packet takes its place in the sequence (it carries no audio)."""
        if self.leg is not None and packet.ssrc == self._ssrc:
            self._in_order(b"", packet)

    def _in_order(self, payload: bytes, packet: typing.Any) -> None:
        seq = packet.sequence
        expected = self._next_seq
        if expected is None or packet.ssrc != self._ssrc:  # the first packet, or a new source: start there
            self._ssrc = packet.ssrc
            self._held.clear()
            self._next_seq = (seq + 1) & 0xFFFF
            self._deliver(payload)
            return
        ahead = (seq - expected) & 0xFFFF
        if ahead == 0:  # the common case: in order, nothing held
            self._next_seq = (seq + 1) & 0xFFFF
            self._deliver(payload)
            if self._held:
                self._drain(False)
        elif ahead < 0x8000:
            if ahead > 4 * REORDER_WINDOW:  # a jump (the source skipped ahead): go on from there
                self._held.clear()
                self._next_seq = (seq + 1) & 0xFFFF
                self._deliver(payload)
                return
            self._held[seq] = payload
            if len(self._held) >= REORDER_WINDOW:
                self._drain(True)
        else:
            self.late += 1  # older than what was played: a duplicate, or too late

    def _drain(self, conceal: bool) -> None:
        """Deliver what is held from the expected sequence number on; with ``conceal``, a missing packet
        gives way to 20 ms of silence until everything held is delivered."""
        held = self._held
        expected = self._next_seq
        assert expected is not None
        while held:
            payload = held.pop(expected, None)  # b"": a telephone-event packet's place
            if payload is None:
                if not conceal:
                    break
                self.concealed += 1
                payload = self._silence
            self._deliver(payload)
            expected = (expected + 1) & 0xFFFF
        self._next_seq = expected

    def _deliver(self, payload: bytes) -> None:
        if not payload:
            return
        if self._to_port is not None:
            payload = self._to_port(payload)
        assert self.leg is not None
        self.leg.port.receive(payload)

    def _digit(self, digit: str, duration_ms: int) -> None:
        self.driver.metrics.inc("dtmf", "in")
        if self.leg is not None:
            self.leg.digit_received(digit, duration_ms)

    def _timed_out(self) -> None:
        if self.leg is not None:
            self.leg.media_timed_out()

    # -- toward the party
    def _write(self, payload: bytes) -> None:
        session = self.session
        agreed = self.negotiated
        if self.closed or agreed is None or not agreed.send or self._sending_digit:
            session.timestamp = (session.timestamp + len(payload)) & 0xFFFFFFFF
            return
        if self._from_port is not None:
            payload = self._from_port(payload)
        session.send_audio(payload, len(payload))

    def send_dtmf(self, digit: str, duration_ms: int) -> defer.Deferred[None]:
        """RFC 4733 packets every 20 ms, then the three end packets; fires when the last was sent."""
        if self.negotiated is None or self.negotiated.dtmf_payload_type is None:
            return defer.fail(DriverError(NAME, "the peer did not agree to telephone-event (RFC 4733) DTMF"))
        if self._sending_digit:
            return defer.fail(DriverError(NAME, "a DTMF digit is being sent already"))
        packets = list(dtmf_packets(digit, duration_ms=duration_ms, timestamp=self.session.timestamp))
        done: defer.Deferred[None] = defer.Deferred()
        self._sending_digit = True
        self.driver.metrics.inc("dtmf", "out")

        def step(index: int) -> None:
            self._digits[:] = []
            if self.closed:
                self._sending_digit = False
                done.errback(DriverError(NAME, "the call ended while the DTMF digit was sent"))
                return
            event, marker, timestamp = packets[index]
            self.session.send_digit_packet(event, marker, timestamp)
            if index + 1 < len(packets):
                # the end packets go out back to back after the last update (RFC 4733 2.5.1.4 allows it)
                delay = _DTMF_STEP if not packets[index + 1][0].end or not event.end else 0.0
                self._digits.append(self.clock.callLater(delay, step, index + 1))
            else:
                self.session.timestamp = (timestamp + 8 * duration_ms) & 0xFFFFFFFF
                self._sending_digit = False
                done.callback(None)

        step(0)
        return done

    # -- RTCP
    def _send_rtcp(self) -> None:
        self._rtcp_timer = None
        if self.closed or self._rtcp_remote is None:
            return
        session = self.session
        blocks = (session.stats.report_block(),) if session.stats.received else ()
        if session.sent_packets:
            data = sender_report(session.ssrc, unix_seconds=self.clock.seconds(), rtp_timestamp=session.timestamp,
                                 packets=session.sent_packets, octets=session.sent_octets, blocks=blocks)
        else:
            data = receiver_report(session.ssrc, blocks)
        remote = self._rtcp_remote
        if session.latched:
            remote = (session.remote[0], session.remote[1] + 1)
        try:
            self.rtcp_port.write(data, remote)
        except OSError as problem:
            log.warn("RTCP: sending to {host}:{port} failed: {error}", host=remote[0], port=remote[1], error=problem)
        self._rtcp_timer = self.clock.callLater(RTCP_INTERVAL, self._send_rtcp)

    def rtcp_received(self, datagram: bytes, addr: typing.Any) -> None:
        if addr[0] not in self.expected_hosts:
            self.driver.metrics.inc("rtp_dropped", "address")
            return
        try:
            reports = parse_rtcp(datagram)
        except RTPError:
            self.driver.metrics.inc("rtp_dropped", "malformed")
            return
        for report in reports:
            for block in report.blocks:
                if block.ssrc == self.session.ssrc:
                    self.remote_reports.append((block.fraction_lost, block.cumulative_lost, block.jitter))
                    del self.remote_reports[:-20]

    # -- the end
    def summary(self) -> dict[str, typing.Any]:
        session = self.session
        stats = session.stats
        summary: dict[str, typing.Any] = {
            "codec": self.negotiated.codec if self.negotiated else None,
            "local_rtp_port": self.port,
            "remote_rtp": f"{session.remote[0]}:{session.remote[1]}" if session.latched else None,
            "audio_packets_received": self.audio_in, "packets_received": stats.received,
            "packets_expected": stats.expected, "packets_lost": max(0, stats.lost),
            "packets_late": self.late, "packets_concealed": self.concealed,
            "jitter_ms": round(stats.jitter_ms, 2), "packets_sent": session.sent_packets,
            "dropped": dict(session.dropped),
        }
        if self.remote_reports:
            fraction, cumulative, jitter = self.remote_reports[-1]
            summary["remote_fraction_lost"] = round(fraction / 256, 4)
            summary["remote_packets_lost"] = cumulative
            summary["remote_jitter_ms"] = round(jitter / 8, 2)
        return summary

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        stats = self.session.stats
        self.driver.metrics.inc("rtp_packets", "in", amount=self.audio_in)
        self.driver.metrics.inc("rtp_packets", "out", amount=self.session.sent_packets)
        self.driver.metrics.inc("rtp_lost", amount=max(0, stats.lost))
        if self.driver.metrics.registry is not None and stats.received:
            self.driver.metrics.jitter.observe(stats.jitter_ms)
        for timer in (self._rtcp_timer, *self._digits):
            if timer is not None and timer.active():
                timer.cancel()
        self.session.stop()
        if self.session.dtmf is not None:
            self.session.dtmf.flush()
        if self.leg is not None:
            self.leg.port.set_wire(None)
            self.leg.port.upstream = None
        self.rtp_port.stopListening()
        self.rtcp_port.stopListening()


@implementer(IDriverLeg)
class SipLeg:
    """One SIP call as a leg of the core (see the module docstring)."""

    driver = NAME

    def __init__(self, sip: SipDriver, *, direction: str, trunk: str, media: LegMedia, codec: str,
                 number: str) -> None:
        self.sip = sip
        self.direction = direction
        self.trunk = trunk
        self.number = number
        self.events: ILegEvents | None = None
        self.call: SIPCall | None = None
        self.port = sip.ports.port(sip.reactor, codec, name=f"sip:{trunk}:{number}")
        self.media = media
        media.leg = self
        self.over = False
        self._hanging_up = False
        self._peer_holds = False
        self._our_reinvite = False
        self.cause: str | None = None

    def __repr__(self) -> str:
        return f"<SipLeg {self.direction} {self.trunk}:{self.number} {self.call!r}>"

    @property
    def leg_id(self) -> str | None:
        return getattr(self.events, "leg_id", None)

    # -- IDriverLeg
    def answer(self) -> defer.Deferred[None]:
        if self.over or self.call is None:
            return defer.fail(DriverError(NAME, "the SIP call is over"))
        if self.direction != "inbound":
            return defer.fail(DriverError(NAME, "an outbound SIP leg is answered by the far end"))
        d = self.call.answer()

        def failed(failure: typing.Any) -> None:
            raise DriverError(NAME, f"answering the SIP call failed: {failure.getErrorMessage()}")

        return d.addCallbacks(lambda _: None, failed)

    def hangup(self, cause: str) -> defer.Deferred[None]:
        if self.over or self.call is None:
            return defer.succeed(None)
        self._hanging_up = True
        call = self.call
        if self.direction == "inbound" and call.state in ("incoming", "ringing"):
            call.reject(_REJECT_STATUS.get(cause, 480))
            return defer.succeed(None)
        return call.hangup()

    def send_dtmf(self, digit: str, duration_ms: int) -> defer.Deferred[None]:
        if self.over:
            return defer.fail(DriverError(NAME, "the SIP call is over"))
        return self.media.send_dtmf(digit, duration_ms)

    def flush(self) -> None:
        self.port.flush()

    # -- the core's hold
    def core_hold(self, hold: bool) -> None:
        if self.over or self.call is None or self.call.state != "answered":
            return
        if (self.media.local.wanted == "sendonly") == hold or (hold and self._peer_holds):
            return  # already so (the core's hold or retrieve mirrors the peer's): nothing to send
        self._our_reinvite = True
        call = self.call
        d = call.hold() if hold else call.retrieve()

        def done(result: typing.Any) -> None:
            self._our_reinvite = False
            if isinstance(result, Exception) or hasattr(result, "getErrorMessage"):
                log.warn("SIP call {call_id}: the {what} re-INVITE failed: {error}", call_id=call.call_id,
                         what="hold" if hold else "retrieve", error=result.getErrorMessage())

        d.addBoth(done)

    # -- from the call layer (CallEvents)
    def ringing(self, call: SIPCall) -> None:
        if self.events is not None and not self.over:
            self.events.ringing()

    def answered(self, call: SIPCall, media: Negotiated) -> None:
        self.media.apply(media)
        self.media.start_timeout()
        if self.direction == "outbound" and self.events is not None and not self.over:
            self.events.answered()

    def media_changed(self, call: SIPCall, media: Negotiated) -> None:
        self.media.apply(media)
        if self._our_reinvite:
            return
        holds = not media.send
        if holds != self._peer_holds:
            self._peer_holds = holds
            self.sip.peer_hold(self, holds)

    def ended(self, call: SIPCall, cause: str, detail: str) -> None:
        if self.over:
            return
        self.over = True
        self.cause = self.cause or cause
        self.sip.metrics.inc("calls", self.direction, self.cause)
        self.sip.leg_ended(self)
        events = self.events
        if events is not None:
            events.provider_cdr(NAME, {"sip_call_id": call.call_id, "trunk": self.trunk, "direction": self.direction,
                                       "cause": self.cause, "detail": detail, **self.media.summary()})
        self.media.close()
        self.port.close()
        if events is None or self._hanging_up:
            return
        if self.cause == "media_timeout":
            events.hung_up("media_timeout")
        elif cause == "busy":
            events.busy()
        elif cause == "no_answer":
            events.no_answer()
        elif cause in ("remote_hangup", "cancelled", "normal"):
            events.hung_up("remote_hangup")
        elif cause == "rejected" and self.direction == "outbound":
            events.hung_up("rejected")
        elif cause == "no_ack":
            events.hung_up("transport_lost")
        else:
            events.failed(f"SIP: {cause} {detail}".strip())

    # -- from the media
    def digit_received(self, digit: str, duration_ms: int) -> None:
        if self.events is not None and not self.over:
            self.events.dtmf(digit, duration_ms)

    def media_timed_out(self) -> None:
        if self.over or self.call is None:
            return
        self.cause = "media_timeout"
        self.sip.metrics.inc("media_timeouts")
        log.warn("SIP call {call_id} (trunk {trunk}): no RTP for {seconds} s: ended with cause media_timeout",
                 call_id=self.call.call_id, trunk=self.trunk, seconds=self.sip.config.media_timeout)
        call = self.call
        if call.state == "answered":
            call.hangup()
        else:
            self.hangup("failed")
            self._hanging_up = False


@implementer(IInboundDriver)
class SipDriver:
    """The ``sip`` driver (see the module docstring)."""

    name = NAME

    def __init__(self, reactor: typing.Any, config: SipConfig, *, ports: MediaPorts | None = None,
                 metrics: typing.Any = None, readiness: typing.Any = None, resolve: typing.Callable[[str], str] | None = None,
                 control: typing.Callable[[], typing.Any] | None = None) -> None:
        self.reactor = reactor
        self.config = config
        self.ports = ports or MediaPorts()
        self.metrics = SipMetrics(metrics)
        self._registry = metrics
        self._readiness = readiness
        self._control = control or (lambda: None)
        self.inbound: IInboundCalls | None = None
        self.transport, self.listen_port, interface = parse_listen(config.listen)
        resolve = resolve or _resolve
        #: trunk name -> (proxy IP, port), resolved once here (never on the reactor thread per packet)
        self.trunk_addresses = {trunk.name: (resolve(trunk.address[0]), trunk.address[1]) for trunk in config.trunks}
        self.interface = interface or "0.0.0.0"
        self.address = config.public_address or (interface if interface not in ("", "0.0.0.0") else "127.0.0.1")
        low, high = parse_rtp_ports(config.rtp_ports)
        self.rtp_ports = RTPPorts(reactor, low, high, self.interface)
        self.legs: dict[int, SipLeg] = {}
        #: call id -> the media made for an INVITE not yet a leg
        self._unclaimed: dict[str, LegMedia] = {}
        self.endpoint: SIPEndpoint | None = None
        self.manager: CallManager | None = None
        self.registrations: dict[str, Registration] = {}
        self._components: dict[str, typing.Any] = {}
        self._listening: typing.Any = None
        self._listening_tcp: typing.Any = None
        self._unsubscribe: typing.Callable[[], None] | None = None
        self.started = False

    # -- IDriver
    def wire(self, inbound_calls: IInboundCalls) -> None:
        self.inbound = inbound_calls

    def start(self) -> None:
        config = self.config
        registry = self._registry
        self.endpoint = endpoint = SIPEndpoint(
            self.reactor, TrunkMatcher([(name, host) for name, (host, _) in self.trunk_addresses.items()]),
            lambda transport: f"{self.address}:{self.listen_port}", registry=registry)
        budgets = budget_factory(self.reactor, "sip", registry)
        udp = UDPTransport(endpoint, budgets("udp"))
        endpoint.add_transport("UDP", udp)
        # UDP always (requests toward trunks go over UDP); with tcp: also TCP on the same port
        self._listening = self.reactor.listenUDP(self.listen_port, udp, interface=self.interface)
        if self.listen_port == 0:
            self.listen_port = self._listening.getHost().port
        if self.transport == "tcp":
            tcp = TCPTransportFactory(endpoint, budgets)
            endpoint.add_transport("TCP", tcp)
            self._listening_tcp = self.reactor.listenTCP(self.listen_port, tcp, interface=self.interface)
        contact = f"sip:gateway@{self.address}:{self.listen_port}"
        credentials = {trunk.name: DigestClient(trunk.username, trunk.password.reveal())
                       for trunk in config.trunks if trunk.username and trunk.password}
        self.manager = CallManager(endpoint, contact=contact, media_factory=self._media_for,
                                   on_incoming=self._incoming, credentials=credentials,
                                   on_media_unused=self._media_unused)
        for trunk in config.trunks:
            if not trunk.register:
                continue
            host, port = self.trunk_addresses[trunk.name]
            domain = trunk.realm or trunk.address[0]
            component = self._readiness.register(f"sip:{trunk.name}") if self._readiness is not None else None
            self._components[trunk.name] = component
            registration = Registration(
                self.reactor, endpoint.layer, trunk=trunk.name, registrar=Peer("UDP", host, port),
                aor=f"sip:{trunk.username}@{domain}", contact=f"sip:{trunk.username}@{self.address}:{self.listen_port}",
                digest=credentials.get(trunk.name), expires=trunk.expires, on_change=self._registration_changed)
            self.registrations[trunk.name] = registration
            registration.start()
        control = self._control()
        if control is not None:
            self._unsubscribe = control.subscribe(self._core_event)
        self.started = True
        log.info("sip: listening on {transport}:{address}:{port}, trunks {trunks}", transport=self.transport,
                 address=self.interface, port=self.listen_port, trunks=", ".join(self.trunk_addresses) or "none")

    def stop(self) -> defer.Deferred[None]:
        if not self.started:
            return defer.succeed(None)
        self.started = False
        if self._unsubscribe is not None:
            self._unsubscribe()
        removals = []
        for registration in self.registrations.values():
            d = registration.stop()
            d.addTimeout(2.0, self.reactor)
            d.addErrback(lambda failure: None)
            removals.append(d)
        for component in self._components.values():
            if component is not None:
                component.stopped()

        def close(_: object) -> typing.Any:
            if self.manager is not None:
                self.manager.close()
            if self.endpoint is not None:
                self.endpoint.close()
            stops = [defer.maybeDeferred(self._listening.stopListening)]
            if self._listening_tcp is not None:
                stops.append(defer.maybeDeferred(self._listening_tcp.stopListening))
            return defer.DeferredList(stops)

        return defer.DeferredList(removals).addCallback(close).addCallback(lambda _: None)

    def dial(self, address: str, events: ILegEvents, caller_id: str | None = None,
             attributes: dict[str, typing.Any] | None = None) -> SipLeg:
        if not self.started or self.manager is None:
            raise DriverError(NAME, "the SIP driver is not running")
        trunk_name, number = split_device(address)
        if trunk_name is None:
            if not self.config.trunks:
                raise DriverError(NAME, "no [[sip.trunks]] to dial through")
            trunk_name = self.config.trunks[0].name
        trunk = self.config.trunk(trunk_name)
        if trunk is None:
            raise DriverError(NAME, f"no SIP trunk named {trunk_name!r}")
        if not NUMBER.match(number):
            raise DriverError(NAME, f"cannot dial {number!r} over SIP: expected 1-64 of 0-9 A-Z a-z + * # . _ -")
        host, port = self.trunk_addresses[trunk.name]
        media = LegMedia(self, host)
        leg = SipLeg(self, direction="outbound", trunk=trunk.name, media=media, codec=ULAW, number=number)
        leg.events = events
        from_user = caller_id if caller_id and NUMBER.match(caller_id) else (trunk.username or "gateway")
        domain = trunk.realm or trunk.address[0]
        self._pending_media = media
        try:
            call = self.manager.dial(Peer("UDP", host, port), f"sip:{number}@{domain}", from_user=from_user,
                                     from_host=domain, events=leg, trunk=trunk.name)
        finally:
            self._pending_media = None
        leg.call = call
        self.legs[id(leg)] = leg
        log.info("sip: dialling {number} through trunk {trunk} ({call_id})", number=number, trunk=trunk.name,
                 call_id=call.call_id)
        return leg

    # -- the call layer
    _pending_media: LegMedia | None = None

    def _media_for(self, call_id: str) -> LocalMedia:
        """The LocalMedia of a new call: the outbound leg's, or for an INVITE a new port pair (DriverError when
        none is free: the call layer answers 503)."""
        media = self._pending_media
        if media is None:
            media = LegMedia(self, "")
            self._unclaimed[call_id] = media
        return media.local

    def _media_unused(self, media: LocalMedia) -> None:
        """The call layer refused the INVITE the media was made for (488...): free its ports."""
        for call_id, leg_media in list(self._unclaimed.items()):
            if leg_media.local is media:
                del self._unclaimed[call_id]
                leg_media.close()

    def _incoming(self, call: SIPCall) -> SipLeg | None:
        """An INVITE from a trunk (its SDP offer answered): a new inbound leg for the core."""
        media = self._unclaimed.pop(call.call_id, None)
        if media is None:  # never: the call layer made it just before
            return None
        if self.inbound is None:
            log.warn("sip: an INVITE from trunk {trunk} before the core is wired; 480", trunk=call.trunk)
            media.close()
            return None
        trunk = call.trunk or ""
        media.expected_hosts = {self.trunk_addresses.get(trunk, (call.peer.host, 0))[0], call.peer.host}
        assert call.negotiated is not None
        leg = SipLeg(self, direction="inbound", trunk=trunk, media=media, codec=_CODECS[call.negotiated.codec],
                     number=call.caller or "")
        leg.call = call
        media.apply(call.negotiated)
        call.events = leg
        self.legs[id(leg)] = leg
        call.ring()
        attributes = {"sip_call_id": call.call_id, "trunk": trunk}
        leg.events = self.inbound.incoming(leg, caller_id=call.caller, did=call.callee, attributes=attributes)
        return leg

    def status(self) -> dict[str, typing.Any]:
        return {"listen": f"{self.transport}:{self.interface}:{self.listen_port}",
                "trunks": {trunk.name: self._trunk_status(trunk.name) for trunk in self.config.trunks},
                "calls": len(self.legs)}

    def _trunk_status(self, name: str) -> dict[str, typing.Any]:
        host, port = self.trunk_addresses[name]
        registration = self.registrations.get(name)
        status: dict[str, typing.Any] = {"proxy": f"{host}:{port}"}
        status["registration"] = registration.describe() if registration is not None else "off"
        return status

    def _registration_changed(self, registration: Registration) -> None:
        component = self._components.get(registration.trunk)
        registered = registration.state == "registered"
        if self.metrics.registry is not None:
            self.metrics.registered.labels(registration.trunk).set(1 if registered else 0)
        if component is None:
            return
        if registered:
            component.set_up()
        else:
            component.set_down(f"{registration.state}: {registration.last_error or 'not registered yet'}")

    # -- the core's events
    def _core_event(self, event: typing.Any, call: typing.Any) -> None:
        if not isinstance(event, (LegHeld, LegRetrieved)) or event.leg_id is None:
            return
        for leg in self.legs.values():
            if leg.leg_id == event.leg_id:
                leg.core_hold(isinstance(event, LegHeld))
                return

    def peer_hold(self, leg: SipLeg, holds: bool) -> None:
        """The peer held us (or took us off hold) by re-INVITE: the core's hold (or retrieve) of the call."""
        control = self._control()
        call_id = getattr(leg.events, "call_id", None)
        if control is None or call_id is None:
            return
        d = control.hold(call_id) if holds else control.retrieve(call_id)
        d.addErrback(lambda failure: log.info("sip: the peer's {what} could not be the core's on call {call_id}: "
                                              "{error}", what="hold" if holds else "retrieve", call_id=call_id,
                                              error=failure.getErrorMessage()))

    def leg_ended(self, leg: SipLeg) -> None:
        self.legs.pop(id(leg), None)


def _resolve(host: str) -> str:
    """A trunk's host as an IPv4 address (once, at start; a name that does not resolve is an error)."""
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0])
    except (OSError, IndexError) as problem:
        from gateway.confschema import ConfigError

        raise ConfigError("sip.trunks", f"cannot resolve the trunk host {host!r}: {problem}") from None


def build_driver(ctx: typing.Any) -> SipDriver:
    """The driver for the daemon: ``[sip]`` (required), the media ports, metrics, readiness ``sip:<trunk>``,
    status ``sip``, the registry for hold."""
    from gateway.confschema import ConfigError

    config = ctx.config.sip
    if config is None:
        raise ConfigError("sip", "the sip driver needs the [sip] section")
    driver = SipDriver(ctx.reactor, config, ports=ctx.media_ports, metrics=ctx.metrics, readiness=ctx.readiness,
                       control=lambda: ctx.registry)
    ctx.status[NAME] = driver
    return driver
