"""Patriot as server: the gateway as a dialler client of Patriot's Desktop API.

One :class:`DesktopLink` per ``[[patriot.desktop]]`` entry keeps a WebSocket connection to
Patriot up with a ``ClientService`` and a backoff retry policy. ``connect`` (an endpoint) may say
where to connect while the URL's host stays the TLS server name and the Host header; the
certificate is trusted as :mod:`gateway.patriot.tls` says.

Each connection is a :class:`DesktopSession`: at once it sends ``authentication-request``
``{requestId, apiKey}``; a ``success: true`` response (with our ``requestId``) logs it in and the
call control of :class:`~gateway.patriot.session.Session` applies on the line of the link's
extension. Refused, answered with an ``authentication-response`` that cannot be read (a field of
the wrong type, text that is not valid Unicode), or unanswered for ``auth_timeout`` seconds, the
connection is closed with 4008 (a failed login, as the bridge closes one) and retried later. Every connection that ends before it was authenticated
(refused key, TLS failure, WebSocket handshake refused) lengthens the next delay as a failed
connection attempt does, so a wrong key or a wrong pin never makes the link spin; a successful
authentication resets the delay. Patriot's Desktop API has no heartbeat: a WebSocket ping every ``ping_interval``
seconds, unanswered (nothing at all received) for ``ping_timeout`` seconds, drops a dead server's
connection, and the link reconnects. Autobahn's handshake, ping and close timers run on the link's
reactor (:class:`~gateway.patriot.session.ReactorTimer`), not txaio's global one, so a
``task.Clock`` drives them in tests.

A Patriot server is a peer like any other: whatever it sends (bad JSON, lone surrogates, NaN,
deep nesting, unknown types, wrong-typed fields, answers to requests never made) is parsed through
:func:`gateway.boundary.load_json`, counted in ``gateway_ignored_messages_total{adapter="patriot"}``
and logged within the connection's budget naming the link and the peer; it never ends the link
by itself. A message over ``max_message_size`` closes the connection (1009) and the link reconnects,
as do more messages (pings included) than ``max_message_burst`` at once or ``max_message_rate`` a
second (4008 "too many messages", counted in ``gateway_ignored_messages_total{reason="rate_limited"}``)
and a server that does not read what it is sent: its frames are no longer read while the
transport's buffer is full, and past ``max_output_buffer`` the connection is dropped
(:mod:`gateway.patriot.session`).

The link's readiness component (``patriot-desktop:<index>``) and the
``gateway_patriot_desktop_up{link}`` gauge are up exactly while the link is authenticated.
"""

from __future__ import annotations

import uuid

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS
from twisted.logger import Logger

from gateway.boundary import MessageRate, budget_factory
from gateway.patriot.config import DesktopConfig
from gateway.patriot.line import Line
from gateway.patriot.messages import (
    AuthenticationRequest,
    AuthenticationResponse,
    PatriotMessage,
    PatriotMessageError,
)
from gateway.linkwatch import LinkWatch, endpoint_peer, url_peer
from gateway.patriot.metrics import PatriotMetrics
from gateway.patriot.session import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    MESSAGE_TOO_BIG,
    IConnection,
    ReactorTimer,
    Session,
    WebSocketConnection,
)
from gateway.patriot.tls import client_tls
from gateway.tlspolicy import DEFAULT as DEFAULT_TLS

log = Logger()

#: the close code for a failed authentication (the key refused, an unreadable or no answer), as the
#: bridge closes a failed login; the gateway stopping closes with CLOSE_NORMAL
CLOSE_AUTH_FAILED = CLOSE_POLICY


def desktop_endpoint(reactor, config: DesktopConfig, ca_certificates=None, tls=DEFAULT_TLS):
    """Where a link connects: ``connect`` or the URL's host and port, with TLS for ``wss://`` (``tls``: the TlsPolicy)."""
    is_secure, host, port, _, _, _ = parse_url(config.url)
    if config.connect is not None:
        endpoint = clientFromString(reactor, str(config.connect))
    else:
        endpoint = HostnameEndpoint(reactor, host, port)
    if not is_secure:
        return endpoint
    trust = client_tls(host, ca_certificates=ca_certificates, fingerprint=config.fingerprint, tls=tls)
    return wrapClientTLS(trust, endpoint, clock=reactor)


