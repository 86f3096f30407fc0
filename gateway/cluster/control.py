"""The call core in cluster mode: one ``ICallControl`` over this node's registry and the cluster.

:func:`gateway.tap.build` makes a :class:`ClusterControl` when ``[cluster] redis`` is set, and
hands it to the adapters (Patriot, CTI, the admin API, OptimaCCS) instead of the raw registry:

- **Records.** Every event of a local call writes the call's :class:`CallRecord` (owner, state,
  extension, legs, times, and its snapshot in ``data["snapshot"]``) with
  :meth:`CallRecords.put`, once per snapshot (a batch's events share one); ``CallEnded`` removes
  it. After a (re)join, or Redis losing its data, every live call is written again.
- **Events.** Every event of a call that belongs to an extension is published on
  ``ext:<extension>`` with the call's snapshot. Each node subscribes to the channels of every
  configured extension: a remote event updates the view of remote calls and reaches the
  observers of :meth:`subscribe` as a typed event with its snapshot, as a local one does.
- **Queries** (``calls``, ``call``, ``calls_for``, ``active_call_for``) answer from the local
  registry plus the remote calls: the records (read every ``refresh`` seconds) and the events.
- **Commands.** A command for a local call runs here; one for a call of another node is routed
  to its owner (:class:`CommandRouter`) and fires with the owner's snapshot. A cluster failure is
  one of the core's error types (:class:`OwnerUnreachable` 503, :class:`ClusterCommandTimeout`
  504, :class:`ClusterUnavailable` 503), so the adapters answer as for any ``CallError``.
  ``originate`` runs on the least loaded node that is not draining.
- **node_lost.** :meth:`end_lost_call` is the sweeper's callback: it writes the dead node's call's
  CDR (cause ``node_lost``) through the store and tells the extension's channel it ended.
- **Drain.** :class:`ClusterDrain`: ``/readyz`` false, the node marked draining (originations go
  elsewhere, singleton links released), new OptimaCCS connections refused with 1013
  (``ctx.draining``), live calls go on until ``[cluster] drain_timeout``, the rest end with cause
  ``drain_forced``.
"""

from __future__ import annotations

import json
import typing

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.cluster.calls import CallRecord
from gateway.cluster.errors import ClusterError, CommandTimeout, OwnerDead, RedisError, RemoteCommandError
from gateway.cluster.nodes import least_loaded
from gateway.core import errors as core_errors
from gateway.core import events as ev
from gateway.core.cdr import build_cdr
from gateway.core.errors import CallError, ExtensionBusy, IllegalState, InvalidArgument, UnknownCall
from gateway.core.interfaces import ICallControl, IInboundCalls
from gateway.core.model import Call, CallSnapshot, Leg, LegSnapshot, Party
from gateway.core.states import Cause, LegState

__all__ = [
    "ClusterCommandTimeout",
    "ClusterControl",
    "ClusterDrain",
    "ClusterUnavailable",
    "ERROR_TYPES",
    "OwnerUnreachable",
    "snapshot_from_json",
    "snapshot_to_json",
]

log = Logger()


# -- the typed errors adapters see -------------------------------------------------------------


class OwnerUnreachable(CallError):
    """The node that owns the call is dead or not listening."""

    code = "owner_unreachable"
    http_status = 503


class ClusterCommandTimeout(CallError):
    """The call's owner did not answer within ``[cluster] command_timeout``."""

    code = "command_timeout"
    http_status = 504


class ClusterUnavailable(CallError):
    """Redis cannot be reached: a command for a call of another node cannot be sent."""

    code = "cluster_unavailable"
    http_status = 503


def _rebuilt(cls: type[CallError]) -> typing.Callable[[str], CallError]:
    """An error of ``cls`` carrying the owner's message (its own ``__init__`` takes other arguments)."""

    def make(message: str) -> CallError:
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        return error

    return make


#: the core's errors by class name, for the errors of routed commands (CommandRouter's error_types)
ERROR_TYPES: dict[str, typing.Callable[[str], Exception]] = {
    name: _rebuilt(getattr(core_errors, name)) for name in core_errors.__all__
}
ERROR_TYPES.update({cls.__name__: _rebuilt(cls) for cls in (OwnerUnreachable, ClusterCommandTimeout, ClusterUnavailable)})


def as_call_error(failure: Failure) -> Failure:
    """A cluster failure as one of the core's error types (others pass through)."""
    error = failure.value
    if isinstance(error, OwnerDead):
        return Failure(OwnerUnreachable(str(error)))
    if isinstance(error, CommandTimeout):
        return Failure(ClusterCommandTimeout(str(error)))
    if isinstance(error, RedisError):
        return Failure(ClusterUnavailable(f"the cluster's redis is unreachable: {error}"))
    if isinstance(error, RemoteCommandError):
        return Failure(CallError(str(error)))
    if isinstance(error, ClusterError):
        return Failure(CallError(str(error)))
    return failure


