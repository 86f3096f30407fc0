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
