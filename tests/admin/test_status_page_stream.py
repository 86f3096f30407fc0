"""The status page's event stream through the real admin site and HTTP channel, in memory (StringTransport),
on the shipped fake call core (:class:`gateway.core.testing.FakeCallControl`, the far end played by the
test), driven by a task.Clock."""

import json

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from core.harness import Harness
from gateway.admin.metrics import make_metrics_registry
from gateway.admin.site import make_site
from gateway.admin.status_feed import COALESCE, HEARTBEAT, MAX_STREAMS, RECENT_CDRS, SAMPLE
from gateway.admin.status_page import STREAM_PATH
from gateway.config import load
from gateway.confschema import Secret
from gateway.context import Context
from gateway.core.testing import FakeCallControl
from gateway.drivers.sim import run_clock
from gateway.store import MemoryCdrStore, StoreUnavailable

TOKEN = "str3am-T0ken"


class Watched:
    """The call core, counting its subscribers."""

    def __init__(self, registry):
        self._registry = registry
        self.subscribers = 0

    def subscribe(self, callback, extension=None):
        unsubscribe = self._registry.subscribe(callback, extension)
        self.subscribers += 1

        def undo():
            self.subscribers -= 1
            unsubscribe()

        return undo

    def __getattr__(self, name):
        return getattr(self._registry, name)


class Unreadable(dict):
    """A board whose entries cannot be read."""

    def values(self):
        return 1 / 0


class Adapter:
    def __init__(self, **status):
        self.value = status

    def status(self):
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


class Client:
    """One HTTP/1.0 connection to the site (no chunking: the body is the event stream as sent)."""

    def __init__(self, site, port):
        self.protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.protocol.makeConnection(self.transport)

    def get(self, target: str) -> None:
        self.protocol.dataReceived(f"GET {target} HTTP/1.0\r\nHost: admin.test\r\n\r\n".encode())

    @property
    def head(self) -> str:
        return self.transport.value().partition(b"\r\n\r\n")[0].decode()

    @property
    def body(self) -> bytes:
        return self.transport.value().partition(b"\r\n\r\n")[2]

    def views(self) -> list[dict]:
        """Every status event received so far, parsed."""
        events = [block for block in self.body.split(b"\n\n") if block.startswith(b"event: status\n")]
        return [json.loads(block.split(b"\ndata: ", 1)[1]) for block in events]

    def latest(self) -> dict:
        return self.views()[-1]

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


class StreamCase(SynchronousTestCase):
    def make_core(self):
        """The call core: the fake, with the default extensions."""
        self.clock = task.Clock()
        return FakeCallControl(["1001", "1002"], clock=self.clock)

    def setUp(self):
        self.core = self.make_core()
        self.clock.advance(1_800_000_000)  # 2027: CDR times that look like times
        self.registry = Watched(self.core)
        self.store = MemoryCdrStore(self.clock)
        self.ctx = Context(reactor=self.clock, config=load(None), state_dir=self.mktemp(),
                           metrics=make_metrics_registry(), store=self.store, registry=self.registry)
        self.site = make_site(self.ctx, Secret(TOKEN))
        self.feed = self.site.streams[STREAM_PATH].feed
        self.ports = iter(range(40000, 41000))

    def ticket(self) -> str:
        client = Client(self.site, next(self.ports))
        client.protocol.dataReceived(
            f"POST /api/status/ticket HTTP/1.0\r\nHost: admin.test\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 0\r\n\r\n".encode())
        return json.loads(client.body)["ticket"]

    def open(self) -> Client:
        client = Client(self.site, next(self.ports))
        client.get(f"/status/events?ticket={self.ticket()}")
        return client

    def advance(self, seconds):
        run_clock(self.clock, seconds)

    def add_cdr(self, call_id, ended_at):
        self.successResultOf(self.store.add_cdr(
            {"call_id": call_id, "ended_at": ended_at, "extension": "1001", "cause": "normal", "legs": []}))


