"""What every ICdrStore promises, checked on the SQLite store and on the in-memory fake alike."""

import pathlib
import re

import pytest
import pytest_twisted
from twisted.internet import task
from zope.interface.verify import verifyObject

from gateway.store import (
    MAX_LIMIT,
    DuplicateCdr,
    ICdrStore,
    MemoryCdrStore,
    StoreUnavailable,
)

from .helpers import failure_of, make_cdr, store_fixture  # noqa: F401 (the store fixture)

NORMALIZED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_the_store_provides_the_interface(store):
    assert verifyObject(ICdrStore, store)


@pytest_twisted.ensureDeferred
async def test_a_cdr_comes_back_whole_with_its_extra_keys(store):
    cdr = make_cdr("c1", queue="sales", recording={"path": "/rec/c1.wav", "bytes": 48000}, legs=[{"a": [1, 2]}])
    await store.add_cdr(cdr)
    assert await store.cdr("c1") == {**cdr, "provider_cdrs": []}


@pytest_twisted.ensureDeferred
async def test_an_unknown_call_has_no_cdr(store):
    assert await store.cdr("nope") is None


@pytest_twisted.ensureDeferred
async def test_changing_the_dict_after_add_changes_nothing_stored(store):
    cdr = make_cdr("c1")
    d = store.add_cdr(cdr)
    cdr["cause"] = "changed"
    cdr["legs"].append({"late": True})
    await d
    assert (await store.cdr("c1"))["cause"] == "normal"
    assert (await store.cdr("c1"))["legs"] == make_cdr("c1")["legs"]


@pytest_twisted.ensureDeferred
async def test_a_second_cdr_for_the_same_call_is_refused_and_the_first_kept(store):
    await store.add_cdr(make_cdr("c1"))
    await failure_of(store.add_cdr(make_cdr("c1", cause="busy")), DuplicateCdr)
    assert (await store.cdr("c1"))["cause"] == "normal"


