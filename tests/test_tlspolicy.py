"""The TLS policy (gateway.tlspolicy) over real loopback sockets: every ``ssl:`` listener refuses TLS 1.0/1.1
and the weak cipher suites, follows ``[gateway] tls_minimum = "1.3"``; every client link refuses a server
that offers only TLS 1.1 (or only 1.2 under a 1.3 minimum); the key is checked at config load.

The old-protocol clients are Python's ``ssl`` module with ``@SECLEVEL=0``, so that OpenSSL's own security
level does not refuse TLS 1.0/1.1 on the client side: the tests prove the *gateway's* side refuses. A lax
server (TLS 1.0-1.1, SECLEVEL 0) shows the same client is served when the policy is not in the way.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl as pyssl

import attrs
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import defer, protocol, ssl, threads
from twisted.internet.endpoints import HostnameEndpoint, SSL4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from zope.interface import implementer

from gateway import config as gwconfig
from gateway.confschema import ConfigError
from gateway.context import Readiness
from gateway.listeners import Listener, StartupError
from gateway.tlspolicy import CIPHERS, DEFAULT, TlsPolicy

#: the old-protocol clients are deliberate
pytestmark = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")

HOST = "localhost"
TIMEOUT = 10.0


def reactor():
    from twisted.internet import reactor as r

    return r


# -- certificates ------------------------------------------------------------------------------------


@attrs.frozen
class Pem:
    cert_path: str
    key_path: str
    cert_pem: bytes
    key_pem: bytes

    def trust_root(self):
        return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(self.cert_pem)])

    def pair(self):
        return ssl.PrivateCertificate.loadPEM(self.cert_pem + b"\n" + self.key_pem)


@pytest.fixture(scope="module")
def rsa_pem(tmp_path_factory):
    """An RSA self-signed certificate for localhost/127.0.0.1 (RSA, so static-RSA suites could be chosen)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    return Pem(str(directory / "cert.pem"), str(directory / "key.pem"), cert_pem, key_pem)


def ssl_description(pem, port=0):
    return f"ssl:{port}:interface=127.0.0.1:privateKey={pem.key_path}:certKey={pem.cert_path}"


# -- a blocking client of Python's ssl module (run in a thread) -------------------------------------------


def probe(port, *, minimum=pyssl.TLSVersion.TLSv1, maximum=None, ciphers="DEFAULT:@SECLEVEL=0", echo=True):
    """Handshake with 127.0.0.1:``port`` (and echo one line); ``(version, cipher)`` or the SSLError/OSError."""
    context = pyssl.SSLContext(pyssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = pyssl.CERT_NONE
    context.set_ciphers(ciphers)
    context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=HOST) as tls:
                if echo:
                    tls.sendall(b"ping\n")
                    echoed = tls.recv(5)
                    assert echoed == b"ping\n", echoed
                return tls.version(), tls.cipher()[0]
        except (pyssl.SSLError, ConnectionError) as e:
            return e


def probe_in_thread(port, **kwargs) -> defer.Deferred:
    return threads.deferToThread(probe, port, **kwargs).addTimeout(TIMEOUT + 5, reactor())


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


def echo_factory():
    return protocol.Factory.forProtocol(Echo)


@pytest_twisted.async_yield_fixture
async def listeners():
    """``start(description, tls=...)``: a real gateway Listener serving an echo; stopped afterwards."""
    started = []

    def start(description, tls=DEFAULT):
        listener = Listener(reactor(), "test", description, echo_factory(), Readiness().register("listener:test"),
                            tls=tls)
        listener.bind()
        started.append(listener)
        return listener.port.getHost().port

    yield start
    for listener in started:
        await listener.stopService()


# -- a lax server: what an old peer would offer -----------------------------------------------------------


