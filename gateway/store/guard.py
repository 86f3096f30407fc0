"""The store as the daemon uses it: no record lost for its content, none lost while the disk is away.

:class:`GuardedStore` wraps a backend (:class:`~gateway.store.SqliteCdrStore`,
:class:`~gateway.store.MemoryCdrStore`) and provides the same interfaces. It adds two things:

- **Content.** A record the backend would refuse for what it holds (a string with a lone
  UTF-16 surrogate, which no UTF-8 database can encode; a NUL character, which PostgreSQL's text
  cannot hold; a NaN or infinite number, which JSON cannot hold; a value that is not JSON at all)
  is stored as the sanitised copy :func:`gateway.boundary.sanitise` makes: the surrogate visibly
  escaped (``\\ud800``), the NUL as ``\\u0000``, the number as the string
  ``"NaN"``/``"Infinity"``, another value as its ``repr``. It is logged once
  (kind and id) and counted in ``gateway_store_records_sanitised_total{kind}``.
- **Faults.** SMS and conversation writes go through a bounded
  :class:`~gateway.core.cdr.RetryingSink` each (CDRs and provider CDRs go through the call
  registry's own, given :attr:`GuardedStore.queue_options`): while the database cannot be written
  (read-only, full, locked) they wait in arrival order and the oldest is retried with backoff;
  the caller's Deferred fires once the record is durably stored. At most ``pending_max`` wait
  per kind; one more is logged in full at critical level, counted, and refused
  (:class:`~gateway.core.cdr.NotWritten`) — for an SMS that is an error to the peer, who still
  holds it.

:class:`StoreHealth` is the sinks' observer: it counts
``gateway_store_write_failures_total{kind}``, ``gateway_store_records_not_written_total{kind,reason}``,
shows ``gateway_store_pending{kind}``, and holds the readiness component ``store`` down (reason:
the database's error) from the first failed write until the store answers again: a write goes
through, or a record is refused for what it is (a duplicate, say: the answer to a retried write
whose commit was lost).
"""

from __future__ import annotations

import collections
import json
import typing

import attrs
from prometheus_client import Counter, Gauge
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.boundary import sanitise
from gateway.core.cdr import PENDING_MAX, RETRY_DELAYS, RetryingSink
from gateway.metrics import define_metric
from gateway.store.interfaces import ICdrStore, ISmsStore
from gateway.store.records import TEXT_COLUMNS
from gateway.store.sms import ConversationRecord, SmsRecord

__all__ = ["KINDS", "GuardedStore", "StoreHealth", "store_safe"]

log = Logger()

#: a RetryingSink's ``what`` -> the ``kind`` label of the store's metrics
KINDS = {"CDR": "cdr", "provider CDR": "provider_cdr", "SMS": "sms", "conversation": "conversation"}

#: how many (kind, id) a GuardedStore remembers having logged as sanitised (a retried record is logged once)
_REMEMBERED = 1024


def store_safe(value: typing.Any) -> tuple[typing.Any, bool]:
    """``(copy any store takes, whether it had to change)``: :func:`~gateway.boundary.sanitise`, then
    anything still not JSON as its ``repr``, then a NUL character (PostgreSQL's text cannot hold it)
    as its visible escape ``\\u0000``."""
    copy, changed = sanitise(value)
    try:
        json.dumps(copy, allow_nan=False)
    except (TypeError, ValueError):
        copy, changed = json.loads(json.dumps(copy, default=repr)), True
    if _has_nul(copy):
        copy, changed = _without_nul(copy), True
    return copy, changed


def _has_nul(item) -> bool:
    if isinstance(item, str):
        return "\x00" in item
    if isinstance(item, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in item.items())
    if isinstance(item, list):
        return any(_has_nul(v) for v in item)
    return False


def _without_nul(item):
    if isinstance(item, str):
        return item.replace("\x00", "\\u0000")
    if isinstance(item, dict):
        return {_without_nul(k): _without_nul(v) for k, v in item.items()}
    if isinstance(item, list):
        return [_without_nul(v) for v in item]
    return item


