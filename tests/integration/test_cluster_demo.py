"""``make cluster-demo``: ``python -m gateway.demo_cluster --once`` end to end (a real Redis and PostgreSQL,
two gateway nodes, the chat server simulator), and the demo staying up until SIGTERM."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from gateway.config import loads
from gateway.demo_cluster import node_config

#: seconds the whole demo may take (it needs about 10)
DEMO_TIMEOUT = 120

pytestmark = pytest.mark.timeout(DEMO_TIMEOUT + 30)


@pytest.fixture
def cluster_demo(tmp_path):
    """Starts ``python -m gateway.demo_cluster`` in its own session; the whole group is killed at teardown."""
    from tests.engines import postgres_bindir, redis_binary

    try:
        redis_binary()
        postgres_bindir()
    except Exception as e:  # the engine fixtures' rule: skipped when missing, failed under CI
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{e} (make engines installs them)")
    made = []

    def start(*args):
        proc = subprocess.Popen([sys.executable, "-m", "gateway.demo_cluster", "--workdir", str(tmp_path), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        made.append(proc)
        return proc

    yield start
    for proc in made:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _gone(out):
    """The admin ports of both nodes, the chat simulator's, Redis's and PostgreSQL's no longer answer."""
    ports = [int(p) for p in re.findall(r"admin API http://127\.0\.0\.1:(\d+)/", out)]
    ports += [int(re.search(r"chat server simulator listening on 127\.0\.0\.1:(\d+)", out).group(1))]
    ports += [int(re.search(r"redis-server on redis://127\.0\.0\.1:(\d+)/0", out).group(1))]
    ports += [int(re.search(r"PostgreSQL on 127\.0\.0\.1:(\d+)", out).group(1))]
    assert len(ports) == 5, out
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers:\n{out}"


def test_cluster_demo_once_plays_every_step_across_the_nodes_and_cleans_up(cluster_demo, tmp_path):
    proc = cluster_demo("--once")
    out, _ = proc.communicate(timeout=DEMO_TIMEOUT)
    assert proc.returncode == 0, out
    assert "cluster demo: every step happened." in out and "MISSING" not in out
    for evidence in (
        "cluster: node node-b sees 2 live node(s); redis up",
        "TALKING, node node-a",
        "-> HELD; node-a, which holds the media, says HELD",
        "node-b reads the CDR written by node-a from PostgreSQL: node node-a, cause normal, hung up by api",
        "holding the chat link, claimed it (SKIP LOCKED, per number) and delivered it: conversation",
        "sends the reply as SMS",
        "node-a's /api/cluster lists node-b as draining",
    ):
        assert evidence in out, out
    assert re.search(r"chat\s+node-[ab]\s+\d+", out), out  # the chat link's lease and its holder
    _gone(out)
    for node in ("node-a", "node-b"):
        assert "gateway stopped" in (tmp_path / node / "gateway.log").read_text()


def test_the_cluster_demo_stays_up_until_sigterm_and_gatewayctl_drives_it(cluster_demo, tmp_path, capsys):
    from gateway import ctl

    proc = cluster_demo()
    lines = []
    deadline = time.monotonic() + DEMO_TIMEOUT
    while not any("keeps running until Ctrl-C" in line for line in lines):
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, "".join(lines)
        lines.append(line)
    time.sleep(1.0)
    assert proc.poll() is None, "".join(lines)
    # gatewayctl against the running nodes, with node-b's configuration (its admin port and token)
    config = str(tmp_path / "node-b" / "gateway.toml")
    assert ctl.main(["--config", config, "cluster"]) == ctl.EXIT_OK
    table = capsys.readouterr().out
    assert table.startswith("cluster: node node-b sees 2 live node(s); redis up\n"), table
    assert re.search(r"^node-a\s+serving\s+\d+ calls", table, re.MULTILINE), table
    assert re.search(r"^node-b \*\s+serving", table, re.MULTILINE), table
    assert ctl.main(["--config", config, "drain", "node-a"]) == ctl.EXIT_OK
    assert capsys.readouterr().out.startswith("node node-a is draining (")
    deadline = time.monotonic() + 10
    while True:
        assert ctl.main(["--config", config, "--json", "cluster"]) == ctl.EXIT_OK
        if json.loads(capsys.readouterr().out)["draining"] == ["node-a"]:
            break
        assert time.monotonic() < deadline, "node-a never shown draining"
        time.sleep(0.2)
    assert ctl.main(["--config", config, "drain", "node-x"]) == ctl.EXIT_NOT_FOUND
    assert "no live node 'node-x'" in capsys.readouterr().err
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    out = "".join(lines) + out
    assert proc.returncode == 0, out
    assert "cluster demo: every step happened." in out
    _gone(out)


def test_node_config_is_a_valid_cluster_node():
    text = node_config("node-a", "/tmp/x", admin=1, optimaccs=2, chat=3, token="t0k",
                       redis_url="redis://127.0.0.1:4/0", store_url="postgresql://gw@127.0.0.1:5/gw")
    config = loads(text, "node-a.toml")
    assert (config.gateway.node, config.cluster.redis, config.store.url) == (
        "node-a", "redis://127.0.0.1:4/0", "postgresql://gw@127.0.0.1:5/gw")
    assert config.chat.enabled and config.chat.url == "http://127.0.0.1:3"
