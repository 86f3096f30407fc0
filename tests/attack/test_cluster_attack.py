"""A hostile Redis client against a REAL cluster node (``twistd gateway`` with ``[cluster]``, on a real Redis).

The trust model (docs/cluster.md, docs/security.md): Redis is trusted and private, so a client of it may
route the documented commands. What it must never do is crash the node, run anything beyond that list,
or make a record be lost: garbage JSON, wrong types, huge payloads, commands for unknown calls and replies
for unknown requests are each refused (an error reply or a log line) and the node goes on serving.
"""

import json

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import deferLater

from gateway.testing import TOKEN, GatewayProcess, free_port
from tests.cluster.support import connected, start_client

pytestmark = pytest.mark.timeout(90)


def reactor():
    from twisted.internet import reactor as global_reactor

    return global_reactor


def pause(seconds):
    return deferLater(reactor(), seconds, lambda: None)


def node_config(admin, redis_url):
    return f"""
[gateway]
node = "a"
state_dir = "var"
shutdown_grace = 2.0

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"
token = "{TOKEN}"

[store]
url = "sqlite:var/gateway.sqlite"

[cluster]
redis = "{redis_url}"
node_ttl = 2.0
lease_ttl = 2.0
command_timeout = 2.0

[[extensions]]
id = "1001"
device = "sim"

[[extensions]]
id = "1002"
device = "sim"

[pbx.sim]
phone_answer_delay = 0.2
ring_time = 0.2
audio = "silence"
"""


@pytest.fixture
def node(processes, tmp_path, redis_server):
    async def start():
        admin = free_port()
        proc = GatewayProcess(reactor(), tmp_path, node_config(admin, redis_server.url))
        processes.append(proc)
        await proc.start(admin)
        for _ in range(100):
            code, _ = await proc.api("GET", "/readyz", token=None)
            if code == 200:
                break
            await pause(0.1)
        return proc

    return start


class Attacker:
    """A Redis client that publishes on node a's command channel and reads the replies to ``attacker``."""

    def __init__(self, client):
        self.client = client
        self.replies = {}

    async def start(self):
        await self.client.subscribe("gw:reply:attacker", self._reply)
        return self

    def _reply(self, channel, message):
        reply = json.loads(message)
        self.replies[reply["id"]] = reply

    def publish(self, message, channel="gw:cmd:a"):
        return self.client.publish(channel, message)

    async def command(self, request_id, command, args):
        await self.publish(json.dumps({"id": request_id, "from": "attacker", "command": command, "args": args}))
        for _ in range(50):
            if request_id in self.replies:
                return self.replies[request_id]
            await pause(0.05)
        raise AssertionError(f"no reply to {command} {args!r}: {self.replies}")


@pytest.fixture
def attacker(redis_server, cleanup):
    async def make():
        client = await connected(start_client(redis_server.url, cleanup))
        return await Attacker(client).start()

    return make


async def assert_serving(proc):
    _, health = await proc.api("GET", "/healthz", expect=200)
    assert health == {"status": "ok"}
    code, body = await proc.api("GET", "/readyz", token=None)
    assert code == 200, body
    _, cluster = await proc.api("GET", "/api/cluster", expect=200)
    assert [n["node"] for n in cluster["nodes"]] == ["a"], cluster
    assert "Traceback" not in proc.output and "Unhandled" not in proc.output, proc.output[-5000:]


