"""The SQLite CDR store: one connection in one pool thread, so the reactor never waits on the disk.

The database file is created mode 0600 before SQLite opens it, so its
``-wal`` and ``-shm`` files (created with the database's mode) are 0600 too,
whatever the umask. At open, an existing database, ``-wal``, ``-shm`` or
``-journal`` (a rollback journal, left by another tool that opened the file
in rollback mode) that others may read is narrowed to 0600 and logged. Every statement runs through a :class:`twisted.enterprise.adbapi.ConnectionPool`
with exactly one connection, in WAL mode with ``synchronous=FULL``: when
``add_cdr``'s Deferred fires, the row has been committed and the commit
synced, so a crash (even ``kill -9``) right after cannot lose it.

Operations run one at a time, in the order they were asked for (a
:class:`~twisted.internet.defer.DeferredLock` in front of the pool), which
gives two promises cheaply: what is asked before :meth:`open` has finished
waits for it, and :meth:`close` runs after everything asked before it.
"""

from __future__ import annotations

import enum
import pathlib
import sqlite3
from collections.abc import Sequence

import attrs
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredLock, execute, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from gateway.store import sms_sql
from gateway.store.files import create_private, narrow
from gateway.store.interfaces import DuplicateCdr, ICdrStore, ISmsStore, SchemaTooNew, StoreUnavailable
from gateway.store.records import (
    CdrRow,
    ProviderRow,
    check_limit,
    decode_cdr,
    encode_cdr,
    encode_provider_cdr,
    query_bounds,
)
from gateway.store.schema import MIGRATIONS
from gateway.store.sms import check_conversation, check_finish, check_query, check_sms

__all__ = ["SqliteCdrStore"]

log = Logger()

#: how long a statement waits for another process holding the database lock
BUSY_TIMEOUT_MS = 5000

_CDR_COLUMNS = [f.name for f in attrs.fields(CdrRow)]
_INSERT_CDR = (
    f"INSERT INTO cdrs ({', '.join(_CDR_COLUMNS)}) VALUES ({', '.join('?' for _ in _CDR_COLUMNS)})"
)
_INSERT_PROVIDER = "INSERT INTO provider_cdrs (call_id, source, data, received_at) VALUES (?, ?, ?, ?)"
#: the CDRs a ``cdrs(since, limit)`` query returns (``{columns}`` to fill in)
_SINCE = "SELECT {columns} FROM cdrs WHERE ended_at >= ? ORDER BY ended_at, call_id LIMIT ?"
#: the CDRs a ``recent_cdrs(limit)`` query returns: the ``cdrs_by_end`` index read backwards
_NEWEST = "SELECT {columns} FROM cdrs ORDER BY ended_at DESC, call_id DESC LIMIT ?"


def _configure(connection) -> None:
    """cp_openfun: the settings every new connection gets, before its first statement."""
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", f"busy_timeout={BUSY_TIMEOUT_MS}"):
        connection.execute(f"PRAGMA {pragma}")


# Everything below until the class runs in the pool thread.


def _migrate(conn, migrations: Sequence[str]) -> tuple[int, int]:
    """Apply the missing migrations, each atomically with its version number."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(migrations):
        raise SchemaTooNew(
            f"the database is at schema version {version}; this gateway knows versions up to {len(migrations)}"
        )
    for number in range(version + 1, len(migrations) + 1):
        conn.executescript(f"BEGIN IMMEDIATE;\n{migrations[number - 1]}\nPRAGMA user_version = {number};\nCOMMIT;")
    return version, len(migrations)


def _in_transaction(conn, func, *args):
    """Run ``func(conn, *args)`` in one transaction (the pool commits or rolls back)."""
    conn.execute("BEGIN IMMEDIATE")
    return func(conn, *args)


def _insert_cdr(conn, row: CdrRow) -> None:
    try:
        conn.execute(_INSERT_CDR, attrs.astuple(row))
    except sqlite3.IntegrityError:
        raise DuplicateCdr(f"a CDR for call {row.call_id!r} is stored already") from None


def _insert_provider_cdr(conn, row: ProviderRow) -> None:
    conn.execute(_INSERT_PROVIDER, attrs.astuple(row))


def _providers(conn, where: str, args: tuple) -> dict[str, list[ProviderRow]]:
    """Provider CDRs of the calls ``where`` selects, by call id, oldest first."""
    by_call: dict[str, list[ProviderRow]] = {}
    query = f"SELECT call_id, source, data, received_at FROM provider_cdrs WHERE {where} ORDER BY id"
    for row in conn.execute(query, args):
        by_call.setdefault(row[0], []).append(ProviderRow(*row))
    return by_call


def _select_cdrs(conn, query: str, args: tuple) -> list[dict]:
    """The CDRs ``query`` (:data:`_SINCE`, :data:`_NEWEST`) selects, in its order, with their provider CDRs."""
    rows = conn.execute(query.format(columns="call_id, document"), args).fetchall()
    providers = _providers(conn, f"call_id IN ({query.format(columns='call_id')})", args)
    return [decode_cdr(document, providers.get(call_id, [])) for call_id, document in rows]


def _select_cdr(conn, call_id: str) -> dict | None:
    row = conn.execute("SELECT document FROM cdrs WHERE call_id = ?", (call_id,)).fetchone()
    if row is None:
        return None
    return decode_cdr(row[0], _providers(conn, "call_id = ?", (call_id,)).get(call_id, []))


def _checkpoint(conn) -> None:
    """Fold the WAL into the database, so closing the connection on the reactor thread is quick."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class _State(enum.Enum):
    NEW = "new"
    OPENED = "opened"  # open() was called
    CLOSING = "closing"  # close() was called


