"""Fake OptimaCCS outbound call API: the REST endpoints and the per-call WebSocket on one port.

This is the provider as the gateway's outbound driver sees it (protocols README, "Outbound"):
``POST /pbx/call`` places a call and answers with a ``sessionId`` and an ``endpointUrl``; the client
then opens the WebSocket ``/ws/{sessionId}`` (Bearer header required) and the fake dials when it joins,
reporting ``dialStatus`` Dialing, Ringing, then Connected, Busy or Failed as the number's :class:`DialRule`
says. Once connected the callee echoes what it hears (or plays a tone), and its loudspeaker plays the
client's audio at real time so ``checkPoint``/``CheckPoint`` and ``interruption`` behave as on the real
platform. The call ends on ``hangup`` (WebSocket or ``POST /pbx/hangup``), on the callee's hangup
(``callee_hangup_after``, or :meth:`FakeSession.callee_hangs_up` for one call), or
when the ring timeout passes; the fake then sends the ``cdr`` (integer ``hangupCauseCode``), ``hangup``,
and closes. ``GET /v1/cdr/{sessionId}`` returns the stored CDR.

Everything the client did is recorded for assertions: :attr:`FakeProviderApi.requests` (HTTP and WebSocket
handshakes) and, per call, the :class:`FakeSession` (messages both ways, audio counters, checkpoints, DTMF,
interruptions, protocol violations in ``errors``).

A test can make a session a hostile provider (the cases of ``tests/corpus/optimaccs_outbound.json``):
:meth:`FakeSession.send_raw` writes any frame on the call's WebSocket, :meth:`FakeSession.drop` loses its TCP
connection, :meth:`FakeSession.close` closes it with any code.
"""

import collections
import json
import re
import uuid

import attrs
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from gateway.sim import audio
from gateway.sim.optimaccs_common import (
    COMMAND_DIGITS,
    CONNECTION_TIMEOUT,
    NETWORK_FAILURE,
    NO_ANSWER,
    NORMAL_CLEARING,
    USER_BUSY,
    BadMessage,
    CallDetail,
    ReceivedEvent,
    TimedDigit,
    dtmf_duration_problem,
    encode_json,
    iso_time,
    parse_event,
    send_if_open,
)

log = Logger()

OUTCOMES = ("answer", "busy", "failed", "no-answer")
MEDIA_MODES = ("echo", "tone")
#: seconds of played audio a callee keeps in ``FakeSession.heard``
HEARD_SECONDS = 4.0
AUTH_MISSING = "Authentication token is required"
AUTH_INVALID = "Invalid authentication token"
_DIGITS = re.compile(r"[0-9]+")
_WS_PATH = re.compile(r"/ws/([^/]+)")
_CDR_PATH = re.compile(r"/v1/cdr/([^/]+)")


@attrs.frozen
class DialRule:
    """Numbers ending in ``suffix`` get ``outcome``: answer, busy, failed or no-answer."""

    suffix: str = attrs.field(validator=attrs.validators.matches_re(_DIGITS))
    outcome: str = attrs.field(validator=attrs.validators.in_(OUTCOMES))


#: the defaults: ...0000 is busy, ...9999 fails, ...8888 rings until the timeout; others answer
DEFAULT_RULES = (DialRule("0000", "busy"), DialRule("9999", "failed"), DialRule("8888", "no-answer"))


def parse_rule(text):
    """``"0000=busy"`` -> DialRule("0000", "busy"); ``ValueError`` if malformed."""
    suffix, equals, outcome = text.partition("=")
    if not equals:
        raise ValueError(f"dial rule {text!r} is not SUFFIX=OUTCOME")
    return DialRule(suffix.strip(), outcome.strip())


