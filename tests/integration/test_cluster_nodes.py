"""Two real gateway daemons as one cluster, on a real Redis and a real PostgreSQL (issue 15).

Each test starts two ``twistd gateway`` processes (nodes ``a`` and ``b``) on free loopback ports,
sharing the session's ``redis-server`` (flushed) and a fresh PostgreSQL database for their CDRs.
"""

import os
import signal

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectError
from twisted.internet.task import deferLater

from gateway.sim.optimaccs import CallScript, place_call
from gateway.sim.patriot_client import PatriotClientSim
from gateway.testing import TOKEN, GatewayProcess, free_port

pytestmark = pytest.mark.timeout(60)

OPERATOR_DID = "100"


def node_config(name, admin, inbound, redis_url, store_url, drain_timeout=10.0, bridge=None):
    patriot = "" if bridge is None else f"""
[patriot.bridge]
listen = "tcp:{bridge}:interface=127.0.0.1"
users = [{{username = "alice", password = "pw-alice", extension = "1001"}}]
"""
    return patriot + f"""
[gateway]
node = "{name}"
state_dir = "var"
shutdown_grace = 2.0

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"
token = "{TOKEN}"

[store]
url = "{store_url}"

[cluster]
redis = "{redis_url}"
node_ttl = 2.0
lease_ttl = 2.0
command_timeout = 2.0
drain_timeout = {drain_timeout}

[optimaccs]
listen = "tcp:{inbound}:interface=127.0.0.1"
cdr_wait = 0.5

[[extensions]]
id = "1001"
name = "Alice"
device = "sim"

[[extensions]]
id = "1002"
name = "Bob"
device = "sim"

[[extensions]]
id = "1003"
name = "Carol"
device = "sim"

[[routes]]
did = "{OPERATOR_DID}"
to = "extension:1001"

[[routes]]
did = "101"
to = "extension:1002"

[[routes]]
did = "102"
to = "extension:1003"

[pbx.sim]
phone_answer_delay = 0.2
ring_time = 0.2
audio = "silence"
"""


class Node:
    def __init__(self, process, inbound, bridge):
        self.process = process
        self.url = f"ws://127.0.0.1:{inbound}/"
        self.bridge_url = f"ws://127.0.0.1:{bridge}/dialler"

    def api(self, *args, **kwargs):
        return self.process.api(*args, **kwargs)


@defer.inlineCallbacks
def start_nodes(tmp_path, cleanup, redis_server, postgres_server, drain_timeout=10.0, names=("a", "b")):
    nodes = {}
    for name in names:
        admin, inbound, bridge = free_port(), free_port(), free_port()
        workdir = tmp_path / name
        workdir.mkdir()
        config = node_config(name, admin, inbound, redis_server.url, postgres_server.url, drain_timeout, bridge)
        process = GatewayProcess(reactor, workdir, config)
        cleanup(process.kill)
        process.admin_port = admin
        nodes[name] = Node(process, inbound, bridge)
    yield defer.gatherResults([nodes[n].process.start() for n in names])
    for name in names:
        yield wait_until(lambda n=nodes[name]: ready(n), f"node {name} ready", 20)
    return nodes


@defer.inlineCallbacks
def ready(node):
    """Whether /readyz says 200 (a node that is gone is not ready)."""
    try:
        code, body = yield node.api("GET", "/readyz", token=None)
    except ConnectError:
        return False
    return code == 200


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_until(predicate, what, timeout=15.0):
    deadline = reactor.seconds() + timeout
    while True:
        result = yield defer.maybeDeferred(predicate)
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield sleep(0.1)


@defer.inlineCallbacks
def call_seen(node, call_id, state=None):
    code, body = yield node.api("GET", f"/api/calls/{call_id}")
    if code != 200:
        return None
    return body if state is None or body["state"] == state else None


@defer.inlineCallbacks
def cdr_of(node, call_id):
    code, body = yield node.api("GET", f"/api/cdrs/{call_id}")
    return body if code == 200 else None


