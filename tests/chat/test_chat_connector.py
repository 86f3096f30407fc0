"""The connector on FakeSocketIOClient, the in-memory store, a fake REST API and the sim transport (task.Clock)."""

from twisted.internet import task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.boundary import PeerDataError
from gateway.chat.connector import UnknownConversation
from gateway.chat.rest import ChatServerUnavailable
from gateway.chat.socketio import UnexpectedEvent
from gateway.store import MemoryCdrStore

from .bench import ConnectorBench, FakeRest

NUMBER = "+4915100000001"
AGENT = {"id": "agent-1", "name": "Agent"}


class ConnectorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.store = MemoryCdrStore(self.clock)
        self.rest = FakeRest()
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def make(self, **settings):
        bench = ConnectorBench.build(self.clock, self.store, self.rest, **settings)
        self.connector, self.conversations, self.transport = bench.connector, bench.conversations, bench.transport
        self.readiness, self.link = bench.readiness, bench.link
        self.connect, self.unacked, self.ack = bench.connect, bench.unacked, bench.ack
        return self.connector

    def sms(self, text, number=NUMBER, external_id=None):
        record, created = self.successResultOf(self.connector.receive_sms(number, text, external_id))
        return record

    def stored(self, direction=None):
        return self.successResultOf(self.store.list_sms(direction=direction))

    def arrive(self, **message):
        return self.successResultOf(self.link.receive("messageArrived", message))

    def agent_says(self, text, conversation="c1", **extra):
        return self.arrive(type="ChatMessage", conversationId=conversation, id=extra.pop("id", f"m-{text}"),
                           **{"from": AGENT, "to": [], "text": text, "refId": NUMBER, "tag": "", **extra})

    def activity(self, kind, conversation="c1", **extra):
        return self.arrive(type="ActivityMessage", conversationId=conversation, activityType=kind, id=f"a-{kind}",
                           **{"from": AGENT, **extra})

    def sent_texts(self):
        return [(sms["to"], sms["text"]) for sms in self.transport.sent]

    def warnings(self):
        return [formatEvent(e) for e in self.logged if e.get("log_level") in (LogLevel.warn, LogLevel.error)]

    def open_conversation(self, text="hello"):
        """An SMS that opens c1 and is delivered into it."""
        self.sms(text)
        self.ack("joinConversation")
        self.ack("sendMessage")

    # -- registration --------------------------------------------------------------------------

    def test_the_connector_registers_on_every_connect(self):
        self.make()
        self.link.connect()
        [registration] = self.unacked("registerConnector")
        self.assertEqual(registration.args, ({"id": "sms", "name": "ExpertFlow SMS Connector", "channel": "sms"},))
        self.assertFalse(self.readiness.up)
        registration.ack(True)
        self.assertTrue(self.readiness.up and self.connector.registered)

        self.link.disconnect()
        self.assertFalse(self.readiness.up)
        self.assertIn("not connected to the chat server", self.readiness.reason)
        self.connect()
        self.assertTrue(self.readiness.up)
        self.assertEqual(len([e for e in self.link.emitted if e.event == "registerConnector"]), 2)

    def test_a_refused_registration_leaves_the_connector_not_ready(self):
        self.make()
        self.link.connect()
        self.ack("registerConnector", False)
        self.assertFalse(self.readiness.up)
        self.assertEqual(self.readiness.reason, "the chat server refused the registration")
        self.assertTrue(any("refused registerConnector" in w for w in self.warnings()))

    def test_a_registration_lost_with_the_link_is_logged_and_tried_on_the_next_connect(self):
        self.make()
        self.link.connect()
        self.link.disconnect()
        self.assertFalse(self.readiness.up)
        self.assertTrue(any("registerConnector was not acknowledged" in w for w in self.warnings()))
        self.connect()
        self.assertTrue(self.readiness.up)

    # -- SMS from customers --------------------------------------------------------------------

    def test_an_sms_opens_a_conversation_joins_it_and_is_sent_from_the_customer(self):
        self.make()
        self.connect()
        record = self.sms("hello")
        self.assertEqual(record.status, "pending")
        [body] = self.rest.bodies
        self.assertEqual({k: body[k] for k in ("phone", "refId", "channel", "firstName", "language", "subject")},
                         {"phone": NUMBER, "refId": NUMBER, "channel": "sms", "firstName": NUMBER, "language": "en", "subject": "support"})
        self.assertTrue(body["requestId"] and body["timestamp"].endswith("Z"))
        [join] = self.ack("joinConversation")
        self.assertEqual(join.args, ({"conversationId": "c1", "id": "cust-1", "name": NUMBER},))
        [send] = self.unacked("sendMessage")
        message = send.args[0]
        self.assertEqual((message["id"], message["conversationId"], message["from"], message["text"], message["refId"]),
                         (record.uid, "c1", {"id": "cust-1", "name": NUMBER}, "hello", NUMBER))
        self.assertEqual(self.stored()[0].status, "pending")  # not before the chat server acknowledged it
        send.ack(True)
        [delivered] = self.stored()
        self.assertEqual((delivered.status, delivered.conversation_id), ("delivered", "c1"))

    def test_later_sms_from_the_number_go_into_the_same_conversation_in_order(self):
        self.make()
        self.connect()
        self.sms("one")
        self.sms("two")
        self.ack("joinConversation")
        self.assertEqual([e.args[0]["text"] for e in self.unacked("sendMessage")], ["one"])
        self.ack("sendMessage")
        self.assertEqual([e.args[0]["text"] for e in self.unacked("sendMessage")], ["two"])
        self.ack("sendMessage")
        self.sms("three")
        self.ack("sendMessage")
        self.assertEqual(len(self.rest.bodies), 1)
        self.assertEqual([(r.text, r.status, r.conversation_id) for r in self.stored()],
                         [("one", "delivered", "c1"), ("two", "delivered", "c1"), ("three", "delivered", "c1")])

    def test_a_repeated_provider_message_is_stored_once(self):
        self.make()
        first = self.sms("hello", external_id="prov-1")
        record, created = self.successResultOf(self.connector.receive_sms(NUMBER, "hello", "prov-1"))
        self.assertEqual((record.uid, record.seq, created), (first.uid, first.seq, False))
        self.assertEqual(len(self.stored()), 1)

    def test_bad_numbers_and_texts_are_refused(self):
        self.make()
        for number, text, external_id in (("", "x", None), (" ", "x", None), ("1" * 65, "x", None), (NUMBER, None, None), (NUMBER, "x", 5)):
            self.assertRaises(ValueError, self.connector.receive_sms, number, text, external_id)
        self.assertEqual(self.stored(), [])

    def test_a_number_with_a_control_character_is_refused_not_repaired(self):
        self.make()
        for number in (NUMBER + "\n", NUMBER + "\r\n", "\x00", "+49\x0015", "+49\x85"):
            with self.subTest(number=number):
                self.assertRaises(ValueError, self.connector.receive_sms, number, "x", None)
                self.assertRaises(ValueError, self.connector.send_sms, number, "x")
        self.assertEqual((self.stored(), self.sent_texts()), ([], []))

    def test_sms_with_bad_text_are_refused_naming_the_field_and_never_stored(self):
        self.make()
        for number, text, external_id, field in ((NUMBER, "hi \ud800", None, "text"), ("+49\udfff", "x", None, "from"),
                                                 (NUMBER, "x", "prov-\ud800", "id")):
            with self.subTest(field=field):
                with self.assertRaises(PeerDataError) as caught:
                    self.connector.receive_sms(number, text, external_id)
                self.assertEqual(caught.exception.field, field)
                self.assertIn("surrogate", str(caught.exception))
        for number, text, field in ((NUMBER, "\ud83d", "text"), ("\udc00", "x", "to")):
            with self.subTest(field=field), self.assertRaises(PeerDataError) as caught:
                self.connector.send_sms(number, text)
            self.assertEqual(caught.exception.field, field)
        self.assertEqual((self.stored(), self.sent_texts()), ([], []))
        self.assertEqual(self.sms("a valid pair \U0001f600").text, "a valid pair \U0001f600")

    def test_sms_wait_while_the_link_is_down_and_go_in_order_once_registered(self):
        self.make()
        for text in ("one", "two", "three"):
            self.sms(text)
        self.clock.pump([1] * 100)
        self.assertEqual((self.link.emitted, self.rest.bodies), ([], []))
        self.assertEqual(self.stored()[0].attempts, 7)  # at 0, then 1, 3, 7, 15, 31 and 63 s
        self.connect()  # registration kicks the waiting lane
        self.ack("joinConversation")
        for text in ("one", "two", "three"):
            [send] = self.ack("sendMessage")
            self.assertEqual(send.args[0]["text"], text)
        self.assertEqual({r.status for r in self.stored()}, {"delivered"})

    def test_a_chat_server_that_fails_init_is_tried_again_until_it_answers(self):
        self.make()
        self.connect()
        self.rest.failure = ChatServerUnavailable("POST .../init failed 3 time(s); last: HTTP 503")
        self.sms("hello")
        self.assertEqual(self.stored()[0].last_error, "ChatServerUnavailable: POST .../init failed 3 time(s); last: HTTP 503")
        self.rest.failure = None
        self.clock.advance(1)
        self.ack("joinConversation")
        self.ack("sendMessage")
        self.assertEqual(self.stored()[0].status, "delivered")

    def test_a_refused_message_closes_the_conversation_and_goes_into_a_new_one(self):
        self.make()
        self.connect()
        self.open_conversation("first")
        self.sms("second")
        self.ack("sendMessage", False)  # the chat server no longer knows c1
        self.ack("joinConversation")
        [send] = self.ack("sendMessage")
        self.assertEqual((send.args[0]["conversationId"], send.args[0]["text"]), ("c2", "second"))
        self.assertEqual([c.conversation_id for c in self.successResultOf(self.store.open_conversations())], ["c2"])

    def test_a_reconnect_joins_the_open_conversations_again(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.link.disconnect()
        self.connect()
        [join] = self.ack("joinConversation")
        self.assertEqual(join.args[0]["conversationId"], "c1")
        self.sms("after")
        [send] = self.ack("sendMessage")
        self.assertEqual(send.args[0]["conversationId"], "c1")
        self.assertEqual(len(self.rest.bodies), 1)

    def test_a_conversation_the_server_forgot_while_away_is_closed_on_reconnect(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.link.disconnect()
        self.connect()
        self.ack("joinConversation", False)
        self.assertEqual(list(self.conversations), [])
        self.sms("after")
        self.assertEqual(len(self.rest.bodies), 2)

    def test_pending_sms_and_open_conversations_survive_a_restart(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.link.disconnect()
        self.sms("while away 1")
        self.sms("while away 2")
        self.successResultOf(self.connector.stop())

        self.make()  # a new connector on the same store
        self.assertEqual([c.id for c in self.conversations], ["c1"])
        self.connect()
        self.ack("joinConversation")
        texts = [self.ack("sendMessage")[0].args[0]["text"] for _ in range(2)]
        self.assertEqual(texts, ["while away 1", "while away 2"])
        self.assertEqual(len(self.rest.bodies), 1)

    # -- SMS to customers ----------------------------------------------------------------------

    def test_an_agent_reply_is_stored_then_acknowledged_then_sent_as_sms(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.assertEqual(self.agent_says("Hi, how can I help?"), [True])
        self.assertEqual(self.sent_texts(), [(NUMBER, "Hi, how can I help?")])
        [reply] = self.stored("outbound")
        self.assertEqual((reply.kind, reply.status, reply.external_id, reply.conversation_id), ("reply", "delivered", "m-Hi, how can I help?", "c1"))

    def test_an_agent_who_writes_counts_as_present_without_a_join_activity(self):
        self.make()
        self.connect()
        self.open_conversation()
        [conversation] = self.conversations
        self.assertEqual(conversation.agents, {})
        self.agent_says("Hi, how can I help?")
        self.assertEqual(conversation.agents, {AGENT["id"]: AGENT["name"]})

    def test_whispers_the_customers_own_messages_and_messages_between_agents_are_not_sent(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.assertEqual(self.agent_says("internal note", tag="whisper"), [True])
        self.assertEqual(self.agent_says("echo", **{"from": {"id": "cust-1", "name": NUMBER}}), [True])
        self.assertEqual(self.agent_says("to a colleague", to=[{"id": "agent-2"}]), [True])
        self.assertEqual(self.agent_says("to the customer", to=[{"id": "cust-1"}]), [True])
        self.assertEqual(self.sent_texts(), [(NUMBER, "to the customer")])

    def test_a_message_delivered_twice_is_sent_once(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.agent_says("once", id="m-1")
        self.agent_says("once", id="m-1")
        self.assertEqual(self.sent_texts(), [(NUMBER, "once")])

    def test_a_repeated_id_with_other_content_is_stored_and_sent_as_a_distinct_sms(self):
        self.make()
        self.connect()
        campaign = dict(type="ChatMessage", id="m-ok-1", **{"from": AGENT, "to": []})
        self.assertEqual(self.arrive(**campaign, refId="+15559990001", text="hello"), [True])
        self.assertEqual(self.arrive(**campaign, refId="+15559990002", text="different"), [True])
        self.assertEqual(self.arrive(**campaign, refId="+15559990001", text="other text"), [True])
        # true duplicates of each (same id, same content) store nothing new
        for ref, text in (("+15559990001", "hello"), ("+15559990002", "different"), ("+15559990001", "other text")):
            self.assertEqual(self.arrive(**campaign, refId=ref, text=text), [True])
        self.assertEqual(self.sent_texts(), [("+15559990001", "hello"), ("+15559990002", "different"),
                                             ("+15559990001", "other text")])
        ids = [r.external_id for r in self.stored("outbound")]
        self.assertEqual(ids[0], "m-ok-1")
        self.assertEqual(len(set(ids)), 3)
        self.assertTrue(all(i.startswith("m-ok-1#") for i in ids[1:]))
        self.assertEqual(len([w for w in self.warnings() if "was used before for another message" in w]), 2)

    def test_a_repeated_provider_id_with_other_content_is_stored_as_a_distinct_sms(self):
        self.make()
        first = self.sms("hello", external_id="prov-1")
        record, created = self.successResultOf(self.connector.receive_sms(NUMBER, "something else", "prov-1"))
        self.assertTrue(created)
        self.assertNotEqual(record.seq, first.seq)
        self.assertEqual([r.text for r in self.stored("inbound")], ["hello", "something else"])

    def test_a_message_whose_ids_or_number_are_not_strings_is_refused_not_converted(self):
        self.make()
        self.connect()
        self.open_conversation()
        for fields, problem in (({"refId": 5}, "refId is not a string: 5"), ({"id": 5}, "id is not a string: 5"),
                                ({"conversationId": 5}, "conversationId is not a string: 5")):
            with self.subTest(problem=problem):
                message = {"type": "ChatMessage", "id": "m-1", "conversationId": "c1", "from": AGENT, "to": [],
                           "text": "hi", "refId": NUMBER, **fields}
                self.assertEqual(self.arrive(**message), [False, problem])
        self.assertEqual([reason for _, reason, _ in self.link.refused], ["malformed"] * 3)
        self.assertEqual((self.stored("outbound"), self.sent_texts()), ([], []))

    def test_conversation_info_with_a_conversation_id_that_is_no_string_is_refused(self):
        self.make()
        self.connect()
        self.open_conversation()
        for value in (5, {"a": 1}, None):
            with self.subTest(value=value):
                [ack, problem] = self.successResultOf(
                    self.link.receive("conversationInfo", {"conversation": {"conversationId": value, "status": "ended"}}))
                self.assertFalse(ack)
                self.assertIn("conversationId is not a string", problem)
        self.assertEqual(len(self.conversations), 1)

    def test_a_text_longer_than_one_sms_is_refused_naming_the_limit_and_never_stored(self):
        self.make()
        self.connect()
        self.open_conversation()
        for fields in ({"text": "y" * 500000}, {"text": "y" * 1601}, {"text": "y" * 1580, "attachments": [
                {"contentUrl": "https://files.example/" + "a" * 40}]}):
            with self.subTest(size=len(fields["text"])):
                [ack, problem] = self.agent_says(**fields, id=f"m-{len(fields['text'])}")
                self.assertFalse(ack)
                self.assertIn("longer than one SMS of 1600 characters", problem)
        self.assertEqual([reason for _, reason, _ in self.link.refused], ["oversized"] * 3)
        self.assertEqual((self.stored("outbound"), self.sent_texts()), ([], []))
        self.assertEqual(self.agent_says("y" * 1600, id="m-max"), [True])
        self.assertEqual(self.sent_texts(), [(NUMBER, "y" * 1600)])

    def test_an_inbound_sms_longer_than_one_sms_is_refused_naming_the_field(self):
        self.make()
        with self.assertRaises(PeerDataError) as caught:
            self.connector.receive_sms(NUMBER, "z" * 1601)
        self.assertEqual(caught.exception.field, "text")
        self.assertIn("longer than 1600 characters", str(caught.exception))
        self.assertEqual(self.stored(), [])
        self.assertEqual(self.sms("z" * 1600).text, "z" * 1600)

    def test_a_refid_that_is_no_phone_number_is_refused_naming_the_field_never_repaired(self):
        self.make()
        self.connect()
        for ref_id in ("+1555\n", "\u0000", "x" * 100, " +4917000", "+49 170 000", "+49-170", "\uff11\uff12\uff13",
                       "12", "1" * 21, "++4917000", "+4917000\u200b"):
            with self.subTest(ref_id=ref_id):
                [ack, problem] = self.arrive(type="ChatMessage", id=f"camp-{len(self.link.refused)}", text="Sale",
                                             refId=ref_id, **{"from": {"id": "system"}})
                self.assertFalse(ack)
                self.assertTrue(problem.startswith("field 'refId': not a phone number"), problem)
        self.assertEqual({reason for _, reason, _ in self.link.refused}, {"malformed"})
        self.assertEqual((self.stored(), self.sent_texts()), ([], []))
        [ack, problem] = self.arrive(type="ChatMessage", id="camp-s", text="Sale", refId="+49\ud800",
                                     **{"from": {"id": "system"}})
        self.assertEqual((ack, self.link.refused[-1][1]), (False, "bad_text"))
        for ref_id in ("+4917000", "4917000", "112", "+" + "9" * 20):
            self.assertEqual(self.arrive(type="ChatMessage", id=f"ok-{ref_id}", text="Sale", refId=ref_id,
                                         **{"from": {"id": "system"}}), [True])
        self.assertEqual([to for to, _ in self.sent_texts()], ["+4917000", "4917000", "112", "+" + "9" * 20])

    def test_numbers_given_to_the_connector_are_refused_naming_the_field_never_repaired(self):
        self.make()
        for number in ("+1555\n", "\x00", " +4917000 ", "+49 170", "5", None, 4917000):
            with self.subTest(number=number):
                for call, field in ((lambda: self.connector.receive_sms(number, "x"), "from"),
                                    (lambda: self.connector.send_sms(number, "x"), "to"),
                                    (lambda: self.connector.open_conversation(number), "number")):
                    with self.assertRaises(PeerDataError) as caught:
                        call()
                    self.assertEqual(caught.exception.field, field)
        self.assertEqual((self.stored(), self.sent_texts(), self.rest.bodies), ([], [], []))

    def test_a_campaign_message_is_sent_to_its_number(self):
        self.make()
        self.connect()
        ack = self.arrive(type="ChatMessage", id="camp-1", **{"from": {"id": "system"}}, text="Sale today", refId="+4917000")
        self.assertEqual(ack, [True])
        self.assertEqual(self.sent_texts(), [("+4917000", "Sale today")])
        self.assertEqual(self.stored("outbound")[0].kind, "campaign")

    def test_sms_wait_while_the_transport_is_down(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.transport.down = True
        self.agent_says("one")
        self.agent_says("two")
        self.assertEqual(self.sent_texts(), [])
        self.assertEqual([r.status for r in self.stored("outbound")], ["pending", "pending"])
        self.transport.down = False
        self.clock.advance(1)
        self.assertEqual(self.sent_texts(), [(NUMBER, "one"), (NUMBER, "two")])

    def test_replies_waiting_for_the_transport_survive_a_restart_in_order(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.transport.down = True
        self.agent_says("one")
        self.agent_says("two")
        self.successResultOf(self.connector.stop())

        self.make()  # a new connector (and transport) on the same store
        self.assertEqual(self.sent_texts(), [(NUMBER, "one"), (NUMBER, "two")])
        self.assertEqual([r.status for r in self.stored("outbound")], ["delivered", "delivered"])

    def test_an_operator_sms_is_stored_then_sent_through_the_transport_without_the_chat_server(self):
        self.make()
        record, created = self.successResultOf(self.connector.send_sms("+4917000", "Your appointment is at 10"))
        self.assertTrue(created)
        self.assertEqual((record.direction, record.number, record.kind, record.status, record.conversation_id),
                         ("outbound", "+4917000", "operator", "pending", None))
        [sent] = self.transport.sent
        self.assertEqual((sent["id"], sent["to"], sent["text"], sent["kind"]),
                         (record.uid, "+4917000", "Your appointment is at 10", "operator"))
        [stored] = self.stored("outbound")
        self.assertEqual((stored.uid, stored.status), (record.uid, "delivered"))
        self.assertEqual(self.link.emitted, [])

    def test_an_operator_sms_is_kept_and_tried_again_while_the_transport_is_down(self):
        self.make()
        self.transport.down = True
        record, _ = self.successResultOf(self.connector.send_sms(NUMBER, "one"))
        self.clock.advance(1)  # the first retry fails too
        [stored] = self.stored("outbound")
        self.assertEqual((stored.status, stored.attempts, self.sent_texts()), ("pending", 2, []))
        self.assertIn("switched down", stored.last_error)
        self.transport.down = False
        self.clock.advance(2)
        self.assertEqual(self.sent_texts(), [(NUMBER, "one")])
        self.assertEqual(self.stored("outbound")[0].status, "delivered")

    def test_operator_sms_with_a_bad_number_or_text_are_refused(self):
        self.make()
        for number, text in (("", "x"), ("1" * 65, "x"), (None, "x"), (NUMBER, None), (NUMBER, ""), (NUMBER, "  "),
                             (NUMBER, 5), (NUMBER, "x" * 1601)):
            self.assertRaises(ValueError, self.connector.send_sms, number, text)
        self.assertEqual((self.stored(), self.sent_texts()), ([], []))
        self.successResultOf(self.connector.send_sms(NUMBER, "x" * 1600))
        self.assertEqual(len(self.sent_texts()), 1)

    def test_a_message_with_no_number_is_refused_naming_the_problem(self):
        self.make()
        self.connect()
        [ack, problem] = self.arrive(type="ChatMessage", conversationId="unknown", text="lost", **{"from": AGENT})
        self.assertFalse(ack)
        self.assertIn("no refId", problem)
        self.assertEqual(self.link.refused, [("messageArrived", "malformed", problem)])

    # -- activities and the end ----------------------------------------------------------------

    def test_participants_joining_and_leaving_are_noted(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.activity("participantJoined")
        self.activity("participantJoined", info={"participant": {"id": "agent-2", "name": "Bea"}})
        self.assertEqual(self.conversations.get("c1").agents, {"agent-1": "Agent", "agent-2": "Bea"})
        self.activity("participantLeft")
        self.assertEqual(self.conversations.get("c1").agents, {"agent-2": "Bea"})

    def test_no_agent_available_sends_the_configured_auto_reply(self):
        self.make(no_agent_reply="All agents are busy.")
        self.connect()
        self.open_conversation()
        self.assertEqual(self.activity("noAgentAvailable"), [True])
        self.assertEqual(self.sent_texts(), [(NUMBER, "All agents are busy.")])
        self.assertEqual(self.stored("outbound")[0].kind, "auto-reply")

    def test_no_agent_available_sends_nothing_by_default(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.activity("noAgentAvailable")
        self.assertEqual(self.sent_texts(), [])

    def test_the_end_of_the_conversation_closes_it_and_the_next_sms_opens_another(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.assertEqual(self.activity("endOfConversation", **{"from": {"id": "system"}}), [True])
        self.assertEqual(list(self.conversations), [])
        self.assertEqual(self.successResultOf(self.store.open_conversations()), [])
        self.sms("again")
        self.assertEqual(len(self.rest.bodies), 2)

    def test_conversation_info_saying_it_ended_closes_it(self):
        self.make()
        self.connect()
        self.open_conversation()
        info = {"conversation": {"conversationId": "c1", "status": "open"}, "messages": [], "participant": [], "role": "customer"}
        self.assertEqual(self.successResultOf(self.link.receive("conversationInfo", info)), [True])
        self.assertEqual(len(self.conversations), 1)
        info["conversation"]["status"] = "ended"
        self.successResultOf(self.link.receive("conversationInfo", info))
        self.assertEqual(len(self.conversations), 0)

    def test_the_gateway_ends_an_idle_conversation(self):
        self.make(idle_timeout=300)
        self.connect()
        self.open_conversation()
        self.clock.advance(299)
        self.agent_says("still there?")  # activity: the idle time starts again
        self.clock.advance(299)
        self.assertEqual(self.unacked("endConversation"), [])
        self.clock.advance(1)
        [end] = self.ack("endConversation")
        self.assertEqual(end.args, ({"conversationId": "c1"},))
        self.assertEqual(list(self.conversations), [])

    def test_the_admin_api_ends_a_conversation(self):
        self.make()
        self.connect()
        self.open_conversation()
        d = self.connector.end_conversation("c1")
        self.ack("endConversation")
        self.successResultOf(d)
        self.assertEqual(list(self.conversations), [])
        self.failureResultOf(self.connector.end_conversation("c1"), UnknownConversation)

    def test_an_unreachable_server_does_not_keep_a_conversation_open(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.link.disconnect()
        self.successResultOf(self.connector.end_conversation("c1"))
        self.assertEqual(self.successResultOf(self.store.open_conversations()), [])

    def test_the_admin_api_opens_a_conversation_once_for_concurrent_callers(self):
        self.make()
        self.connect()
        self.rest.hold = True
        first = self.connector.open_conversation(NUMBER, {"firstName": "Ann"})
        second = self.connector.open_conversation(NUMBER)
        [(d, answer)] = self.rest.held
        self.assertEqual(self.rest.bodies[0]["firstName"], "Ann")
        d.callback(answer)
        self.ack("joinConversation")
        self.assertIs(self.successResultOf(first), self.successResultOf(second))

    # -- what the connector does not expect ----------------------------------------------------

    def test_unexpected_events_are_refused_as_unexpected(self):
        self.make()
        self.connect()
        self.failureResultOf(self.link.receive("surprise", {}), UnexpectedEvent)

    def test_unusable_payloads_are_refused_with_a_negative_ack_naming_the_problem(self):
        self.make()
        self.connect()
        for event, args, problem in (
            ("messageArrived", (), "no payload"),
            ("messageArrived", ("text",), "the message is not an object"),
            ("messageArrived", ({"type": "Poll"},), "unknown message type"),
            ("conversationInfo", ({"conversation": 3},), "without a conversation object"),
        ):
            with self.subTest(problem=problem):
                [ack, said] = self.successResultOf(self.link.receive(event, *args))
                self.assertFalse(ack)
                self.assertIn(problem, said)
        self.assertEqual([(event, reason) for event, reason, _ in self.link.refused],
                         [("messageArrived", "malformed")] * 3 + [("conversationInfo", "malformed")])
        self.assertEqual(self.warnings(), [])  # logged by the connection's budget, not one line each
        self.assertTrue(self.link.connected)

    def test_status_shows_the_link_conversations_and_queues(self):
        self.make()
        self.connect()
        self.open_conversation()
        self.transport.down = True
        self.agent_says("queued")
        status = self.connector.status()
        self.assertEqual((status["connected"], status["registered"]), (True, True))
        self.assertEqual([c["conversationId"] for c in status["conversations"]], ["c1"])
        self.assertEqual(status["outbound"]["pending"], 1)
        self.assertEqual(status["transport"], {"name": "sim", "sent": 0, "down": True})

    def test_stop_cancels_an_init_under_way(self):
        self.make()
        self.connect()
        self.rest.hold = True
        self.sms("hello")
        self.successResultOf(self.connector.stop())
        self.assertEqual(self.stored()[0].status, "pending")
        self.assertEqual(self.clock.getDelayedCalls(), [])
