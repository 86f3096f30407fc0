"""Storage faults on the real SQLite store: the disk full, the database locked, the database read-only.

While the store cannot be written, records wait in the bounded queues (the call registry's for
CDRs, the store's own for SMS and conversations), the readiness component ``store`` is down naming
the database's error, ``gateway_store_write_failures_total{kind}`` counts the failed attempts and
``gateway_store_pending{kind}`` shows what waits; once the fault is gone, every record written
meanwhile is in the database.

How each fault is made:

- disk full: a real one when this test runs as root and may mount: the database lives on a
  512 KiB tmpfs the test mounts and then fills with a file. Elsewhere SQLite's own limit on the
  database's size (``PRAGMA max_page_count``, set on the store's connection) makes the same
  "database or disk is full" error — an injected failure at the store's write path.
- locked: real: a second connection holds the write lock (``BEGIN EXCLUSIVE``), as another
  process would. The store's busy timeout is shortened to keep the test quick.
- read-only: injected at the store's write path through SQLite itself: ``PRAGMA query_only`` on
  the store's connection makes every write fail with SQLite's read-only error ("attempt to write
  a readonly database"). A real read-only mount cannot be made while the database is open for
  writing (the kernel refuses the remount: busy), and file modes do not stop root.
"""

import contextlib
import os
import sqlite3
import subprocess

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet import defer, task

from gateway.context import Readiness
from gateway.core.cdr import RetryingSink
from gateway.store import GuardedStore, SmsRecord, SqliteCdrStore, StoreHealth
from gateway.store import sqlite as sqlite_store

from .helpers import make_cdr

pytestmark = pytest.mark.timeout(60)

DELAYS = (0.05, 0.1, 0.2)


def reactor():
    from twisted.internet import reactor

    return reactor


def sleep(seconds):
    return task.deferLater(reactor(), seconds, lambda: None)


class Rig:
    """A GuardedStore over a real SQLite file, its metrics and readiness, and a registry-like CDR queue."""

    def __init__(self, path):
        self.metrics = CollectorRegistry()
        self.readiness = Readiness()
        self.health = StoreHealth(self.metrics, self.readiness.register("store"))
        self.store = GuardedStore(SqliteCdrStore(path, reactor()), reactor(), health=self.health, delays=DELAYS)
        self.cdrs = RetryingSink(reactor(), self.store.add_cdr, "CDR", **self.store.queue_options)

    def sample(self, name, **labels):
        return self.metrics.get_sample_value(name, labels) or 0

    async def write_meanwhile(self, count=5):
        """Write CDRs and SMS while the store fails; return the SMS Deferreds (they fire once stored)."""
        for n in range(count):
            self.cdrs.write(make_cdr(f"c{n}"))
        return [self.store.add_sms(SmsRecord(f"u{n}", "inbound", "+62811", f"sms {n}", "2024-05-01T10:00:00Z"))
                for n in range(count)]

    async def wait_until(self, predicate, timeout=20.0):
        for _ in range(int(timeout / 0.02)):
            if predicate():
                return
            await sleep(0.02)
        pytest.fail("timed out")

    async def check_outage_and_recovery(self, error_part, recover, count=5):
        sms = await self.write_meanwhile(count)
        await self.wait_until(lambda: self.sample("gateway_store_write_failures_total", kind="cdr") >= 1
                              and self.sample("gateway_store_write_failures_total", kind="sms") >= 1)
        assert not self.readiness.ready
        assert error_part in self.readiness.not_ready()["store"]
        assert self.sample("gateway_store_pending", kind="cdr") == count
        assert self.sample("gateway_store_pending", kind="sms") == count
        await sleep(0.5)  # a few retries, still failing: nothing is lost meanwhile
        assert self.cdrs.pending == count
        recover()
        stored = await defer.gatherResults(sms)
        await self.wait_until(lambda: self.cdrs.pending == 0 and self.readiness.ready)
        assert [record.text for record, created in stored] == [f"sms {n}" for n in range(count)]
        stored_cdrs = {c["call_id"] for c in await self.store.cdrs()} - {"warm-up"}
        assert sorted(stored_cdrs) == [f"c{n}" for n in range(count)]
        assert [r.uid for r in await self.store.pending_sms()] == [f"u{n}" for n in range(count)]
        assert self.sample("gateway_store_pending", kind="cdr") == 0
        assert self.sample("gateway_store_records_not_written_total", kind="cdr", reason="overflow") == 0

    async def close(self):
        await self.cdrs.close()
        await self.store.close()


