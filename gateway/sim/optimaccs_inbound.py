"""Simulated OptimaCCS inbound provider: places calls into a gateway's inbound WebSocket server.

The provider is the WebSocket *client*, one call per connection (spec 002 and the protocols README):
it sends ``incoming_call``, streams 20 ms binary audio frames, sends ``dtmf`` and ``hangup``, obeys the
server's ``answer``, ``hangup``, ``interrupt`` and ``dtmf``, and after the call sends its ``cdr`` and
closes. :func:`place_call` starts one call and returns its :class:`InboundCall`, which records everything the
server sent (so a test can assert on it) and is strict: every deviation from the spec is logged and
kept in :attr:`InboundCall.errors`.
"""

import uuid

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from zope.interface import implementer

from gateway.sim import audio
from gateway.sim.optimaccs_common import (
    CALL_REJECTED,
    COMMAND_DIGITS,
    NORMAL_CLEARING,
    BadMessage,
    CallDetail,
    ReceivedEvent,
    TimedDigit,
    dtmf_duration_problem,
    encode_json,
    parse_event,
    send_if_open,
)

log = Logger()

#: the call ended because the server hung up / the simulated caller hung up
CALLEE = "CALLEE"
CALLER = "CALLER"


def _codec_name(instance, attribute, value):
    audio.codec_named(value)


@attrs.frozen
class CallScript:
    """What the simulated caller does. Times are seconds; ``None`` means never."""

    caller_id: str = "081100000001"
    did: str = "0210000001"
    #: generated (a UUID) when not given
    session_id: str | None = None
    codec: str = attrs.field(default="pcm16", validator=_codec_name)
    #: pcm16 8 kHz mono to send (then silence); a tone with a noise floor when None
    pcm: bytes | None = None
    #: stream audio from connect instead of only after ``answer``
    stream_before_answer: bool = False
    #: digits to send, timed from the answer
    dtmf: tuple[TimedDigit, ...] = ()
    #: hang up this long after the answer
    hangup_after: float | None = None
    #: give up this long after ``incoming_call`` if still unanswered
    abandon_after: float | None = None
    #: send nothing unprompted (no incoming_call, no audio, no CDR): for bad-input tests
    raw: bool = False


@attrs.frozen
class ReceivedDigit:
    """A valid ``dtmf`` command from the server."""

    at: float
    digit: str
    duration: float


class CallEnded(Exception):
    """The call's connection closed before the awaited event arrived."""


@implementer(IPushProducer)
class AudioStreamer:
    """Sends 20 ms frames through ``send(frame)`` on a deadline schedule.

    It is a streaming producer: registered on the connection's transport, it stops when the transport
    pauses it (backpressure) and continues, re-anchored, with the next frame when resumed.
    """

    def __init__(self, clock, frames, send):
        self._frames = frames
        self._send = send
        self._pacer = audio.Pacer(clock, audio.FRAME_SECONDS, self._tick)
        self._wanted = False
        self.paused = False
        #: how often the transport paused us
        self.pauses = 0

    def start(self):
        if not self._wanted:
            self._wanted = True
            if not self.paused:
                self._pacer.start()

    def stop(self):
        self._wanted = False
        self._pacer.stop()

    def _tick(self, count):
        for _ in range(count):
            if not self._pacer.running:
                return
            self._send(next(self._frames))

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1
        self._pacer.stop()

    def resumeProducing(self):
        self.paused = False
        if self._wanted:
            self._pacer.start()

    stopProducing = stop


class _ProviderProtocol(WebSocketClientProtocol):
    """The wire side of one call: hands everything to the factory's :class:`InboundCall`."""

    def onOpen(self):
        self.factory.call._opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.call._received(payload, isBinary)

    def onClose(self, wasClean, code, reason):
        self.factory.call._closed(wasClean, code, reason)

    send = send_if_open


