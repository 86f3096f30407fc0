"""Tests of the processor-bridge simulator, driven by a small scripted Bridge Client.

The unit tests connect the simulator and the client in memory (``twisted.test.iosim``) on a
``task.Clock``; the integration tests run the same exchange over loopback TCP and TLS, and the
command line in a subprocess.
"""

import os
import socket
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint, TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from gateway.cti import envelope as env
from gateway.cti.framing import FramedJSONProtocol, encode_frame
from gateway.cti.names import (
    Channel,
    ChannelGroupInit,
    ChannelInit,
    ControlStatus,
    ConversationInit,
    CtiNames,
    InteractionAnnouncement,
    InteractionInit,
    Party,
    SessionInit,
)
from gateway.sim.his import HisBridgeSim, SimulatorError, parse_step
from gateway.sim.tlsutil import generate_self_signed

NAMES = CtiNames()
CONTROL = "PROC.CONTROL"
CHANNEL = "alice.cg1.tel"
INTERACTION = f"{CHANNEL}.i1"
CONVERSATION = f"{INTERACTION}.c1"


class FakeClient(FramedJSONProtocol):
    """A small Bridge Client: answers every query and request correctly, unless told to hold back.

    ``hold_back`` names the messages it records but does not answer, so a test can answer them
    (or not) itself. After answering the control status query it raises the status event.
    """

    def __init__(self, names=NAMES, byteorder="big", status="STARTED"):
        super().__init__(byteorder)
        self.names = names
        self.status = status
        self.received = []
        self.hold_back = set()
        self.bodies = {
            names.control_query_status: ControlStatus(status).to_body(),
            names.cti_query_capabilities: {names.capability_channel_groups: True},
            names.session_query_init: SessionInit("cg1").to_body(),
            names.channelgroup_query_init: ChannelGroupInit([Channel("tel", "1001")]).to_body(),
            names.channel_query_init: ChannelInit("ACTIVATED").to_body(),
            names.interaction_query_init: InteractionInit("ALERTING", "c1").to_body(),
            names.conversation_query_init: ConversationInit("RINGING", [Party("5551234", "Bob")]).to_body(),
        }
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        self.lost.callback(None)

    def messageReceived(self, obj):
        message = env.Envelope.from_json(obj)
        self.received.append(message)
        if message.name not in self.hold_back:
            self.answer(message)

    def answer(self, message, body=None):
        self.send(env.success(message, self.bodies.get(message.name, {}) if body is None else body))
        if message.name == self.names.control_query_status:
            self.raise_event(self.names.control_status, message.target, ControlStatus(self.status).to_body())

    def send(self, message):
        self.sendMessage(message.to_json())

    def raise_event(self, name, target, body=None):
        self.send(env.event(name, target, body))

    def announce(self, interaction_id="i1", channel=CHANNEL):
        self.raise_event(self.names.channel_interaction, channel, InteractionAnnouncement(interaction_id).to_body())

    def names_received(self):
        return [m.name for m in self.received]

    def last(self, name):
        return [m for m in self.received if m.name == name][-1]


class SimTestCase(SynchronousTestCase):
    """A simulator and a :class:`FakeClient` joined in memory."""

    def setUp(self):
        self.clock = Clock()
        self.sim = HisBridgeSim(self.clock, names=NAMES, processor="PROC", agents=["alice"], response_timeout=5)

    def connect(self, client=None, sim=None):
        sim = sim or self.sim
        self.client = client or FakeClient()
        _, _, self.pump = iosim.connectedServerAndClient(
            lambda: sim.buildProtocol(None), lambda: self.client, clock=self.clock
        )
        return self.client

    def flush(self):
        self.pump.flush()

    def assertViolation(self, *fragments):
        matching = [v for v in self.sim.violations if all(f in v for f in fragments)]
        self.assertTrue(matching, f"no violation with {fragments} in {self.sim.violations}")

    def result(self, d):
        self.flush()
        return self.successResultOf(d)

    def start_call(self):
        """Log in, announce an interaction, and return the active conversation destination."""
        client = self.connect()
        conversation = self.sim.when_destination("conversation")
        client.announce()
        return self.result(conversation)