# -- snapshots and events as JSON ----------------------------------------------------------------


def _plain(value: typing.Any) -> typing.Any:
    """``value`` as JSON gives it back (anything JSON cannot carry as its text)."""
    return json.loads(json.dumps(value, default=str))


def snapshot_to_json(snapshot: CallSnapshot) -> dict[str, typing.Any]:
    """A snapshot as a JSON object with its times as numbers (:func:`snapshot_from_json` reads it)."""
    return _plain(attrs.asdict(snapshot))


def _known(cls: type, data: dict[str, typing.Any]) -> dict[str, typing.Any]:
    if not isinstance(data, dict):  # a record written by any client of the shared Redis: TypeError, not AttributeError
        raise TypeError(f"a {cls.__name__} must be a JSON object, not {type(data).__name__}")
    names = {f.name for f in attrs.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def snapshot_from_json(data: dict[str, typing.Any]) -> CallSnapshot:
    """The snapshot :func:`snapshot_to_json` wrote (fields this version does not know are dropped);
    raises ``ValueError``/``TypeError``/``KeyError`` for anything else."""
    fields = _known(CallSnapshot, data)
    fields["state"] = LegState(fields["state"])
    fields["parties"] = tuple(Party(**{**_known(Party, p), "state": LegState(p["state"])}) for p in data.get("parties", ()))
    fields["legs"] = tuple(
        LegSnapshot(**{**_known(LegSnapshot, leg), "state": LegState(leg["state"])}) for leg in data.get("legs", ())
    )
    fields["consults"] = tuple(fields.get("consults", ()))
    fields["attributes"] = dict(fields.get("attributes") or {})
    return CallSnapshot(**fields)


def event_from_json(data: dict[str, typing.Any]) -> ev.CallEvent:
    """A typed event from its ``to_dict()`` (raises ``ValueError`` for an unknown type)."""
    cls = getattr(ev, str(data.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, ev.CallEvent)):
        raise ValueError(f"unknown event type {data.get('type')!r}")
    fields = _known(cls, data)
    if "state" in fields and fields["state"] is not None:
        fields["state"] = LegState(fields["state"])
    return cls(**fields)


def record_of(snapshot: CallSnapshot, node: str, now: float) -> CallRecord:
    """The call record of a local call's snapshot."""
    data = snapshot_to_json(snapshot)
    return CallRecord(
        call_id=snapshot.call_id,
        owner=node,
        state=str(snapshot.state),
        extension=snapshot.extension,
        legs=data["legs"],
        started=snapshot.created_at,
        updated=now,
        data={"snapshot": data},
    )


def lost_cdr(record: CallRecord, now: float, cause: str = str(Cause.NODE_LOST)) -> dict[str, typing.Any]:
    """The CDR of a dead node's call from its record: every live leg released with ``cause``."""
    snap = snapshot_from_json(record.data["snapshot"])
    call = Call(
        call_id=snap.call_id, extension=snap.extension, direction=snap.direction, created_at=snap.created_at,
        caller=snap.caller, number=snap.number, did=snap.did, attributes=dict(snap.attributes), app=snap.app,
        answered_at=snap.answered_at, consult_of=snap.consult_of, consults=list(snap.consults),
        dtmf_count=snap.dtmf_count,
    )
    for leg in snap.legs:
        live = leg.state is not LegState.RELEASED
        call.legs.append(Leg(
            leg_id=leg.leg_id, call=call, role=leg.role, direction=leg.direction, number=leg.number,
            driver=leg.driver, state=LegState.RELEASED, started_at=leg.started_at, caller_id=leg.caller_id,
            name=leg.name, attributes=dict(leg.attributes), alerting_at=leg.alerting_at,
            answered_at=leg.answered_at, ended_at=now if live else leg.ended_at,
            cause=cause if live else leg.cause, muted=leg.muted,
        ))
    call.ended_at, call.cause, call.hangup_by = now, cause, "cluster"
    return build_cdr(call, record.owner)


# -- the cluster-mode ICallControl --------------------------------------------------------------

#: routed commands: name -> (positional argument names, keyword argument names)
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "originate": (("extension_id", "number"), ("attributes", "if_busy", "by")),
    "answer": (("call_id",), ()),
    "reject": (("call_id",), ("by",)),
    "cancel": (("call_id",), ("by",)),
    "hangup": (("call_id",), ("by",)),
    "hold": (("call_id",), ()),
    "retrieve": (("call_id",), ()),
    "mute": (("call_id",), ()),
    "unmute": (("call_id",), ()),
    "transfer": (("call_id", "destination"), ("by",)),
    "conference": (("call_id", "destination"), ("by",)),
    "consult": (("call_id", "number"), ("by",)),
    "alternate": (("call_id",), ("by",)),
    "transfer_to_consult": (("call_id",), ("by",)),
    "conference_in_consult": (("call_id",), ("by",)),
    "remove_party": (("call_id", "number"), ("by",)),
    "send_dtmf": (("call_id", "digits", "duration_ms", "gap_ms"), ()),
    "flush": (("call_id",), ()),
    "dispose": (("call_id",), ("by",)),
}