@implementer(IOpenSSLContextFactory)
class LaxServerContext:
    """A server context of its own: only the TLS versions ``low``..``high``, any cipher (SECLEVEL 0)."""

    def __init__(self, pem, low, high):
        self._pair = pem.pair()
        self._low, self._high = low, high

    def getContext(self):
        context = SSL.Context(SSL.TLS_METHOD)
        context.use_certificate(self._pair.original.to_cryptography())
        context.use_privatekey(self._pair.privateKey.original.to_cryptography_key())
        context.set_min_proto_version(self._low)
        context.set_max_proto_version(self._high)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        return context


@pytest_twisted.async_yield_fixture
async def lax_server(rsa_pem):
    """``start(low, high)``: an echo server speaking only TLS versions low..high; returns its port."""
    ports = []

    async def start(low, high):
        port = await SSL4ServerEndpoint(reactor(), 0, LaxServerContext(rsa_pem, low, high),
                                        interface="127.0.0.1").listen(echo_factory())
        ports.append(port)
        return port.getHost().port

    yield start
    for port in ports:
        await port.stopListening()


# -- server side ---------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_ssl_listener_refuses_tls_1_0_and_1_1_clients(listeners, lax_server, rsa_pem):
    port = listeners(ssl_description(rsa_pem))
    for version in (pyssl.TLSVersion.TLSv1, pyssl.TLSVersion.TLSv1_1):
        refused = await probe_in_thread(port, maximum=version)
        assert isinstance(refused, (pyssl.SSLError, ConnectionError)), (version, refused)
    # the same clients are served by a server that allows them: the refusal above is the gateway's
    lax = await lax_server(SSL.TLS1_VERSION, SSL.TLS1_1_VERSION)
    for version, name in ((pyssl.TLSVersion.TLSv1, "TLSv1"), (pyssl.TLSVersion.TLSv1_1, "TLSv1.1")):
        served = await probe_in_thread(lax, maximum=version)
        assert not isinstance(served, Exception) and served[0] == name, served


