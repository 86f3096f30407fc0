"""The status page's live feed: one view of the whole gateway, pushed to every open stream when it changes.

A :class:`StatusFeed` builds the view the page shows (live calls with their
legs, the extensions' names, each adapter's ``status()``, readiness, the most
recent CDRs) and sends
it, whole, as a server-sent event to every :class:`EventStream` attached to it.
It works only while somebody watches: the first stream subscribes it to the
call core (an :class:`~gateway.core.interfaces.ICallControl`), reads the live
calls once and starts its timers, the last one to leave undoes all of that.
From then on the live calls are kept from the snapshot each call event comes
with: the feed never asks the core for its calls again.

When a message goes out:

- a call event marks the view dirty; the view is rebuilt ``coalesce`` seconds
  later, so a burst of events (a transfer, a conference) is one message;
- the adapters publish no events, so the view is also rebuilt every ``sample``
  seconds; either way a message goes out only if the view differs from the
  last one sent (durations tick in the browser, not on the wire);
- every ``heartbeat`` seconds each stream gets an SSE comment, so proxies and
  load balancers keep an idle stream open.

In cluster mode (``ctx.cluster``) the view also has ``cluster``: the live nodes (their load,
draining, the leases each holds; read from Redis every ``sample`` seconds, as ``/api/cluster``
shows them, without the heartbeat times that change at every beat), and each call names its
``node``. Without ``[cluster]``, ``cluster`` is None.

A stream whose client reads slowly pauses (it is the request's push producer):
while paused it keeps only the newest message, sent when the client catches up.
"""

from __future__ import annotations

import json
import typing

from twisted.internet import task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

import gateway
from gateway.admin.calls import owner_of
from gateway.admin.cluster import cluster_view
from gateway.core.events import CallEnded
from gateway.core.states import LegState

__all__ = ["CDR_FIELDS", "EventStream", "StatusFeed", "cdr_view", "call_view", "sse_message"]

log = Logger()

#: seconds between a call event and the message it causes (events meanwhile join it)
COALESCE = 0.25
#: seconds between two looks at the adapters' status
SAMPLE = 1.0
#: seconds between two heartbeat comments
HEARTBEAT = 15.0
#: how many ended calls the page lists (read from the store at first open, later ones come from the registry)
RECENT_CDRS = 10
#: streams open at once; more are refused (each costs a view per change)
MAX_STREAMS = 32

#: the parts of a CDR the page shows
CDR_FIELDS = (
    "call_id", "extension", "direction", "caller", "number", "did", "app", "started_at",
    "answered_at", "ended_at", "duration", "billable_seconds", "cause", "hangup_by",
)

HEARTBEAT_COMMENT = b": heartbeat\n\n"


def call_view(snapshot) -> dict:
    """A live call for the page: its snapshot without ``duration`` (the page ticks it from the times)."""
    data = snapshot.to_dict()
    del data["duration"]
    return data


def _nodes_view(view: dict) -> dict:
    """``/api/cluster``'s body for the page: without the heartbeat times (they change at every beat)."""
    nodes = [{key: value for key, value in node.items() if key not in ("seen", "instance")}
             for node in view.get("nodes", [])]
    return {"redis": view.get("redis"), "nodes": nodes, "leases": [
        {"name": lease["name"], "holder": lease["holder"]} for lease in view.get("leases", [])]}


def cdr_view(cdr: dict) -> dict:
    return {name: cdr.get(name) for name in CDR_FIELDS}


def _ended(cdr: dict) -> tuple[str, str]:
    """The order of CDRs (the store's): by end time, then call id."""
    return cdr["ended_at"] or "", cdr["call_id"]


def sse_message(event: str, data: dict) -> bytes:
    """One server-sent event; compact JSON has no newline, so it is one ``data:`` line."""
    body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str)
    return f"event: {event}\ndata: {body}\n\n".encode("utf-8")