class DesktopSession(Session):
    """One connection to Patriot's Desktop API."""

    mode = "desktop"

    def __init__(self, connection: IConnection, link: DesktopLink):
        config = link.config
        super().__init__(connection, metrics=link.metrics, max_phone_length=config.max_phone_length,
                         dial_while_busy=config.dial_while_busy,
                         budget=link.budgets(f"{connection.peer} (desktop link {link.index})"),
                         rate=MessageRate(link.clock, config.max_message_rate, config.max_message_burst))
        self.link = link
        self.request_id = uuid.uuid4().hex
        self.authenticated = False
        self._timer = None

    @property
    def who(self) -> str:
        return f"Patriot desktop link {self.link.index} ({self.connection.peer})"

    def opened(self) -> None:
        self.send(AuthenticationRequest(api_key=self.link.config.api_key.reveal(), request_id=self.request_id))
        self._timer = self.link.clock.callLater(self.link.config.auth_timeout, self._unanswered)

    def _unanswered(self) -> None:
        log.warn("{who}: no authentication-response in {timeout} s; closing", who=self.who,
                 timeout=self.link.config.auth_timeout)
        self.connection.close(CLOSE_AUTH_FAILED, "no authentication-response")

    def closed(self, reason: str) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        super().closed(reason)

    def message_received(self, message: PatriotMessage) -> None:
        if isinstance(message, AuthenticationResponse):
            self._authentication_response(message)
        elif not self.authenticated:
            self.ignore(message, "not authenticated yet", "unauthenticated")
        elif not self.call_control(message):
            self.ignore(message, "not a message Patriot sends to a dialler client")

    def _waiting_for_answer(self) -> bool:
        return self._timer is not None and self._timer.active()

    def _bad_message(self, error: PatriotMessageError) -> None:
        super()._bad_message(error)
        if error.message_type == AuthenticationResponse.TYPE and self._waiting_for_answer():
            self._timer.cancel()
            log.warn("{who}: unreadable authentication-response ({reason}); closing", who=self.who,
                     reason=error.reason[:300])
            self.metrics.logins.labels(self.mode, "failure").inc()
            self.connection.close(CLOSE_AUTH_FAILED, "unreadable authentication-response")

    def _authentication_response(self, response: AuthenticationResponse) -> None:
        if not self._waiting_for_answer():
            self.ignore(response, "no authentication-request is waiting for an answer")
            return
        if response.request_id != self.request_id:
            self.ignore(response, f"it answers request {response.request_id!r}, not ours")
            return
        self._timer.cancel()
        if response.success:
            self.authenticated = True
            self.metrics.logins.labels(self.mode, "success").inc()
            self.link.authenticated(self)
            self.attach(self.link.line)
        else:
            log.warn("{who}: Patriot refused the API key: {error}", who=self.who,
                     error=(response.error or "(no reason given)")[:300])
            self.metrics.logins.labels(self.mode, "failure").inc()
            self.connection.close(CLOSE_AUTH_FAILED, "authentication failed")