class StartupTests(SimTestCase):
    def test_handshake_and_login_in_order(self):
        client = self.connect()
        self.assertTrue(self.sim.ready)
        self.assertEqual(
            client.names_received(),
            [
                "control.query.status",
                "cti.query.capabilities",
                "session.query.init",
                "channelgroup.query.init",
                "channel.query.init",
            ],
        )
        self.assertEqual([m.target for m in client.received], [CONTROL, CONTROL, "alice", "alice.cg1", CHANNEL])
        self.assertEqual(client.last("session.query.init").body, {"name": "alice", "chat": False, "email": False, "callback": False})
        self.assertEqual(self.sim.capabilities, {"channel-groups-supported": True})
        self.assertIs(self.sim.channel_groups_supported, True)
        self.assertEqual(self.sim.status, "STARTED")
        self.assertEqual(self.sim.violations, [])

    def test_capabilities_wait_for_the_status_event(self):
        client = FakeClient()
        client.hold_back.add(NAMES.control_query_status)
        self.connect(client)
        client.send(env.success(client.last(NAMES.control_query_status), ControlStatus("STARTED").to_body()))
        self.flush()
        self.assertEqual(client.names_received(), [NAMES.control_query_status])
        client.raise_event(NAMES.control_status, CONTROL, ControlStatus("STARTED").to_body())
        self.flush()
        self.assertIn(NAMES.cti_query_capabilities, client.names_received())
        self.assertEqual(self.sim.violations, [])

    def test_login_waits_until_the_client_has_started(self):
        client = self.connect(FakeClient(status="DEGRADED"))
        self.assertNotIn(NAMES.session_query_init, client.names_received())
        self.assertFalse(self.sim.ready)
        client.raise_event(NAMES.control_status, CONTROL, ControlStatus("STARTED").to_body())
        self.flush()
        self.assertTrue(self.sim.ready)
        self.assertEqual(client.names_received().count(NAMES.cti_query_capabilities), 1)

    def test_status_event_before_the_status_response_is_reported(self):
        client = FakeClient()
        client.hold_back.add(NAMES.control_query_status)
        self.connect(client)
        client.raise_event(NAMES.control_status, CONTROL, ControlStatus("STARTED").to_body())
        self.flush()
        self.assertViolation("control.status on PROC.CONTROL", "before the init query was answered")

    def test_unknown_status_value_is_reported(self):
        client = self.connect()
        client.raise_event(NAMES.control_status, CONTROL, {"status": "RUNNING"})
        self.flush()
        self.assertViolation("'status' is 'RUNNING', not one of STARTED, STOPPED, DEGRADED")

    def test_every_channel_of_every_agent_is_initialised(self):
        sim = HisBridgeSim(self.clock, agents=["alice", "bob"])
        client = FakeClient()
        client.bodies[NAMES.channelgroup_query_init] = ChannelGroupInit(
            [Channel("tel", "1001"), Channel("chat", "alice-chat", "chat")]
        ).to_body()
        client.bodies[NAMES.channel_query_init] = ChannelInit("ACTIVATED", ["old"]).to_body()
        ready = sim.when_ready()
        self.connect(client, sim)
        self.assertIs(self.successResultOf(ready), sim)
        inits = [m.target for m in client.received if m.name == NAMES.channel_query_init]
        self.assertEqual(inits, ["alice.cg1.tel", "alice.cg1.chat", "bob.cg1.tel", "bob.cg1.chat"])
        self.assertIn("alice.cg1.tel.old.c1", sim.destinations)
        self.assertEqual(sim.violations, [])

    def test_bad_session_init_response_is_reported(self):
        client = FakeClient()
        client.bodies[NAMES.session_query_init] = {"channelgroup": "cg1"}
        self.connect(client)
        self.assertViolation("alice", "'channelgroup' must be an object")
        self.assertTrue(self.sim.ready, "a failed login still completes the login phase")

    def test_channel_id_with_a_dot_is_reported(self):
        client = FakeClient()
        client.bodies[NAMES.channelgroup_query_init] = ChannelGroupInit([Channel("t.1", "1001")]).to_body()
        self.connect(client)
        self.assertViolation("channel id 't.1'", "contains a dot")

    def test_second_link_is_refused(self):
        self.connect()
        extra = FakeClient()
        _, _, pump = iosim.connectedServerAndClient(lambda: self.sim.buildProtocol(None), lambda: extra, clock=self.clock)
        pump.flush()
        self.assertEqual(extra.received, [])
        self.successResultOf(extra.lost)
        self.assertViolation("second client link")
        self.assertTrue(self.sim.connected)


