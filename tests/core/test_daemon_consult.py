"""Consult through the real daemon (twistd), with every party a simulated peer outside it, so what each
one hears is measured by tone detection: the caller arrives over the OptimaCCS inbound WebSocket
(playing CALLER_HZ), the agent's phone and the consulted party are callees of the fake OptimaCCS
provider API (playing AGENT_HZ and CONSULTED_HZ, keeping what they heard). Proves who hears whom while
the primary is held and the agent consults, after alternate, in a conference in consult, and after a
transfer to consult (docs/core.md); and, through the admin API, every failure path: busy, failed and
unanswered consults, the consulted party hanging up by itself, the agent releasing the consult or the
primary, the caller hanging up during the consult, the agent's phone hanging up, with who hears whom
after each and the CDRs linked."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from gateway.media.testing import tone_power
from gateway.sim import audio
from gateway.sim.optimaccs import ApiSettings, CallScript, FakeProviderApi, place_call
from optimaccs.test_daemon import OPERATOR_DID, start_gateway, wait_until

pytestmark = pytest.mark.timeout(120)

TOKEN = "provider-t0ken"
CALLER_HZ, AGENT_HZ, CONSULTED_HZ, HOLD_HZ = 700, 550, 950, 425
TONES = (CALLER_HZ, AGENT_HZ, CONSULTED_HZ, HOLD_HZ)
AGENT_PHONE, CONSULTED = "+6281100000101", "+6281200000202"
#: the fake provider's default rules: ...0000 is busy, ...9999 fails, ...8888 rings until the ring timeout
BUSY, FAILED, NO_ANSWER = "6281200000000", "6281200009999", "6281200008888"
#: seconds the provider lets a call ring ([optimaccs.outbound] ring_timeout)
RING_TIMEOUT = 2
#: the hold tone beeps 400 ms every 3 s: listening this long hears one beep whatever the phase
HOLD_LISTEN = 3.2
#: 100 ms of pcm16
_BLOCK = 1600


def level(pcm: bytes, hz: float) -> float:
    """The share (0..1) of the energy of ``pcm`` (pcm16) that is at ``hz``, measured in 100 ms blocks."""
    energy = sum(x * x for x in memoryview(pcm).cast("h")) if len(pcm) >= 2 else 0
    if not energy:
        return 0.0
    blocks = (pcm[i:i + _BLOCK] for i in range(0, len(pcm) - len(pcm) % 2, _BLOCK))
    return min(1.0, sum(2 * tone_power(b, hz) * (len(b) // 2) for b in blocks) / energy)


class Ears:
    """What the three parties heard since :meth:`listen` started."""

    def __init__(self, caller, agent, consulted):
        self.caller, self.agent, self.consulted = caller, agent, consulted

    @defer.inlineCallbacks
    def listen(self, seconds):
        yield deferLater(reactor, 0.3, lambda: None)  # let the media change settle
        mark = len(self.caller.received_audio)
        for session in (self.agent, self.consulted):
            if session is not None:
                session.heard.clear()
        yield deferLater(reactor, seconds, lambda: None)
        return {"caller": bytes(self.caller.received_audio[mark:]),
                "agent": bytes(self.agent.heard),
                "consulted": bytes(self.consulted.heard) if self.consulted is not None else b""}


def assert_hears(heard, who, *tones):
    """``who`` heard each of ``tones`` and none of the others (the hold tone: in its 400 ms beeps)."""
    pcm = heard[who]
    assert len(pcm) > 8000, f"{who} heard almost nothing ({len(pcm)} bytes)"
    for hz in TONES:
        share = level(pcm, hz)
        if hz in tones:
            assert share > (0.05 if hz == HOLD_HZ else 0.1), f"{who} should hear {hz} Hz: share {share:.3f}"
        else:
            assert share < 0.02, f"{who} should not hear {hz} Hz: share {share:.3f}"


class Scene:
    """The fake provider and the daemon routing OPERATOR_DID to extension 1001, whose phone is the
    provider's callee AGENT_PHONE."""

    def __init__(self, provider, gateway, url, cleanup):
        self.provider, self.gateway, self.url, self.cleanup = provider, gateway, url, cleanup
        self.sessions = 0

    @classmethod
    @defer.inlineCallbacks
    def start(cls, cleanup, tmp_path):
        provider = FakeProviderApi(reactor, ApiSettings(
            token=TOKEN, dial_time=0.1, ring_time=0.3, media="tone",
            tones=((AGENT_PHONE[-4:], AGENT_HZ), (CONSULTED[-4:], CONSULTED_HZ))))
        port = yield provider.listen(reactor, 0)
        cleanup(port.stopListening)
        cleanup(provider.shutdown)
        gateway, url = yield start_gateway(cleanup, tmp_path, (
            f'[pbx]\ndriver = "optimaccs"\n\n[[extensions]]\nid = "1001"\ndevice = "optimaccs:{AGENT_PHONE}"\n\n'
            f'[[routes]]\ndid = "{OPERATOR_DID}"\nto = "extension:1001"\n\n'
            f'[optimaccs.outbound]\napi_url = "http://127.0.0.1:{port.getHost().port}"\ntoken = "{TOKEN}"\n'
            f'ring_timeout = {RING_TIMEOUT}\n'
        ))
        return cls(provider, gateway, url, cleanup)

    def next_session(self):
        """The provider's next call (the agent's phone, or a consulted number), once placed."""
        self.sessions += 1
        return self.provider.wait_for_session(self.sessions)

    def until(self, call_id, state):
        """The call's snapshot once it is in ``state``."""
        return wait_until(lambda: self.gateway.api("GET", f"/api/calls/{call_id}").addCallback(
            lambda reply: reply[1] if reply[0] == 200 and reply[1]["state"] == state else None),
            f"call {call_id} {state}")

    @defer.inlineCallbacks
    def talking(self):
        """A caller talking to the agent, who hear each other: (primary id, ears)."""
        caller = place_call(reactor, self.url, CallScript(caller_id="081100000002", did=OPERATOR_DID,
                                                          pcm=audio.tone(120, CALLER_HZ)))
        self.cleanup(lambda: caller.close(1000, "test over"))
        agent = yield self.next_session()
        yield caller.wait_for("answer")
        code, calls = yield self.gateway.api("GET", "/api/calls?extension=1001", expect=200)
        [primary] = [c["call_id"] for c in calls["calls"] if c["state"] == "TALKING"]
        ears = Ears(caller, agent, None)
        heard = yield ears.listen(1.0)
        assert_hears(heard, "caller", AGENT_HZ)
        assert_hears(heard, "agent", CALLER_HZ)
        return primary, ears

    @defer.inlineCallbacks
    def consult(self, primary, ears, number=CONSULTED, state="TALKING"):
        """The agent consults ``number`` through the API: (consult id, its provider session) once the
        consult is in ``state``; a consult that talks becomes ``ears.consulted``."""
        code, consult = yield self.gateway.api("POST", f"/api/calls/{primary}/consult", {"number": number},
                                               expect=201)
        assert consult["consult_of"] == primary
        session = yield self.next_session()
        if state == "TALKING":
            ears.consulted = session
        yield self.until(consult["call_id"], state)
        return consult["call_id"], session

    @defer.inlineCallbacks
    def consulting(self):
        """A caller talking to the agent, then held while the agent consults CONSULTED: (ids, ears)."""
        primary, ears = yield self.talking()
        consult, _ = yield self.consult(primary, ears)
        return primary, consult, ears

    def cdr(self, call_id):
        """The call's CDR, once the store has written it."""
        return wait_until(lambda: self.gateway.api("GET", f"/api/cdrs/{call_id}").addCallback(
            lambda reply: reply[1] if reply[0] == 200 else None), f"the CDR of {call_id}")


