"""The SQLite store itself: settings, migrations, ordering around open/close, URLs, and kill -9."""

import os
import sqlite3
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task

from gateway.store import SchemaTooNew, SqliteCdrStore, StoreUnavailable, open_store
from gateway.store import sqlite as sqlite_store
from gateway.store.schema import MIGRATIONS

from .helpers import make_cdr

#: a migration this gateway does not ship yet: a new table and a new column
NEXT_MIGRATION = """
CREATE TABLE later_records (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
ALTER TABLE cdrs ADD COLUMN queue TEXT;
"""


def reactor():
    from twisted.internet import reactor

    return reactor


def user_version(path):
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def tables(path):
    with sqlite3.connect(path) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.fixture
def stores():
    """Makes SQLite stores and closes every one of them at teardown."""
    made = []

    def make(path, migrations=MIGRATIONS):
        store = SqliteCdrStore(path, reactor(), migrations)
        made.append(store)
        return store

    yield make
    for store in made:
        pytest_twisted.blockon(store.close())


async def failure_of(d, *types):
    try:
        result = await d
    except types as e:
        return e
    pytest.fail(f"expected {types}, got the result {result!r}")


def test_every_connection_gets_wal_full_sync_foreign_keys_and_a_busy_timeout(tmp_path):
    db = sqlite3.connect(tmp_path / "x.sqlite")
    try:
        sqlite_store._configure(db)
        settings = {p: db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}
    finally:
        db.close()
    assert settings == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 5000}


def test_the_newest_cdrs_are_read_backwards_along_the_end_time_index():
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(MIGRATIONS[0])
        plans = [db.execute("EXPLAIN QUERY PLAN " + sqlite_store._NEWEST.format(columns=columns), (10,)).fetchall()
                 for columns in ("call_id, document", "call_id")]
    finally:
        db.close()
    for plan in plans:
        details = " | ".join(row[-1] for row in plan)
        assert "cdrs_by_end" in details and "TEMP B-TREE" not in details, details


