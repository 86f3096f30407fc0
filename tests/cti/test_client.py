"""The Bridge Client against the strict processor-bridge simulator, in memory, on a task.Clock.

The bridge is :class:`gateway.sim.his.HisBridgeSim`, which records every protocol violation: each
test ends by checking there were none, besides what it asserts itself. The call core is the shipped
fake (:class:`gateway.core.testing.FakeCallControl`, the far end played by the test) for the tests
of the protocol (:class:`FakeBridge`); the tests of whole calls are sociable: the real registry with
the ``sim`` phone network (:class:`Bridge`), whose timing, rules and parties they rely on.
"""

from prometheus_client import CollectorRegistry
from twisted.internet import task
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Extension, Route
from gateway.context import Component, Readiness
from gateway.core.errors import UnknownCall
from gateway.core.registry import Registry
from gateway.core.routing import Router
from gateway.core.testing import CountingCalls, FakeCallControl
from gateway.cti import envelope as env
from gateway.cti.client import BridgeClient
from gateway.cti.config import CtiAgent, CtiConfig
from gateway.cti.health import TelephonyWatch
from gateway.cti.link import BridgeLink, Refusal
from gateway.cti.metrics import CtiMetrics
from gateway.cti.names import CtiNames
from gateway.drivers.config import NumberRule, SimNetworkConfig
from gateway.drivers.sim import SimNetwork
from gateway.sim.his import HisBridgeSim

CONTROL = "PROC.CONTROL"
CHANNEL = "alice.cg.tel"

#: 1003 rings until answered; 1001 answers by itself after 1 s
EXTENSIONS = [Extension(id="1003", name="Alice", device="sim:manual"), Extension(id="1001", device="sim")]
ROUTES = [Route(did="103", to="extension:1003"), Route(did="101", to="extension:1001")]
RULES = [
    NumberRule(match="555000[0-9]", outcome="busy", after=1.0),
    NumberRule(match="555999[0-9]", outcome="failed", after=0.5),
]


class Bridge(SynchronousTestCase):
    """A registry with the sim network, a BridgeClient for agent alice (1003), and the simulator."""

    agents = ("alice",)

    def make_core(self):
        """The call core the client is handed: the registry on the sim network."""
        self.network = SimNetwork(self.clock, SimNetworkConfig(audio="silence", ring_time=2.0, rules=RULES))
        registry = Registry(
            self.clock, {"sim": self.network}, extensions=EXTENSIONS, router=Router(ROUTES, {}), retention=60.0
        )
        self.network.wire(registry)
        return registry

    def ring(self, caller, did, attributes=None):
        """``caller`` dials ``did``."""
        self.network.place_inbound(caller, did, attributes=attributes)

    def setUp(self):
        self.clock = task.Clock()
        self.registry = self.make_core()
        self.config = CtiConfig(enabled=True, agents=[CtiAgent(agent="alice", extension="1003")])
        self.component = Component("cti:PROC")
        self.client = BridgeClient(self.config, self.registry, CtiMetrics(CollectorRegistry()), self.component)
        self.sim = HisBridgeSim(self.clock, agents=self.agents, response_timeout=60)
        self.pump = None

    def tearDown(self):
        self.assertEqual(self.sim.violations, [])

    # -- helpers ---------------------------------------------------------------------------------

    def connect(self):
        self.link = BridgeLink(self.client, clock=self.clock)
        _, _, self.pump = iosim.connectedServerAndClient(
            lambda: self.sim.buildProtocol(None), lambda: self.link, clock=self.clock
        )
        self.pump.flush()

    def flush(self):
        self.pump.flush()

    def advance(self, seconds, step=0.05):
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            if self.pump is not None:
                self.pump.flush()

    def send(self, verb, target=None, **properties):
        """The response to the request ``verb`` (sent to the latest destination of its kind)."""
        d = self.sim.send(verb, target, **properties)
        self.flush()
        return self.successResultOf(d)

    def query(self, name, target, body=None, message=env.query):
        """The response to the query (or, with ``message=env.request``, request) ``name`` on ``target``."""
        d = self.sim.request(message(name, target, body))
        self.flush()
        return self.successResultOf(d)

    def inbound(self, caller="5551234", did="103"):
        """An inbound call to alice's extension: (call id, interaction target, conversation target)."""
        self.ring(caller, did)
        self.flush()
        call_id = self.registry.active_call_for("1003").call_id
        interaction = f"{CHANNEL}.{call_id}"
        return call_id, interaction, f"{interaction}.primary"

    def talking(self):
        call_id, interaction, conversation = self.inbound()
        self.assertTrue(self.send("accept").ok)
        return call_id, interaction, conversation

    def events(self, target):
        return self.sim.event_names(target)

    def refused(self, response, message):
        self.assertFalse(response.ok, response.describe())
        self.assertIn(message, response.header.error_message)


