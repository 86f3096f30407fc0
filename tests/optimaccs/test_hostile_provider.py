"""A hostile outbound provider: every case of tests/corpus/optimaccs_outbound.json fails (or leaves) only its
own call, typed and logged, with its CDR written, while a bystander call through the same driver goes on.

REST cases answer ``POST /pbx/call`` with the case's status and body (a twisted.web resource through
StubTreq); media cases are sent by the fake provider (``gateway.sim.optimaccs``) on the call's own
WebSocket, while it is dialling or talking.
"""

import pathlib
import sys

from treq.testing import StubTreq
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.core import events as ev
from gateway.drivers.optimaccs_api import ProviderApi, media_url
from gateway.drivers.optimaccs_out import DIALING

from .outbound_bench import Bench
from .support import LogCapture, Reply

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from corpus import load  # noqa: E402

BYSTANDER = "6281230001"
VICTIM = "6281234567"
RINGING_VICTIM = "6281118888"  # the fake provider lets it ring until the timeout


def rest_cases():
    return [case for case in load("optimaccs_outbound") if case.extra["kind"] == "rest"]


def media_cases():
    return [case for case in load("optimaccs_outbound") if case.extra["kind"] == "media"]


class HostileRestTests(SynchronousTestCase):
    def test_every_bad_reply_is_a_typed_failure_of_the_request(self):
        bench = Bench(self)
        for case in rest_cases():
            ((body, _),) = case.built()
            api = ProviderApi(StubTreq(Reply(case.extra["status"], body)), bench.clock, bench.config.outbound,
                              "pcm16")
            placed = api.place_call(VICTIM)
            placed.addCallback(lambda p: media_url(p.endpoint_url, p.session_id))  # what the leg does next
            failure = self.failureResultOf(placed)
            self.assertEqual(failure.value.kind, case.detail, f"{case.name}: {failure.value}")
            self.assertIn(case.extra["reason"], str(failure.value), case.name)
            self.assertLess(len(str(failure.value)), 600, case.name)
            str(failure.value).encode("utf-8")  # fit for a log, the API and the store

    def test_every_bad_reply_fails_only_its_call_logged_counted_and_with_its_cdr(self):
        logs = LogCapture(self)
        bench = Bench(self)
        bystander = bench.talking(BYSTANDER, extension="1002")
        good_http = bench.driver.api._http
        for number, case in enumerate(rest_cases()):
            ((body, _),) = case.built()
            bench.driver.api._http = StubTreq(Reply(case.extra["status"], body))
            call_id = bench.registry.originate("1001", VICTIM).result.call_id
            bench.run(1.5)
            bench.driver.api._http = good_http
            snapshot = bench.registry.call(call_id)
            self.assertEqual((snapshot.state, snapshot.cause), ("RELEASED", "failed"), case.name)
            (failed,) = bench.of(ev.LegFailed, call_id)
            self.assertIn(case.extra["reason"], failed.reason, case.name)
            self.assertIn(call_id, [cdr["call_id"] for cdr in bench.cdrs], case.name)
            self.assertEqual(bench.registry.call(bystander).state, "TALKING", case.name)
        self.assertIn("the provider did not place the call (bad_reply)", logs.text())
        for kind in {case.detail for case in rest_cases()}:
            self.assertEqual(bench.metric("gateway_optimaccs_outbound_failed_total", kind=kind),
                             sum(case.detail == kind for case in rest_cases()), kind)
        heard = bench.session(0).audio_bytes_received
        bench.run(0.5)
        self.assertGreater(bench.session(0).audio_bytes_received, heard)  # the bystander's audio still flows
        self.assertEqual(logs.tracebacks, [])


