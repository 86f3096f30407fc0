"""``make cluster-demo`` (``python -m gateway.demo_cluster``): two gateway nodes as one cluster, narrated.

It starts, all on loopback ports picked free:

- a real ``redis-server`` and a real PostgreSQL, from Debian's binaries, each in a temporary directory
  (``tests/engines.py``'s :class:`RedisServer` and :class:`PostgresServer`: PostgreSQL runs as an
  unprivileged user when the demo runs as root; ``make engines`` installs the binaries);
- the chat server simulator (a subprocess);
- two gateway daemons, ``node-a`` and ``node-b`` (``twistd -n gateway``), each with ``[cluster]`` on
  that Redis, ``[store]`` on one PostgreSQL database, the simulated PSTN, and the chat connector
  (whose link is a singleton: one node holds it).

Then it plays, one line per thing that happened:

1. both nodes are in the cluster: ``gatewayctl cluster`` as seen from node-b;
2. a call whose media is on node-a (a simulated caller dials the agent's extension there) is seen
   from node-b's admin API (its ``node`` is node-a), held from node-b, and hung up from node-b; its
   CDR is in PostgreSQL, read through node-b;
3. an SMS reaches the node that does *not* hold the chat link: stored in PostgreSQL, claimed by the
   holder (``SKIP LOCKED`` per number) and delivered to the chat server as a conversation; the
   agent's reply goes out as an SMS;
4. with ``--once``: node-b is drained through node-a's API (``gatewayctl drain node-b``), and
   ``/api/cluster`` shows it draining.

Every step waits for its evidence at most :data:`gateway.demo.WAIT` seconds. Then everything stays
up until Ctrl-C or SIGTERM (and the URLs and commands to look around are printed); with ``--once``
it exits instead: 0 if every step happened, 1 naming the steps that did not.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import secrets
import signal
import sys

from twisted.internet import defer
from twisted.logger import Logger

from gateway.ctl import render_cluster
from gateway.demo import (
    CHAT_CONFIG,
    WAIT,
    ChatServerProcess,
    DemoRun,
    Narrator,
    Step,
    StepFailed,
    Story,
    begin_logging,
    play,
    print_missing,
)
from gateway.testing import GatewayProcess, free_port

__all__ = ["ClusterDemo", "main", "node_config"]

log = Logger()

NODES = ("node-a", "node-b")
AGENT_EXTENSION, AGENT_DID, CALLER = "1001", "0215550100", "081100000001"
CUSTOMER, CUSTOMER_TEXT = "+15550177", "Hello from a phone: is my order on its way?"
AGENT_REPLY = "It left the warehouse this morning; you will have it tomorrow."

NODE_CONFIG = """\
# One node of the cluster demo, written by `python -m gateway.demo_cluster` (make cluster-demo).

[gateway]
node = "{node}"
state_dir = {state_dir}
shutdown_grace = 2.0

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"
token = "{token}"

[store]
url = "{store_url}"

[cluster]
redis = "{redis_url}"
node_ttl = 3.0
lease_ttl = 3.0
drain_timeout = 5.0

[optimaccs]
enabled = true
listen = "tcp:{optimaccs}:interface=127.0.0.1"

[pbx.sim]
phone_answer_delay = 1.5
ring_time = 1.5
audio = "silence"

[[extensions]]
id = "{agent_extension}"
name = "Alice"
device = "sim"                 # answers by itself after phone_answer_delay

[[routes]]
did = "{agent_did}"
to = "extension:{agent_extension}"

""" + CHAT_CONFIG


def node_config(node: str, state_dir: pathlib.Path, *, admin: int, optimaccs: int, chat: int, token: str,
                redis_url: str, store_url: str) -> str:
    """One node's configuration text."""
    return NODE_CONFIG.format(
        node=node, state_dir=json.dumps(str(state_dir)), admin=admin, optimaccs=optimaccs, chat=chat, token=token,
        redis_url=redis_url, store_url=store_url, agent_extension=AGENT_EXTENSION, agent_did=AGENT_DID,
    )


