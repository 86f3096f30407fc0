"""Ctrl-C stops the daemon and the demo even when they were started with SIGINT ignored.

A shell starts a background job (``make run &``, ``nohup``) with SIGINT ignored, and a
process inherits that. Twisted installs its SIGINT handler only over Python's default
one, so such a daemon or demo used to ignore Ctrl-C (``kill -INT``) and run on; both now
install their handlers themselves. Reproduced with ``bash -c 'trap "" INT; exec ...'``.
"""

import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor

from gateway.testing import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(120)

#: runs the rest of its command line with SIGINT ignored, as a background job of a shell is
SIGINT_IGNORED = ["bash", "-c", 'trap "" INT; exec "$0" "$@"']


@pytest_twisted.inlineCallbacks
def test_the_daemon_started_with_sigint_ignored_stops_on_sigint_with_status_0(tmp_path):
    admin = free_port()
    proc = GatewayProcess(reactor, tmp_path, GatewayProcess.config(admin))
    proc.admin_port = admin
    try:
        proc.spawn(wrapper=SIGINT_IGNORED)
        yield proc.wait_for_output("gateway gateway started")
        proc.signal("INT")
        code = yield proc.ended.addTimeout(30, reactor)
    finally:
        proc.kill()
    assert code == 0, proc.output
    assert "gateway stopped" in proc.output
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", admin)) != 0


def test_the_demo_started_with_sigint_ignored_stops_on_ctrl_c(tmp_path):
    proc = subprocess.Popen([*SIGINT_IGNORED, sys.executable, "-m", "gateway.demo", "--workdir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out = []
        for line in proc.stdout:  # the test's timeout bounds this
            out.append(line)
            if "status page" in line:
                break
        text = "".join(out)
        assert "demo: every step happened." in text, text
        admin = int(re.search(r"status page\s+http://127\.0\.0\.1:(\d+)/", text).group(1))
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole process group
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, text + rest
        with socket.socket() as s:  # the daemon is gone
            assert s.connect_ex(("127.0.0.1", admin)) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
