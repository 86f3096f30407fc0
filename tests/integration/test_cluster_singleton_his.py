"""kill -9 of the node holding the HIS link: another node holds it within 5 s, and the agent's live
call is announced to the bridge once. Real processes, a real Redis (the ``redis_server`` fixture),
the strict processor-bridge simulator on loopback (it records a second client link, an unanswered
request or a malformed message as a protocol violation).

Each node is this module run as a program (see :func:`main`): a :class:`ClusterNode` on the real
Redis, the call core on the simulated phone network, and the ``[cti]`` adapter built by its own
``make_service`` in cluster mode. (The daemon's ``[cluster]`` wiring in ``gateway/tap.py`` is
another part of issue 15; these nodes build the same parts by hand.) Node b carries alice's call
(extension 1003, a phone that rings until answered) while node a holds the HIS link; a is killed
with SIGKILL; b takes the link over and its channel init lists the call, once, without a second
announcement; the agent then answers it through b.

The lease TTL is 4 s here: a holder killed just after a renewal leaves its lease for a whole TTL,
then the standby's next try (0.5 s) takes it, so 4 s keeps the takeover within the issue's 5 s
whatever the moment of the kill (with the default 5 s it is within 5.5 s).
"""

import os
import signal
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from gateway.cluster.leases import lease_holder
from gateway.sim.his import HisBridgeSim
from tests.cluster.support import connected, start_client, until

pytestmark = pytest.mark.timeout(90)

LEASE_TTL = 4.0
CHANNEL = "alice.cg.tel"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Node(protocol.ProcessProtocol):
    """One node process; its stdout lines are kept, and waited for."""

    def __init__(self, name):
        self.name = name
        self.lines = []
        self.ended = defer.Deferred()
        self._buffer = b""

    def outReceived(self, data):
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        self.lines.extend(line.decode() for line in lines)

    def errReceived(self, data):
        sys.stderr.write(f"[node {self.name}] {data.decode(errors='replace')}")

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)

    def send(self, line):
        self.transport.write(line.encode() + b"\n")

    async def expect(self, prefix, timeout=20.0):
        await until(lambda: any(line.startswith(prefix) for line in self.lines), timeout,
                    f"node {self.name} saying {prefix!r}")
        return next(line for line in self.lines if line.startswith(prefix))

    def kill(self, sig=signal.SIGKILL):
        if self.transport is not None and self.transport.pid is not None:
            os.kill(self.transport.pid, sig)


def spawn(name, redis_url, his_port, cleanup):
    node = Node(name)
    args = [sys.executable, "-m", "tests.integration.test_cluster_singleton_his", name, redis_url, str(his_port),
            str(LEASE_TTL)]
    reactor.spawnProcess(node, sys.executable, args, env=dict(os.environ, PYTHONPATH=ROOT), path=ROOT)

    def stop():
        if not node.ended.called:
            node.kill()
            pytest_twisted.blockon(node.ended)

    cleanup(stop)
    return node