@pytest_twisted.ensureDeferred
async def test_an_ssl_listener_serves_tls_1_2_and_1_3_with_strong_ciphers(listeners, rsa_pem):
    port = listeners(ssl_description(rsa_pem))
    version, cipher = await probe_in_thread(port, maximum=pyssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2"
    assert cipher.startswith(("ECDHE-", "DHE-")) and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    version, cipher = await probe_in_thread(port, ciphers="DEFAULT")
    assert version == "TLSv1.3"


@pytest_twisted.ensureDeferred
async def test_with_minimum_1_3_an_ssl_listener_refuses_a_tls_1_2_client(listeners, rsa_pem):
    port = listeners(ssl_description(rsa_pem), tls=TlsPolicy("1.3"))
    refused = await probe_in_thread(port, maximum=pyssl.TLSVersion.TLSv1_2)
    assert isinstance(refused, (pyssl.SSLError, ConnectionError)), refused
    assert (await probe_in_thread(port))[0] == "TLSv1.3"


#: weak TLS 1.2 suites, by family (OpenSSL cipher strings)
WEAK = {
    "static RSA key exchange, CBC": "AES128-SHA",
    "static RSA key exchange, GCM": "AES128-GCM-SHA256",
    "ECDHE with CBC and SHA-1": "ECDHE-RSA-AES128-SHA",
    "ECDHE with CBC and SHA-256": "ECDHE-RSA-AES128-SHA256",
    "NULL encryption": "eNULL",
    "anonymous": "aNULL",
    "RC4": "RC4",
    "3DES": "3DES",
    "EXPORT": "EXPORT",
    "DES": "DES",
    "PSK": "PSK",
    "CAMELLIA": "CAMELLIA",
}
#: those every OpenSSL 3 build has, so the live handshake below is always tried for them
ALWAYS_OFFERABLE = {"static RSA key exchange, CBC", "static RSA key exchange, GCM", "ECDHE with CBC and SHA-1",
                    "ECDHE with CBC and SHA-256"}


def _expand(cipher_string):
    """The suites an OpenSSL cipher string names at SECLEVEL 0 (pyOpenSSL's OpenSSL); () if none."""
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.set_cipher_list(f"{cipher_string}:@SECLEVEL=0".encode())
    except SSL.Error:
        return set()
    return set(SSL.Connection(context, None).get_cipher_list()) - _tls13_suites()


def _tls13_suites():
    return {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256",
            "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256"}


def offered(policy, *, server_pem=None):
    """The suites a context of ``policy`` offers, and its options."""
    if server_pem is not None:
        pair = server_pem.pair()
        options = policy.server_options(private_key=pair.privateKey.original.to_cryptography_key(),
                                        certificate=pair.original.to_cryptography())
    else:
        options = ssl.CertificateOptions(**policy.certificate_options())
    context = options.getContext()
    flags = context.set_options(0)  # (adds nothing) the options in force; before a Connection freezes it
    return set(SSL.Connection(context, None).get_cipher_list()), flags


@pytest.mark.parametrize("minimum", ["1.2", "1.3"])
def test_a_policy_context_offers_only_forward_secret_aead_suites_and_no_old_version(minimum, rsa_pem):
    for server_pem in (None, rsa_pem):
        suites, options = offered(TlsPolicy(minimum), server_pem=server_pem)
        for suite in suites - _tls13_suites():
            assert suite.startswith(("ECDHE-", "DHE-")) and ("-GCM-" in suite or "CHACHA20" in suite), suite
        assert options & SSL.OP_NO_SSLv3 and options & SSL.OP_NO_TLSv1 and options & SSL.OP_NO_TLSv1_1
        assert bool(options & SSL.OP_NO_TLSv1_2) == (minimum == "1.3")
        for family, spec in WEAK.items():
            assert not suites & _expand(spec), family


@pytest.mark.parametrize("family", sorted(WEAK))
@pytest_twisted.ensureDeferred
async def test_a_weak_suite_cannot_be_negotiated_with_an_ssl_listener(family, listeners, rsa_pem):
    port = listeners(ssl_description(rsa_pem))
    try:
        pyssl.SSLContext(pyssl.PROTOCOL_TLS_CLIENT).set_ciphers(f"{WEAK[family]}:@SECLEVEL=0")
    except pyssl.SSLError:
        # this machine's OpenSSL cannot even offer it; the policy's own list has none of it (test above)
        assert family not in ALWAYS_OFFERABLE
        return
    refused = await probe_in_thread(port, maximum=pyssl.TLSVersion.TLSv1_2, ciphers=f"{WEAK[family]}:@SECLEVEL=0")
    assert isinstance(refused, (pyssl.SSLError, ConnectionError)), (family, refused)


# -- the policy's own endpoint strings --------------------------------------------------------------------------


def test_an_ssl_listener_with_sslmethod_or_a_tls_listener_is_refused(rsa_pem):
    with pytest.raises(StartupError, match="sslmethod is not supported"):
        Listener(reactor(), "admin", ssl_description(rsa_pem) + ":sslmethod=TLSv1_METHOD", echo_factory(),
                 Readiness().register("x")).bind()
    with pytest.raises(ValueError, match="tls: listeners are not supported"):
        DEFAULT.server_endpoint(reactor(), "tls:/etc/ssl:port=8443")
    with pytest.raises(ValueError, match="unknown ssl: option 'cipher'"):
        DEFAULT.server_endpoint(reactor(), ssl_description(rsa_pem) + ":cipher=RC4")


def test_ssl_listener_keys_are_twisteds(rsa_pem, tmp_path):
    chain = tmp_path / "chain.pem"
    chain.write_bytes(rsa_pem.cert_pem)
    endpoint = DEFAULT.server_endpoint(
        reactor(), f"ssl:port=0:backlog=7:interface=127.0.0.1:privateKey={rsa_pem.key_path}:"
                   f"certKey={rsa_pem.cert_path}:extraCertChain={chain}")
    assert isinstance(endpoint, SSL4ServerEndpoint)
    assert DEFAULT.server_endpoint(reactor(), "tcp:0").__class__.__name__ == "TCP4ServerEndpoint"


# -- configuration --------------------------------------------------------------------------------------------------


def test_tls_minimum_is_validated_at_config_load(rsa_pem):
    assert gwconfig.loads("", "t").gateway.tls_minimum == "1.2"
    assert gwconfig.load(None).gateway.tls_minimum == "1.2"
    assert gwconfig.loads('[gateway]\ntls_minimum = "1.3"\n', "t").gateway.tls_minimum == "1.3"
    for bad in ('"1.1"', '"1.0"', '"TLSv1.2"', '""'):
        with pytest.raises(ConfigError) as e:
            gwconfig.loads(f"[gateway]\ntls_minimum = {bad}\n", "gw.toml")
        assert str(e.value) == (f'gw.toml: gateway.tls_minimum: expected "1.2" or "1.3" (TLS 1.0 and 1.1 are never '
                                f"allowed), got {bad.replace(chr(34), chr(39))}")
    with pytest.raises(ConfigError, match="gateway.tls_minimum: expected a string, got float 1.2"):
        gwconfig.loads("[gateway]\ntls_minimum = 1.2\n", "gw.toml")
    with pytest.raises(ConfigError, match="admin.listen: .*sslmethod is not supported"):
        gwconfig.loads(f'[admin]\nlisten = "{ssl_description(rsa_pem)}:sslmethod=TLSv1_2_METHOD"\n', "gw.toml")


def test_the_daemon_context_hands_the_configured_policy_to_its_listeners(rsa_pem):
    from gateway.context import Context

    config = gwconfig.loads('[gateway]\ntls_minimum = "1.3"\n', "t")
    ctx = Context(reactor=reactor(), config=config, state_dir=None, metrics=None)
    assert ctx.tls == TlsPolicy("1.3")
    ctx.listen("admin", ssl_description(rsa_pem), echo_factory())
    assert ctx.listeners[0]._tls == TlsPolicy("1.3")


def test_the_cipher_string_names_only_strong_families():
    assert "RSA+" not in CIPHERS and "!aNULL" in CIPHERS and "!eNULL" in CIPHERS


# -- client side: every link the gateway opens ------------------------------------------------------------------


class Recorder(protocol.Protocol):
    """Server side of the client tests: answers HTTP with 200, echoes anything else; counts what arrived."""

    def dataReceived(self, data):
        self.factory.received.append(data)
        if data.startswith((b"GET ", b"POST ")):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                                 b"Connection: close\r\n\r\n{}")
            self.transport.loseConnection()
        else:
            self.transport.write(data)


