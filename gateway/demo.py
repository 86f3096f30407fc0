"""``make demo`` (``python -m gateway.demo``): the gateway with every peer simulated, playing a scripted scenario.

It writes a demo configuration into the working directory (``var/demo`` unless ``--workdir``), starts
the HIS bridge simulator (in this process) and the chat server simulator (a subprocess), then the
daemon itself (``twistd -n gateway``, logging to ``gateway.log`` there), all on loopback ports picked
free at start. Then it plays, narrating one line per thing that happened:

1. an OptimaCCS inbound call (the provider's simulated caller) routed to CTI agent alice, who
   answers, holds, retrieves, sends DTMF and blind-transfers the caller from her desktop (the HIS
   bridge simulator), before the caller hangs up;
2. an attended transfer: a second caller reaches alice, who consults another number (the caller
   is held; the consult call is shown linked to it on the status page), alternates between the two,
   then transfers the caller to the consulted party; the two CDRs say which call consulted which;
3. a Patriot operator in client mode (the Patriot simulator, logged in to the Dialler Bridge)
   clicks to dial: the operator's simulated phone rings and answers, then the number rings and
   answers, then the operator hangs up from Patriot;
4. an inbound SMS becomes a chat conversation on the chat server, and an agent's reply there goes
   back out as an SMS.

Every step waits for its evidence (a wire message at a simulator, or the call core's state through
the admin API) for at most :data:`WAIT` seconds. Afterwards the daemon and the simulators stay up
(with a demo call to the echo app every few seconds) and the status page's URL is printed, until
Ctrl-C. With ``--once`` it exits instead: 0 if every step happened, 1 naming the steps that did not.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import sys
import typing

import attrs
from twisted.internet import defer, protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gateway.config import loads
from gateway.ctl import admin_token
from gateway.sim.his import HisBridgeSim
from gateway.sim.optimaccs import CallScript, place_call
from gateway.sim.patriot_client import PatriotClientSim
from gateway.testing import GatewayProcess, free_port

__all__ = ["Demo", "DemoRun", "Narrator", "Script", "Step", "StepFailed", "Story", "begin_logging", "demo_config",
           "main", "play", "print_missing"]

log = Logger()

#: seconds a step waits for each piece of its evidence
WAIT = 20.0
#: seconds between two looks at a state polled through an API
POLL = 0.1
#: seconds between steps when a person watches (none with --once)
PACE = 1.0

AGENT, AGENT_EXTENSION, AGENT_DID = "alice", "1001", "0215550100"
CALLER, TRANSFER_TO, DTMF = "081100000001", "5550123", "123"
SECOND_CALLER, CONSULT_TO = "081100000002", "5550124"
OPERATOR, OPERATOR_PASSWORD, OPERATOR_EXTENSION, DIALLED = "operator1", "demo-password", "2001", "5550199"
CUSTOMER = "+15550142"
CUSTOMER_TEXT = "Hello, my alarm panel keeps beeping"
AGENT_REPLY = "Hi! Press and hold the silence key for 3 seconds; we are checking the panel now."
ECHO_DID = "0215550999"
#: seconds between two demo calls to the echo app while the demo stays up
ECHO_EVERY = 15.0

#: the chat connector's section of a demo configuration (both demos': the chat server simulator on ``{chat}``)
CHAT_CONFIG = """\
[chat]
enabled = true
url = "http://127.0.0.1:{chat}"
reconnect_initial = 0.5
reconnect_max = 2.0
retry_initial = 0.5
retry_max = 2.0
"""

DEMO_CONFIG = """\
# The demo's configuration, written by `python -m gateway.demo` (make demo) for one run: every
# peer is a simulator on loopback, on ports picked free when the demo started.

[gateway]
node = "demo"
state_dir = {state_dir}
shutdown_grace = 2.0

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"
# Empty: the daemon generates a token into <state_dir>/admin-token, where gatewayctl finds it.
token = ""

[store]
url = {store_url}

[pbx.sim]
# The operator's simulated phone answers after 1.5 s; dialled numbers after 1.5 s of ringing.
phone_answer_delay = 1.5
ring_time = 1.5
# While the demo stays up: a simulated caller rings the echo app every {inbound_every} s (0: never).
inbound_every = {inbound_every}
inbound_caller = "5550100"
inbound_did = "{echo_did}"
inbound_duration = 8.0

[[extensions]]
id = "{agent_extension}"
name = "Alice (CTI agent)"
device = "sim:manual"          # rings until the agent answers from her desktop

[[extensions]]
id = "{operator_extension}"
name = "Operator (Patriot)"
device = "sim"                 # answers by itself after phone_answer_delay

[[routes]]
did = "{agent_did}"
to = "extension:{agent_extension}"

[[routes]]
did = "{echo_did}"
to = "app:echo"

[optimaccs]
enabled = true
listen = "tcp:{optimaccs}:interface=127.0.0.1"
cdr_wait = 2.0

[patriot.bridge]
enabled = true
listen = "tcp:{patriot}:interface=127.0.0.1"
users = [{{username = "{operator}", password = "{operator_password}", extension = "{operator_extension}"}}]