class CallTests(SimTestCase):
    def test_a_correct_call_reports_no_violation(self):
        client = self.connect()
        conversation = self.sim.when_destination("conversation")
        client.announce()
        self.assertEqual(self.result(conversation).target, CONVERSATION)
        self.assertEqual(client.last(NAMES.interaction_query_init).target, INTERACTION)
        client.raise_event(NAMES.interaction_alerting, INTERACTION)
        client.raise_event(NAMES.conversation_ringing, CONVERSATION)
        accepted = self.result(self.sim.send("accept"))
        self.assertTrue(accepted.ok)
        self.assertEqual(accepted.target, INTERACTION)
        client.raise_event(NAMES.interaction_started, INTERACTION)
        client.raise_event(NAMES.conversation_started, CONVERSATION)
        client.raise_event(NAMES.conversation_partyadded, CONVERSATION, {"number": "5551234", "name": ""})
        client.raise_event(NAMES.conversation_talking, CONVERSATION)
        self.assertTrue(self.result(self.sim.send("hold")).ok)
        client.raise_event(NAMES.conversation_held, CONVERSATION)
        self.assertTrue(self.result(self.sim.send("retrieve")).ok)
        client.raise_event(NAMES.conversation_talking, CONVERSATION)
        self.assertTrue(self.result(self.sim.send("senddtmf", digits="12#")).ok)
        self.assertTrue(self.result(self.sim.send("release")).ok)
        client.raise_event(NAMES.conversation_ended, CONVERSATION)
        client.raise_event(NAMES.interaction_ended, INTERACTION)
        self.assertTrue(self.result(self.sim.send("dispose")).ok)
        self.flush()
        self.assertEqual(self.sim.violations, [])
        self.assertEqual(
            self.sim.event_names(CONVERSATION),
            ["conversation.ringing", "conversation.started", "conversation.partyadded", "conversation.talking",
             "conversation.held", "conversation.talking", "conversation.ended"],
        )
        self.assertEqual(client.last(NAMES.conversation_request_senddtmf).body, {"digits": "12#"})
        self.assertEqual(self.sim.destinations[CONVERSATION].state, "disposed")

    def test_requests_carry_their_properties(self):
        self.start_call()
        for verb, properties in [
            ("transfer", {"destination": "2000"}),
            ("conference", {"destination": "2001"}),
            ("removeparty", {"number": "2001"}),
        ]:
            self.result(self.sim.send(verb, **properties))
            self.assertEqual(self.client.received[-1].body, properties)
        self.result(self.sim.send("dial", destination="5550000"))
        self.assertEqual((self.client.received[-1].name, self.client.received[-1].target), ("channel.request.dial", CHANNEL))
        self.assertRaises(ValueError, self.sim.send, "transfer")

    def test_a_dial_makes_an_interaction_in_dialing(self):
        client = self.connect()
        client.bodies[NAMES.interaction_query_init] = InteractionInit("DIALING", "out1").to_body()
        client.bodies[NAMES.conversation_query_init] = ConversationInit("DIALING", [Party("5550000")]).to_body()
        conversation = self.sim.when_destination("conversation")
        self.result(self.sim.send("dial", destination="5550000"))
        client.announce("o1")
        self.assertEqual(self.result(conversation).target, f"{CHANNEL}.o1.out1")
        self.assertEqual(self.sim.violations, [])

    def test_a_consult_conversation_gets_its_own_destination(self):
        client = self.connect()
        client.bodies[NAMES.interaction_query_init] = InteractionInit("STARTED", "c1", "c2").to_body()
        client.bodies[NAMES.conversation_query_init] = ConversationInit("TALKING", [Party("1")]).to_body()
        client.announce()
        self.flush()
        self.assertEqual([d.target for d in self.sim.active("conversation")], [CONVERSATION, f"{INTERACTION}.c2"])
        client.raise_event(NAMES.conversation_held, CONVERSATION)
        self.flush()
        self.assertEqual(self.sim.violations, [], "a conversation found TALKING has already started")

    def test_failure_responses_are_returned(self):
        self.start_call()
        self.client.hold_back.add(NAMES.conversation_request_transfer)
        d = self.sim.send("transfer", destination="2000")
        self.flush()
        self.client.send(env.failure(self.client.received[-1], "destination busy"))
        answer = self.result(d)
        self.assertFalse(answer.ok)
        self.assertEqual(answer.header.error_message, "destination busy")
        self.assertEqual(self.sim.violations, [])

    def test_send_without_a_destination_fails(self):
        self.connect()
        self.failureResultOf(self.sim.send("hold"), SimulatorError)

    def test_send_without_a_link_fails(self):
        self.failureResultOf(self.sim.send("ready", target="alice"), SimulatorError)


CONSULT = f"{INTERACTION}.c2"