class Sender(protocol.Protocol):
    """Client side for raw endpoints: sends a line, ``done`` fires with the echo or fails with the loss."""

    def connectionMade(self):
        self.transport.write(b"ping\n")

    def dataReceived(self, data):
        if not self.factory.done.called:
            self.factory.done.callback(data)
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.factory.done.called:
            self.factory.done.errback(reason)


def send_through(endpoint) -> defer.Deferred:
    factory = protocol.Factory.forProtocol(Sender)
    factory.done = defer.Deferred()
    connected = endpoint.connect(factory)
    connected.addErrback(lambda f: factory.done.called or factory.done.errback(f))
    return factory.done


@pytest_twisted.async_yield_fixture
async def peer(rsa_pem):
    """``start(low, high)``: a TLS server of exactly versions low..high (any cipher); ``(port, received)``."""
    ports = []

    async def start(low, high):
        factory = protocol.Factory.forProtocol(Recorder)
        factory.received = []
        port = await SSL4ServerEndpoint(reactor(), 0, LaxServerContext(rsa_pem, low, high),
                                        interface="127.0.0.1").listen(factory)
        ports.append(port)
        return port.getHost().port, factory.received

    yield start
    for port in ports:
        await port.stopListening()


async def _patriot(port, pem, policy, _ctx):
    from gateway.confschema import ClientEndpoint, Secret
    from gateway.patriot.config import DesktopConfig
    from gateway.patriot.desktop import desktop_endpoint
    from gateway.patriot.tls import load_ca_file

    config = DesktopConfig(api_key=Secret("k"), extension="1001", url=f"wss://{HOST}:{port}/ws/dialler/v1",
                           connect=ClientEndpoint(f"tcp:host=127.0.0.1:port={port}"), ca=pem.cert_path)
    return await send_through(desktop_endpoint(reactor(), config, load_ca_file(pem.cert_path), tls=policy))


