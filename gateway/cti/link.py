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

Every frame is decoded through :func:`gateway.boundary.load_json`. A message that is not a valid
envelope, or whose text holds a lone surrogate, is refused; when its header still carries a
``requestId`` (and is not a response or an event), it is answered with ``FAILURE`` saying what is
wrong and echoing the ``requestId``, ``name`` and ``target`` it can (:func:`~gateway.cti.envelope.echo_failure`;
a lone surrogate in one of them is echoed as its visible escape). A frame that is not UTF-8, not JSON
(``NaN``, ``Infinity`` and ``1e999`` included), nested too deep or too long has no header to read: it
is dropped. Events and responses from the bridge are ignored: the Bridge Client asks the bridge
nothing. Everything refused or ignored goes through the connection's
:class:`~gateway.boundary.IgnoredBudget`: counted in ``gateway_ignored_messages_total{adapter="cti"}``,
logged with the peer named, the first few one by one and then in periodic summaries.
"""

from __future__ import annotations

import typing

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from gateway.boundary import budget_factory
from gateway.core.errors import CallError
from gateway.cti import envelope as env
from gateway.cti.framing import DEFAULT_MAX_FRAME_SIZE, FramedJSONProtocol

log = Logger()

#: the adapter label of the CTI link in ``gateway_ignored_messages_total``
ADAPTER = "cti"


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
    :param budgets: makes the connection's :class:`~gateway.boundary.IgnoredBudget` from the peer's
        name (:func:`gateway.boundary.budget_factory` with ``adapter="cti"`` and the metrics registry).
    :param clock: ``IReactorTime`` for a link built without ``budgets`` (its budget is then not counted).
    """

    def __init__(self, handler, byteorder="big", max_frame_size=DEFAULT_MAX_FRAME_SIZE, budgets=None, *,
                 clock=None):
        super().__init__(byteorder, max_frame_size)
        self.handler = handler
        self.connected = False
        if budgets is None:
            if clock is None:
                raise TypeError("BridgeLink needs budgets or a clock")
            budgets = budget_factory(clock, ADAPTER)
        self.budgets = budgets

    def connectionMade(self):
        self.connected = True
        self.budget = self.budgets(self.peer)
        log.info("HIS bridge {peer}: connected", peer=self.peer)
        self.handler.link_made(self)

    def connectionLost(self, reason):
        self.connected = False
        if self.budget is not None:
            self.budget.close()
        log.info("HIS bridge {peer}: link lost: {reason}", peer=self.peer, reason=reason.getErrorMessage())
        self.handler.link_lost(self, reason)

    def frameRejected(self, reason):
        self.handler.observe("rejected", None)

    # -- sending -------------------------------------------------------------------------------

    def send(self, message):
        """Send an envelope, if the link is still up (a late response to a lost link is only logged)."""
        if not self.connected:
            log.info("HIS bridge {peer}: link gone, not sent: {message}", peer=self.peer,
                     message=message.describe(limit=300))
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
            self.budget.ignored(
                "unknown", f"{message.describe(limit=300)}: the Bridge Client expects only queries and requests"
            )

    def badTextReceived(self, document, error):
        """A frame whose text holds a lone surrogate: refused, answered with FAILURE if it can be."""
        self._refuse(document, "bad_text", f"refused: {error}")

    def _malformed(self, obj, error):
        self._refuse(obj, "malformed", f"malformed message: {error}")

    def _refuse(self, obj, reason, error):
        """Count and log the refused message ``obj``; answer it with FAILURE ``error`` if it carries a requestId."""
        self.handler.observe("rejected", None)
        response = env.echo_failure(obj, error)
        if response is None:
            self.budget.ignored(reason, f"{error}; no requestId to answer, dropped")
            return
        self.budget.ignored(reason, f"{error}; answered FAILURE [{response.request_id}]")
        self.send(response)

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
                "HIS bridge {peer}: handling {message} failed", failure, peer=self.peer,
                message=message.describe(limit=300)
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
