"""Bridge logins: password hashes and the hashpw command, the init payload check, the address guard,
and the configuration errors of both Patriot modes."""

import io
from types import SimpleNamespace

import pytest
from twisted.internet import defer, task
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.confschema import ConfigError, Secret
from gateway.patriot import hashpw
from gateway.patriot.auth import (
    BAD_CREDENTIALS,
    UNCHECKABLE,
    AddressGuard,
    AddressLockedOut,
    Authenticator,
    InitRefused,
    TableFull,
    address_key,
)
from gateway.patriot.config import BridgeUser

#: cheap scrypt parameters so the tests stay fast
FAST = {"n": 2**4, "r": 1, "p": 1}


def run_now(function, *args):
    return defer.maybeDeferred(function, *args)


class HashTests(SynchronousTestCase):
    def test_hash_verifies_its_password_only(self):
        stored = hashpw.hash_password("s3cret", **FAST)
        self.assertTrue(stored.startswith("scrypt$n=16,r=1,p=1$"))
        self.assertTrue(hashpw.verify_password("s3cret", stored))
        self.assertFalse(hashpw.verify_password("s3cret!", stored))
        self.assertFalse(hashpw.verify_password("", stored))

    def test_salt_makes_each_hash_different(self):
        self.assertNotEqual(hashpw.hash_password("pw", **FAST), hashpw.hash_password("pw", **FAST))

    def test_default_cost_round_trips(self):
        stored = hashpw.hash_password("pw")
        parsed = hashpw.parse_hash(stored)
        self.assertEqual((parsed.n, parsed.r, parsed.p), (hashpw.DEFAULT_N, hashpw.DEFAULT_R, hashpw.DEFAULT_P))
        self.assertEqual(str(parsed), stored)

    def test_plain_passwords_compare_exactly(self):
        self.assertTrue(hashpw.verify_password("pässword", "pässword"))
        self.assertFalse(hashpw.verify_password("password", "pässword"))

    def test_malformed_hashes_are_named(self):
        for bad, words in [
            ("scrypt$x", "scrypt$n=N,r=R,p=P$SALT$KEY"),
            ("scrypt$n=16,r=1$AAAAAAAAAAA=$" + "A" * 24, "cannot read"),
            ("scrypt$n=15,r=1,p=1$AAAAAAAAAAA=$" + "A" * 24, "unusable scrypt parameters"),
            ("scrypt$n=16,r=1,p=1$AAAA$" + "A" * 24, "too short"),
            ("scrypt$n=16,r=1,p=1$!!!$AAAA", "cannot read"),
            (f"scrypt$n={2**30},r=8,p=1$AAAAAAAAAAA=$" + "A" * 24, "unusable"),
        ]:
            with self.assertRaises(ValueError) as caught:
                hashpw.parse_hash(bad)
            self.assertIn(words, str(caught.exception), bad)

    def test_command_prints_a_hash_of_the_password_typed_twice(self):
        out = io.StringIO()
        answers = iter(["typed-pw", "typed-pw"])
        self.assertEqual(hashpw.main([], read_password=lambda prompt: next(answers), out=out), 0)
        stored = out.getvalue().strip()
        self.assertTrue(hashpw.verify_password("typed-pw", stored))

    def test_command_refuses_two_different_passwords_and_an_empty_one(self):
        out = io.StringIO()
        answers = iter(["a", "b"])
        self.assertEqual(hashpw.main([], read_password=lambda prompt: next(answers), out=out), 1)
        self.assertEqual(hashpw.main([], read_password=lambda prompt: "", out=out), 1)
        self.assertEqual(out.getvalue(), "")


def _users():
    return [
        BridgeUser(username="plain", password=Secret("pw-plain"), extension="1001"),
        BridgeUser(username="hashed", password=Secret(hashpw.hash_password("pw-hashed", **FAST)), extension="1002"),
    ]


