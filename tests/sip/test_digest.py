"""Digest authentication, client side: the RFCs' test vectors, challenge parsing, nonce counts."""

import hashlib
import re

from twisted.trial.unittest import SynchronousTestCase

from gateway.sip.digest import (
    Challenge,
    DigestClient,
    DigestError,
    best_challenge,
    compute_response,
    parse_challenge,
)

# RFC 7616 section 3.9.1 (the example RFC 8760 points SIP to)
RFC7616 = dict(username="Mufasa", realm="http-auth@example.org", password="Circle of Life",
               nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", method="GET", uri="/dir/index.html",
               qop="auth", nc="00000001", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")


def fields(header):
    return dict((m.group(1), m.group(2) or m.group(3))
                for m in re.finditer(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))', header))


class VectorTests(SynchronousTestCase):
    def test_rfc_2617_section_3_5(self):
        self.assertEqual(compute_response(
            algorithm="MD5", username="Mufasa", realm="testrealm@host.com", password="Circle Of Life",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", method="GET", uri="/dir/index.html", qop="auth",
            nc="00000001", cnonce="0a4f113b"), "6629fae49393a05397450978507c4ef1")

    def test_rfc_7616_md5(self):
        self.assertEqual(compute_response(algorithm="MD5", **RFC7616), "8ca523f5e9506fed4657c9700eebdbec")

    def test_rfc_7616_sha_256(self):
        self.assertEqual(compute_response(algorithm="SHA-256", **RFC7616),
                         "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")

    def test_without_qop_it_is_rfc_2069(self):
        ha1 = hashlib.md5(b"bob:sip.example.com:zanzibar").hexdigest()
        ha2 = hashlib.md5(b"REGISTER:sip:sip.example.com").hexdigest()
        self.assertEqual(compute_response(algorithm="MD5", username="bob", realm="sip.example.com",
                                          password="zanzibar", nonce="n1", method="REGISTER",
                                          uri="sip:sip.example.com"),
                         hashlib.md5(f"{ha1}:n1:{ha2}".encode()).hexdigest())

    def test_sess_and_auth_int(self):
        ha1 = hashlib.sha256(hashlib.sha256(b"u:r:p").hexdigest().encode() + b":n:c").hexdigest()
        ha2 = hashlib.sha256(b"INVITE:sip:x@y:" + hashlib.sha256(b"v=0\r\n").hexdigest().encode()).hexdigest()
        expected = hashlib.sha256(f"{ha1}:n:00000001:c:auth-int:{ha2}".encode()).hexdigest()
        self.assertEqual(compute_response(algorithm="SHA-256-sess", username="u", realm="r", password="p",
                                          nonce="n", method="INVITE", uri="sip:x@y", qop="auth-int",
                                          nc="00000001", cnonce="c", body=b"v=0\r\n"), expected)


class ChallengeTests(SynchronousTestCase):
    def test_parse_a_challenge_with_quoted_and_token_values(self):
        challenge = parse_challenge('Digest realm="atlanta.com", domain="sip:boxesbybob.com", qop="auth,auth-int",'
                                    ' nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="", stale=TRUE,'
                                    ' algorithm=SHA-256', proxy=True)
        self.assertEqual(challenge, Challenge(realm="atlanta.com", nonce="f84f1cec41e6cbe5aea9c8e88d359",
                                              algorithm="SHA-256", qop=("auth", "auth-int"), opaque="",
                                              stale=True, proxy=True))
        self.assertEqual(challenge.header, "Proxy-Authorization")

    def test_refused_challenges(self):
        for bad in ('Basic realm="x"', 'Digest nonce="n"', 'Digest realm="r"', 'Digest realm="r", nonce="n", '
                    'algorithm=MD4', 'Digest realm="r", nonce="n", qop="auth-conf"', 'Digest realm="r" nonce="n"',
                    'Digest realm="r", realm="s", nonce="n"', 'Digest realm="unterminated, nonce="n"'):
            with self.assertRaises(DigestError, msg=bad):
                parse_challenge(bad)

    def test_the_strongest_algorithm_wins(self):
        md5 = parse_challenge('Digest realm="r", nonce="a", algorithm=MD5, qop="auth"')
        sha = parse_challenge('Digest realm="r", nonce="b", algorithm=SHA-256, qop="auth"')
        self.assertIs(best_challenge([md5, sha]), sha)
        self.assertIs(best_challenge([sha, md5]), sha)
        self.assertIsNone(best_challenge([]))


class ClientTests(SynchronousTestCase):
    def test_the_authorization_header_reproduces_the_rfc_7616_example(self):
        client = DigestClient("Mufasa", "Circle of Life", cnonce=lambda: RFC7616["cnonce"])
        challenge = parse_challenge('Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256,'
                                    ' nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",'
                                    ' opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
        header = client.authorization(challenge, "GET", "/dir/index.html")
        got = fields(header)
        self.assertTrue(header.startswith("Digest "))
        self.assertEqual(got["response"], "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")
        self.assertEqual((got["qop"], got["nc"], got["algorithm"]), ("auth", "00000001", "SHA-256"))
        self.assertEqual(got["opaque"], "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
        self.assertNotIn("Circle", header)

    def test_the_nonce_count_grows_per_nonce_and_the_cnonce_is_fresh(self):
        client = DigestClient("bob", "zanzibar")
        challenge = parse_challenge('Digest realm="r", nonce="n1", qop="auth"')
        first, second = (fields(client.authorization(challenge, "REGISTER", "sip:r")) for _ in range(2))
        self.assertEqual((first["nc"], second["nc"]), ("00000001", "00000002"))
        self.assertNotEqual(first["cnonce"], second["cnonce"])
        other = fields(client.authorization(parse_challenge('Digest realm="r", nonce="n2", qop="auth"'), "REGISTER",
                                            "sip:r"))
        self.assertEqual(other["nc"], "00000001")

    def test_no_qop_means_no_nc_or_cnonce(self):
        header = DigestClient("bob", "pw").authorization(parse_challenge('Digest realm="r", nonce="n"'), "INVITE",
                                                         "sip:x@y")
        self.assertNotIn("nc=", header)
        self.assertNotIn("cnonce", header)
        self.assertNotIn("pw", repr(DigestClient("bob", "pw")))
