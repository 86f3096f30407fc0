"""The Dialler Bridge's sessions on a task.Clock: init, heartbeats, dead links, blocking, call control
and status updates, bad input.

The sessions' tests run on the shipped fake call core (:class:`gateway.core.testing.FakeCallControl`);
those of call control are sociable: a real call registry with the sim driver (:class:`SociableBridgeTestCase`)."""

import json

from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from core.harness import Harness
from gateway.confschema import Secret
from gateway.core.testing import FakeCallControl
from gateway.patriot.bridge import CLOSE_NO_INIT, CLOSE_NORMAL, CLOSE_TOO_MANY_FAILURES, DiallerBridge
from gateway.patriot.config import BridgeConfig, BridgeUser
from gateway.patriot.line import Lines

from .support import FakeConnection, frame, new_metrics, status

ALICE = {"userName": "alice", "password": "pw-alice"}
BOB = {"userName": "bob", "password": "pw-bob"}


def run_now(function, *args):
    return defer.maybeDeferred(function, *args)


class BridgeTestCase(SynchronousTestCase):
    config_overrides: dict = {}

    def make_core(self):
        """The call core the lines are on: the fake, with alice's and bob's extensions."""
        self.clock = task.Clock()
        return FakeCallControl(["1001", "1002"], clock=self.clock)

    def setUp(self):
        self.registry = self.make_core()
        users = [
            BridgeUser(username="alice", password=Secret("pw-alice"), extension="1001"),
            BridgeUser(username="bob", password=Secret("pw-bob"), extension="1002"),
        ]
        self.config = BridgeConfig(users=users, max_init_failures=3, **self.config_overrides)
        self.metrics, self.prometheus = new_metrics()
        self.lines = Lines(self.registry)
        self.run_blocking = run_now
        self.bridge = DiallerBridge(self.config, reactor=self.clock, lines=self.lines, metrics=self.metrics,
                                    run_blocking=lambda f, *a: self.run_blocking(f, *a))

    def tearDown(self):
        for session in list(self.bridge.sessions):
            session.closed("test over")
        self.lines.close()

    def connect(self, host="10.0.0.7", port=50000):
        connection = FakeConnection(host, port)
        return self.bridge.session_opened(connection), connection

    def login(self, payload=ALICE, **kw):
        session, connection = self.connect(**kw)
        session.frame_received(frame("init-request", payload), False)
        self.assertEqual(connection.take(), [{"type": "init-response", "payload": {"success": True}},
                                             {"type": "call-status-update", "payload": status(False)}])
        return session, connection

    def sample(self, name, **labels):
        return self.prometheus.get_sample_value(name, labels) or 0


class SociableBridgeTestCase(BridgeTestCase):
    """The same on the real registry with the sim network (``self.harness``), whose phones and numbers
    answer, ring busy and hang up by themselves."""

    def make_core(self):
        self.harness = Harness()
        self.clock = self.harness.clock
        return self.harness.registry


