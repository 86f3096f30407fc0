"""The SMS outbox across nodes (cluster mode on PostgreSQL): ClaimedOutbox on a real server
(tests/engines.py's ``postgres_server``): consumers of two stores (two nodes) keep each number's
order and deliver each SMS once; a node killed -9 mid-delivery (a second process holding a claim)
loses nothing: its SMS is delivered by the other node with the same uid and seq; a failed attempt
is counted, the number waits, and a refusal is final."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
from twisted.internet import task, threads

from gateway.chat.interfaces import SmsRejected
from gateway.chat.outbox import ClaimedOutbox
from gateway.store import PostgresStore, SmsRecord

pytestmark = pytest.mark.timeout(90)

NOW = "2024-05-01T10:00:00.000000Z"


def reactor():
    from twisted.internet import reactor

    return reactor


def sms(uid, number, direction="outbound"):
    return SmsRecord(uid=uid, direction=direction, number=number, text=f"text {uid}", created_at=NOW)


async def opened(url):
    store = PostgresStore(url, reactor())
    await store.open()
    return store


async def until(predicate, timeout=20.0, what="the condition"):
    deadline = reactor().seconds() + timeout
    while not predicate():
        if reactor().seconds() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await task.deferLater(reactor(), 0.02, lambda: None)


def no_retry_wait(failures):
    return 0.05


@pytest_twisted.ensureDeferred
async def test_two_nodes_deliver_each_sms_once_in_each_numbers_order(postgres_server):
    a, b = await opened(postgres_server.url), await opened(postgres_server.url)
    numbers = ["+15550001", "+15550002", "+15550003"]
    delivered = []
    in_flight = set()

    def deliver(node):
        def run(record):
            assert record.number not in in_flight, "one number delivered twice at once"
            in_flight.add(record.number)

            def done():
                in_flight.discard(record.number)
                delivered.append((node, record.number, record.seq, record.uid))

            return task.deferLater(reactor(), 0.005 * (1 + record.seq % 3), done)

        return run

    outboxes = [ClaimedOutbox(reactor(), store.outbox, "outbound", deliver(name), retry_policy=no_retry_wait,
                              poll_interval=0.05)
                for name, store in (("a", a), ("b", b))]
    try:
        for outbox in outboxes:
            outbox.resume()
        for n in range(8):
            for number in numbers:
                await (a if n % 2 else b).add_sms(sms(f"{number}-{n}", number))
        for outbox in outboxes:
            outbox.wake()
        await until(lambda: len(delivered) == 24, what="24 deliveries")
        for number in numbers:
            seqs = [seq for _, n, seq, _ in delivered if n == number]
            assert seqs == sorted(seqs), f"{number} out of order: {seqs}"
        assert sorted(uid for *_, uid in delivered) == sorted(f"{n}-{i}" for n in numbers for i in range(8))
        assert {node for node, *_ in delivered} == {"a", "b"}  # both nodes took part
        await until(lambda: all(o.pending == 0 for o in outboxes), what="the outcomes written")
        assert {r.status for r in await a.list_sms(limit=100)} == {"delivered"}
    finally:
        for outbox in outboxes:
            await outbox.close()
        await a.close()
        await b.close()


HOLDER = textwrap.dedent("""
    import sys
    from twisted.internet import reactor, defer
    from gateway.store import PostgresStore

    async def main():
        store = PostgresStore(sys.argv[1], reactor)
        await store.open()
        outbox = store.outbox()
        record = await outbox.claim("outbound")
        print(record.seq, record.uid, flush=True)   # delivering... and killed -9 here

    defer.ensureDeferred(main()).addErrback(lambda f: (f.printTraceback(), reactor.stop()))
    reactor.run()
