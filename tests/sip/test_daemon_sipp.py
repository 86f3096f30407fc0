"""The ``sip`` driver through the REAL daemon (``twistd gateway`` with ``[sip]``) against a real SIPp.

Inbound: SIPp calls a DID routed to ``app:echo`` and, with the packaged G.711 A-law capture and the
RFC 2833 capture of digit 1, a DID routed to the echo and one routed to an extension whose simulated phone
answers: the CDRs (admin API ``/api/cdrs``) carry the SIP leg, the provider CDR with the RTP statistics,
and the digit counted once. An INVITE from no trunk gets 403 (counted), one to no route 404, and a call
without RTP ends with cause ``media_timeout``. Outbound: click-to-dial through the admin API to a SIPp UAS
(without and with digest), held and retrieved by SIPp's re-INVITEs (the core's call shows it) and by the
core's hold (SIPp checks ``sendonly``), hung up by the gateway. Load: 100 calls at once for 30 s into the
echo, none failed, every CDR stored. Torture: RFC 4475's messages raw over UDP; the daemon stays up and
answers.
"""

import os
import random

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.task import deferLater

from gateway.sip.message import parse_datagram
from gateway.testing import GatewayProcess, free_port
from tests.sip.test_sipp import SCENARIOS, SIPP, SippProcess, free_udp_port
from tests.sip.torture import TORTURE

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is not installed (make sipp installs sip-tester as root)")

PCAP_DIRS = ("/usr/share/sip-tester", "/usr/share/sipp", "/usr/local/share/sipp")
#: seconds a SIPp run may take before the test fails
WAIT = 60


def reactor():
    from twisted.internet import reactor as global_reactor

    return global_reactor


def rtp_range():
    base = random.randrange(20000, 60000, 2)
    return f"{base}-{base + 799}"


def daemon_config(admin, sip_port, *, trunk_port, media_timeout=30, extra="", transport="udp"):
    return GatewayProcess.config(admin, f"""
[pbx]
driver = "sip"

[pbx.sim]
phone_answer_delay = 0.5

[[extensions]]
id = "1001"
device = "sim"

[[routes]]
did = "600"
to = "app:echo"

[[routes]]
did = "700"
to = "extension:1001"

[sip]
listen = "{transport}:{sip_port}:interface=127.0.0.1"
rtp_ports = "{rtp_range()}"
media_timeout = {media_timeout}

[[sip.trunks]]
name = "loop"
proxy = "udp:127.0.0.1:{trunk_port}"
username = "trunkuser"
password = "s3cret"
{extra}""")


@pytest.fixture
def sipp(cleanup, tmp_path):
    """``sipp(*args)`` spawns SIPp (killed at teardown); fires with (exit code, output)."""
    running = []

    def kill():
        for proc, transport in running:
            if not proc.ended.called:
                transport.signalProcess("KILL")
                pytest_twisted.blockon(proc.ended)

    cleanup(kill)

    def spawn(*args, wait=WAIT):
        proc = SippProcess()
        argv = [SIPP, "-nostdin", "-timeout_error", "-max_retrans", "3", *map(str, args)]
        transport = reactor().spawnProcess(proc, SIPP, argv, env=dict(os.environ, TERM="dumb"), path=str(tmp_path))
        running.append((proc, transport))
        ended = proc.ended.addTimeout(wait, reactor())
        return ended.addCallback(lambda code: (code, proc.output.decode("utf-8", "replace")))

    return spawn


@pytest.fixture
def gateway(processes, tmp_path):
    """``await gateway(**options)``: a daemon with the sip driver (see :func:`daemon_config`), started."""

    async def start(**options):
        admin, sip_port = free_port(), free_udp_port()
        trunk_port = options.pop("trunk_port", None) or free_udp_port()
        proc = GatewayProcess(reactor(), tmp_path, daemon_config(admin, sip_port, trunk_port=trunk_port, **options))
        processes.append(proc)
        await proc.start(admin)
        proc.sip_port, proc.trunk_port = sip_port, trunk_port
        return proc

    return start


def pcap_scenario(tmp_path):
    pcap_dir = next((d for d in PCAP_DIRS if os.path.exists(os.path.join(d, "g711a.pcap"))), None)
    if pcap_dir is None:
        pytest.fail(f"sip-tester's pcap files are not in any of {PCAP_DIRS}")
    scenario = tmp_path / "uac_pcap_dtmf.xml"
    scenario.write_text((SCENARIOS / "uac_pcap_dtmf.xml").read_text().replace("{pcap_dir}", pcap_dir))
    return scenario


