"""The chat server simulator counts Engine.IO connections, so a replay can tell a link refused at its open packet."""

import pytest_twisted

CONNECTOR = {"id": "sms", "name": "SMS", "channel": "sms"}


def register(client):
    return client.emit("registerConnector", CONNECTOR)


@pytest_twisted.inlineCallbacks
def test_a_connection_refused_at_a_hostile_open_packet_is_counted(chat_sim_launcher, socketio_client):
    sim = yield chat_sim_launcher()
    assert (yield sim.get("/sim/connectors"))[1]["connections"] == 0
    yield sim.post("/sim/open-frames", {"frames": ['0{"sid":"x","upgrades":[],"pingInterval":NaN,"pingTimeout":1}']})
    client, recorder = socketio_client(sim.url, on_connect=register)
    yield recorder.wait("ready")
    code, connectors = yield sim.get("/sim/connectors")
    assert code == 200
    assert (connectors["connections"], len(connectors["registrations"])) == (2, 1)  # the refused one, then the good one
