"""What every ISmsStore promises, on the SQLite store and on the in-memory fake alike; and restarts."""

import attrs
import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from gateway.store import ConversationRecord, ISmsStore, SmsRecord, SqliteCdrStore, StoreUnavailable
from store.helpers import failure_of, store_fixture  # noqa: F401 (the store fixture)

NOW = "2024-05-01T10:00:00.000000Z"
LATER = "2024-05-01T10:05:00.000000Z"


def sms(uid, number="+4915100000001", direction="inbound", **extra):
    return SmsRecord(uid=uid, direction=direction, number=number, text=f"text {uid}", created_at=NOW, **extra)


def conversation(conversation_id, number="+4915100000001"):
    return ConversationRecord(conversation_id, number, {"id": f"p-{conversation_id}", "name": number}, NOW)


def test_the_store_provides_the_interface(store):
    assert verifyObject(ISmsStore, store)


@pytest_twisted.ensureDeferred
async def test_records_get_growing_seqs_and_come_back_pending_in_order(store):
    stored = [(await store.add_sms(sms(uid, direction=d)))[0] for uid, d in (("a", "inbound"), ("b", "outbound"), ("c", "inbound"))]
    assert [r.seq for r in stored] == sorted({r.seq for r in stored})
    assert stored[0] == attrs.evolve(sms("a"), seq=stored[0].seq)
    assert await store.pending_sms() == stored


@pytest_twisted.ensureDeferred
async def test_the_same_external_id_twice_in_one_direction_is_stored_once(store):
    first, created = await store.add_sms(sms("a", external_id="provider-1"))
    assert created
    again, created = await store.add_sms(sms("b", external_id="provider-1"))
    assert (again, created) == (first, False)
    other, created = await store.add_sms(sms("c", external_id="provider-1", direction="outbound"))
    assert created and other.seq > first.seq
    assert [r.uid for r in await store.list_sms()] == ["a", "c"]


@pytest_twisted.ensureDeferred
async def test_attempts_and_finishing(store):
    a, _ = await store.add_sms(sms("a"))
    b, _ = await store.add_sms(sms("b", direction="outbound"))
    await store.sms_attempt_failed(a.seq, "chat server down")
    await store.sms_attempt_failed(a.seq, "still down")
    assert await store.finish_sms(a.seq, "delivered", LATER, conversation_id="conv-1") is True
    assert await store.finish_sms(a.seq, "failed", LATER) is False  # not pending any more
    assert await store.finish_sms(b.seq, "failed", LATER, error="rejected: bad number") is True
    got = {r.uid: r for r in await store.list_sms()}
    assert got["a"] == attrs.evolve(a, status="delivered", attempts=2, last_error="still down", finished_at=LATER, conversation_id="conv-1")
    assert got["b"] == attrs.evolve(b, status="failed", last_error="rejected: bad number", finished_at=LATER)
    assert await store.pending_sms() == []


@pytest_twisted.ensureDeferred
async def test_listing_narrows_by_direction_number_and_seq(store):
    for uid, number, direction in (("a", "1", "inbound"), ("b", "2", "outbound"), ("c", "1", "outbound"), ("d", "1", "inbound")):
        await store.add_sms(sms(uid, number=number, direction=direction))
    assert [r.uid for r in await store.list_sms(number="1")] == ["a", "c", "d"]
    assert [r.uid for r in await store.list_sms(direction="outbound")] == ["b", "c"]
    everything = await store.list_sms()
    assert [r.uid for r in await store.list_sms(after=everything[1].seq, limit=1)] == ["c"]


@pytest.mark.parametrize(
    "record",
    [
        sms("", number="1"),
        sms("a", number=""),
        sms("a", direction="sideways"),
        sms("a", status="delivered"),
        sms("a", seq=3),
        attrs.evolve(sms("a"), text=None),
        {"uid": "a"},
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_records_are_refused(store, record):
    await failure_of(store.add_sms(record), ValueError)
    assert await store.list_sms() == []


@pytest.mark.parametrize("query", [{"direction": "up"}, {"after": -1}, {"limit": 0}, {"number": ""}])
@pytest_twisted.ensureDeferred
async def test_bad_queries_are_refused(store, query):
    await failure_of(store.list_sms(**query), ValueError)


@pytest_twisted.ensureDeferred
async def test_one_open_conversation_per_number(store):
    await store.save_conversation(conversation("c1"))
    await store.save_conversation(conversation("c2", number="+2"))
    await store.save_conversation(conversation("c3"))  # replaces c1
    assert [c.conversation_id for c in await store.open_conversations()] == ["c2", "c3"]
    assert (await store.open_conversations())[1] == conversation("c3")
    assert await store.close_conversation("c3", LATER, "ended by the agent") is True
    assert await store.close_conversation("c3", LATER, "again") is False
    assert [c.conversation_id for c in await store.open_conversations()] == ["c2"]
    await failure_of(store.save_conversation(attrs.evolve(conversation("c4"), participant=object())), ValueError)


@pytest_twisted.ensureDeferred
async def test_nothing_works_after_close(store):
    await store.close()
    await failure_of(store.add_sms(sms("a")), StoreUnavailable)
    await failure_of(store.pending_sms(), StoreUnavailable)


@pytest_twisted.ensureDeferred
async def test_pending_records_and_open_conversations_outlive_the_process(tmp_path):
    from twisted.internet import reactor

    path = tmp_path / "restart.sqlite"
    first = SqliteCdrStore(path, reactor)
    await first.open()
    a, _ = await first.add_sms(sms("a"))
    b, _ = await first.add_sms(sms("b"))
    await first.finish_sms(a.seq, "delivered", LATER)
    await first.save_conversation(conversation("c1"))
    await first.close()

    second = SqliteCdrStore(path, reactor)
    await second.open()
    try:
        assert await second.pending_sms() == [b]
        assert await second.open_conversations() == [conversation("c1")]
        c, _ = await second.add_sms(sms("c"))
        assert c.seq > b.seq
    finally:
        await second.close()