@pytest_twisted.inlineCallbacks
def test_a_call_on_node_a_is_seen_held_and_hung_up_from_node_b(tmp_path, cleanup, redis_server, postgres_server):
    nodes = yield start_nodes(tmp_path, cleanup, redis_server, postgres_server)
    a, b = nodes["a"], nodes["b"]
    code, call = yield a.api("POST", "/api/sim/inbound", {"caller_id": "5550100", "did": OPERATOR_DID})
    assert code == 201, call
    call_id = call["call_id"]
    seen = yield wait_until(lambda: call_seen(b, call_id, "TALKING"), "node b to see the call talking")
    assert seen["extension"] == "1001"
    code, listed = yield b.api("GET", "/api/calls")
    assert [c["call_id"] for c in listed["calls"]] == [call_id]
    code, held = yield b.api("POST", f"/api/calls/{call_id}/hold")
    assert (code, held["state"]) == (200, "HELD"), held
    code, on_a = yield a.api("GET", f"/api/calls/{call_id}")
    assert on_a["state"] == "HELD"
    code, ended = yield b.api("POST", f"/api/calls/{call_id}/hangup")
    assert (code, ended["state"]) == (200, "RELEASED"), ended
    cdr = yield wait_until(lambda: cdr_of(b, call_id), "the CDR in PostgreSQL, read from node b")
    assert (cdr["node"], cdr["cause"], cdr["hangup_by"]) == ("a", "normal", "api")
    code, missing = yield b.api("POST", "/api/calls/nosuchcall/hangup")
    assert (code, missing["error"]) == (404, "unknown_call")
    for node in (a, b):
        assert (yield node.process.stop()) == 0
        assert "Traceback" not in node.process.output


@pytest_twisted.inlineCallbacks
def test_a_patriot_operator_on_node_b_sees_and_hangs_up_a_call_on_node_a(
        tmp_path, cleanup, redis_server, postgres_server):
    nodes = yield start_nodes(tmp_path, cleanup, redis_server, postgres_server)
    a, b = nodes["a"], nodes["b"]
    operator = PatriotClientSim(reactor, b.bridge_url, {"userName": "alice", "password": "pw-alice"}, reconnect=False)
    cleanup(lambda: operator.stop())
    operator.start()
    response = yield operator.wait_for("init-response", timeout=10)
    assert response.success, response
    first = yield operator.wait_for("call-status-update", timeout=10)
    assert not first.call_active
    code, call = yield a.api("POST", "/api/sim/inbound", {"caller_id": "0299998888", "did": OPERATOR_DID})
    assert code == 201
    active = yield operator.wait_for("call-status-update", lambda u: u.call_active, timeout=10)
    assert (active.outbound, active.caller_id) == (False, "0299998888")
    yield wait_until(lambda: call_seen(a, call["call_id"], "TALKING"), "the call talking on a")
    operator.hangup()
    ended = yield operator.wait_for("call-status-update", lambda u: not u.call_active, timeout=10)
    assert ended.caller_id == "0299998888"
    cdr = yield wait_until(lambda: cdr_of(a, call["call_id"]), "the CDR")
    assert (cdr["node"], cdr["cause"]) == ("a", "normal")
    yield operator.stop()
    for node in (a, b):
        assert (yield node.process.stop()) == 0
        assert "Traceback" not in node.process.output


@pytest_twisted.inlineCallbacks
def test_kill_9_of_a_node_with_a_live_call_leaves_a_node_lost_cdr(tmp_path, cleanup, redis_server, postgres_server):
    nodes = yield start_nodes(tmp_path, cleanup, redis_server, postgres_server)
    a, b = nodes["a"], nodes["b"]
    code, call = yield a.api("POST", "/api/sim/inbound", {"caller_id": "5550100", "did": OPERATOR_DID})
    call_id = call["call_id"]
    yield wait_until(lambda: call_seen(b, call_id, "TALKING"), "node b to see the call")
    os.kill(a.process.transport.pid, signal.SIGKILL)
    yield a.process.ended
    cdr = yield wait_until(lambda: cdr_of(b, call_id), "the node_lost CDR", 15)
    assert (cdr["node"], cdr["cause"], cdr["hangup_by"]) == ("a", "node_lost", "cluster")
    assert cdr["answered_at"] is not None
    code, _ = yield b.api("GET", f"/api/calls/{call_id}")
    assert code == 404
    assert "node a is dead; ending its call" in b.process.output
    assert (yield b.process.stop()) == 0


