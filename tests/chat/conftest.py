"""Fixtures for the chat tests: real Socket.IO servers as subprocesses, and clients that clean up.

Servers print ``listening on <host>:<port>`` once they accept connections; :func:`server_launcher`
starts them through ``reactor.spawnProcess``, waits for that line, and kills every one at teardown.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections import defaultdict

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, protocol

#: A python-socketio (aiohttp) server exposing the events the client tests use.
PYTHON_ECHO_SERVER = textwrap.dedent(
    """
    import argparse, asyncio
    import socketio
    from aiohttp import web

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ping-interval", type=float, default=25)
    parser.add_argument("--ping-timeout", type=float, default=20)
    options = parser.parse_args()
    sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=options.ping_interval,
                               ping_timeout=options.ping_timeout)
    app = web.Application()
    sio.attach(app)

    @sio.event
    async def connect(sid, environ, auth):
        if auth and auth.get("token") == "bad":
            raise socketio.exceptions.ConnectionRefusedError("bad token")
        await sio.save_session(sid, {"auth": auth})

    @sio.on("echo")
    async def echo(sid, *args):
        return args

    @sio.on("whoami")
    async def whoami(sid):
        return (await sio.get_session(sid))["auth"]

    @sio.on("trigger")
    async def trigger(sid):
        await sio.emit("greet", {"hello": "world"}, to=sid)
        answer = await sio.call("question", "life", to=sid, timeout=5)
        await sio.emit("answer", answer, to=sid)
        await sio.emit("blob", {"name": "x", "payload": b"\\x00\\x01\\xff"}, to=sid)
        return True

    @sio.on("kick")
    async def kick(sid):
        await sio.disconnect(sid)

    async def main():
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", options.port)
        await site.start()
        port = runner.addresses[0][1]
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)

#: The same events on the reference Node.js implementation (socket.io 4).
NODE_ECHO_SERVER = textwrap.dedent(
    """
    const { Server } = require("socket.io");
    const http = require("http");
    const [port, pingInterval, pingTimeout] = process.argv.slice(2).map(Number);
    const server = http.createServer();
    const io = new Server(server, { pingInterval, pingTimeout });
    io.use((socket, next) => next(socket.handshake.auth.token === "bad" ? new Error("bad token") : undefined));
    io.on("connection", (socket) => {
      socket.on("echo", (...args) => {
        const ack = args.pop();
        ack(...args);
      });
      socket.on("whoami", (ack) => ack(socket.handshake.auth));
      socket.on("trigger", async (ack) => {
        socket.emit("greet", { hello: "world" });
        const answer = await socket.timeout(5000).emitWithAck("question", "life");
        socket.emit("answer", answer);
        socket.emit("blob", { name: "x", payload: Buffer.from([0, 1, 255]) });
        ack(true);
      });
      socket.on("kick", () => socket.disconnect(true));
    });
    server.listen(port, "127.0.0.1", () => {
      console.log(`listening on 127.0.0.1:${server.address().port}`);
    });
    """
)

_LISTENING = re.compile(rb"listening on [^\s:]+:(\d+)")


class ServerProcess(protocol.ProcessProtocol):
    """A server subprocess: ``ready`` fires with its port, ``ended`` when it has exited."""

    def __init__(self, argv):
        self.argv = argv
        self.port = None
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self.output = bytearray()

    def outReceived(self, data):
        self.output += data
        match = _LISTENING.search(self.output)
        if match and not self.ready.called:
            self.port = int(match.group(1))
            self.ready.callback(self.port)

    def errReceived(self, data):
        self.output += data

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"{self.argv} exited before listening:\n{self.output.decode(errors='replace')}"))
        self.ended.callback(None)

    def kill(self) -> defer.Deferred:
        """Kill the process (if still running); fires once it has been reaped."""
        if not self.ended.called:
            self.transport.signalProcess("KILL")
        return self.ended


@attrs.define
class ServerKind:
    """How to run one implementation of the test server."""

    name: str
    command: list[str]
    env: dict = attrs.field(factory=dict)

    def argv(self, port: int, ping_interval: float, ping_timeout: float) -> list[str]:
        if self.name == "node":
            return [*self.command, str(port), str(int(ping_interval * 1000)), str(int(ping_timeout * 1000))]
        return [*self.command, "--port", str(port), "--ping-interval", str(ping_interval), "--ping-timeout", str(ping_timeout)]


