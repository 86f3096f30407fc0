"""``[gateway] workers``: the supervisor on ``task.Clock`` with a fake spawner, and the worker's setup."""

import errno
import os
import socket

import attrs
from prometheus_client import CollectorRegistry
from twisted.internet import error, task
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway import workers
from gateway.config import ConfigError, loads
from gateway.listeners import Listener, StartupError
from gateway.systemd import PipeNotifier
from gateway.workers import NOTIFY_FD, Backoff, Supervisor, SupervisorService


def _died(signal=None, code=None):
    if signal is not None:
        return Failure(error.ProcessTerminated(signal=signal))
    if code == 0:
        return Failure(error.ProcessDone(0))
    return Failure(error.ProcessTerminated(exitCode=code))


class FakeProcess:
    def __init__(self, pid, proto):
        self.pid = pid
        self.proto = proto
        self.signals = []
        self.exited = False

    def signalProcess(self, name):
        if self.exited:
            raise error.ProcessExitedAlready()
        self.signals.append(name)

    # what the test makes the worker do
    def say(self, *lines):
        self.proto.childDataReceived(NOTIFY_FD, "".join(line + "\n" for line in lines).encode())

    def end(self, **how):
        self.exited = True
        self.proto.processEnded(_died(**how))


class FakeSpawner:
    def __init__(self):
        self.spawned = []  # (index, FakeProcess)
        self.next_pid = 100

    def __call__(self, index, proto):
        self.next_pid += 1
        process = FakeProcess(self.next_pid, proto)
        proto.makeConnection(process)
        self.spawned.append((index, process))
        return process

    def latest(self, index):
        return [p for i, p in self.spawned if i == index][-1]


class RecordingNotifier:
    def __init__(self, interval=None):
        self.sent = []
        self.interval = interval

    def ready(self, status=None):
        self.sent.append("READY=1")

    def stopping(self):
        self.sent.append("STOPPING=1")

    def watchdog(self):
        self.sent.append("WATCHDOG=1")

    def watchdog_interval(self):
        return self.interval


def _capture_logs(case):
    events = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def _texts(events):
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


class SupervisorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.spawner = FakeSpawner()
        self.metrics = CollectorRegistry()
        self.ready_calls = []
        self.failed = []
        self.sup = Supervisor(2, self.spawner, self.clock, node="edge", metrics=self.metrics,
                              backoff=Backoff(initial=0.5, maximum=4.0, stable=60.0), stop_timeout=10.0,
                              on_ready=lambda: self.ready_calls.append(self.clock.seconds()),
                              on_start_failed=self.failed.append)

    def _start_all_ready(self):
        self.sup.start()
        for index in (1, 2):
            self.spawner.latest(index).say("READY=1")

    def metric(self, name, **labels):
        return self.metrics.get_sample_value(name, labels) or 0

    def test_ready_only_once_every_worker_is(self):
        self.sup.start()
        self.assertEqual([i for i, _ in self.spawner.spawned], [1, 2])
        self.spawner.latest(2).say("STATUS=starting", "READY=1")
        self.assertEqual(self.ready_calls, [])
        self.assertFalse(self.sup.all_alive())
        self.spawner.latest(1).say("READY=1")
        self.assertEqual(self.ready_calls, [0])
        self.assertTrue(self.sup.all_alive())
        self.spawner.latest(1).say("READY=1")  # said again: still one READY for systemd
        self.assertEqual(len(self.ready_calls), 1)
        self.assertEqual(self.metric("gateway_workers_ready"), 2)

    def test_a_line_split_across_reads_is_joined(self):
        self.sup.start()
        proto = self.spawner.latest(1).proto
        proto.childDataReceived(NOTIFY_FD, b"REA")
        self.assertEqual(self.sup.workers[0].state, "starting")
        proto.childDataReceived(NOTIFY_FD, b"DY=1\n")
        self.assertEqual(self.sup.workers[0].state, "ready")
        proto.childDataReceived(1, b"READY=1\n")  # only the notify descriptor counts

    def test_a_death_is_logged_counted_and_restarted_with_backoff(self):
        events = _capture_logs(self)
        self._start_all_ready()
        first = self.spawner.latest(1)
        first.end(signal=9)
        self.assertIn("worker 1 (pid 101) died: signal 9 (SIGKILL); restarting it in 0.5 s", _texts(events))
        self.assertEqual(self.metric("gateway_worker_exits_total", worker="1", cause="signal"), 1)
        self.assertFalse(self.sup.all_alive())
        self.clock.advance(0.4)
        self.assertIs(self.spawner.latest(1), first)
        self.clock.advance(0.1)
        second = self.spawner.latest(1)
        self.assertIsNot(second, first)
        self.assertEqual(self.metric("gateway_worker_restarts_total", worker="1"), 1)
        # it dies again quickly: the delay doubles, and doubles, up to the maximum
        delays = []
        for _ in range(5):
            current = self.spawner.latest(1)
            current.end(code=1)
            before = self.clock.seconds()
            while self.spawner.latest(1) is current:
                self.clock.advance(0.25)
            delays.append(self.clock.seconds() - before)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 4.0, 4.0])
        self.assertEqual(self.metric("gateway_worker_exits_total", worker="1", cause="exit"), 5)
        # once up longer than `stable`, a death starts over at the initial delay
        self.spawner.latest(1).say("READY=1")
        self.clock.advance(61)
        self.spawner.latest(1).end(code=0)
        self.assertIn("restarting it in 0.5 s", _texts(events)[-1])
        self.assertEqual(self.metric("gateway_worker_exits_total", worker="1", cause="clean"), 1)
        self.assertEqual(self.failed, [])
        self.assertEqual(self.sup.workers[1].state, "ready")  # the other worker was never touched

    def test_a_death_before_every_worker_was_ready_fails_the_start(self):
        self.sup.start()
        self.spawner.latest(1).say("READY=1")
        self.spawner.latest(2).end(code=1)
        self.assertEqual(self.failed, ["worker 2 ended during start: exit status 1"])
        self.clock.advance(100)
        self.assertEqual(len(self.spawner.spawned), 2)  # no restart

    def test_stop_terms_every_worker_then_kills_the_stragglers(self):
        self._start_all_ready()
        one, two = self.spawner.latest(1), self.spawner.latest(2)
        done = self.sup.stop()
        self.assertEqual((one.signals, two.signals), (["TERM"], ["TERM"]))
        one.end(code=0)
        self.assertNoResult(done)
        self.clock.advance(9.9)
        self.assertEqual(two.signals, ["TERM"])
        self.clock.advance(0.1)
        self.assertEqual(two.signals, ["TERM", "KILL"])
        two.end(signal=9)
        self.successResultOf(done)
        self.assertEqual([w.state for w in self.sup.workers], ["stopped", "stopped"])
        # a death while stopping is not counted as a crash
        self.assertEqual(self.metric("gateway_worker_exits_total", worker="2", cause="signal"), 0)

    def test_stop_cancels_a_pending_restart(self):
        self._start_all_ready()
        self.spawner.latest(1).end(signal=9)
        done = self.sup.stop()
        self.spawner.latest(2).end(code=0)
        self.successResultOf(done)
        self.clock.advance(100)
        self.assertEqual(len(self.spawner.spawned), 2)

    def test_a_spawn_that_raises_is_retried_like_a_death(self):
        self._start_all_ready()
        broken = [True]
        real = self.sup._spawn

        def spawn(index, proto):
            if broken[0]:
                broken[0] = False
                raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
            return real(index, proto)

        self.sup._spawn = spawn
        self.spawner.latest(1).end(signal=11)
        self.clock.advance(0.5)  # the restart fails to spawn ...
        self.assertEqual(self.sup.workers[0].state, "waiting")
        self.clock.advance(1.0)  # ... and is tried again after the next delay
        self.assertEqual(self.sup.workers[0].state, "starting")
        self.assertEqual(len(self.spawner.spawned), 3)


class SupervisorServiceTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.running = True
        self.spawner = FakeSpawner()
        self.notifier = RecordingNotifier(interval=5.0)
        self.sup = Supervisor(2, self.spawner, self.reactor, stop_timeout=10.0)
        self.svc = SupervisorService(self.sup, self.notifier, self.reactor, take_signals=False)

    def tick(self, *pinging):
        """The workers ``pinging`` ping the parent, then one watchdog interval passes."""
        for index in pinging:
            self.spawner.latest(index).say("WATCHDOG=1")
        self.reactor.advance(5)

    def test_ready_watchdog_and_stopping_order(self):
        self.svc.startService()
        self.assertEqual(len(self.spawner.spawned), 2)
        self.reactor.advance(5)
        self.assertEqual(self.notifier.sent, [])  # nobody ready: no READY, no WATCHDOG
        for index in (1, 2):
            self.spawner.latest(index).say("READY=1")
        self.assertEqual(self.notifier.sent, ["READY=1"])
        self.reactor.advance(5)
        self.assertEqual(self.notifier.sent, ["READY=1", "WATCHDOG=1"])
        # a worker dies: no pings while it is away, pings again once it is back and ready
        self.spawner.latest(2).end(signal=9)
        self.tick(1)
        self.tick(1)
        self.assertEqual(self.notifier.sent.count("WATCHDOG=1"), 1)
        self.spawner.latest(2).say("READY=1")
        self.tick(1, 2)
        self.assertEqual(self.notifier.sent.count("WATCHDOG=1"), 2)
        self.assertEqual(self.notifier.sent.count("READY=1"), 1)
        # a worker that stops pinging (hung) holds the watchdog once two intervals passed without its ping
        self.tick(1)
        self.assertEqual(self.notifier.sent.count("WATCHDOG=1"), 3)  # worker 2 pinged 10 s ago
        self.tick(1)
        self.tick(1)
        self.assertEqual(self.notifier.sent.count("WATCHDOG=1"), 3)  # 15 s, 20 s: held
        # shutdown: STOPPING=1 goes out before any worker is signalled, and the stop waits for them
        one, two = self.spawner.latest(1), self.spawner.latest(2)
        signalled_at_stopping = []
        real_stopping = self.notifier.stopping

        def stopping():
            signalled_at_stopping.append(one.signals + two.signals)
            real_stopping()

        self.notifier.stopping = stopping
        done = self.svc.stopService()
        self.assertEqual(signalled_at_stopping, [[]])
        self.assertEqual((one.signals, two.signals), (["TERM"], ["TERM"]))
        self.assertNoResult(done)
        one.end(code=0)
        two.end(code=0)
        self.successResultOf(done)
        pings = self.notifier.sent.count("WATCHDOG=1")
        self.reactor.advance(50)
        self.assertEqual(self.notifier.sent.count("WATCHDOG=1"), pings)
        self.assertEqual(self.svc.exit_code, 0)

    def test_a_failed_start_exits_1(self):
        self.svc.startService()
        self.spawner.latest(1).end(code=1)
        self.assertEqual(self.svc.exit_code, 1)
        self.assertNotIn("READY=1", self.notifier.sent)


def _config(text=""):
    return loads('[gateway]\nnode = "edge"\nworkers = 2\n\n[admin]\nlisten = "tcp:8080:interface=127.0.0.1"\n\n'
                 '[store]\nurl = "sqlite:var/gw.sqlite"\n\n' + text, "test.toml")