class StreamTests(StreamCase):
    # -- opening -----------------------------------------------------------------------------

    def test_without_a_valid_ticket_the_stream_is_refused_naming_the_peer(self):
        spent = self.ticket()
        self.open().close()
        with capturedLogs() as events:
            for target in ("/status/events", "/status/events?ticket=forged", f"/status/events?ticket={spent}x"):
                client = Client(self.site, 41234)
                client.get(target)
                self.assertIn("401 Unauthorized", client.head, target)
                self.assertEqual(json.loads(client.body)["error"], "unauthorized")
        self.assertEqual(self.feed.streams, [])
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 3)
        self.assertTrue(all(e["peer"] == "127.0.0.1:41234" for e in warnings))
        self.assertFalse(any(spent in json.dumps(e, default=str) for e in events), "a ticket was logged")

    def test_a_ticket_opens_one_stream_only(self):
        ticket = self.ticket()
        first, second = Client(self.site, 1), Client(self.site, 2)
        first.get(f"/status/events?ticket={ticket}")
        second.get(f"/status/events?ticket={ticket}")
        self.assertIn("200 OK", first.head)
        self.assertIn("401", second.head)

    def test_the_stream_is_an_event_stream_starting_with_the_whole_view(self):
        self.ctx.status["calls"] = self.core
        self.ctx.readiness.register("listener:admin").set_up()
        client = self.open()
        self.assertIn("Content-Type: text/event-stream; charset=utf-8", client.head)
        self.assertIn("Cache-Control: no-store", client.head)
        view = client.latest()
        self.assertEqual(view["now"], self.clock.seconds())
        self.assertEqual((view["node"], view["calls"], view["cdrs"]), ("gateway", [], []))
        self.assertEqual(view["readiness"], [{"name": "listener:admin", "up": True, "reason": ""}])
        self.assertEqual(view["extensions"], {"1001": "Operator 1", "1002": "Operator 2"})  # the defaults
        self.assertEqual(view["adapters"], {"calls": {"live_calls": 0, "by_state": {}, "retained_calls": 0}})

    def test_more_streams_than_allowed_are_refused(self):
        clients = [self.open() for _ in range(MAX_STREAMS)]
        extra = self.open()
        self.assertIn("503", extra.head)
        self.assertEqual(len(self.feed.streams), MAX_STREAMS)
        clients[0].close()
        self.assertIn("200 OK", self.open().head)

    # -- what is pushed, and when ------------------------------------------------------------------

    def test_a_call_appears_ticks_in_the_browser_only_and_disappears_into_the_cdrs(self):
        client = self.open()
        call_id = self.successResultOf(self.core.originate("1001", "5551234")).call_id
        self.assertEqual(len(client.views()), 1, "pushed before the coalescing delay")
        self.advance(COALESCE)
        (call,) = client.latest()["calls"]
        self.assertEqual((call["call_id"], call["state"], call["extension"], call["number"]),
                         (call_id, "DIALING", "1001", "5551234"))
        self.assertNotIn("duration", call)
        self.core.phone_answers(call_id)  # the operator picks up, the number answers
        self.core.party_answers(call_id)
        self.advance(3.0)
        (call,) = client.latest()["calls"]
        self.assertEqual(call["state"], "TALKING")
        self.assertEqual([(leg["role"], leg["state"]) for leg in call["legs"]],
                         [("device", "TALKING"), ("party", "TALKING")])
        sent = len(client.views())
        self.advance(10 * SAMPLE)
        self.assertEqual(len(client.views()), sent, "a call that only gets longer is not sent again")
        self.core.hangup(call_id)
        self.advance(COALESCE)
        view = client.latest()
        self.assertEqual(view["calls"], [])
        (cdr,) = view["cdrs"]
        self.assertEqual((cdr["call_id"], cdr["cause"], cdr["hangup_by"]), (call_id, "normal", "api"))
        self.assertNotIn("legs", cdr)

    def test_a_burst_of_events_is_one_message(self):
        client = self.open()
        for number in ("5551234", "5551235"):
            self.core.originate("1001" if number.endswith("4") else "1002", number)
        self.advance(COALESCE)
        views = client.views()
        self.assertEqual(len(views), 2)
        self.assertEqual(len(views[1]["calls"]), 2)

    def test_adapters_are_sampled_and_sent_only_when_they_change(self):
        link = self.ctx.status["cti"] = Adapter(connected=False)
        client = self.open()
        self.advance(5 * SAMPLE)
        self.assertEqual(len(client.views()), 1)
        link.value = {"connected": True}
        self.advance(SAMPLE)
        self.assertEqual(len(client.views()), 2)
        self.assertEqual(client.latest()["adapters"]["cti"], {"connected": True})

    def test_an_adapter_whose_status_fails_is_logged_once_and_shown_as_unavailable(self):
        broken = self.ctx.status["chat"] = Adapter()
        broken.value = RuntimeError("boom")
        with capturedLogs() as events:
            client = self.open()
            self.advance(3 * SAMPLE)
        self.assertEqual(client.latest()["adapters"]["chat"], {"error": "status unavailable, see the log"})
        self.assertEqual(len([e for e in events if e.get("log_failure")]), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        broken.value = {"connected": True}
        self.advance(SAMPLE)
        self.assertEqual(client.latest()["adapters"]["chat"], {"connected": True})

    def test_a_heartbeat_comment_keeps_an_idle_stream_open(self):
        client = self.open()
        self.advance(HEARTBEAT - SAMPLE)
        self.assertNotIn(b": heartbeat\n\n", client.body)
        self.advance(SAMPLE)
        self.assertEqual(client.body.count(b": heartbeat\n\n"), 1)
        self.advance(HEARTBEAT)
        self.assertEqual(client.body.count(b": heartbeat\n\n"), 2)

    # -- recent CDRs ---------------------------------------------------------------------------

    def test_the_newest_cdrs_come_from_the_store_newest_first(self):
        for minute in range(12):
            self.add_cdr(f"c{minute:02d}", f"2027-01-15T07:{20 + minute}:00.000Z")
        self.add_cdr("c11-same-time", "2027-01-15T07:31:00.000Z")
        self.assertEqual(self.clock.seconds(), 1_800_000_000)  # 2027-01-15T08:00:00Z
        asked = []
        recent_cdrs = self.store.recent_cdrs
        self.patch(self.store, "recent_cdrs", lambda limit: asked.append(limit) or recent_cdrs(limit))
        client = self.open()
        ids = [cdr["call_id"] for cdr in client.latest()["cdrs"]]
        self.assertEqual(ids, ["c11-same-time"] + [f"c{minute:02d}" for minute in range(11, 12 - RECENT_CDRS, -1)])
        self.assertEqual(asked, [RECENT_CDRS], "one look into the store, for just what the page lists")

    def test_after_a_quiet_spell_the_last_calls_are_still_listed(self):
        self.add_cdr("last-week", "2027-01-08T17:00:00.000Z")
        self.add_cdr("yesterday", "2027-01-14T17:00:00.000Z")
        client = self.open()
        self.assertEqual([cdr["call_id"] for cdr in client.latest()["cdrs"]], ["yesterday", "last-week"])

    def test_a_store_that_fails_leaves_the_list_empty_and_the_page_working(self):
        self.store.closed = True
        with capturedLogs() as events:
            client = self.open()
        self.assertEqual(client.latest()["cdrs"], [])
        self.assertTrue(any("recent CDRs" in e.get("log_format", "") for e in events))
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)

    def test_a_store_answering_after_everyone_left_is_ignored(self):
        answer = Deferred()
        self.patch(self.store, "recent_cdrs", lambda limit: answer)
        client = self.open()
        self.assertEqual(client.views(), [])
        client.close()
        answer.callback([{"call_id": "late", "ended_at": "2027-01-15T07:59:00.000Z"}])
        self.assertEqual((self.feed.streams, self.clock.getDelayedCalls()), ([], []))
        self.assertEqual(client.views(), [])

    def test_a_view_that_cannot_be_built_is_logged_and_leaving_still_cleans_up(self):
        client = self.open()
        # the live calls come with the events now (never read again), so the readiness board breaks
        self.patch(self.ctx.readiness, "components", Unreadable())
        self.advance(SAMPLE)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(client.views()), 1)
        client.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.registry.subscribers, 0)

    # -- a slow reader, and leaving ----------------------------------------------------------------

    def test_leaving_unsubscribes_and_stops_every_timer(self):
        baseline = self.registry.subscribers
        first, second = self.open(), self.open()
        self.core.originate("1001", "5551234")
        self.assertEqual(self.registry.subscribers, baseline + 1, "one subscription for all streams")
        first.close()
        self.assertEqual(self.registry.subscribers, baseline + 1)
        second.close()
        self.assertEqual(self.feed.streams, [])
        self.assertEqual(self.registry.subscribers, baseline)

    def test_no_timer_is_left_once_the_last_stream_is_gone(self):
        client = self.open()
        self.advance(HEARTBEAT + COALESCE)
        client.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_stream_can_open_again_after_everyone_left(self):
        self.open().close()
        self.add_cdr("later", "2027-01-15T07:59:00.000Z")
        client = self.open()
        self.assertEqual([c["call_id"] for c in client.latest()["cdrs"]], ["later"])
        self.core.originate("1001", "5551234")
        self.advance(COALESCE)
        self.assertEqual(len(client.latest()["calls"]), 1)


