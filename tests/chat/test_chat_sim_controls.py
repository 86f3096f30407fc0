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


@pytest_twisted.inlineCallbacks
def test_raw_websocket_frames_reach_the_connector_exactly_as_given(chat_sim_launcher, socketio_client):
    sim = yield chat_sim_launcher()
    client, recorder = socketio_client(sim.url, record=("surprise",), on_connect=register)
    yield recorder.wait("ready")
    frames = [
        '42["surprise",{"frame":1}]',
        {"hex": "00 ff"},  # a binary frame nobody expected: ignored by the client
        '451-["surprise",{"_placeholder":true,"num":0}]', {"hex": "01 02 03"},
        {"text": '42["surprise","', "repeat": "ab", "times": 3, "then": '"]'},
    ]
    code, reply = yield sim.post("/sim/connectors/sms/frames", {"frames": frames})
    assert (code, reply["frames"]) == (200, 5)
    assert (yield recorder.wait("surprise", 3)) == [({"frame": 1},), (b"\x01\x02\x03",), ("ababab",)]
    assert len(recorder.seen["connected"]) == 1


@pytest_twisted.inlineCallbacks
def test_the_next_connection_can_get_any_frames_instead_of_its_open_packet(chat_sim_launcher, socketio_client):
    from twisted.logger import formatEvent, globalLogPublisher

    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        sim = yield chat_sim_launcher()
        hostile = '0{"sid":"hostile","upgrades":[],"pingInterval":NaN,"pingTimeout":20000}'
        code, reply = yield sim.post("/sim/open-frames", {"frames": [hostile]})
        assert (code, reply) == (200, {"waiting": 1})
        client, recorder = socketio_client(sim.url, on_connect=register)
        # The first connection gets the NaN open packet and is dropped; the retry gets a real one.
        yield recorder.wait("ready")
        assert (yield sim.get("/sim/open-frames")) == (200, {"waiting": 0})
        code, connectors = yield sim.get("/sim/connectors")
        assert len(connectors["registrations"]) == 1
        errors = [formatEvent(e) for e in logged if "bad handshake" in formatEvent(e)]
        assert len(errors) == 1 and "NaN is not a JSON number" in errors[0], errors
    finally:
        globalLogPublisher.removeObserver(logged.append)


@pytest_twisted.inlineCallbacks
def test_frames_need_a_proper_body(chat_sim_launcher, socketio_client):
    sim = yield chat_sim_launcher()
    client, recorder = socketio_client(sim.url, on_connect=register)
    yield recorder.wait("ready")
    for body in ({}, {"frames": []}, {"frames": [5]}, {"frames": [{"hex": "zz"}]},
                 {"frames": [{"repeat": "a", "times": -1}]}, {"frames": [{"repeat": "a", "times": 1 << 40}]}):
        code, reply = yield sim.post("/sim/connectors/sms/frames", body)
        assert code == 400, (body, reply)
        code, reply = yield sim.post("/sim/open-frames", body)
        assert code == 400, (body, reply)
    code, _ = yield sim.post("/sim/connectors/nobody/frames", {"frames": ["2"]})
    assert code == 409
