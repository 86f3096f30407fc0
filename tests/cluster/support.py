"""Helpers for the cluster tests on a real Redis: started clients, and waits bounded in time."""

import time

import pytest_twisted
from twisted.internet import defer, task

from gateway.cluster.redis import RedisClient


def reactor():
    from twisted.internet import reactor

    return reactor


def sleep(seconds):
    return task.deferLater(reactor(), seconds, lambda: None)


async def until(predicate, timeout=5.0, what="the condition"):
    """Poll ``predicate`` every 10 ms until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await sleep(0.01)


def start_client(url, cleanup, **options):
    """A started RedisClient on ``url``, connected (both links), stopped at teardown."""
    options.setdefault("command_timeout", 2.0)
    options.setdefault("retry_max", 0.5)
    client = RedisClient(reactor(), url, **options)
    client.startService()
    cleanup(lambda: pytest_twisted.blockon(client.stopService()))
    return client


async def connected(client, timeout=10.0):
    await until(lambda: client.connected and client._subscriber is not None, timeout, "the redis connection")
    return client


class RealEnv:
    def __init__(self, a, b):
        self.a, self.b = a, b

    def wait(self, seconds):
        return defer.ensureDeferred(_wait(seconds))

    def until(self, predicate):
        return defer.ensureDeferred(until(predicate))


async def _wait(seconds):
    await sleep(seconds)
