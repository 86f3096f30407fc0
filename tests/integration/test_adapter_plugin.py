"""An operator's own adapter, dropped into a [gateway] plugin_dirs directory, run by the real daemon.

The adapter ``hello`` brings its own ``[hello]`` section (validated like every section: a bad key is
a configuration error naming ``hello.<key>``), listens on a port of its own and answers each
connection with its greeting and the number of calls the core has (through ``ctx.registry``, its
ICallControl), and shows its status in ``/api/status``. It is listed with the bundled adapters in
the start-up ``adapters:`` line and in ``gatewayctl status``.
"""

import os
import sys
import textwrap

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.utils import getProcessOutputAndValue

from gateway.testing import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(90)

HELLO = textwrap.dedent(
    '''
    """An operator's adapter: greets whoever connects to [hello] listen."""
    import attrs
    from twisted.application import service
    from twisted.internet.protocol import Factory, Protocol
    from twisted.plugin import IPlugin
    from zope.interface import implementer

    from gateway.adapters import IAdapter
    from gateway.confschema import ServerEndpoint, check, section


    @section
    class HelloConfig:
        enabled: bool = True
        listen: ServerEndpoint = ServerEndpoint("tcp:0:interface=127.0.0.1")
        greeting: str = attrs.field(default="hello", validator=check(bool, "must not be empty"))


    class HelloService(service.Service):
        name = "hello"

        def __init__(self, config, calls):
            self.config = config
            self.calls = calls
            self.greeted = 0

        def status(self):
            return {"greeting": self.config.greeting, "greeted": self.greeted}


    class Greet(Protocol):
        def connectionMade(self):
            svc = self.factory.service
            svc.greeted += 1
            line = f"{svc.config.greeting}; the core has {len(svc.calls.calls())} calls\\r\\n"
            self.transport.write(line.encode())
            self.transport.loseConnection()


    @implementer(IPlugin, IAdapter)
    class Hello:
        name = "hello"
        section = "hello"
        config_class = HelloConfig

        def describe(self, config):
            return f"on (says {config.greeting!r})"

        def make_service(self, ctx, config):
            svc = HelloService(config, ctx.registry)
            factory = Factory.forProtocol(Greet)
            factory.service = svc
            ctx.listen("hello", config.listen, factory)
            ctx.status["hello"] = svc
            return svc


    hello = Hello()
    '''
)

BUNDLED_OFF = ("optimaccs off (no [optimaccs] section), patriot off (no [patriot] section), "
               "cti off (no [cti] section), chat off (no [chat] section)")


@pytest.fixture
def plugin_dir(tmp_path):
    directory = tmp_path / "operator-plugins"
    directory.mkdir()
    (directory / "operator_hello_daemon.py").write_text(HELLO)
    return directory


def _gateway(processes, tmp_path, admin, extra, plugin_dirs=()):
    tmp_path.mkdir(exist_ok=True)
    config = GatewayProcess.config(admin, extra)
    if plugin_dirs:
        config = config.replace("[gateway]\n", f"[gateway]\nplugin_dirs = {[str(d) for d in plugin_dirs]!r}\n", 1)
    proc = GatewayProcess(reactor, tmp_path, config)
    processes.append(proc)
    return proc


class _Lines(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(self.data)


@pytest_twisted.inlineCallbacks
def test_a_dropped_in_adapter_runs_with_its_own_section(processes, tmp_path, plugin_dir):
    admin, port = free_port(), free_port()
    proc = _gateway(processes, tmp_path, admin,
                    f'[hello]\nlisten = "tcp:{port}:interface=127.0.0.1"\ngreeting = "hi from the drop-in"\n',
                    plugin_dirs=[plugin_dir])
    yield proc.start(admin)

    assert f"adapters: {BUNDLED_OFF}, hello on (says 'hi from the drop-in')" in proc.output
    assert f"hello=tcp:{port}:interface=127.0.0.1" in proc.output  # its listener, in the started line

    client = _Lines()
    yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(protocol.Factory.forProtocol(lambda: client))
    answer = yield client.done.addTimeout(10, reactor)
    assert answer == b"hi from the drop-in; the core has 0 calls\r\n"

    _, status = yield proc.api("GET", "/api/status", expect=200)
    assert status["hello"] == {"greeting": "hi from the drop-in", "greeted": 1}
    assert status["adapters"]["hello"] == "on (says 'hi from the drop-in')"

    ctl = os.path.join(os.path.dirname(sys.executable), "gatewayctl")
    out, err, code = yield getProcessOutputAndValue(ctl, ["--config", proc.config_path, "status"],
                                                    env=dict(os.environ), path=str(tmp_path))
    assert (code, err) == (0, b""), (out, err)
    out = out.decode()
    assert "\n  chat: off (no [chat] section)\n  hello: on (says 'hi from the drop-in')\n" in out
    assert "\nhello:\n" in out and "greeted: 1" in out
    assert (yield proc.stop()) == 0


@pytest_twisted.inlineCallbacks
def test_the_drop_in_section_is_validated_naming_its_key(processes, tmp_path, plugin_dir):
    """A bad key in [hello] is a configuration error naming hello.<key>; without the plugin's directory,
    [hello] itself is an unknown key, worded as for any other top-level table."""
    admin = free_port()
    proc = _gateway(processes, tmp_path / "typo", admin, '[hello]\ngreting = "typo"\n', plugin_dirs=[plugin_dir])
    proc.spawn()
    assert (yield proc.ended) != 0
    assert (f"gateway: configuration error: {proc.config_path}: hello.greting: unknown key"
            " (known keys here: enabled, greeting, listen)") in proc.output
    assert "Traceback" not in proc.output

    proc = _gateway(processes, tmp_path / "without", admin, '[hello]\ngreeting = "hi"\n')
    proc.spawn()
    assert (yield proc.ended) != 0
    assert (f"gateway: configuration error: {proc.config_path}: hello: unknown key (known keys here: admin, chat,"
            " cluster, cti, extensions, gateway, media, optimaccs, patriot, pbx, routes, sip, store)") in proc.output
    assert "Traceback" not in proc.output
