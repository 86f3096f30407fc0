"""HTTP for the connector: requests with a timeout through treq, and the TLS trust of its links.

A ``tls_ca_file`` setting names a PEM file of certificates to trust (a CA, or a server's own
self-signed certificate); empty means the system's trust roots. The Socket.IO link takes
:func:`client_tls`; the REST API and the ``http`` transport an :class:`HttpClient`. Both follow the
TLS versions and ciphers of a :class:`gateway.tlspolicy.TlsPolicy` (``[gateway] tls_minimum``).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from treq.client import HTTPClient
from twisted.internet import defer, ssl
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from gateway.confschema import ConfigError
from gateway.tlspolicy import DEFAULT as DEFAULT_TLS

__all__ = ["HttpClient", "RequestTimedOut", "client_tls", "load_trust"]


class RequestTimedOut(defer.TimeoutError):
    """No complete answer within the timeout."""


def load_trust(path: str, key: str):
    """The trust root of the PEM file ``path`` (None when empty); ConfigError naming ``key``."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            found = x509.load_pem_x509_certificates(f.read())
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(key, f"{path} holds no PEM certificate: {e}") from None
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in found])


def client_tls(host: str, trust, tls=DEFAULT_TLS):
    """TLS options checking the server's certificate for ``host`` against ``trust`` (None: the system's),
    with the versions and ciphers of ``tls`` (a TlsPolicy)."""
    return tls.client_creator(host, trust)


class _QuietClientFactory(_HTTP11ClientFactory):
    """Without a "Starting factory" / "Stopping factory" log line per connection."""

    noisy = False


class HttpClient:
    """Requests through a treq client; :meth:`pooled` builds one with its own pool and TLS trust.

    :param clock: ``IReactorTime`` for the timeouts.
    :param treq: a treq ``HTTPClient`` (or ``StubTreq``).
    """

    def __init__(self, clock, treq, pool=None):
        self._clock = clock
        self._treq = treq
        self._pool = pool

    @classmethod
    def pooled(cls, reactor, trust=None, tls=DEFAULT_TLS) -> "HttpClient":
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool._factory = _QuietClientFactory
        return cls(reactor, HTTPClient(Agent(reactor, contextFactory=tls.https_policy(trust), pool=pool)), pool)

    def request(self, method: str, url: str, *, timeout: float, **kwargs) -> defer.Deferred:
        """``(status, body)`` of one request (treq's ``kwargs``), the body read in full.

        Fails with :class:`RequestTimedOut` after ``timeout`` seconds and with ``CancelledError``
        when cancelled (Twisted's HTTP client reports both as ``ResponseNeverReceived``).
        """
        why = []
        inner = self._treq.request(method, url, **kwargs)
        inner.addCallback(lambda response: response.content().addCallback(lambda body: (response.code, body)))

        def cancel(outer):
            why.append(defer.CancelledError())
            inner.cancel()

        def expire():
            why.append(RequestTimedOut(f"{method} {url}: no complete answer within {timeout:g} s"))
            inner.cancel()

        outer = defer.Deferred(cancel)
        timer = self._clock.callLater(timeout, expire)

        def settled(result):
            if timer.active():
                timer.cancel()
            if outer.called:
                return None  # cancelled already: nobody waits for this result
            if why:
                outer.errback(why[0])
            else:
                outer.callback(result)

        inner.addBoth(settled)
        return outer

    def close(self):
        """A Deferred firing once the pool's idle connections are closed."""
        return self._pool.closeCachedConnections() if self._pool is not None else defer.succeed(None)
