"""The [sip] section and [[sip.trunks]]: defaults, validation with errors naming the key, sip: devices."""

import pytest

from gateway import config
from gateway.confschema import ConfigError
from gateway.sip.config import parse_proxy, parse_rtp_ports

BASE = """
[[extensions]]
id = "1001"
device = "sim"
"""

TRUNK = """
[sip]
listen = "udp:5080:interface=127.0.0.1"
rtp_ports = "20000-20100"
media_timeout = 10
[[sip.trunks]]
name = "carrier"
proxy = "udp:127.0.0.1:5090"
register = true
username = "gw"
password = "s3cret"
expires = 600
"""


def load(text):
    return config.loads(text, "test.toml")


def test_absent_sip_section_is_off_and_the_defaults_have_none():
    assert load(BASE).sip is None
    assert config.load(None).sip is None


def test_a_full_sip_section():
    cfg = load(BASE + TRUNK)
    assert cfg.sip.listen == "udp:5080:interface=127.0.0.1"
    assert parse_rtp_ports(cfg.sip.rtp_ports) == (20000, 20100)
    assert cfg.sip.media_timeout == 10.0
    trunk = cfg.sip.trunk("carrier")
    assert trunk.register and trunk.username == "gw" and trunk.password.reveal() == "s3cret"
    assert "s3cret" not in repr(cfg)
    assert trunk.address == ("127.0.0.1", 5090)


def test_sip_device_and_pbx_driver():
    cfg = load(TRUNK + '[pbx]\ndriver = "sip"\n[[extensions]]\nid = "1001"\ndevice = "sip:carrier:+15550100"\n')
    assert cfg.pbx.driver == "sip"


@pytest.mark.parametrize("text, path, problem", [
    (BASE + '[sip]\nlisten = "sctp:5060"\n', "sip.listen", "udp|tcp"),
    (BASE + '[sip]\nrtp_ports = "2000-1000"\n', "sip.rtp_ports", "low < high"),
    (BASE + '[sip]\nrtp_ports = "ten"\n', "sip.rtp_ports", "<low>-<high>"),
    (BASE + '[sip]\nmedia_timeout = -1\n', "sip.media_timeout", "0 (off)"),
    (BASE + '[sip]\npublic_address = "gw.example"\n', "sip.public_address", "IPv4"),
    (BASE + '[sip]\n[[sip.trunks]]\nname = "a"\n', "sip.trunks[0].proxy", "missing"),
    (BASE + '[sip]\n[[sip.trunks]]\nname = "a"\nproxy = "10.0.0.5"\n', "sip.trunks[0].proxy", "udp:<host>"),
    (BASE + '[sip]\n[[sip.trunks]]\nname = "a"\nproxy = "tcp:10.0.0.5"\n', "sip.trunks[0].proxy", "UDP only"),
    (BASE + '[sip]\n[[sip.trunks]]\nname = "a"\nproxy = "udp:h:99999"\n', "sip.trunks[0].proxy", "port"),
    (BASE + '[sip]\n[[sip.trunks]]\nname = "a"\nproxy = "udp:h"\nregister = true\n', "sip.trunks[0].username",
     "register = true"),
    (BASE + '[sip]\n[[sip.trunks]]\nname = "a"\nproxy = "udp:h"\nusername = "u"\n', "sip.trunks[0].password",
     "username"),
    (BASE + '[sip]\n[[sip.trunks]]\nname = "a"\nproxy = "udp:h"\nexpires = 5\n', "sip.trunks[0].expires", "60"),
    (BASE + '[sip]\n[[sip.trunks]]\nname = "a"\nproxy = "udp:h"\n[[sip.trunks]]\nname = "a"\nproxy = "udp:h"\n',
     "sip.trunks[1].name", "duplicate"),
    (BASE + '[sip]\n[[sip.trunks]]\nname = "a"\nproxy = "udp:h"\nsecret = "x"\n', "sip.trunks[0].secret",
     "unknown key"),
    (TRUNK + '[[extensions]]\nid = "1"\ndevice = "sip:other:100"\n', "extensions[0].device", "no [[sip.trunks]]"),
    (TRUNK + '[[extensions]]\nid = "1"\ndevice = "sip:100"\n', "extensions[0].device", "sip:<trunk>:<number>"),
    (TRUNK + '[[extensions]]\nid = "1"\ndevice = "sip:carrier:1 2"\n', "extensions[0].device", "number"),
    ('[[extensions]]\nid = "1"\ndevice = "sip:carrier:100"\n', "extensions[0].device", "needs the [sip]"),
    (BASE + '[pbx]\ndriver = "sip"\n', "pbx.driver", "at least one"),
    (BASE + '[pbx]\ndriver = "sip"\n[sip]\n', "pbx.driver", "at least one"),
])
def test_bad_sip_config_names_the_key(text, path, problem):
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert caught.value.path == path, str(caught.value)
    assert problem in caught.value.problem


def test_the_password_never_appears_in_an_error():
    with pytest.raises(ConfigError) as caught:
        load(BASE + '[sip]\n[[sip.trunks]]\nname = "a b"\nproxy = "udp:h"\nusername = "u"\npassword = "hunter2"\n')
    assert "hunter2" not in str(caught.value)


def test_parsers():
    assert parse_proxy("udp:sip.example.net") == ("udp", "sip.example.net", 5060)
    assert parse_proxy("UDP:10.0.0.5:5070") == ("udp", "10.0.0.5", 5070)
    with pytest.raises(ValueError):
        parse_rtp_ports("1000-2000")  # below 1024
