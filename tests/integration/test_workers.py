"""``[gateway] workers = 2``: a real parent twistd and its two real worker processes on loopback."""

import os
import signal
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from gateway.sim.optimaccs import CallScript, place_call
from gateway.testing import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(120)

ECHO_DID = "0210000200"


def _free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def admin_port_with_room(workers=2):
    """A free admin port whose next ``workers`` ports (the workers' admin APIs) are free too."""
    for _ in range(50):
        port = free_port()
        if port + workers < 65536 and all(_free(port + i) for i in range(1, workers + 1)):
            return port
    raise RuntimeError("no free run of admin ports")


class Workers:
    """The parent as a GatewayProcess, and its workers' admin APIs."""

    def __init__(self, processes, tmp_path, *, count=2, extra="", env=None):
        self.count = count
        self.admin = admin_port_with_room(count)
        self.optimaccs = free_port()
        config = GatewayProcess.config(self.admin, (
            f'[optimaccs]\nlisten = "tcp:{self.optimaccs}:interface=127.0.0.1"\nallow_from = ["127.0.0.1"]\n\n'
            f'[[routes]]\ndid = "{ECHO_DID}"\nto = "app:echo"\n\n{extra}'
        )).replace("[gateway]\n", f"[gateway]\nnode = \"edge\"\nworkers = {count}\n", 1)
        self.parent = GatewayProcess(reactor, tmp_path, config, env=env)
        self.parent.admin_port = self.admin
        processes.append(self.parent)
        self.url = f"ws://127.0.0.1:{self.optimaccs}/"

    def worker(self, index):
        api = GatewayProcess(reactor, self.parent.workdir)
        api.admin_port = self.admin + index
        return api

    @defer.inlineCallbacks
    def start(self, timeout=60.0):
        self.parent.spawn()
        yield wait_until(self.ready, "every worker ready", timeout=timeout, process=self.parent)
        return self

    @defer.inlineCallbacks
    def ready(self):
        import treq

        try:
            response = yield treq.get(f"http://127.0.0.1:{self.admin}/readyz", timeout=2)
            yield response.content()
        except Exception:
            return False
        return response.code == 200

    @defer.inlineCallbacks
    def workers(self):
        _, body = yield self.parent.api("GET", "/api/workers", expect=200)
        return body["workers"]

    @defer.inlineCallbacks
    def live_calls(self):
        """Worker index -> its live calls, from each worker's own admin API."""
        found = {}
        for index in range(1, self.count + 1):
            _, body = yield self.worker(index).api("GET", "/api/calls", expect=200)
            found[index] = body["calls"]
        return found


@defer.inlineCallbacks
def wait_until(predicate, what, timeout=30.0, process=None):
    for _ in range(int(timeout / 0.1)):
        if process is not None and process.ended.called:
            raise AssertionError(f"the gateway exited while waiting for {what}:\n{process.output[-5000:]}")
        result = yield predicate()
        if result:
            return result
        yield deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"timed out waiting for {what}:\n{process.output[-5000:] if process else ''}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@defer.inlineCallbacks
def _place(gateway, count, cleanup, prefix):
    calls = []
    for i in range(count):
        call = place_call(reactor, gateway.url, CallScript(caller_id=f"0811{prefix}{i:04d}", did=ECHO_DID))
        cleanup(lambda call=call: call.close(1000, "test over"))
        calls.append(call)
    yield defer.gatherResults([call.wait_for("answer") for call in calls])
    return calls


