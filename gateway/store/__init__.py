"""Durable records: CDRs, SMS and chat conversations, behind interfaces not tied to SQLite.

The daemon builds its store from the ``[store] url`` with :func:`open_store`
(the backend behind a :class:`GuardedStore`: see :mod:`gateway.store.guard`)
and calls ``open()`` on it; everything else holds an :class:`ICdrStore`, and
the chat connector an :class:`ISmsStore`. Tests of other rooms use
:class:`MemoryCdrStore` (the shipped fake, in :mod:`gateway.store.testing`).
"""

from __future__ import annotations

import pathlib

from gateway.core.cdr import PENDING_MAX
from gateway.store.guard import GuardedStore, StoreHealth
from gateway.store.interfaces import DuplicateCdr, ICdrStore, ISmsStore, SchemaTooNew, StoreUnavailable
from gateway.store.testing import MemoryCdrStore
from gateway.store.records import MAX_LIMIT, normalize_timestamp
from gateway.store.sms import ConversationRecord, SmsRecord
from gateway.store.sqlite import SqliteCdrStore

__all__ = [
    "MAX_LIMIT",
    "ConversationRecord",
    "DuplicateCdr",
    "GuardedStore",
    "ICdrStore",
    "ISmsStore",
    "MemoryCdrStore",
    "SchemaTooNew",
    "SmsRecord",
    "SqliteCdrStore",
    "StoreHealth",
    "StoreUnavailable",
    "normalize_timestamp",
    "open_store",
]


def open_store(url: str, reactor, *, health: StoreHealth | None = None, pending_max: int = PENDING_MAX) -> GuardedStore:
    """The store a URL names, not yet opened: ``sqlite:PATH`` (relative to the working directory),
    behind a :class:`GuardedStore` (sanitised records, queued writes while the disk is away).

    Raises ``ValueError`` for any other URL.
    """
    scheme, _, rest = url.partition(":")
    if scheme == "sqlite" and rest:
        backend = SqliteCdrStore(pathlib.Path(rest).absolute(), reactor)
        return GuardedStore(backend, reactor, health=health, pending_max=pending_max)
    raise ValueError(f"unsupported store URL {url!r}: expected sqlite:PATH")