@pytest_twisted.ensureDeferred
async def test_garbage_and_wrong_types_on_the_command_and_reply_channels(node, attacker):
    proc = await node()
    evil = await attacker()
    garbage = ["", "not json", "[]", "null", "1e999", "NaN", '"\\ud800"', '{"id": 1}', "[" * 100000,
               '{"id":"g1","from":"attacker","command":"hangup","args":[]}',
               '{"id":"g2","from":["x"],"command":"hangup","args":{}}',
               json.dumps({"id": "g3", "from": "attacker", "command": "hangup", "args": {"call_id": "x" * 2_000_000}}),
               json.dumps({"pad": "y" * 4_000_000})]
    for message in garbage:
        await evil.publish(message)
        await evil.publish(message, channel="gw:reply:a")
    await evil.publish(json.dumps({"id": "nobody-asked", "ok": True, "result": {"x": 1}}), channel="gw:reply:a")
    await evil.publish(json.dumps({"id": "nobody-asked", "ok": False, "error": "Exception"}), channel="gw:reply:a")

    # commands beyond the documented list, and the documented ones with wrong types, get error replies
    for i, (command, args) in enumerate([
        ("__init__", {}), ("stopService", {}), ("calls", {}), ("_end_call", {"call_id": "x"}), ("drain", {"x": 1}),
        ("hangup", {"call_id": {"x": 1}}), ("hangup", {"call_id": ["x"]}), ("hangup", {}),
        ("hangup", {"call_id": "nope", "evil": 1}),
        ("send_dtmf", {"call_id": "nope", "digits": "1", "duration_ms": 1e308, "gap_ms": -1}),
        ("originate", {"extension_id": ["1001"], "number": "1002"}),
        ("originate", {"extension_id": "1001", "number": {"n": 1}}),
        ("originate", {"extension_id": "1001", "number": "1002", "if_busy": ["replace"]}),
        ("originate", {"extension_id": "1001", "number": "1002", "attributes": "abc"}),
        ("hangup", {"call_id": "nope", "by": {"who": 1}}),
    ]):
        reply = await evil.command(f"t{i}", command, args)
        assert reply["ok"] is False, (command, args, reply)
        assert reply["error"]["type"] in ("InvalidArgument", "UnknownCall", "UnknownExtension"), (command, reply)
    reply = await evil.command("last", "hangup", {"call_id": "no-such-call"})
    assert reply["error"]["type"] == "UnknownCall", reply
    _, calls = await proc.api("GET", "/api/calls", expect=200)
    assert calls["calls"] == []
    await assert_serving(proc)
    assert "a command on gw:cmd:a is unreadable" in proc.output


@pytest_twisted.ensureDeferred
async def test_a_routed_command_with_wrongly_typed_arguments_never_costs_the_call_its_record(node, attacker):
    """A routed originate with odd attributes and a hangup whose ``by`` is no text: refused, or the call ends
    with its CDR stored; never a CDR lost to a store error."""
    proc = await node()
    evil = await attacker()
    reply = await evil.command("o1", "originate", {"extension_id": "1001", "number": "1002",
                                                   "attributes": {"nested": {"deep": [1, 2.5, None, True]},
                                                                  "n": 10**30}})
    if reply["ok"]:
        call_id = reply["result"]["call_id"]
        for _ in range(50):
            _, call = await proc.api("GET", f"/api/calls/{call_id}")
            if call and call.get("state") == "connected":
                break
            await pause(0.1)
        reply = await evil.command("h1", "hangup", {"call_id": call_id, "by": {"who": ["x"] * 3}})
        ended = reply["ok"]
        if not ended:
            assert reply["error"]["type"] == "InvalidArgument", reply
            reply = await evil.command("h2", "hangup", {"call_id": call_id})
            assert reply["ok"], reply
        for _ in range(50):
            code, cdr = await proc.api("GET", f"/api/cdrs/{call_id}")
            if code == 200:
                break
            await pause(0.1)
        assert code == 200, (cdr, proc.output[-3000:])
    else:
        assert reply["error"]["type"] == "InvalidArgument", reply
    await assert_serving(proc)