class ConsultTests(SimTestCase):
    """The telephony interaction's consult flows, as the simulator drives and checks them."""

    def talking(self):
        """A call whose primary conversation c1 is talking (its events raised), ready for a consult."""
        client = self.connect()
        client.bodies[NAMES.interaction_query_init] = InteractionInit("STARTED", "c1").to_body()
        client.bodies[NAMES.conversation_query_init] = ConversationInit("TALKING", [Party("5551234")]).to_body()
        client.bodies[NAMES.interaction_request_consult] = {"id": "c2"}
        conversation = self.sim.when_destination("conversation")
        client.announce()
        self.result(conversation)
        return client

    def consult(self):
        client = self.talking()
        initialised = self.sim.when_destination("conversation")
        self.assertTrue(self.result(self.sim.send("consult", destination="2000")).ok)
        self.assertEqual(self.result(initialised).target, CONSULT)
        client.raise_event(NAMES.conversation_started, CONSULT)
        client.raise_event(NAMES.conversation_talking, CONSULT)
        client.raise_event(NAMES.conversation_held, CONVERSATION)
        client.raise_event(NAMES.interaction_focuschanged, INTERACTION, {"id": "c2"})
        self.flush()
        return client

    def test_each_conversation_is_registered_before_its_init(self):
        client = self.talking()
        sent = [(m.name, m.target, m.body) for m in client.received if m.target.startswith(INTERACTION)]
        self.assertEqual(sent, [
            ("interaction.query.init", INTERACTION, {}),
            ("interaction.request.register", INTERACTION, {"id": "c1"}),
            ("conversation.query.init", CONVERSATION, {}),
        ])
        self.assertEqual(self.sim.violations, [])

    def test_a_consult_named_by_the_init_is_registered_too(self):
        client = self.connect()
        client.bodies[NAMES.interaction_query_init] = InteractionInit("STARTED", "c1", "c2").to_body()
        client.bodies[NAMES.conversation_query_init] = ConversationInit("TALKING", [Party("1")]).to_body()
        client.announce()
        self.flush()
        registered = [m.body["id"] for m in client.received if m.name == NAMES.interaction_request_register]
        self.assertEqual(registered, ["c1", "c2"])
        self.assertEqual([d.role for d in self.sim.active("conversation")], ["primary", "consult"])
        self.assertEqual(self.sim.violations, [])

    def test_a_refused_registration_is_reported(self):
        client = self.connect()
        client.hold_back.add(NAMES.interaction_request_register)
        client.announce()
        self.flush()
        client.send(env.failure(client.last(NAMES.interaction_request_register), "no such conversation"))
        self.flush()
        self.assertViolation("client refused to register", CONVERSATION, "no such conversation")
        self.assertNotIn(NAMES.conversation_query_init, client.names_received())

    def test_a_consult_registers_and_initialises_the_conversation_its_response_names(self):
        client = self.consult()
        self.assertEqual(client.last(NAMES.interaction_request_consult).body, {"destination": "2000"})
        self.assertEqual(client.last(NAMES.interaction_request_register).body, {"id": "c2"})
        self.assertEqual(self.sim.destinations[CONSULT].role, "consult")
        self.assertEqual(self.sim.violations, [])

    def test_a_consult_response_without_an_id_is_reported(self):
        client = self.talking()
        client.bodies[NAMES.interaction_request_consult] = {}
        self.result(self.sim.send("consult", destination="2000"))
        self.assertViolation("response to the consult", "'id' is missing")

    def test_a_second_consult_while_one_is_live_is_reported(self):
        client = self.consult()
        client.bodies[NAMES.interaction_request_consult] = {"id": "c3"}
        self.result(self.sim.send("consult", target=INTERACTION, destination="2001"))
        self.assertViolation("accepted a consult", f"while the consult {CONSULT} is live")

    def test_a_consult_in_the_init_outside_started_is_reported(self):
        client = self.connect()
        client.bodies[NAMES.interaction_query_init] = InteractionInit("ALERTING", "c1", "c2").to_body()
        client.announce()
        self.flush()
        self.assertViolation(INTERACTION, "a 'consult' in state ALERTING")

    def test_conversations_named_in_an_ended_init_are_reported(self):
        client = self.connect()
        client.bodies[NAMES.interaction_query_init] = InteractionInit("ENDED", "c1").to_body()
        client.announce()
        self.flush()
        self.assertViolation(INTERACTION, "'conversations' must be empty in state ENDED")

    def test_a_focus_change_to_no_conversation_is_reported(self):
        client = self.talking()
        client.raise_event(NAMES.interaction_focuschanged, INTERACTION, {"id": "c9"})
        client.raise_event(NAMES.interaction_focuschanged, INTERACTION, {})
        self.flush()
        self.assertViolation("interaction.focuschanged", "'c9', which is no conversation")
        self.assertViolation("interaction.focuschanged", "missing id")

    def test_a_consult_ends_disposed_and_the_focus_returns(self):
        client = self.consult()
        client.raise_event(NAMES.conversation_ended, CONSULT)
        client.raise_event(NAMES.conversation_disposed, CONSULT)
        client.raise_event(NAMES.interaction_focuschanged, INTERACTION, {"id": "c1"})
        self.flush()
        self.assertEqual(self.sim.violations, [])
        self.assertEqual(self.sim.destinations[CONSULT].state, "disposed")
        client.raise_event(NAMES.interaction_focuschanged, INTERACTION, {"id": "c2"})
        client.raise_event(NAMES.conversation_talking, CONSULT)
        self.flush()
        self.assertViolation("interaction.focuschanged", "'c2', which is not an initialised conversation")
        self.assertViolation(f"conversation.talking on {CONSULT}", "disposed")

    def test_a_disposal_before_the_end_and_an_event_after_it_are_reported(self):
        client = self.consult()
        client.raise_event(NAMES.conversation_disposed, CONSULT)
        self.flush()
        self.assertViolation(f"conversation.disposed on {CONSULT}", "before conversation.ended")
        client.raise_event(NAMES.conversation_ended, CONVERSATION)
        client.raise_event(NAMES.conversation_talking, CONVERSATION)
        self.flush()
        self.assertViolation(f"conversation.talking on {CONVERSATION}", "came after conversation.ended")

    def transfer(self, events):
        client = self.consult()
        for name, target, body in events:
            client.raise_event(name, target, body)
        self.assertTrue(self.result(self.sim.send("transfer-to-consult", target=INTERACTION)).ok)
        return client

    def test_a_transfer_to_consult_in_the_vendors_order_passes(self):
        self.transfer([
            (NAMES.conversation_ended, CONVERSATION, None),
            (NAMES.conversation_disposed, CONVERSATION, None),
            (NAMES.interaction_focuschanged, INTERACTION, {"id": "c2"}),
            (NAMES.conversation_ended, CONSULT, None),
            (NAMES.conversation_disposed, CONSULT, None),
            (NAMES.interaction_ended, INTERACTION, None),
        ])
        self.assertEqual(self.sim.violations, [])
        self.assertEqual(self.client.last(NAMES.interaction_request_transfertoconsult).target, INTERACTION)

    def test_a_transfer_to_consult_out_of_order_is_reported(self):
        client = self.consult()
        d = self.sim.send("transfer-to-consult", target=INTERACTION)
        self.result(d)
        for name, target in [(NAMES.conversation_ended, CONSULT), (NAMES.conversation_disposed, CONSULT),
                             (NAMES.conversation_ended, CONVERSATION), (NAMES.interaction_ended, INTERACTION)]:
            client.raise_event(name, target)
        self.flush()
        self.assertViolation("transfer to consult on", "events came as [conversation.ended on " + CONSULT)

    def test_a_logout_allows_no_secondary_event(self):
        client = self.talking()
        client.hold_back.add(NAMES.session_request_logout)
        d = self.sim.send("logout", target="alice")
        self.flush()
        client.raise_event(NAMES.conversation_ended, CONVERSATION)
        client.answer(client.last(NAMES.session_request_logout))
        self.assertTrue(self.result(d).ok)
        client.raise_event(NAMES.channel_disposed, CHANNEL)
        self.flush()
        self.assertViolation(f"conversation.ended on {CONVERSATION}", "secondary event after session.request.logout")
        self.assertViolation(f"channel.disposed on {CHANNEL}", "secondary event")
        self.assertEqual(self.sim.destinations["alice"].state, "disposed")

    def test_an_agent_logs_in_again_after_a_logout(self):
        client = self.talking()
        self.assertTrue(self.result(self.sim.send("logout", target="alice")).ok)
        channel = self.sim.login("alice")
        self.assertEqual(self.result(channel).target, CHANNEL)
        self.assertEqual(self.sim.violations, [])
        self.assertEqual(client.names_received().count(NAMES.session_query_init), 2)


