"""Consult through the Bridge Client: the real registry on the sim network, the strict processor-bridge
simulator in memory, on a task.Clock.

Agent alice (extension 1003) talks to 5551234 and consults another number from the interaction. The
consult call is a second conversation of the same interaction (its id is the consult call's id),
which the simulator registers and initialises after the consult response names it; the simulator
checks the order of a transfer to consult, the focus changes and that each request gets exactly one
response. Who hears whom in each state is proven by tone detection in tests/core/test_registry_consult.py
(the requests here are those very commands); these tests prove what the desktop is told.
"""

from gateway.core.registry import Registry
from gateway.core.routing import Router
from gateway.cti import envelope as env
from gateway.drivers.config import NumberRule, SimNetworkConfig
from gateway.drivers.sim import SimNetwork

from .test_client import CHANNEL, EXTENSIONS, ROUTES, RULES, Bridge

#: answers after the sim network's ring_time (2 s)
CONSULTED = "5552222"
BUSY, FAILED, NO_ANSWER = "5550003", "5559993", "5558883"


class ConsultBridge(Bridge):
    def make_core(self):
        rules = [*RULES, NumberRule(match="555888[0-9]", outcome="no-answer", after=1.0)]
        self.network = SimNetwork(self.clock, SimNetworkConfig(audio="silence", ring_time=2.0, rules=rules))
        registry = Registry(
            self.clock, {"sim": self.network}, extensions=EXTENSIONS, router=Router(ROUTES, {}), retention=60.0
        )
        self.network.wire(registry)
        return registry

    def setUp(self):
        super().setUp()
        self.connect()
        self.primary, self.interaction, self.conversation = self.talking()

    def consult(self, number=CONSULTED, answer=True):
        """Consult ``number``: (consult call id, its conversation target), answered unless told not to."""
        response = self.send("consult", target=self.interaction, destination=number)
        self.assertTrue(response.ok, response.describe())
        consult_id = response.body["id"]
        target = f"{self.interaction}.{consult_id}"
        self.assertEqual(self.sim.destinations[target].role, "consult")
        if answer:
            self.advance(2.5)
            self.assertEqual(self.registry.call(consult_id).state, "TALKING")
        return consult_id, target

    def since(self, mark):
        """(target tail, event name[, body id]) of the events after ``mark`` on this interaction."""
        out = []
        for e in self.sim.event_log[mark:]:
            if not e.target.startswith(self.interaction):
                continue
            tail = e.target[len(self.interaction):].lstrip(".") or "interaction"
            tail = "primary" if tail == "primary" else ("consult" if tail != "interaction" else tail)
            out.append((tail, e.name, e.body["id"]) if "id" in e.body else (tail, e.name))
        return out

    def interaction_init(self):
        return self.query("interaction.query.init", self.interaction).body