class FakeBridge(Bridge):
    """The same on the fake call core: a caller rings the extension its DID routes to, and nothing
    happens at the far end unless the test says so."""

    def make_core(self):
        self.network = None
        return FakeCallControl(EXTENSIONS, clock=self.clock)

    def ring(self, caller, did, attributes=None):
        extension = next(route.to.partition(":")[2] for route in ROUTES if route.did == did)
        self.registry.ring_inbound(extension, caller, did=did, attributes=attributes)


class CountingFakeBridge(FakeBridge):
    """:class:`FakeBridge` connected, its client on a door that counts the commands and queries (``self.calls``)."""

    def setUp(self):
        super().setUp()
        self.client.stop()  # the one on the plain registry
        self.calls = CountingCalls(self.registry)
        self.client = BridgeClient(self.config, self.calls, CtiMetrics(CollectorRegistry()), self.component)
        self.connect()


class LoginTests(FakeBridge):
    def test_start_up_and_login(self):
        self.connect()
        self.assertTrue(self.sim.ready)
        self.assertEqual(self.sim.status, "STARTED")
        self.assertEqual(self.sim.capabilities["blind-transfer"], True)
        self.assertIs(self.sim.channel_groups_supported, True)
        self.assertEqual(
            set(self.sim.capabilities),
            {"channel-groups-supported", "telephony", "answer", "hold", "mute", "dtmf", "blind-transfer",
             "blind-conference", "consult", "alternate", "transfer-to-consult", "conference-in-consult"},
        )
        for capability in ("consult", "alternate", "transfer-to-consult", "conference-in-consult"):
            self.assertIs(self.sim.capabilities[capability], True, capability)
        self.assertEqual(self.events(CONTROL), ["control.status"])
        self.assertEqual(self.sim.destinations[CHANNEL].init.state, "ACTIVATED")
        self.assertEqual(self.sim.destinations["alice.cg"].init.channels[0].end_point, "1003")
        self.assertTrue(self.component.up)
        self.assertEqual(
            self.client.status()["agents"], [{"agent": "alice", "extension": "1003", "target": "alice", "ready": False}]
        )

    def test_ready_and_not_ready(self):
        self.connect()
        self.assertTrue(self.send("ready", target="alice").ok)
        self.assertTrue(self.client.status()["agents"][0]["ready"])
        self.assertTrue(self.send("notready", target="alice").ok)
        self.assertFalse(self.client.status()["agents"][0]["ready"])

    def test_an_unknown_agent_is_refused(self):
        self.sim = HisBridgeSim(self.clock, agents=["mallory"], response_timeout=60)
        self.connect()
        self.assertEqual(self.sim.destinations["mallory"].state, "failed")
        response = self.query("session.query.init", "m2", {"name": "mallory"})
        self.refused(response, "agent 'mallory' is not configured on this gateway")

    def test_a_session_init_without_a_name_is_refused(self):
        self.connect()
        self.refused(self.query("session.query.init", "x", {}), "'name' must be a non-empty string")

    def test_the_link_readiness_follows_the_link(self):
        self.assertFalse(self.component.up)
        self.connect()
        self.assertTrue(self.component.up)
        self.sim.disconnect()
        self.flush()
        self.assertFalse(self.component.up)
        self.assertIn("link to the processor bridge lost", self.component.reason)


