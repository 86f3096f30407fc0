"""Patriot in client mode (``WebsocketClientDialler``): connects out to a Dialler Bridge.

As a library (tests drive it on the running reactor)::

    sim = PatriotClientSim(reactor, "ws://127.0.0.1:8765/dialler", {"userName": "u", "password": "p"})
    sim.start()
    yield sim.wait_for("init-response", lambda r: r.success)
    sim.dial("+0123456789")
    update = yield sim.wait_for("call-status-update", lambda u: u.call_active)
    yield sim.stop()

Like Patriot, it sends ``init-request`` with the configured payload as soon as it is connected,
sends it again every ``init_retry_interval`` seconds (30) until an ``init-response`` arrives,
sends ``heartbeat`` every ``heartbeat_interval`` seconds (5) and counts the answers, and (unless
``reconnect=False``) reconnects and inits again when the connection breaks. Those timers run on
``clock`` (default: the reactor), so a test can pass a ``task.Clock`` and step them by hand while
the frames travel over real sockets; the ``timeout`` of the ``wait_*`` helpers always runs on the
reactor.

The messages are the simulators' own, written from specs 000 and 001 in
:mod:`gateway.sim.patriot_wire`: nothing is shared with the gateway's Patriot adapter.

This module also holds what both Patriot simulators share: :class:`PatriotPeerSim` (the record of
received frames, Deferred helpers to wait for one, the call-control sends) and the small script
language of :func:`parse_script` (``wait``, ``dial``, ``hangup``, ``status``, ``raw``, ``expect``).

From the command line (prints one line per frame, ``->`` sent and ``<-`` received)::

    python -m gateway.sim patriot-client --url ws://127.0.0.1:8765/dialler \\
        --payload '{"userName": "u", "password": "p"}' --dial 0123456789 --hangup-after 10
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

import attrs
from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.sim.patriot_wire import (
    MESSAGE_TYPES,
    CallStatusRequest,
    DialRequest,
    HangupRequest,
    Heartbeat,
    HeartbeatResponse,
    InitRequest,
    InitResponse,
    PatriotMessage,
    PatriotWireError,
    encode,
    parse,
)

log = Logger()

#: Seconds a ``wait_*`` helper waits by default before failing with :class:`WaitTimeout`.
DEFAULT_TIMEOUT = 10.0

#: A ``trace`` callable gets ``("->", text)`` for each frame sent and ``("<-", text)`` for each received.
Trace = Callable[[str, str], None]


class WaitTimeout(defer.TimeoutError):
    """What a ``wait_*`` helper fails with when its condition did not come true in time."""


@attrs.frozen
class Record:
    """One frame a simulator received.

    :ivar text: the frame as text (binary frames and bad UTF-8 decoded with replacement characters).
    :ivar message: the parsed message, or ``None`` when the frame was not a valid one.
    :ivar type: the frame's ``type`` when known (also for a malformed message of a known type).
    :ivar error: why the frame was not a valid message, or ``None``.
    :ivar ignored: the simulator ignored it (the server does so before authentication).
    """

    text: str
    message: PatriotMessage | None = None
    type: str | None = None
    error: str | None = None
    ignored: bool = False


@attrs.frozen
class Command:
    """One parsed script line: ``name`` and its converted ``args``; ``line`` for error messages."""

    name: str
    args: tuple
    line: int


class ScriptError(ValueError):
    """A script line that cannot be run."""


def _no_args(rest):
    if rest:
        raise ValueError("takes no argument")
    return ()


def _wait_args(rest):
    seconds = float(rest)
    if not seconds >= 0:
        raise ValueError("needs a number of seconds >= 0")
    return (seconds,)


def _dial_args(rest):
    number, _, raw = rest.partition(" ")
    if not number:
        raise ValueError("needs a phone number")
    return (number, raw.strip() or number)


def _raw_args(rest):
    if not rest:
        raise ValueError("needs the text to send")
    return (rest,)


def _expect_args(rest):
    words = rest.split()
    if not 1 <= len(words) <= 2 or words[0] not in MESSAGE_TYPES:
        raise ValueError(f"needs a message type ({', '.join(sorted(MESSAGE_TYPES))}) and an optional timeout")
    return (words[0], float(words[1]) if len(words) == 2 else DEFAULT_TIMEOUT)


#: script command -> converter of the rest of its line into its arguments
_COMMANDS = {
    "wait": _wait_args,  # wait SECONDS            (on the simulator's clock)
    "dial": _dial_args,  # dial NUMBER [RAW NUMBER] (send a dial-request)
    "hangup": _no_args,  # send a hangup-request
    "status": _no_args,  # send a call-status-request
    "raw": _raw_args,  # raw TEXT                 (send TEXT as it is, as a text frame)
    "expect": _expect_args,  # expect TYPE [TIMEOUT] (wait for a message of that type)
}


def parse_script(lines) -> list[Command]:
    """Parse script lines (blank lines and ``#`` comments skipped), or raise :class:`ScriptError`."""
    commands = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(" ")
        if name not in _COMMANDS:
            raise ScriptError(f"line {number}: unknown command {name!r} (known: {', '.join(_COMMANDS)})")
        try:
            args = _COMMANDS[name](rest.strip())
        except ValueError as e:
            raise ScriptError(f"line {number}: {name}: {e}") from None
        commands.append(Command(name, args, number))
    return commands


class PatriotPeerSim:
    """What both Patriot simulators share: received frames in order, waits, call-control sends.

    Subclasses provide :meth:`send_raw` and :meth:`send` and call :meth:`_read_frame`,
    :meth:`_add` and :meth:`_changed` as frames arrive and state changes.
    """

    def __init__(self, reactor, clock=None, trace: Trace | None = None):
        self.reactor = reactor
        self.clock = reactor if clock is None else clock
        self.received: list[Record] = []
        self._trace = trace
        self._claimed: set[int] = set()
        self._waiters: list = []
        self._connections: set = set()

    # -- sending

    def send(self, message: PatriotMessage):
        raise NotImplementedError

    def send_raw(self, data: str | bytes):
        raise NotImplementedError

    def dial(self, phone_no: str, raw_phone_no: str | None = None):
        """Send a dial-request (``raw_phone_no`` defaults to ``phone_no``)."""
        return self.send(DialRequest(phone_no, phone_no if raw_phone_no is None else raw_phone_no))

    def hangup(self):
        """Send a hangup-request."""
        return self.send(HangupRequest())

    def request_status(self):
        """Send a call-status-request."""
        return self.send(CallStatusRequest())

    def _send_on(self, protocol, data: str | bytes):
        """Send ``data`` on one connection: ``str`` as a text frame, ``bytes`` as a binary frame."""
        is_binary = isinstance(data, bytes)
        protocol.sendMessage(data if is_binary else data.encode("utf-8"), isBinary=is_binary)
        self._emit("->", repr(data) if is_binary else data)

    def _emit(self, direction, text):
        if self._trace is not None:
            self._trace(direction, text)

    # -- receiving

    def _read_frame(self, protocol, payload: bytes, is_binary: bool) -> Record:
        """Parse one received frame into a :class:`Record` (not yet added); bad frames are logged."""
        text = payload.decode("utf-8", "replace")
        self._emit("<-", repr(payload) if is_binary else text)
        if is_binary:
            log.warn("peer {peer} sent a binary frame of {size} bytes", peer=protocol.peer, size=len(payload))
            return Record(text, error="binary frame")
        try:
            message = parse(payload)
        except PatriotWireError as e:
            log.warn("peer {peer} sent a bad message: {reason}", peer=protocol.peer, reason=e.reason)
            return Record(text, type=e.message_type, error=e.reason)
        return Record(text, message=message, type=message.TYPE)

    def _add(self, record: Record):
        self.received.append(record)
        self._changed()

    def messages(self, type_: str | None = None) -> list[PatriotMessage]:
        """The valid, not ignored messages received so far (of wire type ``type_`` if given), in order."""
        return [r.message for r in self.received if self._accepts(r, type_)]

    @staticmethod
    def _accepts(record, type_, predicate=None):
        return (
            record.message is not None
            and not record.ignored
            and (type_ is None or record.type == type_)
            and (predicate is None or predicate(record.message))
        )

    # -- waiting

    def wait_until(self, check: Callable, timeout: float | None = DEFAULT_TIMEOUT, what: str = "condition"):
        """A Deferred firing with the first result of ``check()`` that is not ``None``.

        ``check`` is called now and after every change (frame received, connection opened or
        closed, ...). Fails with :class:`WaitTimeout` after ``timeout`` seconds (``None``: never).
        """
        result = check()
        if result is not None:
            return defer.succeed(result)
        waiting = defer.Deferred(lambda d: self._waiters.remove((check, d)))
        self._waiters.append((check, waiting))
        if timeout is not None:
            waiting.addTimeout(timeout, self.reactor, onTimeoutCancel=self._timed_out(what))
        return waiting

    @staticmethod
    def _timed_out(what):
        def fail(result, timeout):
            raise WaitTimeout(f"no {what} within {timeout} s")

        return fail

    def wait_for(self, type_: str | None = None, predicate: Callable | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT):
        """A Deferred firing with the first valid message of wire type ``type_`` matching ``predicate``.

        Looks at what was already received as well as what is still to come; each message is
        given to one ``wait_for`` only, so waiting twice for ``"heartbeat-response"`` waits for two.
        """

        def find():
            for index, record in enumerate(self.received):
                if index not in self._claimed and self._accepts(record, type_, predicate):
                    self._claimed.add(index)
                    return record.message
            return None

        return self.wait_until(find, timeout, what=type_ or "message")

    def _changed(self):
        for check, waiting in list(self._waiters):
            if (check, waiting) not in self._waiters:  # fired or cancelled by an earlier callback
                continue
            result = check()
            if result is not None:
                self._waiters.remove((check, waiting))
                waiting.callback(result)

    def _wait_closed(self, timeout=DEFAULT_TIMEOUT):
        """A Deferred firing once every connection this simulator made or accepted is gone."""
        return self.wait_until(lambda: True if not self._connections else None, timeout, "connection close")

    def _connection_made(self, protocol):
        self._connections.add(protocol)

    def _connection_lost(self, protocol):
        self._connections.discard(protocol)
        self._changed()

    # -- scripts

    @defer.inlineCallbacks
    def run_script(self, commands: list[Command]):
        """Run parsed script commands in order; the Deferred fails if one fails (an ``expect`` timing out)."""
        for command in commands:
            yield self._run_command(command)

    def _run_command(self, command: Command):
        """Run one script command; returns a Deferred for those that take time."""
        if command.name == "wait":
            return task.deferLater(self.clock, command.args[0], lambda: None)
        if command.name == "expect":
            type_, timeout = command.args
            return self.wait_for(type_, timeout=timeout)
        actions = {"dial": self.dial, "hangup": self.hangup, "status": self.request_status, "raw": self.send_raw}
        return actions[command.name](*command.args)


class SimProtocolMixin:
    """Forwards an Autobahn protocol's life to ``factory.sim``; used by both simulators' protocols."""

    def connectionMade(self):
        super().connectionMade()
        self.factory.sim._connection_made(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.sim._connection_lost(self)

    def onOpen(self):
        self.factory.sim._opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.sim._received(self, payload, isBinary)

    def onClose(self, wasClean, code, reason):
        self.factory.sim._closed(self, code, reason)


class _ClientProtocol(SimProtocolMixin, WebSocketClientProtocol):
    pass


class _ClientFactory(WebSocketClientFactory):
    protocol = _ClientProtocol

    def __init__(self, sim, url, reactor):
        super().__init__(url, reactor=reactor)
        self.sim = sim


def endpoint_for_url(reactor, url: str, trust_root=None):
    """A client endpoint for a ``ws://`` or ``wss://`` URL (TLS checked against ``trust_root`` if given)."""
    is_secure, host, port, _, _, _ = parse_url(url)
    endpoint = HostnameEndpoint(reactor, host, port)
    if is_secure:
        endpoint = wrapClientTLS(optionsForClientTLS(host, trustRoot=trust_root), endpoint)
    return endpoint


class PatriotClientSim(PatriotPeerSim):
    """Patriot connecting to a Dialler Bridge at ``url`` and initialising with ``payload``.

    :param reactor: for the network and the ``wait_*`` timeouts.
    :param clock: for the protocol timers (init retry, heartbeat, reconnect delay); default ``reactor``.
    :param reconnect: reconnect (with ``retry_policy``, default ``backoffPolicy()``) when the link breaks.
    :param endpoint: where to connect; default from ``url`` (``wss://`` verified against ``trust_root``).

    State a test reads: ``received`` (every frame, in order), ``protocol`` (the open connection or
    ``None``), ``connections`` (connections opened so far), ``inits_sent``, ``init_response``
    (the last one), ``heartbeats_sent``, ``heartbeat_responses``, ``last_heartbeat_response``
    (clock time), ``closes`` (``(code, reason)`` of every closed connection).
    """

    def __init__(self, reactor, url: str, payload: dict, *, clock=None, init_retry_interval: float = 30.0,
                 heartbeat_interval: float = 5.0, reconnect: bool = True, retry_policy=None,
                 endpoint=None, trust_root=None, trace: Trace | None = None):
        super().__init__(reactor, clock, trace)
        self.url = url
        self.payload = payload
        self.init_retry_interval = init_retry_interval
        self.heartbeat_interval = heartbeat_interval
        self.heartbeating = True
        self.protocol = None
        self.connections = 0
        self.inits_sent = 0
        self.init_response: InitResponse | None = None
        self.heartbeats_sent = 0
        self.heartbeat_responses = 0
        self.last_heartbeat_response: float | None = None
        self.closes: list[tuple] = []
        self._factory = _ClientFactory(self, url, reactor)
        self._endpoint = endpoint if endpoint is not None else endpoint_for_url(reactor, url, trust_root)
        self._service = ClientService(
            self._endpoint, self._factory, retry_policy or backoffPolicy(), clock=self.clock
        ) if reconnect else None
        self._connecting = None
        self._init_timer = None
        self._heartbeat_loop = None

    # -- life

    def start(self):
        """Start connecting (and, with ``reconnect``, keep the link up until :meth:`stop`)."""
        if self._service is not None:
            self._service.startService()
            return
        self._connecting = self._endpoint.connect(self._factory)
        self._connecting.addBoth(self._connect_done)

    def _connect_done(self, result):
        self._connecting = None
        if isinstance(result, Failure) and not result.check(defer.CancelledError):
            log.warn("cannot connect to {url}: {error}", url=self.url, error=result.getErrorMessage())

    def stop(self):
        """Stop: no more reconnecting, the connection dropped; the Deferred fires once it is gone."""
        if self._service is not None:
            stopped = self._service.stopService()
        else:
            if self._connecting is not None:
                self._connecting.cancel()
            for protocol in list(self._connections):
                protocol.dropConnection(abort=False)
            stopped = defer.succeed(None)
        stopped.addCallback(lambda _: self._wait_closed())
        return stopped

    def wait_connected(self, timeout=DEFAULT_TIMEOUT):
        """A Deferred firing with the protocol once a WebSocket connection is open."""
        return self.wait_until(lambda: self.protocol, timeout, "open connection")

    def wait_disconnected(self, timeout=DEFAULT_TIMEOUT):
        """A Deferred firing once no WebSocket connection is open."""
        return self.wait_until(lambda: True if self.protocol is None else None, timeout, "disconnection")

    # -- sending

    def send(self, message: PatriotMessage):
        """Send one message on the open connection (raises ``Disconnected`` when there is none)."""
        self.send_raw(encode(message))

    def send_raw(self, data: str | bytes):
        """Send text as a text frame or bytes as a binary frame, as they are (for bad-input tests)."""
        if self.protocol is None:
            raise Disconnected(f"not connected to {self.url}")
        self._send_on(self.protocol, data)

    def stop_heartbeats(self):
        """Stop sending heartbeats, now and on later connections (to test dead-link detection)."""
        self.heartbeating = False
        self._stop_timers(init=False)

    # -- protocol events

    def _opened(self, protocol):
        self.protocol = protocol
        self.connections += 1
        self._send_init()
        if self.heartbeating:
            self._heartbeat_loop = task.LoopingCall(self._send_heartbeat)
            self._heartbeat_loop.clock = self.clock
            self._heartbeat_loop.start(self.heartbeat_interval, now=False).addErrback(
                lambda f: log.failure("heartbeat loop to {url} failed", f, url=self.url)
            )
        self._changed()

    def _send_init(self):
        self._init_timer = self.clock.callLater(self.init_retry_interval, self._send_init)
        self.inits_sent += 1
        self._send_timed(InitRequest(self.payload))

    def _send_heartbeat(self):
        self.heartbeats_sent += 1
        self._send_timed(Heartbeat())

    def _send_timed(self, message):
        """Send from a timer: a connection already closing is logged, not raised into the timer."""
        try:
            self.send(message)
        except Disconnected as e:
            log.info("not sending {type} to {url}: {error}", type=message.TYPE, url=self.url, error=e)

    def _received(self, protocol, payload, is_binary):
        record = self._read_frame(protocol, payload, is_binary)
        if isinstance(record.message, InitResponse):
            self.init_response = record.message
            self._stop_timers(heartbeat=False)
        elif isinstance(record.message, HeartbeatResponse):
            self.heartbeat_responses += 1
            self.last_heartbeat_response = self.clock.seconds()
        self._add(record)

    def _closed(self, protocol, code, reason):
        self.closes.append((code, reason))
        if protocol is self.protocol:
            self.protocol = None
            self._stop_timers()
        self._changed()

    def _stop_timers(self, init=True, heartbeat=True):
        if init and self._init_timer is not None and self._init_timer.active():
            self._init_timer.cancel()
        if heartbeat and self._heartbeat_loop is not None and self._heartbeat_loop.running:
            self._heartbeat_loop.stop()


def _json_object(text):
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m gateway.sim patriot-client", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the Dialler Bridge, ws://host:port/path or wss://...")
    parser.add_argument("--payload", type=_json_object, default={}, help="init-request payload (a JSON object)")
    parser.add_argument("--dial", metavar="NUMBER", help="dial NUMBER once initialised")
    parser.add_argument("--hangup-after", type=float, metavar="S", help="hang up S seconds after dialling")
    parser.add_argument("--script", type=argparse.FileType("r"), metavar="FILE",
                        help="commands to run once initialised (wait, dial, hangup, status, raw, expect)")
    parser.add_argument("--ca-file", type=argparse.FileType("rb"), help="PEM certificate to trust for wss://")
    parser.add_argument("--heartbeat-interval", type=float, default=5.0, metavar="S",
                        help="seconds between heartbeats (default %(default)s)")
    parser.add_argument("--init-retry-interval", type=float, default=30.0, metavar="S",
                        help="seconds before an unanswered init-request is sent again (default %(default)s)")
    parser.add_argument("--no-reconnect", dest="reconnect", action="store_false",
                        help="exit when the connection ends instead of connecting again")
    args = parser.parse_args(argv)
    if args.hangup_after is not None and args.dial is None:
        parser.error("--hangup-after needs --dial")
    lines = [f"dial {args.dial}"] if args.dial else []
    if args.hangup_after is not None:
        lines += [f"wait {args.hangup_after}", "hangup"]
    if args.script:
        lines += args.script.read().splitlines()
    try:
        args.commands = parse_script(lines)
    except ScriptError as e:
        parser.error(str(e))
    return args


def print_frame(direction, text):
    """The CLI ``trace``: one line per frame."""
    print(direction, text.replace("\n", "\\n"), flush=True)


def main(argv=None):
    """Run the client simulator until interrupted."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    args = _arguments(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    sim = PatriotClientSim(
        reactor, args.url, args.payload, reconnect=args.reconnect,
        heartbeat_interval=args.heartbeat_interval, init_retry_interval=args.init_retry_interval,
        trust_root=Certificate.loadPEM(args.ca_file.read()) if args.ca_file else None, trace=print_frame,
    )
    sim.start()
    ready = sim.wait_for("init-response", lambda response: response.success, timeout=None)
    ready.addCallback(lambda _: sim.run_script(args.commands))
    ready.addErrback(lambda f: log.failure("script failed", f))
    reactor.run()
    return 0
