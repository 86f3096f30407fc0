"""What only the PostgreSQL store has to show, on a real server (tests/engines.py): migrations applied
once by nodes starting together, the SMS outbox's order per number under concurrent consumers, no SMS
lost when a consumer's connection dies mid-delivery, and records kept through an outage of the server.
"""

import os
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task

from gateway.config import ConfigError, loads
from gateway.context import Readiness
from gateway.store import (
    GuardedStore,
    PostgresStore,
    SchemaTooNew,
    SmsRecord,
    StoreHealth,
    StoreUnavailable,
    open_store,
)
from gateway.store.pg_schema import MIGRATIONS
from tests.engines import PostgresServer

from .helpers import failure_of, make_cdr
from .test_faults import Rig, wait_until

pytestmark = pytest.mark.timeout(90)

NOW = "2024-05-01T10:00:00.000000Z"


def reactor():
    from twisted.internet import reactor

    return reactor


def sms(uid, number="+62811", direction="outbound", text=None):
    return SmsRecord(uid=uid, direction=direction, number=number, text=text or f"text {uid}", created_at=NOW)


async def opened(url, **kw):
    store = PostgresStore(url, reactor(), **kw)
    await store.open()
    return store


def versions(server, dbname):
    return [v for (v,) in server.execute("SELECT version FROM schema_version ORDER BY version", dbname)]


# -- migrations ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_migrations_are_applied_once_and_again_is_a_no_op(postgres_server):
    server, db = postgres_server.server, postgres_server.name
    first = await opened(postgres_server.url)
    await first.add_cdr(make_cdr("c1"))
    await first.close()
    assert versions(server, db) == list(range(1, len(MIGRATIONS) + 1))

    again = await opened(postgres_server.url)
    try:
        assert (await again.cdr("c1"))["call_id"] == "c1"  # nothing was re-created
    finally:
        await again.close()
    assert versions(server, db) == list(range(1, len(MIGRATIONS) + 1))


@pytest_twisted.ensureDeferred
async def test_nodes_opening_together_apply_each_migration_once(postgres_server):
    stores = [PostgresStore(postgres_server.url, reactor()) for _ in range(4)]
    try:
        await defer.gatherResults([s.open() for s in stores], consumeErrors=True)
        assert versions(postgres_server.server, postgres_server.name) == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await defer.gatherResults([s.close() for s in stores])


@pytest_twisted.ensureDeferred
async def test_a_new_migration_is_applied_alone_and_a_newer_schema_is_refused(postgres_server):
    await (await opened(postgres_server.url)).close()
    extended = [*MIGRATIONS, "CREATE TABLE later (x INTEGER)"]
    store = await opened(postgres_server.url, migrations=extended)
    await store.close()
    assert versions(postgres_server.server, postgres_server.name) == list(range(1, len(extended) + 1))
    assert postgres_server.server.execute("SELECT count(*) FROM later", postgres_server.name) == [(0,)]

    older = PostgresStore(postgres_server.url, reactor())  # a gateway that knows fewer migrations
    error = await failure_of(older.open(), SchemaTooNew)
    assert f"version {len(extended)}" in str(error)
    await failure_of(older.cdrs(), StoreUnavailable)
    await older.close()


