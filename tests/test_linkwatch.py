"""gateway.linkwatch: a ClientService link's readiness says why it is down, and the log names the endpoint.

A real ClientService and a real TCP4ClientEndpoint on a MemoryReactorClock: each
connection attempt is answered by hand (refused, or made).
"""

from twisted.application.internet import ClientService
from twisted.internet import error as neterror
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.context import Readiness
from gateway.linkwatch import FIRST_LOGGED, LinkWatch, describe_error, endpoint_peer, url_peer


class LinkWatchTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.readiness = Readiness()
        self.component = self.readiness.register("cti:PROC")
        self.watch = LinkWatch(self.reactor, self.component, peer="127.0.0.1:8081", adapter="cti")
        self.service = self.watch.client_service(
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", 8081), Factory.forProtocol(Protocol),
            retryPolicy=lambda failed: min(2.0 ** (failed - 1), 30.0), clock=self.reactor,
        )
        self.addCleanup(self.service.stopService)

    def refuse(self):
        """The pending connection attempt is refused."""
        host, port, factory, *_ = self.reactor.tcpClients.pop()
        factory.clientConnectionFailed(None, Failure(neterror.ConnectionRefusedError("Connection refused")))

    def accept(self):
        host, port, factory, *_ = self.reactor.tcpClients.pop()
        factory.buildProtocol(None).makeConnection(StringTransport())

    def reason(self):
        return self.readiness.not_ready()["cti:PROC"]

    def test_readyz_says_what_is_tried_what_failed_and_when_the_next_attempt_is(self):
        self.service.startService()
        self.assertEqual(self.reason(), "connecting to 127.0.0.1:8081 (attempt 1)")
        self.refuse()
        self.assertEqual(self.reason(), "connecting to 127.0.0.1:8081: connection refused; retry 1 in 1 s")
        self.reactor.advance(1.0)
        self.refuse()
        self.assertEqual(self.reason(), "connecting to 127.0.0.1:8081: connection refused; retry 2 in 2 s")
        self.reactor.advance(2.0)
        self.refuse()
        self.assertEqual(self.reason(), "connecting to 127.0.0.1:8081: connection refused; retry 3 in 4 s")

    def test_a_made_connection_starts_the_count_again(self):
        self.service.startService()
        self.refuse()
        self.reactor.advance(1.0)
        with capturedLogs() as events:
            self.accept()
        self.assertEqual((self.watch.attempts, self.watch.error), (0, None))
        [line] = [e for e in events if e.get("peer") == "127.0.0.1:8081"]
        self.assertEqual(line["attempts"], 2)
        self.component.set_up()  # the adapter's protocol says when the link is really up
        self.assertEqual(self.readiness.not_ready(), {})

    def test_each_failure_is_logged_with_the_endpoint_then_rate_limited(self):
        with capturedLogs() as events:
            self.service.startService()
            for _ in range(12):
                self.refuse()
                self.reactor.advance(30.0)
        warnings = [e for e in events if e["log_level"] is LogLevel.warn and e.get("adapter") == "cti"]
        self.assertEqual([e["attempt"] for e in warnings[:FIRST_LOGGED]], [1, 2, 3])
        self.assertTrue(all(e["peer"] == "127.0.0.1:8081" and e["error"] == "connection refused" for e in warnings))
        # 12 failures 30 s apart: three one by one, then a summary at most once a minute.
        summaries = warnings[FIRST_LOGGED:]
        self.assertEqual([(e["attempt"], e["count"]) for e in summaries], [(5, 2), (7, 2), (9, 2), (11, 2)])
        self.assertIn("still cannot connect to 127.0.0.1:8081: connection refused; 2 more failed attempts",
                      self._render(summaries[0]))

    def test_a_made_connection_says_what_was_still_unsaid_of_the_failures(self):
        with capturedLogs() as events:
            self.service.startService()
            for _ in range(4):
                self.refuse()
                self.reactor.advance(30.0)
            self.accept()
        lines = [e for e in events if e.get("adapter") == "cti"]
        self.assertEqual([e.get("attempt") for e in lines[:FIRST_LOGGED]], [1, 2, 3])
        summary, connected = lines[FIRST_LOGGED:]  # the fourth failure was not yet summarised
        self.assertEqual((summary["count"], summary["attempt"]), (1, 4))
        self.assertEqual(connected["attempts"], 5)
        with capturedLogs() as events:
            self.reactor.advance(1.0)
            self.service.stopService()
        self.assertEqual([e for e in events if e.get("count")], [], "the run ended with the connection")

    def test_failures_further_apart_than_the_interval_are_each_logged(self):
        watch = LinkWatch(self.reactor, self.component, peer="127.0.0.1:8082", adapter="cti")
        service = watch.client_service(TCP4ClientEndpoint(self.reactor, "127.0.0.1", 8082),
                                       Factory.forProtocol(Protocol), retryPolicy=lambda failed: 120.0,
                                       clock=self.reactor)
        self.addCleanup(service.stopService)
        with capturedLogs() as events:
            service.startService()
            for _ in range(6):
                self.refuse()
                self.reactor.advance(120.0)
        warnings = [e for e in events if e["log_level"] is LogLevel.warn and e.get("adapter") == "cti"]
        self.assertEqual([(e["attempt"], e.get("count")) for e in warnings], [(n, None) for n in range(1, 7)])
        self.assertNotIn("summarised", " ".join(self._render(e) for e in warnings))

    def _render(self, event):
        from twisted.logger import formatEvent

        return formatEvent(event)

    def test_stopping_while_an_attempt_is_pending_cancels_it(self):
        self.service.startService()
        d = self.service.stopService()
        self.refuse()  # the attempt's result after the stop changes nothing
        self.successResultOf(d)


class HandedOverTests(SynchronousTestCase):
    def test_a_watch_made_with_its_endpoint_and_policy_for_a_client_service_built_elsewhere(self):
        reactor = MemoryReactorClock()
        readiness = Readiness()
        watch = LinkWatch(reactor, readiness.register("chat"), TCP4ClientEndpoint(reactor, "127.0.0.1", 8081),
                          peer="127.0.0.1:8081", adapter="chat", retry_policy=lambda failed: 5.0)
        service = ClientService(watch.endpoint, Factory.forProtocol(Protocol), retryPolicy=watch.retry_policy,
                                clock=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        host, port, factory, *_ = reactor.tcpClients.pop()
        factory.clientConnectionFailed(None, Failure(neterror.ConnectionRefusedError()))
        self.assertEqual(readiness.not_ready(),
                         {"chat": "connecting to 127.0.0.1:8081: connection refused; retry 1 in 5 s"})


class NamingTests(SynchronousTestCase):
    def test_peers(self):
        self.assertEqual(endpoint_peer("tcp:host=127.0.0.1:port=9500"), "127.0.0.1:9500")
        self.assertEqual(endpoint_peer("tls:bridge.example:9501"), "bridge.example:9501")
        self.assertEqual(endpoint_peer("unix:/run/x.sock"), "unix:/run/x.sock")
        self.assertEqual(url_peer("http://127.0.0.1:8081"), "127.0.0.1:8081")
        self.assertEqual(url_peer("wss://desktop.example/ws"), "desktop.example:443")

    def test_errors(self):
        self.assertEqual(describe_error(Failure(neterror.ConnectionRefusedError())), "connection refused")
        self.assertEqual(describe_error(Failure(neterror.DNSLookupError("x"))), "host name not found")
        self.assertEqual(describe_error(Failure(ValueError("odd thing."))), "odd thing")