class InitTests(BridgeTestCase):
    def test_messages_before_init_are_ignored_but_heartbeats(self):
        session, connection = self.connect()
        for message in [frame("call-status-request"), frame("hangup-request"),
                        frame("dial-request", {"phoneNo": "5551234", "rawPhoneNo": "555 1234"})]:
            session.frame_received(message, False)
        self.assertEqual(connection.take(), [])
        self.assertEqual(self.registry.calls(), [])
        self.assertIsNone(session.line)
        self.assertEqual(self.sample("gateway_ignored_messages_total", adapter="patriot", reason="unauthenticated"), 3)

    def test_heartbeats_are_answered_before_init_and_after_a_refused_one(self):
        """Spec 000: Patriot heartbeats every 5 s; the Dialler Server should answer each."""
        session, connection = self.connect()
        session.frame_received(frame("heartbeat"), False)
        self.assertEqual(connection.take(), [{"type": "heartbeat-response"}])
        session.frame_received(frame("init-request", {"userName": "alice", "password": "guess"}), False)
        self.assertFalse(connection.take()[0]["payload"]["success"])
        session.frame_received(frame("heartbeat"), False)
        self.assertEqual(connection.take(), [{"type": "heartbeat-response"}])
        self.assertIsNone(session.user)
        session.frame_received(frame("call-status-request"), False)
        self.assertEqual(connection.take(), [])

    def test_successful_init_then_heartbeats_are_answered(self):
        session, connection = self.login()
        self.assertEqual(session.user.username, "alice")
        self.assertEqual(session.line.extension, "1001")
        session.frame_received(frame("heartbeat"), False)
        session.frame_received(frame("heartbeat"), False)
        self.assertEqual(connection.take(), [{"type": "heartbeat-response"}] * 2)
        self.assertEqual(self.sample("gateway_patriot_logins_total", mode="bridge", result="success"), 1)
        self.assertEqual(self.sample("gateway_patriot_bridge_connections", state="initialised"), 1)

    def test_wrong_password_gets_success_false_and_cannot_dial(self):
        session, connection = self.connect()
        session.frame_received(frame("init-request", {"userName": "alice", "password": "guess"}), False)
        self.assertEqual(connection.take(), [{"type": "init-response",
                                              "payload": {"success": False, "error": "invalid user name or password"}}])
        session.frame_received(frame("dial-request", {"phoneNo": "5551234", "rawPhoneNo": "5551234"}), False)
        self.assertEqual(connection.take(), [])
        self.assertEqual(self.registry.calls(), [])
        self.assertEqual(connection.closes, [])
        self.assertEqual(self.sample("gateway_patriot_logins_total", mode="bridge", result="failure"), 1)

    def test_payload_without_credentials_is_refused_with_the_reason(self):
        session, connection = self.connect()
        session.frame_received(frame("init-request", {"user": "alice"}), False)
        (response,) = connection.take()
        self.assertFalse(response["payload"]["success"])
        self.assertIn("'userName'", response["payload"]["error"])

    def test_repeated_init_is_answered_again_without_counting_twice(self):
        session, connection = self.login()
        session.frame_received(frame("init-request", ALICE), False)
        self.assertEqual(connection.take(), [{"type": "init-response", "payload": {"success": True}}])
        self.assertEqual(self.sample("gateway_patriot_logins_total", mode="bridge", result="success"), 1)
        wrong = {"userName": "alice", "password": "guess"}
        other, other_connection = self.connect(port=50001)
        for _ in range(5):  # the same wrong init, re-sent: one failure, never blocked
            other.frame_received(frame("init-request", wrong), False)
        self.assertEqual(len(other_connection.take()), 5)
        self.assertEqual(other_connection.closes, [])
        self.assertEqual(self.sample("gateway_patriot_logins_total", mode="bridge", result="failure"), 1)

    def test_init_repeated_while_being_checked_gets_one_answer_each(self):
        pending = defer.Deferred()
        self.run_blocking = lambda f, *a: pending
        session, connection = self.connect()
        session.frame_received(frame("init-request", ALICE), False)
        session.frame_received(frame("init-request", ALICE), False)
        session.frame_received(frame("init-request", BOB), False)
        self.assertEqual(connection.take(), [{"type": "init-response", "payload": {
            "success": False, "error": "another init-request is being checked"}}])
        pending.callback(True)
        self.assertEqual([m["type"] for m in connection.take()],
                         ["init-response", "init-response", "call-status-update"])
        self.assertEqual(session.user.username, "alice")

    def test_another_user_on_an_initialised_connection_is_refused(self):
        session, connection = self.login()
        session.frame_received(frame("init-request", BOB), False)
        (response,) = connection.take()
        self.assertEqual(response["payload"]["success"], False)
        self.assertIn("already initialised as 'alice'", response["payload"]["error"])
        self.assertEqual(session.user.username, "alice")

    def test_check_that_fails_unexpectedly_is_answered_and_can_be_retried(self):
        self.run_blocking = lambda f, *a: defer.fail(RuntimeError("thread pool gone"))
        session, connection = self.connect()
        session.frame_received(frame("init-request", ALICE), False)
        self.assertEqual(connection.take(), [{"type": "init-response", "payload": {
            "success": False, "error": "the init-request could not be checked"}}])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.run_blocking = run_now
        session.frame_received(frame("init-request", ALICE), False)
        self.assertEqual(connection.take()[0], {"type": "init-response", "payload": {"success": True}})

    def test_answer_after_the_connection_closed_is_dropped(self):
        pending = defer.Deferred()
        self.run_blocking = lambda f, *a: pending
        session, connection = self.connect()
        session.frame_received(frame("init-request", ALICE), False)
        session.closed("gone")
        pending.callback(True)
        self.assertEqual(connection.take(), [])
        self.assertIsNone(session.user)

    def test_too_many_failures_close_and_refuse_the_address(self):
        wrong = [{"userName": "alice", "password": f"guess{i}"} for i in range(3)]
        session, connection = self.connect(host="10.0.0.9")
        for payload in wrong[:2]:
            session.frame_received(frame("init-request", payload), False)
        self.assertEqual(connection.closes, [])
        again, again_connection = self.connect(host="10.0.0.9", port=50002)
        again.frame_received(frame("init-request", wrong[2]), False)
        self.assertEqual(again_connection.closes, [(CLOSE_TOO_MANY_FAILURES, "too many failed init-requests")])
        refusal = self.bridge.refusal("/dialler", "10.0.0.9", "10.0.0.9:50003")
        self.assertIsInstance(refusal, ConnectionDeny)
        self.assertEqual(refusal.code, ConnectionDeny.FORBIDDEN)
        self.assertIsNone(self.bridge.refusal("/dialler", "10.0.0.8", "10.0.0.8:1"))
        self.assertEqual(self.bridge.status()["blocked"], {"10.0.0.9": 300.0})
        self.clock.advance(300)
        self.assertIsNone(self.bridge.refusal("/dialler", "10.0.0.9", "10.0.0.9:50004"))

    def test_success_does_not_forget_the_address_failures(self):
        """Else a valid login between guesses would buy the address more guesses at other users."""
        session, connection = self.connect()
        session.frame_received(frame("init-request", {"userName": "bob", "password": "x"}), False)
        session.frame_received(frame("init-request", {"userName": "bob", "password": "y"}), False)
        session.frame_received(frame("init-request", ALICE), False)
        self.assertEqual(connection.take()[-2]["payload"], {"success": True})
        other, other_connection = self.connect(port=50001)
        other.frame_received(frame("init-request", {"userName": "bob", "password": "z"}), False)
        self.assertEqual(other_connection.closes, [(CLOSE_TOO_MANY_FAILURES, "too many failed init-requests")])
        self.assertEqual(connection.closes, [])  # alice, logged in, stays

    def test_other_paths_are_refused(self):
        refusal = self.bridge.refusal("/other", "10.0.0.7", "10.0.0.7:1")
        self.assertEqual(refusal.code, ConnectionDeny.NOT_FOUND)