@pytest_twisted.async_yield_fixture
async def rig(tmp_path):
    made = []

    async def make(path=None):
        r = Rig(path or tmp_path / "gateway.sqlite")
        made.append(r)
        await r.store.open()
        assert r.readiness.ready
        return r

    yield make
    for r in made:
        await r.close()


@contextlib.contextmanager
def small_tmpfs(path, size="512k"):
    """A tmpfs of ``size`` mounted on ``path``, or None when this process may not mount."""
    path.mkdir()
    if os.geteuid() != 0:
        yield None
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                             capture_output=True)
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory):
    """Write to ``directory`` until the file system is full; the filler's path."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def on_connection(store, statement):
    """Run ``statement`` on the store's own connection (in its pool thread, in order with its writes)."""
    return store.backend._pool.runWithConnection(lambda conn: conn.execute(statement))


@pytest_twisted.ensureDeferred
async def test_a_full_disk_holds_records_back_until_there_is_room(rig, tmp_path):
    with small_tmpfs(tmp_path / "small") as mounted:
        r = await rig((mounted or tmp_path) / "gateway.sqlite")
        if mounted is not None:
            await r.store.add_cdr(make_cdr("warm-up"))  # the WAL has its first pages
            filler = fill(mounted)

            def recover():
                filler.unlink()
        else:
            await on_connection(r.store, "PRAGMA max_page_count = 1")

            def recover():
                on_connection(r.store, "PRAGMA max_page_count = 1073741823")

        await r.check_outage_and_recovery("full", recover)
        await r.close()


@pytest_twisted.ensureDeferred
async def test_a_locked_database_holds_records_back_until_the_lock_goes(rig, tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 100)
    r = await rig()
    other = sqlite3.connect(tmp_path / "gateway.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        await r.check_outage_and_recovery("locked", lambda: other.execute("COMMIT"))
    finally:
        other.close()


@pytest_twisted.ensureDeferred
async def test_a_read_only_database_holds_records_back_until_it_is_writable(rig):
    r = await rig()
    await on_connection(r.store, "PRAGMA query_only = 1")
    await r.check_outage_and_recovery("readonly", lambda: on_connection(r.store, "PRAGMA query_only = 0"))


@pytest_twisted.ensureDeferred
async def test_past_pending_max_an_sms_is_refused_to_its_sender_and_counted(tmp_path):
    from gateway.core.cdr import NotWritten

    metrics = CollectorRegistry()
    store = GuardedStore(SqliteCdrStore(tmp_path / "gateway.sqlite", reactor()), reactor(),
                         health=StoreHealth(metrics), pending_max=2, delays=DELAYS)
    await store.open()
    await on_connection(store, "PRAGMA query_only = 1")
    waiting = [store.add_sms(SmsRecord(f"u{n}", "inbound", "+62811", "hi", "2024-05-01T10:00:00Z")) for n in range(2)]
    with pytest.raises(NotWritten):
        await store.add_sms(SmsRecord("u9", "inbound", "+62811", "hi", "2024-05-01T10:00:00Z"))
    assert metrics.get_sample_value("gateway_store_records_not_written_total", {"kind": "sms", "reason": "overflow"}) == 1
    await on_connection(store, "PRAGMA query_only = 0")
    await defer.gatherResults(waiting)
    assert [r.uid for r in await store.list_sms()] == ["u0", "u1"]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_at_stop_waiting_writes_get_one_last_try_and_the_rest_is_logged_in_full(tmp_path):
    from twisted.logger import LogLevel, capturedLogs

    store = GuardedStore(SqliteCdrStore(tmp_path / "gateway.sqlite", reactor()), reactor(), delays=(30.0,))
    await store.open()
    await on_connection(store, "PRAGMA query_only = 1")
    sms = store.add_sms(SmsRecord("u1", "inbound", "+62811", "kept in the log", "2024-05-01T10:00:00Z"))
    sms.addErrback(lambda f: f)
    await sleep(0.1)
    with capturedLogs() as events:
        await store.stop_retrying()  # does not wait 30 s for the next retry
    [critical] = [e for e in events if e["log_level"] is LogLevel.critical]
    assert "kept in the log" in repr(critical["record"])
    await store.close()
