"""The destinations of one bridge link, and the rule that no event goes out before its init answer.

The bridge creates each destination by sending its ``<kind>.query.init`` to a target, the dot-joined
chain of IDs from the session (``alice.cg.tel.<interaction>.<conversation>``). The client names the
children in its init responses (a session's channel group, a group's channels, a channel's
interactions, an interaction's conversations) or announces them (a new interaction on a channel),
and creates their :class:`Destination` at once, so that events for them can wait: a destination sends
no event before its init query has been answered; until then its events are queued, and they are sent
in the order they were raised as soon as the init response is on the wire
(:meth:`Destination.init_answered`).

A disposed destination, and everything below it, is gone: its target is unknown from then on, and an
event raised on it is dropped with a log line. When the link is lost, the whole tree is disposed; the
next link builds a new one as the bridge initialises its destinations again.
"""

from __future__ import annotations

import typing

import attrs
from twisted.logger import Logger

from gateway.cti import envelope as env
from gateway.cti.names import child_target

log = Logger()


@attrs.define(eq=False)
class Destination:
    """One destination: its ``kind`` and ``target``, its children, and its queue of waiting events.

    ``subject`` is what the destination stands for (the agent of a session, the extension of a
    channel, the call of an interaction or conversation).
    """

    kind: str
    target: str
    tree: "DestinationTree" = attrs.field(repr=False)
    parent: "Destination | None" = attrs.field(default=None, repr=False)
    subject: typing.Any = attrs.field(default=None, repr=False)
    children: dict[str, "Destination"] = attrs.field(factory=dict, repr=False)
    ready: bool = False
    disposed: bool = False
    _queue: list = attrs.field(factory=list, repr=False)

    @property
    def id(self) -> str:
        """The last part of the target."""
        return self.target.rpartition(".")[2]

    def raise_event(self, name: str, body: dict | None = None) -> None:
        """Send the event ``name`` now if the init query was answered, else queue it; drop it if disposed."""
        message = env.event(name, self.target, body)
        if self.disposed:
            log.info("HIS: {target} is disposed; event dropped: {event}", target=self.target, event=message.describe())
        elif self.ready:
            self.tree.send(message)
        else:
            self._queue.append(message)

    def init_answered(self) -> None:
        """The init response has been sent: send the waiting events, in order."""
        self.ready = True
        waiting, self._queue = self._queue, []
        for message in waiting:
            self.tree.send(message)

    def add_child(self, kind: str, child_id: str, subject=None) -> "Destination":
        return self.tree.add(kind, child_target(self.target, child_id), self, subject)

    def dispose(self) -> None:
        self.tree.dispose(self)


class DestinationTree:
    """Every live destination of one link, by target.

    :param send: sends an event envelope on the link.
    """

    def __init__(self, send: typing.Callable[[env.Envelope], None]):
        self.send = send
        self._by_target: dict[str, Destination] = {}
        #: kind -> target -> destination (so that finding the channels costs no look at every call)
        self._by_kind: dict[str, dict[str, Destination]] = {}

    def add(self, kind: str, target: str, parent: Destination | None = None, subject=None) -> Destination:
        """A new destination at ``target``; one already there (and its subtree) is disposed first."""
        if target in self._by_target:
            self.dispose(self._by_target[target])
        destination = Destination(kind, target, self, parent, subject)
        self._by_target[target] = destination
        self._by_kind.setdefault(kind, {})[target] = destination
        if parent is not None:
            parent.children[destination.id] = destination
        return destination

    def get(self, target: str) -> Destination | None:
        return self._by_target.get(target)

    def of_kind(self, kind: str) -> list[Destination]:
        return list(self._by_kind.get(kind, {}).values())

    def dispose(self, destination: Destination) -> None:
        """Forget ``destination`` and everything below it; their queued events are dropped."""
        for child in list(destination.children.values()):
            self.dispose(child)
        destination.disposed = True
        if destination._queue:
            log.info(
                "HIS: {target} disposed with {count} event(s) never sent",
                target=destination.target,
                count=len(destination._queue),
            )
            destination._queue.clear()
        if self._by_target.get(destination.target) is destination:
            del self._by_target[destination.target]
            del self._by_kind[destination.kind][destination.target]
        if destination.parent is not None and destination.parent.children.get(destination.id) is destination:
            del destination.parent.children[destination.id]

    def close(self) -> None:
        """The link is gone: dispose of everything."""
        for destination in list(self._by_target.values()):
            if not destination.disposed:
                self.dispose(destination)