class InboundCallTests(Bridge):
    def setUp(self):
        super().setUp()
        self.connect()

    def test_an_inbound_call_is_announced_and_initialised(self):
        call_id, interaction, conversation = self.inbound()
        self.assertEqual(self.events(CHANNEL), ["channel.interaction"])
        init = self.sim.destinations[interaction].init
        self.assertEqual((init.state, init.primary), ("ALERTING", "primary"))
        self.assertEqual(init.data, {"call-id": call_id, "direction": "inbound", "caller": "5551234",
                                     "number": "103", "did": "103"})
        init = self.sim.destinations[conversation].init
        self.assertEqual((init.state, [p.number for p in init.parties]), ("RINGING", ["5551234"]))
        self.assertEqual(self.events(interaction), ["interaction.alerting"])
        self.assertEqual(self.events(conversation), ["conversation.started", "conversation.ringing"])

    def test_parties_always_carry_a_name(self):
        _, _, conversation = self.talking()
        parties = self.query("conversation.query.init", conversation).body["parties"]
        self.assertEqual(parties, [{"number": "5551234", "name": ""}])
        added = [e.body for e in self.sim.events[conversation] if e.name == "conversation.partyadded"]
        self.assertEqual(added, [{"number": "5551234", "name": ""}])

    def test_the_providers_session_id_is_in_the_interaction_data(self):
        self.network.place_inbound("5551234", "103", attributes={"session_id": "opt-42"})
        self.flush()
        self.assertEqual(self.sim.active("interaction")[-1].init.data["session-id"], "opt-42")

    def test_the_whole_call(self):
        call_id, interaction, conversation = self.talking()
        self.assertEqual(self.registry.call(call_id).state, "TALKING")
        for verb, state in [("hold", "HELD"), ("retrieve", "TALKING"), ("mute", "TALKING"), ("unmute", "TALKING")]:
            self.assertTrue(self.send(verb).ok, verb)
            self.assertEqual(self.registry.call(call_id).state, state)
        self.assertEqual(
            self.events(conversation),
            ["conversation.started", "conversation.ringing", "conversation.talking", "conversation.partyadded",
             "conversation.held", "conversation.talking", "conversation.mute", "conversation.talking"],
        )
        self.assertTrue(self.send("conference", destination="5557777").ok)
        self.advance(2.0)
        self.assertEqual(self.sim.events[conversation][-1].body, {"number": "5557777", "name": ""})
        self.assertTrue(self.send("removeparty", number="5557777").ok)
        self.assertEqual(self.sim.events[conversation][-1].body, {"number": "5557777"})
        self.assertTrue(self.send("release").ok)
        self.assertTrue(self.send("dispose").ok)
        self.assertEqual(
            self.events(conversation)[-4:],
            ["conversation.talking", "conversation.partyadded", "conversation.partyremoved", "conversation.ended"],
        )
        self.assertEqual(self.events(interaction), ["interaction.alerting", "interaction.started", "interaction.ended"])
        self.assertRaises(UnknownCall, self.registry.call, call_id)

    def test_senddtmf_is_answered_when_the_tones_were_played(self):
        self.talking()
        d = self.sim.send("senddtmf", digits="12#")
        self.advance(0.395, step=0.001)  # 3 tones of 100 ms with 2 gaps of 50 ms: 400 ms
        self.assertNoResult(d)
        self.advance(0.025, step=0.001)
        self.assertTrue(self.successResultOf(d).ok)
        self.assertEqual(self.network.party("5551234").digits_received, ["1", "2", "#"])

    def test_a_transfer_to_a_busy_number_leaves_the_call_as_it_was(self):
        call_id, _, conversation = self.talking()
        self.send("hold")
        self.assertTrue(self.send("transfer", destination="5550001").ok)
        self.advance(1.5)
        last = self.sim.events[conversation][-1]
        self.assertEqual((last.name, last.body), ("conversation.transfer.failed", {"reason": "busy"}))
        self.assertEqual(self.registry.call(call_id).state, "HELD")
        self.assertTrue(self.send("retrieve").ok)

    def test_a_blind_transfer_ends_the_agents_conversation(self):
        call_id, interaction, conversation = self.talking()
        self.assertTrue(self.send("transfer", destination="5551111").ok)
        self.advance(2.5)
        self.assertEqual(self.events(conversation)[-1], "conversation.ended")
        self.assertEqual(self.registry.call(call_id).cause, "transferred")
        successor = [c for c in self.registry.calls() if c.attributes.get("transferred_from") == call_id]
        self.assertEqual([c.state for c in successor], ["TALKING"])

    def test_a_conference_that_fails_raises_conference_failed(self):
        call_id, _, conversation = self.talking()
        self.assertTrue(self.send("conference", destination="5559991").ok)
        self.advance(1.0)
        last = self.sim.events[conversation][-1]
        self.assertEqual(last.name, "conversation.conference.failed")
        self.assertIn("failed", last.body["reason"])
        self.assertEqual(self.registry.call(call_id).state, "TALKING")

    def test_answer_on_the_conversation_answers_the_alerting_call(self):
        call_id, interaction, conversation = self.inbound()
        self.assertTrue(self.send("answer").ok)
        self.assertEqual(self.registry.call(call_id).state, "TALKING")
        self.assertEqual(self.events(conversation)[-2:], ["conversation.talking", "conversation.partyadded"])
        self.assertEqual(self.events(interaction), ["interaction.alerting", "interaction.started"])

    def test_rejecting_an_alerting_call_releases_it(self):
        call_id, interaction, conversation = self.inbound()
        self.assertTrue(self.send("reject").ok)
        self.assertEqual(self.registry.call(call_id).cause, "rejected")
        self.assertEqual(self.events(conversation)[-1], "conversation.ended")
        self.assertEqual(self.events(interaction), ["interaction.alerting", "interaction.ended"])

    def test_a_call_refused_because_the_agent_is_busy_is_not_announced(self):
        self.talking()
        self.network.place_inbound("5552222", "103")
        self.flush()
        self.assertEqual(self.events(CHANNEL), ["channel.interaction"])

    def test_the_caller_hanging_up_ends_the_conversation(self):
        call_id, _, conversation = self.talking()
        self.network.party("5551234").hang_up()
        self.flush()
        self.assertEqual(self.events(conversation)[-1], "conversation.ended")

    def test_complete_and_dispose_the_interaction(self):
        call_id, interaction, conversation = self.talking()
        self.refused(self.send("complete"), "cannot complete: the interaction is STARTED")
        self.send("release")
        self.assertTrue(self.send("complete").ok)
        self.assertEqual(self.events(interaction)[-1], "interaction.completed")
        self.assertEqual(self.query("interaction.query.init", interaction).body["interaction-state"], "COMPLETED")
        self.assertTrue(self.send("dispose-interaction").ok)
        self.refused(self.query("conversation.query.init", conversation), "unknown target")
        self.assertRaises(UnknownCall, self.registry.call, call_id)

    def test_disposing_a_live_conversation_hangs_the_call_up_after_the_response(self):
        call_id, interaction, conversation = self.talking()
        before = self.events(conversation)
        self.assertTrue(self.send("dispose").ok)
        self.assertRaises(UnknownCall, self.registry.call, call_id)
        self.assertEqual(self.network.party("5551234").state, "ended")
        self.assertEqual(self.events(conversation), before, "nothing raised on a disposed conversation")
        self.assertEqual(self.events(interaction)[-1], "interaction.ended")


