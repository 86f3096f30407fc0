"""Registration to a trunk (RFC 3261 10.2): REGISTER with digest, refresh before expiry, backoff on failure.

One :class:`Registration` per ``[[sip.trunks]]`` entry with ``register = true``.
It keeps one Call-ID and a growing CSeq across refreshes (RFC 3261 10.2.4),
answers a 401/407 with the trunk's credentials once per challenge (a second
challenge for the same nonce means the credentials are wrong, unless the server
says ``stale=true``), follows a 423's ``Min-Expires``, and refreshes
``margin`` seconds before the granted expiry (halfway for short grants). A
failure (a final error, no answer, wrong credentials) retries with exponential
backoff and jitter, from ``backoff_base`` up to ``backoff_max`` seconds (RFC 5626
4.5's 30 s and 1800 s by default).

:attr:`Registration.state` (``unregistered``, ``registering``, ``registered``,
``failed``), :attr:`~Registration.last_error` and :attr:`~Registration.expires_at`
are what ``/readyz`` and the status page will show; ``on_change`` is called on
every change of state. Everything runs on the clock handed in.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from gateway.sip.digest import ChallengeAnswers, DigestClient
from gateway.sip.message import Request, Response, SIPMessageError, parse_name_addr
from gateway.sip.transaction import Peer, TransactionLayer

__all__ = ["Registration"]

log = Logger()


class Registration:
    """Keeps this gateway registered at one trunk's registrar.

    :param clock: ``IReactorTime``.
    :param layer: the endpoint's :class:`TransactionLayer`.
    :param trunk: the trunk's name (for logs).
    :param registrar: where REGISTERs go.
    :param aor: the address of record, ``sip:user@domain``.
    :param contact: this gateway's contact URI for the trunk, ``sip:user@host:port``.
    :param digest: the trunk's credentials, or None.
    """

    def __init__(self, clock: Any, layer: TransactionLayer, *, trunk: str, registrar: Peer, aor: str, contact: str,
                 digest: DigestClient | None = None, expires: int = 3600, margin: float = 30.0,
                 backoff_base: float = 30.0, backoff_max: float = 1800.0,
                 random: Callable[[int], bytes] = os.urandom,
                 on_change: Callable[[Registration], None] | None = None):
        self.clock = clock
        self.layer = layer
        self.trunk = trunk
        self.registrar = registrar
        self.aor = aor
        self.contact = contact
        self.digest = digest
        self.expires = expires
        self.margin = margin
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.random = random
        self.on_change = on_change
        self.call_id = f"{random(10).hex()}@gateway"
        self.tag = random(6).hex()
        self.cseq = 0
        self.state = "unregistered"
        self.last_error: str | None = None
        self.expires_at: float | None = None
        self.failures = 0
        self._requested = expires
        #: the 401/407 challenges this attempt answered (nonces, and how many against MAX_CHALLENGES)
        self._challenges = ChallengeAnswers()
        #: whether this attempt followed a 423 already (a second one fails it: no raising Min-Expires for ever)
        self._followed_423 = False
        self._timer: Any = None
        self._stopped = False

    # -- public
    def start(self) -> None:
        """Register now, and keep registered until :meth:`stop`."""
        self._stopped = False
        self._register()

    def stop(self) -> defer.Deferred[None]:
        """Stop refreshing and remove the binding (``Expires: 0``); fires when the registrar answered or gave up."""
        self._stopped = True
        self._cancel_timer()
        if self.state != "registered":
            self._set("unregistered", None)
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()

        def finished(_: object = None) -> None:
            self.expires_at = None
            self._set("unregistered", None)
            if not done.called:
                done.callback(None)

        self._challenges.restart(keep_nonces=True)
        self._send(0, on_final=finished)
        return done

    def abandon(self) -> None:
        """Stop refreshing without telling the registrar (the process is going away)."""
        self._stopped = True
        self._cancel_timer()

    def describe(self) -> dict[str, Any]:
        """For /readyz and the status page."""
        return {"trunk": self.trunk, "state": self.state, "error": self.last_error, "expires_at": self.expires_at,
                "failures": self.failures}

    # -- the machine
    def _set(self, state: str, error: str | None) -> None:
        changed = (state, error) != (self.state, self.last_error)
        self.state, self.last_error = state, error
        if changed and self.on_change is not None:
            self.on_change(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _register(self) -> None:
        self._timer = None
        if self._stopped:
            return
        if self.state != "registered":
            self._set("registering", self.last_error)
        self._challenges.restart()
        self._followed_423 = False
        self._send(self._requested)

    def _request(self, expires: int, authorization: tuple[str, str] | None) -> Request:
        self.cseq += 1
        request = Request(method="REGISTER", uri=self._registrar_uri())
        request.headers += [("Max-Forwards", "70"), ("From", f"<{self.aor}>;tag={self.tag}"), ("To", f"<{self.aor}>"),
                            ("Call-ID", self.call_id), ("CSeq", f"{self.cseq} REGISTER"),
                            ("Contact", f"<{self.contact}>"), ("Expires", str(expires))]
        if authorization is not None:
            request.headers.append(authorization)
        return request

    def _registrar_uri(self) -> str:
        domain = self.aor.split("@", 1)[1] if "@" in self.aor else self.aor.split(":", 1)[-1]
        return f"sip:{domain}"

    def _send(self, expires: int, authorization: tuple[str, str] | None = None,
              on_final: Callable[[object], None] | None = None) -> None:
        request = self._request(expires, authorization)

        def on_response(response: Response) -> None:
            if response.status < 200:
                return
            if on_final is not None:
                if response.status in (401, 407) and self._challenge(request, response, expires, on_final):
                    return
                on_final(response)
                return
            self._final(request, response, expires)

        def on_timeout() -> None:
            if on_final is not None:
                on_final(None)
                return
            self._failed(f"no answer from {self.registrar.host}:{self.registrar.port}")

        self.layer.client(request, self.registrar, on_response, on_timeout)

    def _challenge(self, request: Request, response: Response, expires: int,
                   on_final: Callable[[object], None] | None = None) -> bool:
        """Answer a 401/407 once per nonce; False when it cannot be answered."""
        if self.digest is None:
            return False
        challenge = self._challenges.next(response)
        if challenge is None:
            return False
        authorization = (challenge.header, self.digest.authorization(challenge, "REGISTER", request.uri))
        self._send(expires, authorization, on_final)
        return True

    def _final(self, request: Request, response: Response, expires: int) -> None:
        status = response.status
        if 200 <= status < 300:
            granted = self._granted(response, expires)
            self.failures = 0
            self.expires_at = self.clock.seconds() + granted
            self._set("registered", None)
            log.info("SIP trunk {trunk}: registered at {host}:{port} for {granted} s", trunk=self.trunk,
                     host=self.registrar.host, port=self.registrar.port, granted=granted)
            refresh = granted / 2 if granted <= 2 * self.margin else granted - self.margin
            self._timer = self.clock.callLater(max(refresh, 1.0), self._register)
            return
        if status in (401, 407):
            if self._challenge(request, response, expires):
                return
            self._failed(f"{status} {response.reason}: the credentials were refused" if self.digest
                         else f"{status} {response.reason}: no credentials configured")
            return
        if status == 423:
            minimum = response.get("Min-Expires")
            if (minimum is not None and minimum.strip().isdigit() and int(minimum) > expires
                    and not self._followed_423):
                self._followed_423 = True
                self._requested = int(minimum)
                self._send(self._requested)
                return
        self._failed(f"{status} {response.reason}")

    def _granted(self, response: Response, requested: int) -> int:
        for value in response.get_all("Contact"):
            try:
                contact = parse_name_addr(value, "Contact", allow_star=True)
            except SIPMessageError:
                continue
            if contact.uri is not None and str(contact.uri) == self.contact:
                expires = contact.param("expires")
                if expires is not None and expires.isdigit():
                    return int(expires)
        header = response.get("Expires")
        if header is not None and header.strip().isdigit():
            return int(header.strip())
        return requested

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.expires_at = None
        delay = min(self.backoff_max, self.backoff_base * 2 ** (self.failures - 1))
        delay *= 0.5 + 0.5 * int.from_bytes(self.random(2), "big") / 0xFFFF  # jitter: 50-100 %
        self._set("failed", error)
        log.warn("SIP trunk {trunk}: registration at {host}:{port} failed ({error}); retrying in {delay:.0f} s",
                 trunk=self.trunk, host=self.registrar.host, port=self.registrar.port, error=error, delay=delay)
        if not self._stopped:
            self._timer = self.clock.callLater(delay, self._register)