class ViolationTests(SimTestCase):
    def test_event_before_init_answered(self):
        client = self.connect()
        client.hold_back.add(NAMES.conversation_query_init)
        client.announce()
        self.flush()
        client.raise_event(NAMES.conversation_ringing, CONVERSATION)
        self.flush()
        self.assertViolation(f"conversation.ringing on {CONVERSATION}", "before the init query was answered")
        self.assertEqual(self.sim.event_names(CONVERSATION), ["conversation.ringing"])

    def test_wrong_request_id(self):
        self.start_call()
        client = self.client
        client.hold_back.add(NAMES.conversation_request_hold)
        d = self.sim.send("hold")
        self.flush()
        original = client.received[-1]
        client.send(env.success(env.request(original.name, original.target, request_id="not-the-one")))
        self.flush()
        self.assertViolation("conversation.request.hold [not-the-one]", "answers no query or request")
        self.clock.advance(5)
        self.assertViolation(f"no response to conversation.request.hold [{original.request_id}]", "within 5 s")
        self.failureResultOf(d, SimulatorError)

    def test_late_response(self):
        self.start_call()
        self.client.hold_back.add(NAMES.conversation_request_mute)
        d = self.sim.send("mute")
        self.flush()
        self.clock.advance(5)
        self.failureResultOf(d, SimulatorError)
        self.client.answer(self.client.received[-1])
        self.flush()
        self.assertViolation("late response conversation.request.mute", "after the 5 s timeout")

    def test_second_response(self):
        self.start_call()
        self.client.hold_back.add(NAMES.conversation_request_unmute)
        d = self.sim.send("unmute")
        self.flush()
        self.client.answer(self.client.received[-1])
        self.client.answer(self.client.received[-1])
        self.assertTrue(self.result(d).ok)
        self.assertViolation("second response conversation.request.unmute", "exactly one response")

    def test_response_with_another_name_or_target(self):
        self.start_call()
        self.client.hold_back.add(NAMES.conversation_request_hold)
        d = self.sim.send("hold")
        self.flush()
        original = self.client.received[-1]
        wrong = env.Envelope(
            env.Header(env.MessageType.RESPONSE, NAMES.conversation_request_retrieve, "elsewhere", original.request_id, "SUCCESS")
        )
        self.client.send(wrong)
        self.result(d)
        self.assertViolation("has name 'conversation.request.retrieve', not 'conversation.request.hold'")
        self.assertViolation("has target 'elsewhere'")

    def test_failure_without_error_message(self):
        self.start_call()
        self.client.hold_back.add(NAMES.conversation_request_hold)
        d = self.sim.send("hold")
        self.flush()
        self.client.send(env.response(self.client.received[-1], env.Result.FAILURE))
        self.result(d)
        self.assertViolation("FAILURE response to conversation.request.hold", "no errorMessage")

    def test_unanswered_request_when_the_client_leaves(self):
        self.start_call()
        self.client.hold_back.add(NAMES.conversation_request_release)
        d = self.sim.send("release")
        self.flush()
        self.client.transport.loseConnection()
        self.flush()
        self.failureResultOf(d, SimulatorError)
        self.assertViolation("client closed the link leaving 1 unanswered: conversation.request.release")
        self.assertFalse(self.clock.getDelayedCalls())

    def test_simulator_closing_the_link_is_not_held_against_the_client(self):
        self.start_call()
        self.client.hold_back.add(NAMES.conversation_request_release)
        d = self.sim.send("release")
        self.flush()
        self.sim.disconnect()
        self.flush()
        self.failureResultOf(d, SimulatorError)
        self.assertEqual(self.sim.violations, [])

    def test_missing_init_response(self):
        client = FakeClient()
        client.hold_back.add(NAMES.channel_query_init)
        self.connect(client)
        self.clock.advance(5)
        self.assertViolation("no response to channel.query.init")
        self.assertTrue(self.sim.ready)
        client.raise_event(NAMES.channel_activated, CHANNEL)
        self.flush()
        self.assertViolation("channel.activated", "never initialised")

    def test_talking_before_started(self):
        self.start_call()
        for name in (NAMES.conversation_talking, NAMES.conversation_held, NAMES.conversation_ended):
            self.client.raise_event(name, CONVERSATION)
        self.flush()
        for name in (NAMES.conversation_talking, NAMES.conversation_held, NAMES.conversation_ended):
            self.assertViolation(name, "came before conversation.started")

    def test_bad_conversation_state(self):
        client = FakeClient()
        client.bodies[NAMES.conversation_query_init] = {"conversation-state": "CONNECTED", "parties": [{"number": "1"}]}
        self.connect(client)
        client.announce()
        self.flush()
        self.assertViolation(CONVERSATION, "'conversation-state' is 'CONNECTED'")
        self.assertEqual(self.sim.destinations[CONVERSATION].state, "failed")

    def test_empty_parties(self):
        client = FakeClient()
        client.bodies[NAMES.conversation_query_init] = {"conversation-state": "RINGING", "parties": []}
        self.connect(client)
        client.announce()
        self.flush()
        self.assertViolation(CONVERSATION, "'parties' must not be empty")

    def test_interaction_without_primary(self):
        client = FakeClient()
        client.bodies[NAMES.interaction_query_init] = {"interaction-state": "ALERTING", "conversations": {}}
        self.connect(client)
        client.announce()
        self.flush()
        self.assertViolation(INTERACTION, "no 'primary' in state ALERTING")
        self.assertNotIn(NAMES.conversation_query_init, client.names_received())

    def test_interaction_without_conversations(self):
        client = FakeClient()
        client.bodies[NAMES.interaction_query_init] = {"interaction-state": "BUSY", "conversations": {}}
        self.connect(client)
        client.announce()
        self.flush()
        self.assertViolation(INTERACTION, "'interaction-state' is 'BUSY'")

    def test_event_on_unknown_target(self):
        client = self.connect()
        client.raise_event(NAMES.conversation_talking, "alice.cg1.tel.nope.c9")
        self.flush()
        self.assertViolation("conversation.talking on alice.cg1.tel.nope.c9", "no such destination")

    def test_event_on_disposed_target(self):
        self.start_call()
        self.result(self.sim.send("dispose-interaction"))
        self.client.raise_event(NAMES.conversation_ended, CONVERSATION)
        self.client.raise_event(NAMES.interaction_ended, INTERACTION)
        self.flush()
        self.assertViolation(f"conversation.ended on {CONVERSATION}", "disposed")
        self.assertViolation(f"interaction.ended on {INTERACTION}", "disposed")

    def test_channel_disposed_event_may_follow_its_dispose_once(self):
        client = self.connect()
        self.result(self.sim.send("dispose-channel"))
        client.raise_event(NAMES.channel_disposed, CHANNEL)
        self.flush()
        self.assertEqual(self.sim.violations, [])
        client.raise_event(NAMES.channel_disposed, CHANNEL)
        self.flush()
        self.assertViolation(f"channel.disposed on {CHANNEL}", "disposed")

    def test_event_of_the_wrong_kind(self):
        client = self.connect()
        client.raise_event(NAMES.conversation_talking, CHANNEL)
        self.flush()
        self.assertViolation(f"conversation.talking on {CHANNEL}", "not an event of a channel destination")

    def test_event_missing_a_property(self):
        self.start_call()
        self.client.raise_event(NAMES.conversation_started, CONVERSATION)
        self.client.raise_event(NAMES.conversation_partyadded, CONVERSATION, {"name": "Bob"})
        self.client.raise_event(NAMES.conversation_partyadded, CONVERSATION, {"number": "5551234"})
        self.client.raise_event(NAMES.conversation_failed, CONVERSATION)
        self.flush()
        self.assertViolation("conversation.partyadded", "missing number")
        self.assertViolation("conversation.partyadded", "missing name")
        self.assertViolation("conversation.failed", "missing reason")

    def test_announcing_an_interaction_twice(self):
        client = self.connect()
        client.announce()
        client.announce()
        self.flush()
        self.assertViolation(f"interaction {INTERACTION} was announced again")

    def test_announcement_with_a_bad_id(self):
        client = self.connect()
        client.raise_event(NAMES.channel_interaction, CHANNEL, {"id": 7})
        self.flush()
        self.assertViolation("channel.interaction", "'id' must be a non-empty string")

    def test_malformed_frames_and_envelopes(self):
        client = self.connect()
        client.transport.write(b"\x00\x00\x00\x05{oops")
        client.sendMessage({"body": {}})
        client.sendMessage({"header": {"type": "cti.event", "name": "conversation.held"}})
        self.flush()
        self.assertViolation("malformed frame", "not JSON")
        self.assertViolation("malformed message", "no header")
        self.assertViolation("malformed message", "header.target is missing")
        self.assertTrue(self.sim.connected)

    def test_query_from_the_client_is_refused(self):
        client = self.connect()
        client.hold_back.add("session.query.credentials")
        client.send(env.query("session.query.credentials", "alice"))
        self.flush()
        self.assertViolation("client sent session.query.credentials")
        refusal = client.received[-1]
        self.assertEqual((refusal.type, refusal.ok), (env.MessageType.RESPONSE, False))


