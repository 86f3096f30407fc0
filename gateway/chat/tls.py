"""TLS trust for the connector's outgoing links, and the treq clients built on it.

A ``tls_ca_file`` setting names a PEM file of certificates to trust (a CA, or a server's own
self-signed certificate); empty means the system's trust roots. The Socket.IO link takes
:func:`client_tls`, the REST API and the ``http`` transport an :class:`HttpClient`.
"""

from __future__ import annotations

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from gateway.confschema import ConfigError

__all__ = ["HttpClient", "client_tls", "load_trust"]


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


def client_tls(host: str, trust):
    """TLS options checking the server's certificate for ``host`` against ``trust`` (None: the system's)."""
    return ssl.optionsForClientTLS(host, trustRoot=trust) if trust is not None else ssl.optionsForClientTLS(host)


@implementer(IPolicyForHTTPS)
@attrs.frozen
class _TrustPolicy:
    trust: object

    def creatorForNetloc(self, hostname: bytes, port: int):
        return client_tls(hostname.decode("idna"), self.trust)


class _QuietClientFactory(_HTTP11ClientFactory):
    """Without a "Starting factory" / "Stopping factory" log line per connection."""

    noisy = False


class HttpClient:
    """A treq client with its own connection pool and TLS trust; :meth:`close` drops idle connections."""

    def __init__(self, reactor, trust=None):
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool._factory = _QuietClientFactory
        agent = Agent(reactor, contextFactory=_TrustPolicy(trust), pool=self._pool)
        self.treq = HTTPClient(agent)

    def close(self):
        """A Deferred firing once the idle connections are closed."""
        return self._pool.closeCachedConnections()
