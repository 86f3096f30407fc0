"""Real Redis and PostgreSQL servers for the tests, started by the project itself.

Each engine runs from the Debian packages (``make engines`` installs them when missing and run as
root) in its own temporary directory, on a free loopback port, as a child of the test process:

- :class:`RedisServer`: ``redis-server`` with no persistence by default (``appendonly=True`` keeps an
  append-only file in its directory, so a restart finds the data again).
- :class:`PostgresServer`: ``initdb`` then ``postgres`` (from ``/usr/lib/postgresql/*/bin``), trust
  authentication for the superuser ``gateway`` on 127.0.0.1. PostgreSQL refuses to run as root, so
  when the tests run as root (CI does) both run as the ``postgres`` system user (or ``nobody``)
  through ``runuser``, with the directory chowned to that user.

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
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