async def _cti_with_ca_file(port, pem, policy, _ctx):
    from gateway.cti.config import CtiConfig
    from gateway.cti.endpoint import bridge_endpoint

    config = CtiConfig(connect=f"tls:{HOST}:{port}", tls_ca_file=pem.cert_path)
    return await send_through(bridge_endpoint(reactor(), config, policy))


async def _cti_with_system_trust(port, pem, policy, _ctx):
    from gateway.cti.config import CtiConfig
    from gateway.cti.endpoint import bridge_endpoint

    return await send_through(bridge_endpoint(reactor(), CtiConfig(connect=f"tls:{HOST}:{port}:timeout=5"), policy))


async def _chat_socketio(port, pem, policy, _ctx):
    from twisted.internet.endpoints import wrapClientTLS

    from gateway.chat.web import client_tls, load_trust

    creator = client_tls(HOST, load_trust(pem.cert_path, "chat.tls_ca_file"), policy)
    return await send_through(wrapClientTLS(creator, HostnameEndpoint(reactor(), b"127.0.0.1", port, timeout=5)))


async def _chat_http(port, pem, policy, _ctx):
    from gateway.chat.web import HttpClient, load_trust

    client = HttpClient.pooled(reactor(), load_trust(pem.cert_path, "chat.http.tls_ca_file"), policy)
    try:
        return await client.request("GET", f"https://{HOST}:{port}/", timeout=5)
    finally:
        await client.close()


async def _optimaccs_media(port, pem, policy, _ctx):
    from gateway.drivers.optimaccs_out import connect_endpoint

    factory = protocol.Factory.forProtocol(Sender)
    factory.done = defer.Deferred()
    connected = connect_endpoint(reactor(), 5, policy)(f"wss://{HOST}:{port}/ws/s1", factory)
    connected.addErrback(lambda f: factory.done.called or factory.done.errback(f))
    return await factory.done


async def _optimaccs_rest(port, pem, policy, ctx):
    """The driver as the daemon builds it: its REST client follows ctx.tls."""
    from gateway.drivers.optimaccs_out import build_driver

    driver = build_driver(ctx(f'[optimaccs]\n[optimaccs.outbound]\napi_url = "https://{HOST}:{port}"\ntoken = "t"\n'))
    try:
        return await driver.api.hangup("s1")
    finally:
        await driver.stop()


CLIENTS = {
    "patriot desktop (wss)": _patriot,
    "cti bridge (tls: with tls_ca_file)": _cti_with_ca_file,
    "cti bridge (tls: with system trust)": _cti_with_system_trust,
    "chat socket.io (wss)": _chat_socketio,
    "chat rest / http transport (https)": _chat_http,
    "optimaccs media (wss)": _optimaccs_media,
    "optimaccs rest (https)": _optimaccs_rest,
}


@pytest.fixture
def system_trusts(rsa_pem, monkeypatch):
    """The system's trust roots are the test certificate (OpenSSL reads SSL_CERT_FILE per context)."""
    monkeypatch.setenv("SSL_CERT_FILE", rsa_pem.cert_path)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.fixture
def contexts(tmp_path):
    """``make(minimum)(toml)``: a daemon Context for a config with ``[gateway] tls_minimum``."""
    from prometheus_client import CollectorRegistry

    from gateway.context import Context

    def make(minimum):
        def ctx(text):
            config = gwconfig.loads(f'[gateway]\ntls_minimum = "{minimum}"\n{text}', "t")
            return Context(reactor=reactor(), config=config, state_dir=tmp_path, metrics=CollectorRegistry())
        return ctx
    return make


