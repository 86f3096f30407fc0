"""Cluster benchmark: routed command latency, the cluster's cost per call setup, and workers' capacity.

``python -m bench cluster`` measures issue 15's targets in one run, on a real ``redis-server`` and a real
PostgreSQL started in temporary directories (``tests/engines.py``; ``make engines`` installs them), with
real daemons (``twistd -n gateway``, :class:`gateway.testing.GatewayProcess`) on loopback ports. The
cases (``--cases``, default all):

- **latency**: two nodes ``a`` and ``b`` with ``[cluster]`` on the one Redis and ``[store]`` on one
  PostgreSQL database, the simulated network, ``--calls`` extensions whose simulated phones answer at
  once. ``--batches`` batches of ``--calls`` calls per side, the sides taking turns, each batch placed
  on node a (``POST /api/sim/inbound`` there, so their media is on a) and waited for until a says
  TALKING and b lists them naming node a:

  - *via b*: ``--pairs`` rounds of hold then retrieve of every call, one command at a time, sent to
    b's admin API (b routes each to a), then a hangup of every call through b (the issue's command);
  - *on a* (the floor): the same commands sent to a's admin API, which runs them locally.

  Each command is timed end to end in this process (the HTTP request to the answer). For the batch
  via b, b's ``gateway_cluster_routed_command_seconds`` histogram (``/metrics``) is read before and
  after: the routed part alone (b sending the command on Redis to a's answer). Its p50/p99 are
  interpolated within the histogram's buckets (as Prometheus' ``histogram_quantile`` does), beside the
  mean (its sum over its count). The target: a cross-node command's p99 < 10 ms on loopback.
- **setup**: the cost of a call set up and torn down, on four daemons, one after the other: one
  process on SQLite (the default), one process on PostgreSQL, ``[cluster]`` (a node alone in its
  cluster) on SQLite, and ``[cluster]`` on PostgreSQL. Each first idles ``--idle-seconds`` (the
  background: heartbeats, the records read every second), then sets up ``--setup-calls`` calls,
  ``--setup-concurrency`` at a time: a simulated caller dials an extension whose phone answers at once,
  and hangs up 0.1 s after the answer; the next round starts once ``/api/calls`` is empty, and the
  window ends once ``/api/cdrs`` holds every CDR. Reported per call, with the idle window's rate over
  the same time taken off: the daemon's CPU (user + system, ``/proc``; it includes answering the
  bench's admin requests, the same for all four), Redis' and PostgreSQL's own CPU, and the Redis
  commands (``INFO commandstats`` after minus before: the commands run inside a script count too, as
  Redis counts them). Then, with ``[cluster]``, the round trips, that is the commands the daemon sent:
  a ``MONITOR`` connection tells a client's commands from a script's, but costs Redis much CPU, so it
  watches a second pass of at most 100 calls (after an idle window of its own), not the measured one.
- **workers**: bench/optimaccs_echo.py's capacity case against the daemon with ``[gateway] workers =
  1``, then ``workers = 2`` (the same code as ``python -m bench optimaccs-echo --cases capacity --servers
  gateway --workers N``, with the ``--capacity-*`` and ``--phases`` options here), and their ratio. The
  target: at least 1.8 times the calls at p99 < 20 ms with no frame lost.

Nothing is left running: the daemons get SIGTERM (SIGKILL if they linger), the engines are stopped and
their directories removed, also when the run is interrupted.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pathlib
import sys
import tempfile
import time
import types

from twisted.internet import defer, protocol, task
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver

CASES = ("latency", "setup", "workers")
#: the routed command latency the issue asks for (p99, on loopback)
TARGET_P99_MS = 10.0
#: workers = 2 should carry at least this many times the calls of workers = 1
TARGET_WORKERS_RATIO = 1.8
EXTENSION_BASE = 3000
DID_BASE = "02190"
POLL = 0.05
HISTOGRAM = "gateway_cluster_routed_command_seconds"
#: the setup case's round trips are counted on a second pass of at most this many calls (under MONITOR)
MONITORED_CALLS = 100
#: one page of /api/cdrs (gateway.store.MAX_LIMIT): the setup case's calls per daemon at most
MAX_CDRS = 1000

NODE_CONFIG = """\
[cluster]
redis = "{redis}"
node_ttl = 3.0
lease_ttl = 3.0
drain_timeout = 2.0
"""

SIM_CONFIG = """\
[pbx.sim]
phone_answer_delay = 0.0
ring_time = 0.1
audio = "silence"
"""


def _sleep(reactor, seconds: float):
    return deferLater(reactor, seconds, lambda: None)


def _extension(i: int) -> str:
    return str(EXTENSION_BASE + i)


def _did(i: int) -> str:
    return f"{DID_BASE}{i:05d}"


def _directory(count: int) -> str:
    """``count`` extensions whose simulated phones answer at once, each with its own DID."""
    return "".join(
        f'[[extensions]]\nid = "{_extension(i)}"\nname = "Bench {i}"\ndevice = "sim"\n\n'
        f'[[routes]]\ndid = "{_did(i)}"\nto = "extension:{_extension(i)}"\n\n'
        for i in range(count))


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"count": len(ordered), "p50_ms": _percentile(ordered, 0.50) * 1e3,
            "p99_ms": _percentile(ordered, 0.99) * 1e3, "max_ms": (ordered[-1] * 1e3) if ordered else float("nan")}


# -- the engines and the daemons ----------------------------------------------------------------------

class Engines:
    """Redis and PostgreSQL in temporary directories, started on first use (blocking, about a second)."""

    def __init__(self):
        self.redis = None
        self.postgres = None
        self._databases = 0

    def start_redis(self):
        if self.redis is None:
            from tests.engines import RedisServer

            self.redis = RedisServer()  # kept before it starts, so that stop() removes its directory
            self.redis.start()
        return self.redis

    def database(self) -> str:
        """A fresh PostgreSQL database's URL."""
        if self.postgres is None:
            from tests.engines import PostgresServer

            self.postgres = PostgresServer()
            self.postgres.start()
        self._databases += 1
        return self.postgres.create_database(f"bench_cluster_{os.getpid()}_{self._databases}")

    def stop(self) -> None:
        for engine in (self.redis, self.postgres):
            if engine is not None:
                engine.cleanup()
        self.redis = self.postgres = None