async def cdrs(proc, count, timeout=15.0):
    """The daemon's CDRs once there are at least ``count`` (oldest first)."""
    deadline = reactor().seconds() + timeout
    while True:
        _, body = await proc.api("GET", "/api/cdrs?limit=1000", expect=200)
        if len(body["cdrs"]) >= count or reactor().seconds() > deadline:
            return body["cdrs"]
        await deferLater(reactor(), 0.2, lambda: None)


async def wait_for(predicate, timeout=10.0, step=0.1):
    deadline = reactor().seconds() + timeout
    while not await predicate():
        if reactor().seconds() > deadline:
            raise AssertionError("timed out waiting")
        await deferLater(reactor(), step, lambda: None)


def uac(proc, *args, timeout="40s"):
    """The arguments of a SIPp UAC calling the daemon from the trunk's address."""
    return [f"127.0.0.1:{proc.sip_port}", "-i", "127.0.0.1", "-p", proc.trunk_port, "-mp", free_udp_port(),
            "-timeout", timeout, *args]


@pytest_twisted.ensureDeferred
async def test_inbound_calls_into_the_echo_and_an_extension_with_pcap_audio_and_dtmf(gateway, sipp, tmp_path):
    proc = await gateway()
    code, output = await sipp(*uac(proc, "-sn", "uac", "-s", "600", "-m", 3, "-r", 10, "-d", 500))
    assert code == 0, output[-3000:]
    scenario = pcap_scenario(tmp_path)
    for did in ("600", "700"):
        code, output = await sipp(*uac(proc, "-sf", scenario, "-s", did, "-m", 1))
        assert code == 0, output[-3000:]
    records = await cdrs(proc, 5)
    assert len(records) == 5
    for cdr in records:
        assert cdr["direction"] == "inbound" and cdr["cause"] == "remote_hangup", cdr
        assert cdr["legs"][0]["driver"] == "sip" and cdr["attributes"]["trunk"] == "loop"
        [provider] = cdr["provider_cdrs"]
        assert provider["source"] == "sip" and provider["data"]["cause"] == "remote_hangup"
    plain, echo, extension = records[0], records[3], records[4]
    assert plain["app"] == "echo" and plain["dtmf_count"] == 0
    # the pcap call into the echo: PCMA negotiated, the audio taken and echoed back as RTP
    data = echo["provider_cdrs"][0]["data"]
    assert echo["did"] == "600" and data["codec"] == "PCMA" and data["remote_rtp"] is not None
    assert data["audio_packets_received"] >= 50 and data["packets_sent"] >= 40, data
    assert echo["dtmf_count"] == 1
    # into the extension: the simulated phone answered, the digit counted once on the call
    assert extension["did"] == "700" and extension["extension"] == "1001"
    assert sorted(leg["driver"] for leg in extension["legs"]) == ["sim", "sip"]
    assert extension["dtmf_count"] == 1
    assert extension["provider_cdrs"][0]["data"]["audio_packets_received"] >= 40
    assert await proc.metric_sum("gateway_sip_dtmf_digits_total", direction="in") == 2
    assert await proc.metric_sum("gateway_sip_calls_total", direction="inbound") == 5


@pytest_twisted.ensureDeferred
async def test_strangers_get_403_no_route_404_and_silence_ends_with_media_timeout(gateway, sipp):
    proc = await gateway(media_timeout=2)
    # from 127.0.0.2: no trunk
    code, output = await sipp(f"127.0.0.1:{proc.sip_port}", "-i", "127.0.0.2", "-p", free_udp_port(), "-timeout",
                              "20s", "-sf", SCENARIOS / "invite_refused.xml", "-m", 2, "-r", 10)
    assert code == 0, output[-3000:]
    assert await proc.metric_sum("gateway_sip_refused_total", reason="unknown_host") == 2
    assert "which is no configured trunk (403)" in proc.output
    # a DID with no route: 404 (SIPp's uac expects 200, so the call fails at SIPp)
    code, output = await sipp(*uac(proc, "-sn", "uac", "-s", "999", "-m", 1))
    assert code != 0 and "404" in output, output[-3000:]
    assert "no route for DID 999" in proc.output
    # a call sending no RTP for longer than media_timeout: the gateway ends it (SIPp's late BYE gets 481)
    code, output = await sipp(*uac(proc, "-sn", "uac", "-s", "600", "-m", 1, "-d", 4000))
    records = await cdrs(proc, 2)
    causes = sorted(cdr["cause"] for cdr in records)
    assert causes == ["media_timeout", "no_route"], records
    assert await proc.metric_sum("gateway_sip_media_timeouts_total") == 1
    assert "ended with cause media_timeout" in proc.output
    # the daemon is fine: another call goes through
    code, output = await sipp(*uac(proc, "-sn", "uac", "-s", "600", "-m", 1, "-d", 200))
    assert code == 0, output[-3000:]


