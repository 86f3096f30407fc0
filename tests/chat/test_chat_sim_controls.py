"""The chat server simulator's controls for odd traffic: any event, or a raw Engine.IO message, to a connector."""

import pytest_twisted

CONNECTOR = {"id": "sms", "name": "SMS", "channel": "sms"}


def register(client):
    return client.emit("registerConnector", CONNECTOR)


@pytest_twisted.inlineCallbacks
def test_any_event_and_raw_packets_reach_the_connector(chat_sim_launcher, socketio_client):
    sim = yield chat_sim_launcher()
    client, recorder = socketio_client(sim.url, record=("surprise",), on_connect=register)
    yield recorder.wait("ready")

    code, reply = yield sim.post("/sim/connectors/sms/emit", {"event": "surprise", "args": [{"n": 1}, 2]})
    assert code == 200 and len(reply["deliveredTo"]) == 1
    assert (yield recorder.wait("surprise")) == [({"n": 1}, 2)]

    code, _ = yield sim.post("/sim/connectors/sms/raw", {"data": '2["surprise",{"raw":true}]'})
    assert code == 200
    assert (yield recorder.wait("surprise", 2))[1] == ({"raw": True},)
    assert len(recorder.seen["connected"]) == 1


@pytest_twisted.inlineCallbacks
def test_controls_need_a_registered_connector_and_a_proper_body(chat_sim_launcher):
    sim = yield chat_sim_launcher()
    code, reply = yield sim.post("/sim/connectors/sms/emit", {"event": "surprise"})
    assert code == 409 and "no connector" in reply["error"]
    code, _ = yield sim.post("/sim/connectors/sms/raw", {"data": 5})
    assert code == 409
