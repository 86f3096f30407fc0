"""The README's "first ten minutes", run as written: its command blocks, from a fresh working directory.

Block 1 runs against the daemon on its embedded defaults (what ``make run`` starts: admin on
127.0.0.1:8080); block 4 (the ``gatewayctl`` lines) against ``make demo``'s daemon, with ``<id>``
replaced by the call the block's own ``dial`` line placed. Every command must exit 0. Commands are
read from README.md itself, so the page cannot drift from what works.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(150)

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
SECTION = re.compile(r"^## Your first ten minutes\n(.*?)^## ", re.S | re.M)
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def readme_blocks() -> list[list[list[str]]]:
    """The section's ``sh`` blocks, each a list of commands split into words (comments dropped)."""
    section = SECTION.search((ROOT / "README.md").read_text("utf-8")).group(1)
    blocks = []
    for block in BLOCK.findall(section):
        commands = [shlex.split(line, comments=True) for line in block.splitlines()]
        blocks.append([words for words in commands if words])
    return blocks


def program(word: str) -> str:
    """A command's program as the reader has it: ``.venv/bin/X`` or an activated venv's ``X``."""
    name = word.removeprefix(".venv/bin/")
    return str(BIN / name) if (BIN / name).exists() else name


def run(words: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    argv = [program(words[0]), *words[1:]]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{shlex.join(words)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def spawn():
    """Start a process group writing to ``log`` (a path); killed at teardown if still running."""
    started = []

    def start(argv, cwd, log):
        with open(log, "w") as out:
            proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_readme_has_the_blocks_this_test_runs():
    first, gatewayctl = readme_blocks()
    assert [words[0] for words in first] == ["curl", ".venv/bin/gatewayctl"]
    assert all(words[:3] == ["gatewayctl", "--config", "var/demo/gateway.toml"] for words in gatewayctl)


def test_step_1_against_the_daemon_on_its_embedded_defaults(tmp_path, spawn):
    first, _ = readme_blocks()
    daemon = spawn([str(BIN / "twistd"), "--nodaemon", "--pidfile=", "gateway"], tmp_path, tmp_path / "daemon.log")
    wait_for(lambda: subprocess.run(["curl", "-sf", "http://127.0.0.1:8080/healthz"],
                                    capture_output=True).returncode == 0, "the daemon's /healthz")
    wait_for(lambda: subprocess.run(["curl", "-sf", "http://127.0.0.1:8080/readyz"],
                                    capture_output=True).returncode == 0, "the daemon to be ready")
    outputs = [run(words, tmp_path).stdout for words in first]
    assert '"ready": true' in outputs[0] or '"ready":true' in outputs[0]
    assert "optimaccs" in outputs[1]
    daemon.send_signal(signal.SIGINT)  # Ctrl-C stops it cleanly
    assert daemon.wait(timeout=30) == 0, (tmp_path / "daemon.log").read_text()


def test_step_4_gatewayctl_against_the_demo(tmp_path, spawn):
    _, gatewayctl = readme_blocks()
    demo = spawn([sys.executable, "-m", "gateway.demo"], tmp_path, tmp_path / "demo.log")
    wait_for(lambda: "keeps running until Ctrl-C" in (tmp_path / "demo.log").read_text(), "the demo's scenario", 100)
    call_id = None
    for words in gatewayctl:
        if "<id>" in words:
            words = [call_id if word == "<id>" else word for word in words]
        done = run(words, tmp_path)
        if words[3] == "dial":
            call_id = re.search(r"\b([0-9a-f]{16})\b", done.stdout).group(1)
    assert call_id is not None, "the block's dial line placed no call"
    demo.send_signal(signal.SIGINT)
    assert demo.wait(timeout=60) == 0, (tmp_path / "demo.log").read_text()[-3000:]
