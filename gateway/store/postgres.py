"""The PostgreSQL store: CDRs, SMS and conversations shared by every node of a cluster.

``[store] url = "postgresql://user@host:port/db"`` selects it (:func:`gateway.store.open_store`);
without it the gateway keeps its embedded SQLite file. The driver is psycopg 3, used synchronously
in a Twisted thread pool (see docs/store.md for why): every statement runs in a pool thread on one
of at most ``pool_size`` connections, so the reactor never waits on the network. A connection the
server dropped (a restart, an outage) is thrown away and the next operation connects afresh.

The promises are the SQLite store's (:mod:`gateway.store.sqlite`), same answers, same errors:

- ``add_cdr``'s and ``add_sms``'s Deferreds fire once the row is committed (with the server's
  ``synchronous_commit`` as configured; its default flushes the WAL first).
- ``open()`` applies the migrations of :mod:`gateway.store.pg_schema` under an advisory lock, so
  nodes starting together apply each exactly once. While the server cannot be reached at open, it
  tries again (1, 2, 5, 10, then every 30 s; each failure logged, and reported to the readiness
  through :meth:`PostgresStore.watch_availability`), and ``open()`` fires after the first attempt
  all the same (:attr:`PostgresStore.is_open` tells which): the daemon starts, since calls need no
  store. Operations asked meanwhile fail with :class:`StoreUnavailable` naming the server and its
  error, which the :class:`~gateway.store.GuardedStore` in front takes as "store down": records
  wait in its queues and go in once the server answers. Operations asked before the first attempt
  has finished wait for it. A database written by a newer gateway (:class:`SchemaTooNew`) fails
  ``open()`` for good.
- A lost connection fails the operation with :class:`StoreUnavailable`; content the server
  refuses (a NUL character in a text field, say) fails with ``ValueError``, like any malformed record.
- ``close()`` waits for every operation already running, then closes the connections.

Beyond the interfaces, :meth:`PostgresStore.outbox` gives an :class:`SmsOutbox`: a consumer of
pending SMS for a cluster, where several nodes deliver from one table. Each consumer holds its own
connection; ``claim()`` row-locks the oldest pending SMS of a number that no other consumer holds
(``FOR UPDATE SKIP LOCKED`` over the oldest pending record of each number, so a number's messages
go out in ``seq`` order, one at a time, across every node), and the lock is held, in an open
transaction, until ``finish()``/``attempt_failed()``/``release()``. If the consumer's connection
dies mid-delivery (its node killed, the network gone), the server rolls the transaction back and
the record is pending again, with the same ``uid`` and ``seq``, for the next consumer: delivery is
at least once, and the far end deduplicates on the id.
"""

from __future__ import annotations

import enum
import threading
import urllib.parse
from collections.abc import Sequence

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, execute, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from gateway.store.interfaces import ICdrStore, ISmsStore, SchemaTooNew, StoreUnavailable
from gateway.store.pg_schema import MIGRATIONS
from gateway.store.records import check_limit, encode_cdr, encode_provider_cdr, query_bounds
from gateway.store.sms import SmsRecord, check_conversation, check_finish, check_query, check_sms

__all__ = ["OPEN_RETRY_DELAYS", "PostgresStore", "SmsOutbox", "describe_url", "is_postgres_url"]

log = Logger()

#: seconds between attempts to open a store whose server cannot be reached; the last one repeats
OPEN_RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
SCHEMES = ("postgresql://", "postgres://")


def _sql():
    """:mod:`gateway.store.pg_sql`, imported when first needed: psycopg is an optional dependency
    (the ``postgresql`` extra), and the embedded SQLite default never loads it."""
    from gateway.store import pg_sql

    return pg_sql


def is_postgres_url(url: str) -> bool:
    return isinstance(url, str) and url.startswith(SCHEMES) and len(url) > url.index("//") + 2