class Daemons:
    """The gateway daemons of a run: started with their log in a file, all stopped at the end."""

    def __init__(self, reactor, workdir: str):
        self.reactor = reactor
        self.workdir = workdir
        self.running = []

    @defer.inlineCallbacks
    def start(self, name: str, extra: str, *, node: str | None = None, store_url: str | None = None):
        from gateway.testing import GatewayProcess, free_port

        home = tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir)
        admin = free_port()
        config = GatewayProcess.config(admin, extra)
        if node is not None:
            config = config.replace("[gateway]\n", f'[gateway]\nnode = "{node}"\n', 1)
        if store_url is not None:
            config = config.replace('url = "sqlite:var/gateway.sqlite"', f'url = "{store_url}"', 1)
        log = os.path.join(home, "gateway.log")
        daemon = GatewayProcess(self.reactor, home, config, args=["--logfile", log])
        self.running.append(daemon)
        try:
            yield daemon.start(admin)
            started = time.monotonic()
            while True:  # ready: in the cluster, the store open
                code, body = yield daemon.api("GET", "/readyz", token=None)
                if code == 200:
                    break
                if daemon.ended.called or time.monotonic() - started > 60:
                    raise RuntimeError(f"{name} not ready in 60 s: {body}")
                yield _sleep(self.reactor, 0.1)
        except BaseException:
            if os.path.exists(log):
                sys.stderr.write(f"{name}'s log:\n{pathlib.Path(log).read_text(errors='replace')[-4000:]}\n")
            raise
        daemon.pid = daemon.transport.pid
        return daemon

    @defer.inlineCallbacks
    def stop(self, daemon) -> defer.Deferred:
        if daemon in self.running:
            self.running.remove(daemon)
            yield daemon.stop(timeout=15)

    @defer.inlineCallbacks
    def stop_all(self):
        for daemon in list(self.running):
            yield self.stop(daemon)

    def kill_all(self) -> None:
        for daemon in self.running:
            daemon.kill()


@defer.inlineCallbacks
def _api(daemon, method: str, path: str, body=None, expect: int = 200):
    code, data = yield daemon.api(method, path, body)
    if code != expect:
        raise RuntimeError(f"{method} {path}: {code} {data}")
    return data


@defer.inlineCallbacks
def _wait(reactor, probe, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = yield probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout:g} s")
        yield _sleep(reactor, POLL)


# -- the latency case ---------------------------------------------------------------------------------