async def originate(proc, number="5551234"):
    _, call = await proc.api("POST", "/api/calls", {"extension": "1001", "number": number}, expect=201)
    return call["call_id"]


async def sip_state(proc, call_id):
    _, call = await proc.api("GET", f"/api/calls/{call_id}")
    return next((leg["state"] for leg in call["legs"] if leg["driver"] == "sip"), None)


def state_is(proc, call_id, state):
    async def check():
        return await sip_state(proc, call_id) == state
    return check


@pytest_twisted.ensureDeferred
async def test_outbound_call_held_and_retrieved_by_the_peer_then_hung_up(gateway, sipp):
    proc = await gateway()
    uas = sipp("-sf", SCENARIOS / "uas_peer_hold.xml", "-i", "127.0.0.1", "-p", proc.trunk_port, "-mp",
               free_udp_port(), "-m", 1, "-timeout", "30s")
    await deferLater(reactor(), 0.5, lambda: None)
    call_id = await originate(proc)
    await wait_for(state_is(proc, call_id, "TALKING"))
    await wait_for(state_is(proc, call_id, "HELD"))  # SIPp's re-INVITE a=sendonly
    await wait_for(state_is(proc, call_id, "TALKING"))  # and a=sendrecv
    await proc.api("POST", f"/api/calls/{call_id}/hangup", expect=200)
    code, output = await uas
    assert code == 0, output[-3000:]
    [cdr] = await cdrs(proc, 1)
    assert cdr["cause"] == "normal" and cdr["direction"] == "outbound"


@pytest_twisted.ensureDeferred
async def test_outbound_call_with_digest_held_by_the_core(gateway, sipp):
    proc = await gateway()
    for scenario in ("uas_auth.xml", "uas_hold.xml"):
        uas = sipp("-sf", SCENARIOS / scenario, "-i", "127.0.0.1", "-p", proc.trunk_port, "-mp", free_udp_port(),
                   "-m", 1, "-timeout", "30s")
        await deferLater(reactor(), 0.5, lambda: None)
        call_id = await originate(proc)
        await wait_for(state_is(proc, call_id, "TALKING"))
        if scenario == "uas_hold.xml":
            await proc.api("POST", f"/api/calls/{call_id}/hold", expect=200)  # SIPp checks a=sendonly
            await deferLater(reactor(), 0.5, lambda: None)
            await proc.api("POST", f"/api/calls/{call_id}/retrieve", expect=200)  # and a=sendrecv
            await deferLater(reactor(), 0.5, lambda: None)
        await proc.api("POST", f"/api/calls/{call_id}/hangup", expect=200)
        code, output = await uas
        assert code == 0, (scenario, output[-3000:])
    records = await cdrs(proc, 2)
    assert [cdr["cause"] for cdr in records] == ["normal", "normal"]


@pytest_twisted.ensureDeferred
async def test_busy_and_declined_outbound_calls_map_to_the_cores_causes(gateway, sipp, tmp_path):
    proc = await gateway()
    for status, cause in (("486", "busy"), ("603", "rejected")):
        scenario = tmp_path / f"uas_{status}.xml"
        scenario.write_text(REFUSING_UAS.replace("{status}", status))
        uas = sipp("-sf", scenario, "-i", "127.0.0.1", "-p", proc.trunk_port, "-m", 1, "-timeout", "20s")
        await deferLater(reactor(), 0.5, lambda: None)
        call_id = await originate(proc)
        code, output = await uas
        assert code == 0, output[-3000:]

        async def ended(call_id=call_id):
            _, call = await proc.api("GET", f"/api/calls/{call_id}")
            return call["state"] == "RELEASED"

        await wait_for(ended)
        _, call = await proc.api("GET", f"/api/calls/{call_id}")
        assert next(leg["cause"] for leg in call["legs"] if leg["driver"] == "sip") == cause