@pytest_twisted.inlineCallbacks
def test_drain_refuses_new_optimaccs_calls_lets_live_ones_finish_and_forces_the_rest(
        tmp_path, cleanup, redis_server, postgres_server):
    nodes = yield start_nodes(tmp_path, cleanup, redis_server, postgres_server, drain_timeout=4.0)
    a, b = nodes["a"], nodes["b"]
    # a call from the provider that ends by itself during the drain, and one that would not
    short = place_call(reactor, a.url, CallScript(caller_id="0811000001", did=OPERATOR_DID, hangup_after=1.5))
    cleanup(lambda: short.close(1000, "test over"))
    code, long_call = yield a.api("POST", "/api/sim/inbound", {"caller_id": "5550199", "did": "101"})
    assert code == 201
    yield wait_until(lambda: call_seen(a, long_call["call_id"], "TALKING"), "the long call talking")
    yield wait_until(lambda: a.api("GET", "/api/calls").addCallback(lambda r: len(r[1]["calls"]) == 2),
                     "both calls up on a")
    a.process.signal("TERM")  # SIGTERM: drain first
    yield wait_until(lambda: ready(a).addCallback(lambda ok: not ok), "a's /readyz false")
    code, body = yield a.api("GET", "/readyz", token=None)
    assert body["not_ready"].get("cluster") == "draining", body
    refused = place_call(reactor, a.url, CallScript(caller_id="0811000002", did=OPERATOR_DID, hangup_after=5))
    cleanup(lambda: refused.close(1000, "test over"))
    yield refused.ended
    assert refused.close_code == 1013, refused.close_code
    # an origination asked of the draining a goes to b
    code, dialled = yield a.api("POST", "/api/calls", {"extension": "1003", "number": "5551234"})
    assert code == 201, dialled
    code, status = yield b.api("GET", "/api/status")
    assert status["calls"]["live_calls"] == 1, status["calls"]
    yield short.ended
    assert short.close_code == 1000
    code = yield a.process.ended
    assert code == 0, a.process.output[-3000:]
    short_cdrs = yield b.api("GET", "/api/cdrs")
    by_cause = {c["call_id"]: c["cause"] for c in short_cdrs[1]["cdrs"] if c["node"] == "a"}
    assert by_cause[long_call["call_id"]] == "drain_forced", by_cause
    assert sorted(by_cause.values()) == ["drain_forced", "remote_hangup"], by_cause
    assert (yield b.process.stop()) == 0


#: the typed answers of a routed command while the owner's command channel comes back
TRANSIENT = ("owner_unreachable", "command_timeout")


@pytest_twisted.inlineCallbacks
def test_redis_killed_mid_call_readyz_names_it_the_call_goes_on_and_the_state_is_rebuilt(
        tmp_path, cleanup, redis_server, postgres_server):
    nodes = yield start_nodes(tmp_path, cleanup, redis_server, postgres_server)
    a, b = nodes["a"], nodes["b"]
    code, call = yield a.api("POST", "/api/sim/inbound", {"caller_id": "5550100", "did": OPERATOR_DID})
    call_id = call["call_id"]
    yield wait_until(lambda: call_seen(b, call_id, "TALKING"), "node b to see the call")
    redis_server.kill()  # a crash: it comes back empty (no persistence)
    for node in (a, b):
        yield wait_until(lambda n=node: n.api("GET", "/readyz", token=None).addCallback(
            lambda r: r[0] == 503 and "redis" in r[1]["not_ready"]), "/readyz naming redis")
    code, failed = yield b.api("POST", f"/api/calls/{call_id}/hold")
    assert (code, failed["error"]) in ((503, "cluster_unavailable"), (503, "owner_unreachable")), (code, failed)
    yield sleep(3)  # longer than the node TTL: both nodes lose their place in the cluster
    code, on_a = yield a.api("GET", f"/api/calls/{call_id}")
    assert (code, on_a["state"]) == (200, "TALKING")  # the call went on
    redis_server.start()
    for node in (a, b):
        yield wait_until(lambda n=node: ready(n), "ready again", 20)
    yield wait_until(lambda: call_seen(b, call_id, "TALKING"), "node b to see the call again (rebuilt)")
    # a's two Redis links (commands, subscriptions) come back one after the other: until its command
    # channel is subscribed again a routed command is a typed 503 (or, on a loaded machine, a typed 504
    # timeout while the channel comes back), never a wrong answer
    answers = []

    def hangup():
        return b.api("POST", f"/api/calls/{call_id}/hangup").addCallback(
            lambda reply: answers.append(reply) or reply[0] not in (503, 504))

    yield wait_until(hangup, "the hangup routed to a", 15)
    code, ended = answers[-1]
    assert (code, ended["state"]) == (200, "RELEASED"), ended
    assert all(reply[1]["error"] in TRANSIENT for reply in answers[:-1]), answers
    cdr = yield wait_until(lambda: cdr_of(b, call_id), "the CDR")
    assert cdr["cause"] == "normal"
    for node in (a, b):
        assert (yield node.process.stop()) == 0


