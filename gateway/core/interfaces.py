"""The driver plug point: how the PBX side (simulated network, OptimaCCS...) meets the call core.

A driver places outbound legs (:meth:`IDriver.dial`) and delivers inbound
ones (``registry.incoming(driver_leg, caller_id=..., did=...)``, which returns
the leg's :class:`ILegEvents`). For every leg the registry hands the driver an
:class:`ILegEvents` to report what happens at the far end; the driver hands the
registry an :class:`IDriverLeg` to act on the leg. A driver never reaches into
the registry's internals.

Rules every driver follows:

- nothing is reported through ``events`` before ``dial`` has returned
  (schedule it on the clock instead);
- after ``busy``, ``no_answer``, ``failed`` or ``hung_up`` the leg is over at
  the driver; ``hangup`` on such a leg succeeds and does nothing;
- failures of ``answer``/``hangup``/``send_dtmf`` are
  :class:`gateway.core.errors.DriverError` naming the driver.

Extension devices are written ``"<driver>[:<address>]"`` (``sim``,
``sim:answer=2.5``, ``sim:manual``, ``optimaccs:+6281...``): the registry dials
``<address>`` through ``<driver>`` with ``attributes["extension"]`` set to the
extension's id. Numbers a user dials go through ``[pbx] driver``.

Drivers are built by :class:`IDriverFactory` plugins (providing
``twisted.plugin.IPlugin`` too), found with
``gateway.pluginload.plugins(IDriverFactory)``.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IDriver", "IDriverFactory", "IDriverLeg", "ILegEvents"]


class ILegEvents(Interface):
    """What a driver reports about one leg. Every method may be called at most once per outcome."""

    def ringing():
        """The far end is alerting."""

    def answered():
        """The far end answered: the leg is talking."""

    def busy():
        """The dialled party is busy; the leg is over."""

    def no_answer():
        """Nobody answered in time; the leg is over."""

    def failed(reason):
        """The leg could not be set up (``reason``: readable text); the leg is over."""

    def hung_up(cause="remote_hangup"):
        """The far end ended the leg: ``remote_hangup``, or ``transport_lost`` when the link dropped."""

    def dtmf(digit, duration_ms=None):
        """The far end sent a DTMF digit (``0-9*#A-D``)."""

    def provider_cdr(source, data):
        """The provider's own record of the leg (a dict), kept beside the gateway's CDR."""


class IDriverLeg(Interface):
    """One leg as its driver carries it."""

    driver = Attribute("The name of the driver carrying the leg.")
    port = Attribute("The leg's gateway.media.MediaPort: audio from and toward the party.")

    def answer():
        """Accept an inbound leg; for a device leg, go off-hook (or fail with DriverError
        when the device cannot be answered remotely). Returns a Deferred."""

    def hangup(cause):
        """End the leg at the driver (``cause``: a :class:`gateway.core.states.Cause` value).
        Returns a Deferred; succeeds at once on a leg already over."""

    def send_dtmf(digit, duration_ms):
        """Send one DTMF digit to the party; the Deferred fires when the tone has finished."""

    def flush():
        """Barge-in: discard audio queued toward the party."""


class IDriver(Interface):
    """A way to reach parties."""

    name = Attribute("The driver's name, as used in [pbx] driver and extension devices.")

    def dial(address, events, caller_id=None, attributes=None):
        """Place an outbound leg to ``address`` (a number, or a device's address when
        ``attributes["extension"]`` is set), reporting through ``events`` (ILegEvents).
        Returns the IDriverLeg at once; raises DriverError if the dial cannot even start."""

    def start():
        """Start (connect, begin generating demo calls...)."""

    def stop():
        """Stop; returns a Deferred fired when the driver has let go of everything."""


class IDriverFactory(Interface):
    """A plugin that builds one driver."""

    name = Attribute("The driver's name.")

    def build(ctx):
        """Build the IDriver from the gateway's Context (``ctx.registry`` is set before
        ``IDriver.start`` is called, not necessarily before ``build``)."""
