"""Configuration of both Patriot modes: ``[patriot.bridge]`` and ``[[patriot.desktop]]``."""

from __future__ import annotations

import attrs

from gateway.confschema import ClientEndpoint, Secret, ServerEndpoint, check, section


@section
class BridgeUser:
    username: str = attrs.field(validator=check(bool, "must not be empty"))
    password: Secret
    extension: str


@section
class BridgeConfig:
    """Patriot as client: the gateway is the Dialler Bridge server."""

    enabled: bool = True
    listen: ServerEndpoint = ServerEndpoint("tcp:8765:interface=127.0.0.1")
    path: str = "/dialler"
    users: list[BridgeUser] = attrs.Factory(list)


@section
class DesktopConfig:
    """Patriot as server: the gateway connects to Patriot's Desktop API."""

    url: str = "wss://desktop-client-api.patriotsystems.com:9009/ws/dialler/v1"
    connect: ClientEndpoint | None = None
    api_key: Secret
    extension: str


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