def describe_url(url: str) -> str:
    """``user@host:port/dbname`` of a PostgreSQL URL, never its password (for logs and errors)."""
    try:
        parts = urllib.parse.urlsplit(url)
        if not parts.netloc:
            raise ValueError("no //host part")
        host, port, user = parts.hostname or "localhost", parts.port or 5432, parts.username
    except (TypeError, ValueError, AttributeError):
        return "(a malformed postgresql URL)"
    return f"{user + '@' if user else ''}{host}:{port}{parts.path or '/'}"


def _connection_lost(error) -> bool:
    import psycopg

    return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))


class _Pool:
    """At most ``size`` connections to one database, each used by one operation at a time in a pool
    thread; an operation runs in one transaction, committed when it returns."""

    def __init__(self, url: str, reactor, threads: ThreadPool, size: int, connect_timeout: float, where: str):
        self.url = url
        self.where = where
        self._reactor = reactor
        self._threads = threads
        self._connect_timeout = connect_timeout
        self._slots = DeferredSemaphore(size)
        self._idle: list = []
        self._lock = threading.Lock()

    def connect(self, autocommit: bool = False):
        """A new connection (in a pool thread); :class:`StoreUnavailable` when the server cannot be reached."""
        import psycopg

        try:
            return psycopg.connect(
                self.url, autocommit=autocommit, connect_timeout=max(1, int(self._connect_timeout)),
                application_name="gateway",
            )
        except psycopg.Error as e:
            raise StoreUnavailable(f"PostgreSQL {self.where} cannot be reached: {_without_password(e, self.url)}") from None

    def run(self, func, *args) -> Deferred:
        """``func(conn, *args)`` in one transaction in a pool thread."""
        return self._slots.run(deferToThreadPool, self._reactor, self._threads, self._call, func, args)

    def run_with_new_connection(self, func, *args) -> Deferred:
        """``func(conn, *args)`` on a connection of its own in autocommit mode (migrations)."""
        return deferToThreadPool(self._reactor, self._threads, self._call_alone, func, args)

    # in a pool thread:

    def _call(self, func, args):
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            if conn is None:
                conn = self.connect()
            try:
                result = func(conn, *args)
            except BaseException as e:
                self._discard_or_rollback(conn)
                if reused and conn.broken:
                    # an idle connection the server dropped (a restart): nothing was committed, so try
                    # again on a new one; the other idle ones are most likely gone too
                    self.close_all()
                    continue
                raise _translate(e, self.where) from None
            try:
                conn.commit()
            except BaseException as e:  # the outcome is unknown: the caller decides (a retried add is a duplicate)
                self._discard_or_rollback(conn)
                raise _translate(e, self.where) from None
            with self._lock:
                self._idle.append(conn)
            return result

    def _call_alone(self, func, args):
        conn = self.connect(autocommit=True)
        try:
            return func(conn, *args)
        except BaseException as e:
            raise _translate(e, self.where) from None
        finally:
            conn.close()

    def _discard_or_rollback(self, conn) -> None:
        try:
            if not conn.broken and not conn.closed:
                conn.rollback()
                with self._lock:
                    self._idle.append(conn)
                return
        except Exception:
            pass
        conn.close()

    def close_all(self) -> None:
        """Close every idle connection (in a pool thread, once no operation runs)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _one_line(error) -> str:
    """The error as one line, any URL's password in it masked (a driver may repeat its conninfo)."""
    from gateway.confschema import mask_url_password

    return mask_url_password(" ".join(str(error).split())) or type(error).__name__


def _without_password(error, url: str) -> str:
    """:func:`_one_line`, and the URL's password itself masked too: libpq repeats a part of the URL
    it cannot parse (``unexpected spaces found in "<password>"``)."""
    text = _one_line(error)
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        password = None
    for secret in {password, urllib.parse.unquote(password or "")} - {None, ""}:
        text = text.replace(secret, "***")
    return text