class ConsultFlowTests(ConsultBridge):
    def test_a_consult_holds_the_primary_and_becomes_a_second_conversation(self):
        mark = len(self.sim.event_log)
        consult_id, consult = self.consult(answer=False)
        self.assertEqual(self.registry.call(consult_id).consult_of, self.primary)
        self.assertEqual(self.registry.call(self.primary).state, "HELD")
        self.assertEqual(self.events(CHANNEL), ["channel.interaction"], "the consult is no interaction of its own")
        self.assertEqual(self.sim.destinations[consult].init.state, "DIALING")
        self.assertEqual([p.number for p in self.sim.destinations[consult].init.parties], [CONSULTED])
        self.assertEqual(self.since(mark), [
            ("primary", "conversation.held"),
            ("consult", "conversation.started"),
            ("consult", "conversation.dialing"),
            ("interaction", "interaction.focuschanged", consult_id),
        ])
        body = self.interaction_init()
        self.assertEqual(body["interaction-state"], "STARTED")
        self.assertEqual(body["conversations"], {"primary": {"id": "primary"}, "consult": {"id": consult_id}})
        self.advance(2.5)
        self.assertEqual(self.events(consult)[-2:], ["conversation.talking", "conversation.partyadded"])

    def test_transfer_to_consult_in_the_vendors_order(self):
        consult_id, consult = self.consult()
        mark = len(self.sim.event_log)
        self.assertTrue(self.send("transfer-to-consult", target=self.interaction).ok)
        self.assertEqual(self.since(mark), [
            ("primary", "conversation.ended"),
            ("primary", "conversation.disposed"),
            ("interaction", "interaction.focuschanged", consult_id),
            ("consult", "conversation.ended"),
            ("consult", "conversation.disposed"),
            ("interaction", "interaction.ended"),
        ])
        self.assertEqual([(c.state, c.extension) for c in self.registry.calls()], [("TALKING", None)])
        self.assertEqual((self.registry.call(self.primary).cause, self.registry.call(consult_id).cause),
                         ("transferred", "transferred"))
        self.assertEqual(self.interaction_init()["conversations"], {}, "nothing is named once it ended")
        self.refused(self.send("release", target=self.conversation), "unknown target")
        self.assertTrue(self.send("complete", target=self.interaction).ok)
        self.assertTrue(self.send("dispose-interaction", target=self.interaction).ok)
        self.assertEqual(self.registry.calls()[0].state, "TALKING", "the transferred parties talk on")

    def test_conference_in_consult_joins_all_three_on_the_primary(self):
        consult_id, consult = self.consult()
        mark = len(self.sim.event_log)
        self.assertTrue(self.send("conference-in-consult", target=self.interaction).ok)
        self.assertEqual(self.since(mark), [
            ("consult", "conversation.ended"),
            ("consult", "conversation.disposed"),
            ("interaction", "interaction.focuschanged", "primary"),
            ("primary", "conversation.talking"),
            ("primary", "conversation.partyadded"),
        ])
        self.assertEqual(self.sim.events[self.conversation][-1].body, {"number": CONSULTED, "name": ""})
        self.assertEqual([p.number for p in self.registry.call(self.primary).parties], ["5551234", CONSULTED])
        self.assertEqual(self.interaction_init()["conversations"], {"primary": {"id": "primary"}})
        self.assertTrue(self.send("release", target=self.conversation).ok)
        self.assertEqual(self.events(self.interaction)[-1], "interaction.ended")

    def test_alternate_swaps_the_held_conversation_and_the_focus(self):
        consult_id, consult = self.consult()
        mark = len(self.sim.event_log)
        self.assertTrue(self.send("alternate", target=self.interaction).ok)
        self.assertEqual(self.since(mark), [
            ("consult", "conversation.held"),
            ("primary", "conversation.talking"),
            ("interaction", "interaction.focuschanged", "primary"),
        ])
        self.assertEqual((self.registry.call(self.primary).state, self.registry.call(consult_id).state),
                         ("TALKING", "HELD"))
        mark = len(self.sim.event_log)
        self.assertTrue(self.send("alternate", target=self.interaction).ok)
        self.assertEqual(self.since(mark), [
            ("primary", "conversation.held"),
            ("consult", "conversation.talking"),
            ("interaction", "interaction.focuschanged", consult_id),
        ])

    def test_a_second_consult_after_the_first_ended_gets_a_new_conversation(self):
        first, _ = self.consult()
        self.assertTrue(self.send("release", target=f"{self.interaction}.{first}").ok)
        self.assertTrue(self.send("retrieve", target=self.conversation).ok)
        second, consult = self.consult("5553333")
        self.assertNotEqual(first, second)
        self.assertEqual(self.interaction_init()["conversations"]["consult"], {"id": second})


