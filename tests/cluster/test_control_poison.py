"""A call record whose snapshot is malformed (a list where an object belongs), written by any client of
the shared Redis, costs only itself: the other nodes' calls are still seen."""

import json

from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster import keys
from gateway.cluster.control import snapshot_from_json

from . import test_control as _control



class PoisonRecordTests(SynchronousTestCase):
    setUp = _control.ControlTests.setUp
    tearDown = _control.ControlTests.tearDown
    let_pass = _control.ControlTests.let_pass
    inbound_on_a = _control.ControlTests.inbound_on_a
    def test_snapshot_from_json_refuses_a_non_object_with_type_error(self):
        for bad in ([], {"state": "TALKING", "legs": [["x"]]}, {"state": "TALKING", "parties": [1]}):
            self.assertRaises(TypeError, snapshot_from_json, bad)

    def test_a_malformed_snapshot_does_not_hide_the_other_calls(self):
        call_id = self.inbound_on_a()
        good = json.loads(self.server.store.get(keys.call(call_id)))
        for n, snapshot in enumerate(([], {**good["data"]["snapshot"], "legs": [["x"]]})):
            evil = dict(good, id=f"evil{n}", owner="zz", data={"snapshot": snapshot})
            self.server.store.set(keys.call(f"evil{n}"), json.dumps(evil))
        self.b.control.remote = {}  # forget what the events told: the next read of the records must find it
        self.let_pass(1.0)
        self.assertEqual([c.call_id for c in self.b.control.calls()], [call_id])
