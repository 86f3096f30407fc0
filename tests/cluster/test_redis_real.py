"""The real RedisClient against a real redis-server (the ``redis_server`` fixture): the same IRedis
contract as the fake, then the Redis outage behaviour (item 4 of the cluster's Redis part)."""

import pytest
import pytest_twisted

from tests.cluster.contract import CHECKS
from tests.cluster.support import RealEnv, connected, start_client

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
@pytest_twisted.ensureDeferred
async def test_contract_on_real_redis(check, redis_server, cleanup):
    a = await connected(start_client(redis_server.url, cleanup))
    b = await connected(start_client(redis_server.url, cleanup))
    await check(RealEnv(a, b))


@pytest_twisted.ensureDeferred
async def test_redis_stopped_then_restarted(redis_server, cleanup):
    """While Redis is down every command fails at once with RedisUnavailable; when it is back the
    client reconnects by itself (backoff) and its subscriptions work again."""
    import time

    from gateway.cluster.errors import RedisUnavailable
    from tests.cluster.support import until

    a = await connected(start_client(redis_server.url, cleanup))
    b = await connected(start_client(redis_server.url, cleanup))
    states = []
    a.on_connection(states.append)
    got = []
    await b.subscribe("ext:7", lambda channel, message: got.append(message))

    redis_server.stop()
    await until(lambda: not a.connected, 5, "the client seeing redis go")
    assert states == [False]
    for command in (lambda: a.get("k"), lambda: a.publish("ext:7", "x"), lambda: a.subscribe("c", print)):
        started = time.monotonic()
        with pytest.raises(RedisUnavailable):
            await command()
        assert time.monotonic() - started < 0.1

    redis_server.start()
    await until(lambda: a.connected and b.connected and b._subscriber is not None, 10, "the reconnection")
    assert states == [False, True]
    assert await a.set("k", "v") is True
    assert await a.publish("ext:7", "after the restart") == 1
    await until(lambda: got == ["after the restart"], 5, "the message on the restored subscription")


@pytest_twisted.ensureDeferred
async def test_a_hung_redis_times_out_and_the_link_is_made_again(redis_server, cleanup):
    """A Redis that stops answering (SIGSTOP) fails the command with RedisTimeout after the command
    timeout; the dropped link is made again once it answers."""
    import signal
    import time

    from gateway.cluster.errors import RedisTimeout
    from tests.cluster.support import until

    a = await connected(start_client(redis_server.url, cleanup, command_timeout=0.3))
    redis_server.proc.send_signal(signal.SIGSTOP)
    cleanup(lambda: redis_server.proc and redis_server.proc.send_signal(signal.SIGCONT))
    started = time.monotonic()
    with pytest.raises(RedisTimeout):
        await a.get("k")
    assert 0.25 < time.monotonic() - started < 2.0
    redis_server.proc.send_signal(signal.SIGCONT)
    await until(lambda: a.connected, 10, "the reconnection")
    assert await a.ping() == "PONG"


@pytest_twisted.ensureDeferred
async def test_auth_and_database_from_the_url(redis_server, cleanup):
    """The URL's password is sent with AUTH and its database chosen with SELECT."""
    redis_server.command("CONFIG", "SET", "requirepass", "s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{redis_server.port}/3"
        a = await connected(start_client(url, cleanup))
        await a.set("in-db-3", "yes")
        assert await a.get("in-db-3") == "yes"
        assert await a.execute("CLIENT", "INFO") is not None
    finally:
        import socket

        with socket.create_connection(("127.0.0.1", redis_server.port)) as sock:
            sock.sendall(b"AUTH s3cret\r\nSELECT 3\r\nGET in-db-3\r\nCONFIG SET requirepass \"\"\r\n")
            data = b""
            while data.count(b"\r\n") < 5:
                data += sock.recv(4096)
    assert b"yes" in data