def _node_socketio_path():
    """NODE_PATH under which ``require("socket.io")`` works, or None (node or package missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return None
    candidates = [os.environ.get("NODE_PATH", "")]
    try:
        candidates.append(subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=20).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    for path in filter(None, candidates):
        probe = subprocess.run([node, "-e", "require.resolve('socket.io')"], env={**os.environ, "NODE_PATH": path},
                               capture_output=True, timeout=20)
        if probe.returncode == 0:
            return path
    return None


@pytest.fixture(scope="session")
def python_echo_server(tmp_path_factory):
    script = tmp_path_factory.mktemp("socketio") / "echo_server.py"
    script.write_text(PYTHON_ECHO_SERVER)
    return ServerKind("python", [sys.executable, "-u", str(script)])


@pytest.fixture(scope="session")
def node_echo_server(tmp_path_factory):
    node_path = _node_socketio_path()
    if node_path is None:
        pytest.skip("node or the socket.io npm package is not installed (make test installs it into .venv/node when npm exists)")
    script = tmp_path_factory.mktemp("socketio") / "echo_server.js"
    script.write_text(NODE_ECHO_SERVER)
    return ServerKind("node", [shutil.which("node"), str(script)], {"NODE_PATH": node_path})


@pytest.fixture
def server_launcher():
    """``launch(argv) -> Deferred[ServerProcess]`` (fires once listening); all killed at teardown."""
    from twisted.internet import reactor

    started = []

    def launch(argv, env=None, timeout=30):
        process = ServerProcess(argv)
        reactor.spawnProcess(process, argv[0], argv, env={**os.environ, **(env or {})})
        started.append(process)
        return process.ready.addTimeout(timeout, reactor).addCallback(lambda port: process)

    yield launch
    pytest_twisted.blockon(defer.DeferredList([process.kill() for process in started]))


@pytest.fixture
def service_runner():
    """``run(service)`` starts a Twisted service and stops it (waiting for it) at teardown."""
    running = []

    def run(service):
        service.startService()
        running.append(service)
        return service

    yield run
    pytest_twisted.blockon(defer.DeferredList([defer.maybeDeferred(s.stopService) for s in running if s.running]))


@attrs.define
class ChatSim:
    """A running ``python -m gateway.sim chat-server`` and a small JSON client for its HTTP side."""

    process: ServerProcess
    http: object
    scheme: str = "http"

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def get(self, path: str) -> defer.Deferred:
        """``(status, body)``: body is parsed JSON, or bytes when the reply is not JSON."""
        return self._reply(self.http.get(self.url + path))

    def post(self, path: str, payload=None) -> defer.Deferred:
        return self._reply(self.http.post(self.url + path, json=payload))

    @defer.inlineCallbacks
    def _reply(self, requested):
        response = yield requested
        body = yield response.content()
        content_type = response.headers.getRawHeaders("content-type", [""])[0]
        if content_type.startswith("application/json"):
            body = json.loads(body)
        return response.code, body


@pytest.fixture
def chat_sim_launcher(server_launcher):
    """``launch(*options, port=0) -> Deferred[ChatSim]``: start the chat server simulator."""
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def launch(*options, port=0):
        argv = [sys.executable, "-u", "-m", "gateway.sim", "chat-server", "--port", str(port), *options]
        return server_launcher(argv).addCallback(lambda process: ChatSim(process, http))

    return launch


#: seconds any test waits for one thing to happen
WAIT = 15.0


class Recorder:
    """A Socket.IO handler that records what it is told; ``wait(name, count)`` fires once seen.

    ``record`` names the server events kept (their argument tuples go to ``seen[event]``),
    ``answer`` maps events to callables whose result is the ack; ``connected`` and
    ``disconnected`` are recorded too, and ``on_connect(client)`` runs on every connect (its result
    is recorded as ``ready``).
    """

    def __init__(self, record=(), answer=None, on_connect=None):
        from gateway.chat.socketio import CallbackHandler

        self.seen = defaultdict(list)
        self._waiters = defaultdict(list)
        events = {name: (lambda *args, name=name: self.note(name, args)) for name in record}
        events.update(answer or {})
        self._on_connect = on_connect
        self.handler = CallbackHandler(events=events, connected=self._connected, disconnected=self._disconnected)

    def _connected(self, client):
        self.note("connected", client)
        if self._on_connect is not None:
            return defer.maybeDeferred(self._on_connect, client).addCallback(lambda result: self.note("ready", result))

    def _disconnected(self, client, reason):
        self.note("disconnected", reason)

    def note(self, name, value):
        self.seen[name].append(value)
        for entry in [e for e in self._waiters[name] if len(self.seen[name]) >= e[0]]:
            self._waiters[name].remove(entry)
            entry[1].callback(self.seen[name])

    def wait(self, name, count=1) -> defer.Deferred:
        """Fires with ``seen[name]`` once it holds ``count`` entries; times out after WAIT s."""
        from twisted.internet import reactor

        if len(self.seen[name]) >= count:
            return defer.succeed(self.seen[name])
        d = defer.Deferred()
        self._waiters[name].append((count, d))
        return d.addTimeout(WAIT, reactor)


@pytest.fixture
def socketio_client(service_runner):
    """``make(url, *, endpoint=None, record=(), answer=None, on_connect=None, **options)``.

    Returns a started ``(SocketIOClient, Recorder)`` (stopped at teardown); the endpoint defaults
    to TCP to the URL's port on 127.0.0.1, retries every 0.2 s, acks time out after WAIT s.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from gateway.chat.socketio import SocketIOClient

    def make(url, *, endpoint=None, record=(), answer=None, on_connect=None, **options):
        recorder = Recorder(record, answer, on_connect)
        if endpoint is None:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", int(url.rpartition(":")[2]))
        options.setdefault("retry_policy", lambda attempt: 0.2)
        options.setdefault("ack_timeout", WAIT)
        client = SocketIOClient(reactor, endpoint, url, recorder.handler, **options)
        return service_runner(client), recorder

    return make
