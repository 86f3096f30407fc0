"""Configuration of the Expertflow SMS channel connector: ``[chat]`` and ``[chat.http]``.

The connector keeps a Socket.IO link to the chat server at ``url`` (reconnecting with an
exponential backoff), calls its REST API at the same base URL, and sends and receives SMS through
the transport plugin named by ``transport`` (``sim`` or ``http``; ``[chat.http]`` configures the
latter). Every documented key is in ``etc/gateway.toml``.
"""

from __future__ import annotations

import urllib.parse

import attrs

from gateway.confschema import Secret, check, section


def _is_http_url(value: str) -> bool:
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/")


def _is_optional_http_url(value: str) -> bool:
    parts = urllib.parse.urlsplit(value)
    return not value or (parts.scheme in ("http", "https") and bool(parts.hostname))


_positive = check(lambda v: v > 0, "must be positive, got {value!r}")
_not_negative = check(lambda v: v >= 0, "must not be negative, got {value!r}")
_not_empty = check(bool, "must not be empty")


@section
class HttpTransportConfig:
    """The ``http`` SMS transport: a JSON POST per outbound SMS; inbound comes through the admin API."""

    #: where outbound SMS are POSTed (required when transport = "http")
    url: str = attrs.field(default="", validator=check(_is_optional_http_url, "expected an http(s) URL, got {value!r}"))
    #: sent as "Authorization: Bearer <token>" when set
    token: Secret = Secret("")
    #: seconds one POST may take
    timeout: float = attrs.field(default=10.0, validator=_positive)
    #: PEM file of the certificates to trust for an https url (empty: the system's trust roots)
    tls_ca_file: str = ""


@section
class ChatConfig:
    #: a [chat] section present is on unless it says enabled = false (the embedded defaults say so:
    #: the connector needs a chat server)
    enabled: bool = True
    #: the chat server's base URL (Socket.IO and REST)
    url: str = attrs.field(
        default="http://127.0.0.1:8081",
        validator=check(_is_http_url, "expected http(s)://host[:port] without a path, got {value!r}"),
    )
    #: the Engine.IO path
    path: str = attrs.field(default="/socket.io", validator=check(lambda v: v.startswith("/"), "must start with '/'"))
    #: PEM file of the certificates to trust for an https url (empty: the system's trust roots)
    tls_ca_file: str = ""
    #: registerConnector: id (the channel name), friendly name and channel
    id: str = attrs.field(default="sms", validator=_not_empty)
    name: str = attrs.field(default="ExpertFlow SMS Connector", validator=_not_empty)
    channel: str = attrs.field(default="sms", validator=_not_empty)
    #: init fields of new conversations: the customer's language and the skill group (MRE queue)
    language: str = "en"
    subject: str = ""
    #: the SMS transport plugin
    transport: str = attrs.field(default="sim", validator=_not_empty)
    #: seconds an emitted event waits for its acknowledgement
    ack_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: bytes: the largest WebSocket message from the chat server (Autobahn refuses a larger one from
    #: its frame header, before buffering it, and the link reconnects), and the most bytes of binary
    #: attachments one Socket.IO packet may carry (a larger packet is dropped)
    max_message_size: int = attrs.field(
        default=1 << 20,
        validator=check(lambda v: 1024 <= v <= 1 << 30, "must be from 1024 to 1073741824 bytes, got {value!r}"),
    )
    #: the most binary attachments one Socket.IO packet may announce (more: the packet is dropped)
    max_attachments: int = attrs.field(default=10, validator=_not_negative)
    #: first and longest delay (seconds) between connection attempts
    reconnect_initial: float = attrs.field(default=1.0, validator=_positive)
    reconnect_max: float = attrs.field(default=30.0, validator=_positive)
    #: REST: seconds per request, and attempts of a request answered 500/503 (or not answered)
    request_timeout: float = attrs.field(default=10.0, validator=_positive)
    request_attempts: int = attrs.field(default=3, validator=check(lambda v: v >= 1, "must be at least 1"))
    #: first and longest delay (seconds) between two deliveries of an SMS not yet delivered
    retry_initial: float = attrs.field(default=1.0, validator=_positive)
    retry_max: float = attrs.field(default=60.0, validator=_positive)
    #: seconds without a message after which the gateway ends a conversation (0: never)
    idle_timeout: float = attrs.field(default=0.0, validator=_not_negative)
    #: SMS sent to the customer when the chat server reports noAgentAvailable ("": none)
    no_agent_reply: str = ""
    #: where fetched pdf transcripts are saved ("": <state_dir>/transcripts)
    transcript_dir: str = ""
    http: HttpTransportConfig = attrs.Factory(HttpTransportConfig)

    def __attrs_post_init__(self):
        if self.transport == "http" and not self.http.url:
            raise ValueError("transport = 'http' needs [chat.http] url")
