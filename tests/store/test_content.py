"""No record is lost for what it holds: every refusal path, on the SQLite and PostgreSQL stores and the in-memory fake.

A string with a lone surrogate ("'utf-8' codec can't encode character '\\ud800'"), a NaN or an
infinity (the JSON encoder refuses them) or a value that is not JSON at all: the store keeps a
sanitised copy (the original visibly escaped), logs it once naming the kind and the record's id,
and counts it in gateway_store_records_sanitised_total{kind}.
"""

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.logger import LogLevel, capturedLogs

from gateway.core.cdr import RetryingSink
from gateway.store import (
    ConversationRecord,
    GuardedStore,
    SmsRecord,
    StoreHealth,
)

from .helpers import BACKENDS, failure_of, make_backend, make_cdr

BAD = "\ud800"
ESCAPED = "\\ud800"
NAN = float("nan")


@pytest_twisted.async_yield_fixture(name="guarded", params=BACKENDS)
async def guarded_fixture(request, tmp_path):
    from twisted.internet import reactor

    backend = make_backend(request.param, request, tmp_path)
    metrics = CollectorRegistry()
    store = GuardedStore(backend, reactor, health=StoreHealth(metrics))
    store.metrics = metrics
    await store.open()
    yield store
    await store.close()


def sanitised(store, kind):
    return store.metrics.get_sample_value("gateway_store_records_sanitised_total", {"kind": kind}) or 0


def warnings(events):
    return [e for e in events if e["log_level"] is LogLevel.warn and "sanitised copy" in e["log_format"]]


@pytest.mark.parametrize(
    "extra",
    [
        {"caller": BAD},  # the call whose callerId held a lone surrogate
        {"legs": [{"leg_id": "l1", "caller_id": "08" + BAD}]},
        {"extension": BAD},  # an indexed column too
        {"attributes": {BAD: "key"}},
        {"attributes": {"mos": NAN, "jitter": float("inf")}},
        {"duration": NAN},
        {"attributes": {"raw": b"\x00\xff", "when": {1, 2}}},  # not JSON at all
    ],
    ids=["caller", "leg-caller", "column", "key", "nan-inf", "nan-column", "not-json"],
)
@pytest_twisted.ensureDeferred
async def test_a_cdr_the_store_would_refuse_is_stored_sanitised(guarded, extra):
    with capturedLogs() as events:
        await guarded.add_cdr(make_cdr("c1", **extra))
    stored = await guarded.cdr("c1")
    assert stored is not None and stored["call_id"] == "c1"
    assert sanitised(guarded, "cdr") == 1
    [warning] = warnings(events)
    assert (warning["kind"], warning["record_id"]) == ("cdr", "c1")
    if "caller" in extra:
        assert stored["caller"] == ESCAPED  # visibly escaped, not dropped or replaced
    if "attributes" in extra and "mos" in extra["attributes"]:
        assert stored["attributes"] == {"mos": "NaN", "jitter": "Infinity"}


@pytest_twisted.ensureDeferred
async def test_the_bare_backend_refuses_what_the_guard_sanitises(guarded):
    """Both backends refuse alike (so the in-memory fake is faithful); the guard is what keeps the record."""
    error = await failure_of(guarded.backend.add_cdr(make_cdr("c1", caller=BAD)), ValueError)
    assert "surrogate" in str(error) or "utf-8" in str(error)
    await failure_of(guarded.backend.add_cdr(make_cdr("c2", duration=NAN)), ValueError)


@pytest_twisted.ensureDeferred
async def test_a_cdr_whose_call_id_holds_a_surrogate_is_kept_under_the_escaped_id(guarded):
    await guarded.add_cdr(make_cdr("c" + BAD))
    assert (await guarded.cdr("c" + ESCAPED))["call_id"] == "c" + ESCAPED


@pytest_twisted.ensureDeferred
async def test_provider_cdrs_the_store_would_refuse_are_attached_sanitised(guarded):
    await guarded.add_cdr(make_cdr("c1"))
    await guarded.attach_provider_cdr("c1", "optimaccs", {"callerId": BAD, "mos": NAN, "nested": [{BAD: 1}]})
    await guarded.attach_provider_cdr("c1", "src" + BAD, {"ok": 1})
    [first, second] = (await guarded.cdr("c1"))["provider_cdrs"]
    assert first["data"] == {"callerId": ESCAPED, "mos": "NaN", "nested": [{ESCAPED: 1}]}
    assert second["source"] == "src" + ESCAPED
    assert sanitised(guarded, "provider_cdr") == 1  # both are for call c1: logged and counted once


def sms(uid, number="+628111", text="hello", **extra):
    return SmsRecord(uid, "inbound", number, text, "2024-05-01T10:00:00.000000Z", **extra)


