"""sd_notify without libsystemd: real datagram sockets receive what the gateway sends."""

import configparser
import os
import pathlib
import re
import socket
import tempfile
import uuid

from twisted.internet import task
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import GatewaySection
from gateway.confschema import ServerEndpoint
from gateway.drivers.config import OptimaccsConfig
from gateway.systemd import Notifier, SystemdService

UNITS = pathlib.Path(__file__).resolve().parent.parent / "etc" / "systemd"


class ReceiverMixin:
    """A bound ``AF_UNIX`` datagram socket standing in for systemd's notify socket."""

    def bind_path_receiver(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "notify")
        self.addCleanup(os.unlink, path)
        return self._bind(path), path

    def bind_abstract_receiver(self):
        name = "gateway-test-" + uuid.uuid4().hex
        return self._bind("\0" + name), "@" + name

    def _bind(self, address):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(address)
        sock.setblocking(False)
        return sock

    def received(self, sock):
        """Every datagram waiting on ``sock``, decoded."""
        datagrams = []
        while True:
            try:
                datagrams.append(sock.recv(4096).decode("utf-8"))
            except BlockingIOError:
                return datagrams

    def capture_logs(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events


class NotifierTests(ReceiverMixin, SynchronousTestCase):
    def test_disabled_without_notify_socket(self):
        notifier = Notifier(environ={})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.ready("up"))
        self.assertIsNone(Notifier(environ={"WATCHDOG_USEC": "30000000"}).watchdog_interval())

    def test_ready_with_status_to_path_socket(self):
        sock, path = self.bind_path_receiver()
        notifier = Notifier(environ={"NOTIFY_SOCKET": path})
        self.assertTrue(notifier.enabled)
        self.assertTrue(notifier.ready("listening on 3 ports"))
        self.assertEqual(self.received(sock), ["READY=1\nSTATUS=listening on 3 ports"])

    def test_messages_to_abstract_socket(self):
        sock, name = self.bind_abstract_receiver()
        notifier = Notifier(environ={"NOTIFY_SOCKET": name})
        notifier.ready()
        notifier.status("2 calls")
        notifier.watchdog()
        notifier.stopping()
        self.assertEqual(
            self.received(sock), ["READY=1", "STATUS=2 calls", "WATCHDOG=1", "STOPPING=1"]
        )

    def test_notify_sends_lines_as_one_datagram(self):
        sock, path = self.bind_path_receiver()
        Notifier(environ={"NOTIFY_SOCKET": path}).notify("RELOADING=1", "STATUS=reloading")
        self.assertEqual(self.received(sock), ["RELOADING=1\nSTATUS=reloading"])

    def test_status_cannot_inject_lines(self):
        sock, path = self.bind_path_receiver()
        Notifier(environ={"NOTIFY_SOCKET": path}).status("bad\nREADY=1")
        self.assertEqual(self.received(sock), ["STATUS=bad READY=1"])

    def test_failure_never_raises_and_is_logged_once_per_outage(self):
        sock, path = self.bind_path_receiver()
        missing = path + "-missing"
        environ = {"NOTIFY_SOCKET": missing}
        notifier = Notifier(environ=environ)
        events = self.capture_logs()

        self.assertFalse(notifier.ready())
        self.assertFalse(notifier.watchdog())
        warnings = [e for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["socket"], missing)

        environ["NOTIFY_SOCKET"] = path
        self.assertTrue(notifier.watchdog())
        environ["NOTIFY_SOCKET"] = missing
        self.assertFalse(notifier.watchdog())
        self.assertEqual(len([e for e in events if e["log_level"] is LogLevel.warn]), 2)

    def test_watchdog_interval_is_half_of_watchdog_usec(self):
        environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000"}
        self.assertEqual(Notifier(environ=environ).watchdog_interval(), 15.0)

    def test_watchdog_interval_for_our_pid_only(self):
        environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "42"}
        self.assertEqual(Notifier(environ=environ, getpid=lambda: 42).watchdog_interval(), 2.0)
        self.assertIsNone(Notifier(environ=environ, getpid=lambda: 43).watchdog_interval())

    def test_watchdog_interval_none_when_off_or_malformed(self):
        for usec in ("", "0", "-5", "soon"):
            environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": usec}
            self.assertIsNone(Notifier(environ=environ).watchdog_interval(), usec)
        self.assertIsNone(Notifier(environ={"NOTIFY_SOCKET": "@x"}).watchdog_interval())


