"""kill -9 of the daemon holding the HIS link, with two real ``twistd gateway`` nodes in cluster mode on
a real Redis, and the strict processor-bridge simulator on loopback (it records a second client link,
an unanswered request or a malformed message as a protocol violation).

Node a holds the HIS link; alice's call (extension 1003, a phone that rings until answered) has its
media on node b; alice answers it through a (the command is routed to b). Node a is killed with
SIGKILL: b holds the link within 5 s, its channel init lists the talking call once (no second
``channel.interaction``), and alice releases it through b. The lease TTL is 4 s, so that a kill just
after a renewal is still taken over within 5 s (see docs/cluster.md, *Singleton links*).
"""

import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater

from gateway.cluster.leases import lease_holder
from gateway.sim.his import HisBridgeSim
from gateway.testing import TOKEN, GatewayProcess, free_port
from tests.cluster.support import connected, start_client, until

pytestmark = pytest.mark.timeout(120)

CHANNEL = "alice.cg.tel"


def node_config(name, admin, redis_url, his_port):
    return f"""
[gateway]
node = "{name}"
state_dir = "var"
shutdown_grace = 2.0

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"
token = "{TOKEN}"

[store]
url = "sqlite:var/gateway.sqlite"

[cluster]
redis = "{redis_url}"
node_ttl = 4.0
lease_ttl = 4.0
drain_timeout = 2.0

[[extensions]]
id = "1003"
name = "Alice"
device = "sim:manual"

[[routes]]
did = "103"
to = "extension:1003"

[pbx.sim]
ring_time = 0.3
audio = "silence"

[cti]
enabled = true
connect = "tcp:host=127.0.0.1:port={his_port}"
reconnect_initial = 0.2
reconnect_max = 0.5
agents = [{{agent = "alice", extension = "1003"}}]
"""


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_kill_9_of_the_daemon_holding_the_his_link(tmp_path, redis_server, cleanup):
    sim = HisBridgeSim(reactor, agents=["alice"], response_timeout=10)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(sim)
    cleanup(lambda: pytest_twisted.blockon(defer.maybeDeferred(port.stopListening)))
    redis = await connected(start_client(redis_server.url, cleanup))

    async def holder():
        found = await lease_holder(redis, "cti:PROC")
        return found.holder if found is not None else None

    nodes = {}
    for name in ("a", "b"):
        admin = free_port()
        workdir = tmp_path / name
        workdir.mkdir()
        process = GatewayProcess(reactor, workdir, node_config(name, admin, redis_server.url, port.getHost().port))
        cleanup(lambda p=process: pytest_twisted.blockon(p.stop()))
        nodes[name] = process
        await process.start(admin)
        if name == "a":
            await until(lambda: sim.ready, 20, "node a's link to the bridge and alice's login")
    a, b = nodes["a"], nodes["b"]
    assert await holder() == "a"
    deadline = time.monotonic() + 10
    while True:  # b joins the cluster, then is ready while it stands by
        code, body = await b.api("GET", "/readyz", token=None)
        if code == 200:
            break
        assert time.monotonic() < deadline, f"a node standing by is ready: {body}"
        await sleep(0.1)

    # alice's call: its media on node b, announced through node a's link, answered through it
    conversation = sim.when_destination("conversation")
    _, call = await b.api("POST", "/api/sim/inbound", {"caller_id": "5551234", "did": "103"}, expect=201)
    call_id = call["call_id"]
    target = f"{CHANNEL}.{call_id}.primary"
    assert (await conversation.addTimeout(10, reactor)).target == target
    response = await sim.send("accept", target=f"{CHANNEL}.{call_id}")
    assert response.ok, response.describe()
    await until(lambda: "conversation.talking" in sim.event_names(target), 10, "the call talking")
    before = len(sim.event_log)

    a.kill()
    killed = time.monotonic()
    await a.ended
    while await holder() != "b":
        assert time.monotonic() - killed < 5.0, "node b did not hold the HIS link within 5 s"
        await sleep(0.05)
    took = time.monotonic() - killed
    await until(lambda: sim.ready and sim.destinations.get(target) is not None
                and sim.destinations[target].init is not None and len(sim.event_log) > before, 10,
                "node b's link, alice's login and her call listed")
    await until(lambda: sim.destinations[target].state == "active", 10, "the conversation initialised again")
    print(f"node b held the HIS link {took:.2f} s after node a was killed")

    # listed once in the new link's channel init, never announced again
    assert list(sim.destinations[CHANNEL].init.interactions) == [call_id]
    assert (CHANNEL, "channel.interaction") not in [(e.target, e.name) for e in sim.event_log[before:]]
    assert sim.destinations[target].init.state == "TALKING"
    code, state = await b.api("GET", f"/api/calls/{call_id}")
    assert code == 200 and state["state"] == "TALKING"

    # alice releases it through node b
    response = await sim.send("release", target=target)
    assert response.ok, response.describe()
    await until(lambda: "conversation.ended" in sim.event_names(target)[-1:], 10, "the call ended")
    assert sim.violations == []


@pytest_twisted.ensureDeferred
async def test_a_drained_holder_hands_the_his_link_over_at_once(tmp_path, redis_server, cleanup):
    sim = HisBridgeSim(reactor, agents=["alice"], response_timeout=10)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(sim)
    cleanup(lambda: pytest_twisted.blockon(defer.maybeDeferred(port.stopListening)))
    redis = await connected(start_client(redis_server.url, cleanup))
    nodes = {}
    for name in ("a", "b"):
        admin = free_port()
        workdir = tmp_path / name
        workdir.mkdir()
        process = GatewayProcess(reactor, workdir, node_config(name, admin, redis_server.url, port.getHost().port))
        cleanup(lambda p=process: pytest_twisted.blockon(p.stop()))
        nodes[name] = process
        await process.start(admin)
        if name == "a":
            await until(lambda: sim.ready, 20, "node a's link to the bridge and alice's login")
    assert (await lease_holder(redis, "cti:PROC")).holder == "a"
    # drained through its admin API: a closes its link, then releases the lease; b takes it
    drained = time.monotonic()
    code, body = await nodes["a"].api("POST", "/api/cluster/nodes/a/drain")
    assert code == 202, body
    holder = None
    while holder != "b":
        assert time.monotonic() - drained < 3.0, "node b did not take the HIS link over after the drain"
        await sleep(0.05)
        found = await lease_holder(redis, "cti:PROC")
        holder = found.holder if found is not None else None
    await until(lambda: sim.ready, 10, "node b's link and alice's login")
    print(f"node b held the HIS link {time.monotonic() - drained:.2f} s after node a was drained")
    assert sim.violations == [], "the two links overlapped"