@pytest_twisted.inlineCallbacks
def test_two_workers_share_the_optimaccs_port_and_sigterm_stops_all_with_0(processes, cleanup, tmp_path):
    gateway = yield Workers(processes, tmp_path).start()
    workers = yield gateway.workers()
    assert [(w["index"], w["node"], w["state"]) for w in workers] == [(1, "edge-w1", "ready"), (2, "edge-w2", "ready")]
    pids = [w["pid"] for w in workers]
    assert len(set(pids)) == 2 and gateway.parent.transport.pid not in pids
    for index in (1, 2):  # each worker is a node of its own, with its own admin API
        _, health = yield gateway.worker(index).api("GET", "/healthz", expect=200)
    # the parent's own API: the workers' list wants the token; the calls are the workers' business
    yield gateway.parent.api("GET", "/api/workers", token="wrong-token-0123456789abcdef", expect=401)
    yield gateway.parent.api("GET", "/api/calls", expect=404)

    calls = yield _place(gateway, 20, cleanup, "1")
    live = yield wait_until(lambda: gateway.live_calls().addCallback(
        lambda found: found if sum(map(len, found.values())) == 20 else None), "20 live calls", process=gateway.parent)
    assert len(live[1]) > 0 and len(live[2]) > 0, {k: len(v) for k, v in live.items()}  # both workers took calls
    for call in calls:
        call.hangup()
    yield defer.gatherResults([call.ended for call in calls], consumeErrors=True)

    code = yield gateway.parent.stop()
    assert code == 0, gateway.parent.output[-3000:]
    assert "worker 1 (pid" in gateway.parent.output and "stopped: exit status 0" in gateway.parent.output
    assert gateway.parent.output.count("stopped: exit status 0") == 2
    for pid in pids:
        assert not _alive(pid)
    # with SQLite, each worker has its own store file
    assert os.path.exists(tmp_path / "var" / "gateway-w1.sqlite")
    assert os.path.exists(tmp_path / "var" / "gateway-w2.sqlite")
    assert "Traceback" not in gateway.parent.output


@pytest_twisted.inlineCallbacks
def test_a_killed_worker_is_restarted_and_the_port_keeps_accepting(processes, cleanup, tmp_path):
    gateway = yield Workers(processes, tmp_path).start()
    first = (yield gateway.workers())[0]
    os.kill(first["pid"], signal.SIGKILL)
    yield gateway.parent.wait_for_output(f"worker 1 (pid {first['pid']}) died: signal 9 (SIGKILL); restarting it in")
    # while worker 1 is away, the port still takes calls (worker 2 answers them)
    calls = yield _place(gateway, 5, cleanup, "2")
    assert len(calls) == 5
    restarted = yield wait_until(lambda: gateway.workers().addCallback(
        lambda ws: ws[0] if ws[0]["state"] == "ready" and ws[0]["pid"] != first["pid"] else None),
        "worker 1 restarted", process=gateway.parent)
    assert restarted["restarts"] == 1 and restarted["last_exit"] == "signal 9 (SIGKILL)"
    exits = yield gateway.parent.metric_sum("gateway_worker_exits_total", worker="1", cause="signal")
    restarts = yield gateway.parent.metric_sum("gateway_worker_restarts_total", worker="1")
    assert (exits, restarts) == (1, 1)
    # and the restarted worker takes calls again: new calls land on both workers
    more = yield _place(gateway, 20, cleanup, "3")
    live = yield wait_until(lambda: gateway.live_calls().addCallback(
        lambda found: found if sum(map(len, found.values())) == 25 else None), "25 live calls", process=gateway.parent)
    assert len(live[1]) > 0, {k: len(v) for k, v in live.items()}
    for call in calls + more:
        call.close(1000, "test over")
    assert (yield gateway.parent.stop()) == 0


