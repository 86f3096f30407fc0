"""A counting door: an ICallControl that passes everything to the real one and notes each query asked
and each command given.

The adapters' tests use it to hold them to diffing the snapshots the core hands them with each
event, instead of asking the core again (issue 13, item 2).
"""

from __future__ import annotations

from zope.interface import implementer

from gateway.core.interfaces import ICallControl

#: the queries of ICallControl: what an adapter would pull or scan the calls with
QUERIES = ("calls", "call", "calls_for", "active_call_for", "status", "leg_states")
#: the commands of ICallControl
COMMANDS = ("originate", "answer", "reject", "cancel", "hangup", "hold", "retrieve", "mute", "unmute", "transfer",
            "conference", "remove_party", "send_dtmf", "flush", "dispose")


@implementer(ICallControl)
class CountingCalls:
    """``calls`` (the real ICallControl) with every query noted in :attr:`asked` (name, args) and
    every command in :attr:`commands` (name, args, keyword arguments)."""

    def __init__(self, calls) -> None:
        self._calls = calls
        self.asked: list[tuple] = []
        self.commands: list[tuple] = []

    def reset(self) -> None:
        self.asked.clear()
        self.commands.clear()

    def __getattr__(self, name):
        attribute = getattr(self._calls, name)
        if name in QUERIES:
            def query(*args, **kwargs):
                self.asked.append((name, *args))
                return attribute(*args, **kwargs)

            return query
        if name in COMMANDS:
            def command(*args, **kwargs):
                self.commands.append((name, args, kwargs))
                return attribute(*args, **kwargs)

            return command
        return attribute

    @property
    def extensions(self):
        return self._calls.extensions
