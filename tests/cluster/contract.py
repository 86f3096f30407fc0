"""The IRedis contract: one set of checks run against the shipped fake (on a ``task.Clock``) and a
real ``redis-server``, so the fake cannot drift from Redis unnoticed.

Each check is ``async def check(env)``; ``env`` gives ``env.a`` and ``env.b`` (two clients of one
Redis, as two nodes), ``await env.wait(seconds)`` (the clock advanced, or real time passed) and
``await env.until(predicate)`` (delivery of what is in flight, e.g. a published message).
"""

from gateway.cluster.errors import RedisReplyError
from gateway.cluster.redis import Script

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


async def _fails(d, error_type):
    try:
        await d
    except error_type as e:
        return e
    raise AssertionError(f"expected {error_type.__name__}")


@check
async def mget(env):
    a, b = env.a, env.b
    assert await a.mget() == []
    await a.set("m1", "one")
    await a.set("m3", "thr\u00e9e")
    await a.sadd("mset", "x")
    assert await b.mget("m1", "m2", "m3", "mset") == ["one", None, "thr\u00e9e", None]


@check
async def get_set_delete(env):
    a, b = env.a, env.b
    assert await a.get("k") is None
    assert await a.set("k", "v1") is True
    assert await b.get("k") == "v1"
    assert await a.set("k", "v2") is True
    assert await a.get("k") == "v2"
    assert await a.delete("k", "absent") == 1
    assert await a.delete("k") == 0
    assert await a.get("k") is None


@check
async def text_is_utf8_both_ways(env):
    value = "caf\u00e9 \u20ac \U0001f600 \"quoted\"\r\n"
    await env.a.set("t\u00e9", value)
    assert await env.b.get("t\u00e9") == value
    assert await env.a.scan("t*") == ["t\u00e9"]


@check
async def set_nx(env):
    assert await env.a.set("lock", "a", nx=True) is True
    assert await env.b.set("lock", "b", nx=True) is False
    assert await env.a.get("lock") == "a"


@check
async def set_px_expires(env):
    await env.a.set("short", "x", px=300)
    ttl = await env.a.pttl("short")
    assert 0 < ttl <= 300
    assert await env.a.pttl("absent") == -2
    await env.a.set("forever", "x")
    assert await env.a.pttl("forever") == -1
    await env.wait(0.5)
    assert await env.a.get("short") is None
    assert await env.a.pttl("short") == -2
    assert await env.a.get("forever") == "x"


@check
async def set_overwrites_a_ttl(env):
    await env.a.set("k", "x", px=300)
    await env.a.set("k", "y")
    await env.wait(0.5)
    assert await env.a.get("k") == "y"


@check
async def expire(env):
    assert await env.a.expire("absent", 1) is False
    await env.a.set("k", "x")
    assert await env.a.expire("k", 0.3) is True
    assert 0 < await env.a.pttl("k") <= 300
    await env.wait(0.5)
    assert await env.a.get("k") is None


@check
async def incr(env):
    assert await env.a.incr("n") == 1
    assert await env.b.incr("n") == 2
    assert await env.a.get("n") == "2"
    await env.a.set("word", "abc")
    await _fails(env.a.incr("word"), RedisReplyError)


@check
async def hashes(env):
    assert await env.a.hgetall("h") == {}
    assert await env.a.hset("h", {"f1": "1", "f2": "two"}) == 2
    assert await env.a.hset("h", {"f2": "2", "f3": "3"}) == 1
    assert await env.b.hgetall("h") == {"f1": "1", "f2": "2", "f3": "3"}
    error = await _fails(env.a.get("h"), RedisReplyError)
    assert error.code == "WRONGTYPE"


@check
async def sets(env):
    assert await env.a.smembers("s") == set()
    assert await env.a.sadd("s", "x", "y") == 2
    assert await env.a.sadd("s", "y", "z") == 1
    assert await env.b.smembers("s") == {"x", "y", "z"}
    assert await env.a.srem("s", "x", "absent") == 1
    assert await env.a.srem("s", "y", "z") == 2
    assert await env.a.scan("s") == []  # an emptied set is gone, as in Redis


@check
async def scan_goes_to_the_end(env):
    for i in range(250):
        await env.a.set(f"call:{i:03d}", "x")
    await env.a.set("other", "x")
    keys = await env.b.scan("call:*", count=10)
    assert keys == [f"call:{i:03d}" for i in range(250)]
    assert await env.b.scan("nothing:*") == []


def _cas(store, keys, args):
    current = store.get(keys[0])
    if current != args[0]:
        return [0, current]
    store.set(keys[0], args[1])
    return [1, args[1], store.incr(keys[1])]


CAS = Script(
    "test-cas",
    """
    local current = redis.call('get', KEYS[1])
    if current ~= ARGV[1] then
      return {0, current}
    end
    redis.call('set', KEYS[1], ARGV[2])
    return {1, ARGV[2], redis.call('incr', KEYS[2])}
    """,
    _cas,
)


@check
async def eval_runs_a_script(env):
    await env.a.set("k", "old")
    assert await env.a.eval(CAS, ["k", "n"], ["old", "new"]) == [1, "new", 1]
    assert await env.b.eval(CAS, ["k", "n"], ["old", "newer"]) == [0, "new"]
    assert await env.b.eval(CAS, ["k", "n"], ["new", 7]) == [1, "7", 2]
    assert await env.a.get("k") == "7"
    # a nil in a Lua table ends it: {0, nil} is {0}
    assert await env.a.eval(CAS, ["absent", "n"], ["x", "y"]) in ([0], [0, None])


@check
async def publish_subscribe(env):
    got_b, got_b2 = [], []
    assert await env.a.publish("ext:1", "nobody") == 0
    sub = await env.b.subscribe("ext:1", lambda channel, message: got_b.append((channel, message)))
    sub2 = await env.b.subscribe("ext:1", lambda channel, message: got_b2.append(message))
    assert sub.channel == "ext:1"
    assert await env.a.publish("ext:1", "hello \u20ac") == 1  # one client, two callbacks
    assert await env.a.publish("ext:2", "not for b") == 0
    await env.until(lambda: len(got_b) == 1 and len(got_b2) == 1)
    assert got_b == [("ext:1", "hello \u20ac")] and got_b2 == ["hello \u20ac"]
    await sub.cancel()
    assert await env.a.publish("ext:1", "second") == 1
    await env.until(lambda: len(got_b2) == 2)
    assert got_b == [("ext:1", "hello \u20ac")]
    await sub2.cancel()
    assert await env.a.publish("ext:1", "third") == 0


@check
async def a_client_hears_its_own_publish(env):
    got = []
    await env.a.subscribe("self", lambda channel, message: got.append(message))
    assert await env.a.publish("self", "echo") == 1
    await env.until(lambda: got == ["echo"])