[cti]
enabled = true
connect = "tcp:host=127.0.0.1:port={his}"
reconnect_initial = 0.5
reconnect_max = 2.0
agents = [{{agent = "{agent}", extension = "{agent_extension}"}}]

""" + CHAT_CONFIG


def demo_config(state_dir: pathlib.Path, *, admin: int, optimaccs: int, patriot: int, his: int, chat: int,
                inbound_every: float) -> str:
    """The demo's configuration text for these loopback ports."""
    return DEMO_CONFIG.format(
        # JSON strings are TOML basic strings: a path with quotes or backslashes stays one string
        state_dir=json.dumps(str(state_dir)), store_url=json.dumps(f"sqlite:{state_dir}/gateway.sqlite"),
        admin=admin, optimaccs=optimaccs, patriot=patriot, his=his, chat=chat,
        inbound_every=inbound_every, echo_did=ECHO_DID, agent=AGENT, agent_extension=AGENT_EXTENSION,
        agent_did=AGENT_DID, operator=OPERATOR, operator_password=OPERATOR_PASSWORD,
        operator_extension=OPERATOR_EXTENSION,
    )


def fresh_store(state_dir: pathlib.Path) -> None:
    """Remove an earlier run's store (the SQLite file and its journals) so that this run starts empty: the
    status page's recent calls, the API's CDRs and SMS are this run's only, and no SMS left pending by an
    earlier run is delivered again. The admin token is kept."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        (state_dir / f"gateway.sqlite{suffix}").unlink(missing_ok=True)


# -- running steps ---------------------------------------------------------------------------


class StepFailed(Exception):
    """A step's evidence did not come: the message says what was missing."""


@attrs.frozen
class Step:
    name: str
    #: ``run() -> awaitable``; it narrates what happened and raises when something did not
    run: typing.Callable[[], typing.Awaitable]


@attrs.frozen
class Story:
    """Steps that build on each other: after one fails, the rest of the story cannot happen."""

    steps: tuple[Step, ...]
    #: when it fails, no later story can happen either (the start-up)
    essential: bool = False


class Narrator:
    """One line per thing that happened: seconds since the start, the room, what."""

    def __init__(self, clock, out):
        self._clock = clock
        self._out = out
        self._start = clock.seconds()
        self.muted = False

    def say(self, room: str, text: str) -> None:
        if not self.muted:
            print(f"{self._clock.seconds() - self._start:6.1f}s  {room:<9}  {text}", file=self._out, flush=True)


class Script:
    """Plays stories step by step and keeps the names of the steps that did not happen."""

    def __init__(self, narrator: Narrator, pause: typing.Callable[[], typing.Awaitable]):
        self._narrator = narrator
        self._pause = pause

    async def play(self, stories: typing.Sequence[Story]) -> list[str]:
        """Every story in order; the missing steps, each as ``name: why``."""
        missing: list[str] = []
        for index, story in enumerate(stories):
            failed = await self._play_story(story, missing)
            if failed and story.essential:
                missing += [f"{s.name}: not reached" for later in stories[index + 1:] for s in later.steps]
                break
        return missing

    async def _play_story(self, story: Story, missing: list[str]) -> bool:
        for index, step in enumerate(story.steps):
            try:
                await step.run()
            except Exception as e:  # any failure is that step not happening; the demo goes on
                if not isinstance(e, StepFailed):
                    log.failure("demo step {step} failed", step=step.name)
                reason = str(e) or type(e).__name__
                self._narrator.say("MISSING", f"{step.name}: {reason}")
                missing.append(f"{step.name}: {reason}")
                missing += [f"{s.name}: not reached" for s in story.steps[index + 1:]]
                return True
            await self._pause()
        return False


# -- the daemon and the simulators -----------------------------------------------------------

_LISTENING = re.compile(rb"listening on [^\s:]+:(\d+)")


class ChatServerProcess(protocol.ProcessProtocol):
    """``python -m gateway.sim chat-server --port 0`` (aiohttp, so not in this process).

    Its output goes to ``log_path``; ``ready`` fires with its port, ``ended`` when it has exited.
    """

    def __init__(self, log_path: pathlib.Path):
        self.log_path = log_path
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self._head = b""
        self._log = None

    def spawn(self, reactor) -> None:
        self._log = open(self.log_path, "ab")
        argv = [sys.executable, "-m", "gateway.sim", "chat-server", "--port", "0"]
        reactor.spawnProcess(self, sys.executable, argv, env=os.environ)

    def outReceived(self, data: bytes) -> None:
        self._log.write(data)
        self._log.flush()
        if not self.ready.called:
            self._head += data
            found = _LISTENING.search(self._head)
            if found:
                self.ready.callback(int(found.group(1)))

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self._log.close()
        if not self.ready.called:
            self.ready.errback(StepFailed(f"the chat server simulator exited: see {self.log_path}"))
        self.ended.callback(None)

    def stop(self) -> defer.Deferred:
        if not self.ended.called:
            self.transport.signalProcess("TERM")
        return self.ended


