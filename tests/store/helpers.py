"""For the store's tests and other rooms' tests of the store: CDRs as the call core builds them,
a ``store`` fixture running each test on the SQLite store, on a real PostgreSQL database (the
``postgres_server`` fixture of tests/engines.py) and on the in-memory fake, and :func:`failure_of`."""

import pytest
import pytest_twisted
from twisted.internet import task

from gateway.store import MemoryCdrStore, PostgresStore, SqliteCdrStore

BACKENDS = ["sqlite", "postgresql", "memory"]


def make_backend(name, request, tmp_path):
    """A new, unopened store of backend ``name`` (one of :data:`BACKENDS`) for this test."""
    from twisted.internet import reactor

    if name == "sqlite":
        return SqliteCdrStore(tmp_path / "gateway.sqlite", reactor)
    if name == "postgresql":
        return PostgresStore(request.getfixturevalue("postgres_server").url, reactor)
    return MemoryCdrStore(task.Clock())


@pytest_twisted.async_yield_fixture(name="store", params=BACKENDS)
async def store_fixture(request, tmp_path):
    """Each test three times: on a real SQLite file, on a fresh PostgreSQL database, and on the in-memory fake."""
    store = make_backend(request.param, request, tmp_path)
    await store.open()
    yield store
    await store.close()


async def failure_of(d, *types):
    """The exception ``d`` fails with; the test fails if it succeeds or fails otherwise."""
    try:
        result = await d
    except types as e:
        return e
    pytest.fail(f"expected {types}, got the result {result!r}")


def make_cdr(call_id, ended_at="2024-05-01T10:00:30Z", **extra):
    """A complete CDR for ``call_id``; ``extra`` adds or replaces keys."""
    cdr = {
        "call_id": call_id,
        "node": "gw1",
        "direction": "inbound",
        "extension": "101",
        "started_at": "2024-05-01T10:00:00Z",
        "answered_at": "2024-05-01T10:00:05Z",
        "ended_at": ended_at,
        "duration": 30.0,
        "billable_seconds": 25,
        "cause": "normal",
        "hangup_by": "remote",
        "dtmf_count": 2,
        "legs": [{"leg_id": f"{call_id}-a", "driver": "sim", "state": "RELEASED"}],
    }
    cdr.update(extra)
    return cdr