class LivenessTests(BridgeTestCase):
    def test_silent_connection_is_dropped_as_dead(self):
        session, connection = self.login()
        for _ in range(4):  # heartbeats every 5 s keep it alive
            self.clock.advance(5)
            session.frame_received(frame("heartbeat"), False)
        self.clock.advance(14.9)
        self.assertFalse(connection.aborted)
        self.clock.advance(0.1)
        self.assertTrue(connection.aborted)

    def test_any_frame_counts_as_life_even_before_init(self):
        session, connection = self.connect()
        self.clock.advance(10)
        session.frame_received(b"not json", False)
        self.clock.advance(10)
        self.assertFalse(connection.aborted)
        self.clock.advance(5)
        self.assertTrue(connection.aborted)

    def test_closed_session_leaves_no_timer_and_no_listener(self):
        session, connection = self.login()
        session.closed("connection lost")
        self.assertTrue(session.done.called)
        self.assertEqual(self.bridge.sessions, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.registry.originate("1001", "5551234")
        self.assertEqual(connection.take(), [])

    def test_close_all_closes_with_going_away_and_waits(self):
        first, first_connection = self.login()
        second, second_connection = self.connect(port=50001)
        stopped = self.bridge.close_all()
        self.assertEqual(first_connection.closes, [(CLOSE_NORMAL, "the gateway is stopping")])
        self.assertEqual(second_connection.closes, [(CLOSE_NORMAL, "the gateway is stopping")])
        self.assertNoResult(stopped)
        first.closed("closed")
        second.closed("closed")
        self.successResultOf(stopped)


class InitTimeoutTests(BridgeTestCase):
    """init_timeout (30 s by default): a connection with no successful init by then is closed (4008);
    heartbeats are answered meanwhile (spec 000) but do not put it off."""

    def test_heartbeats_are_answered_but_do_not_extend_the_time_to_log_in(self):
        session, connection = self.connect()
        for _ in range(5):
            self.clock.advance(5)
            session.frame_received(frame("heartbeat"), False)
            self.assertEqual(connection.take(), [{"type": "heartbeat-response"}])
        self.clock.advance(4.9)
        self.assertEqual(connection.closes, [])
        self.clock.advance(0.1)
        self.assertEqual(connection.closes, [(CLOSE_NO_INIT, "no successful init-request in time")])
        self.assertFalse(connection.aborted)  # heartbeats kept it alive: closed, not dropped as dead
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="init_timeout"), 1)

    def test_a_refused_init_does_not_extend_it_either(self):
        session, connection = self.connect()
        self.clock.advance(10)
        session.frame_received(frame("init-request", {"userName": "alice", "password": "guess"}), False)
        for _ in range(4):
            self.clock.advance(5)
            session.frame_received(frame("heartbeat"), False)
        self.assertEqual(connection.closes, [(CLOSE_NO_INIT, "no successful init-request in time")])

    def test_a_successful_init_ends_the_wait(self):
        session, connection = self.connect()
        self.clock.advance(29)
        session.frame_received(frame("init-request", ALICE), False)
        for _ in range(20):
            self.clock.advance(5)
            session.frame_received(frame("heartbeat"), False)
        self.assertEqual(connection.closes, [])
        self.assertEqual(session.user.username, "alice")
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="init_timeout"), 0)

    def test_closed_connections_leave_no_timer(self):
        session, _ = self.connect()
        session.closed("gone")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_many_timeouts_are_logged_within_budget(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        connections = [self.connect(host=f"10.1.0.{i}")[1] for i in range(50)]
        self.clock.advance(30)
        self.assertTrue(all(c.closes == [(CLOSE_NO_INIT, "no successful init-request in time")] for c in connections))
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="init_timeout"), 50)
        lines = [e for e in events if "no successful init-request in {timeout} s" in e.get("log_format", "")]
        self.assertEqual(len(lines), 5)
        self.assertEqual(lines[0]["peer"], "10.1.0.0:50000")


class UnauthenticatedCapTests(BridgeTestCase):
    """max_unauthenticated (3 here) and max_unauthenticated_per_address (2 here): one more handshake
    gets HTTP 503; a login or a close makes room."""

    config_overrides = {"max_unauthenticated": 3, "max_unauthenticated_per_address": 2}

    def refused(self, host, port=1):
        refusal = self.bridge.refusal("/dialler", host, f"{host}:{port}")
        return refusal.code if refusal is not None else None

    def test_per_address(self):
        first, _ = self.connect(host="10.0.0.7", port=1)
        second, _ = self.connect(host="10.0.0.7", port=2)
        self.assertEqual(self.refused("10.0.0.7"), 503)
        self.assertIsNone(self.refused("10.0.0.8"))
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="too_many_unauthenticated"), 1)
        first.frame_received(frame("init-request", ALICE), False)  # logged in: no longer counted
        self.assertIsNone(self.refused("10.0.0.7"))
        self.connect(host="10.0.0.7", port=3)
        self.assertEqual(self.refused("10.0.0.7"), 503)
        second.closed("gone")
        self.assertIsNone(self.refused("10.0.0.7"))

    def test_per_ipv6_64(self):
        self.connect(host="2001:db8:0:1::1")
        self.connect(host="2001:db8:0:1::2")
        self.assertEqual(self.refused("2001:db8:0:1::3"), 503)
        self.assertIsNone(self.refused("2001:db8:0:2::1"))

    def test_in_all(self):
        sessions = [self.connect(host=f"10.0.0.{i}")[0] for i in range(3)]
        self.assertEqual(self.refused("10.0.0.9"), 503)
        sessions[0].closed("gone")
        self.assertIsNone(self.refused("10.0.0.9"))

    def test_logged_within_budget(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for i in range(3):
            self.connect(host=f"10.0.0.{i}")
        for port in range(100):
            self.assertEqual(self.refused("10.0.0.9", port), 503)
        lines = [e for e in events if "refusing the handshake of {peer} (503)" in e.get("log_format", "")]
        self.assertEqual(len(lines), 5)
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="too_many_unauthenticated"), 100)

    def test_the_real_handshake_is_refused_with_503(self):
        """Autobahn calls onConnect and onOpen in one go, so each opened connection counts before the next."""
        request = (b"GET /dialler HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        answers, protocols = [], []
        for port in range(3):
            address = IPv4Address("TCP", "10.0.0.7", 40000 + port)
            protocol = self.bridge.factory.buildProtocol(address)
            transport = iosim.FakeTransport(protocol, isServer=True, peerAddress=address)
            protocol.makeConnection(transport)
            protocol.dataReceived(request)
            answers.append(b"".join(transport.stream).split(b"\r\n", 1)[0])
            protocols.append(protocol)
        self.assertEqual(answers[:2], [b"HTTP/1.1 101 Switching Protocols"] * 2)
        self.assertTrue(answers[2].startswith(b"HTTP/1.1 503"), answers[2])
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="too_many_unauthenticated"), 1)
        for protocol in protocols:
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.bridge.sessions, [])


