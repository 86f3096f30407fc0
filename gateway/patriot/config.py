"""Configuration of both Patriot modes: ``[patriot.bridge]`` and ``[[patriot.desktop]]``.

Every key is documented in the Patriot part of ``etc/gateway.toml`` and in ``docs/patriot.md``.
"""

from __future__ import annotations

import re
import typing

import attrs
from autobahn.websocket.util import parse_url

from gateway.confschema import ClientEndpoint, ConfigError, Secret, ServerEndpoint, check, section
from gateway.patriot import hashpw
from gateway.patriot.messages import DEFAULT_MAX_PHONE_LENGTH

#: what a dial request does while the user's extension already has a live call
DialWhileBusy = typing.Literal["refuse", "replace"]

_FINGERPRINT = re.compile(r"(?:[0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}\Z")  # \Z: $ also matches before a final newline

_positive = check(lambda v: v > 0, "must be positive, got {value!r}")
_not_negative = check(lambda v: v >= 0, "must not be negative, got {value!r}")
_phone_length = check(lambda v: 1 <= v <= 256, "must be between 1 and 256, got {value!r}")
_message_size = check(lambda v: 256 <= v <= 16 * 1024 * 1024, "must be between 256 and 16777216 bytes, got {value!r}")
_output_buffer = check(lambda v: 65536 <= v <= 256 * 1024 * 1024,
                       "must be between 65536 and 268435456 bytes, got {value!r}")


def _valid_password(instance, attribute, value: Secret):
    if not value:
        raise ConfigError(attribute.name, "must not be empty")
    if hashpw.is_hash(value.reveal()):
        try:
            hashpw.parse_hash(value.reveal())
        except ValueError as e:
            raise ConfigError(attribute.name, str(e)) from None


@section
class BridgeUser:
    """One Patriot login: the ``init-request`` credentials and the operator's extension."""

    username: str = attrs.field(validator=check(bool, "must not be empty"))
    #: the plain password, or a hash from ``python -m gateway.patriot.hashpw``
    password: Secret = attrs.field(validator=_valid_password)
    extension: str


def _unique_usernames(instance, attribute, users):
    seen = set()
    for i, user in enumerate(users):
        if user.username in seen:
            raise ConfigError(f"users[{i}].username", f"user {user.username!r} is configured twice")
        seen.add(user.username)


def _path(instance, attribute, value):
    if not value.startswith("/"):
        raise ConfigError(attribute.name, f"must start with '/', got {value!r}")


@section
class BridgeConfig:
    """Patriot as client: the gateway is the Dialler Bridge server."""

    enabled: bool = True
    listen: ServerEndpoint = ServerEndpoint("tcp:8765:interface=127.0.0.1")
    path: str = attrs.field(default="/dialler", validator=_path)
    #: the keys of the init-request payload holding the user name and the password
    username_field: str = attrs.field(default="userName", validator=check(bool, "must not be empty"))
    password_field: str = attrs.field(default="password", validator=check(bool, "must not be empty"))
    #: seconds a connection may stay silent (Patriot sends a heartbeat every 5 s) before it is closed
    heartbeat_timeout: float = attrs.field(default=15.0, validator=_positive)
    #: seconds a connection may stay open without a successful init-request (heartbeats do not
    #: extend it) before it is closed with 4008
    init_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: the most connections without a successful init-request at once, in all and per source
    #: address (an IPv6 address by its /64); one more handshake is refused with HTTP 503
    max_unauthenticated: int = attrs.field(default=100, validator=_positive)
    max_unauthenticated_per_address: int = attrs.field(default=10, validator=_positive)
    #: failed init requests from one address before its connection is closed and the address refused
    max_init_failures: int = attrs.field(default=5, validator=_positive)
    #: seconds an address is refused after max_init_failures (failures older than this are forgotten)
    block_time: float = attrs.field(default=300.0, validator=_positive)
    #: the most source addresses whose failures are remembered at once (the oldest is forgotten first)
    max_tracked_addresses: int = attrs.field(default=10000, validator=_positive)
    #: the largest WebSocket message accepted (bytes); a larger one closes that connection with 1009
    max_message_size: int = attrs.field(default=65536, validator=_message_size)
    #: messages (WebSocket pings included) a connection may send a second, and at once; the first
    #: one past them closes it with 4008 "too many messages"
    max_message_rate: float = attrs.field(default=20.0, validator=_positive)
    max_message_burst: int = attrs.field(default=50, validator=_positive)
    #: bytes of output queued for a peer that does not read, on top of the transport's full write
    #: buffer (whose reading is paused meanwhile), before its connection is dropped
    max_output_buffer: int = attrs.field(default=1024 * 1024, validator=_output_buffer)
    #: the longest phoneNo a dial-request may carry
    max_phone_length: int = attrs.field(default=DEFAULT_MAX_PHONE_LENGTH, validator=_phone_length)
    #: a dial-request while the user has a live call: "refuse" it (a call-status-update tells the
    #: current call) or "replace" the live call (hang it up, then dial)
    dial_while_busy: DialWhileBusy = "refuse"
    users: list[BridgeUser] = attrs.field(factory=list, validator=_unique_usernames)