@pytest_twisted.inlineCallbacks
def test_who_hears_whom_when_held_consulting_alternated_conferenced_and_transferred(cleanup, tmp_path):
    scene = yield Scene.start(cleanup, tmp_path)
    gateway, consulting = scene.gateway, scene.consulting

    primary, consult, ears = yield consulting()
    # consulting: the caller is held (hold tone only); the agent and the consulted party hear each other
    heard = yield ears.listen(HOLD_LISTEN)
    assert_hears(heard, "caller", HOLD_HZ)
    assert_hears(heard, "agent", CONSULTED_HZ)
    assert_hears(heard, "consulted", AGENT_HZ)

    # alternate: back to the caller; the consulted party hears hold
    code, snapshot = yield gateway.api("POST", f"/api/calls/{primary}/alternate", expect=200)
    assert snapshot["state"] == "TALKING"
    heard = yield ears.listen(HOLD_LISTEN)
    assert_hears(heard, "caller", AGENT_HZ)
    assert_hears(heard, "agent", CALLER_HZ)
    assert_hears(heard, "consulted", HOLD_HZ)

    # conference in consult: each hears the other two, never itself
    code, snapshot = yield gateway.api("POST", f"/api/calls/{consult}/conference-in-consult", expect=200)
    assert [p["number"] for p in snapshot["parties"]] == ["081100000002", CONSULTED]
    heard = yield ears.listen(1.0)
    assert_hears(heard, "caller", AGENT_HZ, CONSULTED_HZ)
    assert_hears(heard, "agent", CALLER_HZ, CONSULTED_HZ)
    assert_hears(heard, "consulted", CALLER_HZ, AGENT_HZ)
    yield gateway.api("POST", f"/api/calls/{primary}/hangup", expect=200)
    yield ears.caller.ended

    # transfer to consult: the caller and the consulted party hear each other, the agent is dropped
    primary, consult, ears = yield consulting()
    code, snapshot = yield gateway.api("POST", f"/api/calls/{consult}/transfer-to-consult", expect=200)
    assert (snapshot["call_id"], snapshot["cause"]) == (primary, "transferred")
    yield ears.agent.disconnected
    assert ears.agent.state == "ended"
    heard = yield ears.listen(1.0)
    assert_hears(heard, "caller", CONSULTED_HZ)
    assert_hears(heard, "consulted", CALLER_HZ)
    code, calls = yield gateway.api("GET", "/api/calls", expect=200)
    [joined] = calls["calls"]
    assert (joined["extension"], joined["attributes"]["transferred_from"]) == (None, primary)
    yield gateway.api("POST", f"/api/calls/{joined['call_id']}/hangup", expect=200)
    for call_id, key, value in ((primary, "consults", [consult]), (consult, "consult_of", primary)):
        cdr = yield scene.cdr(call_id)
        assert (cdr["cause"], cdr[key]) == ("transferred", value)
    assert (yield gateway.stop()) == 0
    assert "Traceback" not in gateway.output


