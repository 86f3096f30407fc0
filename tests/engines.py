"""Real Redis and PostgreSQL servers for the tests, started by the project itself.

Each engine runs from the Debian packages (``make engines`` installs them when missing and run as
root) in its own temporary directory, on a free loopback port, as a child of the test process:

- :class:`RedisServer`: ``redis-server`` with no persistence by default (``appendonly=True`` keeps an
  append-only file in its directory, so a restart finds the data again).
- :class:`PostgresServer`: ``initdb`` then ``postgres`` (from ``/usr/lib/postgresql/*/bin``), trust
  authentication for the superuser ``gateway`` on 127.0.0.1. PostgreSQL refuses to run as root, so
  when the tests run as root (CI does) both run as the ``postgres`` system user (or ``nobody``),
  with the directory chowned to that user: ``initdb`` through ``runuser``, and ``postgres`` switched
  to that user by ``subprocess.Popen(user=...)`` so that the postmaster is the fixture's own child.

Both have ``start()`` (waits until the server answers), ``stop()`` (a clean shutdown; the port and the
data directory are kept, so ``start()`` again is a restart, as outage tests need), ``kill()``
(SIGKILL: a crash) and ``cleanup()`` (stop and remove the directory). They are synchronous: they
block for the second or so a start takes, which is fine in a fixture or a test's setup.

The pytest fixtures (registered for the whole suite by ``pytest_plugins`` in tests/conftest.py):

- ``redis_server``: the session's one :class:`RedisServer`, flushed (``FLUSHALL``) before each test,
  and started again if an earlier test left it stopped. ``redis_server.url`` is
  ``redis://127.0.0.1:PORT/0``.
- ``postgres_server``: the session's one :class:`PostgresServer`, with a fresh, empty database made
  for each test and dropped after it. ``postgres_server.url`` names that database
  (``postgresql://gateway@127.0.0.1:PORT/test_N``); ``postgres_server.server`` is the
  :class:`PostgresServer` (``.admin_url`` names its ``postgres`` database).

A test that stops or kills an engine may use the shared one (the next test's fixture starts it again)
or make its own with ``RedisServer()`` / ``PostgresServer()`` and ``cleanup()`` it.

When the binaries are missing, the fixtures fail under CI (the environment variable ``CI`` is set:
CI must run these tests, and ``make test`` installs the engines) and skip otherwise, saying why.
"""

from __future__ import annotations

import ctypes
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from gateway.testing import free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class EngineMissing(RuntimeError):
    """The engine's binaries are not installed."""


def _missing(what: str) -> None:
    """Fail (under CI) or skip (elsewhere) a test that needs an engine that is not installed."""
    message = f"{what}; `make engines` installs it (as root: apt-get install redis-server postgresql)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}. CI must run the engine tests, not skip them", pytrace=False)
    pytest.skip(message)


