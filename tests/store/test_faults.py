"""Real storage faults on the real SQLite store: the disk full, the database locked by another process.

While the store cannot be written, records wait in the bounded queues (the call registry's for
CDRs, the store's own for SMS), the readiness component ``store`` is down naming the database's
error, ``gateway_store_write_failures_total{kind}`` counts the failed attempts and
``gateway_store_pending{kind}`` shows what waits; once the fault is gone, every record written
meanwhile is in the database.

These are integration tests on the real reactor: each waits by polling with a deadline, never a
fixed sleep. The queues' logic itself (order, pending_max, stop, refusals) is tested exactly on a
clock in test_queues.py.

- disk full: a real one. The database lives on a 512 KiB tmpfs the test mounts and then fills
  with a file; the store is closed and the tmpfs unmounted whatever the outcome. Without the
  right to mount (not root, or no mount permission in this container) the test is skipped,
  saying why.
- locked: a second connection holds the write lock (``BEGIN EXCLUSIVE``), as another process
  would. The store's busy timeout is shortened to keep the test quick.
"""

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
#: how long a wait for the store may take before the test fails
DEADLINE = 20.0
POLL = 0.02


def reactor():
    from twisted.internet import reactor

    return reactor


async def wait_until(predicate, what, timeout=DEADLINE):
    """Poll ``predicate`` on the reactor until it holds; fail naming ``what`` after ``timeout`` seconds."""
    clock = reactor()
    deadline = clock.seconds() + timeout
    while not predicate():
        if clock.seconds() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(clock, POLL, lambda: None)


class Rig:
    """A GuardedStore over a real SQLite file, its metrics and readiness, and a registry-like CDR queue."""

    def __init__(self, path):
        self.metrics = CollectorRegistry()
        self.readiness = Readiness()
        self.health = StoreHealth(self.metrics, self.readiness.register("store"))
        self.store = GuardedStore(self._backend(path), reactor(), health=self.health, delays=DELAYS)
        self.cdrs = RetryingSink(reactor(), self.store.add_cdr, "CDR", **self.store.queue_options)
        self.closed = False

    def _backend(self, path):
        return SqliteCdrStore(path, reactor())

    def sample(self, name, **labels):
        return self.metrics.get_sample_value(name, labels) or 0

    def failures(self, kind):
        return self.sample("gateway_store_write_failures_total", kind=kind)

    async def check_outage_and_recovery(self, error_part, recover, count=5):
        for n in range(count):
            self.cdrs.write(make_cdr(f"c{n}"))
        sms = [self.store.add_sms(SmsRecord(f"u{n}", "inbound", "+62811", f"sms {n}", "2024-05-01T10:00:00Z"))
               for n in range(count)]
        await wait_until(lambda: self.failures("cdr") >= 1 and self.failures("sms") >= 1, "the first failed writes")
        assert not self.readiness.ready
        assert error_part in self.readiness.not_ready()["store"]
        assert self.sample("gateway_store_pending", kind="cdr") == count
        assert self.sample("gateway_store_pending", kind="sms") == count
        # a few retries, still failing: nothing is lost meanwhile
        seen = self.failures("sms")
        await wait_until(lambda: self.failures("sms") >= seen + 2, "two more failed retries")
        assert self.cdrs.pending == count
        assert self.sample("gateway_store_pending", kind="sms") == count
        recover()
        stored = await defer.gatherResults(sms)
        await wait_until(lambda: self.cdrs.pending == 0 and self.readiness.ready, "the CDRs written and readiness back")
        assert [record.text for record, created in stored] == [f"sms {n}" for n in range(count)]
        stored_cdrs = {c["call_id"] for c in await self.store.cdrs()} - {"warm-up"}
        assert sorted(stored_cdrs) == [f"c{n}" for n in range(count)]
        assert [r.uid for r in await self.store.pending_sms()] == [f"u{n}" for n in range(count)]
        assert self.sample("gateway_store_pending", kind="cdr") == 0
        assert self.sample("gateway_store_records_not_written_total", kind="cdr", reason="overflow") == 0

    async def close(self):
        if not self.closed:
            self.closed = True
            await self.cdrs.close()
            await self.store.close()


async def open_rig(path):
    r = Rig(path)
    await r.store.open()
    assert r.readiness.ready
    return r


def _mounted(path):
    return os.path.ismount(path)


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs mounted for this test, unmounted afterwards whatever happened; skips if it cannot be."""
    path = tmp_path / "small"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a tmpfs of its own, and mounting one needs root")
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(path)],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs on {path} to fill: {e}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs on {path} to fill (this container may forbid mounts): "
                    f"{mounted.stderr.strip() or mounted.returncode}")
    try:
        yield path
    finally:
        # the test has closed its store by now, so a plain unmount works; a lazy one if something still holds it
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)
        assert not _mounted(path), f"the test's tmpfs on {path} is still mounted"


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


@pytest_twisted.ensureDeferred
async def test_a_full_disk_holds_records_back_until_there_is_room(small_disk):
    r = await open_rig(small_disk / "gateway.sqlite")
    try:
        await r.store.add_cdr(make_cdr("warm-up"))  # the WAL has its first pages
        filler = fill(small_disk)
        await r.check_outage_and_recovery("full", filler.unlink)
    finally:
        await r.close()  # before the tmpfs is unmounted


@pytest_twisted.ensureDeferred
async def test_a_locked_database_holds_records_back_until_the_lock_goes(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 100)
    r = await open_rig(tmp_path / "gateway.sqlite")
    other = sqlite3.connect(tmp_path / "gateway.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        await r.check_outage_and_recovery("locked", lambda: other.execute("COMMIT"))
    finally:
        other.close()
        await r.close()