class Engines:
    """Redis and PostgreSQL in temporary directories (started in the main thread: they die with it)."""

    def __init__(self):
        self.redis = None
        self.postgres = None
        self.store_url = None

    def start(self) -> None:
        try:
            from tests.engines import EngineMissing, PostgresServer, RedisServer
        except ImportError as e:
            raise StepFailed(f"tests/engines.py cannot be imported ({e}): run the demo from the source tree") from None
        try:
            self.redis = RedisServer().start()
            self.postgres = PostgresServer().start()
        except EngineMissing as e:
            raise StepFailed(f"{e} (make engines installs redis-server and postgresql when run as root)") from None
        self.store_url = self.postgres.create_database("gateway_cluster_demo")

    def stop(self) -> None:
        for engine in (self.redis, self.postgres):
            if engine is not None:
                try:
                    engine.cleanup()
                except Exception:
                    log.failure("stopping an engine of the cluster demo")


class ClusterDemo(DemoRun):
    """The engines, the chat server simulator and the two nodes of one run, and the stories."""

    def __init__(self, reactor, workdir: pathlib.Path, narrator: Narrator, *, once: bool):
        self.reactor = reactor
        self.workdir = workdir
        self.narrator = narrator
        self.say = narrator.say
        self.once = once
        self.token = secrets.token_urlsafe(18)
        self.engines = Engines()
        self.chat = ChatServerProcess(workdir / "chat-server.log")
        self.chat_port: int | None = None
        self.nodes: dict[str, GatewayProcess] = {}
        self.call_id: str | None = None
        self.conversation_id: str | None = None

    def admin_url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.nodes[node].admin_port}/"

    def config_path(self, node: str) -> pathlib.Path:
        return self.workdir / node / "gateway.toml"

    def stories(self) -> list[Story]:
        a, b = NODES
        stories = [
            Story((
                Step("engines: redis-server and PostgreSQL start in temporary directories", self.start_engines),
                Step("gateway: two nodes start, on one Redis and one PostgreSQL database", self.start_nodes),
                Step("cluster: both nodes are in the cluster (gatewayctl cluster on node-b)", self.cluster),
            ), essential=True),
            Story((
                Step(f"calls: a call whose media is on {a}", self.call_on_a),
                Step(f"calls: {b} sees it, naming {a}", self.seen_from_b),
                Step(f"calls: {b} holds it (the command is routed to {a})", self.hold_from_b),
                Step(f"calls: {b} hangs it up; its CDR is in PostgreSQL, read through {b}", self.hang_up_from_b),
            )),
            Story((
                Step("sms: an SMS reaches the node that does not hold the chat link", self.sms_in),
                Step("sms: the holder delivers it to the chat server as a conversation", self.conversation),
                Step("sms: the agent's reply goes out as an SMS", self.reply),
            )),
        ]
        if self.once:
            stories.append(Story((Step(f"drain: {b} drains, asked through {a}", self.drain),)))
        return stories

    # -- waiting and the APIs

    async def api(self, node: str, method: str, path: str, body=None, expect: int | None = 200):
        code, data = await self.nodes[node].api(method, path, body, token=self.token)
        if expect is not None and code != expect:
            raise StepFailed(f"{node}: {method} {path} answered {code}: {data}")
        return data if expect is not None else (code, data)

    # -- the start

    async def start_engines(self) -> None:
        self.engines.start()  # blocking for a second or two, in the main thread on purpose
        self.say("engines", f"redis-server on {self.engines.redis.url}")
        self.say("engines", f"PostgreSQL on 127.0.0.1:{self.engines.postgres.port}, database gateway_cluster_demo"
                            + (f" (running as {self.engines.postgres.run_as})" if self.engines.postgres.run_as else ""))

    async def start_nodes(self) -> None:
        self.chat.spawn(self.reactor)
        self.chat_port = await self.chat.ready.addTimeout(WAIT, self.reactor)
        self.say("sims", f"chat server simulator listening on 127.0.0.1:{self.chat_port}")
        for node in NODES:
            workdir = self.workdir / node
            workdir.mkdir(parents=True, exist_ok=True)
            admin = free_port()
            text = node_config(node, workdir / "var", admin=admin, optimaccs=free_port(), chat=self.chat_port,
                               token=self.token, redis_url=self.engines.redis.url, store_url=self.engines.store_url)
            process = GatewayProcess(self.reactor, workdir, text, args=["--logfile", str(workdir / "gateway.log")])
            process.admin_port = admin
            self.nodes[node] = process
        try:
            await defer.gatherResults([p.start() for p in self.nodes.values()], consumeErrors=True)
        except defer.FirstError as e:
            raise StepFailed(f"a node did not start: {e.subFailure.getErrorMessage()[-400:]}") from None
        for node in NODES:
            async def ready(node=node):
                code, _ = await self.nodes[node].api("GET", "/readyz", token=None)
                return code == 200

            await self.wait_until(ready, f"{node} ready (/readyz)")
            self.say("gateway", f"{node} is up and ready: admin API {self.admin_url(node)}"
                                f" (log: {self.workdir / node / 'gateway.log'})")

    async def cluster(self) -> None:
        async def both():
            view = await self.api("node-b", "GET", "/api/cluster")
            holders = {lease["name"] for lease in view["leases"]}
            return view if len(view["nodes"]) == 2 and "chat" in holders else None

        view = await self.wait_until(both, "two nodes and the chat link's holder in /api/cluster")
        self.say("cluster", "gatewayctl cluster, asked of node-b:")
        for line in render_cluster(view).splitlines():
            self.say("", f"  {line}")

    # -- a call across nodes

    async def call_on_a(self) -> None:
        call = await self.api("node-a", "POST", "/api/sim/inbound", {"caller_id": CALLER, "did": AGENT_DID},
                              expect=201)
        self.call_id = call["call_id"]
        self.say("calls", f"a simulated caller {CALLER} dials {AGENT_DID} on node-a: call {self.call_id},"
                          f" ringing extension {AGENT_EXTENSION}")

        async def talking():
            return (await self.api("node-a", "GET", f"/api/calls/{self.call_id}"))["state"] == "TALKING"

        await self.wait_until(talking, f"call {self.call_id} answered on node-a")
        self.say("calls", f"extension {AGENT_EXTENSION}'s phone answers: the call's media is on node-a")

    async def seen_from_b(self) -> None:
        async def seen():
            calls = (await self.api("node-b", "GET", "/api/calls"))["calls"]
            return next((c for c in calls if c["call_id"] == self.call_id and c["state"] == "TALKING"), None)

        call = await self.wait_until(seen, f"call {self.call_id} in node-b's /api/calls")
        self.say("calls", f"node-b's /api/calls lists call {self.call_id}: {call['state']}, node {call['node']}")
        if call["node"] != "node-a":
            raise StepFailed(f"node-b names node {call['node']!r} for the call, not node-a")

    async def hold_from_b(self) -> None:
        held = await self.api("node-b", "POST", f"/api/calls/{self.call_id}/hold")
        on_a = await self.api("node-a", "GET", f"/api/calls/{self.call_id}")
        self.say("calls", f"node-b: POST /api/calls/{self.call_id}/hold -> {held['state']}; node-a, which holds the"
                          f" media, says {on_a['state']}")
        if on_a["state"] != "HELD":
            raise StepFailed(f"the call is {on_a['state']} on node-a, not HELD")

    async def hang_up_from_b(self) -> None:
        ended = await self.api("node-b", "POST", f"/api/calls/{self.call_id}/hangup")
        self.say("calls", f"node-b hangs the call up: {ended['state']}")

        async def stored():
            code, cdr = await self.api("node-b", "GET", f"/api/cdrs/{self.call_id}", expect=None)
            return cdr if code == 200 else None

        cdr = await self.wait_until(stored, f"the CDR of call {self.call_id} through node-b")
        self.say("store", f"node-b reads the CDR written by node-a from PostgreSQL: node {cdr.get('node')},"
                          f" cause {cdr['cause']}, hung up by {cdr['hangup_by']}")

    # -- an SMS across nodes

    async def chat_holder(self) -> str:
        view = await self.api("node-a", "GET", "/api/cluster")
        holder = next((lease["holder"] for lease in view["leases"] if lease["name"] == "chat"), None)
        if holder not in NODES:
            raise StepFailed("no node holds the chat link")
        return holder

    async def sms_in(self) -> None:
        holder = await self.chat_holder()
        other = NODES[1 - NODES.index(holder)]
        stored = await self.api(other, "POST", "/api/sms/inbound", {"from": CUSTOMER, "text": CUSTOMER_TEXT})
        self.say("sms", f'an SMS from {CUSTOMER} reaches {other}: "{CUSTOMER_TEXT}"; stored in PostgreSQL as'
                        f" {stored['sms']['uid']} ({holder} holds the chat link)")

    async def conversation(self) -> None:
        conversation = await self.chat_conversation(CUSTOMER, CUSTOMER_TEXT)
        self.conversation_id = conversation["conversationId"]
        holder = await self.chat_holder()
        chat = (await self.api(holder, "GET", "/api/status")).get("chat", {})
        if not chat.get("inbound", {}).get("claims"):
            raise StepFailed(f"{holder}'s chat connector does not claim SMS from PostgreSQL: {chat.get('inbound')}")
        self.say("sms", f"{holder}, holding the chat link, claimed it (SKIP LOCKED, per number) and delivered it:"
                        f" conversation {self.conversation_id} on the chat server")

    async def reply(self) -> None:
        await self.chat_api("POST", f"/sim/conversations/{self.conversation_id}/messages", {"text": AGENT_REPLY})
        self.say("sms", f'an agent answers in the chat: "{AGENT_REPLY}"')

        async def sent():
            for node in NODES:
                code, data = await self.api(node, "GET", "/api/sms/sim/sent", expect=None)
                found = [s for s in (data or {}).get("sent", []) if s["to"] == CUSTOMER and s["text"] == AGENT_REPLY]
                if code == 200 and found:
                    return node, found[0]
            return None

        node, sms = await self.wait_until(sent, f"the reply sent as an SMS to {CUSTOMER}")
        self.say("sms", f"{node} sends the reply as SMS {sms['id']} to {CUSTOMER}")

    # -- drain

    async def drain(self) -> None:
        answer = await self.api("node-a", "POST", "/api/cluster/nodes/node-b/drain", expect=202)
        self.say("drain", f"gatewayctl drain node-b, through node-a: node {answer['node']} draining,"
                          f" {answer['live_calls']} live call(s)")

        async def draining():
            view = await self.api("node-a", "GET", "/api/cluster")
            return "node-b" in view["draining"]

        await self.wait_until(draining, "node-b draining in /api/cluster")
        self.say("drain", "node-a's /api/cluster lists node-b as draining: no new calls land there")

    # -- the end

    def stop(self) -> defer.Deferred:
        self.say("demo", "stopping the nodes, the simulator and the engines")
        self.narrator.muted = True
        stops = [p.stop() for p in self.nodes.values()]
        if self.chat.transport is not None:
            stops.append(self.chat.stop())
        d = defer.DeferredList([s.addErrback(lambda f: log.failure("stopping the cluster demo", f)) for s in stops])
        d.addCallback(lambda _: self.engines.stop())
        return d


