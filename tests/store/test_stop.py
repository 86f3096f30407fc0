"""The store in the daemon's stop sequence: its waiting writes' last try is awaited, and a failure of it logged."""

import pathlib

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.metrics import make_metrics_registry
from gateway.config import loads
from gateway.context import Context
from gateway.store import MemoryCdrStore
from gateway.tap import GatewayService, _StoreService


class _Systemd:
    def stopService(self):
        return None


class _Store(MemoryCdrStore):
    """The in-memory store, with a ``stop_retrying`` the test answers and a record of what happened when."""

    def __init__(self, clock):
        super().__init__(clock)
        self.retried = defer.Deferred()
        self.events = []

    def stop_retrying(self):
        self.events.append("stop_retrying")
        return self.retried

    def close(self):
        self.events.append("close")
        return super().close()


class StopTests(SynchronousTestCase):
    def daemon(self):
        reactor = MemoryReactorClock()
        ctx = Context(reactor=reactor, config=loads("", "test"), state_dir=pathlib.Path(self.mktemp()),
                      metrics=make_metrics_registry())
        ctx.store = _Store(reactor)
        svc = GatewayService(ctx, _Systemd())
        svc.store_service = _StoreService(ctx.store)
        svc.store_service.startService()
        svc.running = True
        return svc, ctx.store

    def test_the_store_closes_once_its_waiting_writes_had_their_last_try(self):
        svc, store = self.daemon()
        stopped = svc.stopService()
        self.assertEqual(store.events, ["stop_retrying"])  # at once, and the store is not closed under it
        self.assertNoResult(stopped)
        store.retried.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(store.events, ["stop_retrying", "close"])

    def test_a_failed_last_try_is_logged_and_the_daemon_still_stops(self):
        svc, store = self.daemon()
        with capturedLogs() as events:
            stopped = svc.stopService()
            store.retried.errback(OSError("disk I/O error"))
        self.successResultOf(stopped)
        self.assertEqual(store.events, ["stop_retrying", "close"])
        [logged] = [e for e in events if e["log_level"] is LogLevel.critical]
        self.assertIn("last try", logged["log_format"])
        self.assertEqual(logged["error"], "disk I/O error")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