def _translate(error: BaseException, where: str) -> BaseException:
    """What an operation fails with: a lost connection is :class:`StoreUnavailable`, content the
    server refuses is ``ValueError``; the store's own errors pass as they are."""
    import psycopg

    if _connection_lost(error):
        return StoreUnavailable(f"PostgreSQL {where}: {_one_line(error)}")
    if isinstance(error, psycopg.DataError):
        return ValueError(f"PostgreSQL {where} refused the record: {_one_line(error)}")
    return error


class _State(enum.Enum):
    NEW = "new"
    OPENING = "opening"  # the first attempt runs: operations wait for it
    RETRYING = "retrying"  # the server could not be reached: operations fail, attempts go on
    OPEN = "open"
    FAILED = "failed"  # open failed for good (a newer schema)
    CLOSING = "closing"


@implementer(ICdrStore, ISmsStore)
class PostgresStore:
    """CDRs, SMS and conversations in a PostgreSQL database (see the module docstring).

    :param url: ``postgresql://user[:password]@host[:port]/dbname`` (libpq's URI form; query
        parameters such as ``?sslmode=require`` pass to libpq).
    :param reactor: ``IReactorTime`` and ``IReactorThreads``: the callbacks and the thread pool.
    :param pool_size: connections open at once for the store's operations (outbox consumers have one each).
    :param migrations: for tests; the gateway uses :data:`gateway.store.pg_schema.MIGRATIONS`.
    """

    def __init__(self, url: str, reactor, *, pool_size: int = 4, migrations: Sequence[str] = MIGRATIONS,
                 connect_timeout: float = 5.0, open_retry_delays: Sequence[float] = OPEN_RETRY_DELAYS):
        if not is_postgres_url(url):
            raise ValueError(f"expected a postgresql://user@host:port/dbname URL, got {describe_url(url)!r}")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            from gateway.listeners import StartupError

            raise StartupError(
                "[store] url names PostgreSQL, but its driver psycopg is not installed:"
                " pip install 'telephony-gateway[postgresql]'"
            ) from None
        self.url = url
        self.where = describe_url(url)
        self._reactor = reactor
        self._migrations = tuple(migrations)
        self._retry_delays = tuple(open_retry_delays)
        # the outbox consumers' statements share the threads, not the store's connections
        self._threads = ThreadPool(0, pool_size + 4, name=f"gateway-postgres {self.where}")
        self._pool = _Pool(url, reactor, self._threads, pool_size, connect_timeout, self.where)
        self._state = _State.NEW
        self._why: str | None = None  # why operations fail instead of running
        self._waiting: list[Deferred] = []  # operations asked while the first open attempt runs
        self._inflight: set[Deferred] = set()
        self._retry = None
        self._attempts = 0
        self._opened = Deferred()
        self._outboxes: set[SmsOutbox] = set()
        self._health = None

    def watch_availability(self, health) -> None:
        """``health`` (a :class:`~gateway.store.StoreHealth`) hears of every open attempt:
        ``open_failed(reason)`` while the server cannot be reached, ``opened()`` once it is open."""
        self._health = health

    @property
    def is_open(self) -> bool:
        return self._state is _State.OPEN

    def __repr__(self) -> str:
        return f"<PostgresStore {self.where} {self._state.value}>"

    @property
    def path(self) -> str:
        """Where the store is, for logs and the status page (the URL without its password)."""
        return f"postgresql://{self.where}"

    # -- opening ----------------------------------------------------------------------------

    def open(self) -> Deferred:
        if self._state is not _State.NEW:
            return fail(RuntimeError(f"{self!r}: open() may be called once, on a new store"))
        self._state = _State.OPENING
        self._threads.start()
        # the pool's threads keep a process from exiting: stopped at reactor shutdown if not closed before
        self._shutdown_trigger = self._reactor.addSystemEventTrigger("during", "shutdown", self._threads.stop)
        self._attempt()
        return self._opened

    def _attempt(self) -> None:
        self._retry = None
        self._attempts += 1
        d = self._pool.run_with_new_connection(_sql().migrate, self._migrations)
        d.addCallbacks(self._migrated, self._attempt_failed)

    def _migrated(self, versions) -> None:
        if self._state is _State.CLOSING:
            return
        old, new = versions
        if old != new:
            log.info("CDR store {where}: schema migrated from version {old} to {new}", where=self.where, old=old, new=new)
        log.info("CDR store {where} is open", where=self.where)
        self._state = _State.OPEN
        self._why = None
        self._release_waiting()
        if self._health is not None:
            self._health.opened()
        if not self._opened.called:
            self._opened.callback(None)

    def _attempt_failed(self, failure) -> None:
        if self._state is _State.CLOSING:
            return
        if failure.check(StoreUnavailable):
            delay = self._retry_delays[min(self._attempts - 1, len(self._retry_delays) - 1)]
            log.warn(
                "CDR store {where} cannot be opened yet ({error}); records wait, next try in {delay} s",
                where=self.where, error=failure.getErrorMessage(), delay=delay,
            )
            self._why = f"the store is not open yet: {failure.getErrorMessage()}"
            self._state = _State.RETRYING
            self._release_waiting()
            self._retry = self._reactor.callLater(delay, self._attempt)
            if self._health is not None:
                self._health.open_failed(failure.getErrorMessage())
            if not self._opened.called:
                # the daemon starts (calls need no store): records wait in the GuardedStore's queues
                self._opened.callback(None)
            return
        log.failure("CDR store {where} failed to open", failure, where=self.where)
        self._state = _State.FAILED
        self._why = f"the store at {self.where} failed to open: {failure.getErrorMessage()}"
        self._release_waiting()
        if self._health is not None:
            self._health.open_failed(self._why)
        if not self._opened.called:
            self._opened.errback(failure)

    def _release_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    # -- running operations -------------------------------------------------------------------

    def _run(self, func, *args) -> Deferred:
        """``func(conn, *args)`` in one transaction in a pool thread, once the store is open."""
        if self._state is _State.CLOSING:
            return fail(StoreUnavailable(f"the store at {self.where} is closed"))
        if self._state in (_State.NEW, _State.OPENING):
            gate = Deferred()
            self._waiting.append(gate)
            d = gate.addCallback(lambda _: self._submit(func, *args))
        else:
            d = self._submit(func, *args)
        return self._track(d)

    def _submit(self, func, *args) -> Deferred:
        if self._state is _State.CLOSING:
            return fail(StoreUnavailable(f"the store at {self.where} is closed"))
        if self._state is not _State.OPEN:
            return fail(StoreUnavailable(self._why or f"the store at {self.where} is not open"))
        return self._pool.run(func, *args)

    def _track(self, d: Deferred) -> Deferred:
        """``d``, counted as running until it fires (``close()`` waits for it)."""
        finished: Deferred = Deferred()
        self._inflight.add(finished)

        def done(result):
            self._inflight.discard(finished)
            finished.callback(None)
            return result

        return d.addBoth(done)

    # -- ICdrStore ------------------------------------------------------------------------------

    def add_cdr(self, cdr: dict) -> Deferred:
        d = execute(encode_cdr, cdr)  # encoded now: later changes to the dict do not leak in
        d.addCallback(lambda row: self._run(_sql().insert_cdr, row))
        return d

    def attach_provider_cdr(self, call_id: str, source: str, data: dict) -> Deferred:
        d = execute(encode_provider_cdr, call_id, source, data, self._reactor.seconds())
        d.addCallback(lambda row: self._run(_sql().insert_provider_cdr, row))
        return d

    def cdrs(self, since: str | None = None, limit: int = 100) -> Deferred:
        d = execute(query_bounds, since, limit)
        d.addCallback(lambda bounds: self._run(_sql().select_cdrs, _sql().SINCE, bounds))
        return d

    def recent_cdrs(self, limit: int = 10) -> Deferred:
        d = execute(check_limit, limit)
        d.addCallback(lambda capped: self._run(_sql().select_cdrs, _sql().NEWEST, (capped,)))
        return d

    def cdr(self, call_id: str) -> Deferred:
        return self._run(_sql().select_cdr, call_id)

    # -- ISmsStore ------------------------------------------------------------------------------

    def add_sms(self, record) -> Deferred:
        return execute(check_sms, record).addCallback(lambda r: self._run(_sql().insert_sms, r))

    def pending_sms(self) -> Deferred:
        return self._run(_sql().pending_sms)

    def sms_attempt_failed(self, seq: int, error: str) -> Deferred:
        return self._run(_sql().sms_attempt_failed, seq, error)

    def finish_sms(self, seq: int, status: str, finished_at: str, conversation_id=None, error=None) -> Deferred:
        d = execute(check_finish, status)
        d.addCallback(lambda _: self._run(_sql().finish_sms, seq, status, finished_at, conversation_id, error))
        return d

    def list_sms(self, direction=None, number=None, after: int = 0, limit: int = 100) -> Deferred:
        d = execute(check_query, direction, number, after, limit)
        d.addCallback(lambda capped: self._run(_sql().select_sms, direction, number, after, capped))
        return d

    def save_conversation(self, record) -> Deferred:
        return execute(check_conversation, record).addCallback(lambda r: self._run(_sql().save_conversation, r))

    def close_conversation(self, conversation_id: str, closed_at: str, reason: str) -> Deferred:
        return self._run(_sql().close_conversation, conversation_id, closed_at, reason)

    def open_conversations(self) -> Deferred:
        return self._run(_sql().open_conversations)

    # -- the cluster's outbox -------------------------------------------------------------------

    def outbox(self, *, claim_timeout: float = 60.0) -> "SmsOutbox":
        """A new consumer of pending SMS with its own connection (see :class:`SmsOutbox`)."""
        if self._state is _State.CLOSING:
            raise StoreUnavailable(f"the store at {self.where} is closed")
        consumer = SmsOutbox(self, claim_timeout=claim_timeout)
        self._outboxes.add(consumer)
        return consumer

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> Deferred:
        if self._state is _State.CLOSING:
            return self._closed
        first_state, self._state = self._state, _State.CLOSING
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._why = f"the store at {self.where} was closed before it was opened"
        self._release_waiting()
        if not self._opened.called:
            self._opened.errback(StoreUnavailable(self._why))
        pending = [d for d in self._inflight] + [o.close() for o in list(self._outboxes)]
        d = DeferredList(pending, consumeErrors=True)
        if first_state is _State.NEW:
            d.addCallback(lambda _: None)
        else:
            d.addCallback(lambda _: deferToThreadPool(self._reactor, self._threads, self._pool.close_all))
            d.addBoth(self._stop_threads)
        self._closed = d
        return d

    def _stop_threads(self, result):
        self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
        self._threads.stop()
        log.info("CDR store {where} is closed", where=self.where)
        return None


