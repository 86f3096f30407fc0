"""The protocol-agnostic call core: calls, legs, the registry, routing, CDRs (no I/O at all).

A map of the public API (adapters use these; everything else is internal). Adapters hold the
registry as an :class:`~gateway.core.interfaces.ICallControl` (commands, queries, subscribe) and drivers
as an :class:`~gateway.core.interfaces.IInboundCalls`; neither imports :mod:`gateway.core.registry`.

``gateway.core.registry.Registry(clock, drivers, *, extensions, router, media, pbx_driver, node,
cdr_sink, provider_cdr_sink, retention=60, on_command=None)`` — built by
``gateway.callservice.make_service(ctx)`` and found as ``ctx.registry``.

- Commands (each returns a Deferred firing with a :class:`CallSnapshot` once done, or failing with a
  :class:`CallError`): ``originate(extension_id, number, *, attributes=None)``, ``answer(call_id)``,
  ``reject(call_id, *, by)``, ``hangup(call_id, *, by)``, ``hold``/``retrieve``/``mute``/``unmute(call_id)``
  (idempotent), ``transfer(call_id, destination, *, by)``, ``conference(call_id, destination, *, by)``,
  ``remove_party(call_id, number, *, by)``, ``send_dtmf(call_id, digits, duration_ms=100, gap_ms=50)``,
  ``flush(call_id)`` (barge-in), the consult commands ``consult(call_id, number, *, by)``,
  ``alternate(call_id, *, by)``, ``transfer_to_consult(call_id, *, by)``,
  ``conference_in_consult(call_id, *, by)`` (docs/core.md),
  ``dispose(call_id)``, and ``shutdown(grace)``.
- Queries: ``calls(include_released=False)``, ``call(call_id)``, ``calls_for(extension_id)``,
  ``active_call_for(extension_id)`` -> :class:`CallSnapshot` (``to_dict()`` for JSON).
- Events: ``subscribe(callback, extension=None) -> unsubscribe``, ``callback(event, call)`` with the
  call's :class:`CallSnapshot` (one per call per batch of events); the classes are in
  :mod:`gateway.core.events` (``CallCreated`` first, ``CallEnded`` with the CDR last).
- Drivers: the interfaces in :mod:`gateway.core.interfaces` (``IDriverFactory`` plugins build an
  ``IDriver``; inbound calls arrive with ``registry.incoming(driver_leg, caller_id=, did=)``, which
  returns the leg's ``ILegEvents``).

Also: :mod:`gateway.core.dtmf` (``PHONE_KEYS``, ``MAX_DTMF_DIGITS``, ``is_dial_number``,
``is_dtmf_sequence``), :mod:`gateway.core.errors`
(``CallError`` and its subclasses, with ``code`` and
``http_status``), :mod:`gateway.core.states` (``LegState``, ``Cause``, the transition table),
:mod:`gateway.core.routing` (``Router``), :mod:`gateway.core.cdr` (``build_cdr``),
:mod:`gateway.core.mediactl` (the media wiring), :mod:`gateway.core.metrics`.
"""

from gateway.core.errors import (
    CallError,
    ConferenceFailed,
    DriverError,
    ExtensionBusy,
    IllegalState,
    InvalidArgument,
    NoRoute,
    TransferFailed,
    UnknownCall,
    UnknownExtension,
    UnknownParty,
)
from gateway.core.interfaces import ICallControl, IDriver, IDriverFactory, IDriverLeg, IInboundCalls, ILegEvents
from gateway.core.model import CallSnapshot, LegSnapshot, Party
from gateway.core.states import Cause, LegState

__all__ = [
    "CallError",
    "CallSnapshot",
    "Cause",
    "ConferenceFailed",
    "DriverError",
    "ExtensionBusy",
    "ICallControl",
    "IDriver",
    "IDriverFactory",
    "IDriverLeg",
    "IInboundCalls",
    "ILegEvents",
    "IllegalState",
    "InvalidArgument",
    "LegSnapshot",
    "LegState",
    "NoRoute",
    "Party",
    "TransferFailed",
    "UnknownCall",
    "UnknownExtension",
    "UnknownParty",
]
