"""OptimaCCS simulators: the inbound provider client and the outbound fake provider API.

Library use (tests): from the inbound side (:mod:`gateway.sim.optimaccs_inbound`), :func:`place_call
<gateway.sim.optimaccs_inbound.place_call>` / :class:`~gateway.sim.optimaccs_inbound.CallScript` /
:class:`~gateway.sim.optimaccs_inbound.InboundCall`; from the outbound side (:mod:`gateway.sim.optimaccs_api`),
:class:`~gateway.sim.optimaccs_api.FakeProviderApi` / :class:`~gateway.sim.optimaccs_api.ApiSettings` /
:class:`~gateway.sim.optimaccs_api.DialRule`. Command line::

    python -m gateway.sim optimaccs call --url ws://127.0.0.1:4143 --calls 2 --caller 0811.. --did 021..
        [--audio tone|FILE.wav] [--codec pcm16|ulaw|alaw] [--dtmf "1@2.0,2@3.5"] [--hangup-after S]
    python -m gateway.sim optimaccs api --port 8080 --token T [--rule 0000=busy ...]

``call`` prints one JSON summary line per call and exits 0 when every call ended with a CDR and the
server broke no rule; ``api`` serves until interrupted, logging to stderr.
"""

import argparse
import json
import sys

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner, textFileLogObserver

from gateway.sim.audio import CODECS, read_wav
from gateway.sim.optimaccs_api import (
    DEFAULT_RULES,
    MEDIA_MODES,
    ApiSettings,
    DialRule,
    FakeProviderApi,
    FakeSession,
    RecordedRequest,
    parse_rule,
)
from gateway.sim.optimaccs_common import (
    HANGUP_CAUSES,
    CallDetail,
    ReceivedEvent,
    TimedDigit,
    parse_dtmf_schedule,
)
from gateway.sim.optimaccs_inbound import (
    AudioStreamer,
    CallEnded,
    CallScript,
    InboundCall,
    ReceivedDigit,
    place_call,
    provider_factory,
)

__all__ = [
    "DEFAULT_RULES",
    "HANGUP_CAUSES",
    "ApiSettings",
    "AudioStreamer",
    "CallDetail",
    "CallEnded",
    "CallScript",
    "DialRule",
    "FakeProviderApi",
    "FakeSession",
    "InboundCall",
    "ReceivedDigit",
    "ReceivedEvent",
    "RecordedRequest",
    "TimedDigit",
    "main",
    "parse_dtmf_schedule",
    "place_call",
    "provider_factory",
]


_DEFAULTS = ApiSettings()


def _seconds(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _schedule(text):
    try:
        return parse_dtmf_schedule(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _rule(text):
    try:
        return parse_rule(text)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parser():
    parser = argparse.ArgumentParser(prog="python -m gateway.sim optimaccs", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    call = commands.add_parser("call", help="place inbound calls into a gateway (the provider is the client)")
    call.add_argument("--url", default="ws://127.0.0.1:4143", help="the gateway's inbound WebSocket")
    call.add_argument("--calls", type=int, default=1, help="calls to place, all at once")
    call.add_argument("--caller", default="081100000001", help="callerId")
    call.add_argument("--did", default="0210000001", help="didNumber")
    call.add_argument("--audio", default="tone", help="'tone' or an 8 kHz mono 16-bit WAV file")
    call.add_argument("--codec", choices=sorted(CODECS), default="pcm16", help="audio encoding (default %(default)s)")
    call.add_argument("--dtmf", type=_schedule, default=(), help='digits timed from the answer: "1@2.0,2@3.5"')
    call.add_argument("--hangup-after", type=_seconds, help="hang up S seconds after the answer")
    call.add_argument("--abandon-after", type=_seconds, help="give up S seconds after ringing if unanswered")
    call.add_argument("--stream-before-answer", action="store_true", help="send audio from connect on")

    api = commands.add_parser("api", help="serve the fake outbound call API (REST + WebSocket, one port)")
    api.add_argument("--port", type=int, default=8080,
                     help="TCP port of the API, REST and WebSocket (default %(default)s)")
    api.add_argument("--interface", default="127.0.0.1", help="address to listen on (default %(default)s)")
    api.add_argument("--token", default=_DEFAULTS.token,
                     help="the Bearer token clients must send (default %(default)s)")
    api.add_argument("--rule", type=_rule, action="append", dest="rules",
                     help="SUFFIX=answer|busy|failed|no-answer, repeatable; replaces the defaults "
                          + ", ".join(f"{r.suffix}={r.outcome}" for r in DEFAULT_RULES))
    api.add_argument("--dial-time", type=_seconds, default=_DEFAULTS.dial_time,
                     help="seconds from Dialing to Ringing (default %(default)s)")
    api.add_argument("--ring-time", type=_seconds, default=_DEFAULTS.ring_time,
                     help="seconds from Ringing to Connected (default %(default)s)")
    api.add_argument("--media", choices=MEDIA_MODES, default="echo",
                     help="what the callee does with the audio (default %(default)s)")
    api.add_argument("--dtmf", type=_schedule, default=(), help='callee digits timed from Connected: "5@1.0"')
    api.add_argument("--callee-hangup-after", type=_seconds, help="the callee hangs up S seconds after Connected")
    api.add_argument("--fail-calls", type=int, default=0, help="answer the first N calls with a 500")
    return parser


def _script(options):
    pcm = None if options.audio == "tone" else read_wav(options.audio)
    return CallScript(
        caller_id=options.caller,
        did=options.did,
        codec=options.codec,
        pcm=pcm,
        stream_before_answer=options.stream_before_answer,
        dtmf=options.dtmf,
        hangup_after=options.hangup_after,
        abandon_after=options.abandon_after,
    )


async def _run_calls(reactor, options, script):
    calls = [place_call(reactor, options.url, script) for _ in range(options.calls)]
    results = await defer.DeferredList([call.ended for call in calls], consumeErrors=True)
    healthy = True
    for call, (ok, outcome) in zip(calls, results):
        summary = call.summary() if ok else {"sessionId": call.session_id, "error": str(outcome.value)}
        healthy = healthy and ok and call.cdr is not None and not call.errors
        sys.stdout.write(json.dumps(summary) + "\n")
    if not healthy:
        raise SystemExit(1)


async def _serve(reactor, options):
    api = FakeProviderApi(
        reactor,
        ApiSettings(
            token=options.token,
            rules=tuple(options.rules) if options.rules else DEFAULT_RULES,
            dial_time=options.dial_time,
            ring_time=options.ring_time,
            media=options.media,
            callee_dtmf=options.dtmf,
            callee_hangup_after=options.callee_hangup_after,
        ),
    )
    api.fail_next_calls(options.fail_calls)
    port = await api.listen(reactor, options.port, options.interface)
    address = port.getHost()
    sys.stderr.write(f"fake OptimaCCS API on http://{address.host}:{address.port} token {options.token}\n")
    await defer.Deferred()  # until the reactor stops


def main(argv=None):
    options = _parser().parse_args(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    if options.command == "call":
        try:
            script = _script(options)
        except ValueError as error:
            sys.stderr.write(f"{error}\n")
            return 2
        task.react(_run_calls, (options, script))
    else:
        task.react(_serve, (options,))
