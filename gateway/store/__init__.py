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
from gateway.store.postgres import PostgresStore, SmsOutbox

__all__ = [
    "MAX_LIMIT",
    "ConversationRecord",
    "DuplicateCdr",
    "GuardedStore",
    "ICdrStore",
    "ISmsStore",
    "MemoryCdrStore",
    "PostgresStore",
    "SchemaTooNew",
    "SmsOutbox",
    "SmsRecord",
    "SqliteCdrStore",
    "StoreHealth",
    "StoreUnavailable",
    "normalize_timestamp",
    "open_store",
]


def open_store(url: str, reactor, *, health: StoreHealth | None = None, pending_max: int = PENDING_MAX) -> GuardedStore:
    """The store a URL names, not yet opened: ``sqlite:PATH`` (relative to the working directory) or
    ``postgresql://user@host:port/dbname`` (:mod:`gateway.store.postgres`, shared by a cluster's
    nodes), behind a :class:`GuardedStore` (sanitised records, queued writes while the database is away).

    Raises ``ValueError`` for any other URL.
    """
    from gateway.confschema import mask_url_password
    from gateway.store.postgres import PostgresStore, describe_url, is_postgres_url

    scheme, _, rest = url.partition(":")
    if scheme == "sqlite" and rest:
        backend = SqliteCdrStore(pathlib.Path(rest).absolute(), reactor)
    elif is_postgres_url(url):
        backend = PostgresStore(url, reactor)
    else:
        shown = describe_url(url) if scheme.startswith("postgres") else mask_url_password(repr(url))
        raise ValueError(f"unsupported store URL {shown}: expected sqlite:PATH or postgresql://user@host:port/dbname")
    return GuardedStore(backend, reactor, health=health, pending_max=pending_max)
