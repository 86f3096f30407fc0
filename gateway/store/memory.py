"""An in-memory :class:`ICdrStore` for tests of other rooms: same checks, same answers, no disk.

It keeps rows exactly as the SQLite store does (so a test sees the same
errors and the same returned dicts) and answers with already-fired
Deferreds. ``clock`` (a ``task.Clock`` in tests) stamps provider CDRs.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, execute, fail, succeed
from zope.interface import implementer

from gateway.store.interfaces import DuplicateCdr, ICdrStore, StoreUnavailable
from gateway.store.records import (
    CdrRow,
    ProviderRow,
    decode_cdr,
    encode_cdr,
    encode_provider_cdr,
    query_bounds,
)

__all__ = ["MemoryCdrStore"]


@implementer(ICdrStore)
class MemoryCdrStore:
    def __init__(self, clock):
        self._clock = clock
        self._cdrs: dict[str, CdrRow] = {}
        self._providers: list[ProviderRow] = []
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

    def cdr(self, call_id: str) -> Deferred:
        return self._run(lambda: self._get(call_id))

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

    def _select(self, since: str, limit: int) -> list[dict]:
        rows = sorted((r for r in self._cdrs.values() if r.ended_at >= since), key=lambda r: (r.ended_at, r.call_id))
        return [self._decode(row) for row in rows[:limit]]

    def _get(self, call_id: str) -> dict | None:
        row = self._cdrs.get(call_id)
        return None if row is None else self._decode(row)

    def _decode(self, row: CdrRow) -> dict:
        return decode_cdr(row.document, [p for p in self._providers if p.call_id == row.call_id])
