"""Configuration of the OpenMethods HIS Bridge Client: ``[cti]``, ``[[cti.agents]]`` and ``[cti.names]``.

The gateway connects to the processor bridge (``connect``, a ``tcp:`` or ``tls:`` endpoint) and keeps
reconnecting with an exponential backoff. ``[cti.names]`` overrides the message names and status values
the vendor does not publish (see :class:`gateway.cti.names.CtiNames` for every key and its default).
"""

from __future__ import annotations

import attrs

from gateway.confschema import ClientEndpoint, check, section
from gateway.cti.framing import ABSOLUTE_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE
from gateway.cti.names import CtiNames


@section
class CtiAgent:
    """Binds the bridge's agent (as named in session.query.init) to an extension."""

    agent: str = attrs.field(validator=check(bool, "must not be empty"))
    extension: str


def _names(value):
    """``[cti.names]`` (a table of name overrides) as :class:`CtiNames`."""
    return value if isinstance(value, CtiNames) else CtiNames.from_mapping(value)


def _unique_agents(instance, attribute, agents):
    seen = set()
    for i, agent in enumerate(agents):
        if agent.agent in seen:
            raise ValueError(f"agents[{i}].agent: agent {agent.agent!r} is configured twice")
        seen.add(agent.agent)


def _tls_trust_needs_tls(instance, attribute, value):
    if value and not instance.connect.startswith("tls:"):
        raise ValueError(f"{attribute.name} is set but connect {instance.connect!r} is not a tls: endpoint")


@section
class CtiConfig:
    #: a [cti] section present is on unless it says enabled = false (the embedded defaults say so:
    #: the adapter needs a processor bridge to connect to)
    enabled: bool = True
    #: the processor bridge: "tcp:host=H:port=P" or "tls:H:P" (TLS: see tls_ca_file)
    connect: ClientEndpoint = ClientEndpoint("tcp:host=127.0.0.1:port=9500")
    #: PEM file of the certificates to trust for a tls: connect (empty: the system's trust roots)
    tls_ca_file: str = attrs.field(default="", validator=_tls_trust_needs_tls)
    #: the processor's name; its control destination is "<processor>.CONTROL"
    processor: str = attrs.field(default="PROC", validator=check(bool, "must not be empty"))
    #: byte order of the 4-byte length before each frame
    byte_order: str = attrs.field(
        default="big", validator=check(lambda v: v in ("big", "little"), "expected 'big' or 'little', got {value!r}")
    )
    #: frames longer than this (bytes) are skipped and logged; the link carries on
    max_frame_size: int = attrs.field(
        default=DEFAULT_MAX_FRAME_SIZE,
        validator=check(
            lambda v: 0 < v <= ABSOLUTE_MAX_FRAME_SIZE,
            f"must be between 1 and {ABSOLUTE_MAX_FRAME_SIZE}, got {{value!r}}",
        ),
    )
    #: first and longest delay (seconds) between reconnection attempts
    reconnect_initial: float = attrs.field(default=1.0, validator=check(lambda v: v > 0, "must be positive"))
    reconnect_max: float = attrs.field(default=30.0, validator=check(lambda v: v > 0, "must be positive"))
    #: readiness components (shell patterns) of the telephony side; while one is down the control
    #: status is DEGRADED
    telephony: list[str] = attrs.Factory(lambda: ["listener:optimaccs", "optimaccs*"])
    #: seconds between two looks at the telephony side's readiness
    health_interval: float = attrs.field(default=1.0, validator=check(lambda v: v > 0, "must be positive"))
    agents: list[CtiAgent] = attrs.field(factory=list, validator=_unique_agents)
    names: dict[str, str] = attrs.field(factory=CtiNames, converter=_names)

    def agent(self, name: str) -> CtiAgent | None:
        return next((agent for agent in self.agents if agent.agent == name), None)

    def extension_references(self):
        if self.enabled:
            for i, agent in enumerate(self.agents):
                yield f"agents[{i}].extension", agent.extension