class ScriptTests(SimTestCase):
    def test_script_runs_after_login(self):
        script = [
            {"wait": "conversation.ringing"},
            {"send": "accept"},
            {"wait": "conversation.talking", "target": CONVERSATION},
            {"pause": 2},
            {"send": "transfer", "destination": "2000"},
        ]
        self.sim = HisBridgeSim(self.clock, agents=["alice"], script=script)
        done = self.sim.when_script_done()
        client = self.connect()
        client.announce()
        self.flush()
        client.raise_event(NAMES.conversation_ringing, CONVERSATION)
        self.flush()
        self.assertEqual(client.received[-1].name, NAMES.interaction_request_accept)
        client.raise_event(NAMES.conversation_started, CONVERSATION)
        client.raise_event(NAMES.conversation_talking, CONVERSATION)
        self.flush()
        self.assertNoResult(done)
        self.clock.advance(2)
        responses = self.result(done)
        self.assertEqual([r.name for r in responses], [NAMES.interaction_request_accept, NAMES.conversation_request_transfer])
        self.assertEqual(client.received[-1].body, {"destination": "2000"})
        self.assertEqual(self.sim.violations, [])

    def test_script_stops_when_the_link_goes(self):
        self.sim = HisBridgeSim(self.clock, agents=["alice"], script=[{"pause": 60}])
        done = self.sim.when_script_done()
        self.connect()
        self.client.transport.loseConnection()
        self.flush()
        self.assertNoResult(done)
        self.assertFalse(self.clock.getDelayedCalls())

    def test_bad_steps_are_refused(self):
        for step in ([], {"send": "explode"}, {"wait": "x", "pause": 1}, {"nothing": 1}):
            self.assertRaises(ValueError, parse_step, step)