class HostileMediaTests(SynchronousTestCase):
    def victim(self, bench, case):
        """The victim call, dialling or talking as the case says; (call id, its fake session)."""
        if case.extra["when"] == "talking":
            call_id = bench.talking(VICTIM)
        else:
            call_id = bench.registry.originate("1001", RINGING_VICTIM).result.call_id
            bench.run(1.6)
            self.assertEqual(bench.driver.legs[-1].stage, DIALING)
        return call_id, bench.session()

    def send(self, bench, session, case):
        link = session._link
        for data, binary in case.built():
            link.sendMessage(data, isBinary=binary)
        if "binary_bytes" in case.extra:
            link.sendMessage(bytes(case.extra["binary_bytes"]), isBinary=True)
        then = case.extra.get("then")
        if then == "drop":
            link.transport.loseConnection()
        elif then:
            link.sendCloseFrame(int(then.partition(":")[2]), isReply=False)
        bench.run(1.5)

    def test_every_case_fails_or_leaves_only_its_own_call(self):
        for case in media_cases():
            with self.subTest(case.name):
                self.check(case)

    def check(self, case):
        logs = LogCapture(self)
        bench = Bench(self)
        bystander = bench.talking(BYSTANDER, extension="1002")
        call_id, session = self.victim(bench, case)
        self.send(bench, session, case)
        snapshot = bench.registry.call(call_id)
        where = f"{case.name}: {snapshot}"
        if case.outcome == "call-failed":
            self.assertEqual(snapshot.cause, "failed", where)
            (failed,) = bench.of(ev.LegFailed, call_id)
            self.assertIn(case.extra["reason"], failed.reason, where)
            self.assertEqual(bench.metric("gateway_optimaccs_outbound_failed_total", kind=case.detail), 1, where)
            self.assertIn(call_id, [cdr["call_id"] for cdr in bench.cdrs], where)
        elif case.outcome == "call-ended":
            self.assertEqual(snapshot.cause, case.detail, where)
            self.assertIn(call_id, [cdr["call_id"] for cdr in bench.cdrs], where)
        else:
            self.assertEqual(case.outcome, "dropped", where)
            self.assertEqual(snapshot.state, "TALKING", where)
            self.assertEqual(bench.metric("gateway_ignored_messages_total", adapter="optimaccs-outbound",
                                          reason="unknown"), len(case.frames), where)
        self.assertEqual(bench.registry.call(bystander).state, "TALKING", where)
        heard = bench.session(0).audio_bytes_received
        bench.run(0.5)
        self.assertGreater(bench.session(0).audio_bytes_received, heard, where)
        self.assertEqual(logs.tracebacks, [], where)
        bench.run(bench.config.cdr_wait + 1.5, step=0.1)  # a call over without its cdr lets go after cdr_wait
        self.assertEqual(len(bench.driver.legs), 2 if case.outcome == "dropped" else 1, where)

    def test_a_lone_surrogate_closes_the_media_websocket_1007_and_hangs_up_by_rest(self):
        logs = LogCapture(self)
        bench = Bench(self)
        call_id = bench.talking(VICTIM)
        link = bench.session()._link
        link.sendMessage(b'{"event":"dialStatus","data":{"status":"\\ud800"}}', isBinary=False)
        bench.run(1.5)
        self.assertEqual(link.remoteCloseCode, 1007)  # the provider saw the gateway close 1007
        self.assertIn("the provider broke the protocol", logs.text())
        self.assertIn("/pbx/hangup", [r.path for r in bench.provider.requests])
        self.assertIn("data.status", bench.of(ev.LegFailed, call_id)[0].reason)

    def test_garbage_cause_codes_are_stored_verbatim_with_the_call_ended_normally(self):
        bench = Bench(self)
        codes = {}
        for code in ("--16", "\u00b2", "7" * 5000):
            call_id = bench.talking(VICTIM)
            bench.session()._link.sendMessage(
                ('{"event":"cdr","data":{"disposition":"ANSWERED","hangupCauseCode":"%s"}}' % code).encode(),
                isBinary=False)
            bench.session()._link.sendMessage(b'{"event":"hangup"}', isBinary=False)
            bench.run(1.5)
            self.assertEqual(bench.registry.call(call_id).cause, "remote_hangup")
            codes[call_id] = code
        stored = {call_id: data for call_id, _, data in bench.provider_cdrs}
        self.assertEqual({call_id: (stored[call_id]["hangupCauseCode"], "hangupCauseCodeInt" in stored[call_id])
                          for call_id in codes}, {call_id: (code, False) for call_id, code in codes.items()})

    def test_10000_unknown_events_log_a_bounded_number_of_lines(self):
        logs = LogCapture(self)
        bench = Bench(self)
        call_id = bench.talking(VICTIM)
        for _ in range(10_000):
            bench.session()._link.sendMessage(b'{"event":"bogus"}', isBinary=False)
        bench.run(0.1)
        self.assertEqual(bench.registry.call(call_id).state, "TALKING")
        self.assertEqual(bench.metric("gateway_ignored_messages_total", adapter="optimaccs-outbound",
                                      reason="unknown"), 10_000)
        self.assertLessEqual(len([e for e in logs.events if "bogus" in formatEvent(e)]), 5)