class StatusFeed:
    """Builds the view from ``ctx`` and pushes it to the attached streams (see the module docstring)."""

    def __init__(self, ctx, *, coalesce: float = COALESCE, sample: float = SAMPLE, heartbeat: float = HEARTBEAT,
                 recent: int = RECENT_CDRS, max_streams: int = MAX_STREAMS):
        self._ctx = ctx
        self._clock = ctx.reactor
        self._coalesce = coalesce
        self._sample = sample
        self._heartbeat = heartbeat
        self._recent = recent
        self._max_streams = max_streams
        self.streams: list[EventStream] = []
        self._unsubscribe: typing.Callable[[], None] | None = None
        self._loops: list[task.LoopingCall] = []
        self._flush_call = None
        self._cdrs: dict[str, dict] = {}
        #: the live calls (CallSnapshots) by id, oldest first, as the core's events handed them
        self._calls: dict = {}
        #: the view last sent; None until the recent CDRs are loaded
        self._view: dict | None = None
        #: adapters whose status() failed (logged once until it works again)
        self._failing: set[str] = set()
        #: bumped at every stop, so that a CDR load finishing after it is ignored
        self._generation = 0
        #: the cluster's nodes as last read (None without [cluster]); True while a read is under way
        self._cluster: dict | None = None
        self._reading_cluster = False

    @property
    def full(self) -> bool:
        return len(self.streams) >= self._max_streams

    # -- streams -----------------------------------------------------------------------------

    def attach(self, stream: "EventStream") -> None:
        """Start sending to ``stream`` (the whole view at once, if there is one yet)."""
        if not self.streams:
            self.streams.append(stream)
            self._start()
            return
        if self._view is not None:
            self._publish()
            stream.send(self._message(self._view))
        self.streams.append(stream)

    def detach(self, stream: "EventStream") -> None:
        if stream in self.streams:
            self.streams.remove(stream)
            if not self.streams:
                self._stop()

    def _start(self) -> None:
        registry = self._ctx.registry
        if registry is not None:
            self._unsubscribe = registry.subscribe(self._changed)
            self._calls = {call.call_id: call for call in registry.calls()}
        self._loops = [self._every(self._sample, self._sampled), self._every(self._heartbeat, self._beat)]
        generation = self._generation
        self._read_cluster()
        d = self._ctx.store.recent_cdrs(limit=self._recent)
        d.addCallback(self._remember_all, generation)
        d.addErrback(lambda f: log.failure("the status page could not read the recent CDRs", f))
        d.addCallback(lambda _: self._loaded(generation))
        d.addErrback(lambda f: log.failure("the status page could not build its view", f))

    def _every(self, interval: float, function) -> task.LoopingCall:
        loop = task.LoopingCall(function)
        loop.clock = self._clock
        loop.start(interval, now=False).addErrback(
            lambda f: log.failure("the status page's timer stopped", f))
        return loop

    def _stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for loop in self._loops:
            if loop.running:  # a loop whose function failed has stopped (and was logged)
                loop.stop()
        self._loops = []
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        self._cdrs.clear()
        self._calls = {}
        self._view = None
        self._cluster = None
        self._generation += 1

    # -- recent CDRs ---------------------------------------------------------------------------

    def _remember_all(self, cdrs: list[dict], generation: int) -> None:
        """Remember the store's newest CDRs, unless the feed stopped while they were read."""
        if generation == self._generation:
            for cdr in cdrs:
                self._remember(cdr)

    def _remember(self, cdr: dict) -> None:
        self._cdrs[cdr["call_id"]] = cdr_view(cdr)
        if len(self._cdrs) > self._recent:
            del self._cdrs[min(self._cdrs.values(), key=_ended)["call_id"]]

    def _loaded(self, generation: int) -> None:
        if generation == self._generation:
            self._send_all(self._build())

    # -- the cluster ---------------------------------------------------------------------------

    def _sampled(self) -> None:
        self._read_cluster()
        self._publish()

    def _read_cluster(self) -> None:
        """Read the nodes (cluster mode only, one read at a time); the view is published once read."""
        if getattr(self._ctx, "cluster", None) is None or self._reading_cluster:
            return
        self._reading_cluster = True
        generation = self._generation

        def read(view: dict) -> None:
            if generation == self._generation:
                self._cluster = _nodes_view(view)

        def failed(failure) -> None:
            if generation == self._generation:
                self._cluster = {"error": f"the cluster cannot be read: {failure.getErrorMessage()}",
                                 "nodes": [], "leases": []}

        def done(_) -> None:
            self._reading_cluster = False
            if generation == self._generation:
                self._publish()

        d = cluster_view(self._ctx)
        d.addCallbacks(read, failed)
        d.addCallback(done)
        d.addErrback(lambda f: log.failure("the status page could not show the cluster", f))

    # -- the view ------------------------------------------------------------------------------

    def _changed(self, event, call) -> None:
        """A call event with its call's snapshot: keep the call (or drop it, once released), and
        publish soon, with whatever else happens until then."""
        if isinstance(event, CallEnded):
            self._remember(event.cdr)
        if call.state is LegState.RELEASED:
            self._calls.pop(call.call_id, None)
        else:
            self._calls[call.call_id] = call
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(self._coalesce, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        self._publish()

    def _publish(self) -> None:
        """Send the view to every stream if it changed since it was last sent."""
        if self._view is None:
            return
        view = self._build()
        if view != self._view:
            self._send_all(view)

    def _send_all(self, view: dict) -> None:
        self._view = view
        message = self._message(view)
        for stream in list(self.streams):
            stream.send(message)

    def _beat(self) -> None:
        for stream in list(self.streams):
            stream.beat()

    def _message(self, view: dict) -> bytes:
        return sse_message("status", {"now": self._clock.seconds(), **view})

    def _build(self) -> dict:
        ctx = self._ctx
        return {
            "node": ctx.config.gateway.node,
            "version": gateway.__version__,
            "extensions": {ext.id: ext.name for ext in ctx.config.extensions},
            "readiness": [{"name": c.name, "up": c.up, "reason": c.reason}
                          for c in ctx.readiness.components.values()],
            "calls": [self._call_view(call) for call in self._calls.values()],
            "cluster": self._cluster,
            "cdrs": sorted(self._cdrs.values(), key=_ended, reverse=True),
            "adapters": {name: self._status_of(name, obj) for name, obj in ctx.status.items()},
        }

    def _call_view(self, snapshot) -> dict:
        data = call_view(snapshot)
        owner = owner_of(self._ctx.registry, snapshot.call_id)
        if owner is not None:
            data["node"] = owner
        return data

    def _status_of(self, name: str, obj) -> dict:
        try:
            status = obj.status()
        except Exception:
            if name not in self._failing:
                self._failing.add(name)
                log.failure("the status of {adapter} could not be read", adapter=name)
            return {"error": "status unavailable, see the log"}
        self._failing.discard(name)
        return status


@implementer(IPushProducer)
class EventStream:
    """One open ``text/event-stream`` response; the request's push producer, so a slow reader pauses it."""

    def __init__(self, request, feed: StatusFeed, peer: str):
        self._request = request
        self._feed = feed
        self.peer = peer
        self._paused = False
        self._held: bytes | None = None
        self.closed = False

    def open(self) -> None:
        """Send the headers and a first comment, attach to the feed, detach when the client leaves."""
        request = self._request
        request.setResponseCode(200)
        request.setHeader("Content-Type", "text/event-stream; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        request.setHeader("X-Accel-Buffering", "no")  # nginx: pass each event on at once
        request.registerProducer(self, True)
        request.write(b": gateway status\n\n")
        request.notifyFinish().addBoth(self._finished)
        self._feed.attach(self)
        log.info("status stream opened for {peer} ({count} open)", peer=self.peer, count=len(self._feed.streams))

    def send(self, message: bytes) -> None:
        if self.closed:
            return
        if self._paused:
            self._held = message
            return
        self._request.write(message)

    def beat(self) -> None:
        if not (self.closed or self._paused):
            self._request.write(HEARTBEAT_COMMENT)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        held, self._held = self._held, None
        if held is not None:
            self.send(held)

    def stopProducing(self) -> None:
        self._finished(None)

    def _finished(self, _) -> None:
        if not self.closed:
            self.closed = True
            self._feed.detach(self)
            log.info("status stream for {peer} closed ({count} open)", peer=self.peer, count=len(self._feed.streams))
