"""Trusting Patriot's self-signed Desktop API certificate: a CA file and/or a pinned fingerprint.

Patriot makes its own certificate for ``desktop-client-api.patriotsystems.com``, so the system's
trust roots do not vouch for it. :func:`client_tls` gives the TLS connection creator for one
``[[patriot.desktop]]`` link:

- ``ca``: a PEM file of certificates to trust (Patriot's certificate itself will do); the
  certificate chain and the server name are verified against them;
- ``fingerprint``: the SHA-256 fingerprint the server's certificate must have. Alone, it replaces
  the chain check (the certificate is trusted because it is that one); with ``ca``, both must hold;
- neither: the system's trust roots.

In every case the certificate must name the URL's host (the TLS server name sent is that host,
even when ``connect`` points elsewhere), and the TLS versions and ciphers are those of
:mod:`gateway.tlspolicy` (``[gateway] tls_minimum``).
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.logger import Logger
from zope.interface import implementer

from gateway.tlspolicy import DEFAULT as DEFAULT_TLS

log = Logger()


def normalise_fingerprint(text: str) -> str:
    """``ab:cd...`` or ``ABCD...`` as upper-case hex without separators."""
    return text.replace(":", "").strip().upper()


def load_ca_file(path: str) -> list[Certificate]:
    """The certificates in a PEM file; ``ValueError`` or ``OSError`` if there are none or it cannot be read."""
    with open(path, "rb") as f:
        data = f.read()
    certificates = x509.load_pem_x509_certificates(data)
    return [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certificates]


@implementer(IOpenSSLClientConnectionCreator)
class PinnedCertificate:
    """Wraps Twisted's client TLS options: the server's certificate must have the pinned fingerprint.

    ``check_chain``: the chain must also verify against the options' trust roots (``ca`` given).
    """

    def __init__(self, options, fingerprint: str, *, check_chain: bool):
        self._options = options
        self._fingerprint = normalise_fingerprint(fingerprint)
        self._check_chain = check_chain

    def clientConnectionForTLS(self, tlsProtocol):
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        return connection

    def _verify(self, connection, certificate, errno, depth, ok) -> bool:
        if self._check_chain and not ok:
            return False
        if depth > 0:
            return True
        der = certificate.to_cryptography().public_bytes(Encoding.DER)
        actual = hashlib.sha256(der).hexdigest().upper()
        if hmac.compare_digest(actual, self._fingerprint):
            return True
        log.warn("TLS: the server's certificate has the SHA-256 fingerprint {actual}, not the pinned {pinned}",
                 actual=actual, pinned=self._fingerprint)
        return False


def client_tls(hostname: str, *, ca_certificates: list[Certificate] | None = None, fingerprint: str = "",
               tls=DEFAULT_TLS):
    """The ``IOpenSSLClientConnectionCreator`` for a link to ``hostname`` with this trust (``tls``: a TlsPolicy)."""
    trust = trustRootFromCertificates(ca_certificates) if ca_certificates else None
    options = tls.client_creator(hostname, trust)
    if not fingerprint:
        return options
    return PinnedCertificate(options, fingerprint, check_chain=bool(ca_certificates))