@implementer(ICdrStore, ISmsStore)
class SqliteCdrStore:
    """CDRs and SMS records in one SQLite file. ``migrations`` is for tests; the gateway uses :data:`MIGRATIONS`."""

    def __init__(self, path: pathlib.Path, reactor, migrations: Sequence[str] = MIGRATIONS):
        self.path = pathlib.Path(path)
        self._reactor = reactor
        self._migrations = tuple(migrations)
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            str(self.path),
            check_same_thread=False,
            isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
            cp_min=1,
            cp_max=1,
            cp_openfun=_configure,
            cp_reactor=reactor,
        )
        self._state = _State.NEW
        #: why operations fail instead of running (a failed open, a close before open)
        self._unusable: str | None = None
        self._queue = DeferredLock()
        self._queue.acquire()  # held until open() has finished

    def __repr__(self) -> str:
        return f"<SqliteCdrStore {str(self.path)!r} {self._state.value}>"

    def open(self) -> Deferred:
        if self._state is not _State.NEW:
            return fail(RuntimeError(f"{self!r}: open() may be called once, on a new store"))
        self._state = _State.OPENED
        try:
            # the database and its -wal/-shm (which SQLite creates with the database's mode) are 0600,
            # and so is a rollback journal left by a tool that opened it in rollback mode
            create_private(self.path)
            for suffix in ("-wal", "-shm", "-journal"):
                narrow(self.path.with_name(self.path.name + suffix))
        except OSError as e:
            d = fail(e)
        else:
            d = self._pool.runWithConnection(_migrate, self._migrations)
        d.addCallbacks(self._opened, self._open_failed)
        return d

    def _opened(self, versions: tuple[int, int]) -> None:
        old, new = versions
        if old != new:
            log.info("CDR store {path}: schema migrated from version {old} to {new}", path=str(self.path), old=old, new=new)
        log.info("CDR store {path} is open", path=str(self.path))
        self._queue.release()

    def _open_failed(self, failure):
        self._unusable = f"the store at {self.path} failed to open: {failure.value}"
        self._queue.release()
        return failure

    def add_cdr(self, cdr: dict) -> Deferred:
        d = execute(encode_cdr, cdr)  # encoded now: later changes to the dict do not leak in
        d.addCallback(lambda row: self._run(_insert_cdr, row))
        return d

    def attach_provider_cdr(self, call_id: str, source: str, data: dict) -> Deferred:
        d = execute(encode_provider_cdr, call_id, source, data, self._reactor.seconds())
        d.addCallback(lambda row: self._run(_insert_provider_cdr, row))
        return d

    def cdrs(self, since: str | None = None, limit: int = 100) -> Deferred:
        d = execute(query_bounds, since, limit)
        d.addCallback(lambda bounds: self._run(_select_cdrs, _SINCE, bounds))
        return d

    def recent_cdrs(self, limit: int = 10) -> Deferred:
        d = execute(check_limit, limit)
        d.addCallback(lambda capped: self._run(_select_cdrs, _NEWEST, (capped,)))
        return d

    def cdr(self, call_id: str) -> Deferred:
        return self._run(_select_cdr, call_id)

    # -- ISmsStore (gateway.store.sms) ------------------------------------------------------

    def add_sms(self, record) -> Deferred:
        return execute(check_sms, record).addCallback(lambda r: self._run(sms_sql.insert_sms, r))

    def pending_sms(self) -> Deferred:
        return self._run(sms_sql.pending_sms)

    def sms_attempt_failed(self, seq: int, error: str) -> Deferred:
        return self._run(sms_sql.sms_attempt_failed, seq, error)

    def finish_sms(self, seq: int, status: str, finished_at: str, conversation_id=None, error=None) -> Deferred:
        d = execute(check_finish, status)
        d.addCallback(lambda _: self._run(sms_sql.finish_sms, seq, status, finished_at, conversation_id, error))
        return d

    def list_sms(self, direction=None, number=None, after: int = 0, limit: int = 100) -> Deferred:
        d = execute(check_query, direction, number, after, limit)
        d.addCallback(lambda capped: self._run(sms_sql.select_sms, direction, number, after, capped))
        return d

    def save_conversation(self, record) -> Deferred:
        return execute(check_conversation, record).addCallback(lambda r: self._run(sms_sql.save_conversation, r))

    def close_conversation(self, conversation_id: str, closed_at: str, reason: str) -> Deferred:
        return self._run(sms_sql.close_conversation, conversation_id, closed_at, reason)

    def open_conversations(self) -> Deferred:
        return self._run(sms_sql.open_conversations)

    def close(self) -> Deferred:
        if self._state is _State.CLOSING:
            return self._queue.run(lambda: None)  # fires once the first close() has finished
        if self._state is _State.NEW:
            self._unusable = f"the store at {self.path} was closed before it was opened"
            self._queue.release()
        self._state = _State.CLOSING
        return self._queue.run(self._shutdown)

    def _run(self, func, *args) -> Deferred:
        """Queue ``func(conn, *args)`` to run in a transaction in the pool thread."""
        if self._state is _State.CLOSING:
            return fail(StoreUnavailable(f"the store at {self.path} is closed"))
        return self._queue.run(self._submit, func, *args)

    def _submit(self, func, *args) -> Deferred:
        if self._unusable is not None:
            return fail(StoreUnavailable(self._unusable))
        return self._pool.runWithConnection(_in_transaction, func, *args)

    def _shutdown(self) -> Deferred:
        d = self._pool.runWithConnection(_checkpoint) if self._unusable is None else succeed(None)
        d.addBoth(self._close_pool)
        return d

    def _close_pool(self, result):
        self._pool.close()
        log.info("CDR store {path} is closed", path=str(self.path))
        return result
