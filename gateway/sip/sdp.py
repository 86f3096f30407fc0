"""SDP for the SIP leg's audio: parsing (RFC 4566) and offer/answer (RFC 3264).

The gateway carries one audio stream per leg, G.711 (PCMU, PCMA) at 8 kHz with
20 ms packets, and RFC 4733 ``telephone-event`` for DTMF. This module:

- parses a peer's SDP strictly and boundedly (:func:`parse_sdp`, :class:`SDPError`,
  which the UA answers with 488 Not Acceptable Here, or 400 when it is not SDP);
- writes this side's offers and answers (:class:`LocalMedia`), the ``o=``
  version growing with each new description (RFC 3264 8);
- answers an offer (:meth:`LocalMedia.answer`): the first offered codec we
  support, telephone-event when offered, every other ``m=`` line refused with
  port 0, the direction the reverse of the offer's as far as we want to send
  and receive (RFC 3264 6.1);
- reads the answer to our offer (:meth:`LocalMedia.accept_answer`).

Hold and retrieve (RFC 3264 8.4) are directions: holding a call offers
``sendonly`` (``inactive`` if the peer holds too), retrieving it offers
``sendrecv`` again; a peer's hold arrives as an offer with ``sendonly`` or
``inactive`` (or the RFC 2543 ``c=0.0.0.0``), answered ``recvonly`` or
``inactive``. :class:`Negotiated` tells the media plane what to send, where,
and whether to send and receive at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import attrs

from gateway.boundary import parse_int

__all__ = [
    "DIRECTIONS",
    "LocalMedia",
    "Media",
    "Negotiated",
    "SDPError",
    "SessionDescription",
    "parse_sdp",
    "reverse",
]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
#: the static payload types we know (RFC 3551): encoding name -> payload type
STATIC = {"PCMU": 0, "PCMA": 8}
_STATIC_BY_PT = {pt: name for name, pt in STATIC.items()}
MAX_SDP = 16384
MAX_LINES = 256
PTIME = 20


class SDPError(ValueError):
    """A description that is not SDP (``status`` 400) or that offers nothing we can take (488)."""

    def __init__(self, problem: str, status: int = 488):
        self.problem = problem
        self.status = status
        super().__init__(problem)


def reverse(direction: str) -> str:
    """The direction the other side sees: sendonly <-> recvonly."""
    return {"sendonly": "recvonly", "recvonly": "sendonly"}.get(direction, direction)


def _direction(send: bool, recv: bool) -> str:
    return {(True, True): "sendrecv", (True, False): "sendonly", (False, True): "recvonly",
            (False, False): "inactive"}[(send, recv)]


@attrs.frozen
class Media:
    """One ``m=`` section."""

    kind: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: str | None = None
    #: payload type -> (encoding name upper case, clock rate)
    rtpmap: tuple[tuple[int, str, int], ...] = ()
    fmtp: tuple[tuple[int, str], ...] = ()
    direction: str = "sendrecv"
    ptime: int | None = None

    def encoding(self, pt: int) -> tuple[str, int] | None:
        for number, name, rate in self.rtpmap:
            if number == pt:
                return name, rate
        if pt in _STATIC_BY_PT:
            return _STATIC_BY_PT[pt], 8000
        return None


@attrs.frozen
class SessionDescription:
    origin: str
    session_id: str
    version: int
    address: str | None
    media: tuple[Media, ...]
    direction: str = "sendrecv"


def _address(text: str) -> str:
    parts = text.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SDPError(f"bad connection line {text[:60]!r}", 400)
    address = parts[2].split("/")[0]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if not address or any(c in address for c in " \t"):
            raise SDPError(f"bad connection address {address[:60]!r}", 400) from None
    return address


def parse_sdp(body: bytes) -> SessionDescription:
    """A peer's session description.

    :raises SDPError: (400) not UTF-8, too long, a line that is not ``x=value``, no ``v=0``, a bad
        ``o=``, ``c=`` or ``m=`` line, a payload type outside 0-127.
    """
    if len(body) > MAX_SDP:
        raise SDPError(f"SDP of {len(body)} bytes is over {MAX_SDP}", 400)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SDPError("SDP is not UTF-8", 400) from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_LINES:
        raise SDPError(f"more than {MAX_LINES} SDP lines", 400)
    if not lines or lines[0] != "v=0":
        raise SDPError("SDP must begin with v=0", 400)
    origin = session_id = ""
    version = 0
    session_address: str | None = None
    session_direction = "sendrecv"
    media: list[dict[str, Any]] = []
    for line in lines[1:]:
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SDPError(f"not an SDP line: {line[:60]!r}", 400)
        kind, value = line[0], line[2:]
        current = media[-1] if media else None
        if kind == "o":
            parts = value.split()
            number = parse_int(parts[2]) if len(parts) == 6 else None
            if number is None or number < 0:
                raise SDPError(f"bad origin line {value[:60]!r}", 400)
            origin, session_id, version = parts[0], parts[1], number
            _address(" ".join(parts[3:]))
        elif kind == "c":
            if current is None:
                session_address = _address(value)
            else:
                current["connection"] = _address(value)
        elif kind == "m":
            parts = value.split()
            port = parse_int(parts[1].split("/")[0]) if len(parts) >= 4 else None
            if port is None or not 0 <= port <= 65535:
                raise SDPError(f"bad media line {value[:60]!r}", 400)
            media.append({"kind": parts[0], "port": port, "proto": parts[2], "formats": tuple(parts[3:]),
                          "rtpmap": [], "fmtp": [], "direction": None})
        elif kind == "a":
            name, _, rest = value.partition(":")
            if name in DIRECTIONS:
                if current is None:
                    session_direction = name
                else:
                    current["direction"] = name
            elif current is not None and name == "rtpmap":
                pt_text, _, encoding = rest.partition(" ")
                pt = parse_int(pt_text)
                fields = encoding.split("/")
                rate = parse_int(fields[1]) if len(fields) >= 2 else None
                if pt is None or not 0 <= pt <= 127 or rate is None or rate <= 0:
                    raise SDPError(f"bad rtpmap {rest[:60]!r}", 400)
                current["rtpmap"].append((pt, fields[0].upper(), rate))
            elif current is not None and name == "fmtp":
                pt_text, _, params = rest.partition(" ")
                pt = parse_int(pt_text)
                if pt is not None:
                    current["fmtp"].append((pt, params))
            elif current is not None and name == "ptime":
                ptime = parse_int(rest.strip())
                if ptime is not None and 0 < ptime <= 1000:
                    current["ptime"] = ptime
    return SessionDescription(
        origin=origin, session_id=session_id, version=version, address=session_address,
        direction=session_direction,
        media=tuple(Media(kind=m["kind"], port=m["port"], proto=m["proto"], formats=m["formats"],
                          connection=m.get("connection") or session_address, rtpmap=tuple(m["rtpmap"]),
                          fmtp=tuple(m["fmtp"]), direction=m["direction"] or session_direction,
                          ptime=m.get("ptime"))
                    for m in media))


@attrs.frozen
class Negotiated:
    """What was agreed for the audio stream, from this side's point of view."""

    #: the codec we send and expect: "PCMU" or "PCMA"
    codec: str
    payload_type: int
    #: the peer's telephone-event payload type, or None when it offered none
    dtmf_payload_type: int | None
    #: where to send RTP (the peer's address and port)
    remote_address: str
    remote_port: int
    #: our direction: "sendrecv", "sendonly" (we hold), "recvonly" (they hold), "inactive"
    direction: str
    ptime: int = PTIME

    @property
    def send(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receive(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")


@attrs.define
class LocalMedia:
    """This side of one leg's SDP: its RTP address and port, codecs, and the description versions.

    :param codecs: the codecs we take, preferred first (a subset of PCMU, PCMA).
    :param dtmf_payload_type: the payload type we offer telephone-event on.
    """

    address: str
    port: int
    session_id: str
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    dtmf_payload_type: int = 101
    version: int = 0
    #: what we ask for: "sendrecv", or "sendonly" while we hold the call
    wanted: str = "sendrecv"
    _last_offer_direction: str = "sendrecv"

    def _describe(self, media_lines: list[str]) -> bytes:
        self.version += 1
        family = "IP6" if ":" in self.address else "IP4"
        lines = ["v=0", f"o=gateway {self.session_id} {self.version} IN {family} {self.address}", "s=-",
                 f"c=IN {family} {self.address}", "t=0 0", *media_lines]
        return ("\r\n".join(lines) + "\r\n").encode("ascii")

    def _audio_lines(self, codecs: Iterable[tuple[str, int]], dtmf: int | None, direction: str,
                     port: int | None = None) -> list[str]:
        codecs = list(codecs)
        formats = [str(pt) for _, pt in codecs] + ([str(dtmf)] if dtmf is not None else [])
        lines = [f"m=audio {self.port if port is None else port} RTP/AVP {' '.join(formats)}"]
        lines += [f"a=rtpmap:{pt} {name}/8000" for name, pt in codecs]
        if dtmf is not None:
            lines += [f"a=rtpmap:{dtmf} telephone-event/8000", f"a=fmtp:{dtmf} 0-16"]
        lines += [f"a=ptime:{PTIME}", f"a={direction}"]
        return lines

    def offer(self, *, hold: bool | None = None, peer_holds: bool = False) -> bytes:
        """A new offer (initial, or a re-INVITE's). ``hold`` True/False changes what we want; a hold
        offers ``sendonly``, or ``inactive`` when the peer holds too (RFC 3264 8.4)."""
        if hold is not None:
            self.wanted = "sendonly" if hold else "sendrecv"
        direction = self.wanted
        if peer_holds:
            direction = "inactive" if direction == "sendonly" else "recvonly"
        self._last_offer_direction = direction
        return self._describe(self._audio_lines(((c, STATIC[c]) for c in self.codecs), self.dtmf_payload_type,
                                                direction))

    def answer(self, offer: SessionDescription) -> tuple[bytes, Negotiated]:
        """Our answer to ``offer`` and what it agrees.

        :raises SDPError: (488) no audio stream with a codec we take.
        """
        chosen: tuple[int, Media, str, int, int | None] | None = None
        lines: list[str] = []
        for index, media in enumerate(offer.media):
            picked = None
            if chosen is None and media.kind == "audio" and media.port != 0 and media.proto.startswith("RTP/"):
                picked = self._pick(media)
            if picked is None:
                formats = " ".join(media.formats) or "0"
                lines += [f"m={media.kind} 0 {media.proto} {formats}"]
                continue
            codec, pt, dtmf = picked
            send = self.wanted in ("sendrecv", "sendonly") and media.direction in ("sendrecv", "recvonly")
            recv = self.wanted in ("sendrecv", "recvonly") and media.direction in ("sendrecv", "sendonly")
            if media.connection in ("0.0.0.0", "::"):
                send = False  # RFC 2543 hold
            direction = _direction(send, recv)
            chosen = (index, media, codec, pt, dtmf)
            lines += self._audio_lines([(codec, pt)], dtmf, direction)
            negotiated = Negotiated(codec=codec, payload_type=pt, dtmf_payload_type=dtmf,
                                    remote_address=media.connection or "", remote_port=media.port,
                                    direction=direction, ptime=media.ptime or PTIME)
        if chosen is None:
            raise SDPError("no audio stream offers PCMU or PCMA over RTP")
        if not negotiated.remote_address:
            raise SDPError("the audio stream has no connection address", 400)
        return self._describe(lines), negotiated

    def _pick(self, media: Media) -> tuple[str, int, int | None] | None:
        dtmf = None
        for fmt in media.formats:
            pt = parse_int(fmt)
            if pt is not None and (enc := media.encoding(pt)) is not None and enc == ("TELEPHONE-EVENT", 8000):
                dtmf = pt
                break
        for fmt in media.formats:  # the offerer's order of preference
            pt = parse_int(fmt)
            if pt is None:
                continue
            encoding = media.encoding(pt)
            if encoding is not None and encoding[1] == 8000 and encoding[0] in self.codecs:
                return encoding[0], pt, dtmf
        return None

    def accept_answer(self, answer: SessionDescription) -> Negotiated:
        """What the peer's answer to our last offer agrees.

        :raises SDPError: (488) the audio stream refused, or a codec we did not offer.
        """
        audio = [m for m in answer.media if m.kind == "audio"]
        if not audio or audio[0].port == 0:
            raise SDPError("the answer refuses the audio stream")
        media = audio[0]
        picked = self._pick(media)
        if picked is None:
            raise SDPError("the answer has no codec we offered")
        codec, pt, dtmf = picked
        offered_send = self._last_offer_direction in ("sendrecv", "sendonly")
        offered_recv = self._last_offer_direction in ("sendrecv", "recvonly")
        send = offered_send and media.direction in ("sendrecv", "recvonly")
        recv = offered_recv and media.direction in ("sendrecv", "sendonly")
        if media.connection in ("0.0.0.0", "::"):
            send = False
        if not media.connection:
            raise SDPError("the answer has no connection address", 400)
        return Negotiated(codec=codec, payload_type=pt, dtmf_payload_type=dtmf, remote_address=media.connection,
                          remote_port=media.port, direction=_direction(send, recv), ptime=media.ptime or PTIME)