class WorkerConfigTests(SynchronousTestCase):
    def test_count_zero_is_one_per_core(self):
        config = _config()
        self.assertEqual(workers.worker_count(config), 2)
        zero = attrs.evolve(config, gateway=attrs.evolve(config.gateway, workers=0))
        self.assertEqual(workers.worker_count(zero, cpu_count=lambda: 6), 6)
        self.assertEqual(workers.worker_count(zero, cpu_count=lambda: None), 1)

    def test_the_key_is_checked(self):
        with self.assertRaises(ConfigError) as e:
            loads("[gateway]\nworkers = -1\n", "test.toml")
        self.assertIn("gateway.workers: must be between 0 (one per core) and 64, got -1", str(e.exception))
        self.assertEqual(loads("", "test.toml").gateway.workers, 1)

    def test_worker_node_admin_port_and_store(self):
        w2 = workers.worker_config(_config(), 2)
        self.assertEqual(w2.gateway.node, "edge-w2")
        self.assertEqual(w2.gateway.workers, 1)
        self.assertEqual(w2.admin.listen, "tcp:8082:interface=127.0.0.1")
        self.assertEqual(w2.store.url, "sqlite:var/gw-w2.sqlite")
        pg = workers.worker_config(_config().__class__(
            gateway=_config().gateway, admin=_config().admin,
            store=attrs.evolve(_config().store, url="postgresql://gw@db/gw")), 2)
        self.assertEqual(pg.store.url, "postgresql://gw@db/gw")

    def test_the_stop_timeout_covers_the_drain_and_the_grace(self):
        config = _config()
        self.assertEqual(workers.stop_timeout(config), config.gateway.shutdown_grace + 25)
        clustered = _config('[cluster]\nredis = "redis://127.0.0.1:6379/0"\ndrain_timeout = 60.0\n')
        self.assertEqual(workers.stop_timeout(clustered), 60 + clustered.gateway.shutdown_grace + 25)

    def test_offset_port(self):
        self.assertEqual(workers.offset_port("tcp:8080", 3), "tcp:8083")
        self.assertEqual(workers.offset_port("tcp6:port=8080:interface=\\:\\:1", 1), "tcp6:port=8081:interface=\\:\\:1")
        self.assertEqual(workers.offset_port("ssl:8443:privateKey=k.pem:certKey=c.pem", 2),
                         "ssl:8445:privateKey=k.pem:certKey=c.pem")
        self.assertEqual(workers.offset_port("tcp:0:interface=127.0.0.1", 2), "tcp:0:interface=127.0.0.1")
        with self.assertRaises(ValueError):
            workers.offset_port("systemd:domain=INET:index=0", 1)

    def test_an_admin_endpoint_without_a_port_is_refused_with_workers(self):
        config = _config()
        config = attrs.evolve(config, admin=attrs.evolve(config.admin, listen="systemd:domain=INET:index=0"))
        with self.assertRaises(ConfigError) as e:
            workers.check_workers_config(config)
        self.assertIn("admin.listen: with [gateway] workers > 1:", str(e.exception))

    def test_links_that_must_exist_once_stay_in_worker_1_without_a_cluster(self):
        config = _config('[cti]\nenabled = false\n\n[chat]\nenabled = false\n')
        config = attrs.evolve(config, cti=attrs.evolve(config.cti, enabled=True),
                              chat=attrs.evolve(config.chat, enabled=True))
        self.assertTrue(workers.worker_config(config, 1).cti.enabled)
        self.assertTrue(workers.worker_config(config, 1).chat.enabled)
        self.assertFalse(workers.worker_config(config, 2).cti.enabled)
        self.assertFalse(workers.worker_config(config, 2).chat.enabled)


class MakeServiceTests(SynchronousTestCase):
    def setUp(self):
        self.built = []

    def build(self, config, reactor, source):
        self.built.append(config)
        return "built"

    def test_workers_1_is_the_plain_daemon(self):
        config = loads("", "test.toml")
        self.assertEqual(workers.make_service(config, None, None, self.build, environ={}), "built")
        self.assertIs(self.built[0], config)

    def test_workers_2_is_the_parent(self):
        tmp = self.mktemp()
        config = _config(f'')
        config = attrs.evolve(config, gateway=attrs.evolve(config.gateway, state_dir=tmp),
                              admin=attrs.evolve(config.admin, token=config.admin.token.__class__("t" * 32)))
        svc = workers.make_service(config, MemoryReactorClock(), None, self.build, environ={})
        self.assertIsInstance(svc, SupervisorService)
        self.assertEqual(svc.supervisor.count, 2)
        self.assertEqual(self.built, [])

    def test_a_worker_builds_its_own_config(self):
        class Root:
            class ctx:
                listeners = [Listener(None, "admin", "tcp:8081", object(), None),
                             Listener(None, "optimaccs", "tcp:4143", object(), None)]

            systemd = type("S", (), {"notifier": None})()

        root = Root()
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        environ = {"GATEWAY_WORKER": "2", "GATEWAY_PARENT_PID": str(os.getppid())}
        self.patch(workers, "NOTIFY_FD", w)
        self.patch(workers, "_die_with_parent", lambda environ: None)
        self.assertIs(workers.make_service(_config(), None, None, lambda c, r, s: (self.built.append(c), root)[1],
                                           environ=environ), root)
        self.assertEqual(self.built[0].gateway.node, "edge-w2")
        self.assertEqual([l.reuse_port for l in root.ctx.listeners], [False, True])
        self.assertIsInstance(root.systemd.notifier, PipeNotifier)
        root.systemd.notifier.ready()
        self.assertEqual(os.read(r, 100), b"READY=1\n")

    def test_a_bad_worker_number_is_refused(self):
        with self.assertRaises(SystemExit):
            workers.worker_index({"GATEWAY_WORKER": "x"})


