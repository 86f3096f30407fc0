"""Run by the kill -9 test: store one CDR, print ACK once add_cdr has fired, then wait to be killed.

Usage: python cdr_writer.py STORE_URL CALL_ID
"""

import sys

from twisted.internet import defer, task

from gateway.store import open_store


@defer.inlineCallbacks
def main(reactor, url, call_id):
    store = open_store(url, reactor)
    yield store.open()
    yield store.add_cdr(
        {
            "call_id": call_id,
            "node": "writer",
            "direction": "inbound",
            "extension": "101",
            "started_at": "2024-05-01T10:00:00Z",
            "answered_at": None,
            "ended_at": "2024-05-01T10:00:09Z",
            "duration": 9.0,
            "billable_seconds": 0,
            "cause": "no-answer",
            "hangup_by": "gateway",
            "dtmf_count": 0,
            "legs": [],
        }
    )
    sys.stdout.write("ACK\n")
    sys.stdout.flush()
    yield defer.Deferred()  # never fires: the test kills this process


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
