"""Digest authentication, client side (RFC 2617, RFC 7616's algorithms as RFC 8760 brings them to SIP).

A trunk answers a REGISTER or an INVITE with 401 (``WWW-Authenticate``) or 407
(``Proxy-Authenticate``); the UAC retries with an ``Authorization`` or
``Proxy-Authorization`` header computed here. Supported: MD5, SHA-256 and
SHA-512-256 with their ``-sess`` variants, ``qop=auth`` (and ``auth-int``),
the ``nc`` count kept per nonce, a fresh ``cnonce`` each time, and the RFC 2069
form without qop for old servers. When a response carries several challenges,
:func:`best_challenge` takes the strongest algorithm offered (RFC 8760 section 2.4).

What a peer sends is parsed strictly (:class:`DigestError`): a challenge without
realm or nonce, an unknown algorithm only, or a header that is not
``auth-param`` syntax is refused, and the caller answers the call or the
registration as failed. The password never appears in a repr or an error.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from typing import Protocol

import attrs

__all__ = [
    "ALGORITHMS",
    "Challenge",
    "ChallengeAnswers",
    "DigestClient",
    "DigestError",
    "MAX_CHALLENGES",
    "best_challenge",
    "compute_response",
    "parse_challenge",
]


def _sha512_256(data: bytes) -> str:
    return hashlib.new("sha512_256", data).hexdigest()


#: 401/407 challenges one request (an INVITE, a registration) answers at most: a peer sending a fresh or a
#: stale nonce every time would otherwise have the gateway send requests for ever; the next one fails it
MAX_CHALLENGES = 3

#: algorithm name (upper case, without ``-sess``) -> hex digest function; strongest last
ALGORITHMS: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data).hexdigest(),  # noqa: S324 - the protocol's algorithm, not ours
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}
try:
    _sha512_256(b"")
    ALGORITHMS["SHA-512-256"] = _sha512_256
except ValueError:  # an OpenSSL without it
    pass
_STRENGTH = {name: rank for rank, name in enumerate(ALGORITHMS)}

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_AUTH_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|{_TOKEN}|[^,\s"]+)\s*(,|\Z)', re.S)


class DigestError(ValueError):
    """A challenge that cannot be answered (``str()`` says why, never with the password)."""


@attrs.frozen
class Challenge:
    """One Digest challenge (a ``WWW-Authenticate`` or ``Proxy-Authenticate`` value)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    #: from Proxy-Authenticate (answered with Proxy-Authorization)
    proxy: bool = False

    @property
    def base_algorithm(self) -> str:
        return self.algorithm.upper().removesuffix("-SESS")

    @property
    def session(self) -> bool:
        return self.algorithm.upper().endswith("-SESS")

    @property
    def header(self) -> str:
        """The request header that answers it."""
        return "Proxy-Authorization" if self.proxy else "Authorization"


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_challenge(value: str, *, proxy: bool = False) -> Challenge:
    """The Digest challenge in a ``WWW-Authenticate``/``Proxy-Authenticate`` value.

    :raises DigestError: not Digest, not ``auth-param`` syntax, no realm or nonce, an algorithm not in
        :data:`ALGORITHMS`, or a qop list without ``auth``/``auth-int``.
    """
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError(f"the challenge scheme is {scheme[:20]!r}, not Digest")
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _AUTH_PARAM.match(rest, position)
        if match is None:
            raise DigestError(f"not auth-param syntax at {rest[position:position + 30]!r}")
        name = match.group(1).lower()
        if name in params:
            raise DigestError(f"{name} appears twice")
        params[name] = _unquote(match.group(2))
        position = match.end()
    if not params.get("realm") and "realm" not in params:
        raise DigestError("no realm")
    if not params.get("nonce"):
        raise DigestError("no nonce")
    algorithm = params.get("algorithm", "MD5")
    if algorithm.upper().removesuffix("-SESS") not in ALGORITHMS:
        raise DigestError(f"algorithm {algorithm[:20]!r} is not supported")
    qop: tuple[str, ...] = ()
    if "qop" in params:
        qop = tuple(q.strip().lower() for q in params["qop"].split(",") if q.strip())
        if not {"auth", "auth-int"} & set(qop):
            raise DigestError(f"qop {params['qop'][:30]!r} offers neither auth nor auth-int")
    return Challenge(realm=params["realm"], nonce=params["nonce"], algorithm=algorithm, qop=qop,
                     opaque=params.get("opaque"), stale=params.get("stale", "").lower() == "true", proxy=proxy)