# -- the outbox ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_consumers_keep_each_numbers_order_and_never_hold_one_number_twice(postgres_server):
    store = await opened(postgres_server.url)
    numbers = ["+1", "+2", "+3"]
    for n in range(6):
        for number in numbers:
            await store.add_sms(sms(f"{number}-{n}", number=number))
    delivered = {number: [] for number in numbers}
    in_flight = set()
    by_consumer = {"a": 0, "b": 0}

    async def consume(name, outbox, pause):
        while True:
            record = await outbox.claim("outbound")
            if record is None:
                if not await store.pending_sms():
                    return
                await task.deferLater(reactor(), 0.01, lambda: None)
                continue
            assert record.number not in in_flight, f"{record.number} held by two consumers"
            in_flight.add(record.number)
            await task.deferLater(reactor(), pause, lambda: None)  # the delivery takes a while
            delivered[record.number].append(record.uid)
            by_consumer[name] += 1
            in_flight.discard(record.number)
            assert await outbox.finish("delivered", NOW) is True

    a, b = store.outbox(), store.outbox()
    try:
        consumers = [defer.ensureDeferred(consume("a", a, 0.02)), defer.ensureDeferred(consume("b", b, 0.013))]
        await defer.gatherResults(consumers, consumeErrors=True)
        for number in numbers:
            assert delivered[number] == [f"{number}-{n}" for n in range(6)]
        assert by_consumer["a"] > 0 and by_consumer["b"] > 0  # both did deliver
        assert await store.pending_sms() == []
    finally:
        await a.close()
        await b.close()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_no_sms_is_lost_when_a_consumers_connection_dies_mid_delivery(postgres_server):
    store = await opened(postgres_server.url)
    first, _ = await store.add_sms(sms("u1"))
    second, _ = await store.add_sms(sms("u2"))
    dying, other = store.outbox(), store.outbox()
    try:
        held = await dying.claim()
        assert held == first
        assert await other.claim() is None  # the number is held: its next SMS waits too
        # the consumer's node dies mid-delivery: its connection goes, and with it the row lock
        pid = dying.backend_pid
        assert postgres_server.server.execute(f"SELECT pg_terminate_backend({pid})") == [(True,)]

        async def claimed():
            got = await other.claim()
            return got

        record = None
        deadline = reactor().seconds() + 10
        while record is None and reactor().seconds() < deadline:
            record = await claimed()
            if record is None:
                await task.deferLater(reactor(), 0.02, lambda: None)
        assert record == first  # delivered again, with the same uid and seq: at least once
        await failure_of(dying.finish("delivered", NOW), StoreUnavailable)
        assert await other.finish("delivered", NOW) is True
        assert await other.claim() == second
        assert await other.finish("delivered", NOW) is True
        # the consumer whose connection died connects again at its next claim
        assert await dying.claim() is None
        assert [(r.uid, r.status) for r in await store.list_sms()] == [("u1", "delivered"), ("u2", "delivered")]
    finally:
        await dying.close()
        await other.close()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_attempt_lets_the_sms_go_pending_and_counted(postgres_server):
    store = await opened(postgres_server.url)
    outbox = store.outbox()
    try:
        stored, _ = await store.add_sms(sms("u1"))
        assert (await outbox.claim()).uid == "u1"
        await outbox.attempt_failed("transport down")
        again = await outbox.claim()
        assert (again.seq, again.attempts, again.last_error) == (stored.seq, 1, "transport down")
        await outbox.release()
        assert (await outbox.claim()).attempts == 1
        await failure_of(outbox.claim(), RuntimeError)  # one held at a time
    finally:
        await outbox.close()
        await store.close()


# -- faults ----------------------------------------------------------------------------------------


class PostgresRig(Rig):
    """The fault tests' rig (a GuardedStore with metrics, readiness and a registry-like CDR queue)
    over the PostgreSQL store."""

    def __init__(self, url):
        self.url = url
        super().__init__(None)

    def _backend(self, _path):
        return PostgresStore(self.url, reactor())


@pytest_twisted.ensureDeferred
async def test_records_wait_through_an_outage_and_arrive_after(postgres_server):
    rig = PostgresRig(postgres_server.url)
    await rig.store.open()
    try:
        await rig.store.add_cdr(make_cdr("warm-up"))
        postgres_server.server.stop()
        await rig.check_outage_and_recovery("PostgreSQL", postgres_server.server.start)
    finally:
        await rig.close()


@pytest_twisted.ensureDeferred
async def test_after_a_server_restart_the_next_operation_connects_again_unharmed(postgres_server):
    store = await opened(postgres_server.url)
    try:
        await defer.gatherResults([store.add_cdr(make_cdr(f"c{n}")) for n in range(4)])  # several idle connections
        postgres_server.server.restart()
        assert [c["call_id"] for c in await store.cdrs()] == ["c0", "c1", "c2", "c3"]
        await store.add_cdr(make_cdr("c4"))
        assert len(await store.cdrs()) == 5
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_store_opened_while_the_server_is_down_opens_when_it_comes(tmp_path):
    server = PostgresServer()
    readiness = Readiness()
    health = StoreHealth(None, readiness.register("store"))
    backend = PostgresStore(server.url("gateway"), reactor(), open_retry_delays=(0.1,))
    store = GuardedStore(backend, reactor(), health=health, delays=(0.1,))
    try:
        await store.open()  # the daemon starts all the same
        assert not backend.is_open
        assert f"PostgreSQL gateway@127.0.0.1:{server.port}/gateway cannot be reached" in readiness.not_ready()["store"]
        error = await failure_of(store.cdrs(), StoreUnavailable)
        assert "PostgreSQL" in str(error) and f"127.0.0.1:{server.port}" in str(error)
        written = store.add_sms(sms("u1"))  # waits in the guard's queue
        server.start()
        server.create_database("gateway")
        stored, created = await written
        assert created and stored.uid == "u1"
        assert [r.uid for r in await store.pending_sms()] == ["u1"]
        await wait_until(lambda: readiness.ready, "readiness back")
    finally:
        await store.close()
        server.cleanup()