class OutboundCallTests(Bridge):
    def setUp(self):
        super().setUp()
        self.connect()

    def dial(self, number):
        response = self.send("dial", destination=number)
        self.assertTrue(response.ok, response.describe())
        call_id = response.body["id"]
        interaction = f"{CHANNEL}.{call_id}"
        return call_id, interaction, f"{interaction}.primary"

    def test_a_dial_makes_an_interaction_that_goes_to_talking(self):
        call_id, interaction, conversation = self.dial("5551234")
        self.assertEqual(self.sim.destinations[interaction].init.state, "DIALING")
        self.assertEqual(self.events(conversation), ["conversation.started", "conversation.dialing"])
        self.network.party("1003").answer()
        self.advance(2.5)
        self.assertEqual(self.events(conversation)[-2:], ["conversation.talking", "conversation.partyadded"])
        self.assertEqual(self.events(interaction), ["interaction.dialing", "interaction.started"])

    def test_rejecting_a_dialling_call_cancels_it(self):
        call_id, interaction, conversation = self.dial("5551234")
        self.assertTrue(self.send("reject").ok)
        self.assertEqual(self.registry.call(call_id).state, "RELEASED")
        self.assertEqual(self.events(interaction), ["interaction.dialing", "interaction.ended"])

    def test_a_busy_number(self):
        call_id, _, conversation = self.dial("5550002")
        self.network.party("1003").answer()
        self.advance(1.5)
        self.assertEqual(self.events(conversation)[-2:], ["conversation.busy", "conversation.ended"])

    def test_a_failed_number_says_why(self):
        call_id, _, conversation = self.dial("5559992")
        self.network.party("1003").answer()
        self.advance(1.0)
        failed = self.sim.events[conversation][-2]
        self.assertEqual(failed.name, "conversation.failed")
        self.assertTrue(failed.body["reason"])

    def test_a_click_to_dial_from_the_registry_is_announced(self):
        self.registry.originate("1003", "5551234")
        self.flush()
        self.assertEqual(self.events(CHANNEL), ["channel.interaction"])
        self.assertEqual(len(self.sim.active("conversation")), 1)

    def test_a_dial_while_busy_is_refused(self):
        self.dial("5551234")
        self.refused(self.send("dial", target=CHANNEL, destination="5551235"), "extension 1003 is busy")

    def test_a_destination_with_a_trailing_newline_is_refused_and_nothing_is_dialled(self):
        for destination in ("5551234\n", "5551234\r\n", "1002\n"):
            with self.subTest(destination=destination):
                self.refused(self.send("dial", target=CHANNEL, destination=destination),
                             "is neither an extension nor a phone number")
        self.assertEqual((self.registry.calls(), self.events(CHANNEL)), ([], []))