REFUSING_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="uas refusing">
  <recv request="INVITE"/>
  <send>
    <![CDATA[
      SIP/2.0 {status} Refused
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
</scenario>
"""


@pytest_twisted.ensureDeferred
async def test_load_100_concurrent_calls_for_30_seconds_into_the_echo(gateway, sipp):
    """SIPp's uac: 10 new calls a second for 30 s, each 10 s long, so 100 at once (-l 100 caps it); signalling
    only (SIPp's built-in uac sends no RTP; the echo answers each and waits). None fails, every CDR is stored."""
    proc = await gateway(media_timeout=0)
    code, output = await sipp(*uac(proc, "-sn", "uac", "-s", "600", "-m", 300, "-r", 10, "-l", 100, "-d", 10000,
                                  timeout="100s"), wait=120)
    assert code == 0, output[-3000:]
    assert "Failed call" in output
    records = await cdrs(proc, 300, timeout=30)
    assert len(records) == 300
    assert {cdr["cause"] for cdr in records} == {"remote_hangup"}
    assert await proc.metric_sum("gateway_sip_calls_total", direction="inbound", cause="remote_hangup") == 300
    _, status = await proc.api("GET", "/api/status", expect=200)
    assert status["sip"]["calls"] == 0


class RawClient(protocol.DatagramProtocol):
    def __init__(self):
        self.received = []

    def datagramReceived(self, data, addr):
        self.received.append(data)


@pytest_twisted.ensureDeferred
async def test_rfc_4475_torture_messages_raw_over_udp_leave_the_daemon_up_and_answering(gateway):
    proc = await gateway()
    client = RawClient()
    port = reactor().listenUDP(proc.trunk_port, client, interface="127.0.0.1")  # from the trunk's address
    try:
        for name, _, data, expected in TORTURE:
            before = len(client.received)
            client.transport.write(data, ("127.0.0.1", proc.sip_port))
            await deferLater(reactor(), 0.05, lambda: None)
            got = [int(d.split(b" ", 2)[1]) for d in client.received[before:] if d.startswith(b"SIP/2.0 ")]
            if expected == "drop":
                assert got == [], name
            elif isinstance(expected, int) and expected >= 400:
                assert expected in got, (name, got)
        before = len(client.received)
        options = next(data for name, _, data, _ in TORTURE if name == "badbranch")
        options = options.replace(b"badbranch.", b"after.").replace(b"branch=z9hG4bK\r\n", b"branch=z9hG4bKz;rport\r\n")
        client.transport.write(options, ("127.0.0.1", proc.sip_port))
        await deferLater(reactor(), 0.3, lambda: None)
        assert 200 in [parse_datagram(d).status for d in client.received[before:]]
    finally:
        await port.stopListening()
    _, health = await proc.api("GET", "/healthz", expect=200)
    assert health == {"status": "ok"}
    assert "Unhandled" not in proc.output and "Traceback" not in proc.output, proc.output[-5000:]


@pytest_twisted.ensureDeferred
async def test_a_registering_trunk_is_in_readyz_and_the_status_until_removed_at_stop(gateway, sipp, tmp_path):
    """SIPp as the trunk's registrar (Digest MD5 qop=auth checked by verifyauth, 4 s granted): /readyz waits for
    the registration, the status shows it, the refresh comes before expiry, and stopping the daemon removes it."""
    trunk_port = free_udp_port()
    scenario = tmp_path / "registrar.xml"
    scenario.write_text((SCENARIOS / "uas_register.xml").read_text().replace('regexp="Expires: 4"',
                                                                             'regexp="Expires: 60"'))
    registrar = sipp("-sf", scenario, "-i", "127.0.0.1", "-p", trunk_port, "-m", 1, "-timeout", "40s")
    await deferLater(reactor(), 0.5, lambda: None)
    proc = await gateway(trunk_port=trunk_port, extra="register = true\nexpires = 60\n")

    async def ready():
        code, _ = await proc.api("GET", "/readyz")
        return code == 200

    await wait_for(ready, timeout=15)
    _, status = await proc.api("GET", "/api/status", expect=200)
    registration = status["sip"]["trunks"]["loop"]["registration"]
    assert registration["state"] == "registered" and registration["failures"] == 0, registration
    assert "s3cret" not in str(status) and "s3cret" not in proc.output
    await deferLater(reactor(), 3.0, lambda: None)  # the refresh, halfway through the 4 s granted
    code, _ = await proc.api("GET", "/readyz")
    assert code == 200
    assert await proc.stop() == 0
    code, output = await registrar  # the removal (Expires: 0) was the registrar's last expected message
    assert code == 0, output[-3000:]


@pytest_twisted.ensureDeferred
async def test_listening_on_tcp_takes_sipps_calls_over_tcp(gateway, sipp):
    proc = await gateway(transport="tcp")
    code, output = await sipp(*uac(proc, "-sn", "uac", "-t", "t1", "-s", "600", "-m", 3, "-r", 10, "-d", 300))
    assert code == 0, output[-3000:]
    records = await cdrs(proc, 3)
    assert [cdr["cause"] for cdr in records] == ["remote_hangup"] * 3
