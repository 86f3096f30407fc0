"""Barge-in: ``Registry.flush`` asks every remote party's driver to discard the audio queued toward it."""

import json

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.api import ApiRouter
from gateway.admin.calls import register_calls_api
from gateway.confschema import Secret
from gateway.core.errors import IllegalState
from gateway.media import dtmf_frames

from .harness import Harness


class FlushTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()

    def test_flush_empties_what_is_queued_toward_the_party(self):
        call_id = self.h.talking_call()
        port = self.h.network.party("5551234").leg.port
        port.sink.unregisterProducer()  # the bridge's feed, so the queue holds only what is written here
        for frame in dtmf_frames("5", 500):
            port.sink.write(frame)
        flushed = port.playout.frames_flushed
        snapshot = self.successResultOf(self.h.registry.flush(call_id))
        self.assertEqual(snapshot.state, "TALKING")
        self.assertEqual(port.playout.queued, 0)
        self.assertGreater(port.playout.frames_flushed, flushed + 20)
        self.assertIn(("flush", "ok"), self.h.commands)

    def test_flush_needs_a_connected_call(self):
        call_id = self.h.registry.originate("1003", "5551234").result.call_id  # 1003's phone rings until answered
        self.failureResultOf(self.h.registry.flush(call_id), IllegalState)

    def test_flush_through_the_calls_api(self):
        router = ApiRouter(Secret("t0ken"))
        register_calls_api(router, self.h.registry)
        client = StubTreq(router)
        call_id = self.h.talking_call()
        d = client.request("POST", f"http://admin.test/api/calls/{call_id}/flush",
                           headers={"Authorization": "Bearer t0ken"})
        client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(self.successResultOf(response.content()))["call_id"], call_id)