class RefusalTests(FakeBridge):
    def setUp(self):
        super().setUp()
        self.connect()

    def test_unknown_target(self):
        self.refused(self.query("conversation.query.init", "alice.cg.tel.nope.primary"), "unknown target")
        self.refused(self.query("control.query.status", "OTHER.CONTROL"), "unknown target 'OTHER.CONTROL'")

    def test_unknown_name(self):
        self.refused(self.query("channel.query.frobnicate", CHANNEL), "unknown name 'channel.query.frobnicate'")
        _, interaction, _ = self.inbound()
        self.refused(self.send("hold", target=interaction), "for the interaction destination")

    def test_illegal_state(self):
        self.inbound()
        self.refused(self.send("hold"), "cannot hold: the call is RINGING")
        self.refused(self.send("senddtmf", digits="1"), "cannot dtmf: the call is RINGING")

    def test_missing_or_bad_properties(self):
        _, _, conversation = self.talking()
        transfer = self.query("conversation.request.transfer", conversation, message=env.request)
        self.refused(transfer, "needs the property 'destination'")
        self.refused(self.send("senddtmf", digits="12x"), "'x' (digit 3 of '12x') is not a DTMF digit")
        self.refused(self.send("transfer", destination="not a number"), "is neither an extension nor a phone number")

    def test_senddtmf_refuses_digits_that_are_not_a_string_whoever_calls_it(self):
        _, _, conversation = self.talking()
        destination = self.client.tree.get(conversation)
        for digits in (["1", "2"], 12, None, ""):
            with self.subTest(digits=digits):
                message = env.request(self.client.names.conversation_request_senddtmf, conversation,
                                      {"digits": digits})
                error = self.assertRaises(Refusal, self.client._send_dtmf, destination, message)
                self.assertIn("digits must be a string of 1-64 of 0-9, * and #", str(error))

    def test_a_request_on_a_disposed_call(self):
        call_id, _, conversation = self.talking()
        self.registry.dispose(call_id)
        self.flush()
        self.refused(self.send("hold", target=conversation), f"no call with id {call_id!r}")

    def test_a_failing_registry_is_a_readable_failure(self):
        self.talking()
        self.registry.fail_next("hold", RuntimeError("boom"))
        self.refused(
            self.send("hold"), "internal error of the gateway handling conversation.request.hold (RuntimeError)"
        )
        self.flushLoggedErrors(RuntimeError)


