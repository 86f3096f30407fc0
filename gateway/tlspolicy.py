"""The one TLS policy of every listener and link: TLS 1.2 or newer, forward-secret AEAD ciphers only.

Every ``ssl:`` listener (admin HTTP, the OptimaCCS inbound server, the Patriot Dialler Bridge) and
every TLS link the gateway opens (Patriot Desktop API, the HIS processor bridge, the chat server's
Socket.IO and REST, the ``http`` SMS transport, the OptimaCCS outbound REST and media WebSocket) gets
its TLS settings from a :class:`TlsPolicy`:

- the oldest protocol version is ``[gateway] tls_minimum``: ``"1.2"`` (the default) or ``"1.3"``;
  TLS 1.0 and 1.1 (and SSL) are never offered nor accepted;
- the TLS 1.2 cipher suites are :data:`CIPHERS`: ECDHE/DHE key exchange with AES-GCM or
  ChaCha20-Poly1305, so no RC4, 3DES, NULL, EXPORT, anonymous, static-RSA, CBC or PSK/SRP suite can
  be negotiated. TLS 1.3 suites are all AEAD and forward-secret already (OpenSSL's defaults).

Twisted's ``ssl:`` endpoint parser builds its own ``CertificateOptions``, so a listener's ``ssl:``
string is read here (:meth:`TlsPolicy.server_endpoint`) with the same keys as Twisted's (``port``,
``privateKey``, ``certKey``, ``interface``, ``backlog``, ``extraCertChain``, ``dhParameters``);
``sslmethod`` is refused (the versions come from the policy), and so is Twisted's ``tls:`` server
endpoint (it builds its contexts itself). Likewise a client ``tls:`` string
(:meth:`TlsPolicy.client_endpoint`, keys ``host``, ``port``, ``timeout``, ``bindAddress``,
``certificate``, ``privateKey``, ``trustRoots``, ``endpoint``). Any other endpoint string goes to
Twisted's ``serverFromString`` / ``clientFromString`` untouched.
"""

from __future__ import annotations

import functools

import attrs
from twisted.internet import ssl
from twisted.internet.endpoints import (
    HostnameEndpoint,
    SSL4ServerEndpoint,
    clientFromString,
    serverFromString,
    wrapClientTLS,
)
from twisted.python.filepath import FilePath
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["CIPHERS", "DEFAULT", "MINIMUMS", "TlsPolicy", "check_minimum"]

#: ``[gateway] tls_minimum`` values and the oldest TLS version each allows
MINIMUMS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

#: the TLS 1.2 cipher suites offered and accepted (OpenSSL syntax): forward secrecy and AEAD only
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!DSS:!PSK:!SRP"

#: the keys of an ``ssl:`` listener, in Twisted's positional order (``sslmethod`` is refused)
SSL_SERVER_KEYS = ("port", "privateKey", "certKey", "sslmethod", "interface", "backlog", "extraCertChain",
                   "dhParameters")
#: the keys of a ``tls:`` client endpoint, in Twisted's positional order
TLS_CLIENT_KEYS = ("host", "port", "timeout", "bindAddress", "certificate", "privateKey", "trustRoots", "endpoint")


def check_minimum(value) -> str:
    """``value`` if it is an allowed ``tls_minimum``; ``ValueError`` saying what is allowed otherwise."""
    if value not in MINIMUMS:
        raise ValueError(f'expected "1.2" or "1.3" (TLS 1.0 and 1.1 are never allowed), got {value!r}')
    return value


@functools.cache
def _acceptable_ciphers():
    return ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS)


