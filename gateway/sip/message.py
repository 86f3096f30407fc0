"""SIP messages (RFC 3261 section 7 and 25): a strict parser and a serialiser.

What a SIP peer sends crosses the boundary here. The parser follows the
project's boundary policy (``gateway/boundary.py``): the start line and the
header section are **strict UTF-8** (never replaced), numbers are read
defensively and bounded, and sizes are capped (:class:`Limits`). Every message
that is not SIP raises :class:`SIPMessageError`, which says how the transport
answers it: ``status`` is the response code to send (400, 505, 513) when a
response can be formed (a request carrying at least a Via and a CSeq that is
not an ACK), or ``None`` when the message must be dropped (every malformed
response, an ACK, a request without Via or CSeq). ``reason`` is the
:data:`gateway.boundary.IGNORED_REASONS` value it is counted as.
:func:`error_response` builds the 400 from what could be read.

Parsing is strict where RFC 4475 says an element should refuse (one SP between
the request line's three parts, no LWS or ``<>`` in the Request-URI, no URI
headers in the Request-URI, unbalanced quotes, spaces inside ``<>``,
non-token display names, overlarge scalars, a CSeq method that is not the
request's, a repeated single-valued header, a Content-Length that is not the
body's) and liberal where the grammar is (line folding, LWS around ``:``,
``/``, ``;`` and ``=``, compact header names, any header-name case, unknown
schemes and headers, URI escapes).

The checks that belong to the UAS rather than to the syntax (an unsupported
URI scheme: 416, a ``Require`` it does not support: 420, a body type it does
not read: 415, an ``Accept`` without SDP: 406) are :func:`request_problem`.

A header is kept as its unfolded text, one entry per value for the headers
that are comma-separated lists (Via, Contact, Route, ...), so that the
transaction layer can add or remove one Via or Route without re-parsing the
rest; typed views (:meth:`Message.vias`, :meth:`Message.from_`, ...) parse on
demand and were already checked when the message was parsed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Union

import attrs

from gateway.boundary import IGNORED_REASONS, parse_int

__all__ = [
    "COMPACT_FORMS",
    "CSeq",
    "Limits",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "SIPMessageError",
    "SipURI",
    "StreamParser",
    "URI",
    "Via",
    "canonical_name",
    "error_response",
    "parse_datagram",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "request_problem",
]

SIP_VERSION = "SIP/2.0"
CRLF = "\r\n"

#: RFC 3261 7.3.3 and later RFCs' compact header names
COMPACT_FORMS = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact", "k": "Supported",
    "l": "Content-Length", "m": "Contact", "n": "Identity-Info", "o": "Event", "r": "Refer-To",
    "s": "Subject", "t": "To", "u": "Allow-Events", "v": "Via", "x": "Session-Expires", "y": "Identity",
}

_CANONICAL = {name.lower(): name for name in (
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events", "Authentication-Info",
    "Authorization", "Call-ID", "Call-Info", "Contact", "Content-Disposition", "Content-Encoding",
    "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires",
    "From", "In-Reply-To", "Max-Forwards", "Min-Expires", "MIME-Version", "Organization", "Path", "Priority",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "Reason", "Record-Route", "Refer-To",
    "Referred-By", "Reply-To", "Require", "Retry-After", "Route", "RSeq", "RAck", "Server", "Service-Route",
    "Session-Expires", "Subject", "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via", "Warning",
    "WWW-Authenticate", "Min-SE", "P-Asserted-Identity", "Privacy",
)}

#: headers whose value is a comma-separated list: kept one entry per element
LIST_HEADERS = frozenset({
    "Via", "Route", "Record-Route", "Contact", "Allow", "Supported", "Require", "Proxy-Require", "Unsupported",
    "Accept", "Accept-Encoding", "Accept-Language", "Allow-Events", "Content-Encoding", "Content-Language",
    "Path", "Service-Route", "In-Reply-To", "Alert-Info", "Call-Info", "Error-Info", "Warning",
    "P-Asserted-Identity",
})
#: headers that may appear at most once (RFC 4475 3.3.8, 3.3.9)
SINGLE_HEADERS = frozenset({
    "Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length", "Content-Type", "Expires", "Date",
})

_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN = re.compile(rf"[{_TOKEN_CHARS}]+\Z")
_WORD = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+\Z")
_CALL_ID = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?\Z")
_HOSTNAME = re.compile(r"([A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?\.?\Z")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_USER_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,;?/]+\Z")
_PASSWORD_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,]*\Z")
_PARAM_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]+\Z")
_HEADER_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/?:+$]*\Z")
_OPAQUE_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()%;/?:@&=+$,\[\]#]+\Z")
_VIA = re.compile(
    rf"\s*([{_TOKEN_CHARS}]+)\s*/\s*([{_TOKEN_CHARS}]+)\s*/\s*([{_TOKEN_CHARS}]+)\s+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:\s*:\s*([0-9]{1,5}))?\s*(;.*)?\Z",
    re.S,
)
_CSEQ = re.compile(rf"\s*([0-9]{{1,10}})\s+([{_TOKEN_CHARS}]+)\s*\Z")
_DATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), (0[1-9]|[12][0-9]|3[01]) "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9] GMT\Z"
)
_MEDIA_TYPE = re.compile(rf"\s*[{_TOKEN_CHARS}]+\s*/\s*[{_TOKEN_CHARS}]+\s*(;.*)?\Z", re.S)
#: the largest CSeq number (RFC 3261 8.1.1.5: less than 2**31)
MAX_CSEQ = 2**31 - 1
#: the largest delta-seconds (Expires, expires=, Retry-After)
MAX_DELTA = 2**32 - 1


class SIPMessageError(ValueError):
    """What a peer sent is not a SIP message the gateway accepts.

    ``problem`` is one sentence for a log line and the reason phrase; ``field``
    the header it is in (or ``None``: the start line or the framing);
    ``reason`` the :data:`~gateway.boundary.IGNORED_REASONS` value to count it
    as (``malformed``, ``bad_text``, ``oversized``); ``status`` the response to
    send (400, 505, 513) or ``None`` to drop it. ``head`` is what of the
    request could be read, for :func:`error_response`: the method and the raw
    Via, From, To, Call-ID and CSeq values.
    """

    def __init__(self, problem: str, field: str | None = None, *, reason: str = "malformed",
                 status: int | None = 400):
        if reason not in IGNORED_REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        self.problem = problem
        self.field = field
        self.reason = reason
        self.status = status
        self.head: _Head | None = None
        super().__init__(f"{field}: {problem}" if field else problem)


@attrs.define
class _Head:
    """The parts of a refused request an error response copies."""

    method: str
    headers: list[tuple[str, str]]


@attrs.frozen
class Limits:
    """Size caps on one message (bytes and counts)."""

    #: the whole message, start line to end of body (a UDP datagram is at most 65507 anyway)
    max_message: int = 65535
    #: header fields (list elements counted one by one)
    max_headers: int = 256
    #: one header line, after unfolding
    max_line: int = 16384
    #: the body
    max_body: int = 65535


# ---------------------------------------------------------------------------------------------
# URIs


@attrs.frozen
class URI:
    """An absolute URI of a scheme other than sip/sips (tel:, http:, urn:, ...), kept as text."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