""")


@pytest_twisted.ensureDeferred
async def test_a_node_killed_mid_delivery_loses_no_sms(postgres_server):
    store = await opened(postgres_server.url)
    for n in range(3):
        await store.add_sms(sms(f"u{n}", "+15550009"))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, postgres_server.url], stdout=subprocess.PIPE,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    delivered = []
    outbox = ClaimedOutbox(reactor(), store.outbox, "outbound", lambda r: delivered.append((r.seq, r.uid)),
                           retry_policy=no_retry_wait, poll_interval=0.05)
    try:
        line = await threads.deferToThread(holder.stdout.readline)
        seq, uid = line.split()
        assert uid == b"u0"
        outbox.resume()
        await task.deferLater(reactor(), 0.5, lambda: None)
        assert delivered == []  # the number's head is held by the other node: its order holds
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        await until(lambda: len(delivered) == 3, what="the three SMS delivered by the surviving node")
        assert delivered == [(int(seq), "u0"), (int(seq) + 1, "u1"), (int(seq) + 2, "u2")]
        await until(lambda: outbox.pending == 0, what="the outcomes written")
        assert [(r.uid, r.status) for r in await store.list_sms()] == [
            ("u0", "delivered"), ("u1", "delivered"), ("u2", "delivered")]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        await outbox.close()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_attempt_is_counted_and_retried_and_a_refusal_is_final(postgres_server):
    store = await opened(postgres_server.url)
    await store.add_sms(sms("bad", "+15550010"))
    await store.add_sms(sms("flaky", "+15550011"))
    await store.add_sms(sms("after", "+15550011"))
    tries = []

    def deliver(record):
        tries.append(record.uid)
        if record.uid == "bad":
            raise SmsRejected("no such subscriber")
        if record.uid == "flaky" and tries.count("flaky") < 3:
            raise ConnectionError("transport down")
        return "conv-1"

    outbox = ClaimedOutbox(reactor(), store.outbox, "outbound", deliver, retry_policy=lambda n: 0.1 * (n + 1),
                           poll_interval=0.05)
    try:
        outbox.resume()
        await until(lambda: "after" in tries, what="the number's next SMS")
        await until(lambda: outbox.pending == 0, what="the outcomes written")
        assert [u for u in tries if u != "bad"] == ["flaky", "flaky", "flaky", "after"]
        assert tries.count("bad") == 1
        records = {r.uid: r for r in await store.list_sms()}
        assert (records["bad"].status, records["bad"].last_error) == ("failed", "SmsRejected: no such subscriber")
        assert (records["flaky"].status, records["flaky"].attempts) == ("delivered", 2)
        assert records["flaky"].conversation_id == "conv-1"
        assert records["after"].status == "delivered"
    finally:
        await outbox.close()
        await store.close()


def test_the_connector_claims_only_in_cluster_mode_on_postgresql(tmp_path):
    import types

    from gateway.chat.service import _claims
    from gateway.store import GuardedStore, SqliteCdrStore

    pg = PostgresStore("postgresql://gw@127.0.0.1:1/gw", reactor())
    assert _claims(types.SimpleNamespace(store=GuardedStore(pg, reactor()))) == pg.outbox
    sqlite = SqliteCdrStore(tmp_path / "x.db", reactor())
    assert _claims(types.SimpleNamespace(store=GuardedStore(sqlite, reactor()))) is None


@pytest_twisted.ensureDeferred
async def test_a_stop_lets_the_held_sms_go_and_a_resume_at_once_delivers_it(postgres_server):
    """The chat link handed over and back: stop() cancels the delivery under way (the SMS stays
    pending), and resume() right after starts each consumer again once its old loop has ended."""
    from twisted.internet import defer

    store = await opened(postgres_server.url)
    await store.add_sms(sms("first", "+15550020"))
    await store.add_sms(sms("second", "+15550020"))
    attempts, delivered = [], []
    blocked = defer.Deferred()

    def deliver(record):
        attempts.append(record.uid)
        if len(attempts) == 1:
            return blocked  # under way when the outbox stops
        delivered.append(record.uid)
        return None

    outbox = ClaimedOutbox(reactor(), store.outbox, "outbound", deliver, retry_policy=no_retry_wait,
                           poll_interval=0.05)
    try:
        outbox.resume()
        await until(lambda: attempts == ["first"], what="the first attempt")
        stopped = outbox.stop()
        outbox.resume()
        await stopped
        assert blocked.called  # cancelled
        await until(lambda: delivered == ["first", "second"], what="both delivered after the resume")
        await until(lambda: outbox.pending == 0, what="the outcomes written")
        assert [(r.uid, r.status, r.attempts) for r in await store.list_sms()] == [
            ("first", "delivered", 0), ("second", "delivered", 0)]
    finally:
        await outbox.close()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_numbers_backing_off_do_not_starve_the_others(postgres_server):
    """As many persistently failing older numbers as consumers: each consumer used to claim the
    oldest pending number again, hold it and sleep out its delay, so no other number went out. The
    numbers this node backs off are left out of its claims; a failing number's later SMS still
    waits behind its head."""
    store = await opened(postgres_server.url)
    for n in (1, 2, 3):
        await store.add_sms(sms(f"bad{n}", f"+1555003{n}"))
        await store.add_sms(sms(f"bad{n}-later", f"+1555003{n}"))
    await store.add_sms(sms("good", "+15550039"))
    tries = []

    def deliver(record):
        tries.append(record.uid)
        if record.uid.startswith("bad"):
            raise ConnectionError("transport down")
        return None

    outbox = ClaimedOutbox(reactor(), store.outbox, "outbound", deliver, retry_policy=lambda n: 600.0,
                           consumers=2, poll_interval=0.05)
    try:
        outbox.resume()
        await until(lambda: "good" in tries, timeout=5.0, what="the healthy number's SMS")
        await until(lambda: {"bad1", "bad2", "bad3"} <= set(tries), timeout=5.0, what="every failing head tried")
        assert not [u for u in tries if u.endswith("-later")]  # never overtakes its failing head
        assert sorted(tries) == ["bad1", "bad2", "bad3", "good"]  # each tried once: they back off
        assert set(outbox.status()["waiting"]) == {"+15550031", "+15550032", "+15550033"}
    finally:
        await outbox.close()
        await store.close()