@attrs.frozen
class ApiSettings:
    """How the fake provider behaves. Times are seconds."""

    token: str = "sim-token"
    #: first matching suffix wins; a number no rule matches is answered
    rules: tuple[DialRule, ...] = DEFAULT_RULES
    #: Dialing -> Ringing (or -> Busy / Failed)
    dial_time: float = 0.2
    #: Ringing -> Connected
    ring_time: float = 1.0
    #: ring timeout when the request gives none
    default_timeout: int = 60
    #: a call whose WebSocket does not join within this fails (cause 102)
    join_timeout: float = 10.0
    #: what the callee sends once connected: an echo of what it hears, or a tone
    media: str = attrs.field(default="echo", validator=attrs.validators.in_(MEDIA_MODES))
    #: with media "tone": (number suffix, Hz) pairs, first match wins; 440 Hz for a number none matches
    tones: tuple[tuple[str, float], ...] = ()
    #: digits the callee presses, timed from Connected
    callee_dtmf: tuple[TimedDigit, ...] = ()
    #: the callee hangs up this long after Connected (never if None)
    callee_hangup_after: float | None = None
    #: the loudspeaker queue holds at most this much audio; the excess is dropped and counted
    max_queued_seconds: float = 60.0

    def tone_for(self, number):
        return next((hz for suffix, hz in self.tones if number.endswith(suffix)), 440.0)

    def outcome_for(self, number):
        for rule in self.rules:
            if number.endswith(rule.suffix):
                return rule.outcome
        return "answer"


@attrs.frozen
class RecordedRequest:
    """One HTTP request or WebSocket handshake and the answer it got."""

    at: float
    method: str
    path: str
    headers: dict
    body: object
    status: int
    response: object


def _error(status, message):
    return status, {"status": status, "errors": message, "data": None}


def _validation_failed(errors):
    return 422, {"code": 422, "message": "Validation failed", "errors": errors}


def _ok(data):
    return 200, {"status": 200, "errors": "", "data": data}


class _Loudspeaker:
    """The callee's side of the client's audio: a bounded queue played one 20 ms frame per tick.

    Checkpoints are positions in the stream of queued bytes: one is reached when everything queued
    before it has been played, or discarded by an interruption (a client waiting for it must not wait
    for audio that will never play).
    """

    def __init__(self, codec, max_bytes, reached):
        self._frame = codec.frame_bytes
        self._max = max_bytes
        self._reached = reached
        self._queue = bytearray()
        self._marks = collections.deque()
        self.queued = self.played = self.discarded = self.dropped = 0

    def feed(self, data):
        room = max(0, self._max - len(self._queue))
        self._queue += data[:room]
        self.queued += min(room, len(data))
        self.dropped += max(0, len(data) - room)

    def mark(self, name):
        self._marks.append((self.queued, name))
        self._reach_marks()

    def interrupt(self):
        self.discarded += len(self._queue)
        self._queue.clear()
        self._reach_marks()

    def play_frame(self, heard):
        """Play the next frame's worth of queued audio (possibly short), if any, into ``heard``.

        Checkpoints it completes are reached after ``heard`` has returned.
        """
        if self._queue:
            chunk = bytes(self._queue[:self._frame])
            del self._queue[:self._frame]
            self.played += len(chunk)
            heard(chunk)
            self._reach_marks()

    def _reach_marks(self):
        done = self.queued - len(self._queue)
        while self._marks and self._marks[0][0] <= done:
            self._reached(self._marks.popleft()[1])