class CallControlTests(SociableBridgeTestCase):
    def test_dial_answer_and_hangup_from_patriot(self):
        session, connection = self.login()
        session.frame_received(frame("dial-request", {"phoneNo": "+5551234", "rawPhoneNo": "+555 (1234)"}), False)
        self.assertEqual(connection.statuses(), [status(True, True, "+5551234")])
        (call,) = self.registry.calls()
        self.assertEqual(call.attributes["raw_number"], "+555 (1234)")
        self.assertIn("alice", call.attributes["requested_by"])
        self.harness.advance(3.0)
        self.assertEqual(self.registry.call(call.call_id).state, "TALKING")
        self.assertEqual(connection.statuses(), [status(True, True, "+5551234")])  # answered
        session.frame_received(frame("call-status-request"), False)
        self.assertEqual(connection.statuses(), [status(True, True, "+5551234")])
        session.frame_received(frame("hangup-request"), False)
        self.assertEqual(connection.statuses(), [status(False, True, "+5551234")])
        self.harness.advance(0.1)
        (cdr,) = self.harness.cdrs
        self.assertEqual((cdr["cause"], cdr["hangup_by"]), ("normal", "desktop"))
        self.assertEqual(self.sample("gateway_patriot_commands_total", mode="bridge", command="hangup", result="ok"), 1)
        session.frame_received(frame("call-status-request"), False)
        self.assertEqual(connection.statuses(), [status(False, True, "+5551234")])

    def test_far_end_hangs_up(self):
        session, connection = self.login()
        session.frame_received(frame("dial-request", {"phoneNo": "5551234", "rawPhoneNo": "5551234"}), False)
        self.harness.advance(3.0)
        connection.take()
        self.harness.network.party("5551234").hang_up()
        self.assertEqual(connection.statuses(), [status(False, True, "5551234")])

    def test_inbound_call_to_the_extension(self):
        session, connection = self.login()
        self.harness.network.place_inbound("0299998888", "100")  # routed to extension 1001
        self.assertEqual(connection.statuses(), [status(True, False, "0299998888")])
        self.harness.advance(1.0)  # alice's phone answers
        self.assertEqual(connection.statuses(), [status(True, False, "0299998888")])
        self.harness.network.party("0299998888").hang_up()
        self.assertEqual(connection.statuses(), [status(False, False, "0299998888")])

    def test_login_during_a_call_is_told_the_call(self):
        self.registry.originate("1001", "5551234")
        session, connection = self.connect()
        session.frame_received(frame("init-request", ALICE), False)
        self.assertEqual(connection.take()[1], {"type": "call-status-update", "payload": status(True, True, "5551234")})

    def test_calls_of_other_extensions_are_not_reported(self):
        session, connection = self.login()
        self.registry.originate("1002", "5551234")
        self.harness.advance(5.0)
        self.assertEqual(connection.take(), [])

    def test_same_user_on_two_workstations_shares_the_call(self):
        first, first_connection = self.login()
        second, second_connection = self.login(port=50001)
        first.frame_received(frame("dial-request", {"phoneNo": "5551234", "rawPhoneNo": "5551234"}), False)
        self.harness.advance(3.0)
        expected = [status(True, True, "5551234")] * 2
        self.assertEqual(first_connection.statuses(), expected)
        self.assertEqual(second_connection.statuses(), expected)
        second.frame_received(frame("hangup-request"), False)
        self.assertEqual(first_connection.statuses(), [status(False, True, "5551234")])
        self.assertEqual(second_connection.statuses(), [status(False, True, "5551234")])

    def test_dial_while_busy_is_refused_with_the_current_status(self):
        session, connection = self.login()
        session.frame_received(frame("dial-request", {"phoneNo": "5551234", "rawPhoneNo": "5551234"}), False)
        self.harness.advance(3.0)
        connection.take()
        session.frame_received(frame("dial-request", {"phoneNo": "5554321", "rawPhoneNo": "5554321"}), False)
        self.assertEqual(connection.statuses(), [status(True, True, "5551234")])
        self.assertEqual(len(self.registry.calls()), 1)
        self.assertEqual(
            self.sample("gateway_patriot_commands_total", mode="bridge", command="dial", result="extension_busy"), 1)

    def test_hangup_without_a_call_answers_with_the_status(self):
        session, connection = self.login()
        session.frame_received(frame("hangup-request"), False)
        self.assertEqual(connection.statuses(), [status(False)])

    def test_failed_dial_is_answered_with_the_status(self):
        session, connection = self.login()
        self.registry._extensions.pop("1001")  # the extension vanished from the registry
        session.frame_received(frame("dial-request", {"phoneNo": "5551234", "rawPhoneNo": "5551234"}), False)
        self.assertEqual(connection.statuses(), [status(False)])
        self.assertEqual(
            self.sample("gateway_patriot_commands_total", mode="bridge", command="dial", result="unknown_extension"), 1)

    def test_busy_number_ends_the_call(self):
        session, connection = self.login()
        session.frame_received(frame("dial-request", {"phoneNo": "5550001", "rawPhoneNo": "5550001"}), False)
        self.harness.advance(3.0)
        self.assertEqual(connection.statuses(), [status(True, True, "5550001"), status(False, True, "5550001")])


