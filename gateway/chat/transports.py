"""The bundled SMS transports (plugins ``sim`` and ``http`` in ``plugins/sms_transports.py``).

``sim`` stands in for a phone network: it keeps the SMS it sends (the latest :data:`SIM_KEEP`)
and shows them through the admin API; it can be switched down to see SMS wait and be retried::

    GET  /api/sms/sim/sent            -> {"sent": [{"id", "to", "text", "kind", "conversationId", "sentAt"}]}
    POST /api/sms/sim/state {"down": true|false}

``http`` is a generic webhook: each SMS is POSTed as JSON ``{"id", "to", "text", "kind",
"conversationId"}`` to ``[chat.http] url`` (with ``Authorization: Bearer <token>`` when a token is
set). A 2xx answer means sent; 400, 413 and 422 mean refused for good (the SMS is marked failed);
anything else, or no answer within the timeout, is tried again later with the same ``id``.

Inbound SMS reach the gateway through ``POST /api/sms/inbound`` for both (see docs/chat.md).
"""

from __future__ import annotations

import collections

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.admin.api import ApiError
from gateway.chat.interfaces import ISmsTransport, OutboundSms, SmsRejected
from gateway.chat.web import HttpClient, load_trust
from gateway.store.records import timestamp_from_seconds

__all__ = ["HttpTransport", "SimTransport", "TransportDown", "build_http", "build_sim"]

log = Logger()

#: how many sent SMS the sim transport shows
SIM_KEEP = 1000
#: answers of the http transport's webhook that refuse an SMS for good
REJECTING_STATUSES = frozenset({400, 413, 422})


class TransportDown(Exception):
    """The transport cannot send now (the SMS is tried again later)."""


def _sms_json(sms: OutboundSms) -> dict:
    return {"id": sms.id, "to": sms.to, "text": sms.text, "kind": sms.kind, "conversationId": sms.conversation_id}


@implementer(ISmsTransport)
class SimTransport:
    """Keeps what it sends; ``down`` makes every send fail."""

    name = "sim"

    def __init__(self, clock):
        self._clock = clock
        self.sent: collections.deque = collections.deque(maxlen=SIM_KEEP)
        self.down = False

    def send(self, sms: OutboundSms) -> defer.Deferred:
        if self.down:
            return defer.fail(TransportDown("the sim transport is switched down"))
        self.sent.append({**_sms_json(sms), "sentAt": timestamp_from_seconds(self._clock.seconds())})
        log.info("sim transport sent SMS {id} to {to}", id=sms.id, to=sms.to)
        return defer.succeed(None)

    def status(self) -> dict:
        return {"name": self.name, "sent": len(self.sent), "down": self.down}

    def stop(self) -> None:
        """Nothing to release."""

    def add_routes(self, api) -> None:
        api.route("GET", "/api/sms/sim/sent", lambda request: {"sent": list(self.sent)})
        api.route("POST", "/api/sms/sim/state", self._set_state)

    def _set_state(self, request) -> dict:
        down = request.json(known=("down",)).get("down")
        if not isinstance(down, bool):
            raise ApiError(400, "down must be true or false")
        self.down = down
        log.info("sim transport switched {state}", state="down" if down else "up")
        return self.status()


@implementer(ISmsTransport)
class HttpTransport:
    """POSTs each SMS to a webhook.

    :param http: a :class:`~gateway.chat.web.HttpClient` (closed at :meth:`stop`).
    """

    name = "http"

    def __init__(self, http, url: str, *, token: str = "", timeout: float = 10.0):
        self._http = http
        self._url = url
        self._headers = {"Authorization": [f"Bearer {token}"]} if token else {}
        self._timeout = timeout
        self.sent = 0

    def send(self, sms: OutboundSms) -> defer.Deferred:
        d = self._http.request("POST", self._url, timeout=self._timeout, json=_sms_json(sms), headers=self._headers)
        return d.addCallback(lambda answer: self._answered(sms, *answer))

    def _answered(self, sms: OutboundSms, status: int, body: bytes) -> None:
        excerpt = body[:200].decode("utf-8", "replace").strip()
        if 200 <= status < 300:
            self.sent += 1
            log.info("SMS {id} to {to} taken by {url}", id=sms.id, to=sms.to, url=self._url)
            return
        if status in REJECTING_STATUSES:
            raise SmsRejected(f"{self._url} refused it: HTTP {status} {excerpt}")
        raise TransportDown(f"{self._url} answered HTTP {status} {excerpt}")

    def status(self) -> dict:
        return {"name": self.name, "url": self._url, "sent": self.sent}

    def stop(self):
        return self._http.close()


def build_sim(ctx, receive) -> SimTransport:
    transport = SimTransport(ctx.reactor)
    if ctx.api is not None:
        transport.add_routes(ctx.api)
    return transport


def build_http(ctx, receive) -> HttpTransport:
    settings = ctx.config.chat.http
    client = HttpClient.pooled(ctx.reactor, load_trust(settings.tls_ca_file, "chat.http.tls_ca_file"), ctx.tls)
    return HttpTransport(client, settings.url, token=settings.token.reveal(), timeout=settings.timeout)