@pytest_twisted.ensureDeferred
async def test_payloads_past_redis_pubsub_buffer_drop_the_nodes_link_and_it_comes_back(node, attacker):
    """Redis itself drops a subscriber whose output buffer passes its pub/sub limit (32 MB): the node's
    subscription link goes, is made again, and routed commands are answered again."""
    proc = await node()
    evil = await attacker()
    for _ in range(3):
        await evil.publish(json.dumps({"pad": "z" * 20_000_000}))
    for attempt in range(100):
        await evil.publish(json.dumps({"id": f"r{attempt}", "from": "attacker", "command": "hangup",
                                       "args": {"call_id": "nope"}}))
        await pause(0.1)
        if any(key.startswith("r") for key in evil.replies):
            break
    assert any(key.startswith("r") for key in evil.replies), proc.output[-3000:]
    for _ in range(100):
        code, _ = await proc.api("GET", "/readyz", token=None)
        if code == 200:
            break
        await pause(0.1)
    await assert_serving(proc)


async def raw(proc, method, path, *, token=TOKEN, body=None, content_type="application/json"):
    import treq

    headers = {"Authorization": [f"Bearer {token}"]} if token else {}
    if body is not None:
        headers["Content-Type"] = [content_type]
    response = await treq.request(method, f"http://127.0.0.1:{proc.admin_port}{path}", headers=headers, data=body,
                                  timeout=10)
    text = await response.text()
    return response.code, text


@pytest_twisted.ensureDeferred
async def test_cluster_drain_and_consult_endpoints_refuse_strangers_and_bad_input_with_typed_errors(node):
    proc = await node()
    drain = "/api/cluster/nodes/{}/drain"
    for token in (None, "wrong", TOKEN + "x"):
        for method, path in (("POST", drain.format("a")), ("GET", "/api/cluster"),
                             ("POST", "/api/calls/x/consult"), ("POST", "/api/calls/x/alternate")):
            code, text = await raw(proc, method, path, token=token, body=b'{"number": "1002"}')
            assert code == 401, (token, path, code, text)
    cases = [
        ("GET", drain.format("a"), None, (405,)),
        ("POST", drain.format("a"), b'{"x": 1}', (400, 415)),
        ("POST", drain.format("zz"), None, (404,)),
        ("POST", drain.format("z" * 5000), None, (404, 414)),
        ("POST", drain.format("%00"), None, (400, 404)),
        ("POST", drain.format("%ff%fe"), None, (400, 404)),
        ("POST", drain.format("%ed%a0%80"), None, (400, 404)),  # a UTF-8-encoded lone surrogate
        ("POST", drain.format("a*"), None, (404,)),
        ("POST", drain.format("..%2f..%2fa"), None, (400, 404)),
        ("POST", "/api/cluster/nodes//drain", None, (400, 404, 405)),
        ("POST", "/api/calls/nope/consult", b'{"number": 1002}', (400,)),
        ("POST", "/api/calls/nope/consult", b'{"number": ["1002"]}', (400,)),
        ("POST", "/api/calls/nope/consult", b'{"number": "1002", "extra": 1}', (400,)),
        ("POST", "/api/calls/nope/consult", b'{"number": "1002"', (400,)),
        ("POST", "/api/calls/nope/consult", b'[]', (400,)),
        ("POST", "/api/calls/nope/consult", b'{"number": "\\ud800"}', (400,)),
        ("POST", "/api/calls/nope/consult", b'{"number": "1002"}', (404,)),
        ("POST", "/api/calls/nope/alternate", b'{"x": 1}', (400,)),
        ("POST", "/api/calls/nope/transfer-to-consult", None, (404,)),
        ("POST", "/api/calls/nope/conference-in-consult", None, (404,)),
    ]
    for method, path, body, expected in cases:
        code, text = await raw(proc, method, path, body=body)
        assert code in expected, (method, path[:80], body, code, text[:300])
        if code != 405:
            assert "error" in json.loads(text), text[:300]
    _, cluster = await proc.api("GET", "/api/cluster", expect=200)
    assert cluster["draining"] == [], cluster  # none of the above drained this node
    await assert_serving(proc)
