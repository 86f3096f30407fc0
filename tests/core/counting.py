"""A counting door: an ICallControl that passes everything to the real one and notes each query asked.

The adapters' tests use it to hold them to diffing the snapshots the core hands them with each
event, instead of asking the core again (issue 13, item 2).
"""

from __future__ import annotations

from zope.interface import implementer

from gateway.core.interfaces import ICallControl

#: the queries of ICallControl: what an adapter would pull or scan the calls with
QUERIES = ("calls", "call", "calls_for", "active_call_for", "status", "leg_states")


@implementer(ICallControl)
class CountingCalls:
    """``calls`` (the real ICallControl) with every query noted in :attr:`asked` (name, args)."""

    def __init__(self, calls) -> None:
        self._calls = calls
        self.asked: list[tuple] = []

    def reset(self) -> None:
        self.asked.clear()

    def __getattr__(self, name):
        attribute = getattr(self._calls, name)
        if name not in QUERIES:
            return attribute

        def query(*args, **kwargs):
            self.asked.append((name, *args))
            return attribute(*args, **kwargs)

        return query

    @property
    def extensions(self):
        return self._calls.extensions