class WorkerArgvTests(SynchronousTestCase):
    def test_keeps_the_logger_and_makes_the_config_absolute(self):
        argv = workers.worker_argv(["/v/bin/twistd", "--pidfile=x.pid", "--logger", "gateway.logs.text", "-l", "f.log",
                                    "gateway", "--config", "etc/g.toml"], executable="/v/bin/python")
        self.assertEqual(argv[:3], ["/v/bin/python", "-c", "from twisted.scripts.twistd import run; run()"])
        self.assertEqual(argv[3:], ["--nodaemon", "--pidfile=", "--logger", "gateway.logs.text",
                                    "--logfile=" + os.path.abspath("f-w1.log"), "gateway",
                                    "--config", os.path.abspath("etc/g.toml")])

    def test_a_log_file_of_its_own_beside_the_parents(self):
        for given, wanted in [(["--logfile", "/var/log/gw.log"], "/var/log/gw-w2.log"),
                              (["--logfile=/var/log/gw"], "/var/log/gw-w2"), (["-l", "/v/.gw"], "/v/.gw-w2")]:
            argv = workers.worker_argv(["twistd", *given, "gateway"], executable="py", index=2)
            self.assertEqual(argv[3:], ["--nodaemon", "--pidfile=", "--logfile=" + wanted, "gateway"])
        self.assertEqual(workers.worker_argv(["twistd", "--logfile=-", "gateway"], executable="py")[3:],
                         ["--nodaemon", "--pidfile=", "gateway"])  # stdout: the parent's, inherited


class PipeNotifierTests(SynchronousTestCase):
    def test_lines_on_the_pipe_and_the_watchdog_interval_from_the_parent(self):
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        notifier = PipeNotifier(w, {"WATCHDOG_USEC": "2000000"})
        self.assertTrue(notifier.ready("a\nb"))
        self.assertTrue(notifier.watchdog())
        self.assertEqual(os.read(r, 100), b"READY=1\nSTATUS=a b\nWATCHDOG=1\n")
        self.assertEqual(notifier.watchdog_interval(), 1.0)
        self.assertIsNone(PipeNotifier(w, {}).watchdog_interval())
        os.close(w)
        self.assertFalse(notifier.watchdog())  # the parent is gone: logged once, never raised


class ReusePortTests(SynchronousTestCase):
    def test_a_worker_listener_adopts_a_reuseport_socket(self):
        reactor = MemoryReactorClock()

        class Component:
            def set_up(self):
                pass

            def stopped(self):
                pass

        listener = Listener(reactor, "optimaccs", "tcp:0:interface=127.0.0.1", object(), Component())
        listener.reuse_port = True
        listener.bind()
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual(len(reactor.adoptedPorts), 1)
        self.assertEqual(reactor.adoptedPorts[0][1], socket.AF_INET)

    def test_a_port_held_without_reuseport_is_in_use(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        listener = Listener(MemoryReactorClock(), "optimaccs", f"tcp:{port}:interface=127.0.0.1", object(), None)
        listener.reuse_port = True
        with self.assertRaises(StartupError) as e:
            listener.bind()
        self.assertTrue(e.exception.in_use)
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1 (optimaccs)", str(e.exception))


class UnitFileTests(SynchronousTestCase):
    """The shipped unit suits a parent with workers."""

    def test_systemd_stops_the_parent_which_stops_its_workers(self):
        from tests.test_systemd import read_unit

        from gateway.config import GatewaySection

        svc = read_unit("gateway.service")["Service"]
        self.assertEqual(svc["KillMode"], "mixed")  # SIGTERM to the parent alone, SIGKILL to all at the end
        self.assertEqual(svc["NotifyAccess"], "main")  # the workers never talk to systemd
        # the parent's own SIGKILL of a worker comes before systemd's
        self.assertGreater(int(svc["TimeoutStopSec"]), GatewaySection().shutdown_grace + 25)