class SociableStreamTests(StreamCase):
    """On the real registry and the simulated network of the core's harness: what the stream sends as
    the network's phones ring and answer on their own time."""

    def make_core(self):
        self.h = Harness()
        self.clock = self.h.clock
        return self.h.registry

    def test_a_second_stream_gets_the_current_view_at_once(self):
        first = self.open()
        self.core.originate("1001", "5551234")
        second = self.open()
        self.assertEqual(len(second.latest()["calls"]), 1)
        self.assertEqual(len(first.latest()["calls"]), 1, "the first stream hears of the change as well")
        self.advance(COALESCE)
        # then the phone's ringing (its leg's alerting_at), one more view
        self.assertEqual(len(first.views()), 3)
        self.assertIsNotNone(first.latest()["calls"][0]["legs"][0]["alerting_at"])

    def test_a_paused_stream_keeps_only_the_newest_view(self):
        client = self.open()
        client.transport.producer.pauseProducing()
        self.core.originate("1001", "5551234")
        self.advance(COALESCE)
        self.advance(3.0)
        self.advance(HEARTBEAT)
        self.assertEqual(len(client.views()), 1)
        self.assertNotIn(b"heartbeat", client.body)
        client.transport.producer.resumeProducing()
        views = client.views()
        self.assertEqual(len(views), 2)
        self.assertEqual(views[1]["calls"][0]["state"], "TALKING")