@pytest_twisted.ensureDeferred
async def test_sms_the_store_would_refuse_are_stored_sanitised(guarded):
    with capturedLogs() as events:
        text, created = await guarded.add_sms(sms("u1", text="hi " + BAD))
        number, _ = await guarded.add_sms(sms("u2", number="+62" + BAD))
        external, _ = await guarded.add_sms(sms("u3", external_id="x" + BAD))
    assert created
    assert (text.text, number.number, external.external_id) == ("hi " + ESCAPED, "+62" + ESCAPED, "x" + ESCAPED)
    listed = {r.uid: r for r in await guarded.list_sms()}
    assert listed["u1"].text == "hi " + ESCAPED and listed["u2"].number == "+62" + ESCAPED
    assert sanitised(guarded, "sms") == 3
    assert sorted(w["record_id"] for w in warnings(events)) == ["u1", "u2", "u3"]
    # the same provider id (sanitised alike) is still recognised as a repeat
    (again, created) = await guarded.add_sms(sms("u4", external_id="x" + BAD))
    assert (again.uid, created) == ("u3", False)


@pytest_twisted.ensureDeferred
async def test_sms_bookkeeping_with_a_refused_error_text_is_written(guarded):
    (stored, _) = await guarded.add_sms(sms("u1"))
    await guarded.sms_attempt_failed(stored.seq, "chat server said " + BAD)
    [pending] = await guarded.pending_sms()
    assert (pending.attempts, pending.last_error) == (1, "chat server said " + ESCAPED)
    assert await guarded.finish_sms(stored.seq, "failed", "2024-05-01T10:01:00Z", conversation_id="k" + BAD,
                                    error="refused " + BAD)
    [done] = await guarded.list_sms()
    assert (done.status, done.conversation_id, done.last_error) == ("failed", "k" + ESCAPED, "refused " + ESCAPED)


@pytest_twisted.ensureDeferred
async def test_conversations_the_store_would_refuse_are_saved_sanitised_and_close(guarded):
    record = ConversationRecord("conv" + BAD, "+62" + BAD, {"id": "p" + BAD, "name": "N", "score": NAN},
                                "2024-05-01T10:00:00Z")
    await guarded.save_conversation(record)
    [stored] = await guarded.open_conversations()
    assert (stored.conversation_id, stored.number) == ("conv" + ESCAPED, "+62" + ESCAPED)
    assert stored.participant == {"id": "p" + ESCAPED, "name": "N", "score": "NaN"}
    assert sanitised(guarded, "conversation") == 1
    # closed by the id the caller holds (the original), as it was saved
    assert await guarded.close_conversation("conv" + BAD, "2024-05-01T10:05:00Z", "ended " + BAD)
    assert await guarded.open_conversations() == []


@pytest_twisted.ensureDeferred
async def test_a_call_whose_caller_id_holds_a_surrogate_keeps_its_cdr_through_the_registry_queue(guarded):
    """The registry hands CDRs to the store through a RetryingSink: the refusal used to be final there."""
    from twisted.internet import reactor

    sink = RetryingSink(reactor, guarded.add_cdr, "CDR", **guarded.queue_options)
    sink.write(make_cdr("c1", caller=BAD, legs=[{"leg_id": "l1", "caller_id": BAD}]))
    await sink.close()
    stored = await guarded.cdr("c1")
    assert stored["caller"] == ESCAPED and stored["legs"][0]["caller_id"] == ESCAPED


@pytest_twisted.ensureDeferred
async def test_a_nul_character_postgresql_cannot_hold_is_stored_escaped_on_every_backend(guarded):
    (stored, created) = await guarded.add_sms(sms("u1", text="nul \x00 inside"))
    assert created and stored.text == "nul \\u0000 inside"
    await guarded.add_cdr(make_cdr("c1", extension="10\x001", note="a\x00b"))
    cdr = await guarded.cdr("c1")
    assert (cdr["extension"], cdr["note"]) == ("10\\u00001", "a\\u0000b")
    assert sanitised(guarded, "sms") == 1 and sanitised(guarded, "cdr") == 1
    # text that merely spells the escape is not changed, nor counted
    await guarded.add_sms(sms("u2", text="spelled \\u0000"))
    assert [r.text for r in await guarded.list_sms()][1] == "spelled \\u0000"
    assert sanitised(guarded, "sms") == 1


@pytest_twisted.ensureDeferred
async def test_a_cdr_whose_text_column_holds_no_text_is_stored_and_the_bare_backend_refuses_it_alike(guarded):
    """A ``hangup_by`` that is an object (a routed command's argument once put one there) could not be bound:
    SQLite and PostgreSQL failed the write with an error the CDR queue took for an outage, and retried it,
    and every CDR behind it, forever. The bare backends refuse it as a ValueError (the queue's "refused, not
    retried"); the guard stores it with that column as its JSON text."""
    odd = {"hangup_by": {"who": ["x"]}, "node": ["a"], "cause": 3}
    error = await failure_of(guarded.backend.add_cdr(make_cdr("c0", **odd)), ValueError)
    assert "must be text" in str(error)
    await failure_of(guarded.backend.add_cdr(make_cdr("c0", duration={"s": 1})), ValueError)
    with capturedLogs() as events:
        await guarded.add_cdr(make_cdr("c1", **odd))
    stored = await guarded.cdr("c1")
    assert stored["hangup_by"] == '{"who": ["x"]}' and stored["node"] == '["a"]' and stored["cause"] == "3"
    assert sanitised(guarded, "cdr") == 1
    assert any("held no text" in e["log_format"] for e in events)
    await guarded.add_cdr(make_cdr("c2"))
    assert (await guarded.cdr("c2"))["hangup_by"] == "remote"
