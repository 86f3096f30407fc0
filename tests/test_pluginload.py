"""Operators' drop-in plugins: a module in a [gateway] plugin_dirs directory is found and used."""

import textwrap

import pytest

import gateway.plugins
from gateway.media.interfaces import IMediaApp
from gateway.pluginload import extend_plugin_path, find_plugin, plugins

DROPIN = textwrap.dedent(
    '''
    """An operator's media app: counts the sessions it started."""
    from twisted.plugin import IPlugin
    from zope.interface import implementer
    from gateway.media.interfaces import IMediaApp

    @implementer(IPlugin, IMediaApp)
    class Greeter:
        name = "greeter"
        description = "says hello"
        started = []

        def start(self, ports, clock, arg=None, state_dir=None):
            self.started.append((tuple(ports), arg))
            return self

    greeter = Greeter()
    '''
)


@pytest.fixture
def plugin_dir(tmp_path):
    saved = list(gateway.plugins.__path__)
    (tmp_path / "operator_greeter.py").write_text(DROPIN)
    yield tmp_path
    gateway.plugins.__path__[:] = saved


def test_bundled_plugins_are_found():
    names = {p.name for p in plugins(IMediaApp)}
    assert {"echo", "play", "record", "bridge", "mix", "hold"} <= names


def test_a_dropped_in_plugin_is_found_and_used(plugin_dir):
    assert find_plugin(IMediaApp, "greeter") is None
    extend_plugin_path([str(plugin_dir)])
    greeter = find_plugin(IMediaApp, "greeter")
    assert greeter is not None
    session = greeter.start(["port-a"], clock=None, arg="hi")
    assert session is greeter and greeter.started == [(("port-a",), "hi")]
    # the bundled ones are still there, and first
    assert [p.name for p in plugins(IMediaApp)][-1] == "greeter"


def test_a_missing_plugin_directory_is_ignored(tmp_path):
    saved = list(gateway.plugins.__path__)
    try:
        extend_plugin_path([str(tmp_path / "absent")])
        assert gateway.plugins.__path__ == saved
    finally:
        gateway.plugins.__path__[:] = saved


ROUTED_APP = textwrap.dedent(
    '''
    """An operator's media app for a route: remembers the calls it was started on."""
    from twisted.internet.defer import Deferred
    from twisted.plugin import IPlugin
    from zope.interface import implementer
    from gateway.media.interfaces import IMediaApp, IMediaSession

    @implementer(IMediaSession)
    class Session:
        def __init__(self):
            self.finished = Deferred()

        def stop(self):
            if not self.finished.called:
                self.finished.callback(None)

    @implementer(IPlugin, IMediaApp)
    class Announcer:
        name = "announcer"
        description = "an operator's announcement"
        started = []

        def start(self, ports, clock, arg=None, state_dir=None):
            self.started.append((len(ports), arg))
            return Session()

    announcer = Announcer()
    '''
)


def test_plugin_dirs_in_the_configuration_reach_the_daemon(tmp_path):
    """[gateway] plugin_dirs is read by the daemon's assembly: a route to the operator's app is accepted
    (without the directory it is a configuration error) and an inbound call runs that app."""
    from twisted.internet.testing import MemoryReactorClock

    from gateway import tap
    from gateway.config import ConfigError, loads

    operator = tmp_path / "operator-plugins"
    operator.mkdir()
    (operator / "operator_announcer.py").write_text(ROUTED_APP)

    def config(plugin_dirs):
        return loads(
            f'[gateway]\nstate_dir = "{tmp_path / "var"}"\nplugin_dirs = {plugin_dirs!r}\n'
            f'[admin]\ntoken = "t"\n[store]\nurl = "sqlite:{tmp_path / "g.sqlite"}"\n'
            '[[routes]]\ndid = "777"\nto = "app:announcer:welcome"\n',
            "operator.toml",
        )

    saved = list(gateway.plugins.__path__)
    try:
        with pytest.raises(ConfigError, match=r"routes\[0\]\.to"):
            tap.build(config([]), MemoryReactorClock())
        reactor = MemoryReactorClock()
        root = tap.build(config([str(operator)]), reactor)
        root.core_service.startService()
        sim = root.core_service.drivers["sim"]
        leg = sim.place_inbound("0811222333", "777")
        reactor.advance(0)
        announcer = find_plugin(IMediaApp, "announcer")
        assert announcer.started == [(1, "welcome")]
        assert root.ctx.registry.call(leg.events.call_id).state == "TALKING"
        stopped = root.core_service.stopService()
        reactor.advance(root.ctx.config.gateway.shutdown_grace)
        assert stopped.called and announcer.started == [(1, "welcome")]
    finally:
        gateway.plugins.__path__[:] = saved


