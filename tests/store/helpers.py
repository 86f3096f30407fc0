"""CDRs as the call core builds them, for the store and admin tests."""


def make_cdr(call_id, ended_at="2024-05-01T10:00:30Z", **extra):
    """A complete CDR for ``call_id``; ``extra`` adds or replaces keys."""
    cdr = {
        "call_id": call_id,
        "node": "gw1",
        "direction": "inbound",
        "extension": "101",
        "started_at": "2024-05-01T10:00:00Z",
        "answered_at": "2024-05-01T10:00:05Z",
        "ended_at": ended_at,
        "duration": 30.0,
        "billable_seconds": 25,
        "cause": "normal",
        "hangup_by": "remote",
        "dtmf_count": 2,
        "legs": [{"leg_id": f"{call_id}-a", "driver": "sim", "state": "RELEASED"}],
    }
    cdr.update(extra)
    return cdr
