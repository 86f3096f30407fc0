"""The Patriot server simulator as a hostile Patriot: queued hostile answers to authentication-requests."""

import pytest_twisted

from .test_sims import WAIT, certificate, connect, next_item, port_of, reactor, server  # noqa: F401 (fixtures)

KEY = "ABC123DEF456"


def authenticate(client, request_id):
    client.send({"type": "authentication-request", "payload": {"requestId": request_id, "apiKey": KEY}})


@pytest_twisted.ensureDeferred
async def test_the_next_authentications_get_the_hostile_frames_in_order_then_the_true_answer(server, connect):
    server.answer_authentication_with(['{"type":"authentication-response","payload":{"requestId":"{requestId}",'
                                       '"success":"true"}}', b'{"binary":"{requestId}"}'])
    server.answer_authentication_with([], then_close=True)
    first = await connect(port_of(server))
    authenticate(first, "r-1")
    assert await next_item(first.inbox) == {"type": "authentication-response",
                                            "payload": {"requestId": "r-1", "success": "true"}}
    assert await next_item(first.inbox) == {"binary": "r-1"}
    second = await connect(port_of(server))
    authenticate(second, "r-2")
    await second.closed.addTimeout(WAIT, reactor())  # the server closed it, unanswered
    assert first.inbox.pending == [] and not first.closed.called
    third = await connect(port_of(server))
    authenticate(third, "r-3")
    assert (await next_item(third.inbox))["payload"] == {"requestId": "r-3", "success": True}
    assert len(server.hostile_connections) == 2 and server.hostile_connections[0] in server.clients
    assert server.authenticated_clients == [server.clients[-1]]
    assert (server.auth_attempts, server.auth_successes, server.auth_failures) == (3, 1, 0)