class FakeSession:
    """One outbound call: its dial progress, media, and a record of what the client did."""

    def __init__(self, api, session_id, number, caller_id, timeout, codecs):
        self._api = api
        self._clock = api.clock
        settings = api.settings
        self._settings = settings
        self.session_id = session_id
        self.phone_number = number
        self.caller_id = caller_id
        self.timeout = timeout
        self.input_codec, self.output_codec = codecs
        self.outcome = settings.outcome_for(number)
        self.state = "created"
        self.created_at = self._clock.seconds()
        self.answered_at = self.ended_at = None
        self.received = []
        self.sent = []
        self.errors = []
        self.dtmf_received = []
        self.checkpoints = []
        self.interruptions = []
        self.audio_bytes_received = 0
        self.early_audio_bytes = 0
        self.frames_sent = 0
        self.cdr = None
        self.loudspeaker = _Loudspeaker(
            self.input_codec,
            round(settings.max_queued_seconds * self.input_codec.bytes_per_second),
            self._checkpoint_reached,
        )
        self._tone = audio.frames(audio.tone(10.0, settings.tone_for(number)), self.output_codec, loop=True)
        #: the last HEARD_SECONDS of the client's audio the callee's loudspeaker played, as pcm16
        self.heard = bytearray()
        self._pacer = audio.Pacer(self._clock, audio.FRAME_SECONDS, self._tick)
        self._link = None
        self._timers = []
        #: fires with this session when the call has ended
        self.ended = defer.Deferred()
        #: fires when the call's WebSocket has closed (never if it did not join)
        self.disconnected = defer.Deferred()
        self._later(settings.join_timeout, self._join_timed_out)

    @property
    def statuses(self):
        """The dialStatus values sent, in order."""
        return [m["data"]["status"] for _, m in self.sent if m.get("event") == "dialStatus"]

    # -- the WebSocket

    def joinable(self):
        return self.state == "created" and self._link is None

    def joined(self, link):
        self._link = link
        self.state = "dialing"
        self._cancel_timers()
        self._status("Dialing")
        self._later(self.timeout, self._ring_timeout)
        if self.outcome == "busy":
            self._later(self._settings.dial_time, self._end, "BUSY", USER_BUSY, "CALLEE", "Busy")
        elif self.outcome == "failed":
            self._later(self._settings.dial_time, self._end, "FAILED", NETWORK_FAILURE, None, "Failed")
        else:
            self._later(self._settings.dial_time, self._ring)

    def message(self, payload, binary):
        if binary:
            self._audio(payload)
            return
        try:
            event, message = parse_event(payload)
        except BadMessage as error:
            self._problem(f"bad message: {error}")
            return
        self.received.append(ReceivedEvent(self._clock.seconds(), event, message))
        handler = self._handlers.get(event)
        if handler is None:
            self._problem(f"unknown event {event!r}")
        elif self.state == "ended":
            self._problem(f"{event!r} after the call ended")
        else:
            handler(self, message.get("data"))

    def left(self, code, reason):
        self._link = None
        if self.state != "ended":
            self._problem(f"WebSocket closed before the call ended (code {code}, {reason})")
            self.hangup()
        self.disconnected.callback(self)

    # -- a hostile provider

    def send_raw(self, data, binary=False):
        """Send ``data`` (bytes) as one frame on the call's WebSocket, as it is; ``RuntimeError`` if not joined."""
        self._hostile_link().sendMessage(data, isBinary=binary)

    def drop(self):
        """Lose the call's TCP connection, without a closing handshake."""
        self._hostile_link().transport.loseConnection()

    def close(self, code, reason=None):
        """Close the call's WebSocket with ``code`` (the call is left to the client)."""
        self._hostile_link().sendCloseFrame(code, reason.encode("utf-8") if reason else None, isReply=False)

    def _hostile_link(self):
        if self._link is None:
            raise RuntimeError(f"session {self.session_id}: no WebSocket joined")
        return self._link

    # -- call control

    def hangup(self):
        """The client hangs up (over the WebSocket or the REST API)."""
        if self.state == "connected":
            self._end("ANSWERED", NORMAL_CLEARING, "CALLER")
        else:
            self._end("CANCEL", NORMAL_CLEARING, "CALLER")

    def callee_hangs_up(self):
        """The callee hangs up now, as ``callee_hangup_after`` does by timer: the client gets the ``cdr``
        (hangupBy CALLEE, normal clearing), then ``hangup``, and the WebSocket closes. A test uses it
        to make one party of several leave; ``RuntimeError`` if the call is not connected."""
        if self.state != "connected":
            raise RuntimeError(f"session {self.session_id}: the callee cannot hang up a call that is {self.state}")
        self._end("ANSWERED", NORMAL_CLEARING, "CALLEE")

    def shut_down(self):
        if self.state == "connected":
            self._end("ANSWERED", NORMAL_CLEARING, None)
        else:
            self._end("FAILED", NETWORK_FAILURE, None)

    def _ring(self):
        self.state = "ringing"
        self._status("Ringing")
        if self.outcome == "answer":
            self._later(self._settings.ring_time, self._connect)

    def _connect(self):
        self._cancel_timers()  # the ring timeout: the request's timeout hangs up only an unanswered call
        self.state = "connected"
        self.answered_at = self._clock.seconds()
        self._status("Connected")
        self._pacer.start()
        for timed in self._settings.callee_dtmf:
            self._later(timed.at, self._press, timed.digit)
        if self._settings.callee_hangup_after is not None:
            self._later(self._settings.callee_hangup_after, self._end, "ANSWERED", NORMAL_CLEARING, "CALLEE")

    def _ring_timeout(self):
        self._end("NO ANSWER", NO_ANSWER, None)

    def _join_timed_out(self):
        self._end("FAILED", CONNECTION_TIMEOUT, None)

    def _end(self, disposition, cause, hangup_by, status=None):
        if self.state == "ended":
            return
        if status is not None:
            self._status(status)
        self.state = "ended"
        self.ended_at = self._clock.seconds()
        self._pacer.stop()
        self._cancel_timers()
        self.cdr = CallDetail(
            session_id=self.session_id,
            source=self.caller_id,
            destination=self.phone_number,
            start=self.created_at,
            answer=self.answered_at,
            end=self.ended_at,
            disposition=disposition,
            hangup_by=hangup_by,
            cause=cause,
        ).as_json(cause_as_string=False)
        self._send({"event": "cdr", "data": self.cdr})
        self._send({"event": "hangup"})
        if self._link is not None:
            self._link.sendClose(1000)
        self.ended.callback(self)

    # -- client events

    def _on_dtmf(self, data):
        if not isinstance(data, dict):
            self._problem(f"dtmf data {data!r} is not an object")
            return
        digit, duration = data.get("digit"), data.get("duration")
        problems = [] if duration is None else [dtmf_duration_problem(duration)]
        if not (isinstance(digit, str) and digit in COMMAND_DIGITS):
            problems.append(f"digit {digit!r} is not one of 0-9 * #")
        if self.state != "connected":
            problems.append(f"the call is {self.state}, not connected")
        problems = [problem for problem in problems if problem]
        if problems:
            self._problem(f"bad dtmf: {'; '.join(problems)}")
            return
        self.dtmf_received.append((self._clock.seconds(), digit, duration))

    def _on_hangup(self, data):
        self.hangup()

    def _on_interruption(self, data):
        self.interruptions.append(self._clock.seconds())
        self.loudspeaker.interrupt()

    def _on_checkpoint(self, data):
        if not (isinstance(data, str) and data):
            self._problem(f"checkPoint name {data!r} is not a non-empty string")
            return
        self.loudspeaker.mark(data)

    _handlers = {
        "dtmf": _on_dtmf,
        "hangup": _on_hangup,
        "interruption": _on_interruption,
        "checkPoint": _on_checkpoint,
    }

    # -- media

    def _audio(self, payload):
        if self.state != "connected":
            self.early_audio_bytes += len(payload)
            return
        self.audio_bytes_received += len(payload)
        self.loudspeaker.feed(payload)

    def _tick(self, count):
        for _ in range(count):
            if self._settings.media == "tone":
                self._send_audio(next(self._tone))
                self.loudspeaker.play_frame(self._hear)
            else:
                self.loudspeaker.play_frame(self._echo)

    def _hear(self, data):
        self.heard += self.input_codec.decode(data)
        del self.heard[:max(0, len(self.heard) - round(HEARD_SECONDS * audio.SAMPLE_RATE * 2))]

    def _echo(self, heard):
        self._hear(heard)
        self._send_audio(self._transcode(heard))

    def _transcode(self, data):
        if self.input_codec == self.output_codec:
            return data
        return self.output_codec.encode(self.input_codec.decode(data))

    def _send_audio(self, frame):
        if self._link is not None and send_if_open(self._link, frame, True):
            self.frames_sent += 1

    def _checkpoint_reached(self, name):
        self.checkpoints.append((self._clock.seconds(), name))
        self._send({"event": "CheckPoint", "data": name})

    def _press(self, digit):
        self._send({"event": "dtmf", "data": {"sessionId": self.session_id, "digit": digit}})

    # -- internals

    def _status(self, status):
        self._send({"event": "dialStatus", "data": {"sessionId": self.session_id, "status": status}})

    def _send(self, message):
        if self._link is not None and send_if_open(self._link, encode_json(message), False):
            self.sent.append((self._clock.seconds(), message))

    def _problem(self, text):
        log.warn("OptimaCCS fake API session {session}: client broke the protocol: {problem}",
                 session=self.session_id, problem=text)
        self.errors.append(text)

    def _later(self, delay, function, *args):
        self._timers = [timer for timer in self._timers if timer.active()]
        self._timers.append(self._clock.callLater(delay, function, *args))

    def _cancel_timers(self):
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []


class _MediaProtocol(WebSocketServerProtocol):
    """The per-call WebSocket: authenticates the handshake, then hands everything to the session."""

    session = None

    def onConnect(self, request):
        self.session = self.factory.api._admit(request.path, request.headers)
        return None

    def onMessage(self, payload, isBinary):
        self.session.message(payload, isBinary)

    def onOpen(self):
        self.session.joined(self)

    def onClose(self, wasClean, code, reason):
        if self.session is not None and self.session._link is self:
            self.session.left(code, reason)


class _HttpApi(Resource):
    """Every HTTP request except the WebSocket upgrade: decoded and handed to the API as JSON."""

    isLeaf = True

    def __init__(self, api):
        super().__init__()
        self._api = api

    def render(self, request):
        host = request.getHost()
        authority = (request.getHeader("host") or f"{host.host}:{host.port}").strip()
        status, response = self._api.handle(
            request.method.decode("ascii", "replace"),
            request.uri.decode("utf-8", "replace"),
            {name.decode("latin-1").lower(): value.decode("latin-1")
             for name, value in request.getAllHeaders().items()},
            request.content.read(),
            f"ws://{authority}",
        )
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return encode_json(response)


class _ConnectionTracker(WrappingFactory):
    """Keeps the open connections of a listening port so that they can be closed and waited for."""

    def __init__(self, wrapped):
        super().__init__(wrapped)
        self._gone = {}

    def unregisterProtocol(self, protocol):
        super().unregisterProtocol(protocol)
        for waiter in self._gone.pop(protocol, ()):
            waiter.callback(None)

    def close_all(self):
        """Close every connection; a Deferred firing when all have been lost."""
        waiters = []
        for protocol in list(self.protocols):
            waiters.append(defer.Deferred())
            self._gone.setdefault(protocol, []).append(waiters[-1])
            protocol.transport.loseConnection()
        return defer.gatherResults(waiters)