class SmsOutbox:
    """One consumer of the pending SMS, on a connection of its own (see the module docstring).

    One record at a time: :meth:`claim` holds it (row-locked, in an open transaction) until
    :meth:`finish`, :meth:`attempt_failed` or :meth:`release`. A claim left open longer than
    ``claim_timeout`` seconds (a consumer stuck) ends the connection on the server's side
    (``idle_in_transaction_session_timeout``), which frees the record for another consumer.
    A lost connection fails the operation with :class:`StoreUnavailable`; the next :meth:`claim`
    connects again.
    """

    def __init__(self, store: PostgresStore, *, claim_timeout: float = 60.0):
        self._store = store
        self._claim_timeout_ms = max(1, int(claim_timeout * 1000))
        self._conn = None
        self.held: SmsRecord | None = None
        self._busy = False
        self.closed = False

    def __repr__(self) -> str:
        held = f" holding seq {self.held.seq}" if self.held is not None else ""
        return f"<SmsOutbox {self._store.where}{held}>"

    @property
    def backend_pid(self) -> int | None:
        """The server process of this consumer's connection (for tests and diagnostics)."""
        return None if self._conn is None or self._conn.closed else self._conn.info.backend_pid

    def claim(self, direction: str | None = None, exclude=()) -> Deferred:
        """The next SMS this consumer delivers (an :class:`SmsRecord`, held), or None when none is
        free; the numbers in ``exclude`` (backing off on this node) are left out."""
        if self.held is not None:
            return fail(RuntimeError(f"{self!r}: finish or release the held SMS before claiming another"))
        if direction is not None and direction not in ("inbound", "outbound"):
            return fail(ValueError(f"direction must be inbound or outbound, got {direction!r}"))
        return self._op(self._claim, direction, tuple(exclude)).addCallback(self._hold)

    def finish(self, status: str, finished_at: str, conversation_id=None, error=None) -> Deferred:
        """Mark the held SMS delivered or failed and let it go; fires with True (False: it was not pending)."""
        if self.held is None:
            return fail(RuntimeError(f"{self!r}: no SMS held"))
        return execute(check_finish, status).addCallback(
            lambda _: self._op(self._end, _sql().finish_sms, self.held.seq, status, finished_at, conversation_id, error))

    def attempt_failed(self, error: str) -> Deferred:
        """Count a failed delivery attempt of the held SMS and let it go (pending, for the next claim)."""
        if self.held is None:
            return fail(RuntimeError(f"{self!r}: no SMS held"))
        return self._op(self._end, _sql().sms_attempt_failed, self.held.seq, error)

    def release(self) -> Deferred:
        """Let the held SMS go unchanged (pending)."""
        if self.held is None:
            return succeed(None)
        return self._op(self._rollback)

    def close(self) -> Deferred:
        """Let the held SMS go and close the connection."""
        if self.closed:
            return succeed(None)
        self.closed = True
        self._store._outboxes.discard(self)
        self.held = None
        conn, self._conn = self._conn, None
        if conn is None:
            return succeed(None)
        return deferToThreadPool(self._store._reactor, self._store._threads, conn.close)

    # -- running ----------------------------------------------------------------------------------

    def _hold(self, record):
        self.held = record
        return record

    def _op(self, func, *args) -> Deferred:
        """``func(*args)`` in a pool thread; whatever it did, the held record is let go unless it
        claims one (the transaction ended: committed, rolled back or lost)."""
        if self.closed:
            return fail(StoreUnavailable(f"{self!r} is closed"))
        if self._store._state is not _State.OPEN:
            return fail(StoreUnavailable(self._store._why or f"the store at {self._store.where} is not open"))
        if self._busy:
            return fail(RuntimeError(f"{self!r}: one operation at a time"))
        self._busy = True
        d = deferToThreadPool(self._store._reactor, self._store._threads, self._call, func, args)

        def done(result):
            self._busy = False
            self.held = None
            return result

        return self._store._track(d.addBoth(done))

    def _call(self, func, args):
        """In a pool thread."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._store._pool.connect()
            self._conn.execute("SET idle_in_transaction_session_timeout = %s" % self._claim_timeout_ms)
            self._conn.commit()
        try:
            return func(*args)
        except BaseException as e:
            try:
                if not self._conn.broken and not self._conn.closed:
                    self._conn.rollback()
            except Exception:
                pass
            if self._conn.broken or self._conn.closed or _connection_lost(e):
                self._conn.close()
            raise _translate(e, self._store.where) from None

    def _claim(self, direction, exclude=()):
        record = _sql().claim_sms(self._conn, direction, exclude)
        if record is None:
            self._conn.rollback()
        return record

    def _end(self, statement, *args):
        result = statement(self._conn, *args)
        self._conn.commit()
        return result

    def _rollback(self):
        self._conn.rollback()