class DtmfRefusalTests(Bridge):
    """Refused digits never reach the party on the sim network; good ones are played."""

    def setUp(self):
        super().setUp()
        self.connect()

    def test_senddtmf_takes_only_the_digits_004_lists(self):
        self.talking()
        for digits, bad in [("12A", "'A' (digit 3"), ("d", "'d' (digit 1"), ("1 2", "' ' (digit 2"),
                            ("١", "'١' (digit 1"), ("1,2", "',' (digit 2")]:
            with self.subTest(digits=digits):
                self.refused(self.send("senddtmf", digits=digits), f"{bad} of {digits!r}) is not a DTMF digit")
        self.assertEqual(self.network.party("5551234").digits_received, [])
        d = self.sim.send("senddtmf", digits="0123456789*#")
        self.advance(2.0)
        self.assertTrue(self.successResultOf(d).ok)

    def test_senddtmf_takes_1_to_64_keypad_digits_and_quotes_a_bad_value_briefly(self):
        self.talking()
        self.refused(self.send("senddtmf", digits="1" * 65), "digits must be a string of 1-64 of 0-9, * and #")
        response = self.send("senddtmf", digits="1" * 63 + "x")
        self.refused(response, "'x' (digit 64 of '1111")
        self.assertNotIn("1" * 40, response.header.error_message, "the digits are quoted, shortened")
        response = self.send("senddtmf", digits=["1"] * 100_000)
        self.refused(response, "needs the property 'digits' (a non-empty string), not ['1', ")
        self.assertLess(len(response.header.error_message), 150)
        self.assertEqual(self.network.party("5551234").digits_received, [])


class QueueingTests(FakeBridge):
    def test_events_wait_for_the_init_answer_and_keep_their_order(self):
        self.connect()
        self.ring("5551234", "103")
        call_id = self.registry.active_call_for("1003").call_id
        self.registry.answer(call_id)  # before the bridge has even heard of the interaction
        self.registry.hold(call_id)
        self.flush()
        conversation = f"{CHANNEL}.{call_id}.primary"
        self.assertEqual(self.sim.destinations[conversation].init.state, "HELD")
        self.assertEqual(
            self.events(conversation),
            ["conversation.started", "conversation.ringing", "conversation.talking", "conversation.partyadded",
             "conversation.held"],
        )

    def test_a_call_arriving_during_login_is_listed_once(self):
        self.sim = HisBridgeSim(self.clock, agents=["alice"], response_timeout=60)
        original = self.client._channelgroup_init

        def group_init_then_call(group, message):
            reply = original(group, message)
            self.ring("5551234", "103")
            return reply

        self.patch(self.client, "_handlers", {**self.client._handlers,
                                              ("channelgroup", "channelgroup.query.init"): group_init_then_call})
        self.connect()
        self.assertEqual(len(self.sim.destinations[CHANNEL].init.interactions), 1)
        self.assertEqual(self.events(CHANNEL), [])
        self.assertEqual(len(self.sim.active("conversation")), 1)

    def test_events_of_a_disposed_destination_are_dropped(self):
        self.connect()
        call_id, _, conversation = self.talking()
        self.assertTrue(self.send("dispose-channel", target=CHANNEL).ok)
        self.assertEqual(self.events(CHANNEL), ["channel.interaction", "channel.disposed"])
        self.registry.hold(call_id)
        self.flush()
        self.assertEqual(self.events(conversation)[-1], "conversation.partyadded")
        self.refused(self.query("channel.query.init", CHANNEL), "unknown target")