#: the routed commands' arguments that are not text (every other one must be a string): a value of
#: the wrong type would reach the registry, and a ``by`` that is no text ends up in the CDR's
#: ``hangup_by`` column, where the store cannot write it (the CDR waits, and every CDR behind it)
ARGUMENT_TYPES: dict[str, type | tuple[type, ...]] = {"attributes": dict, "duration_ms": int, "gap_ms": int}


@implementer(ICallControl, IInboundCalls)
class ClusterControl(service.Service):
    """This node's registry (``local``) as one cluster's :class:`ICallControl` (see the module docstring).

    ``node``: the :class:`~gateway.cluster.node.ClusterNode` (set with :meth:`attach` before start);
    ``store``: the CDR store, for the CDRs of dead nodes' calls; ``readiness``: the board behind
    ``/readyz`` (components ``redis`` and ``cluster``), or None.
    """

    name = "cluster-control"

    def __init__(self, clock, local, node_id: str, *, store=None, readiness=None, refresh: float = 1.0,
                 metrics=None):
        self.clock = clock
        self.metrics = _Metrics(metrics, self)
        self.local = local
        self.node_id = node_id
        self.store = store
        self.refresh = refresh
        self.node: typing.Any = None
        #: starts this node's drain (ClusterDrain.drain), for a drain routed here; set by build_cluster
        self.on_drain: typing.Callable[[], defer.Deferred] | None = None
        #: remote calls by id: their latest snapshot (from the records and the events)
        self.remote: dict[str, tuple[str, CallSnapshot]] = {}
        self.draining = False
        self._observers: list[tuple[typing.Callable, str | None]] = []
        self._written: dict[str, CallSnapshot] = {}
        self._unremoved: set[str] = set()
        self._removing: set[str] = set()
        self._reading = False
        #: remote changes told by events, numbered, so that a read of the records begun earlier
        #: does not undo them
        self._seq = 0
        self._touched: dict[str, tuple[int, tuple[str, CallSnapshot] | None]] = {}
        self._unreadable: set[str] = set()
        self._subscribed: set[str] = set()
        self._loop: task.LoopingCall | None = None
        self._unsubscribe: typing.Callable[[], None] | None = None
        self._write_failing = False
        self._write_logged = False
        self._redis_component = readiness.register("redis") if readiness is not None else None
        self._cluster_component = readiness.register("cluster") if readiness is not None else None

    def attach(self, node) -> None:
        self.node = node

    # -- service ----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self.local.subscribe(self._local_event)
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.refresh, now=True)

    def stopService(self):
        super().stopService()
        if self._unsubscribe is not None:  # no more writes for late registry events; a restart subscribes once
            self._unsubscribe()
            self._unsubscribe = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for component in (self._redis_component, self._cluster_component):
            if component is not None:
                component.stopped()

    def _tick(self) -> None:
        health = self.node.health()
        if self._redis_component is not None:
            if health["redis"] == "up":
                self._redis_component.set_up()
            else:
                # the URL's str() has no password
                self._redis_component.set_down(f"unreachable ({getattr(self.node.redis, 'url', 'redis')})")
        if self._cluster_component is not None:
            if self.draining:
                self._cluster_component.set_down("draining")
            elif not health["joined"]:
                self._cluster_component.set_down(f"node {self.node_id} is not in the cluster")
            else:
                self._cluster_component.set_up()
        if health["joined"]:
            if self._write_failing:  # a write failed (a short Redis outage): write every live call again
                self._write_failing = False
                self._written.clear()
                for snapshot in self.local.calls():
                    self._put(snapshot)
            for call_id in list(self._unremoved):
                self._remove(call_id)
            self._read_records()

    def _read_records(self) -> None:
        if self._reading:
            return
        self._reading = True
        started = self._seq

        def read(records: list[CallRecord]) -> None:
            remote = {}
            for record in records:
                if record.owner == self.node_id:
                    continue
                try:
                    remote[record.call_id] = (record.owner, snapshot_from_json(record.data["snapshot"]))
                except (KeyError, TypeError, ValueError) as e:
                    if record.call_id not in self._unreadable:  # once per call, not every second
                        self._unreadable.add(record.call_id)
                        log.warn("cluster: the record of call {call_id} has no readable snapshot: {problem}",
                                 call_id=record.call_id, problem=str(e))
            # what events told since the read began is newer than what it read
            for call_id, (seq, entry) in list(self._touched.items()):
                if seq <= started:
                    del self._touched[call_id]
                elif entry is None:
                    remote.pop(call_id, None)
                else:
                    remote[call_id] = entry
            self.remote = remote

        def done(result):
            self._reading = False
            return result

        d = self.node.records.all().addBoth(done)
        d.addCallbacks(read, lambda f: f.trap(RedisError) and None).addErrback(
            lambda f: log.failure("cluster: reading the call records failed", f))

    def _remote_changed(self, call_id: str, entry: tuple[str, CallSnapshot] | None) -> None:
        """A remote call changed (``entry``) or ended (None), as an event or a routed command said."""
        self._seq += 1
        self._touched[call_id] = (self._seq, entry)
        if entry is None:
            self.remote.pop(call_id, None)
        else:
            self.remote[call_id] = entry

    # -- the node's callbacks -----------------------------------------------------------------

    def joined(self, node) -> None:
        """At every join (and after Redis lost its data): subscribe to the extensions' channels, write
        every live call's record again, remove the records of calls that ended meanwhile."""
        for extension in self.local.extensions:
            if extension not in self._subscribed:
                self._subscribed.add(extension)
                d = node.events.subscribe(extension, self._remote_event)

                def failed(f, extension=extension):
                    self._subscribed.discard(extension)
                    log.warn("cluster: cannot follow extension {extension}'s events: {problem}",
                             extension=extension, problem=f.getErrorMessage())

                d.addErrback(failed)
        self._written.clear()
        for snapshot in self.local.calls():
            self._put(snapshot)
        for call_id in list(self._unremoved):
            self._remove(call_id)

    def lost(self, node, error) -> None:
        log.error("cluster: this node lost its place ({problem}); its calls go on, and their records are "
                  "written again when it joins", problem=str(error))

    def handle(self, command: str, args: dict[str, typing.Any]) -> typing.Any:
        """Run a command routed here by another node (``CommandRouter``'s handler)."""
        if command == "drain":
            if args:
                raise InvalidArgument(f"drain: unknown arguments {sorted(args)}")
            return self._drain_here()
        spec = COMMANDS.get(command)
        if spec is None:
            raise InvalidArgument(f"no routed command {command!r}")
        if command == "originate" and self.draining:
            # sent here on a load figure from before the drain: no new call lands on a draining node
            raise IllegalState("originate", "draining", "node")
        positional, keywords = spec
        unknown = set(args) - set(positional) - set(keywords)
        if unknown:
            raise InvalidArgument(f"{command}: unknown arguments {sorted(unknown)}")
        try:
            call_args = [args[name] for name in positional]
        except KeyError as e:
            raise InvalidArgument(f"{command}: missing {e}") from None
        kwargs = {name: args[name] for name in keywords if name in args}
        for name, value in args.items():
            wanted = ARGUMENT_TYPES.get(name, str)
            if not isinstance(value, wanted) or isinstance(value, bool):
                kind = getattr(wanted, "__name__", "text") if wanted is not str else "text"
                raise InvalidArgument(f"{command}: {name} must be {kind}, not {type(value).__name__}")
        d = defer.maybeDeferred(getattr(self.local, command), *call_args, **kwargs)
        return d.addCallback(lambda result: snapshot_to_json(result) if isinstance(result, CallSnapshot) else None)

    def drain_node(self, node_id: str) -> defer.Deferred:
        """Start the drain of ``node_id`` (this node, or another one through its command channel);
        fires with ``{"node", "draining": True, "live_calls"}`` once it began, not when it ended
        (for ``gatewayctl drain NODE`` through the admin API of any node)."""
        if node_id == self.node_id:
            return defer.maybeDeferred(self._drain_here)
        if self.node is None:
            return defer.fail(OwnerUnreachable(f"node {node_id!r}: this node is not in a cluster"))
        return self.node.call(node_id, "drain", {}).addErrback(as_call_error)

    def _drain_here(self) -> dict[str, typing.Any]:
        if self.on_drain is None:
            raise IllegalState("drain", "not in a cluster", "node")
        self.on_drain().addErrback(lambda f: log.failure("cluster: the drain failed", f))
        return {"node": self.node_id, "draining": True, "live_calls": len(self.local.calls())}

    def end_lost_call(self, record: CallRecord) -> defer.Deferred:
        """The sweeper's ``on_node_lost``: the CDR of a dead node's call (cause ``node_lost``), written
        through the store; the extension's channel is told the call ended."""
        try:
            cdr = lost_cdr(record, self.clock.seconds())
        except (KeyError, TypeError, ValueError) as e:
            log.error("cluster: call {call_id} of dead node {owner} has no readable snapshot ({problem}); "
                      "no CDR can be made", call_id=record.call_id, owner=record.owner, problem=str(e))
            return defer.succeed(None)
        log.warn("cluster: writing the CDR of call {call_id} of dead node {owner} (node_lost)",
                 call_id=record.call_id, owner=record.owner)
        self.metrics.ended(str(Cause.NODE_LOST))
        self._remote_changed(record.call_id, None)
        if record.extension is not None and self.node is not None:
            snapshot = snapshot_from_json(record.data["snapshot"])
            ended = ev.CallEnded(call_id=record.call_id, extension=record.extension, at=self.clock.seconds(),
                                 cause=str(Cause.NODE_LOST), hangup_by="cluster", cdr=cdr)
            final = attrs.evolve(snapshot, state=LegState.RELEASED, ended_at=self.clock.seconds(),
                                 cause=str(Cause.NODE_LOST), hangup_by="cluster", parties=())
            self._deliver_remote(ended, final)
            self._publish(ended, final)
        if self.store is None:
            return defer.succeed(None)

        def refused(failure):
            failure.trap(ValueError)  # already stored (another survivor, an earlier sweep): done
            log.info("cluster: the CDR of call {call_id} was there already: {problem}",
                     call_id=record.call_id, problem=failure.getErrorMessage())

        return defer.maybeDeferred(self.store.add_cdr, cdr).addErrback(refused)

    # -- local events: records and the extension channels -------------------------------------

    def _local_event(self, event: ev.CallEvent, snapshot: CallSnapshot) -> None:
        if isinstance(event, ev.CallEnded):
            self._written.pop(event.call_id, None)
            self._remove(event.call_id)
        elif self._written.get(event.call_id) is not snapshot:
            self._written[event.call_id] = snapshot
            self._put(snapshot)
        self._publish(event, snapshot)

    def _put(self, snapshot: CallSnapshot) -> None:
        if self.node is None or not self.node.heartbeat.alive:
            return  # written when the node joins
        d = self.node.records.put(record_of(snapshot, self.node_id, self.clock.seconds()))
        d.addCallbacks(self._wrote, self._write_failed, errbackArgs=(snapshot.call_id,))

    def _wrote(self, _):
        if self._write_logged:
            self._write_logged = False
            log.info("cluster: call records are written again")

    def _write_failed(self, failure: Failure, call_id: str) -> None:
        self._write_failing = True
        if not self._write_logged:
            self._write_logged = True
            log.warn("cluster: the record of call {call_id} was not written: {problem} (every live call is "
                     "written again once redis answers)", call_id=call_id, problem=failure.getErrorMessage())

    def _remove(self, call_id: str) -> None:
        if self.node is None:
            return
        if call_id in self._removing:
            return
        self._unremoved.add(call_id)
        self._removing.add(call_id)
        d = self.node.records.remove(call_id)
        d.addCallbacks(lambda _: self._unremoved.discard(call_id), lambda f: None)
        d.addBoth(lambda _: self._removing.discard(call_id))

    def _publish(self, event: ev.CallEvent, snapshot: CallSnapshot) -> None:
        if event.extension is None or self.node is None or not self.node.redis.connected:
            return
        message = {"event": _plain(event.to_dict()), "call": snapshot_to_json(snapshot)}
        self.node.events.publish(event.extension, message).addErrback(
            lambda f: log.debug("cluster: event of call {call_id} not published: {problem}",
                                call_id=event.call_id, problem=f.getErrorMessage()))

    # -- remote events ------------------------------------------------------------------------

    def _remote_event(self, extension: str, origin: str, message: dict[str, typing.Any]) -> None:
        if origin == self.node_id:
            return
        try:
            event = event_from_json(message["event"])
            snapshot = snapshot_from_json(message["call"])
        except (KeyError, TypeError, ValueError) as e:
            log.warn("cluster: an event from node {node} on extension {extension} is unreadable: {problem}; dropped",
                     node=origin, extension=extension, problem=str(e))
            return
        if self.local_has(event.call_id):
            return
        self._remote_changed(event.call_id, None if isinstance(event, ev.CallEnded) else (origin, snapshot))
        self._deliver_remote(event, snapshot)

    def _deliver_remote(self, event: ev.CallEvent, snapshot: CallSnapshot) -> None:
        for callback, extension in list(self._observers):
            if extension is not None and extension != event.extension:
                continue
            try:
                callback(event, snapshot)
            except Exception:
                log.failure("observer {observer!r} failed on remote {event} of call {call_id}",
                            observer=callback, event=event.type, call_id=event.call_id)

    # -- ICallControl: queries ----------------------------------------------------------------

    @property
    def extensions(self) -> list[str]:
        return self.local.extensions

    def local_has(self, call_id: str) -> bool:
        try:
            self.local.call(call_id)
            return True
        except UnknownCall:
            return False

    def _remote_snapshots(self) -> list[CallSnapshot]:
        return [snap for call_id, (_, snap) in self.remote.items() if not self.local_has(call_id)]

    def calls(self, include_released: bool = False) -> list[CallSnapshot]:
        found = self.local.calls(include_released) + [
            s for s in self._remote_snapshots() if include_released or s.state is not LegState.RELEASED
        ]
        return sorted(found, key=lambda s: s.created_at)

    def call(self, call_id: str) -> CallSnapshot:
        try:
            return self.local.call(call_id)
        except UnknownCall:
            entry = self.remote.get(call_id)
            if entry is None:
                raise
            return entry[1]

    def calls_for(self, extension_id: str) -> list[CallSnapshot]:
        found = self.local.calls_for(extension_id) + [
            s for s in self._remote_snapshots() if s.extension == extension_id
        ]
        return sorted(found, key=lambda s: s.created_at)

    def active_call_for(self, extension_id: str) -> CallSnapshot | None:
        found = self.local.active_call_for(extension_id)
        if found is not None:
            return found
        return next((s for s in self._remote_snapshots()
                     if s.extension == extension_id and s.state is not LegState.RELEASED), None)

    def status(self) -> dict[str, typing.Any]:
        status = dict(self.local.status())
        status["remote_calls"] = len(self._remote_snapshots())
        return status

    def leg_states(self):
        return self.local.leg_states()

    def subscribe(self, callback, extension: str | None = None) -> typing.Callable[[], None]:
        unsubscribe_local = self.local.subscribe(callback, extension)
        entry = (callback, extension)
        self._observers.append(entry)

        def unsubscribe() -> None:
            unsubscribe_local()
            if entry in self._observers:
                self._observers.remove(entry)

        return unsubscribe

    # -- IInboundCalls (the drivers' door: always this node) ---------------------------------

    def incoming(self, driver_leg, *, caller_id, did, attributes=None):
        return self.local.incoming(driver_leg, caller_id=caller_id, did=did, attributes=attributes)

    def __getattr__(self, name: str) -> typing.Any:
        # anything else of the registry (app_finished, shutdown, ...) is the local registry's
        if name.startswith("__") or name == "local":
            raise AttributeError(name)
        return getattr(self.local, name)

    # -- ICallControl: commands ---------------------------------------------------------------

    def _run(self, command: str, call_id: str, *args: typing.Any, **kwargs: typing.Any) -> defer.Deferred:
        if self.local_has(call_id):
            return defer.maybeDeferred(getattr(self.local, command), call_id, *args, **kwargs)
        positional = COMMANDS[command][0]
        routed = {"call_id": call_id, **dict(zip(positional[1:], args)), **kwargs}
        return self._owner(call_id).addCallback(lambda owner: self._routed(owner, command, routed))

    def _owner(self, call_id: str) -> defer.Deferred:
        entry = self.remote.get(call_id)
        if entry is not None:
            return defer.succeed(entry[0])
        if self.node is None:
            return defer.fail(UnknownCall(call_id))

        def found(record: CallRecord | None) -> str:
            if record is None:
                raise UnknownCall(call_id)
            return record.owner

        return self.node.records.get(call_id).addCallbacks(found, as_call_error)

    def _routed(self, owner: str, command: str, args: dict[str, typing.Any]) -> defer.Deferred:
        d = self.node.call(owner, command, args)
        self.metrics.routed(d, command, self.clock)

        def done(result: typing.Any) -> CallSnapshot | None:
            if result is None:
                if command == "dispose":
                    self._remote_changed(args["call_id"], None)
                return None
            snapshot = snapshot_from_json(result)
            if snapshot.state is LegState.RELEASED:
                self._remote_changed(snapshot.call_id, None)
            else:
                self._remote_changed(snapshot.call_id, (owner, snapshot))
            return snapshot

        return d.addCallbacks(done, as_call_error)

    def originate(self, extension_id, number, *, attributes=None, if_busy="refuse", by="api") -> defer.Deferred:
        return defer.ensureDeferred(self._originate(extension_id, number, attributes, if_busy, by))

    async def _originate(self, extension_id, number, attributes, if_busy, by):
        kwargs = {"attributes": dict(attributes or {}), "if_busy": if_busy, "by": by}
        current = self._remote_active(extension_id)
        if current is not None:
            if if_busy == "refuse":
                raise ExtensionBusy(extension_id, current.call_id)
            if if_busy == "replace":
                await self.hangup(current.call_id, by=by)
        target = await self._origination_node()
        if target is None and self.draining:
            raise IllegalState("originate", "draining, and no other node can be reached", "node")
        if target is None or target == self.node_id:
            return await defer.maybeDeferred(self.local.originate, extension_id, number, **kwargs)
        if self.local.active_call_for(extension_id) is not None:
            if if_busy == "refuse":
                raise ExtensionBusy(extension_id, self.local.active_call_for(extension_id).call_id)
            if if_busy == "replace":
                await defer.maybeDeferred(self.local.hangup, self.local.active_call_for(extension_id).call_id, by=by)
        log.info("cluster: originate for extension {extension} runs on node {node}", extension=extension_id, node=target)
        return await self._routed(target, "originate", {"extension_id": extension_id, "number": number, **kwargs})

    def busy_elsewhere(self, extension_id: str) -> str | None:
        """The id of a live call of another node the extension is in (its own, or its phone as a
        party), or None: the registry's ``busy_elsewhere`` hook."""
        for snapshot in self._remote_snapshots():
            if snapshot.state is LegState.RELEASED:
                continue
            if snapshot.extension == extension_id or any(
                leg.state is not LegState.RELEASED and leg.attributes.get("extension") == extension_id
                for leg in snapshot.legs
            ):
                return snapshot.call_id
        return None

    def _remote_active(self, extension_id: str) -> CallSnapshot | None:
        return next((s for s in self._remote_snapshots()
                     if s.extension == extension_id and s.state is not LegState.RELEASED), None)

    async def _origination_node(self) -> str | None:
        """The least loaded node that is not draining (None: here, when the cluster cannot say)."""
        if self.node is None:
            return None
        try:
            nodes = await self.node.registry.nodes()
        except RedisError as e:
            log.warn("cluster: cannot choose where to originate ({problem}); here", problem=str(e))
            return None
        chosen = least_loaded(nodes)
        return chosen.node if chosen is not None else None

    def answer(self, call_id):
        return self._run("answer", call_id)

    def reject(self, call_id, *, by="api"):
        return self._run("reject", call_id, by=by)

    def cancel(self, call_id, *, by="api"):
        return self._run("cancel", call_id, by=by)

    def hangup(self, call_id, *, by="api"):
        return self._run("hangup", call_id, by=by)

    def hold(self, call_id):
        return self._run("hold", call_id)

    def retrieve(self, call_id):
        return self._run("retrieve", call_id)

    def mute(self, call_id):
        return self._run("mute", call_id)

    def unmute(self, call_id):
        return self._run("unmute", call_id)

    def transfer(self, call_id, destination, *, by="api"):
        return self._run("transfer", call_id, destination, by=by)

    def conference(self, call_id, destination, *, by="api"):
        return self._run("conference", call_id, destination, by=by)

    def consult(self, call_id, number, *, by="api"):
        return self._run("consult", call_id, number, by=by)

    def alternate(self, call_id, *, by="api"):
        return self._run("alternate", call_id, by=by)

    def transfer_to_consult(self, call_id, *, by="api"):
        return self._run("transfer_to_consult", call_id, by=by)

    def conference_in_consult(self, call_id, *, by="api"):
        return self._run("conference_in_consult", call_id, by=by)

    def remove_party(self, call_id, number, *, by="api"):
        return self._run("remove_party", call_id, number, by=by)

    def send_dtmf(self, call_id, digits, duration_ms=100, gap_ms=50):
        return self._run("send_dtmf", call_id, digits, duration_ms, gap_ms)

    def flush(self, call_id):
        return self._run("flush", call_id)

    def dispose(self, call_id, *, by="api"):
        return self._run("dispose", call_id, by=by)


