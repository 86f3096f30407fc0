"""Configuration of the ``sip`` driver: ``[sip]`` and its ``[[sip.trunks]]``.

Absent (the default), the gateway has no SIP socket. Present, the ``sip``
driver is built and started: it listens on ``listen``, takes INVITEs from the
trunks' hosts only, registers where ``register = true``, and places calls for
``device = "sip:<trunk>:<number>"`` extensions and, with ``[pbx] driver =
"sip"``, for dialled numbers (through the first trunk, or ``<trunk>:<number>``).
"""

from __future__ import annotations

import ipaddress
import re
import typing

import attrs

from gateway.confschema import ConfigError, Secret, check, section

__all__ = ["SipConfig", "SipTrunk", "parse_proxy", "parse_rtp_ports", "split_device"]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}\Z")
#: what a number dialled through a trunk may hold (the user part of the Request-URI)
NUMBER = re.compile(r"[A-Za-z0-9+*#._-]{1,64}\Z")


def parse_proxy(text: str) -> tuple[str, str, int]:
    """``udp:10.0.0.5:5060`` (the port optional, 5060) → ``("udp", "10.0.0.5", 5060)``.

    :raises ValueError: anything else, naming what is wrong; ``tcp:`` is refused (requests to a trunk
        go over UDP only so far).
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0].lower() not in ("udp", "tcp"):
        raise ValueError(f"expected udp:<host>[:<port>], got {text!r}")
    if parts[0].lower() == "tcp":
        raise ValueError(f"trunks are reached over UDP only (TCP and TLS toward a trunk are not supported yet), "
                         f"got {text!r}")
    host = parts[1]
    if not _HOST.match(host):
        raise ValueError(f"expected a host name or IPv4 address in {text!r}")
    port = 5060
    if len(parts) == 3:
        if not parts[2].isdigit() or not 1 <= int(parts[2]) <= 65535:
            raise ValueError(f"expected a port from 1 to 65535 in {text!r}")
        port = int(parts[2])
    return parts[0].lower(), host, port


def parse_rtp_ports(text: str) -> tuple[int, int]:
    """``10000-20000`` → ``(10000, 20000)``: at least two ports from 1024 to 65535 (RTP even, RTCP the next)."""
    match = re.fullmatch(r"(\d{1,5})-(\d{1,5})", text)
    if match is None:
        raise ValueError(f"expected <low>-<high>, e.g. \"10000-20000\", got {text!r}")
    low, high = int(match[1]), int(match[2])
    if not 1024 <= low < high <= 65535:
        raise ValueError(f"expected 1024 <= low < high <= 65535, got {text!r}")
    if (high - low) < 1 or (low + (low & 1) + 1) > high:
        raise ValueError(f"the range {text!r} holds no even/odd port pair (RTP and RTCP)")
    return low, high


def split_device(address: str) -> tuple[str | None, str]:
    """A device's or a dialled address for the sip driver: ``<trunk>:<number>`` → (trunk, number);
    a bare ``<number>`` → (None, number)."""
    trunk, sep, number = address.partition(":")
    return (trunk, number) if sep else (None, address)


def _check_listen(value: str) -> bool:
    from gateway.sip.transport import parse_listen

    try:
        parse_listen(value)
    except ValueError:
        return False
    return True


def _check_rtp_ports(attribute: typing.Any, value: str) -> None:
    try:
        parse_rtp_ports(value)
    except ValueError as error:
        raise ConfigError(attribute.name, str(error)) from None


def _check_public(value: str) -> bool:
    if not value:
        return True
    try:
        return ipaddress.ip_address(value).version == 4
    except ValueError:
        return False


@section
class SipTrunk:
    """One SIP trunk: where its INVITEs come from and go to, and whether to register there."""

    name: str = attrs.field(validator=check(_NAME.match, "expected 1-64 letters, digits or _.-, got {value!r}"))
    #: the trunk's SIP address: udp:<host>[:<port>]; its host (resolved once at start) is also the only
    #: source address INVITEs are taken from for this trunk
    proxy: str
    #: keep a registration at the proxy (REGISTER with digest, refreshed before expiry, backoff on failure)
    register: bool = False
    #: the digest user name (and the user part of the registered address)
    username: str = ""
    #: the digest password: a secret, never logged nor shown
    password: Secret | None = None
    #: the domain of the registered address and From (empty: the proxy's host)
    realm: str = ""
    #: seconds asked for each registration (60 to 86400)
    expires: int = attrs.field(
        default=3600, validator=check(lambda v: 60 <= v <= 86400, "must be between 60 and 86400 seconds, got {value!r}"))

    def __attrs_post_init__(self) -> None:
        try:
            parse_proxy(self.proxy)
        except ValueError as error:
            raise ConfigError("proxy", str(error)) from None
        if self.register and not self.username:
            raise ConfigError("username", "must be set when register = true")
        if self.username and not self.password:
            raise ConfigError("password", "must be set when username is")

    @property
    def address(self) -> tuple[str, int]:
        _, host, port = parse_proxy(self.proxy)
        return host, port


@section
class SipConfig:
    """The ``sip`` driver (docs/sip.md)."""

    #: the SIP socket: udp:<port>[:interface=<address>] or tcp:...
    listen: str = attrs.field(
        default="udp:5060:interface=127.0.0.1",
        validator=check(_check_listen, "expected udp|tcp:<port>[:interface=<address>], got {value!r}"))
    #: the UDP ports of call legs: each leg takes an even port for RTP and the next for RTCP
    rtp_ports: str = attrs.field(default="10000-20000", validator=lambda self, attribute, value: _check_rtp_ports(
        attribute, value))
    #: seconds without an RTP packet after which a call ends with cause media_timeout (0: never)
    media_timeout: float = attrs.field(
        default=30.0, validator=check(lambda v: v == 0 or 1 <= v <= 3600,
                                      "must be 0 (off) or between 1 and 3600 seconds, got {value!r}"))
    #: the IPv4 address put in SDP and Contact (empty: the listen interface, 127.0.0.1 for 0.0.0.0);
    #: behind a NAT, the public address (docs/sip.md, "NAT")
    public_address: str = attrs.field(default="", validator=check(_check_public, "expected an IPv4 address, "
                                                                               "got {value!r}"))
    trunks: list[SipTrunk] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        seen = set()
        for index, trunk in enumerate(self.trunks):
            if trunk.name in seen:
                raise ConfigError(f"trunks[{index}].name", f"duplicate trunk name {trunk.name!r}")
            seen.add(trunk.name)

    def trunk(self, name: str) -> SipTrunk | None:
        return next((trunk for trunk in self.trunks if trunk.name == name), None)

    def check_device(self, address: str) -> str | None:
        """The problem with a ``sip:`` device address (``<trunk>:<number>``), or None."""
        trunk, number = split_device(address)
        if trunk is None:
            return f"expected sip:<trunk>:<number>, got {'sip:' + address!r}"
        if self.trunk(trunk) is None:
            known = ", ".join(t.name for t in self.trunks) or "none"
            return f"no [[sip.trunks]] named {trunk!r} (known: {known})"
        if not NUMBER.match(number):
            return f"expected a number of 1-64 characters 0-9 A-Z a-z + * # . _ -, got {number!r}"
        return None
