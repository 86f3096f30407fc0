"""Fakes of the chat room's interfaces, shipped for handlers', transports' and plugins' unit tests.

- :class:`FakeSocketIOClient`: an in-memory :class:`~gateway.chat.socketio.ISocketIOClient` that
  drives a handler (the Expertflow connector) the way the real client does, without I/O.
- :class:`FakeSmsTransport`: an :class:`~gateway.chat.interfaces.ISmsTransport` that keeps what it
  is given and answers as the test scripts it (taken, "not now", refused for good).

The ``sim`` transport (:class:`gateway.chat.transports.SimTransport`) is not a test fake: it is the
bundled transport an operator can run and watch through the admin API.
"""

from __future__ import annotations

import collections

import attrs
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.chat.interfaces import ISmsTransport, OutboundSms
from gateway.chat.socketio import EventRefused, ISocketIOClient, LinkLost, NotConnected, _ack_arguments

__all__ = ["Emitted", "FakeSmsTransport", "FakeSocketIOClient"]


@implementer(ISocketIOClient)
class FakeSocketIOClient:
    """An in-memory :class:`ISocketIOClient` that drives a handler the way the real client does.

    For unit tests of handlers (the Expertflow connector): :meth:`connect` and :meth:`disconnect`
    play the session's start and end, :meth:`receive` delivers a server event (returning the
    ack the handler produced, the negative ack of an :class:`EventRefused`, which is also noted in
    ``refused`` as ``(event, reason, problem)``); what the handler emits lands in ``emitted`` as
    :class:`Emitted` entries whose Deferreds the test fires with :meth:`Emitted.ack`.
    """

    def __init__(self, handler):
        self.handler = handler
        self.connected = False
        self.emitted: list[Emitted] = []
        self.sent: list[tuple] = []
        self.refused: list[tuple[str, str, str]] = []
        self._waiters: list[defer.Deferred] = []

    def emit(self, event: str, *args) -> defer.Deferred:
        if not self.connected:
            return defer.fail(NotConnected("the fake client is not connected"))
        entry = Emitted(event, args, defer.Deferred())
        self.emitted.append(entry)
        return entry.deferred

    def send(self, event: str, *args) -> None:
        if not self.connected:
            raise NotConnected("the fake client is not connected")
        self.sent.append((event, *args))

    def when_connected(self) -> defer.Deferred:
        if self.connected:
            return defer.succeed(self)
        waiter = defer.Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    def connect(self) -> defer.Deferred:
        """Start a session: ``on_connect`` runs, then waiters fire; returns on_connect's Deferred."""
        self.connected = True
        result = defer.maybeDeferred(self.handler.on_connect, self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self)
        return result

    def disconnect(self, reason=None) -> defer.Deferred:
        """End the session: unacked emits fail with :class:`LinkLost`, then ``on_disconnect`` runs."""
        self.connected = False
        for entry in self.emitted:
            if not entry.deferred.called:
                entry.deferred.errback(LinkLost(f"fake link lost before the ack for {entry.event!r}"))
        reason = reason if reason is not None else Failure(ConnectionDone("fake disconnect"))
        return defer.maybeDeferred(self.handler.on_disconnect, self, reason)

    def receive(self, event: str, *args) -> defer.Deferred:
        """Deliver a server event; fires with the ack arguments the real client would send."""
        def refused(failure):
            failure.trap(EventRefused)
            refusal = failure.value
            self.refused.append((event, refusal.reason, refusal.problem))
            return refusal.ack

        d = defer.maybeDeferred(self.handler.on_event, self, event, list(args))
        return d.addErrback(refused).addCallback(_ack_arguments)


@attrs.define
class Emitted:
    """One event the handler emitted through a :class:`FakeSocketIOClient`."""

    event: str
    args: tuple
    deferred: defer.Deferred

    def ack(self, *args) -> None:
        """Acknowledge with ``args`` (the Deferred fires with them as a list)."""
        self.deferred.callback(list(args))


@implementer(ISmsTransport)
class FakeSmsTransport:
    """Keeps every SMS it is given in :attr:`sent` (the :class:`OutboundSms`, in order) and takes it,
    unless :meth:`fail_next` scripted the answer; :attr:`stopped` once :meth:`stop` was called.

    ``fail_next(SmsRejected("..."))`` refuses the next SMS for good; any other exception is
    "not now" (the connector tries it again later, with the same id)."""

    name = "fake"

    def __init__(self) -> None:
        self.sent: list[OutboundSms] = []
        self.stopped = False
        self._failures: collections.deque[Exception] = collections.deque()

    def fail_next(self, error: Exception) -> None:
        """The next :meth:`send` fails with ``error`` (and the SMS is not kept in :attr:`sent`)."""
        self._failures.append(error)

    def send(self, sms: OutboundSms) -> defer.Deferred:
        if self._failures:
            return defer.fail(self._failures.popleft())
        self.sent.append(sms)
        return defer.succeed(None)

    def status(self) -> dict:
        return {"name": self.name, "sent": len(self.sent)}

    def stop(self) -> None:
        self.stopped = True
