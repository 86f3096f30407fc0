"""The fake outbound provider as a hostile one: raw frames, a lost connection, any close code on a call's WebSocket."""

import pytest
import pytest_twisted

from .test_optimaccs_sim import leaves_the_reactor_clean, provider, reactor  # noqa: F401 (fixtures)


@pytest_twisted.ensureDeferred
async def test_raw_frames_then_any_close_code_reach_the_client(provider):
    p = await provider()
    session_id = (await p.dial("0811"))["sessionId"]
    session = p.api.sessions[session_id]
    with pytest.raises(RuntimeError, match="no WebSocket joined"):
        session.send_raw(b"{}")
    client = await p.join(session_id)
    await client.wait_for("dialStatus")
    session.send_raw(b'{"event":"bogus","data":1}')
    session.send_raw(b"\x00\x01", binary=True)
    assert await client.wait_for("bogus") == {"event": "bogus", "data": 1}
    assert await client.wait_for("audio") == b"\x00\x01"
    session.close(1011, "hostile")
    assert await p.clients[0].closed == (1011, "hostile")
    await session.ended  # the client's side closed: the fake ends the call as a client that left it


@pytest_twisted.ensureDeferred
async def test_drop_loses_the_connection_without_a_close_frame(provider):
    p = await provider()
    session_id = (await p.dial("0811"))["sessionId"]
    client = await p.join(session_id)
    await client.wait_for("dialStatus")
    p.api.sessions[session_id].drop()
    code, _ = await p.clients[0].closed
    assert code == 1006  # abnormal: no closing handshake