async def attempt(client, port, pem, minimum, contexts):
    try:
        await client(port, pem, TlsPolicy(minimum), contexts(minimum))
    except Exception as e:  # what a refused handshake looks like differs per client (SSL.Error, ResponseFailed...)
        return e
    return None


@pytest.mark.parametrize("name", sorted(CLIENTS))
@pytest_twisted.ensureDeferred
async def test_a_client_link_refuses_a_server_offering_only_tls_1_1(name, peer, rsa_pem, system_trusts, contexts):
    old_port, old_received = await peer(SSL.TLS1_VERSION, SSL.TLS1_1_VERSION)
    failure = await attempt(CLIENTS[name], old_port, rsa_pem, "1.2", contexts)
    assert failure is not None and old_received == [], name
    # the same client, trust and certificate with a TLS 1.2 server: served, so the refusal was the version's
    port, received = await peer(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION)
    assert await attempt(CLIENTS[name], port, rsa_pem, "1.2", contexts) is None
    assert received != []


@pytest.mark.parametrize("name", sorted(CLIENTS))
@pytest_twisted.ensureDeferred
async def test_with_minimum_1_3_a_client_link_refuses_a_tls_1_2_server(name, peer, rsa_pem, system_trusts, contexts):
    port, received = await peer(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION)
    failure = await attempt(CLIENTS[name], port, rsa_pem, "1.3", contexts)
    assert failure is not None and received == [], name
    port, received = await peer(SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION)
    assert await attempt(CLIENTS[name], port, rsa_pem, "1.3", contexts) is None
    assert received != []


@implementer(IOpenSSLContextFactory)
class WeakServerContext(LaxServerContext):
    """A TLS 1.2 server that offers only ``ciphers``."""

    def __init__(self, pem, ciphers):
        super().__init__(pem, SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION)
        self._ciphers = ciphers

    def getContext(self):
        context = super().getContext()
        context.set_cipher_list(f"{self._ciphers}:@SECLEVEL=0".encode())
        return context


@pytest.mark.parametrize("family", sorted(ALWAYS_OFFERABLE))
@pytest_twisted.ensureDeferred
async def test_a_client_link_refuses_a_server_offering_only_weak_suites(family, rsa_pem, system_trusts):
    for ciphers, refused in ((WEAK[family], True), ("ECDHE+AESGCM", False)):  # then a control: a strong server
        factory = protocol.Factory.forProtocol(Recorder)
        factory.received = []
        port = await SSL4ServerEndpoint(reactor(), 0, WeakServerContext(rsa_pem, ciphers),
                                        interface="127.0.0.1").listen(factory)
        try:
            endpoint = DEFAULT.client_endpoint(reactor(), f"tls:{HOST}:{port.getHost().port}:timeout=5")
            if refused:
                with pytest.raises(SSL.Error):
                    await send_through(endpoint)
                assert factory.received == []
            else:
                assert await send_through(endpoint) == b"ping\n"
        finally:
            await port.stopListening()


# -- the daemon: [gateway] tls_minimum reaches every listener ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_daemon_applies_tls_minimum_to_admin_optimaccs_and_patriot_bridge_listeners(rsa_pem, tmp_path):
    from gateway.testing import GatewayProcess, free_port

    ports = {"admin": free_port(), "optimaccs": free_port(), "patriot-bridge": free_port()}
    text = (
        f'[gateway]\nstate_dir = "var"\nshutdown_grace = 1.0\ntls_minimum = "1.3"\n\n'
        f'[admin]\nlisten = "{ssl_description(rsa_pem, ports["admin"])}"\ntoken = "t"\n\n'
        f'[store]\nurl = "sqlite:var/gateway.sqlite"\n\n'
        f'[optimaccs]\nlisten = "{ssl_description(rsa_pem, ports["optimaccs"])}"\n\n'
        f'[patriot.bridge]\nlisten = "{ssl_description(rsa_pem, ports["patriot-bridge"])}"\n'
    )
    gateway = GatewayProcess(reactor(), tmp_path, text)
    gateway.spawn()
    try:
        await gateway.wait_for_output(" started: ", timeout=30)
        for name, port in ports.items():
            refused = await probe_in_thread(port, maximum=pyssl.TLSVersion.TLSv1_2, echo=False)
            assert isinstance(refused, (pyssl.SSLError, ConnectionError)), (name, refused)
            assert (await probe_in_thread(port, ciphers="DEFAULT", echo=False))[0] == "TLSv1.3", name
    finally:
        assert await gateway.stop() == 0, gateway.output