class ConsultFailureTests(ConsultBridge):
    def ends_and_returns(self, consult_id, consult, mark, *before_ended):
        """The consult ended (after ``before_ended``), was disposed, the focus returned to the held primary."""
        self.assertEqual(self.since(mark)[-(3 + len(before_ended)):], [
            *(("consult", name) for name in before_ended),
            ("consult", "conversation.ended"),
            ("consult", "conversation.disposed"),
            ("interaction", "interaction.focuschanged", "primary"),
        ])
        self.assertEqual(self.registry.call(self.primary).state, "HELD")
        self.assertNotIn("consult", self.interaction_init()["conversations"])
        self.refused(self.send("hold", target=consult), "unknown target")
        self.assertTrue(self.send("retrieve", target=self.conversation).ok)
        self.assertEqual(self.events(self.conversation)[-1], "conversation.talking")
        self.assertEqual(self.registry.call(self.primary).state, "TALKING")

    def test_a_busy_consult_leaves_the_primary_held(self):
        mark = len(self.sim.event_log)
        consult_id, consult = self.consult(BUSY, answer=False)
        self.advance(1.5)
        self.ends_and_returns(consult_id, consult, mark, "conversation.busy")

    def test_an_unanswered_consult_says_so(self):
        mark = len(self.sim.event_log)
        consult_id, consult = self.consult(NO_ANSWER, answer=False)
        self.advance(1.5)
        self.ends_and_returns(consult_id, consult, mark, "conversation.failed")
        failed = next(e for e in self.sim.events[consult] if e.name == "conversation.failed")
        self.assertEqual(failed.body, {"reason": "no answer"})

    def test_a_failed_consult_says_why(self):
        mark = len(self.sim.event_log)
        consult_id, consult = self.consult(FAILED, answer=False)
        self.advance(1.0)
        self.ends_and_returns(consult_id, consult, mark, "conversation.failed")

    def test_the_consulted_party_hanging_up(self):
        consult_id, consult = self.consult()
        mark = len(self.sim.event_log)
        self.network.party(CONSULTED).hang_up()
        self.flush()
        self.ends_and_returns(consult_id, consult, mark)

    def test_the_agent_releasing_the_consult(self):
        consult_id, consult = self.consult()
        mark = len(self.sim.event_log)
        self.assertTrue(self.send("release", target=consult).ok)
        self.ends_and_returns(consult_id, consult, mark)

    def test_the_agent_releasing_a_consult_still_dialling(self):
        consult_id, consult = self.consult(answer=False)
        mark = len(self.sim.event_log)
        self.assertTrue(self.send("release", target=consult).ok)
        self.ends_and_returns(consult_id, consult, mark)

    def primary_gone(self, end):
        consult_id, consult = self.consult()
        mark = len(self.sim.event_log)
        end()
        self.flush()
        self.assertEqual(self.since(mark), [("primary", "conversation.ended")])
        self.assertEqual(self.registry.call(consult_id).state, "TALKING", "the consult goes on")
        body = self.interaction_init()
        self.assertEqual(body["interaction-state"], "STARTED")
        self.assertEqual(body["conversations"], {"primary": {"id": "primary"}, "consult": {"id": consult_id}})
        mark = len(self.sim.event_log)
        self.assertTrue(self.send("release", target=consult).ok)
        self.assertEqual(self.since(mark), [
            ("consult", "conversation.ended"),
            ("consult", "conversation.disposed"),
            ("interaction", "interaction.ended"),
        ])
        self.assertEqual(self.network.party("1003").state, "ended")

    def test_the_primary_party_hanging_up_during_the_consult(self):
        self.primary_gone(self.network.party("5551234").hang_up)

    def test_the_agent_releasing_the_primary_during_the_consult(self):
        self.primary_gone(lambda: self.assertTrue(self.send("release", target=self.conversation).ok))

    def test_refused_requests_get_one_failure_each_and_change_nothing(self):
        for verb in ("alternate", "transfer-to-consult", "conference-in-consult"):
            self.refused(self.send(verb, target=self.interaction), "in no consult")
        self.refused(self.send("consult", target=self.interaction, destination="1003"), "own extension")
        self.refused(self.send("consult", target=self.interaction, destination="12ab"), "neither an extension")
        consult_id, consult = self.consult(answer=False)
        for verb in ("alternate", "transfer-to-consult", "conference-in-consult"):
            self.refused(self.send(verb, target=self.interaction), "DIALING")
        self.refused(self.send("consult", target=self.interaction, destination="5553333"), "consulting already")
        self.refused(self.send("transfer", target=self.conversation, destination="5553333"), "in a consult")
        self.assertEqual([c.call_id for c in self.registry.calls()], [self.primary, consult_id])
        self.assertEqual(self.registry.call(self.primary).state, "HELD")

    def test_a_consult_from_a_ringing_call_is_refused(self):
        self.assertTrue(self.send("release", target=self.conversation).ok)
        call_id, interaction, _ = self.inbound()
        self.refused(self.send("consult", target=interaction, destination=CONSULTED), "RINGING")


