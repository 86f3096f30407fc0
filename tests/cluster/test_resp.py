"""The RESP client's pieces, in memory: the reply parser, one connection's command/reply matching and
timeouts on a task.Clock and a StringTransport, the URL, and the client while it is not connected."""

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster.errors import RedisProtocolError, RedisReplyError, RedisTimeout, RedisUnavailable
from gateway.cluster.redis import RedisClient, RedisProtocol, RedisURL, RESPParser, encode_command


class ParserTests(SynchronousTestCase):
    def test_every_reply_type(self):
        parser = RESPParser()
        replies = parser.feed(b"+OK\r\n-ERR boom\r\n:42\r\n:-1\r\n$3\r\nabc\r\n$-1\r\n$0\r\n\r\n*2\r\n$1\r\nx\r\n*1\r\n:1\r\n*-1\r\n*0\r\n")
        self.assertEqual(replies[0], "OK")
        self.assertIsInstance(replies[1], RedisReplyError)
        self.assertEqual(str(replies[1]), "ERR boom")
        self.assertEqual(replies[1].code, "ERR")
        self.assertEqual(replies[2:], [42, -1, b"abc", None, b"", [b"x", [1]], None, []])

    def test_byte_by_byte(self):
        parser = RESPParser()
        data = b"*3\r\n$7\r\nmessage\r\n$5\r\next:1\r\n$6\r\nhi\r\n\r\n\r\n:5\r\n"
        replies = []
        for i in range(len(data)):
            replies += parser.feed(data[i : i + 1])
        self.assertEqual(replies, [[b"message", b"ext:1", b"hi\r\n\r\n"], 5])

    def test_bad_bytes_are_a_protocol_error(self):
        for data in (b"?what\r\n", b":12a\r\n", b"$3\r\nabcXY", b"*x\r\n", b"+" + b"a" * 70000):
            with self.assertRaises(RedisProtocolError):
                RESPParser().feed(data)

    def test_size_and_depth_caps(self):
        with self.assertRaises(RedisProtocolError):
            RESPParser(max_size=100).feed(b"$1000\r\n")
        with self.assertRaises(RedisProtocolError):
            RESPParser().feed(b"*1\r\n" * 40 + b":1\r\n")

    def counted(self, parser, budget):
        """Count the reply lines ``parser`` reads (its parse steps); more than ``budget`` fails at once."""
        calls = [0]
        line = parser._line

        def counting(pos):
            calls[0] += 1
            if calls[0] > budget:
                raise AssertionError(f"more than {budget} parse steps")
            return line(pos)

        parser._line = counting
        return calls

    def test_a_large_reply_in_small_chunks_costs_linear_work(self):
        """A reply arriving in 1 KB chunks was parsed again from its start at every chunk: quadratic.
        A 3 MB bulk string and a 2 MB array of 100,000 items parse with a bounded number of steps."""
        bulk = b"x" * (3 * 1024 * 1024)
        items = [b"%06d" % i for i in range(100_000)]
        data = (b"$%d\r\n" % len(bulk) + bulk + b"\r\n"
                + b"*%d\r\n" % len(items) + b"".join(b"$6\r\n" + item + b"\r\n" for item in items) + b":7\r\n")
        parser = RESPParser()
        chunks = range(0, len(data), 1024)
        steps = self.counted(parser, budget=2 * (len(items) + 3) + 2 * len(chunks))
        replies = []
        for i in chunks:
            replies += parser.feed(data[i : i + 1024])
        self.assertEqual(replies, [bulk, items, 7])
        self.assertLessEqual(steps[0], 2 * (len(items) + 3) + 2 * len(chunks))
        self.assertEqual(parser.feed(b"+OK\r\n"), ["OK"])  # and it goes on

    def test_a_pipeline_split_at_every_byte_boundary(self):
        data = (b"+OK\r\n-ERR boom\r\n:42\r\n$3\r\nabc\r\n$-1\r\n$0\r\n\r\n"
                b"*3\r\n$1\r\nx\r\n*2\r\n:1\r\n*0\r\n$2\r\n\r\n\r\n*-1\r\n*1\r\n*1\r\n+in\r\n:5\r\n")
        expected = RESPParser().feed(data)
        self.assertEqual(len(expected), 10)
        for i in range(len(data) + 1):
            for j in range(i, len(data) + 1):
                parser = RESPParser()
                replies = parser.feed(data[:i]) + parser.feed(data[i:j]) + parser.feed(data[j:])
                self.assertEqual([str(r) if isinstance(r, RedisReplyError) else r for r in replies],
                                 [str(r) if isinstance(r, RedisReplyError) else r for r in expected], (i, j))

    def test_the_size_cap_counts_the_parsed_part_of_an_unfinished_reply(self):
        parser = RESPParser(max_size=100)
        parser.feed(b"*50\r\n" + b":1\r\n" * 20)  # 20 items parsed, their bytes dropped
        with self.assertRaises(RedisProtocolError):
            parser.feed(b":1\r\n" * 10)
        parser = RESPParser(max_size=100)
        for _ in range(10):  # complete replies do not add up
            self.assertEqual(parser.feed(b"*3\r\n" + b":1\r\n" * 3), [[1, 1, 1]])

    def test_commands_are_arrays_of_bulk_strings(self):
        self.assertEqual(encode_command("SET", "k\u00e9", 5, b"\x00"), b"*4\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$1\r\n5\r\n$1\r\n\x00\r\n")
        with self.assertRaises(TypeError):
            encode_command("SET", None)


class ConnectionTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.messages = []
        self.proto = RedisProtocol(self.clock, 2.0, lambda channel, data: self.messages.append((channel, data)))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_replies_are_matched_in_order(self):
        first, second = self.proto.execute("GET", "a"), self.proto.execute("BAD")
        self.assertEqual(self.transport.value(), encode_command("GET", "a") + encode_command("BAD"))
        self.proto.dataReceived(b"$1\r\n1\r\n-ERR unknown command\r\n")
        self.assertEqual(self.successResultOf(first), b"1")
        self.failureResultOf(second, RedisReplyError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_message_push_is_not_a_reply(self):
        d = self.proto.execute("SUBSCRIBE", "c")
        self.proto.dataReceived(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n")
        self.assertEqual(self.messages, [(b"c", b"m")])
        self.assertEqual(self.successResultOf(d), [b"subscribe", b"c", 1])

    def test_a_timeout_fails_everything_pending_and_drops_the_link(self):
        lost = []
        self.proto.when_lost(lambda: lost.append(True))
        first, second = self.proto.execute("GET", "a"), self.proto.execute("GET", "b")
        self.clock.advance(1.9)
        self.assertNoResult(first)
        self.clock.advance(0.1)
        self.failureResultOf(first, RedisTimeout)
        self.failureResultOf(second, RedisTimeout)
        self.assertEqual(lost, [True])
        self.assertTrue(self.transport.disconnecting)
        self.failureResultOf(self.proto.execute("PING"), RedisUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_lost_connection_fails_what_waits(self):
        d = self.proto.execute("GET", "a")
        self.proto.connectionLost(Failure(ConnectionError("gone")))
        self.failureResultOf(d, RedisUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_garbage_from_the_server_drops_the_link(self):
        d = self.proto.execute("GET", "a")
        self.proto.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
        self.failureResultOf(d, RedisProtocolError)
        self.assertTrue(self.transport.disconnecting)

    def test_an_unasked_reply_drops_the_link(self):
        self.proto.dataReceived(b"+OK\r\n")
        self.assertTrue(self.transport.disconnecting)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("http://127.0.0.1:6379", "expected redis://"),
        ("redis://", "no host"),
        ("redis://h:99999", "not a redis:// URL"),
        ("redis://h:0", "port 0 is out of range"),
        ("redis://h/abc", "the database must be a number"),
        ("redis://h/1?x=1", "no query"),
    ],
)
def test_bad_urls(text, problem):
    with pytest.raises(ValueError, match=problem):
        RedisURL.parse(text)


def test_good_urls_and_the_password_is_never_shown():
    url = RedisURL.parse("redis://user:p%40ss@redis.example:6380/2")
    assert (url.host, url.port, url.db, url.username, url.password) == ("redis.example", 6380, 2, "user", "p@ss")
    assert "p@ss" not in repr(url) + str(url)
    assert str(url) == "redis://redis.example:6380/2"
    assert RedisURL.parse("redis://127.0.0.1") == RedisURL("127.0.0.1", 6379, 0)


class ClientNotConnectedTests(SynchronousTestCase):
    def test_commands_fail_at_once_before_the_link_is_up(self):
        reactor = MemoryReactorClock()
        client = RedisClient(reactor, "redis://127.0.0.1:6379/0")
        client.startService()
        self.assertEqual(len(reactor.tcpClients), 2)  # commands, subscriptions
        self.assertFalse(client.connected)
        self.failureResultOf(client.get("k"), RedisUnavailable)
        self.failureResultOf(client.subscribe("c", print), RedisUnavailable)
        self.successResultOf(client.stopService())


class MetricsTests(SynchronousTestCase):
    def test_the_link_state_and_failures_are_counted(self):
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        reactor = MemoryReactorClock()
        client = RedisClient(reactor, "redis://127.0.0.1:6379/0", registry=registry)
        client.startService()
        self.assertEqual(registry.get_sample_value("gateway_redis_up"), 0)
        self.failureResultOf(client.get("k"), RedisUnavailable)
        self.failureResultOf(client.publish("c", "m"), RedisUnavailable)
        self.assertEqual(registry.get_sample_value("gateway_redis_errors_total", {"reason": "unavailable"}), 2)
        client._notify(True)
        self.assertEqual(registry.get_sample_value("gateway_redis_up"), 1)
        self.successResultOf(client.stopService())