class StoreHealth:
    """Metrics and readiness of the store's writes; the observer of every RetryingSink writing to it.

    :param registry: the Prometheus registry (``ctx.metrics``), or None.
    :param component: the readiness component ``store`` (``gateway.context.Component``), or None.
    """

    def __init__(self, registry=None, component=None):
        self.component = component
        self._sinks: dict[str, typing.Any] = {}
        self._failures = self._not_written = self._sanitised = self._pending = None
        if registry is not None:
            self._failures = define_metric(registry, Counter, "store_write_failures",
                                           "Store writes that failed (each attempt), by record kind.", ["kind"])
            self._not_written = define_metric(
                registry, Counter, "store_records_not_written",
                "Records given up and logged in full instead: refused as malformed or duplicate (refused), "
                "the pending queue full (overflow), still failing at stop (shutdown).", ["kind", "reason"])
            self._sanitised = define_metric(registry, Counter, "store_records_sanitised",
                                            "Records stored as a sanitised copy (lone surrogates escaped, "
                                            "non-finite numbers as text), by kind.", ["kind"])
            self._pending = define_metric(registry, Gauge, "store_pending",
                                          "Records waiting to be written to the store, by kind.", ["kind"])

    def opened(self) -> None:
        if self.component is not None:
            self.component.set_up()

    def open_failed(self, error: str) -> None:
        if self.component is not None:
            self.component.set_down(error)

    # -- a RetryingSink's observer ----------------------------------------------------------

    def watch(self, what: str, sink) -> None:
        self._sinks[what] = sink
        if self._pending is not None:
            self._pending.labels(kind=KINDS.get(what, what)).set_function(lambda: sink.pending)

    def attempt_failed(self, what: str, error: str) -> None:
        if self._failures is not None:
            self._failures.labels(kind=KINDS.get(what, what)).inc()
        if self.component is not None:
            self.component.set_down(error)

    def written(self, what: str) -> None:
        self._answered()

    def not_written(self, what: str, reason: str) -> None:
        if self._not_written is not None:
            self._not_written.labels(kind=KINDS.get(what, what), reason=reason).inc()
        if reason == "refused":  # the store answered (a duplicate, a malformed record): it works
            self._answered()

    def _answered(self) -> None:
        if self.component is not None and not self.component.up and not any(s.down for s in self._sinks.values()):
            self.component.set_up()

    # -- content ------------------------------------------------------------------------------

    def sanitised(self, kind: str) -> None:
        if self._sanitised is not None:
            self._sanitised.labels(kind=kind).inc()


@attrs.frozen
class _Write:
    """One SMS or conversation write waiting in a queue: ``operation(*args)`` on the backend."""

    operation: str
    record_id: str
    args: tuple

    def __str__(self) -> str:
        return f"{self.record_id} ({self.operation})"


