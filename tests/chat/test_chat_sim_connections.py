"""The chat server simulator numbers Engine.IO connections and queues hostile open packets, so a replay can
tell which connection a client refused and which one it registered on."""

import pytest_twisted

CONNECTOR = {"id": "sms", "name": "SMS", "channel": "sms"}
HOSTILE = '0{"sid":"x","upgrades":[],"pingInterval":NaN,"pingTimeout":1}'


def register(client):
    return client.emit("registerConnector", CONNECTOR)


@pytest_twisted.inlineCallbacks
def test_queued_hostile_open_packets_each_cost_a_connection_before_the_registration(chat_sim_launcher,
                                                                                    socketio_client):
    sim = yield chat_sim_launcher()
    assert (yield sim.get("/sim/connectors"))[1]["connections"] == 0
    assert (yield sim.post("/sim/open-frames", {"frames": [HOSTILE]})) == (200, {"waiting": 1})
    assert (yield sim.post("/sim/open-frames", {"frames": ["0[]", "0{"]})) == (200, {"waiting": 3})
    client, recorder = socketio_client(sim.url, on_connect=register)
    yield recorder.wait("ready")
    code, connectors = yield sim.get("/sim/connectors")
    assert code == 200
    assert (connectors["connections"], connectors["open_frames_served"]) == (3, [1, 2])
    assert [r["connection"] for r in connectors["registrations"]] == [3]  # the refused two, then the good one
    assert (yield sim.get("/sim/open-frames")) == (200, {"waiting": 0})
