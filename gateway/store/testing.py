"""The store's shipped fake: an in-memory :class:`ICdrStore` and :class:`ISmsStore` for tests of other rooms
and plugins: same checks, same answers, no disk.

It keeps rows exactly as the SQLite store does (so a test sees the same
errors and the same returned dicts) and answers with already-fired
Deferreds. ``clock`` (a ``task.Clock`` in tests) stamps provider CDRs.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, execute, fail, succeed
from zope.interface import implementer

from gateway.store.interfaces import DuplicateCdr, ICdrStore, ISmsStore, StoreUnavailable
from gateway.store.records import (
    CdrRow,
    ProviderRow,
    check_limit,
    decode_cdr,
    encode_cdr,
    encode_provider_cdr,
    query_bounds,
)
from gateway.store.sms import (
    ConversationRecord,
    SmsRecord,
    check_conversation,
    check_finish,
    check_query,
    check_sms,
    matches,
)

__all__ = ["MemoryCdrStore"]


@implementer(ICdrStore, ISmsStore)
class MemoryCdrStore:
    def __init__(self, clock):
        self._clock = clock
        self._cdrs: dict[str, CdrRow] = {}
        self._providers: list[ProviderRow] = []
        #: seq -> record, in seq order
        self._sms: dict[int, SmsRecord] = {}
        self._conversations: dict[str, ConversationRecord] = {}
        self.closed = False

    def open(self) -> Deferred:
        return succeed(None)

    def add_cdr(self, cdr: dict) -> Deferred:
        return self._run(lambda: self._add(encode_cdr(cdr)))

    def attach_provider_cdr(self, call_id: str, source: str, data: dict) -> Deferred:
        now = self._clock.seconds()
        return self._run(lambda: self._providers.append(encode_provider_cdr(call_id, source, data, now)))

    def cdrs(self, since: str | None = None, limit: int = 100) -> Deferred:
        return self._run(lambda: self._select(*query_bounds(since, limit)))

    def recent_cdrs(self, limit: int = 10) -> Deferred:
        return self._run(lambda: self._newest(check_limit(limit)))

    def cdr(self, call_id: str) -> Deferred:
        return self._run(lambda: self._get(call_id))

    def add_sms(self, record: SmsRecord) -> Deferred:
        return self._run(lambda: self._add_sms(check_sms(record)))

    def pending_sms(self) -> Deferred:
        return self._run(lambda: [r for r in self._sms.values() if r.status == "pending"])

    def sms_attempt_failed(self, seq: int, error: str) -> Deferred:
        return self._run(lambda: self._attempt_failed(seq, error))

    def finish_sms(self, seq: int, status: str, finished_at: str, conversation_id=None, error=None) -> Deferred:
        return self._run(lambda: self._finish(seq, check_finish(status), finished_at, conversation_id, error))

    def list_sms(self, direction=None, number=None, after: int = 0, limit: int = 100) -> Deferred:
        def select():
            capped = check_query(direction, number, after, limit)
            return [r for r in self._sms.values() if matches(r, direction, number, after)][:capped]

        return self._run(select)

    def save_conversation(self, record: ConversationRecord) -> Deferred:
        return self._run(lambda: self._save_conversation(check_conversation(record)))

    def close_conversation(self, conversation_id: str, closed_at: str, reason: str) -> Deferred:
        return self._run(lambda: self._close_conversation(conversation_id, closed_at, reason))

    def open_conversations(self) -> Deferred:
        return self._run(lambda: [c for c in self._conversations.values() if c.status == "open"])

    def close(self) -> Deferred:
        self.closed = True
        return succeed(None)

    def _run(self, operation) -> Deferred:
        if self.closed:
            return fail(StoreUnavailable("the store is closed"))
        return execute(operation)

    def _add(self, row: CdrRow) -> None:
        if row.call_id in self._cdrs:
            raise DuplicateCdr(f"a CDR for call {row.call_id!r} is stored already")
        self._cdrs[row.call_id] = row

    def _ordered(self) -> list[CdrRow]:
        """Every CDR row in the stores' order: by end time, then call id."""
        return sorted(self._cdrs.values(), key=lambda r: (r.ended_at, r.call_id))

    def _select(self, since: str, limit: int) -> list[dict]:
        rows = [r for r in self._ordered() if r.ended_at >= since]
        return [self._decode(row) for row in rows[:limit]]

    def _newest(self, limit: int) -> list[dict]:
        return [self._decode(row) for row in self._ordered()[::-1][:limit]]

    def _get(self, call_id: str) -> dict | None:
        row = self._cdrs.get(call_id)
        return None if row is None else self._decode(row)

    def _decode(self, row: CdrRow) -> dict:
        return decode_cdr(row.document, [p for p in self._providers if p.call_id == row.call_id])

    def _add_sms(self, record: SmsRecord) -> tuple[SmsRecord, bool]:
        for existing in self._sms.values():
            if existing.uid == record.uid or (
                record.external_id is not None and (existing.direction, existing.external_id) == (record.direction, record.external_id)
            ):
                return existing, False
        stored = attrs.evolve(record, seq=max(self._sms, default=0) + 1)
        self._sms[stored.seq] = stored
        return stored, True

    def _attempt_failed(self, seq: int, error: str) -> None:
        record = self._sms.get(seq)
        if record is not None:
            self._sms[seq] = attrs.evolve(record, attempts=record.attempts + 1, last_error=error)

    def _finish(self, seq: int, status: str, finished_at: str, conversation_id, error) -> bool:
        record = self._sms.get(seq)
        if record is None or record.status != "pending":
            return False
        self._sms[seq] = attrs.evolve(
            record,
            status=status,
            finished_at=finished_at,
            conversation_id=record.conversation_id if conversation_id is None else conversation_id,
            last_error=record.last_error if error is None else error,
        )
        return True

    def _save_conversation(self, record: ConversationRecord) -> None:
        for other in list(self._conversations.values()):
            if other.number == record.number and other.status == "open" and other.conversation_id != record.conversation_id:
                self._close_conversation(other.conversation_id, record.opened_at, "replaced")
        self._conversations.pop(record.conversation_id, None)
        self._conversations[record.conversation_id] = record

    def _close_conversation(self, conversation_id: str, closed_at: str, reason: str) -> bool:
        record = self._conversations.get(conversation_id)
        if record is None or record.status != "open":
            return False
        self._conversations[conversation_id] = attrs.evolve(record, status="closed", closed_at=closed_at, close_reason=reason)
        return True