# -- dhParameters, and what a failed handshake on a listener leaves in the log ----------------------------------

#: RFC 2409's 1024-bit MODP group (Oakley group 2): DH parameters OpenSSL refuses at every handshake
MODP_1024 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF", 16)
#: RFC 7919's ffdhe2048 group (openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048)
FFDHE_2048_PEM = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


@pytest.fixture(scope="module")
def dh_files(tmp_path_factory):
    """``{"1024": path, "2048": path, "junk": path}``: DH parameter files (fixed groups: no slow generation)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography deprecates finite-field DH
        from cryptography.hazmat.primitives.asymmetric import dh

        weak = dh.DHParameterNumbers(MODP_1024, 2).parameters().parameter_bytes(
            serialization.Encoding.PEM, serialization.ParameterFormat.PKCS3)
    directory = tmp_path_factory.mktemp("dh")
    files = {"1024": weak, "2048": FFDHE_2048_PEM, "junk": b"not DH parameters\n"}
    for name, data in files.items():
        (directory / f"{name}.pem").write_bytes(data)
    return {name: str(directory / f"{name}.pem") for name in files}


def test_dh_parameters_under_2048_bits_or_unreadable_are_refused_at_config_load(rsa_pem, dh_files, tmp_path):
    cases = {
        dh_files["1024"]: "are 1024-bit DH parameters: OpenSSL refuses them at every handshake; at least 2048 bits",
        dh_files["junk"]: "holds no PEM DH parameters",
        rsa_pem.key_path: "holds no PEM DH parameters",
        str(tmp_path / "missing.pem"): "cannot be read: No such file or directory",
    }
    for path, problem in cases.items():
        listen = f"{ssl_description(rsa_pem, 8443)}:dhParameters={path}"
        with pytest.raises(ConfigError) as caught:
            gwconfig.loads(f'[admin]\nlisten = "{listen}"\n', "gw.toml")
        message = str(caught.value)
        assert message.startswith("gw.toml: admin.listen: bad listening endpoint"), message
        assert f"dhParameters {path!r} {problem}" in message, message
        with pytest.raises(StartupError, match="at least 2048 bits|no PEM DH|cannot be read"):
            Listener(reactor(), "admin", listen, echo_factory(), Readiness().register("x")).bind()
    listen = f"{ssl_description(rsa_pem, 8443)}:dhParameters={dh_files['2048']}"
    assert gwconfig.loads(f'[admin]\nlisten = "{listen}"\n', "gw.toml").admin.listen == listen


@pytest_twisted.ensureDeferred
async def test_an_ssl_listener_with_2048_bit_dh_parameters_serves_a_dhe_client(listeners, rsa_pem, dh_files):
    port = listeners(f"{ssl_description(rsa_pem)}:dhParameters={dh_files['2048']}")
    version, cipher = await probe_in_thread(port, maximum=pyssl.TLSVersion.TLSv1_2, ciphers="DHE-RSA-AES128-GCM-SHA256")
    assert (version, cipher) == ("TLSv1.2", "DHE-RSA-AES128-GCM-SHA256")


@pytest.fixture
def log_events():
    """Every log event while the test runs."""
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _handshake_lines(events):
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if e.get("log_namespace") == "gateway.tlspolicy"]


def _errors(events):
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if e.get("log_failure") is not None or e.get("isError")]


def send_garbage(port) -> bytes:
    """Speak plain HTTP to a TLS port; what came back before it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        received = b""
        try:
            raw.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            while chunk := raw.recv(4096):
                received += chunk
        except (ConnectionResetError, BrokenPipeError):  # the server may drop it before or while it is sent
            pass
        return received