def _wait_for(check, timeout: float, what: str, log_path=None, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting{_log_tail(log_path)}")
        if check():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s{_log_tail(log_path)}")
        time.sleep(0.05)


def _log_tail(path) -> str:
    if path is None:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()[-15:]
    except OSError:
        return ""
    return ": log tail:\n" + "\n".join(lines)


def _die_with_parent() -> None:
    """Popen's ``preexec_fn``: the server gets SIGKILL if the test process dies (a timeout's kill -9),
    so no engine outlives the run that started it (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_process(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


# --- Redis ----------------------------------------------------------------------------------------


def redis_binary() -> str:
    """The ``redis-server`` to run; raises :class:`EngineMissing` when there is none."""
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)
    if path is None:
        raise EngineMissing("redis-server is not installed")
    return path


def redis_command(port: int, *args: str | bytes, host: str = "127.0.0.1", timeout: float = 5.0):
    """Send one command to a Redis server and return its decoded reply (a small RESP2 reader: simple
    strings, errors as :class:`RuntimeError`, integers, bulk strings, arrays). For fixtures and
    checks only; the gateway has its own client."""
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        return _read_reply(reader)


def _read_reply(reader):
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("Redis closed the connection mid-reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RuntimeError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = reader.read(size + 2)
        return data[:-2]
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [_read_reply(reader) for _ in range(size)]
    raise RuntimeError(f"unexpected Redis reply {line!r}")


class RedisServer:
    """A real ``redis-server`` on 127.0.0.1 in a temporary directory (see the module docstring)."""

    def __init__(self, port: int | None = None, directory: str | None = None, *, appendonly: bool = False):
        self.binary = redis_binary()
        self.port = port or free_port()
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="gateway-redis-")
        self.appendonly = appendonly
        self.log_path = os.path.join(self.directory, "redis.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "RedisServer":
        if self.running:
            return self
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.directory,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", self.log_path,
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent)
        try:
            _wait_for(self.ping, START_TIMEOUT, f"redis-server on port {self.port}", self.log_path, self.proc)
        except BaseException:
            self.kill()
            raise
        return self

    def ping(self) -> bool:
        try:
            return redis_command(self.port, "PING", timeout=1.0) == "PONG"
        except (OSError, RuntimeError):
            return False

    def command(self, *args):
        """One command's reply (see :func:`redis_command`)."""
        return redis_command(self.port, *args)

    def flush(self) -> None:
        self.command("FLUSHALL")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM); the port and the directory stay for ``start()`` again."""
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGTERM, STOP_TIMEOUT)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGKILL, STOP_TIMEOUT)
            self.proc = None

    def restart(self) -> "RedisServer":
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def _redis_engine():
    try:
        server = RedisServer()
    except EngineMissing as e:
        _missing(str(e))
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_server(_redis_engine):
    """The session's real Redis (:class:`RedisServer`), running and flushed for this test."""
    _redis_engine.start()
    _redis_engine.flush()
    return _redis_engine


# --- PostgreSQL -----------------------------------------------------------------------------------


def postgres_bindir() -> str:
    """The newest ``/usr/lib/postgresql/*/bin`` holding ``initdb`` and ``postgres`` (Debian keeps them
    off the PATH); raises :class:`EngineMissing` when there is none."""
    found = []
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        version = os.path.basename(os.path.dirname(bindir))
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "postgres", "pg_ctl")):
            found.append((int(version) if version.isdigit() else 0, bindir))
    if not found:
        raise EngineMissing("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres)")
    return max(found)[1]


