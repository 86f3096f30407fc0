"""The keypad rules of the core: the DTMF digits it plays, the numbers it dials, and their limits.

Shared without the registry: the registry and the fake of
:mod:`gateway.core.testing` check commands with these, and adapters validate a
peer's digits with them before they ask the core (which checks again), so
that a rule is written once.
"""

from __future__ import annotations

import re

__all__ = ["DIAL_NUMBER", "DTMF_DIGITS", "DTMF_SEQUENCE", "MAX_DTMF_DIGITS", "PHONE_KEYS", "is_dial_number",
           "is_dtmf_sequence"]

#: every DTMF digit ``send_dtmf`` plays and a driver may report: the keypad's twelve keys and A-D
DTMF_DIGITS = frozenset("0123456789*#ABCD")
#: the twelve keys of a phone keypad (0-9, * and #): the DTMF digits an adapter may be limited to
#: (HIS 004's senddtmf; send_dtmf itself also takes A-D)
PHONE_KEYS = frozenset("0123456789*#")
#: the most DTMF digits one send_dtmf plays
MAX_DTMF_DIGITS = 64

# Both patterns end in \Z, not $ ($ also matches before a final newline: "555\n" is no number), and
# are used with fullmatch.
#: a number the core dials through ``[pbx] driver`` (originate, transfer and conference to anything
#: but an extension): an optional ``+``, then 1-40 of the phone keys 0-9, * and #
DIAL_NUMBER = re.compile(r"\+?[0-9*#]{1,40}\Z")
#: one or more :data:`DTMF_DIGITS` (upper case; :data:`MAX_DTMF_DIGITS` is checked apart)
DTMF_SEQUENCE = re.compile(r"[0-9*#A-D]+\Z")


def is_dial_number(text: str) -> bool:
    """Whether ``text`` as a whole is a number the core dials (:data:`DIAL_NUMBER`)."""
    return DIAL_NUMBER.fullmatch(text) is not None


def is_dtmf_sequence(text: str) -> bool:
    """Whether ``text`` as a whole is one or more DTMF digits (:data:`DTMF_SEQUENCE`; no length limit)."""
    return DTMF_SEQUENCE.fullmatch(text) is not None