class LittleEndianTests(SimTestCase):
    def test_little_endian_link(self):
        self.sim = HisBridgeSim(self.clock, agents=["alice"], byteorder="little")
        self.connect(FakeClient(byteorder="little"))
        self.assertTrue(self.sim.ready)
        self.assertEqual(self.sim.violations, [])


# -- integration: real loopback sockets ---------------------------------------------------------


@pytest.fixture
def loopback():
    """Listen with a simulator and connect FakeClients; closes everything afterwards."""
    from twisted.internet import reactor

    ports, clients = [], []

    @defer.inlineCallbacks
    def start(server_endpoint, client_endpoint_for, **kwargs):
        sim = HisBridgeSim(reactor, **kwargs)
        port = yield sim.listen(server_endpoint)
        ports.append(port)
        client = FakeClient()
        clients.append(client)
        yield client_endpoint_for(port.getHost().port).connect(protocol.Factory.forProtocol(lambda: client))
        return sim, client

    yield start
    for client in clients:
        if client.transport is not None and not client.lost.called:
            client.transport.loseConnection()
            pytest_twisted.blockon(client.lost)
    for port in ports:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@defer.inlineCallbacks
def call_over(sim, client):
    yield sim.when_ready()
    conversation = sim.when_destination("conversation")
    client.announce()
    yield conversation
    client.raise_event(NAMES.conversation_ringing, CONVERSATION)
    yield sim.when_event(NAMES.conversation_ringing, CONVERSATION)
    answer = yield sim.send("answer")
    return answer


@pytest_twisted.inlineCallbacks
def test_tcp_loopback_exchange(loopback):
    from twisted.internet import reactor

    sim, client = yield loopback(
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        lambda port: TCP4ClientEndpoint(reactor, "127.0.0.1", port),
    )
    answer = yield call_over(sim, client)
    assert answer.ok
    assert sim.event_names(CONVERSATION) == ["conversation.ringing"]
    assert sim.violations == []