class DesktopLink(service.Service):
    """One ``[[patriot.desktop]]`` link, kept up (and authenticated) while the service runs."""

    def __init__(self, index: int, config: DesktopConfig, *, reactor, endpoint, line: Line,
                 metrics: PatriotMetrics, component):
        self.index = index
        self.name = f"patriot-desktop:{index}"
        self.config = config
        self.clock = reactor
        self.line = line
        self.metrics = metrics
        self.component = component
        self.session: DesktopSession | None = None
        #: connections in a row that ended before they were authenticated
        self.rejections = 0
        self._policy = backoffPolicy(config.retry_initial, config.retry_max)
        #: each connection's budget of log lines about ignored messages
        self.budgets = budget_factory(reactor, "patriot", metrics.registry)
        self._up = metrics.desktop_up.labels(str(index))
        self._up.set(0)
        peer = endpoint_peer(config.connect) if config.connect else url_peer(config.url)
        self.watch = LinkWatch(reactor, component, peer=peer, adapter=f"Patriot desktop link {index}")
        self._client = self.watch.client_service(endpoint, _DesktopFactory(self, reactor), retryPolicy=self._retry_delay,
                                                 clock=reactor)

    def _retry_delay(self, attempt: int) -> float:
        delay = self._policy(attempt + self.rejections)
        self.component.set_down(f"not connected to {self.config.url}; next attempt in {delay:.1f} s")
        return delay

    # -- life

    def startService(self):
        super().startService()
        self.component.set_down(f"connecting to {self.config.url}")
        self._client.startService()

    def stopService(self):
        super().stopService()
        if self.session is not None:
            self.session.connection.close(CLOSE_NORMAL, "the gateway is stopping")
        return self._client.stopService()

    # -- from the protocol and the session

    def session_opened(self, connection: IConnection) -> DesktopSession:
        log.info("Patriot desktop link {index}: connected to {url} ({peer})", index=self.index,
                 url=self.config.url, peer=connection.peer)
        self.session = DesktopSession(connection, self)
        self.session.opened()
        return self.session

    def authenticated(self, session: DesktopSession) -> None:
        log.info("{who}: authenticated; extension {extension}", who=session.who, extension=self.config.extension)
        self.rejections = 0
        self._up.set(1)
        self.component.set_up()

    def connection_lost(self, session: DesktopSession | None, reason: str) -> None:
        if session is not None:
            session.closed(reason)
        if session is None or not session.authenticated:
            self.rejections += 1
            log.warn("Patriot desktop link {index}: connection to {url} ended before authentication: {reason}",
                     index=self.index, url=self.config.url, reason=reason)
        else:
            log.warn("Patriot desktop link {index}: connection to {url} lost: {reason}",
                     index=self.index, url=self.config.url, reason=reason)
        if session is self.session:
            self.session = None
        self._up.set(0)
        self.component.set_down(reason)

    def status(self) -> dict:
        return {
            "url": self.config.url,
            "connect": self.config.connect,
            "extension": self.config.extension,
            "up": self.component.up,
            "reason": self.component.reason,
            "rejections": self.rejections,
        }


class _DesktopProtocol(WebSocketClientProtocol):
    session: DesktopSession | None = None
    _close_reason: str | None = None

    def onOpen(self):
        connection = WebSocketConnection(self, max_output=self.factory.link.config.max_output_buffer,
                                         overflow=self._overflow)
        self.session = self.factory.link.session_opened(connection)

    def onMessage(self, payload, isBinary):
        self.session.frame_received(payload, isBinary)

    def onPing(self, payload):
        if self.session is None or self.session.allow():  # pings count toward max_message_rate too
            super().onPing(payload)

    def _overflow(self, unsent: int) -> None:
        if self.session is not None:
            self.session.slow_reader(unsent)

    def onClose(self, wasClean, code, reason):
        if self.session is not None and self.localCloseCode == MESSAGE_TOO_BIG:
            self.session.oversized(f"a message over max_message_size: {self.localCloseReason}")
        if self.closedByMe and self.localCloseCode:
            # Autobahn reports the code of Patriot's reply (1000); why the link closed is ours
            code, reason = self.localCloseCode, (self.localCloseReason or b"").decode("utf-8", "replace")
        self._close_reason = f"closed with {code}: {reason}" if code else reason

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.link.connection_lost(self.session, self._close_reason or reason.getErrorMessage())


class _DesktopFactory(WebSocketClientFactory):
    protocol = _DesktopProtocol

    def __init__(self, link: DesktopLink, reactor):
        super().__init__(link.config.url, reactor=reactor)
        self._batched_timer = ReactorTimer(reactor)
        config = link.config
        size = config.max_message_size
        self.setProtocolOptions(maxMessagePayloadSize=size, maxFramePayloadSize=size, failByDrop=False)
        if config.ping_interval > 0:
            self.setProtocolOptions(autoPingInterval=config.ping_interval, autoPingTimeout=config.ping_timeout)
        self.link = link
