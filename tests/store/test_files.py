"""File modes of what the gateway writes, whatever the umask (here umask 0, the worst)."""

import os
import stat

import pytest
import pytest_twisted
from twisted.logger import LogLevel, capturedLogs

from gateway.admin.token import resolve_token
from gateway.chat.admin import Transcripts
from gateway.confschema import Secret
from gateway.store import SqliteCdrStore
from gateway.store.files import check_private_dir

from .helpers import make_cdr


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_0():
    old = os.umask(0)
    yield
    os.umask(old)


@pytest_twisted.ensureDeferred
async def test_the_database_and_its_wal_and_shm_are_0600(tmp_path, umask_0):
    from twisted.internet import reactor

    path = tmp_path / "db" / "gateway.sqlite"
    store = SqliteCdrStore(path, reactor)
    await store.open()
    await store.add_cdr(make_cdr("c1"))
    try:
        assert {p.name: mode(p) for p in path.parent.iterdir()} == {
            "gateway.sqlite": 0o600, "gateway.sqlite-wal": 0o600, "gateway.sqlite-shm": 0o600}
        assert mode(path.parent) == 0o700
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_an_existing_database_open_to_others_is_narrowed_and_logged(tmp_path):
    from twisted.internet import reactor

    path = tmp_path / "gateway.sqlite"
    path.touch()
    os.chmod(path, 0o644)
    store = SqliteCdrStore(path, reactor)
    with capturedLogs() as events:
        await store.open()
    await store.close()
    assert mode(path) == 0o600
    [warning] = [e for e in events if e["log_level"] is LogLevel.warn]
    assert (warning["path"], warning["old"], warning["new"]) == (str(path), 0o644, 0o600)


@pytest_twisted.ensureDeferred
async def test_a_leftover_wal_shm_and_journal_open_to_others_are_narrowed_and_logged(tmp_path):
    from twisted.internet import reactor

    path = tmp_path / "gateway.sqlite"
    store = SqliteCdrStore(path, reactor)
    await store.open()
    await store.add_cdr(make_cdr("c1"))
    await store.close()
    for suffix in ("-wal", "-shm", "-journal"):  # as a crash, a copy by hand or another tool may leave them
        side = tmp_path / f"gateway.sqlite{suffix}"
        side.touch()
        os.chmod(side, 0o644)
    store = SqliteCdrStore(path, reactor)
    with capturedLogs() as events:
        await store.open()
    try:
        assert [c["call_id"] for c in await store.cdrs()] == ["c1"]
        assert {p.name: mode(p) for p in tmp_path.iterdir() if p.name != "gateway.sqlite-journal"} == {
            "gateway.sqlite": 0o600, "gateway.sqlite-wal": 0o600, "gateway.sqlite-shm": 0o600}
    finally:
        await store.close()
    assert sorted((e["path"], e["old"], e["new"]) for e in events if e["log_level"] is LogLevel.warn) == [
        (str(path) + "-journal", 0o644, 0o600), (str(path) + "-shm", 0o644, 0o600),
        (str(path) + "-wal", 0o644, 0o600)]


def test_a_transcript_is_written_0600(tmp_path, umask_0):
    from twisted.internet import defer

    class Rest:
        def transcript(self, conversation_id, kind):
            return defer.succeed(b"%PDF-1.4")

    transcripts = Transcripts(Rest(), tmp_path / "transcripts", lambda f, *a: defer.maybeDeferred(f, *a))
    result = []
    transcripts.fetch("conv-1", "pdf").addCallback(result.append)
    [answer] = result
    assert mode(answer["path"]) == 0o600
    assert mode(tmp_path / "transcripts") == 0o700


def test_a_token_file_open_to_others_is_narrowed(tmp_path):
    (tmp_path / "admin-token").write_text("secret-token\n")
    os.chmod(tmp_path / "admin-token", 0o644)
    with capturedLogs() as events:
        assert resolve_token(Secret(""), tmp_path) == Secret("secret-token")
    assert mode(tmp_path / "admin-token") == 0o600
    assert "secret-token" not in repr([e.get("log_format") for e in events])


def test_a_state_dir_open_to_others_is_warned_about_naming_it_and_its_mode(tmp_path):
    os.chmod(tmp_path, 0o750)
    with capturedLogs() as events:
        assert not check_private_dir(tmp_path)
    [warning] = [e for e in events if e["log_level"] is LogLevel.warn]
    assert (warning["path"], warning["mode"]) == (str(tmp_path), 0o750)
    os.chmod(tmp_path, 0o700)
    with capturedLogs() as events:
        assert check_private_dir(tmp_path)
    assert events == []
