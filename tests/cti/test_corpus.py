"""tests/corpus/his.json, case by case: the Bridge Client (real registry) against the simulator, in memory.

Each case gets a fresh client and simulator, logged in (and, for ``"setup": "talking"``, with a
talking call whose conversation target replaces ``{conversation}`` in the frames). The frames go out
through :meth:`gateway.sim.his.HisBridgeSim.send_hostile`, which reports the client's answers to them;
the lead's replay against the real daemon reads the same file.
"""

import pathlib
import sys

from gateway.sim.his import SimulatorError

from .test_client import Bridge

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from corpus import his_stream, load  # noqa: E402

CASES = load("his")


class CorpusTests(Bridge):
    def test_the_corpus_is_well_formed(self):
        self.assertGreaterEqual(len(CASES), 30)
        for case in CASES:
            self.assertIn(case.outcome, ("failure-response", "dropped", "reconnect"), case.name)
            if case.outcome == "failure-response":
                self.assertIn("requestId", case.extra, case.name)

    def test_every_case(self):
        for case in CASES:
            with self.subTest(case=case.name):
                self.replay(case)

    def replay(self, case):
        self.setUp()
        self.connect()
        conversation = self.talking()[2] if case.extra.get("setup") == "talking" else None
        d = self.sim.send_hostile(his_stream(case, conversation))
        self.flush()
        if case.outcome == "reconnect":
            self.failureResultOf(d, SimulatorError)
            self.assertFalse(self.sim.connected, "the client dropped the link")
        else:
            answers = self.successResultOf(d)
            self.assertTrue(self.sim.connected, "the link carries on")
            if case.outcome == "dropped":
                self.assertEqual(answers, [])
            else:
                (header,) = answers
                self.assertEqual((header["type"], header["result"]), ("cti.response", "FAILURE"))
                self.assertEqual(header["requestId"], case.extra["requestId"])
                self.assertIn(case.extra.get("error", ""), header["errorMessage"])
                if conversation is not None:
                    self.assertEqual(header["target"], conversation)
            if conversation is not None:
                self.assertTrue(self.send("hold").ok, "the call is still under control")
        self.assertEqual(self.sim.violations, [])
