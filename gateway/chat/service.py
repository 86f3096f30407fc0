"""The ``[chat]`` adapter as a service: the Expertflow SMS channel connector.

:func:`make_service` (the ``chat`` adapter plugin's factory, ``plugins/adapters.py``) builds the REST client, the SMS
transport plugin named by ``[chat] transport``, the :class:`~gateway.chat.connector.Connector`
and its Socket.IO link (a ``ClientService`` retrying with an exponential backoff from
``reconnect_initial`` doubling up to ``reconnect_max``), registers the readiness component
``chat`` (up while registered with the chat server), the metrics, the ``/api/status`` entry
``chat`` and the admin routes of :mod:`gateway.chat.admin`. Packets the link ignores are counted
in ``gateway_ignored_messages_total{adapter="chat",reason}``.

At start the pending SMS and open conversations are taken from the store; at stop the deliveries
under way are cancelled (what is not delivered stays stored), then the link and HTTP clients close.

In cluster mode (``ctx.cluster``) the chat link is a singleton link, held by one node at a time:
see :class:`ClusterChatService`.
"""

from __future__ import annotations

import functools
import pathlib
import urllib.parse
import uuid

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task, threads
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger

from gateway.boundary import budget_factory
from gateway.chat.admin import Transcripts, add_routes
from gateway.chat.config import ChatConfig
from gateway.chat.connector import Connector
from gateway.chat.conversations import Conversations
from gateway.chat.interfaces import ISmsTransportFactory
from gateway.chat.metrics import ChatMetrics
from gateway.chat.rest import ChatRest
from gateway.chat.socketio import SocketIOClient
from gateway.chat.web import HttpClient, client_tls, load_trust
from gateway.cluster.singleton import SingletonLink
from gateway.confschema import ConfigError
from gateway.linkwatch import LinkWatch, url_peer
from gateway.pluginload import find_plugin, plugins

__all__ = ["ChatService", "ClusterChatService", "make_service"]

log = Logger()

#: seconds the TCP connection to the chat server may take
CONNECT_TIMEOUT = 10


def _new_id() -> str:
    return str(uuid.uuid4())


def _in_thread(reactor, function, *args):
    """Run ``function(*args)`` in the reactor's thread pool: a Deferred of its result."""
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)


def _retry_policy(initial: float, longest: float):
    """A doubling delay from ``initial`` up to ``longest`` seconds (with up to 1 s of jitter)."""
    return backoffPolicy(initialDelay=initial, maxDelay=longest, factor=2.0)


class ChatService(service.Service):
    """Starts the connector, then (once it has taken its state from the store) its link; stops them in the other order.

    The link waits for the store so that the first registration joins the open conversations
    again and a number's first SMS finds its stored conversation, instead of opening another.
    """

    name = "chat"

    def __init__(self, connector: Connector, link: SocketIOClient, closers):
        self.connector = connector
        self.link = link
        self._closers = closers

    def startService(self):
        super().startService()
        loaded = self.connector.start()
        loaded.addErrback(
            lambda failure: log.failure("the chat connector could not take its pending SMS from the store", failure)
        )
        loaded.addCallback(self._connect)

    def _connect(self, _) -> None:
        if self.running:  # not stopped while the store was read
            self.link.startService()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        yield self.connector.stop()
        if self.link.running:
            yield self.link.stopService()
        for close in self._closers:
            yield defer.maybeDeferred(close)


#: seconds between two looks, by the chat link's holder, for the SMS other nodes stored (cluster mode)
POLL_INTERVAL = 1.0


class ClusterChatService(service.Service):
    """``[chat]`` in cluster mode: the chat link is a singleton link (lease ``chat``).

    The node holding the lease runs the connector and its link: it takes the open conversations and
    the pending SMS from the shared store when it takes over, then looks for SMS other nodes stored
    every :data:`POLL_INTERVAL` s, and delivers every SMS of the cluster in each number's order. The
    other nodes stand by: an SMS reaching one of them (the transport, the admin API) is stored
    pending, for the holder. When the holder loses its lease the link is closed at once and the
    deliveries under way are cancelled (what is not delivered stays pending); on drain or stop the
    link is closed before the lease is released.
    """

    name = "chat"

    def __init__(self, cluster, connector: Connector, link: SocketIOClient, closers, *, clock, component,
                 metrics=None, poll_interval: float = POLL_INTERVAL):
        self.connector = connector
        self.link = link
        self._closers = closers
        self._clock = clock
        self._poll_interval = poll_interval
        self._poll: task.LoopingCall | None = None
        self.singleton = SingletonLink(cluster, "chat", link, component=component, on_acquired=self._take_over,
                                       on_released=self._hand_over, metrics=metrics)

    def startService(self):
        super().startService()
        self.connector.stand_by()
        self.singleton.startService()

    def _take_over(self, token: int) -> defer.Deferred:
        d = self.connector.take_over()
        d.addErrback(
            lambda failure: log.failure("the chat connector could not take its pending SMS from the store", failure)
        )

        def polling(_):
            self._poll = task.LoopingCall(self._look)
            self._poll.clock = self._clock
            self._poll.start(self._poll_interval, now=False)

        return d.addCallback(polling)

    def _look(self) -> defer.Deferred:
        return self.connector.poll_pending().addErrback(
            lambda failure: log.warn("chat: could not look for pending SMS in the store: {error}",
                                     error=failure.getErrorMessage())
        )

    def _hand_over(self) -> defer.Deferred:
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        return self.connector.stop()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        yield self.singleton.stopService()
        yield self.connector.stop()
        for close in self._closers:
            yield defer.maybeDeferred(close)


