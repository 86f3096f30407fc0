"""The DTMF digits the core plays and the limits adapters check against, shared without the registry.

Adapters validate a peer's digits with these before they ask the core (which
checks again), so that a limit is written once.
"""

from __future__ import annotations

__all__ = ["DTMF_DIGITS", "MAX_DTMF_DIGITS", "PHONE_KEYS"]

#: every DTMF digit ``send_dtmf`` plays and a driver may report: the keypad's twelve keys and A-D
DTMF_DIGITS = frozenset("0123456789*#ABCD")
#: the twelve keys of a phone keypad (0-9, * and #): the DTMF digits an adapter may be limited to
#: (HIS 004's senddtmf; send_dtmf itself also takes A-D)
PHONE_KEYS = frozenset("0123456789*#")
#: the most DTMF digits one send_dtmf plays
MAX_DTMF_DIGITS = 64
