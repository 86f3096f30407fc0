"""Registration on task.Clock: digest, refresh before expiry, 423, backoff on failure, unregister."""

import itertools
import re

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.sip.digest import MAX_CHALLENGES, DigestClient, compute_response
from gateway.sip.message import parse_datagram
from gateway.sip.register import Registration
from gateway.sip.transaction import Peer, TransactionLayer

REGISTRAR = Peer("UDP", "10.0.0.5", 5060)
CONTACT = "sip:gw@192.0.2.1:5060"


class TU:
    def request_received(self, request, transaction, source):
        pass

    def stray_response(self, response, source):
        pass


class RegistrationTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.sent = []
        counter = itertools.count(1)
        rand = lambda n: (next(counter) * 7919 % 65536).to_bytes(2, "big").rjust(n, b"\0")  # noqa: E731
        self.layer = TransactionLayer(self.clock, lambda m, p: self.sent.append(parse_datagram(m.to_bytes())), TU(),
                                      lambda t: "192.0.2.1:5060", random=rand)
        self.changes = []
        self.registration = Registration(
            self.clock, self.layer, trunk="carrier", registrar=REGISTRAR, aor="sip:gw@carrier.example.net",
            contact=CONTACT, digest=DigestClient("gw", "s3cret", cnonce=lambda: "cn"), expires=600, random=rand,
            on_change=lambda r: self.changes.append((r.state, r.last_error)))

    def tearDown(self):
        self.layer.close()
        self.registration.stop()

    def last(self):
        return self.sent[-1]

    def answer(self, status, *headers, request=None):
        request = request or self.last()
        response = request.response(status, to_tag="reg")
        for name, value in headers:
            response.add(name, value)
        self.layer.receive(parse_datagram(response.to_bytes()), REGISTRAR)

    def test_register_then_refresh_margin_seconds_before_expiry_with_the_same_call_id(self):
        self.registration.start()
        first = self.last()
        self.assertEqual((first.method, first.uri, first.get("Expires")), ("REGISTER", "sip:carrier.example.net", "600"))
        self.assertEqual(str(first.contacts[0].uri), CONTACT)
        self.assertEqual(self.registration.state, "registering")
        self.answer(200, ("Contact", f"<{CONTACT}>;expires=120"), ("Expires", "600"))
        self.assertEqual((self.registration.state, self.registration.expires_at), ("registered", 120))
        self.clock.advance(89)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(1)
        refresh = self.last()
        self.assertEqual((refresh.call_id, refresh.cseq.seq, refresh.from_.tag), (first.call_id, 2, first.from_.tag))
        self.assertNotEqual(refresh.top_via.branch, first.top_via.branch)
        self.assertEqual(self.changes, [("registering", None), ("registered", None)])

    def test_a_short_grant_is_refreshed_halfway(self):
        self.registration.start()
        self.answer(200, ("Expires", "40"))
        self.clock.advance(19.9)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.sent), 2)

    def test_a_401_is_answered_with_digest(self):
        self.registration.start()
        self.answer(401, ("WWW-Authenticate", 'Digest realm="carrier", nonce="n1", qop="auth", algorithm=MD5'))
        retry = self.last()
        self.assertEqual(retry.cseq.seq, 2)
        fields = dict(re.findall(r'(\w+)="?([^",]+)"?', retry.get("Authorization")))
        self.assertEqual(fields["response"], compute_response(
            algorithm="MD5", username="gw", realm="carrier", password="s3cret", nonce="n1", method="REGISTER",
            uri="sip:carrier.example.net", qop="auth", nc="00000001", cnonce="cn"))
        self.answer(200, ("Expires", "600"))
        self.assertEqual(self.registration.state, "registered")

    def test_wrong_credentials_fail_and_back_off_doubling(self):
        self.registration.start()
        challenge = ("WWW-Authenticate", 'Digest realm="carrier", nonce="n1", qop="auth"')
        self.answer(401, challenge)
        self.answer(401, challenge)  # the same nonce again: the password is wrong
        self.assertEqual(self.registration.state, "failed")
        self.assertIn("credentials were refused", self.registration.last_error)
        [retry] = [call for call in self.clock.getDelayedCalls() if call.func == self.registration._register]
        first_delay = retry.getTime() - self.clock.seconds()
        self.assertTrue(15 <= first_delay <= 30, first_delay)
        self.clock.advance(first_delay)
        self.assertEqual(self.registration.state, "registering")
        self.answer(403)
        [retry] = [call for call in self.clock.getDelayedCalls() if call.func == self.registration._register]
        second_delay = retry.getTime() - self.clock.seconds()
        self.assertTrue(30 <= second_delay <= 60, second_delay)
        self.assertEqual((self.registration.failures, self.registration.last_error), (2, "403 Forbidden"))

    def test_a_stale_nonce_is_answered_again(self):
        self.registration.start()
        self.answer(401, ("WWW-Authenticate", 'Digest realm="carrier", nonce="n1", qop="auth"'))
        self.answer(401, ("WWW-Authenticate", 'Digest realm="carrier", nonce="n1", qop="auth", stale=true'))
        self.assertEqual(self.last().cseq.seq, 3)
        self.assertEqual(self.registration.state, "registering")

    def test_a_registrar_challenging_every_register_with_a_fresh_or_stale_nonce_fails_it(self):
        """A hostile or broken registrar must not have the gateway send REGISTERs for ever."""
        self.registration.start()
        sent = 1
        while self.registration.state == "registering" and sent <= 20:
            nonce, stale = (f"n{sent}", "") if sent % 2 else ("n1", ", stale=true")
            self.answer(401, ("WWW-Authenticate", f'Digest realm="carrier", nonce="{nonce}", qop="auth"{stale}'))
            sent += 1
        self.assertEqual(self.registration.state, "failed")
        self.assertLessEqual(sent, 1 + MAX_CHALLENGES + 1)

    def test_no_answer_is_a_failure_after_timer_f(self):
        self.registration.start()
        self.clock.advance(32)
        self.assertEqual(self.registration.state, "failed")
        self.assertEqual(self.registration.last_error, "no answer from 10.0.0.5:5060")

    def test_423_follows_min_expires(self):
        self.registration.start()
        self.answer(423, ("Min-Expires", "1800"))
        self.assertEqual(self.last().get("Expires"), "1800")
        self.answer(200)
        self.assertEqual(self.registration.expires_at, 1800)

    def test_a_second_423_in_one_attempt_fails_it(self):
        """A registrar raising Min-Expires at every answer must not have the gateway send REGISTERs for ever."""
        self.registration.start()
        sent = 1
        while self.registration.state == "registering" and sent <= 20:
            self.answer(423, ("Min-Expires", str(1800 + sent)))
            sent += 1
        self.assertEqual(self.registration.state, "failed")
        self.assertEqual(sent, 3)
        self.assertIn("423", self.registration.last_error)

    def test_without_credentials_a_401_fails(self):
        self.registration.digest = None
        self.registration.start()
        self.answer(401, ("WWW-Authenticate", 'Digest realm="carrier", nonce="n1"'))
        self.assertEqual(self.registration.last_error, "401 Unauthorized: no credentials configured")

    def test_stop_unregisters_with_expires_0_and_leaves_no_timer(self):
        self.registration.start()
        self.answer(200, ("Expires", "600"))
        stopped = self.registration.stop()
        self.assertEqual(self.last().get("Expires"), "0")
        self.answer(401, ("WWW-Authenticate", 'Digest realm="carrier", nonce="n9", qop="auth"'))
        self.assertEqual(self.last().get("Expires"), "0")
        self.assertIsNotNone(self.last().get("Authorization"))
        self.answer(200)
        self.successResultOf(stopped)
        self.assertEqual(self.registration.state, "unregistered")
        self.layer.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.registration.describe()["state"], "unregistered")
