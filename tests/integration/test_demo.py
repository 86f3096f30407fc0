"""``make demo``: the step runner, the demo configuration, and ``python -m gateway.demo --once`` end to end."""

import io
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import loads
from gateway.demo import Narrator, Script, Step, StepFailed, Story, demo_config

#: seconds the whole demo may take (it needs about 10)
DEMO_TIMEOUT = 100


def _done():
    return defer.succeed(None)


def _fail(reason):
    async def run():
        raise StepFailed(reason)

    return run


class ScriptTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.out = io.StringIO()
        self.played = []

    def step(self, name, run=None):
        async def record():
            self.played.append(name)
            if run is not None:
                await run()

        return Step(name, record)

    def play(self, stories):
        script = Script(Narrator(self.clock, self.out), _done)
        return self.successResultOf(defer.Deferred.fromCoroutine(script.play(stories)))

    def test_every_step_happening_leaves_nothing_missing(self):
        missing = self.play([Story((self.step("a1"), self.step("a2"))), Story((self.step("b1"),))])
        self.assertEqual((missing, self.played), ([], ["a1", "a2", "b1"]))

    def test_a_failed_step_ends_its_story_and_the_next_story_still_plays(self):
        missing = self.play([
            Story((self.step("a1"), self.step("a2", _fail("no conversation.held within 20 s")), self.step("a3"))),
            Story((self.step("b1"),)),
        ])
        self.assertEqual(missing, ["a2: no conversation.held within 20 s", "a3: not reached"])
        self.assertEqual(self.played, ["a1", "a2", "b1"])
        self.assertIn("MISSING    a2: no conversation.held within 20 s", self.out.getvalue())

    def test_an_essential_story_failing_skips_every_later_story(self):
        missing = self.play([
            Story((self.step("s1", _fail("the daemon exited")),), essential=True),
            Story((self.step("b1"), self.step("b2"))),
        ])
        self.assertEqual(missing, ["s1: the daemon exited", "b1: not reached", "b2: not reached"])
        self.assertEqual(self.played, ["s1"])

    def test_an_unexpected_error_is_a_missing_step_too(self):
        async def broken():
            raise KeyError("call_id")

        missing = self.play([Story((self.step("a1", broken),))])
        self.assertEqual(missing, ["a1: 'call_id'"])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class DemoConfigTests(SynchronousTestCase):
    def test_the_demo_configuration_is_valid_and_enables_every_adapter(self):
        state_dir = '/tmp/a "demo"\\dir/var'
        text = demo_config(state_dir, admin=1, optimaccs=2, patriot=3, his=4, chat=5, inbound_every=15.0)
        config = loads(text, "demo")
        self.assertEqual((config.gateway.state_dir, config.store.url), (state_dir, f"sqlite:{state_dir}/gateway.sqlite"))
        self.assertTrue(all(section.enabled for section in (config.optimaccs, config.cti, config.chat)))
        self.assertTrue(config.patriot.bridge.enabled)
        self.assertEqual(config.cti.connect, "tcp:host=127.0.0.1:port=4")
        self.assertEqual(config.chat.url, "http://127.0.0.1:5")
        self.assertEqual([(r.did, r.to) for r in config.routes],
                         [("0215550100", "extension:1001"), ("0215550999", "app:echo")])


@pytest.fixture
def demo_process(tmp_path):
    """Starts ``python -m gateway.demo`` in its own session; the whole group is killed at teardown."""
    made = []

    def start(*args):
        proc = subprocess.Popen([sys.executable, "-m", "gateway.demo", "--workdir", str(tmp_path), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        made.append(proc)
        return proc

    yield start
    for proc in made:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_demo_once_plays_every_step_and_cleans_up(demo_process, tmp_path):
    proc = demo_process("--once")
    out, _ = proc.communicate(timeout=DEMO_TIMEOUT)
    assert proc.returncode == 0, out
    assert "demo: every step happened." in out and "MISSING" not in out
    for room in ("optimaccs", "cti", "patriot", "chat"):
        assert re.search(rf"^\s+\d+\.\ds  {room} ", out, re.MULTILINE), f"nothing narrated for {room}:\n{out}"
    for evidence in ("conversation.held", "the provider received 1, 2, 3", "consult of",
                     "interaction.focuschanged to primary", "both her conversations end and are disposed",
                     "the gateway rings the operator's phone first", "operator's phone TALKING, 5550199 DIALING",
                     "opens conversation", "sends the reply as SMS"):
        assert evidence in out, out

    admin = int(re.search(r"admin API on http://127\.0\.0\.1:(\d+)/", out).group(1))
    chat = int(re.search(r"chat server simulator listening on 127\.0\.0\.1:(\d+)", out).group(1))
    for port in (admin, chat):  # the daemon and the chat server simulator are gone
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
    assert "gateway stopped" in (tmp_path / "gateway.log").read_text()
    assert (tmp_path / "gateway.toml").exists() and (tmp_path / "var" / "admin-token").exists()


def test_demo_once_names_the_missing_step_and_exits_1(demo_process):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    with busy:
        proc = demo_process("--once", "--admin-port", str(busy.getsockname()[1]))
        out, _ = proc.communicate(timeout=DEMO_TIMEOUT)
    assert proc.returncode == 1, out
    from gateway.demo import SIPP

    steps = 25 + (2 if SIPP else 0)  # the SIP call's two steps are played when sipp is installed
    assert f"demo: {steps} step(s) did not happen:" in out
    assert re.search(r"^  - gateway: the daemon starts .*: the daemon did not start: gateway: cannot listen on"
                     r" tcp:\d+:interface=127\.0\.0\.1 \(admin\): Address already in use", out, re.MULTILINE), out
    assert "  - chat: an agent's reply goes out as an SMS to +15550142: not reached" in out
