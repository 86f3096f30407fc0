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
