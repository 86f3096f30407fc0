"""Configuration: defaults, the annotated etc/gateway.toml, and one-line errors with key paths."""

import pathlib
import re
import tomllib
import typing

import attrs
import pytest

from gateway import config
from gateway.confschema import ConfigError, Secret, structure

ROOT = pathlib.Path(__file__).resolve().parent.parent
ETC = ROOT / "etc" / "gateway.toml"


def test_embedded_defaults_are_the_etc_file():
    assert config.load(None) == config.load(str(ETC))


def _section_classes(cls, prefix=""):
    """(dotted table name, section class) for every nested table of ``cls``."""
    for name, tp in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = args[0] if args and typing.get_origin(tp) is not list else tp
        if attrs.has(inner) and inner is not Secret:
            yield f"{prefix}{name}", inner
            yield from _section_classes(inner, f"{prefix}{name}.")


def _is_table(tp) -> bool:
    """A section, an optional section or an array of sections: a table of its own, not a key."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    inner = args[0] if len(args) == 1 else tp
    return attrs.has(inner) and inner is not Secret


def _table(data, dotted):
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def test_values_in_etc_file_are_the_code_defaults():
    """Each table in etc/gateway.toml lists every key of its section with the default value."""
    data = tomllib.loads(ETC.read_text())
    checked = 0
    for dotted, cls in _section_classes(config.Config):
        table = _table(data, dotted)
        if table is None:
            continue
        written = structure(cls, table, dotted)
        default = cls()
        hints = typing.get_type_hints(cls)
        for field in attrs.fields(cls):
            if _is_table(hints[field.name]):
                continue  # nested tables (optional ones, arrays of tables) are compared on their own
            assert field.name in table, f"{dotted}.{field.name} is not documented in etc/gateway.toml"
            if field.name == "enabled":
                # A section present is on: the code's default is true, and the embedded
                # defaults turn the adapters that need a peer off by writing false.
                assert default.enabled is True, f"{dotted}.enabled: a section present must be on by default"
                continue
            assert getattr(written, field.name) == getattr(default, field.name), (
                f"{dotted}.{field.name}: etc/gateway.toml says {table[field.name]!r}, "
                f"the code's default is {getattr(default, field.name)!r}"
            )
        checked += 1
    assert checked >= 4


def test_every_key_in_etc_file_has_a_comment():
    lines = ETC.read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+\s*=", line):
            j = i - 1
            while j >= 0 and lines[j].strip() and not lines[j].startswith("#") and re.match(r"^[a-z_]+\s*=", lines[j]):
                j -= 1
            if j < 0 or not lines[j].startswith("#"):
                undocumented.append(line)
    assert undocumented == []


@pytest.mark.parametrize(
    "text, message",
    [
        ('[gateway]\nnode = 1', "x.toml: gateway.node: expected a string, got int 1"),
        ('[gateway]\nnodee = "a"', "x.toml: gateway.nodee: unknown key"),
        ("[gatway]", "x.toml: gatway: unknown key"),
        ("x =", "x.toml: invalid TOML"),
        ('[gateway]\nshutdown_grace = -1', "x.toml: gateway.shutdown_grace: must be between 0 and 3600"),
        ('[gateway]\nshutdown_grace = true', "gateway.shutdown_grace: expected a number, got boolean true"),
        ('[admin]\nlisten = "tcp:abc"', "x.toml: admin.listen: bad listening endpoint 'tcp:abc'"),
        ('[admin]\nlisten = "nope:1"', "admin.listen: bad listening endpoint 'nope:1': Unknown endpoint type"),
        ('[admin]\nlisten = "systemd:domain=INET"', "admin.listen: bad listening endpoint"),
        ('[admin]\nlisten = "tcp:80800"', "x.toml: admin.listen: bad listening endpoint 'tcp:80800': port 80800 is out of range"),
        ('[admin]\nlisten = "tcp:port=-1"', "admin.listen: bad listening endpoint 'tcp:port=-1': port -1 is out of range"),
        ('[admin]\nlisten = "tcp:8080:interface=localhst"', "admin.listen: bad listening endpoint 'tcp:8080:interface=localhst': interface 'localhst' is not an IP address"),
        ('[admin]\nlisten = "tcp:8080:interface=300.0.0.1"', "is not an IP address"),
        ('[admin]\nlisten = "tcp6:8080:interface=127.0.0.1"', "a tcp6 endpoint needs an IPv6 interface"),
        ('[admin]\nlisten = "udp:8080"', "admin.listen: bad listening endpoint 'udp:8080': Unknown endpoint type"),
        ('[optimaccs]\nlisten = "tcp:65536"', "x.toml: optimaccs.listen: bad listening endpoint 'tcp:65536': port 65536 is out of range (0-65535)"),
        ('[cti]\nconnect = "tcp:host=127.0.0.1:port=95000"', "x.toml: cti.connect: bad connecting endpoint 'tcp:host=127.0.0.1:port=95000': port 95000 is out of range (1-65535)"),
        ('[cti]\nconnect = "tcp:host=127.0.0.1:port=0"', "cti.connect: bad connecting endpoint 'tcp:host=127.0.0.1:port=0': port 0 is out of range"),
        ('[cti]\nconnect = "tcp:host=:port=9500"', "cti.connect: bad connecting endpoint 'tcp:host=:port=9500': no host to connect to"),
        ('[cti]\nconnect = "tls:bridge.example:99999"', "cti.connect: bad connecting endpoint 'tls:bridge.example:99999': port 99999 is out of range"),
        ('[cti]\nconnect = "carrier-pigeon:x"', "cti.connect: bad connecting endpoint 'carrier-pigeon:x': Unknown endpoint type"),
        ('[store]\nurl = "mysql://x"', "x.toml: store.url: expected sqlite:PATH"),
        ("[media]\nqueue_ms = 50", "x.toml: media.queue_ms: must be between 100 and 10000 ms, got 50"),
        ("[media]\nqueue_ms = 1.5", "x.toml: media.queue_ms: expected an integer"),
        ("[media]\njitter_ms = -20", "x.toml: media.jitter_ms: must be between 0 and 500 ms and below queue_ms, got -20"),
        ("[media]\njitter_ms = 600", "media.jitter_ms: must be between 0 and 500 ms and below queue_ms, got 600"),
        ("[media]\nqueue_ms = 100\njitter_ms = 100", "media.jitter_ms: must be between 0 and 500 ms and below queue_ms"),
        ("[media]\njitter_ms = 40.0", "x.toml: media.jitter_ms: expected an integer"),
        ("[[extensions]]\nname = 'a'", "x.toml: extensions[0].id: missing required key"),
        ("[[extensions]]\nid = 'a b'", "extensions[0].id: expected 1-64 letters"),
        ('[[extensions]]\nid = "a\\n"', "extensions[0].id: expected 1-64 letters, digits or _.+-, got 'a\\n'"),
        ('[[routes]]\ndid = "*"\nto = "app:echo\\n"', "routes[0].to: expected extension:<id> or app:<name>"),
        ("[[extensions]]\nid = 'a'\n[[extensions]]\nid = 'a'", "extensions[1].id: duplicate extension id 'a'"),
        ("[[routes]]\ndid = '*'\nto = 'extension:9'", "x.toml: routes[0].to: no extension with id '9'"),
        ("[[routes]]\ndid = '*'\nto = 'fax:9'", "routes[0].to: expected extension:<id> or app:<name>"),
        ("extensions = 3", "x.toml: extensions: expected an array, got int 3"),
        ("[pbx.sim]\nrules = [{match = '('}]", "pbx.sim.rules[0].match: not a valid regular expression"),
        ("[pbx.sim]\nrules = [{match = '1', outcome = 'maybe'}]", "pbx.sim.rules[0].outcome: expected one of"),
        ("[pbx.sim]\nrules = [{match = '1', hang_up_after = 0}]", "pbx.sim.rules[0].hang_up_after: must be a positive"),
        ("[pbx.sim]\nrules = [{match = '1', outcome = 'busy', hang_up_after = 2}]",
         "pbx.sim.rules[0].hang_up_after: only a party that answers can hang up after answering"),
        (
            "[[extensions]]\nid = '1'\n[patriot.bridge]\nusers = [{username = 'u', password = 'p', extension = 42}]",
            "x.toml: patriot.bridge.users[0].extension: expected a string, got int 42",
        ),
        (
            "[patriot.bridge]\nusers = [{username = 'u', password = 'p', extension = '7'}]",
            "x.toml: patriot.bridge.users[0].extension: no extension with id '7'",
        ),
    ],
)
def test_errors_are_one_line_naming_file_key_and_problem(text, message):
    with pytest.raises(ConfigError) as caught:
        config.loads(text, "x.toml")
    rendered = str(caught.value)
    assert "\n" not in rendered
    assert message in rendered


@pytest.mark.parametrize("listen", ["tcp:0", "tcp:8080:interface=0.0.0.0", r"tcp6:8080:interface=\:\:1", "tcp:65535", "unix:/run/gw.sock"])
def test_good_listening_endpoints_still_load(listen):
    assert config.loads(f"[admin]\nlisten = '{listen}'", "x.toml").admin.listen == listen


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read the file: No such file"):
        config.load(str(tmp_path / "nope.toml"))


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[gateway]\nnode = '\xe9'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(str(path))


@pytest.mark.parametrize("name", ["optimaccs", "cti", "chat"])
def test_an_adapter_section_present_is_on_unless_it_says_enabled_false(name):
    cfg = config.loads(f"[{name}]\n", "x.toml")
    assert getattr(cfg, name).enabled is True
    cfg = config.loads(f"[{name}]\nenabled = false\n", "x.toml")
    assert getattr(cfg, name).enabled is False


def test_chat_with_only_a_url_is_on():
    """Issue 12: `[chat]` with only `url` was silently off."""
    assert config.loads('[chat]\nurl = "http://chat.example:8081"\n', "x.toml").chat.enabled is True


def test_the_embedded_defaults_run_optimaccs_and_patriot_but_not_cti_or_chat():
    from gateway.tap import adapter_states

    states = adapter_states(config.load(None))
    assert {name: state.split(" ")[0] for name, state in states.items()} == {
        "optimaccs": "on", "patriot": "on", "cti": "off", "chat": "off",
    }
    assert states["cti"] == "off (enabled = false)"
    assert adapter_states(config.loads("", "x.toml"))["chat"] == "off (no [chat] section)"


def test_a_file_is_the_whole_configuration():
    """Keys left out take the section defaults; adapter sections left out are off."""
    cfg = config.loads("[gateway]\nnode = 'edge-1'", "x.toml")
    assert cfg.gateway.node == "edge-1"
    assert cfg.gateway.state_dir == "var"
    assert cfg.admin == config.AdminSection()
    assert (cfg.optimaccs, cfg.patriot, cfg.cti, cfg.chat) == (None, None, None, None)


def test_media_queue_size():
    assert config.load(None).media.queue_ms == 1000
    assert config.loads("[media]\nqueue_ms = 250", "x.toml").media.queue_ms == 250
    assert config.loads("[gateway]", "x.toml").media == config.MediaSection()


def test_media_jitter_target():
    assert config.load(None).media.jitter_ms == 20
    assert config.loads("[media]\njitter_ms = 0", "x.toml").media.jitter_ms == 0
    assert config.loads("[media]\nqueue_ms = 200\njitter_ms = 180", "x.toml").media.jitter_ms == 180


def test_secrets_are_never_rendered():
    cfg = config.loads(
        "[admin]\ntoken = 'hunter2-token'\n[[extensions]]\nid = '1'\n"
        "[patriot.bridge]\nusers = [{username = 'u', password = 'pw-s3cret', extension = '1'}]",
        "x.toml",
    )
    rendered = repr(cfg) + str(cfg)
    assert "hunter2-token" not in rendered and "pw-s3cret" not in rendered
    assert cfg.admin.token.reveal() == "hunter2-token"
    assert cfg.patriot.bridge.users[0].password.reveal() == "pw-s3cret"


@pytest.mark.parametrize("url", [
    "postgresql://gw:s3cret-pw@db host/gw",  # a space: refused
    "postgresql://gw:s3cret-pw@",  # nothing after the @ but the regex's \S+ passes: not refused here
    "mysql://gw:s3cret-pw@db/gw",
    "postgresql://",
    "postgres://gw:s3cret pw@db/gw",  # a password holding a space
])
def test_an_invalid_store_url_is_named_without_its_password(url):
    """The [store] url may hold a password: a configuration error repeats the URL masked."""
    try:
        config.loads(f"[store]\nurl = {url!r}\n", "gateway.toml")
    except ConfigError as e:
        message = str(e)
        assert message.startswith("gateway.toml: store.url: expected sqlite:PATH or postgresql://")
        assert "s3cret" not in message
        assert "pw@" not in message or "***@" in message
    else:
        assert url == "postgresql://gw:s3cret-pw@"


def test_a_store_url_password_is_never_in_repr_an_open_error_or_a_connection_error():
    from twisted.internet.task import Clock

    from gateway.confschema import mask_url_password
    from gateway.store import open_store
    from gateway.store.postgres import _without_password

    cfg = config.loads("[store]\nurl = 'postgresql://gw:s3cret-pw@db:5432/gw'\n", "x.toml")
    assert "s3cret" not in repr(cfg) and "postgresql://gw:***@db:5432/gw" in repr(cfg.store)
    assert cfg.store.url == "postgresql://gw:s3cret-pw@db:5432/gw"
    with pytest.raises(ValueError) as raised:
        open_store("mysql://gw:s3cret-pw@db/gw", Clock())
    assert "s3cret" not in str(raised.value) and "mysql://gw:***@db/gw" in str(raised.value)
    # what libpq says of a URL it cannot parse may repeat the password itself
    error = Exception('unexpected spaces found in "s3 cret", use percent-encoded spaces (%20) instead')
    assert _without_password(error, "postgresql://gw:s3%20cret@db/gw") == (
        'unexpected spaces found in "***", use percent-encoded spaces (%20) instead')
    assert mask_url_password("x postgresql://u:p@ss:w/rd@h/d?password=q&a=1 y") == (
        "x postgresql://u:***@h/d?password=***&a=1 y")
    assert mask_url_password("sqlite:var/gateway.sqlite") == "sqlite:var/gateway.sqlite"