@pytest_twisted.inlineCallbacks
def test_a_worker_that_cannot_start_stops_the_parent_with_1(processes, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        gateway = Workers(processes, tmp_path)
        taken = busy.getsockname()[1]
        text = open(gateway.parent.config_path).read().replace(f"tcp:{gateway.optimaccs}:", f"tcp:{taken}:")
        with open(gateway.parent.config_path, "w") as f:
            f.write(text)
        gateway.parent.spawn()
        code = yield gateway.parent.ended
    finally:
        busy.close()
    assert code == 1, gateway.parent.output[-3000:]
    assert f"cannot listen on tcp:{taken}:interface=127.0.0.1 (optimaccs)" in gateway.parent.output
    assert "ended during start: exit status 1; stopping" in gateway.parent.output


@pytest_twisted.inlineCallbacks
def test_a_second_gateway_on_the_same_admin_port_is_refused(processes, tmp_path):
    (tmp_path / "a").mkdir()
    gateway = yield Workers(processes, tmp_path / "a").start()
    second = GatewayProcess(reactor, tmp_path, open(gateway.parent.config_path).read())
    processes.append(second)
    second.spawn()
    assert (yield second.ended) == 1
    assert "a gateway may already be running" in second.output
    assert (yield gateway.parent.stop()) == 0


class _NotifyReceiver:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages = []

    def drain(self):
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages


@pytest_twisted.inlineCallbacks
def test_the_parent_is_the_systemd_notify_process(processes, tmp_path):
    receiver = _NotifyReceiver(str(tmp_path / "notify.sock"))
    try:
        gateway = Workers(processes, tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                                    "WATCHDOG_USEC": "400000"})
        gateway.parent.spawn()

        def got(needle):
            return lambda: defer.succeed(any(needle in m for m in receiver.drain()))

        yield wait_until(got("READY=1"), "READY=1", timeout=60, process=gateway.parent)
        for index in (1, 2):  # READY came only once every worker was serving
            _, body = yield gateway.worker(index).api("GET", "/healthz", expect=200)
        assert "all 2 workers ready" in gateway.parent.output
        yield wait_until(got("WATCHDOG=1"), "WATCHDOG=1", process=gateway.parent)
        # the workers talk to the parent, never to systemd: every datagram came from the parent
        assert not any("STOPPING" in m for m in receiver.messages)
        assert (yield gateway.parent.stop()) == 0
        yield wait_until(got("STOPPING=1"), "STOPPING=1")
        stopping = next(i for i, m in enumerate(receiver.messages) if "STOPPING=1" in m)
        ready = next(i for i, m in enumerate(receiver.messages) if "READY=1" in m)
        assert ready < stopping
        assert all(m in ("WATCHDOG=1",) for m in receiver.messages[stopping + 1:])
        assert sum("READY=1" in m for m in receiver.messages) == 1
    finally:
        receiver.sock.close()


@pytest_twisted.inlineCallbacks
def test_with_a_cluster_every_worker_joins_as_a_node(processes, cleanup, tmp_path, redis_server):
    gateway = yield Workers(processes, tmp_path, extra=(
        f'[cluster]\nredis = "{redis_server.url}"\nnode_ttl = 2.0\nlease_ttl = 2.0\ndrain_timeout = 5.0\n')).start()

    def both_nodes():
        return gateway.worker(2).api("GET", "/api/cluster").addCallback(
            lambda reply: reply[1] if reply[0] == 200 and
            [n["node"] for n in reply[1]["nodes"]] == ["edge-w1", "edge-w2"] else None)

    view = yield wait_until(both_nodes, "both workers in /api/cluster", process=gateway.parent)
    assert view["node"] == "edge-w2" and view["cluster"] is True
    calls = yield _place(gateway, 10, cleanup, "4")
    # every worker's calls API is cluster-wide: worker 1 lists the calls of both
    yield wait_until(lambda: gateway.worker(1).api("GET", "/api/calls", expect=200).addCallback(
        lambda reply: len(reply[1]["calls"]) == 10), "worker 1 listing the 10 calls", timeout=10, process=gateway.parent)
    for call in calls:
        call.hangup()
    yield defer.gatherResults([call.ended for call in calls], consumeErrors=True)
    assert (yield gateway.parent.stop()) == 0, gateway.parent.output[-3000:]
    assert gateway.parent.output.count("stopped: exit status 0") == 2


@pytest_twisted.inlineCallbacks
def test_workers_end_when_their_parent_is_killed(processes, tmp_path):
    gateway = yield Workers(processes, tmp_path).start()
    pids = [w["pid"] for w in (yield gateway.workers())]
    gateway.parent.kill()
    yield gateway.parent.ended

    def gone():
        return defer.succeed(not any(_alive(pid) for pid in pids))

    yield wait_until(gone, "the orphaned workers to end", timeout=30)
    with socket.socket() as s:  # nobody is left holding the shared port
        s.bind(("127.0.0.1", gateway.optimaccs))