class ReplaceTests(SociableBridgeTestCase):
    config_overrides = {"dial_while_busy": "replace"}

    def test_dial_while_busy_ends_the_call_then_dials(self):
        session, connection = self.login()
        session.frame_received(frame("dial-request", {"phoneNo": "5551234", "rawPhoneNo": "5551234"}), False)
        self.harness.advance(3.0)
        first = self.registry.active_call_for("1001").call_id
        connection.take()
        session.frame_received(frame("dial-request", {"phoneNo": "5554321", "rawPhoneNo": "5554321"}), False)
        self.assertEqual(connection.statuses(), [status(False, True, "5551234"), status(True, True, "5554321")])
        self.assertEqual(self.registry.call(first).state, "RELEASED")
        self.assertEqual(self.registry.active_call_for("1001").number, "5554321")


class BadInputTests(BridgeTestCase):
    def test_bad_frames_are_logged_counted_and_harmless(self):
        session, connection = self.login()
        bystander, bystander_connection = self.login(BOB, port=50001)
        for payload, is_binary in [
            (b"{not json", False),
            (b"[1, 2]", False),
            (b'{"type": "shout"}', False),
            (b'{"payload": {}}', False),
            (b"\xff\xfe", False),
            (b"\x00\x01binary", True),
            (frame("init-response", {"success": True}), False),
        ]:
            session.frame_received(payload, is_binary)
        self.assertEqual(connection.take(), [])
        self.assertEqual(self.sample("gateway_patriot_bad_messages_total", mode="bridge"), 6)
        self.assertEqual(bystander_connection.take(), [])
        session.frame_received(frame("heartbeat"), False)
        self.assertEqual(connection.take(), [{"type": "heartbeat-response"}])

    def test_a_failure_while_handling_a_bad_init_is_logged_not_raised(self):
        """A bad init counts a failure, which may lock the address out and close its other
        connections: whatever fails there is logged, never raised into Autobahn's onMessage."""
        victim, victim_connection = self.connect(host="10.0.0.9", port=1)
        other, other_connection = self.connect(host="10.0.0.9", port=2)

        def broken(code, reason):
            raise RuntimeError("the transport is gone")

        victim_connection.close = broken
        guesser, guesser_connection = self.connect(host="10.0.0.9", port=3)
        for _ in range(3):
            guesser.frame_received(b'{"type":"init-request"}', False)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(self.bridge.guard.blocked("10.0.0.9"))
        closed = [(CLOSE_TOO_MANY_FAILURES, "too many failed init-requests")]
        self.assertEqual((other_connection.closes, guesser_connection.closes), (closed, closed))

    def test_a_failing_bad_message_handler_is_logged_not_raised(self):
        session, connection = self.login()
        session._bad_message = lambda error: 1 / 0
        session.frame_received(b"{not json", False)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        session.frame_received(frame("heartbeat"), False)
        self.assertEqual(connection.take(), [{"type": "heartbeat-response"}])

    def test_invalid_dial_requests_are_answered_with_the_status(self):
        session, connection = self.login()
        for payload in [None, {"phoneNo": "", "rawPhoneNo": ""}, {"phoneNo": "555-1234", "rawPhoneNo": "x"},
                        {"phoneNo": "1" * 33, "rawPhoneNo": "x"}, {"phoneNo": 5551234, "rawPhoneNo": "x"},
                        {"rawPhoneNo": "5551234"}]:
            session.frame_received(frame("dial-request", payload), False)
        self.assertEqual(connection.statuses(), [status(False)] * 6)
        self.assertEqual(self.registry.calls(), [])
        self.assertEqual(
            self.sample("gateway_patriot_commands_total", mode="bridge", command="dial", result="invalid_argument"), 6)

    def test_a_phone_number_with_a_trailing_newline_is_refused_and_nothing_is_dialled(self):
        session, connection = self.login()
        for phone in ("5551234\n", "5551234\r\n", "\n"):
            session.frame_received(frame("dial-request", {"phoneNo": phone, "rawPhoneNo": "5551234"}), False)
        self.assertEqual(connection.statuses(), [status(False)] * 3)
        self.assertEqual(self.registry.calls(), [])

    def test_a_failing_handler_is_logged_not_raised(self):
        session, connection = self.login()
        session.call_control = lambda message: 1 / 0
        session.frame_received(frame("call-status-request"), False)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        session.frame_received(frame("heartbeat"), False)
        self.assertEqual(connection.take(), [{"type": "heartbeat-response"}])


class StatusTests(BridgeTestCase):
    def test_status_lists_sessions_and_lines(self):
        self.login()
        self.connect(port=50001)
        status_ = self.bridge.status()
        self.assertEqual(status_["listen"], "tcp:8765:interface=127.0.0.1")
        self.assertEqual(status_["sessions"], [
            {"peer": "10.0.0.7:50000", "extension": "1001", "user": "alice"},
            {"peer": "10.0.0.7:50001", "extension": None, "user": None},
        ])
        self.assertEqual(self.lines.to_dict()["1001"], {"extension": "1001", "call_id": None, "listeners": 1,
                                                        "callActive": False})


class AutobahnTimerTests(BridgeTestCase):
    def test_an_unfinished_handshake_is_dropped_on_the_bridges_clock(self):
        """Autobahn's opening-handshake timeout runs on the bridge's reactor, not the global one."""
        protocol = self.bridge.factory.buildProtocol(IPv4Address("TCP", "10.0.0.7", 50000))
        transport = iosim.makeFakeServer(protocol)
        protocol.makeConnection(transport)
        self.clock.advance(protocol.openHandshakeTimeout - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))