@defer.inlineCallbacks
def _histogram(daemon, name: str = HISTOGRAM):
    """``{"buckets": [(le, cumulative count)], "sum": s, "count": n}`` of a label-less histogram."""
    import treq

    response = yield treq.get(f"http://127.0.0.1:{daemon.admin_port}/metrics", timeout=10)
    text = yield response.text()
    buckets, total, count = [], 0.0, 0.0
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            labels, _, value = line.rpartition(" ")
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(value)))
        elif line.startswith(name + "_sum "):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_count "):
            count = float(line.rsplit(" ", 1)[1])
    return {"buckets": sorted(buckets), "sum": total, "count": count}


def _histogram_delta(before: dict, after: dict) -> dict:
    earlier = dict(before["buckets"])
    return {"buckets": [(le, n - earlier.get(le, 0.0)) for le, n in after["buckets"]],
            "sum": after["sum"] - before["sum"], "count": after["count"] - before["count"]}


def _histogram_sum(one: dict, other: dict) -> dict:
    more = dict(other["buckets"])
    return {"buckets": [(le, n + more.get(le, 0.0)) for le, n in one["buckets"]],
            "sum": one["sum"] + other["sum"], "count": one["count"] + other["count"]}


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The ``q`` quantile of cumulative ``buckets`` (upper bound, count), interpolated linearly within
    the bucket where it falls (Prometheus' ``histogram_quantile``); the last finite bound if it falls in
    ``+Inf``; NaN without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(le):
                return lower
            if cumulative == below:
                return le
            return lower + (le - lower) * (rank - below) / (cumulative - below)
        lower, below = le, cumulative
    return lower


def bucket_bound(q: float, buckets: list[tuple[float, float]]) -> float:
    """The upper bound of the bucket where the ``q`` quantile falls (``inf`` past the last finite one)."""
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    return next(le for le, cumulative in buckets if cumulative >= rank)


@defer.inlineCallbacks
def _place_calls(reactor, a, b, count: int):
    """``count`` calls on node a, each to its own extension; fires with their ids once a says TALKING
    and b lists every one of them naming node a."""
    ids = []
    for i in range(count):
        call = yield _api(a, "POST", "/api/sim/inbound", {"caller_id": f"0811{i:06d}", "did": _did(i)}, expect=201)
        ids.append(call["call_id"])
    wanted = set(ids)

    @defer.inlineCallbacks
    def talking(daemon, node):
        calls = (yield _api(daemon, "GET", "/api/calls"))["calls"]
        seen = {c["call_id"] for c in calls if c["state"] == "TALKING" and c.get("node", node) == "a"}
        return wanted <= seen

    yield _wait(reactor, lambda: talking(a, "a"), f"{count} calls talking on node a")
    yield _wait(reactor, lambda: talking(b, "b"), f"{count} calls of node a seen talking from node b")
    return ids


@defer.inlineCallbacks
def _commands(sender, ids: list[str], pairs: int):
    """Hold/retrieve pairs then a hangup of every call, one command at a time, sent to ``sender``."""
    times = {"hold": [], "retrieve": [], "hangup": []}
    for _ in range(pairs):
        for call_id in ids:
            for action in ("hold", "retrieve"):
                start = time.perf_counter()
                yield _api(sender, "POST", f"/api/calls/{call_id}/{action}")
                times[action].append(time.perf_counter() - start)
    for call_id in ids:
        start = time.perf_counter()
        yield _api(sender, "POST", f"/api/calls/{call_id}/hangup")
        times["hangup"].append(time.perf_counter() - start)
    return times


@defer.inlineCallbacks
def _settled(reactor, *daemons):
    """Wait until no daemon lists a live call (every node's view included)."""
    @defer.inlineCallbacks
    def empty():
        for daemon in daemons:
            if (yield _api(daemon, "GET", "/api/calls"))["calls"]:
                return False
        return True

    yield _wait(reactor, empty, "end of every call on every node")


@defer.inlineCallbacks
def latency(reactor, engines: Engines, daemons: Daemons, options):
    redis = engines.start_redis()
    redis.flush()
    store = engines.database()
    extra = NODE_CONFIG.format(redis=redis.url) + "\n" + SIM_CONFIG + "\n" + _directory(options.calls)
    a = yield daemons.start("node-a", extra, node="a", store_url=store)
    b = yield daemons.start("node-b", extra, node="b", store_url=store)
    try:
        @defer.inlineCallbacks
        def both():
            view = yield _api(b, "GET", "/api/cluster")
            return len(view.get("nodes", [])) == 2

        yield _wait(reactor, both, "both nodes in node b's /api/cluster")
        # warm-up: one call through the whole path on each side (connections, caches, the first import)
        ids = yield _place_calls(reactor, a, b, 1)
        yield _commands(b, ids, 1)
        yield _settled(reactor, a, b)
        ids = yield _place_calls(reactor, a, b, 1)
        yield _commands(a, ids, 1)
        yield _settled(reactor, a, b)

        via_b = {"hold": [], "retrieve": [], "hangup": []}
        on_a = {"hold": [], "retrieve": [], "hangup": []}
        routed = None
        for _ in range(options.batches):  # the two sides take turns, so that both meet the same moments
            ids = yield _place_calls(reactor, a, b, options.calls)
            before = yield _histogram(b)
            for action, samples in (yield _commands(b, ids, options.pairs)).items():
                via_b[action] += samples
            delta = _histogram_delta(before, (yield _histogram(b)))
            routed = delta if routed is None else _histogram_sum(routed, delta)
            yield _settled(reactor, a, b)
            ids = yield _place_calls(reactor, a, b, options.calls)
            for action, samples in (yield _commands(a, ids, options.pairs)).items():
                on_a[action] += samples
            yield _settled(reactor, a, b)
    finally:
        yield daemons.stop(b)
        yield daemons.stop(a)
    return {
        "via_b": {action: _summary(samples) for action, samples in via_b.items()},
        "on_a": {action: _summary(samples) for action, samples in on_a.items()},
        "via_b_all": _summary([t for samples in via_b.values() for t in samples]),
        "on_a_all": _summary([t for samples in on_a.values() for t in samples]),
        "routed": {
            "count": int(routed["count"]),
            "p50_ms": histogram_quantile(0.50, routed["buckets"]) * 1e3,
            "p99_ms": histogram_quantile(0.99, routed["buckets"]) * 1e3,
            "mean_ms": routed["sum"] / routed["count"] * 1e3 if routed["count"] else float("nan"),
            "buckets": routed["buckets"],
        },
    }


# -- the setup case -----------------------------------------------------------------------------------

def _cpu(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (0 for None); a child that ended
    meanwhile (a PostgreSQL backend) is left out, not an error."""
    if pid is None:
        return 0.0
    from bench.optimaccs_echo import _tree

    total = 0
    for each in _tree(pid):
        try:
            fields = pathlib.Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _commandstats(redis) -> dict[str, int]:
    """Redis' calls per command so far (the bench's own INFO left out)."""
    counts = {}
    for line in redis.command("INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_"):].partition(":")
            counts[name] = int(dict(f.split("=", 1) for f in fields.split(","))["calls"])
    counts.pop("info", None)
    return counts


class _Monitor(LineReceiver):
    """A ``MONITOR`` connection: counts the commands clients send and those scripts run, by name."""

    delimiter = b"\r\n"
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self):
        self.clients: dict[str, int] = {}
        self.scripts: dict[str, int] = {}
        self.ready = defer.Deferred()

    def connectionMade(self):
        self.sendLine(b"MONITOR")

    def lineReceived(self, line: bytes):
        if line == b"+OK":
            if not self.ready.called:
                self.ready.callback(self)
            return
        head, _, rest = line.partition(b"] ")
        source = head.partition(b"[")[2].partition(b" ")[2]
        command = rest.partition(b'"')[2].partition(b'"')[0].decode("ascii", "replace").lower()
        if command in ("info", "monitor"):
            return
        counts = self.scripts if source == b"lua" else self.clients
        counts[command] = counts.get(command, 0) + 1

    def take(self) -> tuple[dict[str, int], dict[str, int]]:
        counts = (self.clients, self.scripts)
        self.clients, self.scripts = {}, {}
        return counts


def _rates(counts: dict[str, int], seconds: float) -> dict[str, float]:
    return {k: v / seconds for k, v in counts.items()}


def _less(counts: dict[str, int], rates: dict[str, float], seconds: float, calls: int) -> dict[str, float]:
    """Per call: ``counts`` less the background ``rates`` over ``seconds``."""
    names = set(counts) | set(rates)
    return {name: (counts.get(name, 0) - rates.get(name, 0.0) * seconds) / calls for name in sorted(names)}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


SETUP_VARIANTS = (
    ("one process, SQLite", False, False),
    ("one process, PostgreSQL", False, True),
    ("[cluster], SQLite", True, False),
    ("[cluster], PostgreSQL", True, True),
)


@defer.inlineCallbacks
def _calls(reactor, daemon, options, count: int, stored_before: int):
    """``count`` calls set up and torn down, ``--setup-concurrency`` at a time; fires once the store
    holds every one's CDR, with the number of CDRs it holds."""
    placed = 0
    while placed < count:
        batch = min(options.setup_concurrency, count - placed)
        yield defer.gatherResults([
            _api(daemon, "POST", "/api/sim/inbound",
                 {"caller_id": f"0812{stored_before + placed + i:06d}", "did": _did(i), "hang_up_after": 0.1},
                 expect=201)
            for i in range(batch)], consumeErrors=True)
        placed += batch
        yield _settled(reactor, daemon)

    @defer.inlineCallbacks
    def stored():
        cdrs = (yield _api(daemon, "GET", f"/api/cdrs?limit={MAX_CDRS}"))["cdrs"]
        return len(cdrs) >= stored_before + count and len(cdrs)

    return (yield _wait(reactor, stored, f"{stored_before + count} CDRs"))


@defer.inlineCallbacks
def _setup_one(reactor, engines: Engines, daemons: Daemons, options, index: int, cluster: bool, postgres: bool):
    redis = engines.start_redis()
    redis.flush()
    extra = SIM_CONFIG + "\n" + _directory(options.setup_concurrency)
    if cluster:
        extra = NODE_CONFIG.format(redis=redis.url) + "\n" + extra
    store = engines.database() if postgres else None
    daemon = yield daemons.start(f"setup-{index}", extra, node=f"setup-{index}" if cluster else None, store_url=store)
    redis_pid = redis.proc.pid if cluster else None
    postgres_pid = engines.postgres.proc.pid if postgres else None
    calls = options.setup_calls
    monitor = None

    def sample():
        return (time.perf_counter(), (_cpu(daemon.pid), _cpu(redis_pid), _cpu(postgres_pid)),
                _commandstats(redis) if cluster else {})

    try:
        yield _sleep(reactor, 1.0)  # the fresh daemon settles
        # the idle window (the background: CPU and Redis commands per second), then the calls
        idle0 = sample()
        yield _sleep(reactor, options.idle_seconds)
        idle1 = sample()
        stored = yield _calls(reactor, daemon, options, calls, 0)
        done = sample()
        if cluster:
            # The round trips, on a MONITOR connection (which tells a client's commands from a script's).
            # MONITOR costs Redis much CPU, so it watches a second, smaller pass, not the measured one.
            from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

            monitor = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", redis.port), _Monitor())
            yield monitor.ready.addTimeout(10, reactor)
            start = time.perf_counter()
            yield _sleep(reactor, options.idle_seconds)
            watched_idle = time.perf_counter() - start
            idle_clients, idle_scripts = monitor.take()
            watched = min(calls, MONITORED_CALLS)
            start = time.perf_counter()
            yield _calls(reactor, daemon, options, watched, stored)
            watched_window = time.perf_counter() - start
            clients, scripts = monitor.take()
    finally:
        if monitor is not None:
            monitor.transport.loseConnection()
        yield daemons.stop(daemon)
    idle, window = idle1[0] - idle0[0], done[0] - idle1[0]
    idle_cpu = [(after - before) / idle for before, after in zip(idle0[1], idle1[1])]
    cpu_ms = [((after - before) - rate * window) / calls * 1e3
              for before, after, rate in zip(idle1[1], done[1], idle_cpu)]
    result = {
        "calls": calls, "seconds": window, "idle_seconds": idle, "cdrs": stored,
        "daemon_cpu_ms": cpu_ms[0], "redis_cpu_ms": cpu_ms[1] if cluster else None,
        "postgres_cpu_ms": cpu_ms[2] if postgres else None,
        "idle_daemon_cpu_share": idle_cpu[0],
    }
    if cluster:
        background = _rates(_delta(idle1[2], idle0[2]), idle)
        commands = _less(_delta(done[2], idle1[2]), background, window, calls)
        result["commands"] = {k: v for k, v in commands.items() if abs(v) >= 0.005}
        result["idle_commands_per_s"] = sum(background.values())
        result["monitored_calls"] = watched
        result["round_trips"] = _less(clients, _rates(idle_clients, watched_idle), watched_window, watched)
        result["in_scripts"] = _less(scripts, _rates(idle_scripts, watched_idle), watched_window, watched)
    return result


@defer.inlineCallbacks
def setup(reactor, engines: Engines, daemons: Daemons, options):
    rows = {}
    for index, (name, cluster, postgres) in enumerate(SETUP_VARIANTS):
        try:
            rows[name] = yield _setup_one(reactor, engines, daemons, options, index, cluster, postgres)
        except Exception as e:  # one variant failing does not lose the others
            rows[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
        sys.stderr.write(f"setup {name}: {rows[name]}\n")
    return rows


# -- the workers case ---------------------------------------------------------------------------------

@defer.inlineCallbacks
def workers(reactor, engines: Engines, daemons: Daemons, options):
    from bench import optimaccs_echo as echo

    echo_options = types.SimpleNamespace(
        phases=options.phases, capacity_seconds=options.capacity_seconds, capacity_warmup=options.capacity_warmup,
        capacity_start=options.capacity_start, capacity_step=options.capacity_step,
        capacity_max=options.capacity_max, capacity_tries=options.capacity_tries)
    rows = {}
    trigger = reactor.addSystemEventTrigger("before", "shutdown", echo._emergency_cleanup)
    gc.collect()  # what the cases before left, collected now rather than in a measured window
    gc.disable()  # as optimaccs-echo does while it measures
    try:
        for count in (1, 2):
            try:
                server = yield echo._gateway(reactor, daemons.workdir, count)
                try:
                    rows[count] = yield echo.capacity(reactor, server, echo_options)
                finally:
                    yield server.stop()
            except Exception as e:
                rows[count] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
            sys.stderr.write(f"workers {count}: {rows[count]}\n")
            gc.collect()
    finally:
        gc.enable()
        echo._emergency_cleanup()
        reactor.removeSystemEventTrigger(trigger)
    return rows


CASE_FUNCTIONS = {"latency": latency, "setup": setup, "workers": workers}


# -- the report ---------------------------------------------------------------------------------------

def _ms(value) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def _counts(per_call: dict[str, float]) -> str:
    shown = [(k, v) for k, v in sorted(per_call.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.05]
    return ", ".join(f"{k.upper()} {v:.2f}" for k, v in shown) or "none"


def report(results: dict, options) -> str:
    from bench.media_bench import machine

    lines = [f"Machine: {machine()}; load average at start {options.load_at_start:.2f}"]
    if "latency" in results:
        r = results["latency"]
        lines += ["", "### Command latency across nodes",
                  f"Nodes a and b on one Redis and one PostgreSQL; {options.batches} batches per side (taking "
                  f"turns) of {options.calls} calls with their media on a; in each, {options.pairs} rounds of hold "
                  f"then retrieve of each call, then a hangup of each, one command at a time. End to end: the "
                  f"admin API request timed in the bench. Routed part: node b's "
                  f"{HISTOGRAM} histogram over the same commands (p50/p99 interpolated within its buckets). "
                  f"Target: cross-node p99 < {TARGET_P99_MS:g} ms\n"]
        if "error" in r:
            lines.append(f"error: {r['error']}")
        else:
            lines += ["| command | sent to | commands | p50 ms | p99 ms | max ms |", "|---|---|---:|---:|---:|---:|"]
            for key, where in (("via_b", "b (routed to a), end to end"), ("on_a", "a (local: the floor)")):
                for action in ("hold", "retrieve", "hangup"):
                    s = r[key][action]
                    lines.append(f"| {action} | {where} | {s['count']:,} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} "
                                 f"| {_ms(s['max_ms'])} |")
                s = r[f"{key}_all"]
                lines.append(f"| all | {where} | {s['count']:,} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} "
                             f"| {_ms(s['max_ms'])} |")
            routed = r["routed"]
            lines.append(f"| all | b -> a, routed part ({HISTOGRAM}) | {routed['count']:,} | {_ms(routed['p50_ms'])} "
                         f"| {_ms(routed['p99_ms'])} | - |")
            bounds = ", ".join(f"≤{le * 1e3:g} ms: {int(n):,}" for le, n in routed["buckets"] if not math.isinf(le))
            bucket = bucket_bound(0.99, routed["buckets"])
            hangup, every = r["via_b"]["hangup"]["p99_ms"], r["via_b_all"]["p99_ms"]
            lines += ["", f"Routed part: mean {_ms(routed['mean_ms'])} ms; its p99 is in the bucket "
                          f"≤ {bucket * 1e3:g} ms; cumulative buckets: {bounds}",
                      f"Target, cross-node p99 < {TARGET_P99_MS:g} ms: the hangup from b, end to end, "
                      f"{_ms(hangup)} ms: {'met' if hangup < TARGET_P99_MS else 'NOT met'}; every command from b, "
                      f"end to end, {_ms(every)} ms: {'met' if every < TARGET_P99_MS else 'NOT met'}; "
                      f"the routed part's "
                      f"p99 ≤ {bucket * 1e3:g} ms: "
                      f"{'met' if bucket <= TARGET_P99_MS / 1e3 else 'not shown by the buckets'}"]
    if "setup" in results:
        rows = results["setup"]
        rows = {"all": rows} if "error" in rows else rows
        lines += ["", "### Call setup cost",
                  f"{options.setup_calls} calls per daemon, {options.setup_concurrency} at a time (a simulated caller "
                  f"dials an extension whose phone answers at once, and hangs up 0.1 s later), until every CDR is "
                  f"stored. Per call, less the background measured over {options.idle_seconds:g} s idle before: "
                  f"CPU ms of the daemon (with its admin API answering the bench), of redis-server and of "
                  f"PostgreSQL; Redis commands (INFO commandstats, script-inner ones included); round trips "
                  f"(the commands the daemon sent, from MONITOR, over a second pass of at most {MONITORED_CALLS} "
                  f"calls)\n",
                  "| daemon | calls | CDRs | daemon CPU ms/call | extra vs one process, SQLite | Redis CPU ms/call "
                  "| PostgreSQL CPU ms/call | Redis commands/call | Redis round trips/call | idle daemon CPU |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        base = rows.get(SETUP_VARIANTS[0][0], {}).get("daemon_cpu_ms")
        for name, r in rows.items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error'].replace('|', '/')} |" + " |" * 8)
                continue
            extra = f"{r['daemon_cpu_ms'] - base:+.2f}" if base is not None and name != SETUP_VARIANTS[0][0] else "-"
            commands = f"{sum(r['commands'].values()):.2f}" if "commands" in r else "-"
            trips = f"{sum(r['round_trips'].values()):.2f}" if "round_trips" in r else "-"
            lines.append(f"| {name} | {r['calls']:,} | {r['cdrs']:,} | {_ms(r['daemon_cpu_ms'])} | {extra} "
                         f"| {_ms(r['redis_cpu_ms'])} | {_ms(r['postgres_cpu_ms'])} | {commands} | {trips} "
                         f"| {r['idle_daemon_cpu_share']:.1%} |")
        for name, r in rows.items():
            if "commands" in r:
                lines += ["", f"{name}, per call: round trips by command: {_counts(r['round_trips'])}; "
                              f"run inside scripts: {_counts(r['in_scripts'])}; "
                              f"commandstats: {_counts(r['commands'])}; "
                              f"idle: {r['idle_commands_per_s']:.1f} Redis commands/s"]
    if "workers" in results:
        rows = results["workers"]
        rows = {"-": rows} if "error" in rows else rows
        lines += ["", "### Workers",
                  f"bench/optimaccs_echo.py's capacity case against the gateway with [gateway] workers = 1, then 2: "
                  f"the largest number of calls with p99 < 20 ms and no frame lost over {options.capacity_seconds:g} s "
                  f"after {options.capacity_warmup:g} s warm-up; from {options.capacity_start} calls doubling, then "
                  f"bisecting to {options.capacity_step}, at most {options.capacity_max}; a step passes when one of "
                  f"{options.capacity_tries} tries does; the connections in {options.phases} phases. "
                  f"Steps: calls, then each try: ok, or its p99 ms/frames lost\n",
                  "| workers | calls | steps | generator CPU (most) |", "|---:|---:|---|---:|"]
        for count, r in rows.items():
            if "error" in r:
                lines.append(f"| {count} | error: {r['error'].replace('|', '/')} | | |")
                continue
            steps = ", ".join(f"{s['calls']} " + " then ".join(
                "ok" if t["passed"] else t["error"] if "error" in t else f"p99 {t['p99_ms']:.1f}/{t['lost']:,} lost"
                for t in s["tries"]) for s in r["steps"])
            lines.append(f"| {count} | {'≥' if r['capped'] else ''}{r['calls']} | {steps} "
                         f"| {r['generator_cpu_share']:.0%} |")
        one, two = rows.get(1, {}).get("calls"), rows.get(2, {}).get("calls")
        if one and two is not None:
            ratio = two / one
            if rows[1].get("capped"):
                verdict = "not decided: workers = 1 reached --capacity-max (raise it)"
            elif ratio >= TARGET_WORKERS_RATIO:
                verdict = "met"
            elif rows[2].get("capped"):
                verdict = "not decided: workers = 2 reached --capacity-max (raise it)"
            else:
                verdict = "NOT met"
            capped = " (workers = 2 reached --capacity-max: at least this)" if rows[2].get("capped") else ""
            lines += ["", f"workers = 2 / workers = 1: {ratio:.2f}{capped}; "
                          f"target ≥ {TARGET_WORKERS_RATIO:g}: {verdict}"]
    return "\n".join(lines)


# -- the command line ---------------------------------------------------------------------------------

def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    wrong = [name for name in names if name not in CASES]
    if wrong or not names:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(CASES)}, got {text!r}")
    return [name for name in CASES if name in names]


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
        return value
    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cluster", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--cases", type=_names, default=list(CASES), help="cases to run (default all: latency,setup,workers)")
    add("--calls", type=_positive(int), default=50, help="latency: calls on node a per batch (default 50)")
    add("--pairs", type=_positive(int), default=5,
        help="latency: hold/retrieve rounds over a batch's calls (default 5)")
    add("--batches", type=_positive(int), default=4,
        help="latency: batches of --calls calls per side, the sides taking turns (default 4)")
    add("--setup-calls", type=_positive(int), default=500, help="setup: calls per daemon (default 500, at most 900)")
    add("--setup-concurrency", type=_positive(int), default=10, help="setup: calls at a time (default 10)")
    add("--idle-seconds", type=_positive(float), default=5.0, help="setup: the idle window before (default 5)")
    add("--capacity-seconds", type=_positive(float), default=5.0, help="workers: measured seconds per step (default 5)")
    add("--capacity-warmup", type=_positive(float), default=2.0, help="workers: warm-up seconds per step (default 2)")
    add("--capacity-start", type=_positive(int), default=50, help="workers: the first step's calls (default 50)")
    add("--capacity-step", type=_positive(int), default=25, help="workers: the granularity in calls (default 25)")
    add("--capacity-max", type=_positive(int), default=600, help="workers: the most calls tried (default 600)")
    add("--capacity-tries", type=_positive(int), default=2, help="workers: windows a step may take (default 2)")
    add("--phases", type=_positive(int), default=10, help="workers: the generator's phases (default 10)")
    add("--json", help="also write the results to this file")
    options = parser.parse_args(argv)
    if options.setup_calls > MAX_CDRS - MONITORED_CALLS:
        parser.error(f"--setup-calls is at most {MAX_CDRS - MONITORED_CALLS} (with the monitored pass, one page "
                     f"of /api/cdrs)")
    if options.capacity_max < options.capacity_step:
        parser.error("--capacity-max must be at least --capacity-step")
    options.load_at_start = os.getloadavg()[0]

    @defer.inlineCallbacks
    def run(reactor):
        results = {}
        engines = Engines()
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as workdir:
            daemons = Daemons(reactor, workdir)
            trigger = reactor.addSystemEventTrigger("before", "shutdown", daemons.kill_all)
            try:
                for case in options.cases:
                    try:
                        results[case] = yield CASE_FUNCTIONS[case](reactor, engines, daemons, options)
                    except Exception as e:  # one broken case does not lose the others
                        results[case] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
                    finally:
                        yield daemons.stop_all()
                    sys.stderr.write(f"{case}: {results[case]}\n")
            finally:
                daemons.kill_all()
                reactor.removeSystemEventTrigger(trigger)
                engines.stop()
        print(report(results, options))
        if options.json:
            pathlib.Path(options.json).write_text(json.dumps(results, indent=1, default=str))
        broken = [case for case, r in results.items() if "error" in r
                  or (isinstance(r, dict) and any(isinstance(v, dict) and "error" in v for v in r.values()))]
        if broken:
            raise SystemExit(1)

    task.react(run)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