def _unprivileged_user() -> str | None:
    """The user PostgreSQL runs as when we are root (it refuses root): ``postgres``, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise EngineMissing("running as root and neither the postgres nor the nobody user exists to run PostgreSQL")


class PostgresServer:
    """A real PostgreSQL on 127.0.0.1 in a temporary directory (see the module docstring).

    The superuser is ``gateway`` with trust authentication on loopback; ``url(dbname)`` names a
    database, ``create_database()`` makes a fresh one. Settings favour speed over crash safety of the
    *machine* (``fsync=off``); commits still write the WAL before they answer (``synchronous_commit``
    stays on), so a killed server recovers every acknowledged row.
    """

    USER = "gateway"

    def __init__(self, port: int | None = None, directory: str | None = None):
        self.bindir = postgres_bindir()
        self.run_as = _unprivileged_user()
        self.port = port or free_port()
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="gateway-postgres-")
        self.data_dir = os.path.join(self.directory, "data")
        self.socket_dir = os.path.join(self.directory, "sock")
        self.log_path = os.path.join(self.directory, "postgres.log")
        self.proc: subprocess.Popen | None = None
        self._databases = itertools.count(1)

    # -- URLs --

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- life --

    def _argv(self, *argv: str) -> list[str]:
        if self.run_as is None:
            return list(argv)
        return ["runuser", "-u", self.run_as, "--", *argv]

    def _chown(self) -> None:
        if self.run_as is None:
            return
        entry = pwd.getpwnam(self.run_as)
        for root, dirs, files in os.walk(self.directory):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        os.makedirs(self.socket_dir, exist_ok=True)
        self._chown()
        result = subprocess.run(
            self._argv(
                os.path.join(self.bindir, "initdb"), "-D", self.data_dir, "-U", self.USER,
                "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
            ),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.directory,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}): {result.stdout.decode(errors='replace')[-2000:]}")

    def start(self) -> "PostgresServer":
        if self.running:
            return self
        if not os.path.exists(os.path.join(self.data_dir, "PG_VERSION")):
            self._initdb()
        # the log is opened by us (as root when root) and handed over as the child's stdout/stderr
        log = open(self.log_path, "ab")
        # the postmaster is our own child (switched to the unprivileged user by Popen itself, not
        # through runuser, which would stand between as a parent): stop() and kill() signal it and
        # reap it, so a start() right after finds no live postmaster.pid owner
        as_user = {} if self.run_as is None else {"user": self.run_as, "group": pwd.getpwnam(self.run_as).pw_gid, "extra_groups": []}
        try:
            self.proc = subprocess.Popen(
                [
                    os.path.join(self.bindir, "postgres"), "-D", self.data_dir, "-p", str(self.port),
                    "-k", self.socket_dir, "-c", "listen_addresses=127.0.0.1",
                    "-c", "fsync=off", "-c", "full_page_writes=off",
                    "-c", "max_connections=200", "-c", "shared_buffers=32MB",
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
                start_new_session=True, preexec_fn=_die_with_parent, **as_user,
            )
        finally:
            log.close()
        try:
            _wait_for(self.ready, START_TIMEOUT, f"postgres on port {self.port}", self.log_path, self.proc)
        except BaseException:
            self.kill()
            raise
        return self

    def ready(self) -> bool:
        result = subprocess.run(
            [os.path.join(self.bindir, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.USER, "-d", "postgres"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return result.returncode == 0

    def _signal_server(self, sig: int) -> None:
        """``sig`` to the postmaster (SIGKILL: to its whole process group, the backends too, as a
        crash would), then reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                if sig == signal.SIGKILL:
                    os.killpg(self.proc.pid, sig)
                else:
                    self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT)
        self.proc = None

    def stop(self) -> None:
        """A fast clean shutdown (SIGINT: open transactions are rolled back); the port and the data
        directory stay for ``start()`` again."""
        self._signal_server(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL of the postmaster and its backends, as a crash; ``start()`` recovers from the WAL."""
        self._signal_server(signal.SIGKILL)

    def restart(self) -> "PostgresServer":
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- databases --

    def execute(self, sql: str, dbname: str = "postgres"):
        """Run one statement (autocommit) and return its rows, or None."""
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description is not None else None

    def create_database(self, name: str | None = None) -> str:
        """Make a fresh, empty database and return its URL."""
        name = name or f"test_{os.getpid()}_{next(self._databases)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PostgresDatabase:
    """What the ``postgres_server`` fixture gives a test: one fresh database on the session's server."""

    def __init__(self, server: PostgresServer, name: str):
        self.server = server
        self.name = name
        self.url = server.url(name)

    @property
    def port(self) -> int:
        return self.server.port

    def __repr__(self) -> str:
        return f"<PostgresDatabase {self.url}>"


@pytest.fixture(scope="session")
def _postgres_engine():
    try:
        server = PostgresServer()
    except EngineMissing as e:
        _missing(str(e))
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_server(_postgres_engine):
    """A fresh, empty database on the session's real PostgreSQL (:class:`PostgresDatabase`: ``.url``,
    ``.server``), dropped after the test; the server is started again if an earlier test stopped it."""
    _postgres_engine.start()
    url = _postgres_engine.create_database()
    name = url.rsplit("/", 1)[1]
    yield PostgresDatabase(_postgres_engine, name)
    if _postgres_engine.running:
        _postgres_engine.drop_database(name)