def _transport_factory(name: str):
    factory = find_plugin(ISmsTransportFactory, name)
    if factory is None:
        known = ", ".join(sorted(p.name for p in plugins(ISmsTransportFactory)))
        raise ConfigError("chat.transport", f"no SMS transport plugin named {name!r} (known: {known})")
    return factory


def _link(ctx, config, connector) -> SocketIOClient:
    parts = urllib.parse.urlsplit(config.url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    endpoint = HostnameEndpoint(ctx.reactor, parts.hostname.encode("idna"), port, timeout=CONNECT_TIMEOUT)
    tls = client_tls(parts.hostname, load_trust(config.tls_ca_file, "chat.tls_ca_file"), ctx.tls) if secure else None
    # The connector's readiness component (registered by make_service) says why the link is down.
    watch = LinkWatch(ctx.reactor, ctx.readiness.components["chat"], endpoint, peer=url_peer(config.url),
                      adapter="chat", retry_policy=_retry_policy(config.reconnect_initial, config.reconnect_max))
    return SocketIOClient(
        ctx.reactor,
        watch.endpoint,
        config.url,
        connector,
        path=config.path,
        ack_timeout=config.ack_timeout,
        retry_policy=watch.retry_policy,
        tls=tls,
        max_message_size=config.max_message_size,
        max_attachments=config.max_attachments,
        budget=budget_factory(ctx.reactor, "chat", ctx.metrics),
    )


def _claims(ctx):
    """Cluster mode on PostgreSQL: the store's outbox consumers (``PostgresStore.outbox``), so that
    SMS are claimed per number with ``SKIP LOCKED`` across nodes; None on another store."""
    from gateway.store.postgres import PostgresStore

    backend = getattr(ctx.store, "backend", ctx.store)
    return backend.outbox if isinstance(backend, PostgresStore) else None


def make_service(ctx, config: ChatConfig | None = None) -> ChatService:
    """The ``[chat]`` adapter for its validated section ``config`` (by default ``ctx.config.chat``)."""
    config = config if config is not None else ctx.config.chat
    factory = _transport_factory(config.transport)
    metrics = ChatMetrics(ctx.metrics)
    http = HttpClient.pooled(ctx.reactor, load_trust(config.tls_ca_file, "chat.tls_ca_file"), ctx.tls)
    retry = _retry_policy(config.retry_initial, config.retry_max)
    rest = ChatRest(
        ctx.reactor, http, config.url, timeout=config.request_timeout, attempts=config.request_attempts,
        retry_policy=retry,
    )
    conversations = Conversations(
        ctx.reactor,
        ctx.store,
        rest,
        channel=config.channel,
        customer={"language": config.language, "subject": config.subject},
        idle_timeout=config.idle_timeout,
        new_id=_new_id,
        metrics=metrics,
    )
    connector = None

    def receive(number, text, external_id=None):
        return connector.receive_sms(number, text, external_id)

    transport = factory.build(ctx, receive)
    cluster = getattr(ctx, "cluster", None)
    connector = Connector(
        ctx.reactor,
        ctx.store,
        conversations,
        transport,
        config,
        metrics,
        ctx.readiness.register("chat"),
        retry_policy=retry,
        new_id=_new_id,
        claims=_claims(ctx) if cluster is not None else None,
    )
    directory = pathlib.Path(config.transcript_dir) if config.transcript_dir else ctx.state_dir / "transcripts"
    directory = directory.absolute()
    add_routes(ctx.api, connector, ctx.store, Transcripts(rest, directory, functools.partial(_in_thread, ctx.reactor)))
    ctx.status["chat"] = connector
    link, closers = _link(ctx, config, connector), [http.close, transport.stop]
    if cluster is not None:
        return ClusterChatService(cluster, connector, link, closers, clock=ctx.reactor,
                                  component=ctx.readiness.components["chat"], metrics=ctx.metrics)
    return ChatService(connector, link, closers)
