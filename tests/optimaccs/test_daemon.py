"""The real daemon (twistd subprocess) with OptimaCCS against the simulators, over loopback sockets."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from gateway.media.testing import tone_power
from gateway.sim import tlsutil
from gateway.sim.optimaccs import ApiSettings, CallScript, FakeProviderApi, place_call
from gateway.testing import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(90)

ECHO_DID, OPERATOR_DID = "0210000200", "0210000100"
TOKEN = "provider-t0ken"


@defer.inlineCallbacks
def start_gateway(cleanup, tmp_path, extra: str, *, tls=None, inbound_keys: str = ""):
    """The daemon with [optimaccs] on a loopback port (``tls``: a certificate for an ssl: listener, wss://)."""
    admin, inbound = free_port(), free_port()
    if tls is None:
        listen, url = f"tcp:{inbound}:interface=127.0.0.1", f"ws://127.0.0.1:{inbound}/"
    else:
        listen = f"ssl:{inbound}:interface=127.0.0.1:privateKey={tls.key_path}:certKey={tls.cert_path}"
        url = f"wss://{tls.hostname}:{inbound}/"
    config = GatewayProcess.config(admin, (
        f'[optimaccs]\nlisten = "{listen}"\ncdr_wait = 2.0\n{inbound_keys}\n'
        f'[[routes]]\ndid = "{ECHO_DID}"\nto = "app:echo"\n\n{extra}'
    ))
    gateway = GatewayProcess(reactor, tmp_path, config)
    cleanup(gateway.kill)
    yield gateway.start(admin)
    return gateway, url


@defer.inlineCallbacks
def wait_until(predicate, what: str, timeout: float = 15.0):
    for _ in range(int(timeout / 0.05)):
        result = yield predicate()
        if result:
            return result
        yield deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def calls_of(gateway, **match):
    def live():
        return gateway.api("GET", "/api/calls").addCallback(
            lambda reply: [c for c in reply[1]["calls"] if all(c.get(k) == v for k, v in match.items())])

    return live


def provider_cdrs(gateway, call_id):
    def look():
        return gateway.api("GET", f"/api/cdrs/{call_id}").addCallback(
            lambda reply: reply[1] if reply[0] == 200 and reply[1].get("provider_cdrs") else None)

    return look


@defer.inlineCallbacks
def assert_echo(gateway, call):
    """The call heard itself, lacking at most the frames the daemon's jitter buffers trimmed."""
    trimmed = yield gateway.frames_trimmed()
    echo = call.echo(max_skipped=trimmed)
    assert echo.matched, f"echo: {echo.skipped_frames} frame(s) missing, {trimmed} trimmed: {echo}"


def hangup_on_close(cleanup, call):
    cleanup(lambda: call.close(1000, "test over"))


@pytest_twisted.inlineCallbacks
def test_a_call_to_an_echo_did_hears_itself_and_both_cdrs_are_stored(cleanup, tmp_path):
    gateway, url = yield start_gateway(cleanup, tmp_path, "")
    assert "accepts calls from anyone" in gateway.output  # no secret, no allow-list: a warning
    broken = place_call(reactor, url, CallScript(raw=True))
    hangup_on_close(cleanup, broken)
    yield broken.wait_for("open")
    broken.send_text("{oops")
    call = place_call(reactor, url, CallScript(caller_id="081100000001", did=ECHO_DID, hangup_after=2.0))
    hangup_on_close(cleanup, call)
    yield call.ended
    yield broken.ended
    assert (broken.close_code, call.close_code) == (1007, 1000)
    assert call.errors == []
    yield assert_echo(gateway, call)
    assert call.frames_received > 50
    (cdr,) = (yield gateway.api("GET", "/api/cdrs"))[1]["cdrs"]
    stored = yield wait_until(provider_cdrs(gateway, cdr["call_id"]), "the provider's CDR")
    assert (stored["cause"], stored["app"], stored["attributes"]) == ("remote_hangup", "echo",
                                                                     {"session_id": call.session_id})
    (provider,) = stored["provider_cdrs"]
    assert (provider["source"], provider["data"]["sessionId"], provider["data"]["hangupCauseCode"],
            provider["data"]["hangupCauseCodeInt"]) == ("optimaccs", call.session_id, "16", 16)
    assert (yield gateway.stop()) == 0
    assert "Traceback" not in gateway.output


@pytest_twisted.inlineCallbacks
def test_an_ssl_listener_serves_wss_and_a_secret_keeps_out_who_lacks_it(cleanup, tmp_path):
    certificate = tlsutil.load_or_create(tmp_path / "tls", "localhost")
    gateway, url = yield start_gateway(cleanup, tmp_path, "", tls=certificate, inbound_keys='secret = "s3cret"\n')
    assert "accepts calls from anyone" not in gateway.output
    trust = certificate.trust_root()
    intruder = place_call(reactor, url + "?token=wrong", CallScript(did=ECHO_DID), trust_root=trust)
    hangup_on_close(cleanup, intruder)
    yield intruder.ended
    assert intruder.opened_at is None  # refused at the handshake (403)
    call = place_call(reactor, url + "?token=s3cret", CallScript(did=ECHO_DID, hangup_after=1.0), trust_root=trust)
    hangup_on_close(cleanup, call)
    yield call.ended
    assert (call.close_code, call.errors) == (1000, [])
    yield assert_echo(gateway, call)
    assert call.frames_received > 25
    assert "wrong secret" in gateway.output and "s3cret" not in gateway.output
    calls = (yield gateway.api("GET", "/api/cdrs"))[1]["cdrs"]
    assert [cdr["cause"] for cdr in calls] == ["remote_hangup"]
    assert (yield gateway.stop()) == 0
    assert "Traceback" not in gateway.output


@pytest_twisted.inlineCallbacks
def test_a_call_to_an_extension_is_answered_gets_dtmf_and_hold_and_ends_with_both_cdrs(cleanup, tmp_path):
    gateway, url = yield start_gateway(cleanup, tmp_path, (
        '[pbx.sim]\naudio = "silence"\n\n[[extensions]]\nid = "1001"\ndevice = "sim:manual"\n\n'
        f'[[routes]]\ndid = "{OPERATOR_DID}"\nto = "extension:1001"\n'
    ))
    call = place_call(reactor, url, CallScript(caller_id="081100000002", did=OPERATOR_DID))
    hangup_on_close(cleanup, call)
    (ringing,) = yield wait_until(calls_of(gateway, state="RINGING", extension="1001"), "the ringing call")
    call_id = ringing["call_id"]
    assert call.answered_at is None
    yield gateway.api("POST", f"/api/calls/{call_id}/answer", expect=200)
    yield call.wait_for("answer")

    code, _ = yield gateway.api("POST", f"/api/calls/{call_id}/dtmf", {"digits": "42", "duration_ms": 120},
                                expect=200)
    assert [(d.digit, d.duration) for d in call.dtmf_received] == [("4", 120), ("2", 120)]

    yield gateway.api("POST", f"/api/calls/{call_id}/hold", expect=200)
    yield deferLater(reactor, 0.3, lambda: None)
    call.received_audio.clear()
    yield deferLater(reactor, 3.2, lambda: None)  # one whole hold cadence: 400 ms of 425 Hz every 3 s
    held = bytes(call.received_audio)
    assert tone_power(held, 425) > 20 * tone_power(held, 1000)  # the hold tone plays to the caller

    yield gateway.api("POST", f"/api/calls/{call_id}/hangup", expect=200)
    yield call.ended
    assert (call.hangup_by, call.close_code, call.errors) == ("CALLEE", 1000, [])
    stored = yield wait_until(provider_cdrs(gateway, call_id), "the provider's CDR")
    assert (stored["cause"], stored["extension"], stored["dtmf_count"]) == ("normal", "1001", 2)
    assert stored["provider_cdrs"][0]["data"]["disposition"] == "ANSWERED"
    assert (yield gateway.stop()) == 0
    assert "Traceback" not in gateway.output


@pytest_twisted.inlineCallbacks
def test_an_outbound_call_through_the_fake_provider_api(cleanup, tmp_path):
    provider = FakeProviderApi(reactor, ApiSettings(token=TOKEN, dial_time=0.1, ring_time=0.3))
    port = yield provider.listen(reactor, 0)
    cleanup(port.stopListening)
    cleanup(provider.shutdown)
    gateway, _ = yield start_gateway(cleanup, tmp_path, (
        '[pbx]\ndriver = "optimaccs"\n\n[pbx.sim]\nphone_answer_delay = 0.2\n\n'
        '[[extensions]]\nid = "1001"\n\n'
        f'[optimaccs.outbound]\napi_url = "http://127.0.0.1:{port.getHost().port}"\ntoken = "{TOKEN}"\n'
    ))
    code, call = yield gateway.api("POST", "/api/calls", {"extension": "1001", "number": "+6281234567"}, expect=201)
    session = yield provider.wait_for_session()
    yield wait_until(lambda: defer.succeed(session.state == "connected"), "Connected")
    (talking,) = yield wait_until(calls_of(gateway, call_id=call["call_id"], state="TALKING"), "the talking call")
    yield deferLater(reactor, 0.5, lambda: None)
    assert session.audio_bytes_received > 0  # the simulated phone's audio reaches the callee
    assert session.frames_sent > 0  # and the callee's comes back
    yield gateway.api("POST", f"/api/calls/{call['call_id']}/hangup", expect=200)
    yield session.disconnected
    assert session.statuses == ["Dialing", "Ringing", "Connected"]
    assert (session.phone_number, session.errors) == ("6281234567", [])
    stored = yield wait_until(provider_cdrs(gateway, call["call_id"]), "the provider's CDR")
    assert stored["cause"] == "normal"
    assert stored["provider_cdrs"][0]["data"]["disposition"] == "ANSWERED"
    status = (yield gateway.api("GET", "/api/status"))[1]
    assert status["optimaccs-outbound"]["calls"] == []
    assert (yield gateway.stop()) == 0
    assert "Traceback" not in gateway.output


@pytest_twisted.inlineCallbacks
def test_hostile_text_closes_1007_and_a_garbage_cause_code_keeps_the_call_and_its_provider_cdr(cleanup, tmp_path):
    gateway, url = yield start_gateway(cleanup, tmp_path, "")
    hostile = place_call(reactor, url, CallScript(raw=True))
    hangup_on_close(cleanup, hostile)
    yield hostile.wait_for("open")
    hostile.send_text('{"event":"incoming_call","callerId":"\\ud800","didNumber":"555","sessionId":"p1"}')
    deep = place_call(reactor, url, CallScript(raw=True))
    hangup_on_close(cleanup, deep)
    yield deep.wait_for("open")
    deep.send_text("[" * 20000)
    yield hostile.ended
    yield deep.ended
    assert (hostile.close_code, deep.close_code) == (1007, 1007)
    assert "callerId" in hostile.close_reason and "nested deeper" in deep.close_reason

    call = place_call(reactor, url, CallScript(raw=True))
    hangup_on_close(cleanup, call)
    yield call.wait_for("open")
    call.send_text('{"event":"incoming_call","callerId":"0811","didNumber":"%s","sessionId":"g1"}' % ECHO_DID)
    yield call.wait_for("answer")
    call.send_text('{"event":"cdr","sessionId":"g1","disposition":"ANSWERED","hangupCauseCode":"--16"}')
    call.send_text('{"event":"hangup"}')
    yield call.ended
    assert call.close_code == 1000
    (cdr,) = (yield gateway.api("GET", "/api/cdrs"))[1]["cdrs"]
    stored = yield wait_until(provider_cdrs(gateway, cdr["call_id"]), "the provider's CDR")
    assert stored["cause"] == "remote_hangup"
    (provider,) = stored["provider_cdrs"]
    assert provider["data"] == {"sessionId": "g1", "disposition": "ANSWERED", "hangupCauseCode": "--16"}
    assert (yield gateway.stop()) == 0
    assert "Traceback" not in gateway.output
