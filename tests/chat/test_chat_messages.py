"""Expertflow payloads (spec 003): built from the field tables, parsed tolerantly, refused when unusable."""

import pytest

from gateway.chat.messages import (
    BadPayload,
    Participant,
    customer_message,
    init_body,
    parse_init_response,
    parse_message,
)

AGENT = {"id": "agent-1", "name": "Agent"}


def test_a_chat_message_is_parsed_and_extra_fields_are_ignored():
    message = parse_message({
        "id": "m1", "type": "ChatMessage", "conversationId": "c1", "from": AGENT, "to": [{"id": "cust"}],
        "text": "Hello", "refId": "4915100", "tag": "", "attachments": [
            {"type": "image/png", "contentUrl": "https://files.example/a.png"},
            {"type": "image/png", "contentUrl": "data:image/png;base64,AAAA"},
        ], "timestamp": "2024-01-31T12:00:00.000Z", "somethingNew": {"x": 1},
    })
    assert message.is_chat and not message.is_whisper
    assert (message.id, message.conversation_id, message.sender, message.ref_id) == ("m1", "c1", Participant("agent-1", "Agent"), "4915100")
    assert message.for_participant("cust") and not message.for_participant("other")
    assert message.sms_text() == "Hello\nhttps://files.example/a.png"


def test_a_whisper_a_broadcast_and_a_campaign_message():
    whisper = parse_message({"type": "ChatMessage", "conversationId": "c1", "from": AGENT, "text": "psst", "tag": "whisper"})
    assert whisper.is_whisper and whisper.for_participant("anyone")
    campaign = parse_message({"type": "ChatMessage", "from": {"id": "system"}, "text": "Sale!", "refId": "+491"})
    assert campaign.conversation_id is None and campaign.sender.name == "system" and campaign.ref_id == "+491"


def test_an_activity_message_is_parsed():
    message = parse_message({"type": "ActivityMessage", "conversationId": "c1", "from": AGENT,
                             "activityType": "participantJoined", "info": {"participant": AGENT}})
    assert not message.is_chat
    assert (message.activity_type, message.info) == ("participantJoined", {"participant": AGENT})


@pytest.mark.parametrize(
    "payload, problem",
    [
        ("text", "not an object"),
        ({"type": "Poll"}, "unknown message type"),
        ({"type": "ChatMessage", "from": "agent"}, "from is not a participant"),
        ({"type": "ChatMessage", "to": "all"}, "to is not a list"),
        ({"type": "ChatMessage", "to": [{"name": "x"}]}, "a recipient is not a participant"),
        ({"type": "ChatMessage", "text": 5}, "text is not a string"),
        ({"type": "ChatMessage", "conversationId": ["c"]}, "conversationId is not a string"),
        ({"type": "ActivityMessage", "conversationId": "c1"}, "without an activityType"),
        # 003 types these String: a number is refused, never converted
        ({"type": "ChatMessage", "refId": 5}, "refId is not a string: 5"),
        ({"type": "ChatMessage", "refId": 4915100.0}, "refId is not a string: 4915100.0"),
        ({"type": "ChatMessage", "id": 5}, "id is not a string: 5"),
        ({"type": "ChatMessage", "id": True}, "id is not a string: True"),
        ({"type": "ChatMessage", "conversationId": 5}, "conversationId is not a string: 5"),
        ({"type": "ChatMessage", "tag": 0}, "tag is not a string"),
        ({"type": "ActivityMessage", "activityType": 7}, "activityType is not a string"),
        ({"type": "ChatMessage", "from": {"id": "a", "name": 3}}, "from's name is not a string: 3"),
        ({"type": "ChatMessage", "id": "m" * 257}, "id is longer than 256 characters"),
        ({"type": "ChatMessage", "conversationId": "c" * 257}, "conversationId is longer than 256 characters"),
        ({"type": "ChatMessage", "from": {"id": "a" * 257}}, "from's id is longer than 256 characters"),
    ],
)
def test_unusable_messages_are_refused_saying_why(payload, problem):
    with pytest.raises(BadPayload, match=problem):
        parse_message(payload)


def test_the_init_body_has_the_fields_of_003():
    body = init_body(number="+4915100", channel="sms", request_id="r-1", timestamp="2024-01-31T12:00:00Z",
                     customer={"language": "de", "subject": "", "lastName": "Lee", "unknown": "x"})
    assert body == {"firstName": "+4915100", "lastName": "Lee", "language": "de", "phone": "+4915100", "refId": "+4915100",
                    "channel": "sms", "requestId": "r-1", "timestamp": "2024-01-31T12:00:00Z"}
    assert init_body(number="1", channel="sms", request_id="r", timestamp="t", customer={"firstName": "Ann"})["firstName"] == "Ann"


def test_the_init_response_gives_the_conversation_and_the_participant():
    assert parse_init_response({"conversationId": "c1", "participant": {"id": "p1", "name": "Ann"}, "requestId": "r"}) == (
        "c1", Participant("p1", "Ann"))
    for body in ([], {"participant": {"id": "p"}}, {"conversationId": "c1"}, {"conversationId": "c1", "participant": {}}):
        with pytest.raises(BadPayload):
            parse_init_response(body)


@pytest.mark.parametrize(
    "body, problem",
    [
        ({"conversationId": 5, "participant": {"id": "p"}}, "conversationId is not a string: 5"),
        ({"conversationId": "c" * 100000, "participant": {"id": "p"}}, "conversationId is longer than 256"),
        ({"conversationId": "c1", "participant": {"id": 7}}, "participant is not a participant object"),
        ({"conversationId": "c1", "participant": {"id": "p", "name": ["Ann"]}}, "participant's name is not a string"),
    ],
)
def test_an_init_response_with_a_wrong_type_or_an_oversized_id_is_refused_not_converted(body, problem):
    with pytest.raises(BadPayload, match=problem):
        parse_init_response(body)


def test_the_customer_message_carries_the_sms():
    message = customer_message(uid="u1", conversation_id="c1", participant={"id": "p1", "name": "+491"}, text="hi",
                               number="+491", timestamp="2024-01-31T12:00:00Z")
    assert message == {"id": "u1", "type": "ChatMessage", "conversationId": "c1", "from": {"id": "p1", "name": "+491"},
                       "to": [], "text": "hi", "refId": "+491", "tag": "", "attachments": [], "timestamp": "2024-01-31T12:00:00Z"}
