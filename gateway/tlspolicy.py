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

A listener's files are read and its TLS context is built when the endpoint is made (at config load), so
a listener that could not serve is refused then, not at its first connection: ``dhParameters`` must be
PEM DH parameters of at least :data:`MIN_DH_BITS` bits (OpenSSL refuses smaller ones at every
handshake). A failed handshake on a listener (a client speaking an old version or no TLS at all, an
alert from the client) is one log line naming the listener, the peer and OpenSSL's reason, rate-limited
per listener (:class:`gateway.boundary.RateLimitedLog`).
"""

from __future__ import annotations

import functools
import warnings

import attrs
from OpenSSL import SSL
from twisted.internet import defer, ssl
from twisted.internet.endpoints import (
    HostnameEndpoint,
    SSL4ServerEndpoint,
    clientFromString,
    serverFromString,
    wrapClientTLS,
)
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.filepath import FilePath
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from gateway.boundary import RateLimitedLog

__all__ = ["CIPHERS", "DEFAULT", "MIN_DH_BITS", "MINIMUMS", "TlsPolicy", "check_minimum"]

log = Logger()

#: ``[gateway] tls_minimum`` values and the oldest TLS version each allows
MINIMUMS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

#: the TLS 1.2 cipher suites offered and accepted (OpenSSL syntax): forward secrecy and AEAD only
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!DSS:!PSK:!SRP"

#: the smallest DH parameters (bits of the prime) a listener's ``dhParameters`` may hold
MIN_DH_BITS = 2048
#: failed handshakes of one listener logged one by one before they are summarised (once a minute)
HANDSHAKE_LOG_FIRST = 5
HANDSHAKE_LOG_INTERVAL = 60.0

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

    def server_endpoint(self, reactor, description: str, *, name: str | None = None):
        """The listening endpoint for ``description``; an ``ssl:`` one gets this policy.

        ``name`` names the listener in the log line of a failed handshake (default: ``ssl:PORT``).
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
            dh = _dh_parameters(options["dhParameters"])
        context = self.server_options(private_key=pair.privateKey.original.to_cryptography_key(),
                                      certificate=pair.original.to_cryptography(), extra_chain=chain, dh_parameters=dh)
        try:
            context.getContext()  # now, not at the first connection (where a failure is a traceback per client)
        except SSL.Error as e:
            raise ValueError(f"the TLS settings cannot be used: {_openssl_reason(e)}") from None
        port = _integer(options["port"], "port")
        return _PolicyServerEndpoint(reactor, port, context, backlog=_integer(options.get("backlog", "50"), "backlog"),
                                     interface=options.get("interface", ""), name=name or f"ssl:{port}")

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


# -- listeners ------------------------------------------------------------------


def _dh_parameters(path: str) -> ssl.DiffieHellmanParameters:
    """Twisted's DH parameters from ``path``, once read and found to be PEM DH parameters of at least
    :data:`MIN_DH_BITS` bits; ``ValueError`` naming the key and the file otherwise."""
    try:
        data = FilePath(path).getContent()
    except OSError as e:
        raise ValueError(f"dhParameters {path!r} cannot be read: {e.strerror or e}") from None
    bits = _dh_bits(data)
    if bits is None:
        raise ValueError(f"dhParameters {path!r} holds no PEM DH parameters (make them with: openssl dhparam "
                         f"-out dh.pem {MIN_DH_BITS})")
    if bits < MIN_DH_BITS:
        raise ValueError(f"dhParameters {path!r} are {bits}-bit DH parameters: OpenSSL refuses them at every "
                         f"handshake; at least {MIN_DH_BITS} bits are needed (openssl dhparam -out dh.pem "
                         f"{MIN_DH_BITS}), or leave dhParameters out (ECDHE only)")
    return ssl.DiffieHellmanParameters.fromFile(FilePath(path))


def _dh_bits(data: bytes) -> int | None:
    """The size in bits of the prime of the PEM DH parameters in ``data``; None if it holds none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography deprecates finite-field DH; OpenSSL still serves it
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric import dh
        from cryptography.hazmat.primitives.serialization import load_pem_parameters

        try:
            parameters = load_pem_parameters(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            return None
        if not isinstance(parameters, dh.DHParameters):
            return None
        return parameters.parameter_numbers().p.bit_length()


def _openssl_reason(error: SSL.Error) -> str:
    """OpenSSL's reasons in ``error`` (``"wrong version number"``), one line."""
    reasons = [str(entry[2]) for entry in (error.args[0] if error.args and isinstance(error.args[0], list) else ())
               if isinstance(entry, tuple) and len(entry) == 3 and entry[2]]
    return "; ".join(reasons) or str(error) or type(error).__name__


def _peer(address) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


class _NoTLS(Exception):
    """The TLS connection of an accepted connection could not be made."""


class _ServerTLSProtocol(BufferingTLSTransport):
    """A listener's TLS layer: a failed handshake is one rate-limited log line (the application
    protocol sees the connection lost as before), and a TLS layer that cannot start drops the
    connection with a log line instead of an unhandled error per connection."""

    _peer_address = None
    _not_started = False

    def makeConnection(self, transport):
        self._peer_address = transport.getPeer()
        try:
            super().makeConnection(transport)
        except _NoTLS as e:
            self._not_started = True
            self.factory.handshake_failed(self._peer_address, f"the TLS layer cannot start: {e}")
            transport.abortConnection()

    def connectionLost(self, reason):
        if self._not_started:
            return  # neither this layer nor the application protocol ever started
        if not self._handshakeDone and self._reason is not None and isinstance(self._reason.value, SSL.Error):
            self.factory.handshake_failed(self._peer_address, _openssl_reason(self._reason.value))
        super().connectionLost(reason)


class _ServerTLSFactory(TLSMemoryBIOFactory):
    protocol = _ServerTLSProtocol

    def __init__(self, context, wrapped, clock, name: str):
        super().__init__(context, False, wrapped, clock)
        self.name = name
        self._failures = RateLimitedLog(clock, log, first=HANDSHAKE_LOG_FIRST, interval=HANDSHAKE_LOG_INTERVAL)
        create = self._creatorCallable

        def creator(protocol):
            try:
                return create(protocol)
            except Exception as e:
                raise _NoTLS(_openssl_reason(e) if isinstance(e, SSL.Error) else f"{type(e).__name__}: {e}") from e

        self._creatorCallable = creator

    def handshake_failed(self, peer, reason: str) -> None:
        self._failures.emit("{listener}: TLS handshake with {peer} failed: {reason}{more}",
                            summary="{listener}: {count} more TLS handshakes failed in {seconds:.0f} s "
                                    "(the latest with {peer}: {reason})",
                            listener=self.name, peer=_peer(peer), reason=reason)

    def doStop(self):
        self._failures.close()
        super().doStop()


class _PolicyServerEndpoint(SSL4ServerEndpoint):
    """Twisted's ``ssl:`` endpoint whose TLS layer logs a failed handshake as one line."""

    def __init__(self, reactor, port, context, *, backlog=50, interface="", name="ssl"):
        super().__init__(reactor, port, context, backlog=backlog, interface=interface)
        self._name = name

    def listen(self, protocolFactory):
        factory = _ServerTLSFactory(self._sslContextFactory, protocolFactory, self._reactor, self._name)
        return defer.execute(self._reactor.listenTCP, self._port, factory, backlog=self._backlog,
                             interface=self._interface).addCallback(_typed_tls)


def _typed_tls(port):
    port._type = "TLS"  # as reactor.listenSSL names it in the port's log lines
    return port


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
