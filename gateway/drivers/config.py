"""Configuration of the PBX side: ``[pbx]``, ``[pbx.sim]`` and ``[optimaccs]``."""

from __future__ import annotations

import re
import typing

import attrs

from gateway.confschema import ServerEndpoint, check, section


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


@section
class OptimaccsConfig:
    """OptimaCCS: the inbound-call WebSocket server and the outbound driver."""

    enabled: bool = True
    #: where the provider's inbound-call WebSocket connects (ssl: gives wss)
    listen: ServerEndpoint = ServerEndpoint("tcp:4143")