class BadInitTests(BridgeTestCase):
    """Spec 000: "The Dialler Server must respond with an InitResponse" — to every init-request."""

    def refused_init(self, raw: bytes, host: str = "10.0.0.7") -> str:
        session, connection = self.connect(host=host)
        session.frame_received(raw, False)
        (response,) = connection.take()
        self.assertEqual(response["type"], "init-response")
        self.assertFalse(response["payload"]["success"])
        session.closed("test")
        return response["payload"]["error"]

    def test_a_lone_surrogate_in_the_password_is_an_init_failure_naming_the_field(self):
        checks = []
        self.run_blocking = lambda f, *a: (checks.append(a), run_now(f, *a))[1]
        error = self.refused_init(b'{"type":"init-request","payload":{"userName":"alice","password":"pw\\udc80"}}')
        self.assertIn("'payload.password'", error)
        self.assertIn("surrogate", error)
        self.assertEqual(checks, [])  # no password was checked
        self.assertEqual(self.sample("gateway_patriot_logins_total", mode="bridge", result="failure"), 1)
        self.assertEqual(self.sample("gateway_ignored_messages_total", adapter="patriot", reason="bad_text"), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_no_null_or_non_object_payload_is_answered_and_counted(self):
        cases = [
            (b'{"type":"init-request"}', "payload missing"),
            (b'{"type":"init-request","payload":null}', "payload missing"),
            (b'{"type":"init-request","payload":42}', "must be an object, not a number"),
            (b'{"type":"init-request","payload":[1]}', "must be an object, not an array"),
            (b'{"type":"init-request","payload":"userName=alice"}', "payload is a string but not a JSON object"),
            (b'{"type":"init-request","payload":"[1]"}', "a string holding an array"),
        ]
        for i, (raw, words) in enumerate(cases):
            with self.subTest(raw=raw):
                self.assertIn(words, self.refused_init(raw, host=f"10.0.{i}.1"))
        self.assertEqual(self.sample("gateway_patriot_logins_total", mode="bridge", result="failure"), 6)

    def test_bad_inits_count_toward_the_lockout(self):
        session, connection = self.connect(host="10.0.0.9")
        for _ in range(2):
            session.frame_received(b'{"type":"init-request"}', False)
        self.assertEqual(connection.closes, [])
        session.frame_received(b'{"type":"init-request","payload":{"userName":"alice","password":"\\ud800"}}', False)
        self.assertEqual(connection.closes, [(CLOSE_TOO_MANY_FAILURES, "too many failed init-requests")])
        self.assertTrue(self.bridge.guard.blocked("10.0.0.9"))

    def test_a_payload_that_is_a_string_holding_a_json_object_logs_in(self):
        session, connection = self.connect()
        session.frame_received(frame("init-request", json.dumps(ALICE)), False)
        self.assertEqual(connection.take()[0], {"type": "init-response", "payload": {"success": True}})
        self.assertEqual(session.user.username, "alice")

    def test_a_surrogate_inside_the_string_payload_is_named_too(self):
        error = self.refused_init(frame("init-request", '{"userName": "alice", "password": "\\udfff"}'))
        self.assertIn("'payload.password'", error)

    def test_a_malformed_init_on_a_logged_in_connection_is_answered_not_counted(self):
        session, connection = self.login()
        session.frame_received(b'{"type":"init-request"}', False)
        (response,) = connection.take()
        self.assertFalse(response["payload"]["success"])
        self.assertEqual(self.sample("gateway_patriot_logins_total", mode="bridge", result="failure"), 0)
        self.assertEqual(session.user.username, "alice")

    def test_an_unreadable_frame_before_a_login_is_answered_as_a_failed_init(self):
        """It may have been the init; a frame the boundary cannot read at all has no known type."""
        checks = []
        self.run_blocking = lambda f, *a: (checks.append(a), run_now(f, *a))[1]
        init = b'{"type":"init-request","payload":{"userName":"alice","password":%s}}'
        cases = [
            (init % b"NaN", "NaN is not a JSON number"),
            (init % (b'{"a":' * 40 + b"1" + b"}" * 40), "nested deeper than 32 levels"),
            (init % (b"1" * 4301), "not JSON"),
            (init % b'"pw"' + b"\xff", "not UTF-8"),
            (b'{"ty\\ud800pe":"init-request","payload":{"userName":"alice","password":"pw-alice"}}', "surrogate"),
            (b"hello", "not JSON"),
        ]
        for i, (raw, words) in enumerate(cases):
            with self.subTest(raw=raw[:60]):
                self.assertIn(words, self.refused_init(raw, host=f"10.0.{i}.1"))
        self.assertEqual(checks, [])  # no password was checked
        self.assertEqual(self.sample("gateway_patriot_logins_total", mode="bridge", result="failure"), len(cases))
        self.assertEqual(self.sample("gateway_ignored_messages_total", adapter="patriot", reason="malformed"), 4)
        self.assertEqual(self.sample("gateway_ignored_messages_total", adapter="patriot", reason="bad_text"), 2)
        # a lone surrogate in a top-level key keeps the document: answered as the init it is
        self.assertIn("the key", self.refused_init(b'{"type":"init-request","payload":{},"\\ud800":1}'))
        # they count toward the lockout as any failed init does
        session, connection = self.connect(host="10.0.0.9")
        for _ in range(3):
            session.frame_received(init % b"NaN", False)
        self.assertEqual(connection.closes, [(CLOSE_TOO_MANY_FAILURES, "too many failed init-requests")])
        # once logged in such a frame is ignored and counted, not answered and not a failed login
        failures = self.sample("gateway_patriot_logins_total", mode="bridge", result="failure")
        session, connection = self.login(host="10.0.0.50")
        session.frame_received(init % b"NaN", False)
        session.frame_received(b"hello", False)
        self.assertEqual(connection.take(), [])
        self.assertEqual(connection.closes, [])
        self.assertEqual(self.sample("gateway_patriot_logins_total", mode="bridge", result="failure"), failures)
        self.assertEqual(self.sample("gateway_ignored_messages_total", adapter="patriot", reason="malformed"), 4 + 3 + 2)

    def test_bad_text_in_a_dial_request_is_answered_with_the_status(self):
        session, connection = self.login()
        session.frame_received(b'{"type":"dial-request","payload":{"phoneNo":"5551234","rawPhoneNo":"\\ud800"}}',
                               False)
        self.assertEqual(connection.statuses(), [status(False)])
        self.assertEqual(self.registry.calls(), [])


class LockoutTests(BridgeTestCase):
    """Failures counted per source address across connections; at max_init_failures (3 here) the
    address is locked out: every unauthenticated connection from it closed, its inits refused."""

    def setUp(self):
        super().setUp()
        self.checked = []  # every password the bridge checked
        self.pending = None  # a list of Deferreds: checks then wait for the test to answer them

        def run(function, *args):
            self.checked.append(args[0])
            if self.pending is None:
                return run_now(function, *args)
            d = defer.Deferred()
            self.pending.append((d, function, args))
            return d

        self.run_blocking = run

    def test_many_connections_from_one_address_get_at_most_max_init_failures_checks(self):
        """Before: 100 connections gave 500 checked guesses with a limit of 5."""
        sessions = [self.connect(host="10.6.6.6", port=40000 + i) for i in range(100)]
        for guess in range(5):
            for i, (session, _) in enumerate(sessions):
                session.frame_received(frame("init-request", {"userName": "alice", "password": f"g{i}-{guess}"}), False)
        self.assertEqual(len(self.checked), 3)
        for session, connection in sessions:
            self.assertEqual(connection.closes, [(CLOSE_TOO_MANY_FAILURES, "too many failed init-requests")])
        self.assertEqual(self.sample("gateway_patriot_lockouts_total"), 1)

    def test_concurrent_checks_from_one_address_run_one_at_a_time(self):
        self.pending = []
        sessions = [self.connect(host="10.6.6.6", port=40000 + i) for i in range(100)]
        for i, (session, _) in enumerate(sessions):
            session.frame_received(frame("init-request", {"userName": "alice", "password": f"g{i}"}), False)
        while self.pending:
            self.assertEqual(len(self.pending), 1)  # one check in flight for the address
            d, function, args = self.pending.pop()
            d.callback(function(*args))
        self.assertEqual(len(self.checked), 3)
        answers = [connection.take() for _, connection in sessions]
        self.assertEqual([a[0]["payload"]["error"] for a in answers[:3]], ["invalid user name or password"] * 3)
        for answer in answers[3:]:  # those that waited are told why, once, and closed
            self.assertEqual(len(answer), 1)
            self.assertIn("too many failed init-requests from this address; try again in 300 s",
                          answer[0]["payload"]["error"])
        self.assertTrue(all(c.closes == [(CLOSE_TOO_MANY_FAILURES, "too many failed init-requests")]
                            for _, c in sessions))

    def test_the_lockout_closes_idle_connections_of_the_address_only(self):
        idle, idle_connection = self.connect(host="10.6.6.6", port=1)
        alice, alice_connection = self.login(host="10.6.6.6", port=2)
        elsewhere, elsewhere_connection = self.connect(host="10.7.7.7", port=3)
        guesser, _ = self.connect(host="10.6.6.6", port=4)
        for guess in range(3):
            guesser.frame_received(frame("init-request", {"userName": "bob", "password": f"g{guess}"}), False)
        self.assertEqual(idle_connection.closes, [(CLOSE_TOO_MANY_FAILURES, "too many failed init-requests")])
        self.assertEqual(idle_connection.take(), [])  # it sent no init: nothing to answer
        self.assertEqual((alice_connection.closes, elsewhere_connection.closes), ([], []))
        alice.frame_received(frame("heartbeat"), False)
        self.assertEqual(alice_connection.take(), [{"type": "heartbeat-response"}])

    def test_inits_are_refused_until_the_lockout_ends_by_the_clock(self):
        guesser, _ = self.connect(host="10.6.6.6")
        for guess in range(3):
            guesser.frame_received(frame("init-request", {"userName": "bob", "password": f"g{guess}"}), False)
        self.clock.advance(200)
        late, late_connection = self.connect(host="10.6.6.6", port=2)  # its handshake raced the lockout
        late.frame_received(frame("init-request", ALICE), False)
        self.assertEqual(late_connection.take(), [{"type": "init-response", "payload": {
            "success": False, "error": "too many failed init-requests from this address; try again in 100 s"}}])
        self.assertEqual(late_connection.closes, [(CLOSE_TOO_MANY_FAILURES, "too many failed init-requests")])
        self.assertEqual(len(self.checked), 3)
        self.assertIsNotNone(self.bridge.refusal("/dialler", "10.6.6.6", "10.6.6.6:3"))
        self.clock.advance(100)
        self.assertIsNone(self.bridge.refusal("/dialler", "10.6.6.6", "10.6.6.6:3"))
        self.login(host="10.6.6.6", port=3)
        self.assertEqual(len(self.checked), 4)

    def test_a_connection_closed_during_its_check_still_counts_the_failure(self):
        self.pending = []
        for i in range(3):
            session, _ = self.connect(host="10.6.6.6", port=i)
            session.frame_received(frame("init-request", {"userName": "alice", "password": f"g{i}"}), False)
            session.closed("hung up at once")
            d, function, args = self.pending.pop()
            d.callback(function(*args))
        self.assertTrue(self.bridge.guard.blocked("10.6.6.6"))

    def test_a_connection_closed_while_waiting_gives_up_its_turn(self):
        self.pending = []
        first, _ = self.connect(host="10.6.6.6", port=1)
        first.frame_received(frame("init-request", {"userName": "alice", "password": "g"}), False)
        gone, _ = self.connect(host="10.6.6.6", port=2)
        gone.frame_received(frame("init-request", {"userName": "alice", "password": "h"}), False)
        gone.closed("gone")
        last, last_connection = self.connect(host="10.6.6.6", port=3)
        last.frame_received(frame("init-request", ALICE), False)
        d, function, args = self.pending.pop()
        d.callback(function(*args))
        d, function, args = self.pending.pop()  # the next turn goes to the one still there
        self.assertEqual(args[0], "pw-alice")
        d.callback(function(*args))
        self.assertEqual(last.user.username, "alice")
        self.assertEqual(self.checked, ["g", "pw-alice"])

    def test_refused_handshakes_are_not_one_log_line_each(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        guesser, _ = self.connect(host="10.6.6.6")
        for guess in range(3):
            guesser.frame_received(frame("init-request", {"userName": "bob", "password": f"g{guess}"}), False)
        for port in range(1000):
            self.assertIsNotNone(self.bridge.refusal("/dialler", "10.6.6.6", f"10.6.6.6:{port}"))
        refusals = [e for e in events if "refusing the" in e.get("log_format", "")]
        self.assertEqual([e["refused"] for e in refusals], [1, 2, 3, 4, 5])  # then summarised
        self.clock.advance(60)
        self.bridge.refusal("/dialler", "10.6.6.6", "10.6.6.6:1001")
        (summary,) = [e for e in events if "refused {count} more" in e.get("log_format", "")]
        self.assertEqual((summary["count"], summary["peer"]), (995, "10.6.6.6:999"))
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="locked_out"), 1001)

    def test_status_shows_the_locked_out_addresses(self):
        guesser, _ = self.connect(host="10.6.6.6")
        for guess in range(3):
            guesser.frame_received(frame("init-request", {"userName": "bob", "password": f"g{guess}"}), False)
        self.assertEqual(self.bridge.status()["blocked"], {"10.6.6.6": 300.0})
        self.assertEqual(self.bridge.status()["tracked_addresses"], 1)