class FakeProviderApi:
    """The fake provider: HTTP + WebSocket on one port. :meth:`site` makes its twisted.web Site."""

    def __init__(self, clock, settings=ApiSettings()):
        self.clock = clock
        self.settings = settings
        #: sessionId -> FakeSession, in creation order
        self.sessions = {}
        self.requests = []
        self._failures = collections.deque()
        self._session_waiters = []
        self._trackers = []

    # -- what a test or the CLI uses

    def site(self, reactor):
        """A twisted.web Site serving the REST API and, under /ws/, the call WebSockets."""
        factory = WebSocketServerFactory(reactor=reactor)
        factory.protocol = _MediaProtocol
        factory.api = self
        root = Resource()
        http = _HttpApi(self)
        root.getChild = lambda name, request: http
        root.putChild(b"ws", WebSocketResource(factory))
        return Site(root)

    def listen(self, reactor, port=0, interface="127.0.0.1"):
        """Listen on ``interface``:``port``; a Deferred firing with the listening port.

        :meth:`shutdown` closes the connections accepted here.
        """
        tracker = _ConnectionTracker(self.site(reactor))
        self._trackers.append(tracker)
        return TCP4ServerEndpoint(reactor, port, interface=interface).listen(tracker)

    def fail_next_calls(self, count=1, message="Failed to initiate call"):
        """Answer the next ``count`` valid ``POST /pbx/call`` with a 500."""
        self._failures.extend([message] * count)

    def wait_for_session(self, count=1):
        """A Deferred firing with the ``count``-th session created (at once if it exists)."""
        waiter = defer.Deferred()
        self._session_waiters.append((count, waiter))
        self._notify()
        return waiter

    def shutdown(self):
        """End every call still going, then close every connection; a Deferred firing when all are closed.

        Calls end as usual (CDR, hangup, WebSocket close); HTTP connections are then closed. Stopping
        the listening port is the caller's business.
        """
        for session in list(self.sessions.values()):
            session.shut_down()
        calls = defer.gatherResults(
            [session.disconnected for session in self.sessions.values() if session._link is not None]
        )
        calls.addCallback(lambda _: defer.gatherResults([tracker.close_all() for tracker in self._trackers]))
        return calls

    # -- HTTP

    def handle(self, method, uri, headers, body, ws_base):
        """Answer one HTTP request: (status, JSON response). Records it."""
        path = uri.partition("?")[0]
        parsed = _parse_body(body)
        status, response = self._route(method, path, headers, parsed, ws_base)
        self._record(method, uri, headers, parsed, status, response)
        return status, response

    def _route(self, method, path, headers, body, ws_base):
        cdr = _CDR_PATH.fullmatch(path)
        if path == "/pbx/call":
            allowed, respond = "POST", lambda: self._call(body, ws_base)
        elif path == "/pbx/hangup":
            allowed, respond = "POST", lambda: self._hangup(body)
        elif cdr:
            allowed, respond = "GET", lambda: self._cdr(cdr.group(1))
        else:
            return _error(404, "Not Found")
        if method != allowed:
            return _error(405, "Method Not Allowed")
        problem = self._auth_problem(headers.get("authorization"))
        if problem:
            return _error(401, problem)
        if body is _BAD_JSON:
            return _error(400, "Request body is not a JSON object")
        return respond()

    def _call(self, body, ws_base):
        errors = _call_errors(body)
        if errors:
            return _validation_failed(errors)
        if self._failures:
            return _error(500, self._failures.popleft())
        codecs = body.get("audio") or {}
        session = FakeSession(
            self,
            str(uuid.uuid4()),
            body["phoneNumber"],
            body.get("callerId"),
            body.get("timeout", self.settings.default_timeout),
            tuple(audio.codec_named(codecs.get(side, "pcm16")) for side in ("input", "output")),
        )
        self.sessions[session.session_id] = session
        log.info("OptimaCCS fake API: call {session} to {number} ({outcome})",
                 session=session.session_id, number=session.phone_number, outcome=session.outcome)
        self._notify()
        return _ok({
            "phoneNumber": session.phone_number,
            "sessionId": session.session_id,
            "endpointUrl": f"{ws_base}/ws/{session.session_id}",
        })

    def _hangup(self, body):
        session_id = body.get("sessionId")
        if not (isinstance(session_id, str) and session_id):
            return _validation_failed({"sessionId": ["Session ID is required."]})
        session = self.sessions.get(session_id)
        if session is None or session.state == "ended":
            return _error(404, "Session not found or already ended")
        session.hangup()
        return _ok({"sessionId": session_id})

    def _cdr(self, session_id):
        session = self.sessions.get(session_id)
        if session is None or session.cdr is None:
            return _error(404, "CDR not found")
        stamp = iso_time(session.ended_at)
        return _ok({**session.cdr, "createdAt": stamp, "updatedAt": stamp})

    # -- WebSocket handshake

    def _admit(self, path, headers):
        """The session a WebSocket handshake joins; raises ConnectionDeny to refuse it."""
        status, reason, session = self._admission(path, headers)
        self._record("GET", path, dict(headers), None, status, reason)
        if session is None:
            log.info("OptimaCCS fake API: refused WebSocket {path}: {status} {reason}",
                     path=path, status=status, reason=reason)
            raise ConnectionDeny(status, reason)
        return session

    def _admission(self, path, headers):
        problem = self._auth_problem(headers.get("authorization"))
        if problem:
            return 401, problem, None
        match = _WS_PATH.fullmatch(path)
        session = self.sessions.get(match.group(1)) if match else None
        if session is None:
            return 404, "Session not found", None
        if not session.joinable():
            return 409, "Session already joined or ended", None
        return 101, "Switching Protocols", session

    # -- internals

    def _auth_problem(self, header):
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return AUTH_MISSING
        if token.strip() != self.settings.token:
            return AUTH_INVALID
        return None

    def _record(self, method, path, headers, body, status, response):
        self.requests.append(
            RecordedRequest(self.clock.seconds(), method, path, headers, body, status, response)
        )

    def _notify(self):
        created = list(self.sessions.values())
        ready = [(count, waiter) for count, waiter in self._session_waiters if len(created) >= count]
        self._session_waiters = [entry for entry in self._session_waiters if entry not in ready]
        for count, waiter in ready:
            waiter.callback(created[count - 1])


_BAD_JSON = object()


def _parse_body(body):
    """A request body: {} if empty, the object if it is a JSON object, else :data:`_BAD_JSON`."""
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except ValueError:
        return _BAD_JSON
    return parsed if isinstance(parsed, dict) else _BAD_JSON


def _call_errors(body):
    """Validation errors of a ``POST /pbx/call`` body, by field, in the provider's 422 shape."""
    errors = {}
    number = body.get("phoneNumber")
    if not (isinstance(number, str) and _DIGITS.fullmatch(number)):
        errors["phoneNumber"] = ["Phone Number containing only digits."]
    timeout = body.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
        errors["timeout"] = ["Timeout must be a positive integer."]
    caller_id = body.get("callerId")
    if caller_id is not None and not isinstance(caller_id, str):
        errors["callerId"] = ["Caller ID must be a string."]
    codecs = body.get("audio")
    if codecs is not None and not isinstance(codecs, dict):
        errors["audio"] = ["Audio must be an object."]
    for side in ("input", "output") if isinstance(codecs, dict) else ():
        if codecs.get(side, "pcm16") not in audio.CODECS:
            errors[f"audio.{side}"] = [f"Audio {side} must be one of {', '.join(audio.CODECS)}."]
    return errors