class ConsultLinkTests(ConsultBridge):
    def test_a_new_link_lists_the_primary_once_with_its_consult(self):
        consult_id, consult = self.consult()
        self.sim.disconnect()
        self.flush()
        self.connect()
        self.assertEqual(list(self.sim.destinations[CHANNEL].init.interactions), [self.primary])
        self.assertEqual(self.sim.destinations[self.interaction].init.consult, consult_id)
        self.assertEqual(self.sim.destinations[consult].init.state, "TALKING")
        self.assertEqual(self.sim.destinations[self.conversation].init.state, "HELD")
        self.assertEqual(self.events(self.interaction)[-1], "interaction.focuschanged")
        self.assertTrue(self.send("transfer-to-consult", target=self.interaction).ok)
        self.assertEqual(self.events(self.interaction)[-1], "interaction.ended")

    def test_a_logout_during_a_consult_leaves_both_calls_and_a_login_lists_them(self):
        consult_id, consult = self.consult()
        logged = len(self.sim.event_log)
        self.assertTrue(self.send("logout", target="alice").ok)
        self.network.party(CONSULTED).hang_up()
        self.flush()
        self.assertEqual(self.sim.event_log[logged:], [])
        self.assertEqual(self.registry.call(self.primary).state, "HELD")
        self.sim.login("alice")
        self.flush()
        self.assertEqual(list(self.sim.destinations[CHANNEL].init.interactions), [self.primary])
        self.assertIsNone(self.sim.destinations[self.interaction].init.consult)
        self.assertTrue(self.send("retrieve", target=self.conversation).ok)

    def test_a_new_link_after_the_primary_ended_lists_its_interaction_with_the_live_consult(self):
        consult_id, consult = self.consult()
        self.network.party("5551234").hang_up()
        self.flush()
        self.sim.disconnect()
        self.flush()
        self.connect()
        self.assertEqual(list(self.sim.destinations[CHANNEL].init.interactions), [self.primary])
        init = self.sim.destinations[self.interaction].init
        self.assertEqual((init.state, init.primary, init.consult), ("STARTED", "primary", consult_id))
        self.assertEqual(self.sim.destinations[self.conversation].init.state, "RELEASED")
        self.assertTrue(self.send("release", target=consult).ok)
        self.assertEqual(self.events(self.interaction)[-1], "interaction.ended")


class ConsultRequestTests(ConsultBridge):
    def test_register_names_a_conversation_of_the_interaction(self):
        self.refused(self.query("interaction.request.register", self.interaction, {"id": "nope"}, message=env.request),
                     "no conversation 'nope'")
        self.refused(self.query("interaction.request.register", self.interaction, {}, message=env.request),
                     "needs the property 'id'")
        self.assertTrue(self.query("interaction.request.register", self.interaction, {"id": "primary"},
                                   message=env.request).ok)

    def test_a_consult_needs_a_destination(self):
        self.refused(self.query("interaction.request.consult", self.interaction, {}, message=env.request),
                     "needs the property 'destination'")
        self.assertEqual([c.call_id for c in self.registry.calls()], [self.primary])

    def test_disposing_the_interaction_during_a_consult_ends_both_calls(self):
        consult_id, consult = self.consult()
        self.assertTrue(self.send("dispose-interaction", target=self.interaction).ok)
        self.flush()
        self.assertEqual(self.registry.calls(), [])
        self.assertEqual({self.network.party(n).state for n in ("1003", "5551234", CONSULTED)}, {"ended"})
