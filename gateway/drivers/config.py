"""Configuration of the PBX side: ``[pbx]``, ``[pbx.sim]`` and ``[optimaccs]``."""

from __future__ import annotations

import ipaddress
import math
import re
import typing
import urllib.parse

import attrs

from gateway.confschema import ConfigError, Secret, ServerEndpoint, check, section


def _is_regex(text: str) -> bool:
    try:
        re.compile(text)
    except re.error:
        return False
    return True


@section
class NumberRule:
    """What the simulated network does when ``match`` (a regular expression,
    matched against the whole dialled number) is dialled."""

    match: str = attrs.field(validator=check(_is_regex, "not a valid regular expression: {value!r}"))
    outcome: typing.Literal["answer", "busy", "no-answer", "failed"] = "answer"
    #: seconds of ringing before the outcome happens
    after: float = attrs.field(default=2.0, validator=check(lambda v: v >= 0, "must not be negative"))
    #: with outcome answer: the party hangs up by itself this many seconds after answering (absent: never)
    hang_up_after: float | None = attrs.field(default=None)

    @hang_up_after.validator
    def _check_hang_up_after(self, attribute, value):
        if value is None:
            return
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(attribute.name, f"must be a positive number of seconds, got {value!r}")
        if self.outcome != "answer":
            raise ConfigError(attribute.name, f"only a party that answers can hang up after answering "
                                              f"(outcome is {self.outcome!r})")


@section
class SimNetworkConfig:
    """The simulated phone network (driver ``sim``)."""

    #: seconds a simulated extension phone rings before it answers by itself
    phone_answer_delay: float = attrs.field(default=1.0, validator=check(lambda v: v >= 0, "must not be negative"))
    #: seconds a dialled number rings before answering, when no rule matches
    ring_time: float = attrs.field(default=2.0, validator=check(lambda v: v >= 0, "must not be negative"))
    #: seconds an unanswered dial rings before it ends with cause no-answer
    no_answer_timeout: float = attrs.field(default=30.0, validator=check(lambda v: v > 0, "must be positive"))
    #: what simulated parties send: a 425 Hz tone, speech-like noise, or silence
    audio: typing.Literal["tone", "noise", "silence"] = "noise"
    #: an 8 kHz mono 16-bit WAV file simulated parties play in a loop instead ("": use audio)
    audio_file: str = ""
    rules: list[NumberRule] = attrs.Factory(list)
    #: seconds between demo inbound calls the network places by itself (0: none)
    inbound_every: float = attrs.field(default=0.0, validator=check(lambda v: v >= 0, "must not be negative"))
    #: the caller id and the DID of those demo calls
    inbound_caller: str = attrs.field(default="5550100", validator=check(bool, "must not be empty"))
    inbound_did: str = attrs.field(default="100", validator=check(bool, "must not be empty"))
    #: seconds a demo caller talks after being answered before hanging up
    inbound_duration: float = attrs.field(default=20.0, validator=check(lambda v: v > 0, "must be positive"))


@section
class PbxConfig:
    #: the driver that places calls to dialled numbers: "sim" or "optimaccs"
    driver: str = "sim"
    sim: SimNetworkConfig = attrs.Factory(SimNetworkConfig)


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _all_networks(values: list) -> bool:
    return all(_is_network(v) for v in values)


def _is_http_url(text: str) -> bool:
    parsed = urllib.parse.urlsplit(text)
    return parsed.scheme in ("http", "https") and bool(parsed.hostname)


_positive = check(lambda v: v > 0, "must be positive, got {value!r}")
_not_negative = check(lambda v: v >= 0, "must not be negative, got {value!r}")


@section
class OptimaccsOutboundConfig:
    """The provider's outbound call API, used by the ``optimaccs`` driver ([pbx] driver, extension devices)."""

    #: the REST API's base URL; the media WebSocket goes to the host of the endpointUrl it returns
    api_url: str = attrs.field(default="https://voice.optimaccs.com",
                               validator=check(_is_http_url, "expected an http:// or https:// URL, got {value!r}"))
    #: the Bearer token (required when the driver is used)
    token: Secret = Secret("")
    #: callerId sent when the call names none ("": the provider's default)
    caller_id: str = ""
    #: seconds the provider lets a call ring before it gives up (the request's timeout)
    ring_timeout: int = attrs.field(default=60, validator=check(lambda v: 1 <= v <= 600, "must be 1-600 seconds, got {value!r}"))
    #: seconds an API request (the whole reply, body included), or opening the media WebSocket, may take
    request_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: how the gateway hangs up: "websocket" (the media WebSocket's hangup, POST /pbx/hangup when it is
    #: not open), "rest" (always POST /pbx/hangup), or "both"
    hangup: typing.Literal["websocket", "rest", "both"] = "websocket"


@section
class OptimaccsConfig:
    """OptimaCCS: the inbound-call WebSocket server and the outbound driver."""

    #: whether the inbound-call server runs (the outbound driver runs when [pbx] or a device names it)
    enabled: bool = True
    #: where the provider's inbound-call WebSocket connects (ssl: gives wss); loopback only by default
    listen: ServerEndpoint = ServerEndpoint("tcp:4143:interface=127.0.0.1")
    #: the most inbound connections (calls) open at once; one more is closed with 1013 (try again later)
    max_calls: int = attrs.field(default=200, validator=check(lambda v: 1 <= v <= 100000,
                                                              "must be 1-100000, got {value!r}"))
    #: the audio format on the wire, both directions: 8 kHz pcm16 (little-endian), ulaw or alaw
    audio: typing.Literal["pcm16", "ulaw", "alaw"] = "pcm16"
    #: seconds to wait for the provider's cdr after the gateway hung up, before closing
    cdr_wait: float = attrs.field(default=10.0, validator=_not_negative)
    #: seconds a connection may stay open without an incoming_call (closed 1008 then)
    setup_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: the largest WebSocket message and frame accepted, in bytes (larger: closed 1009)
    max_message_size: int = attrs.field(
        default=65536, validator=check(lambda v: 1024 <= v <= 16 * 1024 * 1024, "must be 1024-16777216 bytes, got {value!r}"))
    #: seconds the WebSocket opening handshake may take
    handshake_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: seconds between WebSocket pings on a connection (0: none), and how long a pong may take
    ping_interval: float = attrs.field(default=20.0, validator=_not_negative)
    ping_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: a shared secret the provider must send (query parameter token=, or "Authorization: Bearer");
    #: "" with an empty allow_from leaves the listener open (a warning is logged at start)
    secret: Secret = Secret("")
    #: addresses or networks allowed to connect, e.g. ["203.0.113.0/24"] ([]: any)
    allow_from: list[str] = attrs.field(
        factory=list, validator=check(_all_networks, "expected IP addresses or networks, got {value!r}"))
    outbound: OptimaccsOutboundConfig = attrs.Factory(OptimaccsOutboundConfig)