def test_the_core_is_built_then_wired_once(tmp_path):
    """Issue 13, item 3: the sim driver built by its plugin holds no way to the registry until the one
    wiring step (``CoreService.wire``); then its callers reach the registry, and routed apps that end
    by themselves end their call (the media controller tells the registry)."""
    from twisted.internet.testing import MemoryReactorClock

    from gateway.admin.metrics import make_metrics_registry
    from gateway.callservice import build_core
    from gateway.config import loads
    from gateway.context import Context
    from gateway.core.errors import DriverError
    from gateway.core.interfaces import IInboundDriver

    reactor = MemoryReactorClock()
    config = loads('[[routes]]\ndid = "200"\nto = "app:echo"\n', "test.toml")
    ctx = Context(reactor=reactor, config=config, state_dir=tmp_path, metrics=make_metrics_registry())
    core = build_core(ctx)
    sim = core.drivers["sim"]
    assert IInboundDriver.providedBy(sim)
    with pytest.raises(DriverError, match="no call registry"):
        sim.place_inbound("0811222333", "200")
    assert core.registry.calls() == []

    core.wire()
    leg = sim.place_inbound("0811222333", "200")
    reactor.advance(0)
    call_id = leg.events.call_id
    assert core.registry.call(call_id).state == "TALKING"
    [session] = core.media.sessions(call_id).values()
    session.stop()  # the app ends by itself: the media controller tells the registry, which ends the call
    assert core.registry.call(call_id).state == "RELEASED"


GREETER_ADAPTER = textwrap.dedent(
    '''
    """An operator's adapter with a section of its own, [greeter], naming an extension."""
    from twisted.application import service
    from twisted.plugin import IPlugin
    from zope.interface import implementer

    from gateway.adapters import IAdapter
    from gateway.confschema import section


    @section
    class GreeterConfig:
        enabled: bool = True
        extension: str = ""
        greeting: str = "hello"

        def extension_references(self):
            if self.extension:
                yield "extension", self.extension


    class GreeterService(service.Service):
        name = "greeter"

        def __init__(self, ctx, config):
            self.calls = ctx.registry
            self.config = config

        def status(self):
            return {"greeting": self.config.greeting, "calls": len(self.calls.calls())}


    @implementer(IPlugin, IAdapter)
    class Greeter:
        name = "greeter"
        section = "greeter"
        config_class = GreeterConfig

        def describe(self, config):
            return f"on (says {config.greeting!r})"

        def make_service(self, ctx, config):
            svc = ctx.status["greeter"] = GreeterService(ctx, config)
            return svc


    greeter = Greeter()
    '''
)


@pytest.fixture
def operator_adapter(tmp_path):
    """A directory with the greeter adapter; the plugin path is restored afterwards."""
    saved = list(gateway.plugins.__path__)
    directory = tmp_path / "operator-adapters"
    directory.mkdir()
    (directory / "operator_greeter_adapter.py").write_text(GREETER_ADAPTER)
    yield directory
    gateway.plugins.__path__[:] = saved