def _ws_url(instance, attribute, value):
    try:
        parse_url(value)
    except ValueError as e:
        raise ConfigError(attribute.name, f"expected a ws:// or wss:// URL, got {value!r}: {e}") from None


def _tls_only(instance, attribute, value):
    if value and not instance.url.startswith("wss:"):
        raise ConfigError(attribute.name, f"is set but url {instance.url!r} is not a wss:// URL")


def _fingerprint(instance, attribute, value):
    if value and not _FINGERPRINT.match(value):
        raise ConfigError(attribute.name, f"expected a SHA-256 fingerprint (64 hex digits, ':' allowed), got {value!r}")
    _tls_only(instance, attribute, value)


def _connect(instance, attribute, value):
    if value is not None and not value.startswith(("tcp:", "unix:")):
        raise ConfigError(attribute.name, f"expected a tcp: or unix: endpoint (TLS comes from the URL), got {value!r}")


@section
class DesktopConfig:
    """Patriot as server: the gateway connects to Patriot's Desktop API."""

    url: str = attrs.field(default="wss://desktop-client-api.patriotsystems.com:9009/ws/dialler/v1", validator=_ws_url)
    #: where to connect instead of the URL's host and port; the URL's host stays the TLS server
    #: name and the Host header
    connect: ClientEndpoint | None = attrs.field(default=None, validator=_connect)
    #: PEM file of certificates to trust (Patriot's self-signed certificate itself will do)
    ca: str = attrs.field(default="", validator=_tls_only)
    #: SHA-256 fingerprint the server's certificate must have
    fingerprint: str = attrs.field(default="", validator=_fingerprint)
    api_key: Secret = attrs.field(validator=check(bool, "must not be empty"))
    extension: str
    #: seconds to wait for the authentication-response before closing and retrying
    auth_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: first and longest delay (seconds) between connection attempts
    retry_initial: float = attrs.field(default=1.0, validator=_positive)
    retry_max: float = attrs.field(default=60.0, validator=_positive)
    #: seconds between WebSocket pings (0: none)
    ping_interval: float = attrs.field(default=10.0, validator=_not_negative)
    #: seconds a ping may go unanswered (nothing at all received) before the link is dropped
    ping_timeout: float = attrs.field(default=10.0, validator=_positive)
    max_message_size: int = attrs.field(default=65536, validator=_message_size)
    max_message_rate: float = attrs.field(default=20.0, validator=_positive)
    max_message_burst: int = attrs.field(default=50, validator=_positive)
    max_output_buffer: int = attrs.field(default=1024 * 1024, validator=_output_buffer)
    max_phone_length: int = attrs.field(default=DEFAULT_MAX_PHONE_LENGTH, validator=_phone_length)
    dial_while_busy: DialWhileBusy = "refuse"


@section
class PatriotConfig:
    bridge: BridgeConfig | None = None
    desktop: list[DesktopConfig] = attrs.Factory(list)

    def extension_references(self):
        if self.bridge is not None and self.bridge.enabled:
            for i, user in enumerate(self.bridge.users):
                yield f"bridge.users[{i}].extension", user.extension
        for i, link in enumerate(self.desktop):
            yield f"desktop[{i}].extension", link.extension
