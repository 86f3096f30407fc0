"""Run by the PostgreSQL kill -9 test: store SMS and CDRs one after another through the daemon's store
(a GuardedStore over ``open_store(url)``), print ``ACK <uid>`` the moment each add has fired, and go on
until killed.

Usage: python sms_writer.py STORE_URL NODE
"""

import sys

from twisted.internet import defer, task

from gateway.store import SmsRecord, open_store


@defer.inlineCallbacks
def main(reactor, url, node):
    store = open_store(url, reactor)
    yield store.open()
    n = 0
    while True:
        uid = f"{node}-{n}"
        yield defer.gatherResults([
            store.add_sms(SmsRecord(uid, "inbound", f"+6281{n % 3}", f"sms {n}", "2024-05-01T10:00:00Z")),
            store.add_cdr({"call_id": uid, "node": node, "ended_at": "2024-05-01T10:00:09Z", "cause": "normal"}),
        ])
        sys.stdout.write(f"ACK {uid}\n")
        sys.stdout.flush()
        n += 1


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