def test_the_bundled_adapters_are_plugins():
    """Issue 13, item 4: the four adapters are IAdapter plugins, in the order they start; their sections
    stay typed attributes of Config, of the very classes the plugins declare."""
    import typing

    from gateway import tap
    from gateway.adapters import IAdapter, adapter_plugins
    from gateway.config import BUNDLED_SECTIONS, Config

    found = adapter_plugins()
    assert [(a.name, a.section) for a in found] == [(n, n) for n in BUNDLED_SECTIONS]
    assert BUNDLED_SECTIONS == ("optimaccs", "patriot", "cti", "chat")
    assert all(IAdapter.providedBy(a) for a in found)
    hints = typing.get_type_hints(Config)
    assert {a.section: a.config_class | None for a in found} == {name: hints[name] for name in BUNDLED_SECTIONS}
    assert not hasattr(tap, "ADAPTERS")


def test_an_operator_adapter_brings_its_own_section(operator_adapter, tmp_path):
    """[gateway] plugin_dirs is read before the other sections: the adapter found there declares
    [greeter], validated by its class (a bad key names greeter.<key>, a reference to an unknown
    extension too); the daemon builds it with ctx.registry, and says it runs."""
    from twisted.internet.testing import MemoryReactorClock

    from gateway import tap
    from gateway.config import ConfigError, loads

    def text(greeter):
        return (f'[gateway]\nstate_dir = "{tmp_path / "var"}"\nplugin_dirs = ["{operator_adapter}"]\n'
                f'[admin]\ntoken = "t"\n[store]\nurl = "sqlite:{tmp_path / "g.sqlite"}"\n'
                f'[[extensions]]\nid = "1001"\n[greeter]\n{greeter}')

    with pytest.raises(ConfigError, match=r"^x\.toml: greeter: unknown key \(known keys here: admin, chat, cluster, cti,"):
        loads(text('greeting = "hi"\n').replace(f'plugin_dirs = ["{operator_adapter}"]\n', ""), "x.toml")
    with pytest.raises(ConfigError, match=r"^x\.toml: greeter\.greting: unknown key \(known keys here: enabled,"):
        loads(text('greting = "hi"\n'), "x.toml")
    with pytest.raises(ConfigError, match=r"^x\.toml: greeter\.greeting: expected a string, got int 3$"):
        loads(text("greeting = 3\n"), "x.toml")
    with pytest.raises(ConfigError, match=r"^x\.toml: greeter\.extension: no extension with id '7'$"):
        loads(text('extension = "7"\n'), "x.toml")

    config = loads(text('greeting = "hi"\nextension = "1001"\n'), "x.toml")
    assert config.adapter_section("greeter").greeting == "hi"
    assert config.adapter_sections == {"greeter": config.adapter_section("greeter")}
    assert tap.adapter_states(config)["greeter"] == "on (says 'hi')"
    assert tap.adapter_states(loads(text("enabled = false\n"), "x.toml"))["greeter"] == "off (enabled = false)"

    root = tap.build(config, MemoryReactorClock())
    assert root.ctx.adapters["greeter"] == "on (says 'hi')"
    [svc] = root.adapter_services  # the bundled adapters have no section here: off
    assert root.ctx.status["greeter"] is svc
    assert svc.calls is root.ctx.registry and svc.status() == {"greeting": "hi", "calls": 0}


def test_two_adapters_declaring_one_section_is_a_configuration_error(operator_adapter):
    from gateway.config import ConfigError, loads

    (operator_adapter / "operator_greeter_twin.py").write_text(
        GREETER_ADAPTER.replace('name = "greeter"', 'name = "twin"'))
    with pytest.raises(ConfigError, match=r"gateway\.plugin_dirs: adapter plugins '(greeter|twin)' .* and "
                                          r"'(greeter|twin)' .* both declare the section 'greeter'"):
        loads(f'[gateway]\nplugin_dirs = ["{operator_adapter}"]\n', "x.toml")