class RenamedMessagesTests(FakeBridge):
    """``[cti.names]`` is what goes on the wire: renamed messages and status values work both ways."""

    def setUp(self):
        super().setUp()
        names = CtiNames(channel_interaction="channel.newcall", conversation_request_hold="conversation.request.pause",
                         conversation_held="conversation.paused", status_started="RUNNING",
                         capability_channel_groups="channelGroupsSupported")
        self.config = CtiConfig(enabled=True, agents=self.config.agents, names=names)
        self.client = BridgeClient(self.config, self.registry, CtiMetrics(CollectorRegistry()), self.component)
        self.sim = HisBridgeSim(self.clock, names=names, agents=self.agents, response_timeout=60)
        self.connect()

    def test_renamed_status_event_and_request(self):
        self.assertEqual(self.sim.status, "RUNNING")
        self.assertIs(self.sim.channel_groups_supported, True)
        self.assertIn("channelGroupsSupported", self.sim.capabilities)
        call_id, _, conversation = self.talking()
        self.assertEqual(self.events(CHANNEL), ["channel.newcall"])
        self.assertTrue(self.send("hold").ok)
        self.assertEqual(self.registry.call(call_id).state, "HELD")
        self.assertEqual(self.events(conversation)[-1], "conversation.paused")
        self.refused(self.query("conversation.request.hold", conversation, message=env.request), "unknown name")


class ReconnectTests(Bridge):
    def test_a_new_link_lists_the_live_calls_once(self):
        self.connect()
        talking, _, _ = self.talking()
        self.sim.disconnect()
        self.flush()
        announced = len(self.sim.event_log)
        self.connect()
        channel = self.sim.destinations[CHANNEL]
        self.assertEqual(list(channel.init.interactions), [talking])
        new_events = [(e.target, e.name) for e in self.sim.event_log[announced:]]
        self.assertNotIn((CHANNEL, "channel.interaction"), new_events, "no announcement on the new link")
        interaction = self.sim.destinations[f"{CHANNEL}.{talking}"]
        self.assertEqual(interaction.init.state, "STARTED")
        conversation = f"{CHANNEL}.{talking}.primary"
        self.assertEqual(self.sim.destinations[conversation].init.state, "TALKING")
        self.assertEqual(
            [e.name for e in self.sim.event_log[announced:] if e.target == conversation],
            ["conversation.started", "conversation.talking", "conversation.partyadded"],
        )
        self.assertTrue(self.send("release", target=conversation).ok)
        self.assertEqual(self.events(conversation)[-1], "conversation.ended")
        self.assertEqual(self.network.party("5551234").state, "ended")

    def test_a_call_that_came_while_the_link_was_down_is_not_lost(self):
        self.connect()
        self.sim.disconnect()
        self.flush()
        call_id, _, conversation = self.inbound()
        self.connect()
        self.assertEqual(list(self.sim.destinations[CHANNEL].init.interactions), [call_id])
        self.assertEqual(self.sim.destinations[conversation].init.state, "RINGING")
        self.assertTrue(self.send("accept").ok)
        self.assertEqual(self.registry.call(call_id).state, "TALKING")