def _startup_error(log_path: pathlib.Path, offset: int) -> str:
    """The last critical or stderr line the daemon logged after ``offset``: why it did not start."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        lines = f.read().splitlines()
    errors = [line.partition("] ")[2] for line in lines if "#critical] " in line or "[stderr#error] " in line]
    return errors[-1] if errors else ""


class DemoRun:
    """What every demo's run shares (:class:`Demo`, :class:`gateway.demo_cluster.ClusterDemo`): waiting
    for evidence, the pace between steps, and the chat server simulator's control API.

    A subclass sets ``reactor``, ``once`` and ``chat_port`` (the chat server simulator's port).
    """

    reactor: typing.Any
    once: bool
    chat_port: int | None

    async def wait_until(self, probe: typing.Callable[[], typing.Awaitable], what: str, timeout: float = WAIT):
        """The first true value of ``await probe()``, polled every :data:`POLL` seconds."""
        deadline = self.reactor.seconds() + timeout
        while True:
            value = await probe()
            if value:
                return value
            if self.reactor.seconds() > deadline:
                raise StepFailed(f"no {what} within {timeout:g} s")
            await deferLater(self.reactor, POLL, lambda: None)

    async def chat_api(self, method: str, path: str, body=None):
        """The chat server simulator's control API (``/sim/...``)."""
        import treq

        url = f"http://127.0.0.1:{self.chat_port}{path}"
        response = await treq.request(method, url, json=body, timeout=10)
        data = json.loads(await response.text())
        if response.code != 200:
            raise StepFailed(f"chat server simulator: {method} {path} answered {response.code}: {data}")
        return data

    async def chat_conversation(self, customer: str, text: str) -> dict:
        """The chat server's conversation for ``customer`` holding ``text``, once it is there."""

        async def opened():
            for conversation in await self.chat_api("GET", "/sim/conversations"):
                texts = [m.get("text") for m in conversation["messages"]]
                if conversation["refId"] == customer and text in texts:
                    return conversation
            return None

        return await self.wait_until(opened, f"{customer}'s conversation on the chat server")

    async def pause(self) -> None:
        if not self.once:
            await deferLater(self.reactor, PACE, lambda: None)


class Demo(DemoRun):
    """The daemon and the simulators of one run, and the stories played against them."""

    def __init__(self, reactor, workdir: pathlib.Path, narrator: Narrator, *, once: bool, admin_port: int = 0):
        self.reactor = reactor
        self.workdir = workdir
        self.narrator = narrator
        self.once = once
        self.ports = {"admin": admin_port or free_port(), "optimaccs": free_port(), "patriot": free_port()}
        self.his = HisBridgeSim(reactor, agents=[AGENT])
        self.chat = ChatServerProcess(workdir / "chat-server.log")
        self.daemon: GatewayProcess | None = None
        self.patriot: PatriotClientSim | None = None
        self.token: str | None = None
        self._his_port = None
        self._calls: list = []

    @property
    def chat_port(self) -> int | None:
        return self.ports.get("chat")

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}/"

    @property
    def config_path(self) -> pathlib.Path:
        return self.workdir / "gateway.toml"

    def stories(self) -> list[Story]:
        return [
            Story((
                Step("gateway: the daemon starts with every adapter and its simulated peers", self.start),
                Step(f"cti: the gateway logs agent {AGENT} in at the HIS bridge", self.cti_login),
                Step("chat: the gateway registers with the chat server as its SMS connector", self.chat_registered),
            ), essential=True),
            AgentCall(self).story(),
            AttendedTransfer(self).story(),
            ClickToDial(self).story(),
            *([SipCall(self).story()] if SIPP else []),
            SmsChat(self).story(),
            Story((Step("simulators: no protocol violation seen", self.no_violations),)),
        ]

    # -- waiting, and the APIs

    def expect(self, d: defer.Deferred, what: str, timeout: float = WAIT) -> defer.Deferred:
        """``d``, failing with ``StepFailed("no <what> within N s")`` when it takes longer."""

        def timed_out(failure):
            failure.trap(defer.TimeoutError)
            raise StepFailed(f"no {what} within {timeout:g} s")

        return d.addTimeout(timeout, self.reactor).addErrback(timed_out)

    async def api(self, method: str, path: str, body=None, expect: int | None = 200):
        """The daemon's admin API: the JSON, or ``StepFailed`` for an unexpected status."""
        code, data = await self.daemon.api(method, path, body, token=self.token)
        if expect is not None and code != expect:
            raise StepFailed(f"{method} {path} answered {code}: {data}")
        return data if expect is not None else (code, data)

    async def stored_cdr(self, call_id: str) -> dict:
        """The CDR of ``call_id``, once the daemon has stored it."""

        async def stored():
            code, cdr = await self.api("GET", f"/api/cdrs/{call_id}", expect=None)
            return cdr if code == 200 else None

        return await self.wait_until(stored, f"CDR of call {call_id}")

    def place_call(self, script: CallScript):
        """An OptimaCCS inbound call into the daemon (hung up at the demo's end if still open)."""
        call = place_call(self.reactor, f"ws://127.0.0.1:{self.ports['optimaccs']}/", script)
        self._calls.append(call)
        return call

    # -- start and stop

    async def start(self) -> None:
        from twisted.internet.endpoints import TCP4ServerEndpoint

        self._his_port = await self.his.listen(TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1"))
        self.ports["his"] = self._his_port.getHost().port
        self.narrator.say("sims", f"HIS bridge simulator listening on 127.0.0.1:{self.ports['his']}")
        self.chat.spawn(self.reactor)
        self.ports["chat"] = await self.expect(self.chat.ready, "chat server simulator listening")
        self.narrator.say("sims", f"chat server simulator listening on 127.0.0.1:{self.ports['chat']}")
        fresh_store(self.workdir / "var")
        text = demo_config(self.workdir / "var", inbound_every=0.0 if self.once else ECHO_EVERY, **{
            name: self.ports[name] for name in ("admin", "optimaccs", "patriot", "his", "chat")})
        if SIPP:
            self.ports["sip"], self.ports["sip_trunk"] = _free_udp_port(), _free_udp_port()
            text += SIP_CONFIG.format(sip=self.ports["sip"], trunk=self.ports["sip_trunk"])
        log_path = self.workdir / "gateway.log"
        logged_before = log_path.stat().st_size if log_path.exists() else 0
        self.daemon = GatewayProcess(self.reactor, self.workdir, text, args=["--logfile", str(log_path)])
        try:
            await self.daemon.start(self.ports["admin"])
        except RuntimeError as e:
            why = _startup_error(log_path, logged_before) or str(e).strip()
            raise StepFailed(f"the daemon did not start: {why} (log: {log_path})") from None
        self.token = admin_token(loads(text, str(self.config_path)))
        self.narrator.say("gateway", f"daemon up, admin API on {self.status_url} (log: {log_path})")

    async def cti_login(self) -> None:
        await self.expect(self.his.when_ready(), f"login of agent {AGENT} at the HIS bridge simulator")
        self.narrator.say("cti", f"the gateway connected to the HIS bridge: control status {self.his.status},"
                                 f" agent {AGENT} logged in on extension {AGENT_EXTENSION}")

    async def chat_registered(self) -> None:
        async def registered():
            return (await self.chat_api("GET", "/sim/connectors"))["connected"]

        (connector, *_) = await self.wait_until(registered, "registerConnector at the chat server simulator")
        self.narrator.say("chat", f"the gateway registered at the chat server: connector {connector['id']!r},"
                                  f" channel {connector['channel']!r}")

    async def no_violations(self) -> None:
        seen = list(self.his.violations) + [e for call in self._calls for e in call.errors]
        if self.patriot is not None:
            seen += [r.error for r in self.patriot.received if r.error]
        if seen:
            raise StepFailed("; ".join(map(str, seen)))
        self.narrator.say("sims", "the simulators saw no protocol violation")

    def stop(self) -> defer.Deferred:
        """Everything this run started: stopped (the daemon with SIGTERM), then the Deferred fires."""
        self.narrator.say("demo", "stopping the daemon and the simulators")
        self.narrator.muted = True
        for call in self._calls:
            call.close(1001, "the demo is over")
        stops = [self.chat.stop()] if self.chat.transport is not None else []
        if self.patriot is not None:
            stops.append(self.patriot.stop())
        if self.daemon is not None:
            stops.append(self.daemon.stop())
        if self._his_port is not None:
            stops.append(defer.maybeDeferred(self._his_port.stopListening))
            self.his.disconnect()
        return defer.DeferredList([d.addErrback(lambda f: log.failure("stopping the demo", f)) for d in stops])


# -- the stories ------------------------------------------------------------------------------


def _call_with(calls: list[dict], **attributes) -> dict | None:
    return next((c for c in calls if all(c["attributes"].get(k) == v for k, v in attributes.items())), None)


def _leg(call: dict, role: str) -> dict | None:
    return next((leg for leg in reversed(call["legs"]) if leg["role"] == role), None)


class AgentCall:
    """OptimaCCS inbound call -> CTI agent: answer, hold, retrieve, DTMF, blind transfer; the caller hangs up."""

    caller = CALLER

    def __init__(self, demo: Demo):
        self.demo = demo
        self.say = demo.narrator.say
        self.call = None
        self.conversation = self.call_id = self.transferred_id = None

    def story(self) -> Story:
        return Story((
            Step(f"optimaccs: an inbound call to {AGENT_DID} rings {AGENT}'s desktop", self.ring),
            Step(f"cti: {AGENT} answers", self.answer),
            Step(f"cti: {AGENT} holds", lambda: self.request("hold", "conversation.held", "holds the call")),
            Step(f"cti: {AGENT} retrieves", lambda: self.request("retrieve", "conversation.talking", "retrieves it")),
            Step(f"cti: {AGENT} sends DTMF {DTMF}", self.dtmf),
            Step(f"cti: {AGENT} transfers the caller to {TRANSFER_TO}", self.transfer),
            Step("optimaccs: the caller hangs up and the call's CDR is stored", self.hang_up),
        ))

    def event(self, name: str) -> defer.Deferred:
        return self.demo.expect(self.demo.his.when_event(name, self.conversation), f"{name} at {AGENT}'s desktop")

    async def send(self, verb: str, **properties):
        response = await self.demo.expect(self.demo.his.send(verb, self.conversation, **properties),
                                          f"answer to conversation.request.{verb}")
        if not response.ok:
            raise StepFailed(f"conversation.request.{verb} failed: {response.describe()}")

    async def ring(self) -> None:
        initialised = self.demo.expect(self.demo.his.when_destination("conversation"), f"call on {AGENT}'s desktop")
        self.call = self.demo.place_call(CallScript(caller_id=self.caller, did=AGENT_DID))
        self.say("optimaccs", f"the provider's caller {self.caller} dials {AGENT_DID}: incoming_call over the"
                              " WebSocket")
        destination = await initialised
        self.conversation = destination.target
        self.call_id = self.conversation.split(".")[-2]  # <agent>.cg.tel.<call id>.primary
        self.say("cti", f"{AGENT}'s desktop shows call {self.call_id} from {self.caller}: conversation"
                        f" {destination.init.state}")

    async def answer(self) -> None:
        talking = self.event("conversation.talking")
        answered = self.demo.expect(self.call.wait_for("answer"), 'an "answer" at the provider')
        await self.send("answer")
        await answered
        await talking
        self.say("cti", f'{AGENT} answers from her desktop: the provider is told "answer"; conversation.talking')

    async def request(self, verb: str, event: str, what: str) -> None:
        raised = self.event(event)
        await self.send(verb)
        await raised
        self.say("cti", f"{AGENT} {what}: {event}")

    async def dtmf(self) -> None:
        await self.send("senddtmf", digits=DTMF)

        async def received():
            return "".join(d.digit for d in self.call.dtmf_received) == DTMF

        await self.demo.wait_until(received, f"DTMF {DTMF} at the provider")
        self.say("cti", f"{AGENT} sends DTMF {DTMF}: the provider received {', '.join(DTMF)} as dtmf commands")

    async def transfer(self) -> None:
        ended = self.event("conversation.ended")
        await self.send("transfer", destination=TRANSFER_TO)
        await ended

        async def transferred():
            calls = (await self.demo.api("GET", "/api/calls"))["calls"]
            call = _call_with(calls, transferred_from=self.call_id)
            return call if call is not None and call["state"] == "TALKING" else None

        call = await self.demo.wait_until(transferred, f"the caller talking to {TRANSFER_TO}")
        self.transferred_id = call["call_id"]
        self.say("cti", f"{AGENT} transfers the caller to {TRANSFER_TO}: her conversation ends; call"
                        f" {self.transferred_id} joins {CALLER} and {TRANSFER_TO}")

    async def hang_up(self) -> None:
        self.call.hangup()
        await self.demo.expect(self.call.ended, "end of the caller's WebSocket")

        cdr = await self.demo.stored_cdr(self.transferred_id)
        self.say("optimaccs", f"the caller hangs up: hangup, then the provider's cdr; CDR of call {self.transferred_id}"
                              f" stored (cause {cdr['cause']}, {cdr['billable_seconds']} s billable)")


class AttendedTransfer(AgentCall):
    """OptimaCCS inbound call -> CTI agent: answer, consult, alternate twice, transfer to the consulted party."""

    caller = SECOND_CALLER

    def __init__(self, demo: Demo):
        super().__init__(demo)
        self.interaction = self.consult_id = self.consult_conversation = None

    def story(self) -> Story:
        return Story((
            Step(f"optimaccs: a second call to {AGENT_DID} rings {AGENT}'s desktop", self.ring),
            Step(f"cti: {AGENT} answers the second call", self.answer),
            Step(f"cti: {AGENT} consults {CONSULT_TO}: the caller is held, the consult call is linked to it",
                 self.consult),
            Step(f"cti: {AGENT} alternates to the caller and back", self.alternate),
            Step(f"cti: {AGENT} transfers the caller to {CONSULT_TO} (attended transfer)", self.transfer),
            Step("optimaccs: the caller hangs up; the CDRs say which call consulted which", self.hang_up),
        ))

    async def ring(self) -> None:
        await super().ring()
        self.interaction = self.conversation.rpartition(".")[0]

    async def interaction_request(self, verb: str, **properties):
        response = await self.demo.expect(self.demo.his.send(verb, self.interaction, **properties),
                                          f"answer to {verb}")
        if not response.ok:
            raise StepFailed(f"{verb} failed: {response.describe()}")
        return response

    def focus(self) -> defer.Deferred:
        return self.demo.expect(self.demo.his.when_event("interaction.focuschanged", self.interaction),
                                "interaction.focuschanged")

    async def consult(self) -> None:
        held = self.event("conversation.held")
        initialised = self.demo.expect(self.demo.his.when_destination("conversation"), "the consult conversation")
        focus = self.focus()
        response = await self.interaction_request("consult", destination=CONSULT_TO)
        self.consult_id = response.body["id"]
        await held
        self.consult_conversation = (await initialised).target
        await focus
        talking = self.demo.his.when_event("conversation.talking", self.consult_conversation)
        await self.demo.expect(talking, f"{CONSULT_TO} answering the consult")
        call = await self.demo.api("GET", f"/api/calls/{self.call_id}")
        self.say("cti", f"{AGENT} consults {CONSULT_TO}: the caller is held (call {self.call_id} {call['state']}),"
                        f" consult call {self.consult_id} talks as a second conversation of the interaction"
                        f" (the live calls list it under call {self.call_id})")

    async def alternate(self) -> None:
        for to in ("the caller", CONSULT_TO):
            focus = self.focus()
            await self.interaction_request("alternate")
            moved = await focus
            self.say("cti", f"{AGENT} alternates to {to}: interaction.focuschanged to {moved.body['id']}")

    async def transfer(self) -> None:
        ended = self.demo.expect(self.demo.his.when_event("interaction.ended", self.interaction), "interaction.ended")
        await self.interaction_request("transfer-to-consult")
        await ended

        async def transferred():
            calls = (await self.demo.api("GET", "/api/calls"))["calls"]
            call = _call_with(calls, transferred_from=self.call_id, consult_id=self.consult_id)
            return call if call is not None and call["state"] == "TALKING" else None

        call = await self.demo.wait_until(transferred, f"the caller talking to {CONSULT_TO}")
        self.transferred_id = call["call_id"]
        self.say("cti", f"{AGENT} transfers the caller to {CONSULT_TO}: both her conversations end and are"
                        f" disposed, then the interaction; call {self.transferred_id} joins {self.caller} and"
                        f" {CONSULT_TO}")

    async def hang_up(self) -> None:
        self.call.hangup()
        await self.demo.expect(self.call.ended, "end of the caller's WebSocket")
        primary = await self.demo.stored_cdr(self.call_id)
        consult = await self.demo.stored_cdr(self.consult_id)
        self.say("optimaccs", f"the caller hangs up; CDRs: call {self.call_id} (cause {primary['cause']}, consults"
                              f" {', '.join(primary['consults'])}), call {self.consult_id} (cause {consult['cause']},"
                              f" consult of {consult['consult_of']})")


class ClickToDial:
    """A Patriot operator (client mode) clicks to dial: the operator's phone rings, then the number."""

    def __init__(self, demo: Demo):
        self.demo = demo
        self.say = demo.narrator.say
        self.call_id = None

    def story(self) -> Story:
        return Story((
            Step(f"patriot: {OPERATOR} logs in to the Dialler Bridge (client mode)", self.log_in),
            Step(f"patriot: click-to-dial {DIALLED} rings the operator's phone", self.dial),
            Step(f"patriot: the operator answers, then {DIALLED} rings", lambda: self.legs("TALKING", "DIALING")),
            Step(f"patriot: {DIALLED} answers", lambda: self.legs("TALKING", "TALKING")),
            Step(f"patriot: {OPERATOR} hangs up from Patriot", self.hang_up),
        ))

    @property
    def sim(self) -> PatriotClientSim:
        return self.demo.patriot

    def update(self, predicate, what: str) -> defer.Deferred:
        return self.demo.expect(self.sim.wait_for("call-status-update", predicate, timeout=None), what)

    async def log_in(self) -> None:
        url = f"ws://127.0.0.1:{self.demo.ports['patriot']}/dialler"
        self.demo.patriot = PatriotClientSim(self.demo.reactor, url,
                                             {"userName": OPERATOR, "password": OPERATOR_PASSWORD})
        self.sim.start()
        response = await self.demo.expect(self.sim.wait_for("init-response", timeout=None), "init-response")
        if not response.success:
            raise StepFailed(f"init-response refused the login: {response}")
        await self.update(lambda u: not u.call_active, "call-status-update after the login")
        self.say("patriot", f"Patriot connects to the Dialler Bridge as {OPERATOR}: init-response success,"
                            " call-status-update callActive=false")

    async def call(self) -> dict | None:
        calls = (await self.demo.api("GET", f"/api/calls?extension={OPERATOR_EXTENSION}"))["calls"]
        return next((c for c in calls if c["call_id"] == self.call_id or c["ended_at"] is None), None)

    async def dial(self) -> None:
        self.sim.dial(DIALLED)
        update = await self.update(lambda u: u.call_active, "call-status-update callActive=true")
        self.say("patriot", f"{OPERATOR} clicks to dial {DIALLED}: call-status-update callActive=true,"
                            f" outbound={str(update.outbound).lower()}, callerId={update.caller_id}")

        async def ringing():
            call = await self.call()
            device = _leg(call, "device") if call else None
            return call if device is not None and device["state"] == "DIALING" else None

        call = await self.demo.wait_until(ringing, f"extension {OPERATOR_EXTENSION}'s phone ringing")
        self.call_id = call["call_id"]
        self.say("patriot", f"call {self.call_id}: the gateway rings the operator's phone first (extension"
                            f" {OPERATOR_EXTENSION} DIALING)")

    async def legs(self, device_state: str, party_state: str) -> None:
        async def reached():
            call = await self.call()
            device, party = (_leg(call, role) for role in ("device", "party")) if call else (None, None)
            return (device is not None and device["state"] == device_state and party is not None
                    and party["number"] == DIALLED and party["state"] == party_state)

        await self.demo.wait_until(reached, f"phone {device_state} and {DIALLED} {party_state}")
        self.say("patriot", f"call {self.call_id}: operator's phone {device_state}, {DIALLED} {party_state}")

    async def hang_up(self) -> None:
        ended = self.update(lambda u: not u.call_active, "call-status-update callActive=false")
        self.sim.hangup()
        await ended

        cdr = await self.demo.stored_cdr(self.call_id)
        self.say("patriot", f"{OPERATOR} hangs up in Patriot: call-status-update callActive=false; CDR stored"
                            f" (cause {cdr['cause']}, hung up by {cdr['hangup_by']})")


#: SIPp (Debian's sip-tester), for the demo's SIP call; without it the demo has none
SIPP = shutil.which("sipp")
#: where sip-tester ships its G.711 and RFC 2833 captures (SIPp's uac_pcap plays pcap/<name>)
SIPP_PCAPS = "/usr/share/sip-tester"
SIP_CONFIG = """
[sip]
listen = "udp:{sip}:interface=127.0.0.1"
rtp_ports = "31000-31999"

[[sip.trunks]]
name = "demo-trunk"
proxy = "udp:127.0.0.1:{trunk}"
"""


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return udp.getsockname()[1]


class _Sipp(protocol.ProcessProtocol):
    def __init__(self):
        self.output = bytearray()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(getattr(reason.value, "exitCode", None))


class SipCall:
    """A SIP trunk (SIPp's uac_pcap) calls the echo app: G.711 A-law over RTP and the RFC 2833 digit 1."""

    def __init__(self, demo: Demo):
        self.demo = demo
        self.say = demo.narrator.say

    def story(self) -> Story:
        return Story((
            Step(f"sip: a trunk calls {ECHO_DID} (the echo) with G.711 audio and RFC 2833 DTMF", self.call),
            Step("sip: the CDR has the SIP leg, its RTP statistics and the digit", self.cdr),
        ))

    async def call(self) -> None:
        demo = self.demo
        workdir = demo.workdir / "sipp"
        workdir.mkdir(exist_ok=True)
        if not (workdir / "pcap").exists():
            (workdir / "pcap").symlink_to(SIPP_PCAPS)
        sipp = _Sipp()
        argv = [SIPP, f"127.0.0.1:{demo.ports['sip']}", "-sn", "uac_pcap", "-s", ECHO_DID, "-i", "127.0.0.1",
                "-p", str(demo.ports["sip_trunk"]), "-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error"]
        transport = demo.reactor.spawnProcess(sipp, SIPP, argv, env=dict(os.environ, TERM="dumb"), path=str(workdir))
        try:
            code = await demo.expect(sipp.ended, "end of the SIPp call", timeout=40)
        finally:
            if not sipp.ended.called:
                transport.signalProcess("KILL")
        if code != 0:
            raise StepFailed(f"SIPp's call failed (exit {code}): {sipp.output.decode(errors='replace')[-500:]}")
        self.say("sip", f"SIPp called {ECHO_DID} through trunk demo-trunk: answered, 8 s of audio, digit 1, BYE")

    async def cdr(self) -> None:
        async def found():
            cdrs = (await self.demo.api("GET", "/api/cdrs?limit=1000"))["cdrs"]
            return next((c for c in reversed(cdrs) if c["legs"] and c["legs"][0]["driver"] == "sip"), None)

        cdr = await self.demo.wait_until(found, "CDR of the SIP call")
        rtp = next((p["data"] for p in cdr["provider_cdrs"] if p["source"] == "sip"), {})
        self.say("sip", f"CDR {cdr['call_id']}: cause {cdr['cause']}, {cdr['dtmf_count']} DTMF digit(s), codec "
                        f"{rtp.get('codec')}, {rtp.get('audio_packets_received')} RTP packets in, "
                        f"{rtp.get('packets_sent')} out, jitter {rtp.get('jitter_ms')} ms")
        if cdr["dtmf_count"] < 1:
            raise StepFailed(f"the SIP call's digit was not counted: {cdr}")


class SmsChat:
    """An inbound SMS becomes a chat conversation; the agent's reply there goes out as an SMS."""

    def __init__(self, demo: Demo):
        self.demo = demo
        self.say = demo.narrator.say
        self.conversation_id = None

    def story(self) -> Story:
        return Story((
            Step(f"chat: an SMS from {CUSTOMER} reaches the gateway", self.sms_in),
            Step("chat: the SMS becomes a conversation on the chat server", self.conversation),
            Step(f"chat: an agent's reply goes out as an SMS to {CUSTOMER}", self.reply),
        ))

    async def sms_in(self) -> None:
        stored = await self.demo.api("POST", "/api/sms/inbound", {"from": CUSTOMER, "text": CUSTOMER_TEXT})
        self.say("chat", f'an SMS from {CUSTOMER} reaches the gateway: "{CUSTOMER_TEXT}" (stored as'
                         f" {stored['sms']['uid']})")

    async def conversation(self) -> None:
        conversation = await self.demo.chat_conversation(CUSTOMER, CUSTOMER_TEXT)
        self.conversation_id = conversation["conversationId"]
        self.say("chat", f"the connector opens conversation {self.conversation_id} on the chat server"
                         " (init, joinConversation) and sends the message in it")

    async def reply(self) -> None:
        await self.demo.chat_api("POST", f"/sim/conversations/{self.conversation_id}/messages", {"text": AGENT_REPLY})
        self.say("chat", f'an agent answers in the chat: "{AGENT_REPLY}"')

        async def sent():
            sms = (await self.demo.api("GET", "/api/sms/sim/sent"))["sent"]
            return [s for s in sms if s["to"] == CUSTOMER and s["text"] == AGENT_REPLY]

        (sms, *_) = await self.demo.wait_until(sent, f"the reply sent as an SMS to {CUSTOMER}")
        self.say("chat", f"the gateway sends the reply as SMS {sms['id']} to {CUSTOMER} (kind {sms['kind']})")


# -- the command line -------------------------------------------------------------------------


def _arguments(argv):
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo",
        description="Run the gateway with every peer simulated and play a scenario touching every adapter.",
    )
    parser.add_argument("--once", action="store_true",
                        help="play the scenario once and exit: 0 if every step happened, 1 otherwise")
    parser.add_argument("--workdir", default="var/demo", type=pathlib.Path,
                        help="where the configuration, state and logs go (default: var/demo)")
    parser.add_argument("--admin-port", type=int, default=0,
                        help="the admin HTTP port (status page, API); default: a free one")
    return parser.parse_args(argv)