@pytest_twisted.inlineCallbacks
def test_the_consulted_party_hangs_up_then_the_agent_retrieves_the_caller(cleanup, tmp_path):
    scene = yield Scene.start(cleanup, tmp_path)
    gateway = scene.gateway
    primary, consult, ears = yield scene.consulting()
    consulted = ears.consulted
    consulted.callee_hangs_up()  # the provider's cdr (hangupBy CALLEE) and hangup on the consult's WebSocket
    ended = yield wait_until(lambda: gateway.api("GET", f"/api/calls/{consult}").addCallback(
        lambda reply: reply[1] if reply[1]["state"] == "RELEASED" else None), "the consult ended")
    assert (ended["cause"], ended["hangup_by"], ended["consult_of"]) == ("remote_hangup", "remote", primary)
    code, held = yield gateway.api("GET", f"/api/calls/{primary}", expect=200)
    assert (held["state"], held["consult"], held["consults"]) == ("HELD", None, [consult])
    # the agent's phone stays up for the held caller, who still hears only the hold tone
    assert ears.agent.state == "connected"
    ears.consulted = None
    heard = yield ears.listen(HOLD_LISTEN)
    assert_hears(heard, "caller", HOLD_HZ)
    assert level(heard["agent"], CONSULTED_HZ) < 0.02 and level(heard["agent"], CALLER_HZ) < 0.02

    # the agent retrieves the caller: they hear each other again
    code, snapshot = yield gateway.api("POST", f"/api/calls/{primary}/retrieve", expect=200)
    assert snapshot["state"] == "TALKING"
    heard = yield ears.listen(1.0)
    assert_hears(heard, "caller", AGENT_HZ)
    assert_hears(heard, "agent", CALLER_HZ)

    yield gateway.api("POST", f"/api/calls/{primary}/hangup", expect=200)
    yield ears.caller.ended
    yield ears.agent.ended
    primary_cdr = yield scene.cdr(primary)
    consult_cdr = yield scene.cdr(consult)
    assert (primary_cdr["cause"], primary_cdr["consults"], primary_cdr["consult_of"]) == ("normal", [consult], None)
    assert (consult_cdr["cause"], consult_cdr["consult_of"], consult_cdr["consults"]) == (
        "remote_hangup", primary, [])
    assert consulted.cdr["hangupBy"] == "CALLEE"
    assert (yield gateway.stop()) == 0
    assert "Traceback" not in gateway.output