async def _until(predicate, timeout=TIMEOUT):
    from twisted.internet import task

    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await task.deferLater(reactor(), 0.02, lambda: None)
    raise AssertionError("timed out")


@pytest_twisted.ensureDeferred
async def test_a_failed_handshake_on_a_listener_is_one_log_line_naming_the_peer_and_why(listeners, rsa_pem,
                                                                                        log_events):
    port = listeners(ssl_description(rsa_pem))
    await threads.deferToThread(send_garbage, port).addTimeout(TIMEOUT + 5, reactor())
    refused = await probe_in_thread(port, maximum=pyssl.TLSVersion.TLSv1_1)
    assert isinstance(refused, (pyssl.SSLError, ConnectionError)), refused
    await _until(lambda: len(_handshake_lines(log_events)) >= 2)
    first, second = _handshake_lines(log_events)[:2]
    assert first.startswith("test: TLS handshake with 127.0.0.1:") and first.endswith(" failed: http request"), first
    assert second.startswith("test: TLS handshake with 127.0.0.1:") and "unsupported protocol" in second, second
    assert all("\n" not in line for line in (first, second))
    assert _errors(log_events) == []
    assert (await probe_in_thread(port))[0] == "TLSv1.3", "the listener serves on"


@pytest_twisted.ensureDeferred
async def test_failed_handshakes_are_logged_five_then_summarised(rsa_pem, log_events):
    from gateway.tlspolicy import HANDSHAKE_LOG_FIRST

    listener = Listener(reactor(), "test", ssl_description(rsa_pem), echo_factory(), Readiness().register("x"))
    listener.bind()
    try:
        for _ in range(HANDSHAKE_LOG_FIRST + 3):
            await threads.deferToThread(send_garbage, listener.port.getHost().port).addTimeout(TIMEOUT + 5,
                                                                                               reactor())
        lines = _handshake_lines(log_events)
        assert len(lines) == HANDSHAKE_LOG_FIRST and lines[-1].endswith("(further ones are summarised)"), lines
    finally:
        await listener.stopService()
    summary = _handshake_lines(log_events)[HANDSHAKE_LOG_FIRST:]
    assert len(summary) == 1 and summary[0].startswith("test: 3 more TLS handshakes failed in "), summary
    assert "(the latest with 127.0.0.1:" in summary[0] and summary[0].endswith(": http request)"), summary
    assert _errors(log_events) == []


@implementer(IOpenSSLServerConnectionCreator)
class BrokenCreator:
    """A TLS layer that cannot start (as a context OpenSSL refuses at the first connection)."""

    def serverConnectionForTLS(self, protocol):
        raise SSL.Error([("SSL routines", "", "dh key too small")])


@pytest_twisted.ensureDeferred
async def test_a_tls_layer_that_cannot_start_drops_the_connection_with_one_line_not_a_traceback(log_events):
    from gateway.tlspolicy import _PolicyServerEndpoint

    factory = echo_factory()
    factory.made = 0
    factory.protocol = type("Counting", (Echo,), {"connectionMade": lambda self: setattr(factory, "made", 1)})
    listening = await _PolicyServerEndpoint(reactor(), 0, BrokenCreator(), interface="127.0.0.1",
                                            name="broken").listen(factory)
    try:
        answer = await threads.deferToThread(send_garbage, listening.getHost().port).addTimeout(TIMEOUT + 5,
                                                                                                 reactor())
        assert answer == b""
        await _until(lambda: _handshake_lines(log_events))
        [line] = _handshake_lines(log_events)
        assert line.startswith("broken: TLS handshake with 127.0.0.1:"), line
        assert line.endswith("failed: the TLS layer cannot start: dh key too small"), line
        assert _errors(log_events) == [] and factory.made == 0
    finally:
        await listening.stopListening()