class TelephonyStatusTests(FakeBridge):
    def setUp(self):
        super().setUp()
        self.readiness = Readiness()
        self.listener = self.readiness.register("listener:optimaccs")
        self.listener.set_up()
        self.readiness.register("listener:admin")
        self.watch = TelephonyWatch(self.clock, self.readiness, self.config.telephony, 1.0,
                                    self.client.telephony_changed)
        self.watch.start()
        self.addCleanup(self.watch.stop)

    def test_loss_and_return_of_the_telephony_side(self):
        self.connect()
        self.listener.set_down("port closed")
        self.advance(1.0)
        event = self.sim.events[CONTROL][-1]
        self.assertEqual(event.body, {"status": "DEGRADED", "reason": "listener:optimaccs: port closed"})
        self.assertEqual(self.events(CHANNEL), ["channel.unavailable"])
        self.assertEqual(self.client.status()["status"], "DEGRADED")
        self.listener.set_up()
        self.advance(1.0)
        self.assertEqual(self.sim.events[CONTROL][-1].body, {"status": "STARTED"})
        self.assertEqual(self.events(CHANNEL), ["channel.unavailable", "channel.available"])

    def test_agents_are_logged_in_once_the_telephony_side_is_up(self):
        self.listener.set_down("not bound")
        self.advance(1.0)
        self.connect()
        self.assertEqual(self.sim.status, "DEGRADED")
        self.assertFalse(self.sim.ready)
        self.listener.set_up()
        self.advance(1.0)
        self.assertTrue(self.sim.ready)

    def test_stopping_says_stopped(self):
        self.connect()
        self.client.stop()
        self.flush()
        self.assertEqual(self.sim.events[CONTROL][-1].body, {"status": "STOPPED"})
        self.registry.originate("1003", "5551234")
        self.flush()
        self.assertEqual(self.events(CHANNEL), [], "no longer following the call core")


class SessionLifeTests(Bridge):
    """``session.request.logout`` and ``session.request.dispose``: the session and everything below it
    are forgotten without an event (the simulator reports any as a secondary event); the agent's
    calls go on, and a later login lists them."""

    def setUp(self):
        super().setUp()
        self.connect()

    def check_forgotten_and_relisted(self, call_id, conversation):
        logged = len(self.sim.event_log)
        self.registry.hold(call_id)
        self.advance(1.0)
        self.assertEqual(self.sim.event_log[logged:], [], "no event once the session is gone")
        self.assertEqual(self.registry.call(call_id).state, "HELD", "the call goes on")
        self.refused(self.query("conversation.request.retrieve", conversation, message=env.request), "unknown target")
        self.refused(self.query("session.request.ready", "alice", message=env.request), "unknown target")
        channel = self.sim.login("alice")
        self.flush()
        self.assertEqual(list(self.successResultOf(channel).init.interactions), [call_id])
        self.assertEqual(self.sim.destinations[conversation].init.state, "HELD")
        self.assertTrue(self.send("retrieve", target=conversation).ok)
        self.assertEqual(self.registry.call(call_id).state, "TALKING")

    def test_a_logout_is_answered_once_the_session_is_forgotten_and_the_call_goes_on(self):
        call_id, _, conversation = self.talking()
        self.assertTrue(self.send("logout", target="alice").ok)
        self.assertEqual(self.client.status()["agents"], [])
        self.assertEqual(self.client.status()["interactions"], 0)
        self.check_forgotten_and_relisted(call_id, conversation)

    def test_a_session_dispose_forgets_it_after_the_response_and_the_call_goes_on(self):
        call_id, _, conversation = self.talking()
        self.assertTrue(self.send("dispose-session", target="alice").ok)
        self.assertEqual(self.client.status()["agents"], [])
        self.check_forgotten_and_relisted(call_id, conversation)