class _Metrics:
    """``gateway_cluster_routed_commands_total{command,outcome}``, ``gateway_cluster_routed_command_seconds``,
    ``gateway_cluster_calls_ended_total{cause}`` (node_lost by this survivor, drain_forced here) and
    ``gateway_cluster_remote_calls``; nothing when ``registry`` is None."""

    def __init__(self, registry, control: "ClusterControl"):
        self._routed = self._seconds = self._ended = None
        if registry is None:
            return
        from prometheus_client import Counter, Gauge, Histogram

        from gateway.metrics import define_metric

        self._routed = define_metric(registry, Counter, "cluster_routed_commands",
                                     "Commands sent to the node owning the call, by command and outcome "
                                     "(ok or the error code).", ["command", "outcome"])
        self._seconds = define_metric(registry, Histogram, "cluster_routed_command_seconds",
                                      "Time from sending a routed command to its owner's answer.",
                                      buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0))
        self._ended = define_metric(registry, Counter, "cluster_calls_ended",
                                    "Calls ended by the cluster: node_lost (a dead node's call, by this survivor) "
                                    "and drain_forced (still up at this node's drain timeout).", ["cause"])
        define_metric(registry, Gauge, "cluster_remote_calls",
                      "Calls of other nodes this node sees.").set_function(lambda: len(control.remote))

    def routed(self, d: defer.Deferred, command: str, clock) -> None:
        """Count ``d`` (a routed command's Deferred) when it fires, and time it on ``clock``."""
        if self._routed is None:
            return
        sent = clock.seconds()

        def done(result):
            outcome = "ok"
            if isinstance(result, Failure):
                outcome = getattr(as_call_error(result).value, "code", "error")
            self._routed.labels(command=command, outcome=outcome).inc()
            self._seconds.observe(max(0.0, clock.seconds() - sent))
            return result

        d.addBoth(done)

    def ended(self, cause: str) -> None:
        if self._ended is not None:
            self._ended.labels(cause=cause).inc()