def print_missing(name: str, missing: list[str], out) -> None:
    """The verdict after the stories: every step happened, or which did not (``name``: the demo's)."""
    print(file=out)
    if missing:
        print(f"{name}: {len(missing)} step(s) did not happen:", *(f"  - {m}" for m in missing), sep="\n", file=out)
    else:
        print(f"{name}: every step happened.", file=out)


def _closing_words(demo: Demo, missing: list[str], out) -> None:
    print_missing("demo", missing, out)
    if demo.once:
        return
    print(f"\nThe gateway keeps running until Ctrl-C:\n"
          f"  status page   {demo.status_url}   (admin token: {demo.token})\n"
          f"  gatewayctl    gatewayctl --config {demo.config_path} calls   (status, cdrs, dial 2001 5550100...)\n"
          f"  daemon log    {demo.workdir / 'gateway.log'}\n"
          f"A simulated caller rings the echo app ({ECHO_DID}) every {ECHO_EVERY:g} s.", file=out, flush=True)


def _stop_on_signals(reactor, signals: typing.Iterable[int]) -> None:
    """Ctrl-C (SIGINT) and the other ``signals`` stop the demo and everything it started, exit status 0.

    Installed explicitly: Twisted installs its SIGINT handler only over
    Python's default one, which a process started with SIGINT ignored (a
    shell's background job, ``nohup``) does not have, so the demo would
    ignore Ctrl-C and run on for good.
    """

    def stop(signum, frame):
        reactor.callFromThread(reactor.stop)

    for signum in signals:
        signal.signal(signum, stop)