@pytest_twisted.ensureDeferred
async def test_kill_9_of_the_his_link_holder(redis_server, cleanup):
    sim = HisBridgeSim(reactor, agents=["alice"], response_timeout=10)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(sim)
    cleanup(lambda: pytest_twisted.blockon(defer.maybeDeferred(port.stopListening)))
    his_port = port.getHost().port
    redis = await connected(start_client(redis_server.url, cleanup))

    async def holder():
        found = await lease_holder(redis, "cti:PROC")
        return found.holder if found is not None else None

    a = spawn("a", redis_server.url, his_port, cleanup)
    await a.expect("joined")
    await until(lambda: sim.ready, 20, "node a's link to the bridge and alice's login")
    assert await holder() == "a"
    b = spawn("b", redis_server.url, his_port, cleanup)
    await b.expect("joined")
    await defer.ensureDeferred(_sleep(1.0))  # b campaigns and stands by
    assert await holder() == "a"

    # alice's call rings on node b (its phone rings until answered); the bridge is on node a
    b.send("ring 5551234 103")
    call_id = (await b.expect("ringing ")).split()[1]
    before = len(sim.event_log)

    a.kill()
    killed = time.monotonic()
    await a.ended
    while await holder() != "b":
        assert time.monotonic() - killed < 5.0, "node b did not hold the HIS link within 5 s"
        await defer.ensureDeferred(_sleep(0.05))
    took = time.monotonic() - killed
    await until(lambda: sim.ready and f"{CHANNEL}.{call_id}.primary" in sim.destinations, 10,
                "node b's link, alice's login and her call listed")
    print(f"node b held the HIS link {took:.2f} s after node a was killed")

    # listed once in the channel's init, and not announced a second time
    assert list(sim.destinations[CHANNEL].init.interactions) == [call_id]
    new = [(e.target, e.name) for e in sim.event_log[before:]]
    assert (CHANNEL, "channel.interaction") not in new
    conversation = f"{CHANNEL}.{call_id}.primary"
    assert sim.destinations[conversation].init.state == "RINGING"

    # the agent answers it through node b
    response = await sim.send("accept", target=f"{CHANNEL}.{call_id}")
    assert response.ok, response.describe()
    await until(lambda: "conversation.talking" in sim.event_names(conversation), 5, "the call talking")
    assert sim.violations == []

    b.kill(signal.SIGTERM)
    await b.ended


def _sleep(seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


# -- a node, as a program ------------------------------------------------------------------------

NODE_CONFIG = """
[[extensions]]
id = "1003"
name = "Alice"
device = "sim:manual"

[[routes]]
did = "103"
to = "extension:1003"

[cti]
enabled = true
connect = "tcp:host=127.0.0.1:port={port}"
reconnect_initial = 0.2
reconnect_max = 0.5
agents = [{{agent = "alice", extension = "1003"}}]
"""


async def _run_node(reactor, name, redis_url, his_port, lease_ttl):
    import pathlib
    import tempfile

    from prometheus_client import CollectorRegistry
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    from gateway.cluster.config import ClusterConfig
    from gateway.cluster.node import ClusterNode
    from gateway.config import loads
    from gateway.context import Context
    from gateway.core.registry import Registry
    from gateway.core.routing import Router
    from gateway.cti.service import make_service
    from gateway.drivers.config import SimNetworkConfig
    from gateway.drivers.sim import SimNetwork

    class ClusterContext(Context):
        cluster = None

    def say(line):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    config = loads(NODE_CONFIG.format(port=his_port), "node.toml")
    network = SimNetwork(reactor, SimNetworkConfig(audio="silence", ring_time=0.3))
    registry = Registry(reactor, {"sim": network}, extensions=config.extensions, router=Router(config.routes, {}))
    network.wire(registry)
    ctx = ClusterContext(reactor=reactor, config=config, state_dir=pathlib.Path(tempfile.mkdtemp()),
                         metrics=CollectorRegistry())
    ctx.registry = registry
    ctx.cluster = ClusterNode(
        reactor, ClusterConfig(redis=redis_url, node_ttl=lease_ttl, lease_ttl=lease_ttl), name,
        handler=lambda command, args: None, on_node_lost=lambda record: None,
        on_joined=lambda node: say("joined"),
    )
    ctx.cluster.startService()
    cti = make_service(ctx)
    cti.startService()

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            words = line.decode().split()
            if words[:1] == ["ring"]:
                network.place_inbound(words[1], words[2])
                say(f"ringing {registry.active_call_for('1003').call_id}")

    stdio.StandardIO(Commands(), reactor=reactor)
    stopped = defer.Deferred()
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(stopped.callback, None))
    await stopped
    await cti.stopService()
    await ctx.cluster.stopService()


def main(argv):
    from twisted.internet import task

    name, redis_url, his_port, lease_ttl = argv
    task.react(lambda reactor: defer.ensureDeferred(_run_node(reactor, name, redis_url, int(his_port),
                                                              float(lease_ttl))))


if __name__ == "__main__":
    main(sys.argv[1:])