class AuthenticatorTests(SynchronousTestCase):
    def setUp(self):
        self.calls = []

        def run(function, *args):
            self.calls.append(function)
            return run_now(function, *args)

        self.auth = Authenticator(_users(), username_field="userName", password_field="password", run_blocking=run)

    def check(self, payload):
        return self.successResultOf(self.auth.check(payload))

    def refused(self, payload) -> str:
        return str(self.failureResultOf(self.auth.check(payload), InitRefused).value)

    def test_plain_and_hashed_passwords_log_in(self):
        self.assertEqual(self.check({"userName": "plain", "password": "pw-plain"}).extension, "1001")
        self.assertEqual(self.check({"userName": "hashed", "password": "pw-hashed", "extra": 1}).extension, "1002")
        self.assertEqual(self.calls, [hashpw.verify_password] * 2)

    def test_wrong_password_and_unknown_user_get_the_same_answer_after_the_same_work(self):
        self.assertEqual(self.refused({"userName": "plain", "password": "nope"}), BAD_CREDENTIALS)
        self.assertEqual(self.refused({"userName": "hashed", "password": "pw-plain"}), BAD_CREDENTIALS)
        self.assertEqual(self.refused({"userName": "ghost", "password": "pw-plain"}), BAD_CREDENTIALS)
        self.assertEqual(len(self.calls), 3)  # the unknown user was checked against the decoy too

    def test_payload_without_the_fields_is_refused_naming_them(self):
        for payload in [{}, {"userName": "plain"}, {"userName": 5, "password": "pw-plain"}, {"password": "x"}]:
            reason = self.refused(payload)
            self.assertIn("'userName'", reason)
            self.assertIn("'password'", reason)
        self.assertEqual(self.calls, [])

    def test_a_password_that_is_not_valid_text_is_refused_never_raised(self):
        for payload in [{"userName": "plain", "password": "pw-\udc80"}, {"userName": "\ud800", "password": "x"}]:
            reason = self.refused(payload)
            self.assertIn("not valid Unicode text", reason)
        self.assertEqual(self.calls, [])

    def test_verify_password_takes_any_text(self):
        self.assertFalse(hashpw.verify_password("pw-\udc80", "pw-plain"))
        self.assertFalse(hashpw.verify_password("pw-\udc80", hashpw.hash_password("pw", **FAST)))
        self.assertFalse(hashpw.verify_password("\ud83d\ude00", "\U0001f600"))  # a pair of lone halves is not the emoji

    def test_a_stored_hash_that_cannot_be_checked_is_logged_and_refused(self):
        users = [BridgeUser(username="u", password=Secret(hashpw.hash_password("pw", **FAST)), extension="1")]
        auth = Authenticator(users, username_field="userName", password_field="password", run_blocking=run_now)
        auth._users["u"] = SimpleNamespace(username="u", password=Secret("scrypt$broken"), extension="1")
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        failure = self.failureResultOf(auth.check({"userName": "u", "password": "pw"}), InitRefused)
        self.assertEqual(str(failure.value), UNCHECKABLE)
        (event,) = [e for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(event["user"], "u")
        self.assertNotIn("log_failure", event)  # a line naming the problem, not a traceback

    def test_configured_field_names(self):
        auth = Authenticator(_users(), username_field="user", password_field="secret", run_blocking=run_now)
        user = self.successResultOf(auth.check({"user": "plain", "secret": "pw-plain"}))
        self.assertEqual(user.username, "plain")
        self.failureResultOf(auth.check({"userName": "plain", "password": "pw-plain"}), InitRefused)

    def test_decoy_is_a_hash_when_any_user_has_one(self):
        self.assertTrue(hashpw.is_hash(self.auth._decoy))
        plain_only = Authenticator(_users()[:1], username_field="u", password_field="p", run_blocking=run_now)
        self.assertFalse(hashpw.is_hash(plain_only._decoy))


class AddressGuardTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.lockouts = []
        self.guard = AddressGuard(self.clock, max_failures=3, block_time=60.0, max_addresses=100,
                                  on_lockout=lambda address, seconds: self.lockouts.append((address, seconds)))

    def test_blocks_after_max_failures_for_block_time(self):
        self.assertEqual([self.guard.failed("10.0.0.1") for _ in range(3)], [False, False, True])
        self.assertEqual(self.lockouts, [("10.0.0.1", 60.0)])
        self.assertTrue(self.guard.blocked("10.0.0.1"))
        self.assertFalse(self.guard.blocked("10.0.0.2"))
        self.assertEqual(self.guard.to_dict(), {"blocked": {"10.0.0.1": 60.0}, "tracked_addresses": 1})
        self.clock.advance(59.9)
        self.assertTrue(self.guard.blocked("10.0.0.1"))
        self.assertFalse(self.guard.failed("10.0.0.1"))  # refused meanwhile: the lockout is not extended
        self.clock.advance(0.1)
        self.assertFalse(self.guard.blocked("10.0.0.1"))
        self.assertFalse(self.guard.failed("10.0.0.1"))  # counting starts again
        self.assertFalse(self.guard.failed("10.0.0.1"))
        self.assertTrue(self.guard.failed("10.0.0.1"))

    def test_success_does_not_forget_failures(self):
        """One valid login must not buy more guesses at other users' passwords."""
        self.guard.failed("a")
        self.guard.failed("a")
        self.successResultOf(self.guard.turn("a"))
        self.assertFalse(self.guard.done("a", "success"))
        self.assertTrue(self.guard.failed("a"))

    def test_old_failures_are_forgotten(self):
        self.guard.failed("a")
        self.guard.failed("a")
        self.clock.advance(60.0)
        self.assertFalse(self.guard.failed("a"))
        self.assertFalse(self.guard.failed("a"))
        self.assertTrue(self.guard.failed("a"))

    def test_one_password_check_at_a_time_per_address(self):
        first = self.guard.turn("10.0.0.1")
        self.successResultOf(first)
        second, third = self.guard.turn("10.0.0.1"), self.guard.turn("10.0.0.1")
        self.successResultOf(self.guard.turn("10.0.0.2"))  # another address does not wait
        self.assertNoResult(second)
        self.guard.done("10.0.0.1", "failure")
        self.successResultOf(second)
        self.assertNoResult(third)
        self.guard.done("10.0.0.1", "failure")
        self.successResultOf(third)
        self.assertTrue(self.guard.done("10.0.0.1", "failure"))
        self.failureResultOf(self.guard.turn("10.0.0.1"), AddressLockedOut)

    def test_the_lockout_refuses_the_waiting_checks(self):
        self.successResultOf(self.guard.turn("a"))
        waiting = [self.guard.turn("a") for _ in range(5)]
        self.guard.failed("a")
        self.guard.failed("a")
        self.assertTrue(self.guard.done("a", "failure"))
        for waiter in waiting:
            error = self.failureResultOf(waiter, AddressLockedOut).value
            self.assertIn("try again in 60 s", str(error))

    def test_a_cancelled_wait_gives_up_its_place(self):
        self.successResultOf(self.guard.turn("a"))
        gone, next_ = self.guard.turn("a"), self.guard.turn("a")
        gone.cancel()
        self.failureResultOf(gone, defer.CancelledError)
        self.guard.done("a", "error")
        self.successResultOf(next_)

    def test_ipv6_counts_by_its_64_network_and_mapped_ipv4_as_ipv4(self):
        for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
            self.guard.failed(host)
        self.assertTrue(self.guard.blocked("2001:db8:1:2::99"))
        self.assertFalse(self.guard.blocked("2001:db8:1:3::1"))
        self.assertEqual(address_key("::ffff:10.0.0.1"), "10.0.0.1")
        self.assertEqual(address_key("not an address"), "not an address")

    def test_thousands_of_addresses_do_not_grow_the_table_past_its_cap(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.guard = AddressGuard(self.clock, max_failures=3, block_time=300.0, max_addresses=100)
        for i in range(5000):
            self.guard.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
            self.assertLessEqual(len(self.guard), 100)
        self.assertEqual(len(self.guard), 100)
        evictions = [e for e in events if "the oldest not locked out" in e.get("log_format", "")]
        self.assertEqual(len(evictions), 5)  # not one line per address: the rest summarised
        self.clock.advance(60)
        self.guard.failed("10.200.0.1")  # a minute later: one summary line says how many
        (summary,) = [e for e in events if "forgot the failed inits of {count} more" in e.get("log_format", "")]
        self.assertEqual(summary["count"], 4900 - 5)

    def test_expired_entries_are_dropped(self):
        for i in range(50):
            self.guard.failed(f"10.0.0.{i}")
        for i in range(3):
            self.guard.failed("10.9.9.9")
        self.assertEqual(len(self.guard), 51)
        self.clock.advance(60.0)
        self.guard.failed("10.1.1.1")  # a new entry sweeps the expired ones
        self.assertEqual(len(self.guard), 1)
        self.assertEqual(self.guard.to_dict(), {"blocked": {}, "tracked_addresses": 1})

    def test_the_full_table_evicts_the_oldest_not_a_check_in_progress(self):
        self.successResultOf(self.guard.turn("busy"))
        for i in range(150):
            self.guard.failed(f"10.0.{i // 256}.{i % 256}")
        self.assertEqual(len(self.guard), 100)
        self.assertIn("busy", self.guard._entries)

    def lock(self, host: str) -> None:
        for _ in range(3):
            self.guard.failed(host)
        self.assertTrue(self.guard.blocked(host))

    def test_spraying_failures_from_other_addresses_does_not_lift_a_lockout(self):
        """Before: the full table evicted the oldest entry, locked out or not, and the lockout was gone."""
        self.lock("10.0.0.1")
        for i in range(500):
            self.clock.advance(0.01)
            self.guard.failed(f"10.1.{i // 256}.{i % 256}")
            self.assertLessEqual(len(self.guard), 100)
        self.assertTrue(self.guard.blocked("10.0.0.1"))
        self.failureResultOf(self.guard.turn("10.0.0.1"), AddressLockedOut)
        self.assertEqual(list(self.guard.to_dict()["blocked"]), ["10.0.0.1"])

    def test_nor_does_spraying_from_other_ipv6_64_networks(self):
        self.lock("2001:db8:0:1::1")
        for i in range(500):
            self.guard.failed(f"2001:db8:1:{i:x}::1")
        self.assertTrue(self.guard.blocked("2001:db8:0:1::77"))

    def test_a_table_full_of_lockouts_refuses_new_addresses_until_the_first_ends(self):
        for i in range(100):
            self.clock.advance(0.1)
            self.lock(f"10.2.0.{i}")
        self.assertEqual(len(self.guard), 100)
        refusal = self.guard.lockout("10.3.0.1")
        self.assertIsInstance(refusal, TableFull)
        self.assertAlmostEqual(refusal.seconds, 50.1)  # the first lockout ends then
        self.assertIn("too many addresses are locked out", str(refusal))
        self.assertTrue(self.guard.blocked("10.3.0.1"))
        self.failureResultOf(self.guard.turn("10.3.0.1"), TableFull)
        self.assertFalse(self.guard.failed("10.3.0.1"))  # nothing counted, no lockout forgotten
        self.assertEqual(len(self.guard.to_dict()["blocked"]), 100)
        self.clock.advance(50.15)  # the first lockout ends: room for one
        self.assertIsNone(self.guard.lockout("10.3.0.1"))
        self.successResultOf(self.guard.turn("10.3.0.1"))
        self.assertEqual(len(self.guard.to_dict()["blocked"]), 99)
        self.assertTrue(self.guard.blocked("10.2.0.99"))

    def test_checks_in_progress_and_lockouts_are_both_kept(self):
        self.successResultOf(self.guard.turn("busy"))
        for i in range(99):
            self.lock(f"10.2.0.{i}")
        self.assertIsInstance(self.guard.lockout("10.3.0.1"), TableFull)
        self.assertFalse(self.guard.done("busy", "success"))  # the check ends: its entry may go now
        self.successResultOf(self.guard.turn("10.3.0.1"))
        self.assertNotIn("busy", self.guard._entries)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[patriot.bridge]\nusers = [{username = 'u', password = '', extension = '1'}]",
         "patriot.bridge.users[0].password: must not be empty"),
        ("[patriot.bridge]\nusers = [{username = 'u', password = 'scrypt$n=1', extension = '1'}]",
         "patriot.bridge.users[0].password: a password hash reads"),
        ("[patriot.bridge]\nusers = [{username = 'u', password = 'a', extension = '1'},"
         " {username = 'u', password = 'b', extension = '1'}]",
         "patriot.bridge.users[1].username: user 'u' is configured twice"),
        ("[patriot.bridge]\npath = 'dialler'", "patriot.bridge.path: must start with '/'"),
        ("[patriot.bridge]\nheartbeat_timeout = 0", "patriot.bridge.heartbeat_timeout: must be positive"),
        ("[patriot.bridge]\ninit_timeout = 0", "patriot.bridge.init_timeout: must be positive"),
        ("[patriot.bridge]\nmax_unauthenticated = 0", "patriot.bridge.max_unauthenticated: must be positive"),
        ("[patriot.bridge]\nmax_unauthenticated_per_address = -1",
         "patriot.bridge.max_unauthenticated_per_address: must be positive"),
        ("[patriot.bridge]\nmax_message_size = 10", "patriot.bridge.max_message_size: must be between 256"),
        ("[patriot.bridge]\nmax_message_rate = 0", "patriot.bridge.max_message_rate: must be positive"),
        ("[patriot.bridge]\nmax_message_burst = 0", "patriot.bridge.max_message_burst: must be positive"),
        ("[patriot.bridge]\nmax_output_buffer = 1000", "patriot.bridge.max_output_buffer: must be between 65536"),
        ("[[patriot.desktop]]\napi_key = 'k'\nextension = '1'\nmax_message_rate = -1",
         "patriot.desktop[0].max_message_rate: must be positive"),
        ("[patriot.bridge]\ndial_while_busy = 'queue'", "patriot.bridge.dial_while_busy: expected one of"),
        ("[[patriot.desktop]]\nextension = '1'", "patriot.desktop[0].api_key: missing required key"),
        ("[[patriot.desktop]]\napi_key = ''\nextension = '1'", "patriot.desktop[0].api_key: must not be empty"),
        ("[[patriot.desktop]]\napi_key = 'k'\nextension = '9'", "patriot.desktop[0].extension: no extension with id '9'"),
        ("[[patriot.desktop]]\napi_key = 'k'\nextension = '1'\nurl = 'https://x/'",
         "patriot.desktop[0].url: expected a ws:// or wss:// URL"),
        ("[[patriot.desktop]]\napi_key = 'k'\nextension = '1'\nfingerprint = 'AB:CD'",
         "patriot.desktop[0].fingerprint: expected a SHA-256 fingerprint"),
        ("[[patriot.desktop]]\napi_key = 'k'\nextension = '1'\nurl = 'ws://h/p'\nca = 'c.pem'",
         "patriot.desktop[0].ca: is set but url 'ws://h/p' is not a wss:// URL"),
        ("[[patriot.desktop]]\napi_key = 'k'\nextension = '1'\nconnect = 'tls:h:1'",
         "patriot.desktop[0].connect: expected a tcp: or unix: endpoint"),
    ],
)
def test_configuration_errors_name_the_key(text, message):
    with pytest.raises(ConfigError) as caught:
        config.loads("[[extensions]]\nid = '1'\n" + text, "x.toml")
    assert message in str(caught.value)


def test_a_full_desktop_entry_and_a_pinned_fingerprint_load():
    fingerprint = ":".join(["ab"] * 32)
    cfg = config.loads(
        "[[extensions]]\nid = '1'\n[[patriot.desktop]]\napi_key = 'k'\nextension = '1'\n"
        f"connect = 'tcp:host=127.0.0.1:port=9009'\nfingerprint = '{fingerprint}'\n",
        "x.toml",
    )
    (link,) = cfg.patriot.desktop
    assert link.url == "wss://desktop-client-api.patriotsystems.com:9009/ws/dialler/v1"
    assert (link.connect, link.fingerprint, link.api_key.reveal()) == ("tcp:host=127.0.0.1:port=9009", fingerprint, "k")
    assert cfg.patriot.bridge is None