@attrs.frozen
class SipURI:
    """A sip: or sips: URI (RFC 3261 19.1). ``params`` keys are lower case, in order; a flag's value is None."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str | None = None

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None

    def has_param(self, name: str) -> bool:
        return any(key == name for key, _ in self.params)

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        text = f"{self.scheme}:"
        if self.user is not None:
            text += self.user + (f":{self.password}" if self.password is not None else "") + "@"
        text += self.hostport
        for key, value in self.params:
            text += f";{key}" if value is None else f";{key}={value}"
        if self.headers is not None:
            text += f"?{self.headers}"
        return text


AnyURI = Union[SipURI, URI]


def _check_host(host: str, where: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise SIPMessageError(f"bad IPv6 reference {host[:60]!r}", where)
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise SIPMessageError(f"bad IPv6 reference {host[:60]!r}", where) from None
        return host
    if not host or not _HOSTNAME.match(host):
        raise SIPMessageError(f"bad host {host[:60]!r}", where)
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise SIPMessageError(f"bad IPv4 address {host[:60]!r}", where) from None
    return host


def _check_port(text: str, where: str) -> int:
    port = parse_int(text, max_digits=5)
    if port is None or not text.isdigit() or not 0 < port <= 65535:
        raise SIPMessageError(f"bad port {text[:20]!r}", where)
    return port


def parse_uri(text: str, where: str | None = "Request-URI") -> AnyURI:
    """A URI: :class:`SipURI` for sip/sips (checked strictly), :class:`URI` for any other scheme."""
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.match(scheme) or not rest:
        raise SIPMessageError(f"not an absolute URI: {text[:80]!r}", where)
    if _ESCAPE.search(rest):
        raise SIPMessageError(f"a % that is not an escape in {text[:80]!r}", where)
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        if not _OPAQUE_CHARS.match(rest):
            raise SIPMessageError(f"bad character in URI {text[:80]!r}", where)
        return URI(scheme, rest)
    user = password = None
    if "@" in rest:
        userinfo, _, rest = rest.partition("@")
        user, colon, pw = userinfo.partition(":")
        if not user or not _USER_CHARS.match(user):
            raise SIPMessageError(f"bad user part in {text[:80]!r}", where)
        if colon:
            if not _PASSWORD_CHARS.match(pw):
                raise SIPMessageError(f"bad password part in {text[:80]!r}", where)
            password = pw
    rest, question, headers = rest.partition("?")
    if question and not _HEADER_CHARS.match(headers.replace("=", "").replace("&", "")):
        raise SIPMessageError(f"bad URI headers in {text[:80]!r}", where)
    hostport, *raw_params = rest.split(";")
    if hostport.startswith("["):
        close = hostport.find("]")
        host, port_text = hostport[: close + 1], hostport[close + 1:]
        if port_text and not port_text.startswith(":"):
            raise SIPMessageError(f"bad host in {text[:80]!r}", where)
        port_text = port_text[1:] if port_text else ""
        has_port = bool(hostport[close + 1:])
    else:
        host, has_colon, port_text = hostport.partition(":")
        has_port = bool(has_colon)
    _check_host(host, where or "URI")
    port = _check_port(port_text, where or "URI") if has_port else None
    params: list[tuple[str, str | None]] = []
    for raw in raw_params:
        name, equals, value = raw.partition("=")
        if not name or not _PARAM_CHARS.match(name) or (equals and not _PARAM_CHARS.match(value)):
            raise SIPMessageError(f"bad URI parameter {raw[:40]!r}", where)
        params.append((name.lower(), value if equals else None))
    return SipURI(scheme, user, password, host.lower(), port, tuple(params), headers if question else None)


# ---------------------------------------------------------------------------------------------
# header values


def _split_outside(text: str, separator: str, *, angle: bool = False) -> list[str]:
    """``text`` split at ``separator`` outside quoted strings (and ``<...>`` when ``angle``)."""
    parts, start, quoted, depth, i = [], 0, False, 0, 0
    while i < len(text):
        char = text[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif angle and char == "<":
            depth += 1
        elif angle and char == ">":
            depth = max(0, depth - 1)
        elif char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise SIPMessageError("unterminated quoted string")
    parts.append(text[start:])
    return parts


def _quoted_string(text: str, start: int) -> tuple[str, int]:
    """The unescaped content of the quoted string at ``text[start]`` (a ``"``) and the index after it."""
    out, i = [], start + 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 >= len(text) or text[i + 1] in "\r\n":
                break
            out.append(text[i + 1])
            i += 2
        elif char == '"':
            return "".join(out), i + 1
        else:
            out.append(char)
            i += 1
    raise SIPMessageError("unterminated quoted string")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_params(text: str, where: str) -> tuple[tuple[str, str | None], ...]:
    """``;name[=value]`` pairs (LWS allowed around ``;`` and ``=``), names lower-cased; quoted values kept quoted."""
    text = text.strip()
    if not text:
        return ()
    if not text.startswith(";"):
        raise SIPMessageError(f"unexpected text {text[:40]!r}", where)
    params: list[tuple[str, str | None]] = []
    for raw in _split_outside(text[1:], ";"):
        name, equals, value = raw.partition("=")
        name, value = name.strip(), value.strip()
        if not _TOKEN.match(name):
            raise SIPMessageError(f"bad parameter {raw.strip()[:40]!r}", where)
        if equals:
            if value.startswith('"'):
                _, end = _quoted_string(value, 0)
                if end != len(value):
                    raise SIPMessageError(f"bad parameter value {value[:40]!r}", where)
            elif not (_TOKEN.match(value) or (value.startswith("[") and value.endswith("]") and len(value) > 2)):
                raise SIPMessageError(f"bad parameter value {value[:40]!r}", where)
        params.append((name.lower(), value if equals else None))
    return tuple(params)


def _params_text(params: Iterable[tuple[str, str | None]]) -> str:
    return "".join(f";{key}" if value is None else f";{key}={value}" for key, value in params)


def _param(params: Iterable[tuple[str, str | None]], name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


@attrs.frozen
class NameAddr:
    """A From, To, Contact, Route or Record-Route value: ``display <uri>;params`` (or ``*`` for Contact)."""

    uri: AnyURI | None
    display: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    star: bool = False

    @property
    def tag(self) -> str | None:
        return _param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    def with_param(self, name: str, value: str | None) -> NameAddr:
        kept = tuple((k, v) for k, v in self.params if k != name)
        return attrs.evolve(self, params=kept + ((name, value),))

    def __str__(self) -> str:
        if self.star:
            return "*"
        display = f"{_quote(self.display)} " if self.display is not None else ""
        return f"{display}<{self.uri}>{_params_text(self.params)}"


def parse_name_addr(text: str, where: str = "header", *, allow_star: bool = False) -> NameAddr:
    """One name-addr or addr-spec with its header parameters (RFC 3261 20.10, 25.1)."""
    stripped = text.strip()
    if allow_star and stripped == "*":
        return NameAddr(None, star=True)
    display: str | None = None
    if stripped.startswith('"'):
        display, end = _quoted_string(stripped, 0)
        rest = stripped[end:].lstrip()
        if not rest.startswith("<"):
            raise SIPMessageError("a quoted display name must be followed by <uri>", where)
    else:
        lt = stripped.find("<")
        if lt >= 0:
            words = stripped[:lt].split()
            if any(not _TOKEN.match(word) for word in words):
                raise SIPMessageError(f"display name {stripped[:lt][:60]!r} is neither tokens nor quoted", where)
            display = " ".join(words) if words else None
            rest = stripped[lt:]
        else:
            uri_text, _, params = stripped.partition(";")
            uri_text = uri_text.rstrip()
            if any(c in uri_text for c in " \t,?<>\""):
                raise SIPMessageError(f"a URI with , ? or spaces must be in <>: {uri_text[:60]!r}", where)
            return NameAddr(parse_uri(uri_text, where), None, _parse_params(";" + params if params else "", where))
    gt = rest.find(">")
    if gt < 0:
        raise SIPMessageError("< without >", where)
    uri_text = rest[1:gt]
    if any(c in uri_text for c in " \t<\""):
        raise SIPMessageError(f"spaces or quotes inside <>: {uri_text[:60]!r}", where)
    return NameAddr(parse_uri(uri_text, where), display, _parse_params(rest[gt + 1:], where))


@attrs.frozen
class Via:
    """One Via value (RFC 3261 20.42, RFC 3581 rport)."""

    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def branch(self) -> str | None:
        return _param(self.params, "branch")

    @property
    def received(self) -> str | None:
        return _param(self.params, "received")

    @property
    def rport(self) -> int | None:
        value = _param(self.params, "rport")
        return int(value) if value else None

    @property
    def has_rport(self) -> bool:
        return any(key == "rport" for key, _ in self.params)

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    def with_param(self, name: str, value: str | None) -> Via:
        """This Via with ``name`` set to ``value`` (replacing it where it was, else appended)."""
        if any(key == name for key, _ in self.params):
            params = tuple((k, value if k == name else v) for k, v in self.params)
        else:
            params = self.params + ((name, value),)
        return attrs.evolve(self, params=params)

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{_params_text(self.params)}"


def parse_via(text: str) -> Via:
    match = _VIA.match(text)
    if match is None:
        raise SIPMessageError(f"bad Via {text.strip()[:80]!r}", "Via")
    name, version, transport, host, port_text, params_text = match.groups()
    if name.upper() != "SIP" or version != "2.0":
        raise SIPMessageError(f"Via protocol {name}/{version} is not SIP/2.0", "Via")
    _check_host(host, "Via")
    port = _check_port(port_text, "Via") if port_text else None
    params = _parse_params(params_text or "", "Via")
    for key, value in params:
        if key == "received":
            try:
                ipaddress.ip_address((value or "").strip("[]"))
            except ValueError:
                raise SIPMessageError(f"received={value!r} is not an IP address", "Via") from None
        elif key == "rport" and value is not None:
            _check_port(value, "Via")
        elif key == "ttl" and (value is None or not value.isdigit() or int(value) > 255):
            raise SIPMessageError(f"bad ttl {value!r}", "Via")
        elif key == "branch" and value is None:
            raise SIPMessageError("branch without a value", "Via")
    return Via(transport.upper(), host.lower(), port, params)


@attrs.frozen
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(text: str) -> CSeq:
    match = _CSEQ.match(text)
    if match is None:
        raise SIPMessageError(f"bad CSeq {text.strip()[:40]!r}", "CSeq")
    seq = int(match.group(1))
    if seq > MAX_CSEQ:
        raise SIPMessageError(f"CSeq number {seq} is not below 2**31", "CSeq")
    return CSeq(seq, match.group(2))


def _delta(text: str, field: str, maximum: int = MAX_DELTA) -> int:
    value = parse_int(text.strip(), max_digits=10)
    if value is None or not text.strip().isdigit() or value > maximum:
        raise SIPMessageError(f"{text.strip()[:40]!r} is not a number from 0 to {maximum}", field)
    return value


def _check_contact(text: str) -> None:
    contact = parse_name_addr(text, "Contact", allow_star=True)
    expires = contact.param("expires")
    if expires is not None:
        _delta(expires, "Contact")


_CHECKS: dict[str, Callable[[str], object]] = {
    "Via": parse_via,
    "CSeq": parse_cseq,
    "From": lambda text: parse_name_addr(text, "From"),
    "To": lambda text: parse_name_addr(text, "To"),
    "Contact": _check_contact,
    "Route": lambda text: parse_name_addr(text, "Route"),
    "Record-Route": lambda text: parse_name_addr(text, "Record-Route"),
    "Max-Forwards": lambda text: _delta(text, "Max-Forwards", 255),
    "Expires": lambda text: _delta(text, "Expires"),
    "Min-Expires": lambda text: _delta(text, "Min-Expires"),
}


def _check_value(name: str, value: str) -> None:
    if name == "Call-ID":
        if not _CALL_ID.match(value.strip()):
            raise SIPMessageError(f"bad Call-ID {value.strip()[:60]!r}", name)
    elif name == "Date":
        if not _DATE.match(value.strip()):
            raise SIPMessageError(f"bad Date {value.strip()[:60]!r}", name)
    elif name == "Content-Type":
        if not _MEDIA_TYPE.match(value):
            raise SIPMessageError(f"bad Content-Type {value.strip()[:60]!r}", name)
    elif name in ("Require", "Proxy-Require", "Supported", "Unsupported", "Allow"):
        if not _TOKEN.match(value.strip()):
            raise SIPMessageError(f"bad option tag {value.strip()[:40]!r}", name)
    else:
        check = _CHECKS.get(name)
        if check is not None:
            check(value)


def canonical_name(name: str) -> str:
    """The header's canonical spelling: compact forms expanded, known names in their RFC case."""
    lower = name.lower()
    if lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    return _CANONICAL.get(lower, name)


# ---------------------------------------------------------------------------------------------
# messages


@attrs.define(eq=False)
class Message:
    """What requests and responses share: headers (canonical name, value) in order, and the body."""

    headers: list[tuple[str, str]] = attrs.field(factory=list)
    body: bytes = b""

    # -- raw access
    def get(self, name: str) -> str | None:
        """The first value of ``name`` (any spelling), or None."""
        name = canonical_name(name)
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        name = canonical_name(name)
        return [value for key, value in self.headers if key == name]

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Add one value; ``first`` puts it before the other values of ``name`` (a Via, a Route)."""
        name = canonical_name(name)
        if first:
            for index, (key, _) in enumerate(self.headers):
                if key == name:
                    self.headers.insert(index, (name, value))
                    return
            self.headers.insert(0, (name, value))
        else:
            self.headers.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` by this one (in the first one's place)."""
        name = canonical_name(name)
        for index, (key, _) in enumerate(self.headers):
            if key == name:
                self.headers[index] = (name, value)
                self.headers[index + 1:] = [(k, v) for k, v in self.headers[index + 1:] if k != name]
                return
        self.headers.append((name, value))

    def remove(self, name: str) -> None:
        name = canonical_name(name)
        self.headers = [(k, v) for k, v in self.headers if k != name]

    def remove_first(self, name: str) -> str | None:
        name = canonical_name(name)
        for index, (key, value) in enumerate(self.headers):
            if key == name:
                del self.headers[index]
                return value
        return None

    # -- typed views
    @property
    def vias(self) -> list[Via]:
        return [parse_via(value) for value in self.get_all("Via")]

    @property
    def top_via(self) -> Via | None:
        value = self.get("Via")
        return parse_via(value) if value is not None else None

    @property
    def from_(self) -> NameAddr:
        return parse_name_addr(self._required("From"), "From")

    @property
    def to(self) -> NameAddr:
        return parse_name_addr(self._required("To"), "To")

    @property
    def call_id(self) -> str:
        return self._required("Call-ID").strip()

    @property
    def cseq(self) -> CSeq:
        return parse_cseq(self._required("CSeq"))

    @property
    def contacts(self) -> list[NameAddr]:
        return [parse_name_addr(value, "Contact", allow_star=True) for value in self.get_all("Contact")]

    @property
    def routes(self) -> list[NameAddr]:
        return [parse_name_addr(value, "Route") for value in self.get_all("Route")]

    @property
    def record_routes(self) -> list[NameAddr]:
        return [parse_name_addr(value, "Record-Route") for value in self.get_all("Record-Route")]

    @property
    def max_forwards(self) -> int | None:
        value = self.get("Max-Forwards")
        return None if value is None else _delta(value, "Max-Forwards", 255)

    @property
    def expires(self) -> int | None:
        value = self.get("Expires")
        return None if value is None else _delta(value, "Expires")

    @property
    def content_type(self) -> str | None:
        value = self.get("Content-Type")
        return None if value is None else value.split(";")[0].replace(" ", "").replace("\t", "").lower()

    def _required(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise SIPMessageError("missing", name)
        return value

    # -- wire
    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The wire form: headers in order, list headers one line per value, Content-Length of the body."""
        lines = [self.start_line()]
        lines.extend(f"{name}: {value}" for name, value in self.headers if name != "Content-Length")
        lines.append(f"Content-Length: {len(self.body)}")
        return (CRLF.join(lines) + CRLF + CRLF).encode("utf-8") + self.body

    __bytes__ = to_bytes


@attrs.define(eq=False)
class Request(Message):
    method: str = "OPTIONS"
    uri: str = ""

    @property
    def request_uri(self) -> AnyURI:
        return parse_uri(self.uri)

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def response(self, status: int, reason: str | None = None, *, to_tag: str | None = None) -> Response:
        """A response to this request (RFC 3261 8.2.6.2): Via, From, To, Call-ID and CSeq copied, and
        ``to_tag`` added to To when it has none (never to a 100)."""
        response = Response(status=status, reason=reason or REASONS.get(status, "Unknown"))
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            for value in self.get_all(name):
                if name == "To" and to_tag is not None and status > 100:
                    to = parse_name_addr(value, "To")
                    if to.tag is None:
                        value = str(to.with_param("tag", to_tag))
                response.headers.append((name, value))
        return response

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


@attrs.define(eq=False)
class Response(Message):
    status: int = 200
    reason: str = "OK"

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
    200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 413: "Request Entity Too Large", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
}


# ---------------------------------------------------------------------------------------------
# parsing


def _decode(data: bytes, where: str | None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SIPMessageError(f"not UTF-8 text (bad byte at offset {error.start})", where, reason="bad_text",
                              status=None) from None


def _unfold(head: str) -> list[str]:
    """The header lines of ``head`` (after the start line), continuation lines joined with one SP."""
    lines: list[str] = []
    for line in head.split(CRLF):
        if line[:1] in (" ", "\t"):
            if not lines:
                raise SIPMessageError("a continuation line before any header")
            lines[-1] = lines[-1].rstrip(" \t") + " " + line.lstrip(" \t")
        else:
            lines.append(line)
    return lines


def _parse_start_line(line: str) -> tuple[Request | Response, SIPMessageError | None]:
    """The message the start line opens, and the error to raise once the headers are read (a request's
    error is deferred so that its 400 can copy the Via, From, To, Call-ID and CSeq)."""
    if line.startswith("SIP/"):
        parts = line.split(" ", 2)
        if len(parts) < 3:
            raise SIPMessageError(f"bad status line {line[:80]!r}", status=None)
        version, code, reason = parts
        if version != SIP_VERSION:
            raise SIPMessageError(f"version {version[:20]!r} is not SIP/2.0", status=None)
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise SIPMessageError(f"bad status code {code[:20]!r}", status=None)
        if any(c in reason for c in "\r\n\x00"):
            raise SIPMessageError("bad reason phrase", status=None)
        return Response(status=int(code), reason=reason), None
    method = line.split(" ", 1)[0]
    if not _TOKEN.match(method):
        raise SIPMessageError(f"not a SIP start line: {line[:80]!r}", status=None)
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        return Request(method=method, uri=""), SIPMessageError(
            f"a request line is Method SP Request-URI SP SIP-Version: {line[:80]!r}", "Request-Line")
    _, uri, version = parts
    request = Request(method=method, uri=uri)
    if not version.startswith("SIP/") or version.upper() != version:
        return request, SIPMessageError(f"bad SIP-Version {version[:20]!r}", "Request-Line")
    if version != SIP_VERSION:
        return request, SIPMessageError(f"version {version[:20]!r} is not supported", "Request-Line", status=505)
    try:
        parsed = parse_uri(uri)
    except SIPMessageError as error:
        return request, error
    if isinstance(parsed, SipURI) and parsed.headers is not None:
        return request, SIPMessageError("the Request-URI carries URI headers", "Request-URI")
    return request, None


_HEAD_NAMES = ("Via", "From", "To", "Call-ID", "CSeq")


def parse_message(data: bytes, *, stream: bool = False, limits: Limits = Limits()) -> tuple[Message, int]:
    """One message from the start of ``data`` and how many bytes it took.

    ``stream``: from a TCP stream, where Content-Length is required and
    ``data`` is one complete head and body (see :class:`StreamParser`);
    otherwise a UDP datagram, where a missing Content-Length means the rest of
    the datagram and octets past the Content-Length are ignored (RFC 3261 18.3).

    :raises SIPMessageError: the message is refused (see the module docstring).
    """
    if len(data) > limits.max_message:
        raise SIPMessageError(f"message of {len(data)} bytes is over {limits.max_message}",
                              reason="oversized", status=None)
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise SIPMessageError("no empty line ends the header section", status=None)
    head_text = _decode(data[:end], None)
    if "\r" in head_text.replace(CRLF, "") or "\n" in head_text.replace(CRLF, ""):
        raise SIPMessageError("a bare CR or LF in the header section", status=None)
    start, _, rest = head_text.partition(CRLF)
    message, deferred = _parse_start_line(start)
    request = message if isinstance(message, Request) else None
    raw: list[tuple[str, str]] = []  # (canonical name, unfolded value) per header line
    headers: list[tuple[str, str]] = []  # list headers split, one entry per element
    try:
        for line in _unfold(rest) if rest else []:
            if len(line) > limits.max_line:
                raise SIPMessageError(f"a header line of {len(line)} characters is over {limits.max_line}",
                                      reason="oversized", status=513)
            name, colon, value = line.partition(":")
            name = name.rstrip(" \t")
            if not colon or not _TOKEN.match(name):
                raise SIPMessageError(f"not a header line: {line[:60]!r}")
            raw.append((canonical_name(name), value.strip(" \t")))
            if len(raw) > limits.max_headers:
                raise SIPMessageError(f"more than {limits.max_headers} header fields", reason="oversized",
                                      status=513)
        if deferred is not None:
            raise deferred
        for name, value in raw:
            if name in LIST_HEADERS:
                elements = _split_outside(value, ",", angle=True)
                if name == "Via" or len(elements) > 1:
                    for element in elements:
                        if not element.strip():
                            raise SIPMessageError("an empty element in a list", name)
                        headers.append((name, element.strip(" \t")))
                    continue
            headers.append((name, value))
        if len(headers) > limits.max_headers:
            raise SIPMessageError(f"more than {limits.max_headers} header fields", reason="oversized", status=513)
        seen: set[str] = set()
        for name, value in headers:
            if name in SINGLE_HEADERS:
                if name in seen:
                    raise SIPMessageError("appears more than once", name)
                seen.add(name)
            try:
                _check_value(name, value)
            except SIPMessageError as error:
                error.field = error.field or name
                raise
        for name in _HEAD_NAMES:
            if name not in seen and name != "Via" or name == "Via" and not any(k == "Via" for k, _ in headers):
                raise SIPMessageError("missing", name)
        cseq = parse_cseq(dict(headers)["CSeq"])
        if request is not None and cseq.method != request.method:
            raise SIPMessageError(f"CSeq method {cseq.method[:40]!r} is not the request's {request.method[:40]!r}",
                                  "CSeq")
        length_text = dict(headers).get("Content-Length")
        body_start = end + 4
        if length_text is None:
            if stream:
                raise SIPMessageError("missing (required over a stream)", "Content-Length")
            length = len(data) - body_start
        else:
            length = _delta(length_text, "Content-Length")
        if length > limits.max_body:
            raise SIPMessageError(f"a body of {length} bytes is over {limits.max_body}", reason="oversized",
                                  status=513)
        if body_start + length > len(data):
            raise SIPMessageError(f"{length} bytes, but the message has {len(data) - body_start}", "Content-Length")
    except SIPMessageError as error:
        if request is None:
            error.status = None
        else:
            error.head = _Head(request.method, [(k, v) for k, v in raw if k in _HEAD_NAMES])
            if request.method == "ACK" or not any(k == "Via" for k, _ in error.head.headers) \
                    or not any(k == "CSeq" for k, _ in error.head.headers):
                error.status = None
        raise
    message.headers = [(k, v) for k, v in headers if k != "Content-Length"]
    message.body = bytes(data[body_start:body_start + length])
    return message, body_start + length


def parse_datagram(data: bytes, *, limits: Limits = Limits()) -> Message:
    """The SIP message in one UDP datagram (extra octets past Content-Length ignored)."""
    message, _ = parse_message(data, limits=limits)
    return message


class StreamParser:
    """Frames SIP messages out of a byte stream (TCP) by their Content-Length.

    :meth:`feed` returns the complete messages so far. CRLFs between messages
    (keep-alives, RFC 5626) are skipped. After a :class:`SIPMessageError` the
    stream cannot be re-synchronised: the connection is to be closed (after the
    400, when the error has a status).
    """

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        self._buffer = bytearray()
        self.keepalives = 0

    @property
    def pending(self) -> int:
        """Bytes of a message begun and not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while True:
            while self._buffer[:2] == b"\r\n":
                del self._buffer[:2]
                self.keepalives += 1
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self.limits.max_message:
                    raise SIPMessageError(f"header section over {self.limits.max_message} bytes",
                                          reason="oversized", status=None)
                return messages
            length = self._content_length(bytes(self._buffer[:end]))
            total = end + 4 + length
            if len(self._buffer) < total:
                return messages
            message, used = parse_message(bytes(self._buffer[:total]), stream=True, limits=self.limits)
            del self._buffer[:used]
            messages.append(message)

    def _content_length(self, head: bytes) -> int:
        """The Content-Length a head announces (0 when absent or unreadable: the parse refuses it then)."""
        for line in head.split(b"\r\n")[1:]:
            name, colon, value = line.partition(b":")
            if colon and name.strip().lower() in (b"content-length", b"l"):
                number = parse_int(value.strip().decode("ascii", "replace"), max_digits=10)
                if number is not None and 0 <= number <= self.limits.max_body:
                    return number
                return 0
        return 0


def error_response(error: SIPMessageError, *, to_tag: str | None = None) -> Response | None:
    """The response to a refused request (``error.status``), from what of it could be read; None: drop it."""
    if error.status is None or error.head is None:
        return None
    reason = REASONS.get(error.status, "Bad Request")
    if error.status == 400:
        detail = "".join(c for c in str(error) if c.isascii() and c.isprintable())[:100]
        reason = f"Bad Request ({detail})"
    response = Response(status=error.status, reason=reason)
    for name, value in error.head.headers:
        if name == "To" and to_tag is not None and ";tag=" not in value.replace(" ", "").lower():
            value = f"{value};tag={to_tag}"
        response.headers.append((name, value))
    return response


def request_problem(request: Request, *, schemes: Iterable[str] = ("sip", "sips"),
                    extensions: Iterable[str] = (), body_types: Iterable[str] = ("application/sdp",)
                    ) -> tuple[int, str, list[tuple[str, str]]] | None:
    """What a UAS answers a well-formed request it cannot take, as (status, reason, extra headers); else None.

    416 for a Request-URI scheme not in ``schemes``, 420 (with Unsupported) for
    a ``Require`` option not in ``extensions``, 415 for a body whose type is not
    in ``body_types``, 406 for an ``Accept`` that allows none of them.
    """
    scheme = request.request_uri.scheme
    if scheme not in set(schemes):
        return 416, REASONS[416], [("Warning", f'399 gateway "URI scheme {scheme} is not served"')]
    supported = {tag.lower() for tag in extensions}
    unsupported = [tag.strip() for tag in request.get_all("Require") if tag.strip().lower() not in supported]
    if unsupported and request.method not in ("ACK", "CANCEL"):
        return 420, REASONS[420], [("Unsupported", tag) for tag in unsupported]
    types = {t.lower() for t in body_types}
    if request.body and request.content_type is not None and request.content_type not in types:
        return 415, REASONS[415], [("Accept", ", ".join(sorted(types)))]
    accepts = [value.split(";")[0].strip().lower() for value in request.get_all("Accept")]
    if accepts and request.method in ("INVITE", "OPTIONS") and not any(
            a in types or a in ("*/*", "application/*") for a in accepts):
        return 406, REASONS[406], [("Accept", ", ".join(sorted(types)))]
    return None

