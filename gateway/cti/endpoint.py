"""The endpoint the Bridge Client connects to: ``[cti] connect``, with the TLS trust of ``tls_ca_file``.

Without ``tls_ca_file`` the ``connect`` string is read as Twisted reads it (``tcp:host=H:port=P``, or
``tls:H:P`` checked against the system's trust roots, through the policy below). With it, ``connect``
is a ``tls:HOST:PORT[:timeout=S]`` string and the bridge's certificate must chain to (or be) one of
the certificates in that PEM file, for the host name in ``connect``. A ``tls:`` connect gets the TLS
versions and ciphers of :mod:`gateway.tlspolicy` (``[gateway] tls_minimum``) either way.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

from gateway.confschema import ConfigError
from gateway.tlspolicy import DEFAULT as DEFAULT_TLS

#: the options a tls: connect may carry together with tls_ca_file
TLS_OPTIONS = ("host", "port", "timeout")


def bridge_endpoint(reactor, config, tls=DEFAULT_TLS):
    """The client endpoint for the ``[cti]`` section ``config`` (``tls``: the TlsPolicy); ConfigError for an
    unusable trust setting."""
    if not config.tls_ca_file:
        return tls.client_endpoint(reactor, str(config.connect))  # a str subclass trips Twisted's parser
    host, port, timeout = _tls_address(str(config.connect))
    options = tls.client_creator(host, ssl.trustRootFromCertificates(_certificates(config.tls_ca_file)))
    return wrapClientTLS(options, HostnameEndpoint(reactor, host.encode("idna"), port, timeout))


def _fields(description):
    """Twisted's endpoint syntax: ``:``-separated fields (``\\:`` escapes a colon), ``key=value`` options."""
    fields = [re.sub(r"\\(.)", r"\1", f) for f in re.split(r"(?<!\\):", description)]
    return [f for f in fields if "=" not in f], dict(f.split("=", 1) for f in fields if "=" in f)


def _tls_address(description):
    (kind, *positional), options = _fields(description)
    for key, value in zip(("host", "port"), positional):
        options.setdefault(key, value)
    unknown = sorted(set(options) - set(TLS_OPTIONS))
    if unknown or "host" not in options or "port" not in options:
        problem = f"unsupported option(s) {', '.join(unknown)}" if unknown else "no host and port"
        raise ConfigError("cti.connect", f"with tls_ca_file, connect must be tls:HOST:PORT[:timeout=S] ({problem})")
    try:
        return options["host"], int(options["port"]), float(options.get("timeout", 30))
    except ValueError as e:
        raise ConfigError("cti.connect", f"bad port or timeout in {description!r}: {e}") from None


def _certificates(path):
    try:
        with open(path, "rb") as f:
            found = x509.load_pem_x509_certificates(f.read())
    except OSError as e:
        raise ConfigError("cti.tls_ca_file", f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError("cti.tls_ca_file", f"{path} holds no PEM certificate: {e}") from None
    return [ssl.Certificate.loadPEM(cert.public_bytes(Encoding.PEM)) for cert in found]
