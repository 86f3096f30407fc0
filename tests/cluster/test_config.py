"""The [cluster] table: absent by default, its keys checked, and the commented example in
etc/gateway.toml is the defaults."""

import pathlib
import tomllib

import attrs
import pytest

from gateway import config
from gateway.cluster.config import ClusterConfig
from gateway.confschema import ConfigError

ETC = pathlib.Path(__file__).resolve().parent.parent.parent / "etc" / "gateway.toml"


def test_no_cluster_by_default():
    assert config.load(None).cluster is None
    assert config.loads("[gateway]\nnode = 'a'", "x.toml").cluster is None


def test_a_cluster_node():
    cfg = config.loads("[gateway]\nnode = 'edge-1'\n[cluster]\nredis = 'redis://:pw@10.0.0.9:6380/2'\nnode_ttl = 3", "x.toml")
    assert cfg.gateway.node == "edge-1"
    assert cfg.cluster.redis == "redis://:pw@10.0.0.9:6380/2"
    assert (cfg.cluster.node_ttl, cfg.cluster.lease_ttl, cfg.cluster.drain_timeout) == (3.0, 5.0, 60.0)
    assert "pw" not in repr(cfg) + str(cfg)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[cluster]", "x.toml: cluster.redis: missing required key"),
        ("[cluster]\nredis = 'http://h'", "x.toml: cluster.redis: expected redis://host[:port][/db], got scheme 'http'"),
        ("[cluster]\nredis = 'redis://h:70000'", "cluster.redis: not a redis:// URL"),
        ("[cluster]\nredis = 'redis://h/x'", "cluster.redis: the database must be a number"),
        ("[cluster]\nredis = 'redis://h'\nnode_ttl = 0.5", "x.toml: cluster.node_ttl: must be between 1 and 300 seconds, got 0.5"),
        ("[cluster]\nredis = 'redis://h'\ndrain_timeout = -1", "cluster.drain_timeout: must be between 0 and 86400 seconds"),
        ("[cluster]\nredis = 'redis://h'\ncommand_timeout = 0", "cluster.command_timeout: must be between 0.1 and 60 seconds"),
        ("[cluster]\nredis = 'redis://h'\nredis_timeout = 'x'", "cluster.redis_timeout: expected a number"),
        ("[cluster]\nredis = 'redis://h'\nlease_tll = 5", "x.toml: cluster.lease_tll: unknown key"),
    ],
)
def test_errors_name_the_key(text, message):
    with pytest.raises(ConfigError) as caught:
        config.loads(text, "x.toml")
    assert "\n" not in str(caught.value)
    assert message in str(caught.value)


def test_the_commented_table_in_etc_is_the_defaults():
    lines = ETC.read_text().splitlines()
    start = lines.index("# [cluster]")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    data = tomllib.loads("\n".join(block))
    written = config.loads("\n".join(block), "etc").cluster
    assert set(data["cluster"]) == {f.name for f in attrs.fields(ClusterConfig)}
    assert written == ClusterConfig(redis=data["cluster"]["redis"])