@attrs.frozen
class TlsPolicy:
    """The TLS versions and ciphers of the gateway's listeners and links."""

    #: the oldest TLS version: "1.2" or "1.3"
    minimum: str = attrs.field(default="1.2", converter=check_minimum)

    @classmethod
    def from_config(cls, config) -> "TlsPolicy":
        """The policy of a loaded :class:`gateway.config.Config` (``[gateway] tls_minimum``)."""
        return cls(config.gateway.tls_minimum)

    def certificate_options(self) -> dict:
        """Keyword arguments for ``CertificateOptions`` (or ``extraCertificateOptions``) with this policy."""
        return {"raiseMinimumTo": MINIMUMS[self.minimum], "acceptableCiphers": _acceptable_ciphers()}

    # -- servers -----------------------------------------------------------

    def server_options(self, *, private_key, certificate, extra_chain=None, dh_parameters=None):
        """``CertificateOptions`` for a server presenting ``certificate`` (cryptography objects)."""
        return ssl.CertificateOptions(privateKey=private_key, certificate=certificate, extraCertChain=extra_chain,
                                      dhParameters=dh_parameters, **self.certificate_options())

    def server_endpoint(self, reactor, description: str):
        """The listening endpoint for ``description``; an ``ssl:`` one gets this policy.

        Raises ``ValueError`` (or ``OSError`` for a file that cannot be read) naming the problem.
        """
        description = str(description)
        kind = description.partition(":")[0]
        if kind == "tls":
            raise ValueError("tls: listeners are not supported (their TLS settings cannot follow "
                             "[gateway] tls_minimum): use ssl:PORT:privateKey=KEY.pem:certKey=CERT.pem")
        if kind != "ssl":
            return serverFromString(reactor, description)
        options = _options(description, SSL_SERVER_KEYS)
        if "sslmethod" in options:
            raise ValueError("sslmethod is not supported: the TLS versions come from [gateway] tls_minimum")
        if "port" not in options:
            raise ValueError("an ssl: listener needs a port")
        private_key = options.get("privateKey", "server.pem")
        cert_pem = FilePath(options.get("certKey", private_key)).getContent()
        key_pem = FilePath(private_key).getContent()
        pair = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
        chain = None
        if "extraCertChain" in options:
            chain = [c.original.to_cryptography() for c in _load_certificates(options["extraCertChain"])]
            if not chain:
                raise ValueError(f"extraCertChain {options['extraCertChain']!r} holds no PEM certificate")
        dh = None
        if "dhParameters" in options:
            dh = ssl.DiffieHellmanParameters.fromFile(FilePath(options["dhParameters"]))
        context = self.server_options(private_key=pair.privateKey.original.to_cryptography_key(),
                                      certificate=pair.original.to_cryptography(), extra_chain=chain, dh_parameters=dh)
        return SSL4ServerEndpoint(reactor, _integer(options["port"], "port"), context,
                                  backlog=_integer(options.get("backlog", "50"), "backlog"),
                                  interface=options.get("interface", ""))

    # -- clients -----------------------------------------------------------

    def client_creator(self, hostname: str, trust_root=None, client_certificate=None):
        """The ``IOpenSSLClientConnectionCreator`` for a link to ``hostname``.

        The server's certificate must name ``hostname`` and chain to ``trust_root`` (an
        ``IOpenSSLTrustRoot``; None: the system's trust roots).
        """
        return ssl.optionsForClientTLS(hostname, trustRoot=trust_root, clientCertificate=client_certificate,
                                       extraCertificateOptions=self.certificate_options())

    def https_policy(self, trust_root=None) -> "HttpsPolicy":
        """An ``IPolicyForHTTPS`` for ``twisted.web.client.Agent`` (``contextFactory=``)."""
        return HttpsPolicy(self, trust_root)

    def client_endpoint(self, reactor, description: str):
        """The connecting endpoint for ``description``; a ``tls:`` one gets this policy."""
        description = str(description)
        if description.partition(":")[0] != "tls":
            return clientFromString(reactor, description)
        options = _options(description, TLS_CLIENT_KEYS)
        if "host" not in options or "port" not in options:
            raise ValueError("a tls: endpoint needs a host and a port (tls:HOST:PORT)")
        host = options["host"]
        trust = None
        if "trustRoots" in options:
            trust = ssl.trustRootFromCertificates(_load_certificates_dir(options["trustRoots"]))
        client_certificate = None
        if "certificate" in options:
            cert_pem = FilePath(options["certificate"]).getContent()
            key_pem = FilePath(options["privateKey"]).getContent() if "privateKey" in options else b""
            client_certificate = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
        if "endpoint" in options:
            inner = clientFromString(reactor, options["endpoint"])
        else:
            bind = (options["bindAddress"], 0) if "bindAddress" in options else None
            inner = HostnameEndpoint(reactor, host.encode("idna"), _integer(options["port"], "port"),
                                     _number(options.get("timeout", "30"), "timeout"), bind)
        return wrapClientTLS(self.client_creator(host, trust, client_certificate), inner)


#: the policy with the defaults, for code that is handed none
DEFAULT = TlsPolicy()


@implementer(IPolicyForHTTPS)
@attrs.frozen
class HttpsPolicy:
    """Twisted's ``IPolicyForHTTPS`` with a :class:`TlsPolicy` and a trust root (None: the system's)."""

    policy: TlsPolicy
    trust_root: object = None

    def creatorForNetloc(self, hostname: bytes, port: int):
        return self.policy.client_creator(hostname.decode("idna"), self.trust_root)


# -- Twisted's endpoint-string syntax -------------------------------------------


def _split(text: str, separator: str, limit: int = -1) -> list[str]:
    """``text`` split at ``separator`` where it is not escaped by a backslash (escapes kept)."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current += ["\\", char]
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator and limit != 0:
            parts.append("".join(current))
            current = []
            limit -= 1
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    out, escaped = [], False
    for char in text:
        if escaped or char != "\\":
            out.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def _options(description: str, keys: tuple[str, ...]) -> dict[str, str]:
    """The options of ``kind:a:b:key=value``: positional fields take ``keys`` in order."""
    kind, *fields = _split(description, ":")
    options: dict[str, str] = {}
    positional = 0
    for field in fields:
        pair = _split(field, "=", 1)
        if len(pair) == 2:
            key, value = _unescape(pair[0]), _unescape(pair[1])
        else:
            if positional >= len(keys):
                raise ValueError(f"too many positional fields in {kind}: endpoint")
            key, value = keys[positional], _unescape(field)
            positional += 1
        if key not in keys:
            raise ValueError(f"unknown {kind}: option {key!r} (known: {', '.join(keys)})")
        if key in options:
            raise ValueError(f"{kind}: option {key!r} given twice")
        options[key] = value
    return options


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {text!r}") from None


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None


def _load_certificates(path: str) -> list:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        found = x509.load_pem_x509_certificates(FilePath(path).getContent())
    except ValueError:
        return []
    return [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in found]


def _load_certificates_dir(path: str) -> list:
    """Every certificate in the ``*.pem`` files of directory ``path`` (as Twisted's ``trustRoots``)."""
    certificates = []
    for child in sorted(FilePath(path).children()):
        if child.basename().lower().endswith(".pem") and child.isfile():
            certificates += _load_certificates(child.path)
    if not certificates:
        raise ValueError(f"trustRoots {path!r} holds no .pem certificate")
    return certificates