class LockoutTableTests(BridgeTestCase):
    """max_tracked_addresses: a lockout is never forgotten to make room; a full table fails closed."""

    config_overrides = {"max_tracked_addresses": 2}

    def lock(self, host):
        session, _ = self.connect(host=host)
        for guess in range(3):
            session.frame_received(frame("init-request", {"userName": "bob", "password": f"g{guess}"}), False)
        self.assertTrue(self.bridge.guard.blocked(host))

    def test_failures_from_other_addresses_do_not_lift_a_lockout(self):
        self.lock("2001:db8:0:1::1")
        for i in range(10):  # each from another /64: one failure each
            session, _ = self.connect(host=f"2001:db8:1:{i:x}::1")
            session.frame_received(frame("init-request", {"userName": "bob", "password": "x"}), False)
        self.assertIsNotNone(self.bridge.refusal("/dialler", "2001:db8:0:1::2", "[2001:db8:0:1::2]:1"))
        self.assertEqual(list(self.bridge.status()["blocked"]), ["2001:db8:0:1::/64"])

    def test_a_table_full_of_lockouts_refuses_new_addresses_counted_and_logged_rate_limited(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.lock("10.6.0.1")
        self.lock("10.6.0.2")
        refusal = self.bridge.refusal("/dialler", "10.6.0.3", "10.6.0.3:1")
        self.assertEqual(refusal.code, ConnectionDeny.FORBIDDEN)
        raced, connection = self.connect(host="10.6.0.3")  # its handshake came before the table filled
        raced.frame_received(frame("init-request", ALICE), False)
        (answer,) = connection.take()
        self.assertFalse(answer["payload"]["success"])
        self.assertIn("too many addresses are locked out to take another; try again in 300 s",
                      answer["payload"]["error"])
        self.assertEqual(connection.closes, [(CLOSE_TOO_MANY_FAILURES, "too many failed init-requests")])
        self.assertIsNone(raced.user)
        for port in range(2, 200):
            self.bridge.refusal("/dialler", "10.6.0.3", f"10.6.0.3:{port}")
        self.assertEqual(self.sample("gateway_patriot_bridge_refused_total", reason="table_full"), 200)
        lines = [e for e in events if "the lockout table holds" in e.get("log_format", "")]
        self.assertEqual(len(lines), 5)  # the rest summarised
        self.assertEqual(lines[0]["peer"], "10.6.0.3:1")
        self.clock.advance(60)
        self.bridge.refusal("/dialler", "10.6.0.3", "10.6.0.3:200")
        (summary,) = [e for e in events if "lockout table being full" in e.get("log_format", "")]
        self.assertEqual(summary["count"], 195)
        self.assertEqual(sorted(self.bridge.status()["blocked"]), ["10.6.0.1", "10.6.0.2"])
        self.clock.advance(240)
        self.assertIsNone(self.bridge.refusal("/dialler", "10.6.0.3", "10.6.0.3:1"))
        self.login(host="10.6.0.3")


class IgnoredBudgetTests(BridgeTestCase):
    config_overrides = {"max_message_burst": 5000}  # 2,000 frames at one instant, within the message rate

    def test_junk_is_counted_in_full_and_logged_within_the_budget(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        session, connection = self.login()
        for _ in range(1000):
            session.frame_received(b'{"type": "shout"}', False)
            session.frame_received(b"{not json", False)
        self.assertEqual(self.sample("gateway_ignored_messages_total", adapter="patriot", reason="unknown"), 1000)
        self.assertEqual(self.sample("gateway_ignored_messages_total", adapter="patriot", reason="malformed"), 1000)
        ignored = [e for e in events if "ignored" in e.get("log_format", "")]
        self.assertEqual(len(ignored), 5)
        self.assertIn("10.0.0.7:50000", ignored[0]["peer"])
        session.closed("gone")  # the budget is closed: one summary of the rest
        summary = [e for e in events if "more messages" in e.get("log_format", "")]
        self.assertEqual(len(summary), 1)
        self.assertEqual(summary[0]["count"], 1995)