def _arguments(argv):
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo_cluster",
        description="Run two gateway nodes as one cluster on a real Redis and PostgreSQL, and play a scenario"
                    " across them.",
    )
    parser.add_argument("--once", action="store_true",
                        help="play the scenario once and exit: 0 if every step happened, 1 otherwise")
    parser.add_argument("--workdir", default="var/cluster-demo", type=pathlib.Path,
                        help="where the configurations, state and logs go (default: var/cluster-demo)")
    return parser.parse_args(argv)


def _closing_words(demo: ClusterDemo, missing: list[str], out) -> None:
    print_missing("cluster demo", missing, out)
    if demo.once or not demo.nodes:
        return
    a, b = NODES
    print(f"\nThe cluster keeps running until Ctrl-C (or SIGTERM):\n"
          f"  status pages  {demo.admin_url(a)}  {demo.admin_url(b)}   (admin token: {demo.token})\n"
          f"  gatewayctl    gatewayctl --config {demo.config_path(b)} cluster   (calls, cdrs, drain {a}...)\n"
          f"  a call        curl -H 'Authorization: Bearer {demo.token}' -d '{{\"caller_id\": \"5550100\","
          f" \"did\": \"{AGENT_DID}\"}}' {demo.admin_url(a)}api/sim/inbound\n"
          f"  logs          {demo.workdir}/{a}/gateway.log  {demo.workdir}/{b}/gateway.log", file=out, flush=True)


async def _run(reactor, options) -> None:
    workdir = begin_logging(options.workdir)
    out = sys.stdout
    print(f"cluster demo: Redis, PostgreSQL and two gateway nodes on loopback; configurations and logs in {workdir}",
          file=out)
    narrator = Narrator(reactor, out)
    demo = ClusterDemo(reactor, workdir, narrator, once=options.once)
    # Ctrl-C or SIGTERM stops it (installed explicitly: a process started with SIGINT ignored would not get
    # Twisted's handler)
    await play(reactor, demo, narrator, out, closing_words=_closing_words, signals=(signal.SIGINT, signal.SIGTERM))


def main(argv=None) -> None:
    """Run the cluster demo; exits with its status."""
    from twisted.internet import task

    options = _arguments(argv)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(_run(reactor, options)))


if __name__ == "__main__":
    main()