class SystemdServiceTests(ReceiverMixin, SynchronousTestCase):
    def make_service(self, **environ):
        sock, path = self.bind_path_receiver()
        clock = task.Clock()
        notifier = Notifier(environ={"NOTIFY_SOCKET": path, **environ})
        return SystemdService(notifier, clock), clock, sock

    def test_watchdog_pings_at_half_the_interval(self):
        svc, clock, sock = self.make_service(WATCHDOG_USEC="30000000")
        svc.startService()
        self.assertEqual(self.received(sock), ["WATCHDOG=1"])
        clock.advance(14.9)
        self.assertEqual(self.received(sock), [])
        clock.advance(0.1)
        self.assertEqual(self.received(sock), ["WATCHDOG=1"])
        clock.pump([15] * 3)
        self.assertEqual(self.received(sock), ["WATCHDOG=1"] * 3)
        svc.stopService()

    def test_ready_on_demand_only(self):
        svc, clock, sock = self.make_service()
        svc.startService()
        self.assertEqual(self.received(sock), [])
        svc.mark_ready("4 listeners bound")
        self.assertEqual(self.received(sock), ["READY=1\nSTATUS=4 listeners bound"])
        svc.stopService()

    def test_stop_sends_stopping_and_ends_pings(self):
        svc, clock, sock = self.make_service(WATCHDOG_USEC="2000000")
        svc.startService()
        svc.mark_ready()
        self.received(sock)
        svc.stopService()
        self.assertFalse(svc.running)
        self.assertEqual(self.received(sock), ["STOPPING=1"])
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)
        self.assertEqual(self.received(sock), [])

    def test_no_watchdog_without_watchdog_usec(self):
        svc, clock, sock = self.make_service()
        svc.startService()
        self.assertEqual(clock.getDelayedCalls(), [])
        svc.stopService()
        self.assertEqual(self.received(sock), ["STOPPING=1"])

    def test_restartable(self):
        svc, clock, sock = self.make_service(WATCHDOG_USEC="2000000")
        svc.startService()
        svc.stopService()
        svc.startService()
        self.received(sock)
        clock.advance(1)
        self.assertEqual(self.received(sock), ["WATCHDOG=1"])
        svc.stopService()

    def test_outside_systemd_everything_is_a_no_op(self):
        events = self.capture_logs()
        clock = task.Clock()
        svc = SystemdService(Notifier(environ={}), clock)
        svc.startService()
        svc.mark_ready()
        self.assertEqual(clock.getDelayedCalls(), [])
        svc.stopService()
        self.assertFalse(svc.running)
        self.assertEqual(events, [])


def read_unit(name):
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str
    unit.read_string((UNITS / name).read_text())
    return unit


class UnitFileTests(SynchronousTestCase):
    """The shipped units agree with the code they drive."""

    def test_service_speaks_the_notify_protocol(self):
        svc = read_unit("gateway.service")["Service"]
        self.assertEqual((svc["Type"], svc["NotifyAccess"]), ("notify", "main"))
        self.assertGreater(int(svc["WatchdogSec"]), 0)
        self.assertIn("--nodaemon --pidfile= --logger gateway.logs.text gateway --config ", svc["ExecStart"])

    def test_service_restarts_on_failure_as_a_dedicated_hardened_user(self):
        svc = read_unit("gateway.service")["Service"]
        self.assertEqual(svc["Restart"], "on-failure")
        self.assertNotIn(svc.get("User", "root"), ("", "root"))
        self.assertEqual((svc["NoNewPrivileges"], svc["ProtectSystem"]), ("yes", "strict"))
        self.assertEqual((svc["ProtectHome"], svc["PrivateTmp"]), ("yes", "yes"))

    def test_stop_timeout_exceeds_shutdown_grace(self):
        timeout = int(read_unit("gateway.service")["Service"]["TimeoutStopSec"])
        self.assertGreaterEqual(timeout, GatewaySection().shutdown_grace + 10)

    def test_stop_timeout_covers_a_cluster_node_with_workers_on_the_defaults(self):
        """A draining cluster node's calls may run drain_timeout, and a workers parent waits
        shutdown_grace + 25 s more: systemd's SIGKILL must not cut that short on the defaults."""
        from gateway.cluster.config import ClusterConfig

        timeout = int(read_unit("gateway.service")["Service"]["TimeoutStopSec"])
        self.assertGreater(timeout, GatewaySection().shutdown_grace + 25 + ClusterConfig(redis="redis://x").drain_timeout)

    def test_socket_matches_the_documented_listen_line(self):
        text = (UNITS / "gateway.socket").read_text()
        [listen] = re.findall(r'^#\s+listen = "([^"]+)"$', text, re.M)
        self.assertEqual(ServerEndpoint.check(listen), "systemd:domain=INET:index=0")
        host, port = read_unit("gateway.socket")["Socket"]["ListenStream"].rsplit(":", 1)
        self.assertEqual(OptimaccsConfig().listen, f"tcp:{port}:interface={host}")
