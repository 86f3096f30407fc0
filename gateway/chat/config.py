"""Configuration of the Expertflow SMS channel connector: ``[chat]``."""

from __future__ import annotations

from gateway.confschema import section


@section
class ChatConfig:
    enabled: bool = True
    url: str = "http://127.0.0.1:8081"