@pytest_twisted.inlineCallbacks
def test_the_failure_paths_through_the_admin_api_and_who_hears_whom_after_each(cleanup, tmp_path):
    scene = yield Scene.start(cleanup, tmp_path)
    gateway = scene.gateway
    primary, ears = yield scene.talking()
    consults = []

    # busy, failed and unanswered consults end; the caller stays held (hearing only hold) until retrieved
    for number, cause in ((BUSY, "busy"), (FAILED, "failed"), (NO_ANSWER, "no_answer")):
        consult, session = yield scene.consult(primary, ears, number, state="RELEASED")
        consults.append(consult)
        code, ended = yield gateway.api("GET", f"/api/calls/{consult}", expect=200)
        assert (ended["cause"], ended["consult_of"]) == (cause, primary), number
        yield session.ended
        code, held = yield gateway.api("GET", f"/api/calls/{primary}", expect=200)
        assert (held["state"], held["consult"]) == ("HELD", None), number
        if cause == "no_answer":
            heard = yield ears.listen(HOLD_LISTEN)
            assert_hears(heard, "caller", HOLD_HZ)
        code, snapshot = yield gateway.api("POST", f"/api/calls/{primary}/retrieve", expect=200)
        assert snapshot["state"] == "TALKING"
    heard = yield ears.listen(1.0)
    assert_hears(heard, "caller", AGENT_HZ)
    assert_hears(heard, "agent", CALLER_HZ)

    # the agent releases the consult: the phone stays up, the caller held until retrieved
    consult, consulted = yield scene.consult(primary, ears)
    consults.append(consult)
    code, ended = yield gateway.api("POST", f"/api/calls/{consult}/hangup", expect=200)
    assert (ended["state"], ended["hangup_by"]) == ("RELEASED", "api")
    yield consulted.ended
    assert (consulted.cdr["hangupBy"], ears.agent.state) == ("CALLER", "connected")
    ears.consulted = None
    heard = yield ears.listen(HOLD_LISTEN)
    assert_hears(heard, "caller", HOLD_HZ)
    assert (yield gateway.api("GET", f"/api/calls/{primary}", expect=200))[1]["state"] == "HELD"
    yield gateway.api("POST", f"/api/calls/{primary}/retrieve", expect=200)
    heard = yield ears.listen(1.0)
    assert_hears(heard, "caller", AGENT_HZ)
    assert_hears(heard, "agent", CALLER_HZ)

    # the agent releases the primary during a consult: the caller is gone, the consult goes on
    consult, consulted = yield scene.consult(primary, ears)
    consults.append(consult)
    code, ended = yield gateway.api("POST", f"/api/calls/{primary}/hangup", expect=200)
    assert (ended["state"], ended["hangup_by"]) == ("RELEASED", "api")
    yield ears.caller.ended
    code, going_on = yield gateway.api("GET", f"/api/calls/{consult}", expect=200)
    assert going_on["state"] == "TALKING"
    heard = yield ears.listen(1.0)
    assert_hears(heard, "agent", CONSULTED_HZ)
    assert_hears(heard, "consulted", AGENT_HZ)
    yield gateway.api("POST", f"/api/calls/{consult}/hangup", expect=200)
    yield ears.agent.ended
    primary_cdr = yield scene.cdr(primary)
    assert (primary_cdr["cause"], primary_cdr["consults"]) == ("normal", consults)
    for consult, cause in zip(consults, ("busy", "failed", "no_answer", "normal", "normal")):
        cdr = yield scene.cdr(consult)
        assert (cdr["cause"], cdr["consult_of"]) == (cause, primary), consult

    # the primary party (the caller) hangs up during a consult: the agent and the consulted talk on
    primary, consult, ears = yield scene.consulting()
    ears.caller.hangup()
    yield ears.caller.ended
    ended = yield scene.until(primary, "RELEASED")
    assert (ended["cause"], ended["hangup_by"]) == ("remote_hangup", "remote")
    assert (yield gateway.api("GET", f"/api/calls/{consult}", expect=200))[1]["state"] == "TALKING"
    heard = yield ears.listen(1.0)
    assert_hears(heard, "agent", CONSULTED_HZ)
    assert_hears(heard, "consulted", AGENT_HZ)
    yield gateway.api("POST", f"/api/calls/{consult}/hangup", expect=200)
    yield ears.agent.ended
    assert ((yield scene.cdr(primary))["consults"], (yield scene.cdr(consult))["consult_of"]) == ([consult], primary)

    # the agent's phone hangs up during a consult: both calls end, and both other parties are hung up
    primary, consult, ears = yield scene.consulting()
    ears.agent.callee_hangs_up()
    for call_id in (primary, consult):
        ended = yield scene.until(call_id, "RELEASED")
        assert (ended["cause"], ended["hangup_by"]) == ("normal", "extension"), call_id
    yield ears.caller.ended
    yield ears.consulted.ended
    assert (yield gateway.stop()) == 0
    assert "Traceback" not in gateway.output