@pytest_twisted.ensureDeferred
async def test_open_creates_the_schema_at_the_latest_version(tmp_path, stores):
    path = tmp_path / "new.sqlite"
    await stores(path).open()
    assert user_version(path) == len(MIGRATIONS)
    assert {"cdrs", "provider_cdrs"} <= tables(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest_twisted.ensureDeferred
async def test_a_database_at_version_n_is_migrated_to_n_plus_1_keeping_its_rows(tmp_path, stores):
    path = tmp_path / "old.sqlite"
    old = stores(path)
    await old.open()
    await old.attach_provider_cdr("c1", "optimaccs", {"talkTime": 25})
    await old.add_cdr(make_cdr("c1"))
    await old.close()
    n = user_version(path)

    new = stores(path, MIGRATIONS + [NEXT_MIGRATION])
    await new.open()
    assert user_version(path) == n + 1
    assert "later_records" in tables(path)
    got = await new.cdr("c1")
    assert got == {**make_cdr("c1"), "provider_cdrs": [{"source": "optimaccs", "data": {"talkTime": 25}, "received_at": got["provider_cdrs"][0]["received_at"]}]}


@pytest.mark.parametrize("version", range(1, len(MIGRATIONS)))
@pytest_twisted.ensureDeferred
async def test_every_shipped_version_is_migrated_to_the_latest_keeping_its_cdrs(tmp_path, stores, version):
    path = tmp_path / "shipped.sqlite"
    old = stores(path, MIGRATIONS[:version])
    await old.open()
    await old.add_cdr(make_cdr("c1"))
    await old.close()

    latest = stores(path)
    await latest.open()
    assert user_version(path) == len(MIGRATIONS)
    assert [c["call_id"] for c in await latest.cdrs()] == ["c1"]


@pytest_twisted.ensureDeferred
async def test_a_failing_migration_changes_nothing_and_the_store_stays_unusable(tmp_path, stores):
    path = tmp_path / "old.sqlite"
    old = stores(path)
    await old.open()
    await old.add_cdr(make_cdr("c1"))
    await old.close()

    broken = stores(path, MIGRATIONS + ["CREATE TABLE half_done (x);\nINSERT INTO no_such_table VALUES (1);"])
    pending = broken.add_cdr(make_cdr("c2"))
    await failure_of(broken.open(), sqlite3.OperationalError)
    error = await failure_of(pending, StoreUnavailable)
    assert "failed to open" in str(error)
    await broken.close()
    assert user_version(path) == len(MIGRATIONS)
    assert "half_done" not in tables(path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT call_id FROM cdrs").fetchall() == [("c1",)]


@pytest_twisted.ensureDeferred
async def test_a_database_from_a_newer_gateway_is_left_alone(tmp_path, stores):
    path = tmp_path / "future.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    error = await failure_of(stores(path).open(), SchemaTooNew)
    assert f"version {len(MIGRATIONS) + 1}" in str(error)
    assert tables(path) == set()


@pytest_twisted.ensureDeferred
async def test_operations_asked_before_open_wait_for_it(tmp_path, stores):
    store = stores(tmp_path / "early.sqlite")
    added = store.add_cdr(make_cdr("c1"))
    listed = store.cdrs()
    finished = []
    for d in (added, listed):
        d.addBoth(lambda result: finished.append(result) or result)
    await task.deferLater(reactor(), 0)
    assert finished == []
    await store.open()
    await added
    assert [c["call_id"] for c in await listed] == ["c1"]


@pytest_twisted.ensureDeferred
async def test_close_finishes_every_write_asked_before_it(tmp_path, stores):
    path = tmp_path / "flush.sqlite"
    store = stores(path)
    await store.open()
    writes = [store.add_cdr(make_cdr(f"c{i:02}")) for i in range(20)]
    await store.close()
    assert all(d.called for d in writes)
    await defer.gatherResults(writes)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM cdrs").fetchone()[0] == 20


@pytest_twisted.ensureDeferred
async def test_closing_a_store_never_opened_fails_what_waited_for_it(tmp_path, stores):
    store = stores(tmp_path / "never.sqlite")
    pending = store.add_cdr(make_cdr("c1"))
    await store.close()
    assert "closed before it was opened" in str(await failure_of(pending, StoreUnavailable))
    await failure_of(store.open(), RuntimeError)


@pytest_twisted.ensureDeferred
async def test_open_store_takes_a_path_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:var/data/gateway.sqlite", reactor())
    monkeypatch.chdir("/")  # where the process is later does not matter
    try:
        await store.open()
        await store.add_cdr(make_cdr("c1"))
    finally:
        await store.close()
    assert user_version(tmp_path / "var" / "data" / "gateway.sqlite") == len(MIGRATIONS)


@pytest.mark.parametrize("url", ["sqlite:", "mysql://db/gateway", "postgresql:/db", "var/gateway.sqlite"])
def test_open_store_refuses_other_urls(url):
    with pytest.raises(ValueError, match="expected sqlite:PATH"):
        open_store(url, reactor())


class WriterProtocol(protocol.ProcessProtocol):
    """Watches cdr_writer.py: ``acked`` fires on its ACK line, ``ended`` when it is gone."""

    def __init__(self):
        self.acked = defer.Deferred()
        self.ended = defer.Deferred()
        self.stdout = b""
        self.stderr = b""

    def outReceived(self, data):
        self.stdout += data
        if b"ACK\n" in self.stdout and not self.acked.called:
            self.acked.callback(None)

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        if not self.acked.called:
            self.acked.errback(RuntimeError(f"the writer exited before its ACK: {self.stderr.decode(errors='replace')}"))
        self.ended.callback(reason.value)


@pytest.fixture
def writer(tmp_path):
    """Starts cdr_writer.py on a store in tmp_path; kills it at teardown if the test did not."""
    proto = WriterProtocol()
    script = os.path.join(os.path.dirname(__file__), "cdr_writer.py")
    path = tmp_path / "killed.sqlite"
    transport = reactor().spawnProcess(
        proto, sys.executable, [sys.executable, script, f"sqlite:{path}", "killed-call"], env=os.environ.copy()
    )
    yield proto, transport, path
    if not proto.ended.called:
        transport.signalProcess("KILL")
    pytest_twisted.blockon(proto.ended)


@pytest_twisted.ensureDeferred
async def test_a_cdr_acknowledged_before_kill_9_is_there_after(writer, stores):
    proto, transport, path = writer
    await proto.acked.addTimeout(60, reactor())
    transport.signalProcess("KILL")
    ended = await proto.ended
    assert ended.signal == 9

    store = stores(path)
    await store.open()
    got = await store.cdr("killed-call")
    assert got["cause"] == "no-answer" and got["node"] == "writer"
