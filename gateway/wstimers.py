"""Autobahn's WebSocket timers on a given reactor (a ``task.Clock`` in tests), not txaio's global one.

An Autobahn factory runs its protocols' opening-handshake timeout, auto-ping
and pong timeouts and closing-handshake timeout through the factory's
``_batched_timer``, which Autobahn makes with txaio's global reactor (whatever
``txaio.config.loop`` says). Library code takes its reactor as a parameter
(the house rule), so every WebSocket factory of the gateway is given a
:class:`ReactorTimer` on its own reactor by :func:`use_reactor`: in the daemon
that is the same reactor, in tests the timers fire on the test's clock.

The one timer Autobahn still takes from txaio's global reactor is a client's
wait for the server to drop TCP after a closing handshake
(``serverConnectionDropTimeout``).

Used by the Patriot adapters (``gateway.patriot``; ``gateway.patriot.session``
re-exports :class:`ReactorTimer`) and by OptimaCCS (the inbound-call server's
factory and the outbound calls' media WebSocket factories).
"""

from __future__ import annotations

__all__ = ["ReactorTimer", "use_reactor"]


class ReactorTimer:
    """Autobahn's per-factory timer (``IBatchedTimer``) on a given reactor, to the exact delay.

    Autobahn makes one with txaio's global reactor; a factory given this one as ``_batched_timer``
    runs its handshake, ping and close timers on its own reactor (a ``task.Clock`` in tests). The
    only timer Autobahn leaves on the global reactor is the client's wait for the server to drop
    TCP after a closing handshake it started (``serverConnectionDropTimeout``).
    """

    def __init__(self, reactor):
        self._reactor = reactor

    def call_later(self, delay, func, *args, **kwargs):
        return self._reactor.callLater(delay, func, *args, **kwargs)


def use_reactor(factory, reactor):
    """Put ``factory``'s Autobahn timers (handshake, ping, close) on ``reactor``; returns the factory."""
    factory._batched_timer = ReactorTimer(reactor)
    return factory
