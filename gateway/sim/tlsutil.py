"""Self-signed TLS certificates for simulators (and tests) that serve ``wss://`` or TLS.

Patriot's Desktop API makes its own self-signed certificate; a simulator does the same here, and
gives a client both ways to trust it: the PEM file as a CA file, or the SHA-256 fingerprint to pin.

:func:`generate_self_signed` makes one in memory; :func:`load_or_create` keeps it in a directory
(``cert.pem`` and ``key.pem``) so that a restarted simulator presents the same certificate, as
Patriot does once its users have trusted it.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl

#: Validity of a generated certificate.
VALIDITY = datetime.timedelta(days=825)

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"


def fingerprint_sha256(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint of a PEM certificate's DER bytes, as ``AB:CD:...`` (upper-case hex)."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


@attrs.frozen
class SelfSignedCertificate:
    """A certificate and its private key (PEM), and where they are stored when they are."""

    hostname: str
    cert_pem: bytes = attrs.field(repr=False)
    key_pem: bytes = attrs.field(repr=False)
    cert_path: str | None = None
    key_path: str | None = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the certificate, ``AB:CD:...``."""
        return fingerprint_sha256(self.cert_pem)

    def server_options(self) -> ssl.CertificateOptions:
        """TLS options for a server presenting this certificate."""
        return ssl.CertificateOptions(
            privateKey=serialization.load_pem_private_key(self.key_pem, password=None),
            certificate=x509.load_pem_x509_certificate(self.cert_pem),
        )

    def trust_root(self) -> ssl.Certificate:
        """This certificate as a trust root, for ``optionsForClientTLS(hostname, trustRoot=...)``."""
        return ssl.Certificate.loadPEM(self.cert_pem)


def generate_self_signed(hostname: str, *, ip_addresses: tuple[str, ...] = ()) -> SelfSignedCertificate:
    """A new EC P-256 self-signed server certificate for ``hostname`` (and ``ip_addresses``), in memory."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    alt_names = [x509.DNSName(hostname)] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return SelfSignedCertificate(
        hostname=hostname,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def load_or_create(directory: str | os.PathLike, hostname: str) -> SelfSignedCertificate:
    """The certificate kept in ``directory``, generated (and written, key mode 0600) if not there yet.

    A stored certificate is reused as it is, whatever name it was made for: delete the files to
    get a new one.
    """
    directory = os.fspath(directory)
    cert_path, key_path = os.path.join(directory, CERT_FILE), os.path.join(directory, KEY_FILE)
    if os.path.exists(cert_path) and os.path.exists(key_path):
        with open(cert_path, "rb") as c, open(key_path, "rb") as k:
            return SelfSignedCertificate(hostname, c.read(), k.read(), cert_path, key_path)
    cert = generate_self_signed(hostname)
    os.makedirs(directory, exist_ok=True)
    with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as k:
        k.write(cert.key_pem)
    with open(cert_path, "wb") as c:
        c.write(cert.cert_pem)
    return attrs.evolve(cert, cert_path=cert_path, key_path=key_path)