# -- drain ----------------------------------------------------------------------------------------


class ClusterDrain:
    """This node's drain (SIGTERM, or ``ctx.drain()`` from the admin API / gatewayctl).

    :meth:`drain` marks the node draining (``/readyz`` false through the ``cluster`` component, the
    registry entry's ``draining`` flag so originations go elsewhere, singleton links released),
    sets ``ctx.draining`` (the OptimaCCS listener refuses new connections with 1013), lets the live
    calls go on until ``timeout`` seconds, then ends the rest with cause ``drain_forced``. Fires
    once no local call is live. Calling it again returns the same outcome.
    """

    def __init__(self, clock, control: ClusterControl, node, timeout: float, ctx=None):
        self.clock = clock
        self.control = control
        self.node = node
        self.timeout = timeout
        self.ctx = ctx
        self.done: defer.Deferred | None = None
        self._waiting: list[defer.Deferred] = []
        self._timer = None
        self._unsubscribe = None
        self.forced = 0

    @property
    def draining(self) -> bool:
        return self.done is not None

    def drain(self) -> defer.Deferred:
        if self.done is None:
            self.done = defer.Deferred()
            self.control.draining = True
            if self.ctx is not None:
                self.ctx.draining = True
            live = len(self.control.local.calls())
            log.info("cluster: node {node} is draining: no new calls; {live} live call(s) get {timeout} s",
                     node=self.control.node_id, live=live, timeout=self.timeout)
            if self.control.running:
                self.control._tick()  # /readyz false now, not at the next tick
            if self.node is not None:
                self.node.drain().addErrback(lambda f: log.warn("cluster: announcing the drain failed: {problem}",
                                                                problem=f.getErrorMessage()))
            self._unsubscribe = self.control.local.subscribe(self._event)
            self._timer = self.clock.callLater(self.timeout, self._force)
            self._check()
        d: defer.Deferred = defer.Deferred()
        if self.done.called:
            d.callback(self.forced)
        else:
            self._waiting.append(d)
        return d

    def _event(self, event, snapshot) -> None:
        if isinstance(event, ev.CallEnded):
            self._check()

    def _force(self) -> None:
        self._timer = None
        # counted first: the calls' CallEnded reach _check (and fire done) before end_live_calls returns
        self.forced = len(self.control.local.calls())
        for _ in range(self.forced):
            self.control.metrics.ended(str(Cause.DRAIN_FORCED))
        self.control.local.end_live_calls(Cause.DRAIN_FORCED)
        if self.forced:
            log.warn("cluster: drain timeout ({timeout} s): {count} call(s) ended with cause drain_forced",
                     timeout=self.timeout, count=self.forced)
        self._check()

    def _check(self) -> None:
        if self.done is None or self.done.called:
            return
        if any(s.state is not LegState.RELEASED for s in self.control.local.calls()):
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        log.info("cluster: node {node} is drained ({forced} call(s) forced)", node=self.control.node_id, forced=self.forced)
        self.done.callback(self.forced)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self.forced)

    def cancel(self) -> None:
        """Stop the timer (the daemon is stopping anyway)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def build_cluster(ctx, registry) -> tuple[ClusterControl, typing.Any, ClusterDrain]:
    """The cluster parts of the daemon for ``ctx.config.cluster`` over the core's ``registry``: the
    :class:`ClusterControl` (the adapters' ICallControl), the :class:`ClusterNode` (node id ``[gateway]
    node``) and the :class:`ClusterDrain`; sets ``ctx.cluster`` and ``ctx.drain``."""
    from gateway.cluster.node import ClusterNode

    config = ctx.config
    node_id = config.gateway.node
    control = ClusterControl(ctx.reactor, registry, node_id, store=ctx.store, readiness=ctx.readiness,
                             metrics=ctx.metrics)
    node = ClusterNode(
        ctx.reactor, config.cluster, node_id,
        handler=control.handle,
        on_node_lost=control.end_lost_call,
        load=lambda: {"calls": float(registry.status()["live_calls"])},
        meta={"admin": str(config.admin.listen)},
        on_joined=control.joined,
        on_lost=control.lost,
        error_types=ERROR_TYPES,
        metrics=ctx.metrics,
    )
    control.attach(node)
    registry.busy_elsewhere = control.busy_elsewhere
    drain = ClusterDrain(ctx.reactor, control, node, config.cluster.drain_timeout, ctx)
    control.on_drain = drain.drain
    ctx.cluster = node
    ctx.drain = drain.drain
    return control, node, drain