@pytest_twisted.ensureDeferred
async def test_text_postgresql_cannot_hold_is_refused_not_retried(postgres_server):
    store = await opened(postgres_server.url)
    try:
        error = await failure_of(store.add_sms(sms("u1", text="nul \x00 inside")), ValueError)
        assert "PostgreSQL" in str(error)
        assert await store.list_sms() == []
    finally:
        await store.close()


class _Writer(protocol.ProcessProtocol):
    """sms_writer.py's acknowledgements: ``acked`` (uids), ``enough`` fires after ``count`` of them."""

    def __init__(self, count):
        self.count = count
        self.buffer = b""
        self.acked = []
        self.stderr = b""
        self.enough = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        self.acked += [line.split()[1].decode() for line in lines if line.startswith(b"ACK ")]
        if len(self.acked) >= self.count and not self.enough.called:
            self.enough.callback(None)

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        if not self.enough.called:
            self.enough.errback(RuntimeError(f"the writer ended early: {self.stderr.decode(errors='replace')[-2000:]}"))
        self.ended.callback(reason.value)


@pytest_twisted.ensureDeferred
async def test_every_record_acknowledged_before_a_node_is_killed_9_is_in_postgresql(postgres_server):
    script = os.path.join(os.path.dirname(__file__), "sms_writer.py")
    writers = []
    for node in ("n1", "n2"):  # two nodes writing at once, as a cluster does
        proto = _Writer(20)
        transport = reactor().spawnProcess(proto, sys.executable, [sys.executable, script, postgres_server.url, node],
                                           env=os.environ.copy())
        writers.append((proto, transport))
    try:
        for proto, _ in writers:
            await proto.enough.addTimeout(60, reactor())
    finally:
        for proto, transport in writers:
            if not proto.ended.called:
                transport.signalProcess("KILL")
            ended = await proto.ended
            assert ended.signal == 9
    store = await opened(postgres_server.url)
    try:
        acked = {uid for proto, _ in writers for uid in proto.acked}
        stored_sms = {r.uid for r in await store.list_sms(limit=1000)}
        stored_cdrs = {c["call_id"] for c in await store.cdrs(limit=1000)}
        assert acked <= stored_sms and acked <= stored_cdrs
        assert len(acked) >= 40
        # per number, each node's SMS are in the order it wrote them
        for node in ("n1", "n2"):
            for number in ("+62810", "+62811", "+62812"):
                mine = [int(r.uid.split("-")[1]) for r in await store.list_sms(number=number, limit=1000)
                        if r.uid.startswith(node + "-")]
                assert mine == sorted(mine)
    finally:
        await store.close()


# -- configuration ---------------------------------------------------------------------------------


def test_store_url_selects_postgresql_and_sqlite_stays_the_default():
    assert loads("", "test").store.url == "sqlite:var/gateway.sqlite"
    config = loads('[store]\nurl = "postgresql://gw@db.example:5432/gateway"\n', "test")
    store = open_store(config.store.url, reactor())
    assert isinstance(store.backend, PostgresStore)
    assert store.path == "postgresql://gw@db.example:5432/gateway"
    with pytest.raises(ConfigError, match="postgresql://user@host:port/dbname"):
        loads('[store]\nurl = "mysql://gw@db/gateway"\n', "test")


def test_the_password_of_a_url_is_never_shown():
    store = PostgresStore("postgresql://gw:s3cret@db.example/gateway", reactor())
    assert "s3cret" not in repr(store) and "s3cret" not in store.path
    with pytest.raises(ValueError) as raised:
        open_store("postgresql:/gw:s3cret@db", reactor())
    assert "s3cret" not in str(raised.value)
