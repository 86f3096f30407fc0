"""Configuration of the OpenMethods HIS Bridge Client: ``[cti]``."""

from __future__ import annotations

import attrs

from gateway.confschema import ClientEndpoint, check, section


@section
class CtiAgent:
    """Binds the bridge's agent (as named in session.query.init) to an extension."""

    agent: str = attrs.field(validator=check(bool, "must not be empty"))
    extension: str


@section
class CtiConfig:
    enabled: bool = True
    connect: ClientEndpoint = ClientEndpoint("tcp:host=127.0.0.1:port=9500")
    agents: list[CtiAgent] = attrs.Factory(list)

    def extension_references(self):
        if self.enabled:
            for i, agent in enumerate(self.agents):
                yield f"agents[{i}].extension", agent.extension