class InboundCall:
    """One simulated inbound call: drives the script and records what the server did.

    Records (all times from the call's clock): ``events`` (every JSON message from the server),
    ``dtmf_received``, ``interrupts``, ``errors`` (spec violations by the server), audio sent and
    received (bytes, frame counts and sizes), ``cdr`` (what was sent), ``close_code``/``close_reason``.
    """

    def __init__(self, script, clock):
        self.script = script
        self.session_id = script.session_id or str(uuid.uuid4())
        self.codec = audio.codec_named(script.codec)
        self._clock = clock
        self._link = None
        self._timers = []
        self._waiters = []
        pcm = audio.tone(10.0) if script.pcm is None else script.pcm
        self.streamer = AudioStreamer(
            clock, audio.frames(pcm, self.codec, loop=script.pcm is None), self._send_frame
        )
        self.events = []
        self.dtmf_received = []
        self.interrupts = []
        self.errors = []
        self.dtmf_sent = []
        self.sent_audio = bytearray()
        self.received_audio = bytearray()
        self.frames_sent = 0
        self.frames_received = 0
        self.first_frame = None
        self.frame_sizes_received = set()
        self.frames_before_answer = 0
        self.opened_at = self.started_at = self.answered_at = self.ended_at = None
        self.hangup_by = None
        self.cdr = None
        self.close_code = self.close_reason = None
        #: fires with this call when its connection has closed; fails if it could not connect
        self.ended = defer.Deferred()

    # -- what a test or the CLI uses

    def wait_for(self, event, count=1):
        """A Deferred firing with the ``count``-th message named ``event`` from the server.

        It fires with a :class:`~gateway.sim.optimaccs_common.ReceivedEvent`. ``event`` may also be
        ``"open"`` (fires with None) or ``"audio"`` (the first binary frame, fires with its payload).
        Fails with :class:`CallEnded` if the connection closes first.
        """
        waiter = defer.Deferred()
        self._waiters.append((event, count, waiter))
        self._notify()
        if self.ended.called:
            self._fail_waiters(CallEnded(f"call {self.session_id} has ended"))
        return waiter

    def hangup(self):
        """Hang up now, as the caller: ``hangup``, then the CDR, then close."""
        self._finish(CALLER, send_hangup=True)

    def send_dtmf(self, digit):
        """The caller presses a key."""
        if self._send_json({"event": "dtmf", "digit": digit}):
            self.dtmf_sent.append((self._clock.seconds(), digit))

    def send_text(self, text):
        """Send an arbitrary text frame (raw mode); whether it was sent."""
        return self._send(text.encode("utf-8") if isinstance(text, str) else text, binary=False)

    def send_binary(self, data):
        """Send an arbitrary binary frame (raw mode); whether it was sent."""
        return self._send(data, binary=True)

    def close(self, code=1000, reason=None):
        """Close the WebSocket (without hanging up first)."""
        if self._link is not None:
            self._link.sendClose(code, reason)

    @property
    def bytes_received(self):
        return len(self.received_audio)

    def echo(self, max_skipped=0):
        """Whether the audio received is the audio sent, echoed (an :class:`~gateway.sim.audio.EchoMatch`).

        Byte-exact by default; ``max_skipped`` lets the echo miss up to that many whole frames (those a
        jitter buffer trimmed: the daemon counts them in gateway_media_frames_dropped_total).
        """
        return audio.compare_echo(self.sent_audio, self.received_audio, self.codec, max_skipped=max_skipped)

    def summary(self):
        """A JSON-able account of the call."""
        echo = self.echo()
        return {
            "sessionId": self.session_id,
            "answered": self.answered_at is not None,
            "hangupBy": self.hangup_by,
            "events": [event.event for event in self.events],
            "dtmfReceived": [digit.digit for digit in self.dtmf_received],
            "interrupts": len(self.interrupts),
            "framesSent": self.frames_sent,
            "framesReceived": self.frames_received,
            "bytesReceived": self.bytes_received,
            "echo": echo.matched,
            "echoDigest": echo.received_digest,
            "pauses": self.streamer.pauses,
            "errors": list(self.errors),
            "cdr": self.cdr,
            "closeCode": self.close_code,
        }

    # -- driven by the protocol

    def _opened(self, link):
        self._link = link
        self.opened_at = self._clock.seconds()
        if not self.script.raw:
            self._start_call()
        self._notify()

    def _start_call(self):
        self.started_at = self._clock.seconds()
        self._send_json(
            {
                "event": "incoming_call",
                "callerId": self.script.caller_id,
                "didNumber": self.script.did,
                "sessionId": self.session_id,
            }
        )
        self._link.transport.registerProducer(self.streamer, True)
        if self.script.stream_before_answer:
            self.streamer.start()
        if self.script.abandon_after is not None:
            self._later(self.script.abandon_after, self._abandon)

    def _received(self, payload, binary):
        if binary:
            self._audio(payload)
            return
        try:
            event, message = parse_event(payload)
        except BadMessage as error:
            self._problem(f"bad message: {error}")
            return
        self.events.append(ReceivedEvent(self._clock.seconds(), event, message))
        handler = self._handlers.get(event)
        if handler is None:
            self._problem(f"unknown event {event!r}")
        elif not self.script.raw:
            handler(self, message)
        self._notify()

    def _closed(self, clean, code, reason):
        self._link = None
        self.close_code, self.close_reason = code, reason
        self.streamer.stop()
        self._cancel_timers()
        if self.ended_at is None:
            self.ended_at = self._clock.seconds()
            if not self.script.raw:
                self._problem(f"connection closed without a hangup (code {code}, {reason})")
        self._fail_waiters(CallEnded(f"call {self.session_id} ended (code {code}, {reason})"))
        self.ended.callback(self)

    def _connect_failed(self, failure):
        self._fail_waiters(CallEnded(f"call {self.session_id} could not connect"))
        self.ended.errback(failure)

    # -- server events

    def _on_answer(self, message):
        if self.ended_at is not None or self.answered_at is not None:
            self._problem("answer on a call already answered or ended")
            return
        self.answered_at = self._clock.seconds()
        self.streamer.start()
        for timed in self.script.dtmf:
            self._later(timed.at, self.send_dtmf, timed.digit)
        if self.script.hangup_after is not None:
            self._later(self.script.hangup_after, self.hangup)

    def _on_hangup(self, message):
        if self.ended_at is not None:
            self._problem("hangup on a call already ended")
            return
        self._finish(CALLEE, send_hangup=False)

    def _on_interrupt(self, message):
        self.interrupts.append(self._clock.seconds())

    def _on_dtmf(self, message):
        digit, duration = message.get("digit"), message.get("duration")
        problems = [dtmf_duration_problem(duration)]
        if not (isinstance(digit, str) and digit in COMMAND_DIGITS):
            problems.append(f"digit {digit!r} is not one of 0-9 * #")
        if self.answered_at is None or self.ended_at is not None:
            problems.append("the call is not answered")
        problems = [problem for problem in problems if problem]
        if problems:
            self._problem(f"bad dtmf command: {'; '.join(problems)}")
            return
        self.dtmf_received.append(ReceivedDigit(self._clock.seconds(), digit, duration))

    _handlers = {
        "answer": _on_answer,
        "hangup": _on_hangup,
        "interrupt": _on_interrupt,
        "dtmf": _on_dtmf,
    }

    # -- internals

    def _audio(self, payload):
        if self.first_frame is None:
            self.first_frame = payload
        self.frames_received += 1
        self.frame_sizes_received.add(len(payload))
        self.received_audio += payload
        if self.answered_at is None:
            self.frames_before_answer += 1
        self._notify()

    def _send_frame(self, frame):
        if self._send(frame, binary=True):
            self.frames_sent += 1
            self.sent_audio += frame

    def _abandon(self):
        if self.answered_at is None:
            self.hangup()

    def _finish(self, hangup_by, send_hangup):
        if self.ended_at is not None or self._link is None:
            return
        self.ended_at = self._clock.seconds()
        self.hangup_by = hangup_by
        self.streamer.stop()
        self._cancel_timers()
        if send_hangup:
            self._send_json({"event": "hangup"})
        self.cdr = self._call_detail().as_json(cause_as_string=True)
        self._send_json({"event": "cdr", **self.cdr})
        self.close()

    def _call_detail(self):
        answered = self.answered_at is not None
        if answered:
            disposition, cause = "ANSWERED", NORMAL_CLEARING
        elif self.hangup_by == CALLER:
            disposition, cause = "CANCEL", NORMAL_CLEARING
        else:
            disposition, cause = "NO ANSWER", CALL_REJECTED
        return CallDetail(
            session_id=self.session_id,
            source=self.script.caller_id,
            destination=self.script.did,
            start=self.started_at,
            answer=self.answered_at,
            end=self.ended_at,
            disposition=disposition,
            hangup_by=self.hangup_by,
            cause=cause,
        )

    def _send_json(self, message):
        return self._send(encode_json(message), binary=False)

    def _send(self, payload, binary):
        return self._link is not None and self._link.send(payload, binary)

    def _problem(self, text):
        log.warn("OptimaCCS sim call {session}: server broke the protocol: {problem}",
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

    def _occurrences(self, event):
        if event == "open":
            return [None] if self.opened_at is not None else []
        if event == "audio":
            return [] if self.first_frame is None else [self.first_frame]
        return [received for received in self.events if received.event == event]

    def _notify(self):
        ready, pending = [], []
        for event, count, waiter in self._waiters:
            seen = self._occurrences(event)
            if len(seen) >= count:
                ready.append((waiter, seen[count - 1]))
            else:
                pending.append((event, count, waiter))
        self._waiters = pending  # before firing: a callback may add a waiter
        for waiter, result in ready:
            waiter.callback(result)

    def _fail_waiters(self, error):
        waiters, self._waiters = self._waiters, []
        for _, _, waiter in waiters:
            waiter.errback(error)


def provider_factory(reactor, url, call):
    """The Autobahn client factory that runs ``call`` over a connection to ``url``."""
    factory = WebSocketClientFactory(url, reactor=reactor)
    factory.protocol = _ProviderProtocol
    factory.call = call
    return factory


def place_call(reactor, url, script=CallScript(), clock=None, trust_root=None):
    """Connect to the gateway's inbound server at ``url`` (ws:// or wss://) and run one call.

    Returns the :class:`InboundCall` at once; its ``ended`` Deferred fires when the connection has closed
    (or fails if it could not be made). ``clock`` defaults to ``reactor``. A wss:// server's certificate
    is checked against ``trust_root`` (for example a self-signed one), or the system's roots.
    """
    call = InboundCall(script, reactor if clock is None else clock)
    secure, host, port = parse_url(url)[:3]
    endpoint = HostnameEndpoint(reactor, host, port)
    if secure:
        endpoint = wrapClientTLS(optionsForClientTLS(host, trustRoot=trust_root), endpoint)
    endpoint.connect(provider_factory(reactor, url, call)).addErrback(call._connect_failed)
    return call