def best_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """The challenge with the strongest supported algorithm (RFC 8760 2.4), or None."""
    ranked = sorted(challenges, key=lambda c: _STRENGTH.get(c.base_algorithm, -1), reverse=True)
    return ranked[0] if ranked else None


class _Challenged(Protocol):
    """A 401/407 response (:class:`gateway.sip.message.Response`)."""

    status: int

    def get_all(self, name: str) -> list[str]: ...


class ChallengeAnswers:
    """The 401/407 challenges one request (an INVITE, a registration attempt) has answered.

    :meth:`next` picks the challenge to answer from a response, or None when it must not be answered: no
    parsable challenge, a nonce answered already and not marked stale, or :data:`MAX_CHALLENGES` answered.
    """

    def __init__(self) -> None:
        self.nonces: set[str] = set()
        self.count = 0

    def restart(self, *, keep_nonces: bool = False) -> None:
        """A new attempt: the count starts again (and the nonces answered are forgotten unless kept)."""
        self.count = 0
        if not keep_nonces:
            self.nonces.clear()

    def next(self, response: _Challenged) -> Challenge | None:
        """The challenge of ``response`` to answer now (counted), or None."""
        name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenges = []
        for value in response.get_all(name):
            try:
                challenges.append(parse_challenge(value, proxy=response.status == 407))
            except DigestError:
                continue
        challenge = best_challenge(challenges)
        if challenge is None or (challenge.nonce in self.nonces and not challenge.stale):
            return None
        self.count += 1
        if self.count > MAX_CHALLENGES:
            return None
        self.nonces.add(challenge.nonce)
        return challenge


def compute_response(*, algorithm: str, username: str, realm: str, password: str, nonce: str, method: str,
                     uri: str, qop: str | None = None, nc: str | None = None, cnonce: str | None = None,
                     body: bytes = b"") -> str:
    """The ``response`` value (RFC 2617 3.2.2.1, RFC 7616 3.4.1)."""
    base = algorithm.upper().removesuffix("-SESS")
    try:
        hash_ = ALGORITHMS[base]
    except KeyError:
        raise DigestError(f"algorithm {algorithm[:20]!r} is not supported") from None

    def h(text: str) -> str:
        return hash_(text.encode("utf-8"))

    ha1 = h(f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}") if qop != "auth-int" else h(f"{method}:{uri}:{hash_(body)}")
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DigestClient:
    """One set of credentials answering challenges; keeps the nonce count per nonce.

    :param cnonce: makes each client nonce (random by default; tests pass a fixed one).
    """

    def __init__(self, username: str, password: str, *, cnonce: Callable[[], str] | None = None):
        self.username = username
        self._password = password
        self._cnonce = cnonce or (lambda: os.urandom(12).hex())
        self._counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<DigestClient {self.username!r}>"

    def authorization(self, challenge: Challenge, method: str, uri: str, body: bytes = b"") -> str:
        """The ``Authorization``/``Proxy-Authorization`` value answering ``challenge`` for this request."""
        qop = None
        if challenge.qop:
            qop = "auth" if "auth" in challenge.qop else "auth-int"
        nc = cnonce = None
        if qop is not None or challenge.session:
            cnonce = self._cnonce()
        if qop is not None:
            count = self._counts.get(challenge.nonce, 0) + 1
            if len(self._counts) > 64:  # old nonces are never reused: keep the map small
                self._counts.clear()
            self._counts[challenge.nonce] = count
            nc = f"{count:08x}"
        response = compute_response(algorithm=challenge.algorithm, username=self.username, realm=challenge.realm,
                                     password=self._password, nonce=challenge.nonce, method=method, uri=uri,
                                     qop=qop, nc=nc, cnonce=cnonce, body=body)
        parts = [f"username={_quote(self.username)}", f"realm={_quote(challenge.realm)}",
                 f"nonce={_quote(challenge.nonce)}", f"uri={_quote(uri)}", f"response={_quote(response)}",
                 f"algorithm={challenge.algorithm}"]
        if cnonce is not None:
            parts.append(f"cnonce={_quote(cnonce)}")
        if challenge.opaque is not None:
            parts.append(f"opaque={_quote(challenge.opaque)}")
        if qop is not None:
            parts.extend([f"qop={qop}", f"nc={nc}"])
        return "Digest " + ", ".join(parts)
