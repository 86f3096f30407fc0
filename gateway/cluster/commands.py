"""Command routing: a command for a call is run by the node that owns it, over Redis request/reply.

Each node subscribes to its command channel ``gw:cmd:<node>`` and its reply channel
``gw:reply:<node>``. :meth:`CommandRouter.call` publishes ``{"id", "from", "command", "args"}``
on the owner's command channel and waits for ``{"id", "ok", "result"|"error"}`` on its own reply
channel. Why Redis and not HTTP to the owner (as jambonz does): see ``docs/cluster.md`` (one link
every node already has, no internal listener, port, TLS and credentials to run, no service URL to
publish, and ``PUBLISH`` tells at once whether the owner is listening).

The outcomes, all typed:

- the owner's result; or the owner's error, rebuilt from ``error_types`` (class name -> class,
  e.g. the core's ``UnknownCall``) when it names one of them, else :class:`RemoteCommandError`;
- :class:`OwnerDead` at once when nobody listens on the owner's channel (the process is gone), or
  after the timeout when the owner has no heartbeat any more;
- :class:`CommandTimeout` when the owner is alive but did not answer within ``timeout``;
- a :class:`RedisError` when Redis cannot be reached.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from gateway.boundary import PeerDataError, RateLimitedLog, load_json
from gateway.cluster import keys
from gateway.cluster.errors import CommandTimeout, OwnerDead, RemoteCommandError
from gateway.cluster.nodes import NodeRegistry
from gateway.cluster.redis import IRedis

__all__ = ["CommandRouter"]

log = Logger()


class CommandRouter:
    """Sends commands to other nodes and runs theirs through ``handler(command, args)``.

    ``handler`` returns a JSON-able result or a Deferred of one; an exception it raises (or a failed
    Deferred) goes back to the caller as ``{"type": class name, "message": str(error)}``.
    """

    def __init__(
        self,
        redis: IRedis,
        clock,
        node: str,
        handler: Callable[[str, dict[str, Any]], Any],
        *,
        timeout: float = 2.0,
        error_types: dict[str, Callable[[str], Exception]] | None = None,
    ):
        self.redis = redis
        self.clock = clock
        self.node = node
        self.handler = handler
        self.timeout = timeout
        self.error_types = dict(error_types or {})
        self.registry = NodeRegistry(redis)
        self._pending: dict[str, tuple[defer.Deferred, Any, str, str]] = {}
        self._subscriptions: list[Any] = []
        #: unreadable commands and replies: the first lines one by one, then a summary a minute
        self._unreadable = RateLimitedLog(clock, log)

    def start(self) -> defer.Deferred:
        """Listen on this node's channels; fires when both subscriptions are confirmed."""
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        self._subscriptions.append(await self.redis.subscribe(keys.reply_channel(self.node), self._reply))
        self._subscriptions.append(await self.redis.subscribe(keys.command_channel(self.node), self._request))

    def stop(self) -> defer.Deferred:
        subs, self._subscriptions = self._subscriptions, []
        return defer.DeferredList([s.cancel() for s in subs])

    # -- the caller's side --------------------------------------------------------------------

    def call(self, node: str, command: str, args: dict[str, Any] | None = None) -> defer.Deferred:
        """Run ``command`` on ``node``; fires with its result (see the module docstring for failures)."""
        args = dict(args or {})
        if node == self.node:
            return defer.maybeDeferred(self.handler, command, args)
        request_id = uuid.uuid4().hex
        d: defer.Deferred = defer.Deferred(lambda _: self._forget(request_id))
        timer = self.clock.callLater(self.timeout, self._timed_out, request_id)
        self._pending[request_id] = (d, timer, node, command)
        message = json.dumps(
            {"id": request_id, "from": self.node, "command": command, "args": args},
            separators=(",", ":"),
            ensure_ascii=False,
        )

        def published(receivers: int) -> None:
            if receivers == 0 and request_id in self._pending:
                self._fail(request_id, OwnerDead(node, "nobody listens on its command channel"))

        def unpublished(failure):
            if request_id in self._pending:
                self._fail(request_id, failure)

        self.redis.publish(keys.command_channel(node), message).addCallbacks(published, unpublished)
        return d

    def _forget(self, request_id: str) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None and entry[1].active():
            entry[1].cancel()

    def _fail(self, request_id: str, error: Any) -> None:
        d, timer, _, _ = self._pending.pop(request_id)
        if timer.active():
            timer.cancel()
        d.errback(error)

    def _timed_out(self, request_id: str) -> None:
        entry = self._pending.get(request_id)
        if entry is None:
            return
        _, _, node, command = entry

        def alive(is_alive: bool) -> Exception:
            if is_alive:
                return CommandTimeout(node, command, self.timeout)
            return OwnerDead(node, "no heartbeat")

        def settle(error: Any) -> None:
            if request_id in self._pending:
                self._fail(request_id, error if isinstance(error, Exception) else CommandTimeout(node, command, self.timeout))

        self.registry.is_alive(node).addCallbacks(alive, lambda _: None).addCallback(settle)

    def _reply(self, channel: str, message: str) -> None:
        try:
            reply = load_json(message)
            if not (isinstance(reply, dict) and isinstance(reply.get("id"), str)):
                raise ValueError("a reply without an id")
        except (ValueError, PeerDataError) as e:
            self._dropped("reply", channel, e)
            return
        entry = self._pending.pop(reply["id"], None)
        if entry is None:
            return  # late (after its timeout) or not ours
        d, timer, node, _ = entry
        if timer.active():
            timer.cancel()
        if reply.get("ok") is True:
            d.callback(reply.get("result"))
            return
        error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
        kind, text = str(error.get("type", "Error")), str(error.get("message", ""))
        make = self.error_types.get(kind)
        d.errback(make(text) if make is not None else RemoteCommandError(node, kind, text))

    def _dropped(self, what: str, channel: str, error: Exception) -> None:
        self._unreadable.emit(
            "cluster: a {what} on {channel} is unreadable: {problem}; dropped{more}",
            summary="cluster: {count} more unreadable commands or replies dropped in the last {seconds:.0f} s, "
                    "the latest a {what} on {channel}: {problem}",
            what=what, channel=channel, problem=str(error)[:200])

    # -- the owner's side ---------------------------------------------------------------------

    def _request(self, channel: str, message: str) -> None:
        try:
            request = load_json(message)
            if not (
                isinstance(request, dict)
                and isinstance(request.get("id"), str)
                and isinstance(request.get("from"), str)
                and isinstance(request.get("command"), str)
                and isinstance(request.get("args"), dict)
            ):
                raise ValueError('expected {"id", "from", "command", "args"}')
        except (ValueError, PeerDataError) as e:
            self._dropped("command", channel, e)
            return
        d = defer.maybeDeferred(self.handler, request["command"], request["args"])

        def ok(result: Any) -> dict[str, Any]:
            return {"id": request["id"], "ok": True, "result": result}

        def failed(failure) -> dict[str, Any]:
            error = failure.value
            return {"id": request["id"], "ok": False, "error": {"type": type(error).__name__, "message": str(error)}}

        def send(reply: dict[str, Any]) -> defer.Deferred:
            try:
                text = json.dumps(reply, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as e:
                text = json.dumps(failed(_Failure(TypeError(f"the result is not JSON: {e}"))))
            return self.redis.publish(keys.reply_channel(request["from"]), text)

        def unsent(failure) -> None:
            log.warn(
                "cluster: the reply to {command} from node {node} was not sent: {problem}",
                command=request["command"], node=request["from"], problem=str(failure.value),
            )

        d.addCallbacks(ok, failed).addCallback(send).addErrback(unsent)


class _Failure:
    def __init__(self, value: Exception):
        self.value = value