@pytest_twisted.inlineCallbacks
def test_a_rolling_restart_drops_no_call_that_ends_within_the_drain_timeout(
        tmp_path, cleanup, redis_server, postgres_server):
    nodes = yield start_nodes(tmp_path, cleanup, redis_server, postgres_server, drain_timeout=8.0)
    a, b = nodes["a"], nodes["b"]
    calls = []

    def provider_call(node, did, seconds):
        call = place_call(reactor, node.url, CallScript(caller_id=f"08110000{len(calls):02d}", did=did,
                                                        hangup_after=seconds))
        cleanup(lambda: call.close(1000, "test over"))
        calls.append(call)
        return call

    provider_call(a, OPERATOR_DID, 3.0)
    provider_call(b, "101", 9.0)  # still up when b drains, and ends within its drain timeout
    yield wait_until(lambda: b.api("GET", "/api/calls").addCallback(lambda r: len(r[1]["calls"]) == 2),
                     "both calls up")
    # node a restarts: drained (its call ends by itself), stopped, started again
    a.process.signal("TERM")
    yield wait_until(lambda: ready(a).addCallback(lambda ok: not ok), "a draining")
    provider_call(b, "102", 2.0)  # the provider tries the node that is not draining
    assert (yield a.process.ended) == 0
    config = open(a.process.config_path, encoding="utf-8").read()
    restarted = GatewayProcess(reactor, a.process.workdir, config)
    restarted.admin_port = a.process.admin_port
    cleanup(restarted.kill)
    a.process = restarted
    yield restarted.start()
    yield wait_until(lambda: ready(a), "a ready again", 20)
    # then node b
    b.process.signal("TERM")
    yield wait_until(lambda: ready(b).addCallback(lambda ok: not ok), "b draining")
    provider_call(a, OPERATOR_DID, 1.0)
    assert (yield b.process.ended) == 0
    for call in calls:
        yield call.ended
    assert [call.close_code for call in calls] == [1000] * 4
    _, body = yield a.api("GET", "/api/cdrs")
    causes = sorted(c["cause"] for c in body["cdrs"])
    assert causes == ["remote_hangup"] * 4, body["cdrs"]
    assert (yield a.process.stop()) == 0


@pytest_twisted.inlineCallbacks
def test_a_node_started_while_redis_is_down_serves_calls_and_joins_when_it_comes(
        tmp_path, cleanup, redis_server, postgres_server):
    redis_server.stop()
    admin, inbound, bridge = free_port(), free_port(), free_port()
    workdir = tmp_path / "a"
    workdir.mkdir()
    process = GatewayProcess(reactor, workdir, node_config("a", admin, inbound, redis_server.url,
                                                           postgres_server.url, bridge=bridge))
    cleanup(process.kill)
    yield process.start(admin)
    a = Node(process, inbound, bridge)
    yield wait_until(lambda: a.api("GET", "/readyz", token=None).addCallback(
        lambda r: r[0] == 503 and "redis" in r[1]["not_ready"] and "cluster" in r[1]["not_ready"]),
        "/readyz naming redis and the cluster")
    code, call = yield a.api("POST", "/api/sim/inbound", {"caller_id": "5550100", "did": OPERATOR_DID})
    assert code == 201, call  # local calls need no Redis
    yield wait_until(lambda: call_seen(a, call["call_id"], "TALKING"), "the call talking")
    redis_server.start()
    yield wait_until(lambda: ready(a), "ready once redis is up", 20)
    record = yield wait_until(lambda: redis_server.command("GET", f"gw:call:{call['call_id']}"), "the call's record")
    assert b'"owner":"a"' in record
    code, _ = yield a.api("POST", f"/api/calls/{call['call_id']}/hangup")
    assert code == 200
    assert (yield process.stop()) == 0
