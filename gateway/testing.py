"""Helpers for tests that run the real daemon: a ``twistd -n gateway`` subprocess.

Shipped with the package (as treq ships ``StubTreq``) so that the suite and
plugin authors drive the gateway the way an operator does: a TOML file, a
process, real loopback sockets::

    daemon = GatewayProcess(reactor, tmp_path, config_text)
    yield daemon.start()            # fires when /healthz answers
    body = yield daemon.api("GET", "/api/calls")
    code = yield daemon.stop()      # SIGTERM; fires with the exit status

Use :func:`free_port` to put listeners on free loopback ports.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import sys

from twisted.internet import defer, protocol
from twisted.internet.task import deferLater

__all__ = ["GatewayProcess", "free_port", "TOKEN"]

#: the admin token written into configs made by :meth:`GatewayProcess.config`
TOKEN = "test-admin-token-0123456789"


#: the ports :func:`free_port` handed out lately, so that two calls in a row never give the same one
_handed_out: collections.deque[int] = collections.deque(maxlen=256)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and not one this process was lately given.

    The kernel may give the same ephemeral port to two binds in a row once the first socket is closed,
    so a test asking for an admin and a listener port could get one port twice.
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.append(port)
            return port
    raise RuntimeError("no free loopback port that was not handed out lately")


class _Collector(protocol.ProcessProtocol):
    def __init__(self):
        self.output = bytearray()
        self.ended = defer.Deferred()
        self.lines_waiters = []

    def outReceived(self, data):
        self.output += data
        self._check()

    errReceived = outReceived

    def _check(self):
        text = self.output.decode("utf-8", "replace")
        for waiter in list(self.lines_waiters):
            needle, d = waiter
            if needle in text:
                self.lines_waiters.remove(waiter)
                d.callback(text)

    def processEnded(self, reason):
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.ended.callback(code if sig is None else -sig)


class GatewayProcess:
    """One ``twistd -n gateway`` subprocess with its own state directory."""

    def __init__(self, reactor, workdir, config_text: str | None = None, *, env=None, args=(), runner="twistd"):
        """``runner``: ``twistd`` (run with ``--nodaemon --pidfile=``) or ``twist`` (foreground already)."""
        self.reactor = reactor
        self.runner = runner
        self.workdir = str(workdir)
        self.admin_port = None
        self.config_path = None
        if config_text is not None:
            self.config_path = os.path.join(self.workdir, "gateway.toml")
            with open(self.config_path, "w", encoding="utf-8") as f:
                f.write(config_text)
        self.env = dict(os.environ, **(env or {}))
        self.args = list(args)
        self._proto = None
        self.transport = None

    @staticmethod
    def config(admin_port: int, extra: str = "", *, state_dir: str = "var", token: str = TOKEN) -> str:
        """A minimal config: admin on ``admin_port`` with :data:`TOKEN`, plus ``extra`` TOML."""
        return (
            f'[gateway]\nstate_dir = "{state_dir}"\nshutdown_grace = 2.0\n\n'
            f'[admin]\nlisten = "tcp:{admin_port}:interface=127.0.0.1"\ntoken = "{token}"\n\n'
            f'[store]\nurl = "sqlite:{state_dir}/gateway.sqlite"\n\n{extra}'
        )

    @property
    def output(self) -> str:
        return self._proto.output.decode("utf-8", "replace") if self._proto else ""

    @property
    def ended(self) -> defer.Deferred:
        return self._proto.ended

    def spawn(self, wrapper=()) -> None:
        """Start the process without waiting for anything.

        ``wrapper``: a command line that runs the daemon's, e.g.
        ``["systemd-socket-activate", "-l", "127.0.0.1:8080"]`` (its first word is looked up on PATH).
        """
        runner = os.path.join(os.path.dirname(sys.executable), self.runner)
        foreground = ["--nodaemon", "--pidfile="] if self.runner == "twistd" else []
        argv = [*wrapper, sys.executable, runner, *foreground, *self.args, "gateway"]
        if self.config_path:
            argv += ["--config", self.config_path]
        executable = shutil.which(argv[0]) or argv[0]
        self._proto = _Collector()
        self.transport = self.reactor.spawnProcess(self._proto, executable, argv, env=self.env, path=self.workdir)

    def wait_for_output(self, needle: str, timeout: float = 20.0) -> defer.Deferred:
        """Fires with the output once ``needle`` appears in it."""
        d = defer.Deferred()
        self._proto.lines_waiters.append((needle, d))
        self._proto._check()
        return d.addTimeout(timeout, self.reactor)

    @defer.inlineCallbacks
    def start(self, admin_port: int | None = None, timeout: float = 30.0):
        """Spawn, then wait until ``GET /healthz`` answers 200 (or the process dies)."""
        import treq

        if admin_port is not None:
            self.admin_port = admin_port
        self.spawn()
        deadline = self.reactor.seconds() + timeout
        while True:
            if self._proto.ended.called:
                raise RuntimeError(f"gateway exited during start:\n{self.output}")
            try:
                response = yield treq.get(f"http://127.0.0.1:{self.admin_port}/healthz", timeout=2)
                yield response.content()
                if response.code == 200:
                    return self
            except Exception:
                pass
            if self.reactor.seconds() > deadline:
                raise RuntimeError(f"gateway did not answer /healthz in {timeout} s:\n{self.output}")
            yield deferLater(self.reactor, 0.1, lambda: None)

    @defer.inlineCallbacks
    def api(self, method: str, path: str, body=None, *, token: str = TOKEN, expect=None):
        """Call the admin API; returns ``(status, parsed JSON)``."""
        import treq

        headers = {"Authorization": [f"Bearer {token}"]} if token else {}
        kwargs = {"headers": headers, "timeout": 10}
        if body is not None:
            kwargs["json"] = body
        response = yield treq.request(method, f"http://127.0.0.1:{self.admin_port}{path}", **kwargs)
        text = yield response.text()
        data = json.loads(text) if text else None
        if expect is not None and response.code != expect:
            raise AssertionError(f"{method} {path}: expected {expect}, got {response.code}: {text}")
        return response.code, data

    @defer.inlineCallbacks
    def metric_sum(self, name: str, **labels):
        """The sum of the ``/metrics`` samples of ``name`` whose labels include ``labels``."""
        import treq

        response = yield treq.get(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5)
        text = yield response.text()
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if (line.startswith(name + "{") or line.startswith(name + " "))
                   and all(label in line.partition("}")[0] for label in wanted))

    @defer.inlineCallbacks
    def frames_trimmed(self):
        """How many frames the playout jitter buffers trimmed (all calls): what an echo may lack."""
        total = 0
        for where in ("trim_silence", "trim_oldest"):
            total += yield self.metric_sum("gateway_media_frames_dropped_total", where=where)
        return int(total)

    def signal(self, name: str = "TERM") -> None:
        if self.transport is not None and not self._proto.ended.called:
            self.transport.signalProcess(name)

    @defer.inlineCallbacks
    def stop(self, timeout: float = 20.0):
        """SIGTERM, then the exit status (SIGKILL if it does not stop in time)."""
        if self._proto is None:
            return None
        if not self._proto.ended.called:
            self.signal("TERM")
            timer = self.reactor.callLater(timeout, self.kill)
            code = yield self._proto.ended
            if timer.active():
                timer.cancel()
            return code
        return (yield self._proto.ended)

    def kill(self) -> None:
        """SIGKILL: the daemon gets no chance to clean up."""
        if self.transport is not None and not self._proto.ended.called:
            self.transport.signalProcess(signal.SIGKILL)