@implementer(ICdrStore, ISmsStore)
class GuardedStore:
    """``backend`` with sanitised records and queued, retried SMS and conversation writes (see the module).

    :param clock: ``IReactorTime`` for the retries.
    :param health: a :class:`StoreHealth` (a bare one, counting nothing, when None).
    :param pending_max: records each queue keeps while the store cannot be written (``[store] pending_max``).
    :param delays: seconds between retries of the oldest waiting record; the last one repeats.
    """

    def __init__(self, backend, clock, *, health: StoreHealth | None = None, pending_max: int = PENDING_MAX,
                 delays=RETRY_DELAYS):
        self.backend = backend
        self.health = health if health is not None else StoreHealth()
        self.pending_max = pending_max
        self.delays = tuple(delays)
        self._logged: collections.OrderedDict = collections.OrderedDict()
        options = self.queue_options
        # one write at a time, in order: an SMS's seq orders its number's messages, and a
        # conversation's close must not overtake its save
        self._sms = RetryingSink(clock, self._perform, "SMS", ordered=True, **options)
        self._conversations = RetryingSink(clock, self._perform, "conversation", ordered=True, **options)

    def __repr__(self) -> str:
        return f"<GuardedStore {self.backend!r}>"

    @property
    def path(self):
        return getattr(self.backend, "path", None)

    @property
    def queue_options(self) -> dict:
        """What the call registry gives its CDR queues (:class:`~gateway.core.cdr.RetryingSink`)."""
        return {"pending_max": self.pending_max, "observer": self.health, "delays": self.delays}

    def open(self) -> defer.Deferred:
        # a backend that keeps trying to open in the background (PostgreSQL, while its server cannot be
        # reached) reports each attempt to the health itself, and its open() fires after the first
        watch = getattr(self.backend, "watch_availability", None)
        if watch is not None:
            watch(self.health)

        def opened(result):
            if getattr(self.backend, "is_open", True):
                self.health.opened()
            return result

        def failed(failure):
            self.health.open_failed(failure.getErrorMessage())
            return failure

        return self.backend.open().addCallbacks(opened, failed)

    def stop_retrying(self) -> defer.Deferred:
        """The daemon is stopping: waiting writes get one more try now, later ones one try each (a
        failure is logged in full), so nothing waits for a store that may not come back."""
        return defer.DeferredList([self._sms.close(), self._conversations.close()]).addCallback(lambda _: None)

    def close(self) -> defer.Deferred:
        d = self.stop_retrying()
        d.addCallback(lambda _: self.backend.close())
        return d

    # -- content ------------------------------------------------------------------------------

    def _safe(self, kind: str, record_id, value):
        """``value`` as the backend can store it (logged once and counted when it had to change)."""
        copy, changed = store_safe(value)
        if changed:
            key = (kind, str(record_id))
            if key not in self._logged:
                self._logged[key] = None
                if len(self._logged) > _REMEMBERED:
                    self._logged.popitem(last=False)
                self.health.sanitised(kind)
                log.warn(
                    "{kind} {record_id} holds what the store cannot take (a lone surrogate, a non-finite number "
                    "or a non-JSON value): a sanitised copy is stored, the original visibly escaped",
                    kind=kind, record_id=copy_id(record_id),
                )
        return copy

    def _safe_record(self, kind: str, record_id, record):
        values = attrs.asdict(record, recurse=False)
        safe = self._safe(kind, record_id, values)
        return record if safe == values else attrs.evolve(record, **safe)

    # -- ICdrStore -------------------------------------------------------------------------

    def add_cdr(self, cdr) -> defer.Deferred:
        if isinstance(cdr, dict):
            odd = [key for key in TEXT_COLUMNS if cdr.get(key) is not None and not isinstance(cdr[key], str)]
            if odd:  # an indexed text column that is no text: kept as its JSON text (sanitised below)
                cdr = {**cdr, **{key: json.dumps(cdr[key], ensure_ascii=False, default=repr) for key in odd}}
            cdr = self._safe("cdr", cdr.get("call_id"), cdr)
            if odd and cdr.get("call_id") is not None:
                self._column_changed(cdr.get("call_id"), odd)
        return self.backend.add_cdr(cdr)

    def _column_changed(self, call_id, columns: list[str]) -> None:
        self.health.sanitised("cdr")
        log.warn("cdr {record_id}: {columns} held no text; stored as its JSON text", record_id=copy_id(call_id),
                 columns=", ".join(columns))

    def attach_provider_cdr(self, call_id, source, data) -> defer.Deferred:
        call_id, source, data = self._safe("provider_cdr", call_id, [call_id, source, data])
        return self.backend.attach_provider_cdr(call_id, source, data)

    def cdrs(self, since=None, limit=100) -> defer.Deferred:
        return self.backend.cdrs(since=since, limit=limit)

    def recent_cdrs(self, limit=10) -> defer.Deferred:
        return self.backend.recent_cdrs(limit)

    def cdr(self, call_id) -> defer.Deferred:
        return self.backend.cdr(call_id)

    # -- ISmsStore -------------------------------------------------------------------------

    def _perform(self, write: _Write) -> defer.Deferred:
        return getattr(self.backend, write.operation)(*write.args)

    def add_sms(self, record) -> defer.Deferred:
        if isinstance(record, SmsRecord):
            record = self._safe_record("sms", record.uid, record)
        return self._sms.submit(_Write("add_sms", str(getattr(record, "uid", "?")), (record,)))

    def sms_attempt_failed(self, seq, error) -> defer.Deferred:
        error = self._safe("sms", seq, error)
        return self._sms.submit(_Write("sms_attempt_failed", f"seq {seq}", (seq, error)))

    def finish_sms(self, seq, status, finished_at, conversation_id=None, error=None) -> defer.Deferred:
        args = tuple(self._safe("sms", seq, [seq, status, finished_at, conversation_id, error]))
        return self._sms.submit(_Write("finish_sms", f"seq {seq}", args))

    def pending_sms(self) -> defer.Deferred:
        return self.backend.pending_sms()

    def list_sms(self, direction=None, number=None, after=0, limit=100) -> defer.Deferred:
        return self.backend.list_sms(direction=direction, number=number, after=after, limit=limit)

    def save_conversation(self, record) -> defer.Deferred:
        if isinstance(record, ConversationRecord):
            record = self._safe_record("conversation", record.conversation_id, record)
        name = str(getattr(record, "conversation_id", "?"))
        return self._conversations.submit(_Write("save_conversation", name, (record,)))

    def close_conversation(self, conversation_id, closed_at, reason) -> defer.Deferred:
        args = tuple(self._safe("conversation", conversation_id, [conversation_id, closed_at, reason]))
        return self._conversations.submit(_Write("close_conversation", str(args[0]), args))

    def open_conversations(self) -> defer.Deferred:
        return self.backend.open_conversations()


def copy_id(record_id) -> str:
    """A record id fit for a log line (a lone surrogate escaped)."""
    return sanitise(str(record_id))[0]
