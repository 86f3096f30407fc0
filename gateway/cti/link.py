"""One connection to the processor bridge: envelopes in, exactly one response out per query and request.

:class:`BridgeLink` turns frames into :class:`~gateway.cti.envelope.Envelope` objects and hands every
query and request to its handler (the :class:`gateway.cti.client.BridgeClient`). Whatever the handler
does, the bridge gets one response with the same ``name``, ``target`` and ``requestId``:

- the handler returns a :class:`Reply` (or a body ``dict``, or None), possibly through a Deferred:
  ``SUCCESS`` with that body, then the reply's ``after`` hook runs (an init query's queued events are
  flushed, a disposed destination is released, only once the response is on the wire);
- it raises (or its Deferred fails with) :class:`Refusal` or a call core ``CallError``: ``FAILURE`` with
  the error's readable message;
- anything else is a bug: ``FAILURE`` naming the error type, and the traceback goes to the log only.

A message that is not a valid envelope is logged; when it still names a query or request (type, name,
target and requestId), it is answered with ``FAILURE`` saying what is wrong. Events and responses from
the bridge are logged and ignored: the Bridge Client asks the bridge nothing.
"""

from __future__ import annotations

import typing

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from gateway.core.errors import CallError
from gateway.cti import envelope as env
from gateway.cti.framing import DEFAULT_MAX_FRAME_SIZE, FramedJSONProtocol

log = Logger()


class Refusal(Exception):
    """A query or request answered with FAILURE; ``str()`` is the errorMessage the agent may see."""


@attrs.frozen
class Reply:
    """A SUCCESS response's ``body``, and what to do once it has been sent."""

    body: dict = attrs.field(factory=dict)
    after: typing.Callable[[], None] | None = None


class BridgeLink(FramedJSONProtocol):
    """The Bridge Client's end of one connection.

    :param handler: has ``link_made(link)``, ``link_lost(link, reason)``, ``handle(envelope)`` (for
        queries and requests; returns a :class:`Reply`, a dict, None or a Deferred of one) and
        ``observe(direction, envelope)`` (``"in"``/``"out"``, for metrics and tracing).
    """

    def __init__(self, handler, byteorder="big", max_frame_size=DEFAULT_MAX_FRAME_SIZE):
        super().__init__(byteorder, max_frame_size)
        self.handler = handler
        self.connected = False

    def connectionMade(self):
        self.connected = True
        log.info("HIS bridge {peer}: connected", peer=self.peer)
        self.handler.link_made(self)

    def connectionLost(self, reason):
        self.connected = False
        log.info("HIS bridge {peer}: link lost: {reason}", peer=self.peer, reason=reason.getErrorMessage())
        self.handler.link_lost(self, reason)

    def frameRejected(self, reason):
        self.handler.observe("rejected", None)

    # -- sending -------------------------------------------------------------------------------

    def send(self, message):
        """Send an envelope, if the link is still up (a late response to a lost link is only logged)."""
        if not self.connected:
            log.info("HIS bridge {peer}: link gone, not sent: {message}", peer=self.peer, message=message.describe())
            return
        self.sendMessage(message.to_json())
        self.handler.observe("out", message)

    # -- receiving -----------------------------------------------------------------------------

    def messageReceived(self, obj):
        try:
            message = env.Envelope.from_json(obj)
        except env.EnvelopeError as e:
            self._malformed(obj, e)
            return
        self.handler.observe("in", message)
        if message.type in env.ANSWERABLE:
            self._answer(message)
        else:
            log.warn(
                "HIS bridge {peer} sent {message}: the Bridge Client expects only queries and requests; ignored",
                peer=self.peer,
                message=message.describe(),
            )

    def _malformed(self, obj, error):
        log.warn("HIS bridge {peer} sent a malformed message: {error}", peer=self.peer, error=str(error))
        self.handler.observe("rejected", None)
        original = _answerable_header(obj)
        if original is not None:
            self.send(env.failure(original, f"malformed message: {error}"))

    def _answer(self, message):
        d = defer.maybeDeferred(self.handler.handle, message)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(message,), errbackArgs=(message,))
        d.addErrback(
            lambda f: log.failure("HIS bridge {peer}: answering {name} failed", f, peer=self.peer, name=message.name)
        )

    def _succeeded(self, result, message):
        reply = result if isinstance(result, Reply) else Reply(result or {})
        self.send(env.success(message, reply.body))
        if reply.after is not None:
            reply.after()

    def _failed(self, failure, message):
        if failure.check(Refusal, CallError):
            error = str(failure.value)
        else:
            log.failure(
                "HIS bridge {peer}: handling {message} failed", failure, peer=self.peer, message=message.describe()
            )
            error = f"internal error of the gateway handling {message.name} ({failure.type.__name__})"
        log.info(
            "HIS bridge {peer}: {name} on {target} refused: {error}",
            peer=self.peer,
            name=message.name,
            target=message.target,
            error=error,
        )
        self.send(env.failure(message, error))


def _answerable_header(obj):
    """The query or request an invalid message still names, as an envelope to answer; else None."""
    header = obj.get("header") if isinstance(obj, dict) else None
    if not isinstance(header, dict):
        return None
    fields = [header.get(key) for key in ("type", "name", "target", "requestId")]
    if fields[0] not in env.ANSWERABLE or not all(isinstance(f, str) and f for f in fields):
        return None
    return env.Envelope(env.Header(*fields[:3], request_id=fields[3]))