@pytest_twisted.inlineCallbacks
def test_tls_loopback_exchange(loopback):
    from twisted.internet import reactor

    certificate = generate_self_signed("localhost")
    sim, client = yield loopback(
        SSL4ServerEndpoint(reactor, 0, certificate.server_options(), interface="127.0.0.1"),
        lambda port: SSL4ClientEndpoint(
            reactor, "127.0.0.1", port, optionsForClientTLS("localhost", trustRoot=certificate.trust_root())
        ),
    )
    answer = yield call_over(sim, client)
    assert answer.ok
    assert sim.violations == []


def test_command_line_prints_each_message():
    """``python -m gateway.sim his-bridge --port 0`` listens, says where, and prints what it sends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.sim", "his-bridge", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        banner = process.stdout.readline()
        assert "listening on 127.0.0.1:" in banner
        port = int(banner.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as link:
            assert "-> cti.query control.query.status on PROC.CONTROL" in process.stdout.readline()
            query = link.recv(4096)
            assert query[4:].startswith(b'{"header":{"type":"cti.query","name":"control.query.status"')
            link.sendall(encode_frame({"header": {"type": "cti.event"}}))
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


class RawClient(FakeClient):
    """Keeps messages that are not envelopes instead of parsing them."""

    def __init__(self):
        super().__init__()
        self.raw = []

    def messageReceived(self, obj):
        if isinstance(obj.get("body"), dict):
            super().messageReceived(obj)
        else:
            self.raw.append(obj)


class RawSendTests(SimTestCase):
    def test_a_malformed_request_waits_for_its_response(self):
        client = self.connect(RawClient())
        header = {"type": "cti.request", "name": "x.request.y", "target": CHANNEL, "requestId": "r1"}
        d = self.sim.request_malformed({"header": header, "body": [1]})
        self.flush()
        self.assertEqual(client.raw, [{"header": header, "body": [1]}])
        self.assertNoResult(d)
        client.send(env.failure(env.request("x.request.y", CHANNEL, request_id="r1"), "malformed"))
        self.assertEqual(self.result(d).header.error_message, "malformed")
        self.assertEqual(self.sim.violations, [])

    def test_raw_bytes_reach_the_client(self):
        client = self.connect(RawClient())
        self.sim.send_bytes(encode_frame({"body": "x"}))
        self.flush()
        self.assertEqual(client.raw, [{"body": "x"}])

    def test_raw_bytes_need_a_link(self):
        self.assertRaises(SimulatorError, self.sim.send_bytes, b"x")

    def test_a_hostile_send_collects_the_clients_answers_to_it(self):
        client = RawClient()
        client.hold_back.add(NAMES.cti_query_capabilities)
        self.connect(client)
        self.flush()
        client.answer(client.last(NAMES.cti_query_capabilities))
        d = self.sim.send_hostile(encode_frame({"junk": 1}))
        self.flush()
        self.assertEqual(client.raw, [{"junk": 1}])
        probe = client.last(NAMES.cti_query_capabilities)
        self.assertEqual(probe.target, CONTROL)
        client.send(env.failure(env.request("x.request.y", CHANNEL, request_id="h1"), "refused"))
        client.sendMessage({"header": {"type": "cti.response", "requestId": "h2", "result": "FAILURE"}})
        self.flush()
        self.assertNoResult(d)
        client.answer(probe)
        self.assertEqual([h["requestId"] for h in self.result(d)], ["h1", "h2"])
        self.assertEqual(self.sim.violations, [])
        d = self.sim.send_hostile(b"")
        self.flush()
        client.answer(client.last(NAMES.cti_query_capabilities))
        self.assertEqual(self.result(d), [])
        client.send(env.failure(env.request("x.request.y", CHANNEL, request_id="h3"), "refused"))
        self.flush()
        self.assertEqual(len(self.sim.violations), 1, "outside a hostile send a stray response is a violation")


class OwnWireTests(SimTestCase):
    """The simulator reads the wire with its own code (``gateway.sim.his_wire``), from the spec."""

    def test_an_event_carrying_request_fields_is_reported(self):
        client = self.connect()
        header = {"type": "cti.event", "name": NAMES.channel_activated, "target": CHANNEL, "requestId": "r1"}
        client.sendMessage({"header": header, "body": {}})
        self.flush()
        self.assertViolation("malformed message", "an event carries type, name and target only, not requestId")
        self.assertEqual(self.sim.event_names(CHANNEL), [])

    def test_names_may_be_given_as_a_mapping_of_cti_names_keys(self):
        self.sim = HisBridgeSim(self.clock, names={"channel_interaction": "channel.newcall"}, agents=["alice"])
        client = self.connect(FakeClient(names=CtiNames(channel_interaction="channel.newcall")))
        conversation = self.sim.when_destination("conversation")
        client.announce()
        self.assertEqual(self.result(conversation).target, CONVERSATION)
        self.assertEqual(self.sim.event_names(CHANNEL), ["channel.newcall"])
        self.assertEqual(self.sim.violations, [])