def begin_logging(workdir: pathlib.Path) -> pathlib.Path:
    """The log goes to ``<workdir>/demo.log`` (info and up, HTTP clients' chatter left out); the
    working directory, absolute and created."""
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner
    from twisted.logger import textFileLogObserver

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = open(workdir / "demo.log", "a", encoding="utf-8")
    levels = LogLevelFilterPredicate(LogLevel.info)
    levels.setLogLevelForNamespace("twisted.web.client", LogLevel.warn)  # a line per HTTP connection
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(log_file), [levels])],
                                     redirectStandardIO=False)
    return workdir


async def play(reactor, demo, narrator: Narrator, out, *, closing_words, signals=(signal.SIGINT,)) -> None:
    """Play ``demo``'s stories, then ``closing_words(demo, missing, out)``; with ``demo.once`` exit (status 1
    when a step did not happen), else stay up until one of ``signals`` stops the reactor. ``demo.stop`` runs
    before the reactor shuts down."""
    reactor.addSystemEventTrigger("before", "shutdown", demo.stop)
    _stop_on_signals(reactor, signals)
    missing = await Script(narrator, demo.pause).play(demo.stories())
    closing_words(demo, missing, out)
    if demo.once:
        if missing:
            raise SystemExit(1)
        return
    await defer.Deferred()  # until a signal stops the reactor


async def _run(reactor, options) -> None:
    workdir = begin_logging(options.workdir)
    out = sys.stdout
    print(f"demo: the gateway and every simulator on loopback; configuration and logs in {workdir}", file=out)
    narrator = Narrator(reactor, out)
    demo = Demo(reactor, workdir, narrator, once=options.once, admin_port=options.admin_port)
    await play(reactor, demo, narrator, out, closing_words=_closing_words)


def main(argv=None) -> None:
    """Run the demo; exits with its status."""
    from twisted.internet import task

    options = _arguments(argv)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(_run(reactor, options)))


if __name__ == "__main__":
    main()
