"""The real-engine fixtures of tests/engines.py: they start, answer, restart on the same port and
data directory, give each test a clean slate, and fail (not skip) under CI when an engine is missing."""

import os
import subprocess

import pytest

from tests import engines
from tests.engines import RedisServer


def test_redis_server_answers(redis_server):
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.command("SET", "k", "v") == "OK"
    assert redis_server.command("GET", "k") == b"v"


def test_redis_server_is_flushed_for_each_test(redis_server):
    # the test above left "k" behind
    assert redis_server.command("DBSIZE") == 0
    redis_server.command("SET", "k", "v")


def test_redis_restart_keeps_port_and_appendonly_data():
    server = RedisServer(appendonly=True).start()
    try:
        port = server.port
        server.command("SET", "durable", "yes")
        server.stop()
        assert not server.ping()
        server.start()
        assert server.port == port
        assert server.command("GET", "durable") == b"yes"
        server.kill()
        assert not server.running
        server.start()
        assert server.command("GET", "durable") == b"yes"
    finally:
        server.cleanup()
    assert not os.path.exists(server.directory)


def test_shared_redis_restarted_by_the_fixture_after_a_test_stopped_it(redis_server):
    redis_server.stop()


def test_shared_redis_running_again(redis_server):
    assert redis_server.ping()


def test_missing_engine_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        engines._missing("redis-server is not installed")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="make engines"):
        engines._missing("redis-server is not installed")


def test_missing_redis_binary_is_named(monkeypatch):
    monkeypatch.setattr(engines.shutil, "which", lambda name: None)
    monkeypatch.setattr(engines.os, "access", lambda path, mode: False)
    with pytest.raises(engines.EngineMissing, match="redis-server is not installed"):
        RedisServer()


def test_postgres_server_gives_a_fresh_database(postgres_server):
    import psycopg

    assert postgres_server.url.startswith(f"postgresql://gateway@127.0.0.1:{postgres_server.port}/test_")
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
        if os.geteuid() == 0:
            # never as root: PostgreSQL refuses it
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert os.stat(f"/proc/{pid}").st_uid != 0


def test_postgres_each_test_has_its_own_database(postgres_server):
    import psycopg

    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 't'").fetchone()
    assert tables == (0,)


def test_postgres_restart_and_crash_keep_committed_rows():
    import psycopg

    server = engines.PostgresServer().start()
    try:
        url = server.create_database("keep")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (7)")
        port = server.port
        server.stop()
        assert not server.ready()
        server.start()
        assert server.port == port
        server.kill()
        assert not server.running
        server.start()
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(7,)]
    finally:
        server.cleanup()
    assert not os.path.exists(server.directory)
    assert subprocess.run(["pgrep", "-f", server.data_dir], stdout=subprocess.DEVNULL).returncode == 1


def test_missing_postgres_is_named(monkeypatch):
    monkeypatch.setattr(engines.glob, "glob", lambda pattern: [])
    with pytest.raises(engines.EngineMissing, match="PostgreSQL is not installed"):
        engines.PostgresServer()