@pytest.mark.parametrize(
    "cdr",
    [
        "not a dict",
        {k: v for k, v in make_cdr("x").items() if k != "call_id"},
        make_cdr(""),
        make_cdr(42),
        make_cdr("c1", ended_at=None),
        make_cdr("c1", ended_at="yesterday"),
        make_cdr("c1", started_at="10 o'clock"),
        make_cdr("c1", tags={"a", "b"}),
        make_cdr("c1", duration=float("nan")),
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_cdrs_are_refused_and_nothing_is_stored(store, cdr):
    await failure_of(store.add_cdr(cdr), ValueError)
    assert await store.cdrs() == []


@pytest_twisted.ensureDeferred
async def test_cdrs_come_oldest_first_from_since_inclusive(store):
    for call_id, ended in [("late", "2024-05-01T12:00:00Z"), ("early", "2024-05-01T08:00:00Z"), ("mid", "2024-05-01T10:00:00Z")]:
        await store.add_cdr(make_cdr(call_id, ended_at=ended))
    assert [c["call_id"] for c in await store.cdrs()] == ["early", "mid", "late"]
    assert [c["call_id"] for c in await store.cdrs(since="2024-05-01T10:00:00Z")] == ["mid", "late"]
    assert [c["call_id"] for c in await store.cdrs(since="2024-05-01T10:00:00.000001Z")] == ["late"]
    assert [c["call_id"] for c in await store.cdrs(limit=2)] == ["early", "mid"]


@pytest_twisted.ensureDeferred
async def test_recent_cdrs_come_newest_first_however_old(store):
    assert await store.recent_cdrs() == []
    for call_id, ended in [
        ("mid", "2024-05-01T10:00:00Z"),
        ("last-year", "2023-05-01T10:00:00Z"),
        ("late-b", "2024-05-01T12:00:00Z"),
        ("jakarta", "2024-05-01T18:30:00+07:00"),  # 11:30Z
        ("late-a", "2024-05-01T12:00:00Z"),
    ]:
        await store.add_cdr(make_cdr(call_id, ended_at=ended))
    newest_first = ["late-b", "late-a", "jakarta", "mid", "last-year"]
    assert [c["call_id"] for c in await store.recent_cdrs()] == newest_first
    assert [c["call_id"] for c in await store.recent_cdrs(limit=2)] == newest_first[:2]
    assert [c["call_id"] for c in await store.recent_cdrs(limit=1)] == ["late-b"]
    assert await store.recent_cdrs(limit=5) == (await store.cdrs())[::-1]


@pytest_twisted.ensureDeferred
async def test_recent_cdrs_carry_their_provider_cdrs(store):
    await store.add_cdr(make_cdr("old", ended_at="2024-05-01T09:00:00Z"))
    await store.add_cdr(make_cdr("new", ended_at="2024-05-01T10:00:00Z"))
    await store.attach_provider_cdr("old", "optimaccs", {"callId": "oc-old"})
    await store.attach_provider_cdr("new", "optimaccs", {"callId": "oc-new", "n": 1})
    await store.attach_provider_cdr("new", "patriot", {"n": 2})
    new, old = await store.recent_cdrs()
    assert new == await store.cdr("new")
    assert [(p["source"], p["data"]) for p in new["provider_cdrs"]] == [
        ("optimaccs", {"callId": "oc-new", "n": 1}), ("patriot", {"n": 2})]
    assert [p["data"] for p in old["provider_cdrs"]] == [{"callId": "oc-old"}]
    [only] = await store.recent_cdrs(limit=1)
    assert only == new


@pytest.mark.parametrize("limit", [0, -1, "5", True, None])
@pytest_twisted.ensureDeferred
async def test_bad_recent_limits_are_refused(store, limit):
    await failure_of(store.recent_cdrs(limit=limit), ValueError)


@pytest_twisted.ensureDeferred
async def test_times_with_other_offsets_compare_as_the_same_instant(store):
    await store.add_cdr(make_cdr("utc", ended_at="2024-05-01T10:00:00Z"))
    await store.add_cdr(make_cdr("jakarta", ended_at="2024-05-01T16:30:00+07:00"))  # 09:30Z
    await store.add_cdr(make_cdr("naive", ended_at="2024-05-01T10:15:00"))  # taken as UTC
    assert [c["call_id"] for c in await store.cdrs()] == ["jakarta", "utc", "naive"]
    assert [c["call_id"] for c in await store.cdrs(since="2024-05-01T12:00:00+02:00")] == ["utc", "naive"]
    # the document keeps the time as the call core wrote it
    assert (await store.cdr("jakarta"))["ended_at"] == "2024-05-01T16:30:00+07:00"


@pytest.mark.parametrize("since, limit", [("last tuesday", 10), (None, 0), (None, -1), (None, "5"), (None, True)])
@pytest_twisted.ensureDeferred
async def test_bad_query_bounds_are_refused(store, since, limit):
    await failure_of(store.cdrs(since=since, limit=limit), ValueError)


@pytest_twisted.ensureDeferred
async def test_limit_is_capped(store):
    for i in range(MAX_LIMIT + 1):
        await store.add_cdr(make_cdr(f"c{i:04}"))
    got = await store.cdrs(limit=MAX_LIMIT + 500)
    assert [c["call_id"] for c in got] == [f"c{i:04}" for i in range(MAX_LIMIT)]
    newest = await store.recent_cdrs(limit=MAX_LIMIT + 500)
    assert [c["call_id"] for c in newest] == [f"c{i:04}" for i in range(MAX_LIMIT, 0, -1)]


@pytest_twisted.ensureDeferred
async def test_provider_cdrs_attach_whether_they_come_before_or_after(store):
    before = {"callId": "oc-1", "talkTime": 25, "vendorExtra": {"trunk": "T1"}}
    after = {"callId": "oc-1", "recordingUrl": "https://example/rec", "cost": None}
    await store.attach_provider_cdr("c1", "optimaccs", before)
    assert await store.cdr("c1") is None  # no gateway CDR yet: nothing to show
    await store.add_cdr(make_cdr("c1"))
    await store.attach_provider_cdr("c1", "optimaccs", after)
    await store.attach_provider_cdr("other", "optimaccs", {"callId": "oc-2"})

    providers = (await store.cdr("c1"))["provider_cdrs"]
    assert [(p["source"], p["data"]) for p in providers] == [("optimaccs", before), ("optimaccs", after)]
    assert all(NORMALIZED.match(p["received_at"]) for p in providers)
    [listed] = await store.cdrs()
    assert listed["provider_cdrs"] == providers


@pytest.mark.parametrize(
    "call_id, source, data",
    [("", "optimaccs", {}), ("c1", "", {}), ("c1", "optimaccs", ["not", "a", "dict"]), ("c1", "optimaccs", {"x": {1, 2}})],
)
@pytest_twisted.ensureDeferred
async def test_malformed_provider_cdrs_are_refused(store, call_id, source, data):
    await failure_of(store.attach_provider_cdr(call_id, source, data), ValueError)


@pytest_twisted.ensureDeferred
async def test_nothing_works_after_close(store):
    await store.close()
    await failure_of(store.add_cdr(make_cdr("c1")), StoreUnavailable)
    await failure_of(store.cdrs(), StoreUnavailable)
    await failure_of(store.recent_cdrs(), StoreUnavailable)
    await failure_of(store.cdr("c1"), StoreUnavailable)
    await failure_of(store.attach_provider_cdr("c1", "optimaccs", {}), StoreUnavailable)


def test_the_fake_stamps_provider_cdrs_with_its_clock():
    clock = task.Clock()
    clock.advance(1714557600.25)  # 2024-05-01T10:00:00.25Z
    store = MemoryCdrStore(clock)
    store.add_cdr(make_cdr("c1"))
    store.attach_provider_cdr("c1", "optimaccs", {"a": 1})
    got = []
    store.cdr("c1").addCallback(got.append)
    assert got[0]["provider_cdrs"] == [{"source": "optimaccs", "data": {"a": 1}, "received_at": "2024-05-01T10:00:00.250000Z"}]


def test_the_memory_store_is_the_shipped_fake_of_the_testing_module():
    """Like every room's fakes, the in-memory store lives in a ``testing`` module; the old names still work."""
    from gateway import store
    from gateway.store import memory, testing

    assert store.MemoryCdrStore is testing.MemoryCdrStore is memory.MemoryCdrStore
    assert "class " not in pathlib.Path(memory.__file__).read_text()
