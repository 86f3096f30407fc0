"""The core's ports: the door adapters use, the door drivers use, and the driver plug point.

Two doors lead into the call core, both provided by
:class:`gateway.core.registry.Registry` (and by the fakes of
``gateway.core.testing``):

- :class:`ICallControl`: every command, every query, and ``subscribe``. It is
  the only door of the protocol adapters (CTI, Patriot, the admin API, the
  status page): they hold an ``ICallControl`` and import nothing else of the
  core but its neutral modules (errors, events, states, model, dtmf).
  Observers get each event together with the call's snapshot, so an adapter
  diffs what it is handed instead of pulling the call again.
- :class:`IInboundCalls`: ``incoming``, by which a driver delivers a new
  inbound leg.

The driver plug point: how the PBX side (simulated network, OptimaCCS...)
meets the call core. A driver places outbound legs (:meth:`IDriver.dial`) and
delivers inbound ones (``IInboundCalls.incoming(driver_leg, caller_id=..., did=...)``, which returns
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

import typing

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

if typing.TYPE_CHECKING:  # pragma: no cover
    from gateway.core.events import CallEvent
    from gateway.core.model import CallSnapshot

#: an observer of :meth:`ICallControl.subscribe`: ``observer(event, call)``
Observer = typing.Callable[["CallEvent", "CallSnapshot"], object]
#: what a driver reports or is given as a leg's or call's attributes (JSON-like)
Attributes = typing.Dict[str, typing.Any]

__all__ = ["ICallControl", "IDriver", "IDriverFactory", "IDriverLeg", "IInboundCalls", "IInboundDriver", "ILegEvents"]


class ILegEvents(Interface):
    """What a driver reports about one leg. Every method may be called at most once per outcome."""

    def ringing() -> None:
        """The far end is alerting."""

    def answered() -> None:
        """The far end answered: the leg is talking."""

    def busy() -> None:
        """The dialled party is busy; the leg is over."""

    def no_answer() -> None:
        """Nobody answered in time; the leg is over."""

    def failed(reason: str) -> None:
        """The leg could not be set up (``reason``: readable text); the leg is over."""

    def hung_up(cause: str = "remote_hangup") -> None:
        """The far end ended the leg: ``remote_hangup``, or ``transport_lost`` when the link dropped."""

    def dtmf(digit: str, duration_ms: int | None = None) -> None:
        """The far end sent a DTMF digit (``0-9*#A-D``)."""

    def provider_cdr(source: str, data: Attributes) -> None:
        """The provider's own record of the leg (a dict), kept beside the gateway's CDR."""


class IDriverLeg(Interface):
    """One leg as its driver carries it."""

    driver = Attribute("The name of the driver carrying the leg.")
    port = Attribute("The leg's gateway.media.MediaPort: audio from and toward the party.")

    def answer() -> Deferred[None]:
        """Accept an inbound leg; for a device leg, go off-hook (or fail with DriverError
        when the device cannot be answered remotely). Returns a Deferred."""

    def hangup(cause: str) -> Deferred[None]:
        """End the leg at the driver (``cause``: a :class:`gateway.core.states.Cause` value).
        Returns a Deferred; succeeds at once on a leg already over."""

    def send_dtmf(digit: str, duration_ms: int) -> Deferred[None]:
        """Send one DTMF digit to the party; the Deferred fires when the tone has finished."""

    def flush() -> None:
        """Barge-in: discard audio queued toward the party."""


class IDriver(Interface):
    """A way to reach parties."""

    name = Attribute("The driver's name, as used in [pbx] driver and extension devices.")

    def dial(
        address: str, events: ILegEvents, caller_id: str | None = None, attributes: Attributes | None = None
    ) -> IDriverLeg:
        """Place an outbound leg to ``address`` (a number, or a device's address when
        ``attributes["extension"]`` is set), reporting through ``events`` (ILegEvents).
        Returns the IDriverLeg at once; raises DriverError if the dial cannot even start."""

    def start() -> None:
        """Start (connect, begin generating demo calls...)."""

    def stop() -> Deferred[None]:
        """Stop; returns a Deferred fired when the driver has let go of everything."""


class IDriverFactory(Interface):
    """A plugin that builds one driver."""

    name = Attribute("The driver's name.")

    def build(ctx: typing.Any) -> IDriver:
        """Build the IDriver from the gateway's Context (``ctx.registry`` is set before
        ``IDriver.start`` is called, not necessarily before ``build``)."""


class IInboundDriver(IDriver):
    """A driver that delivers inbound calls (the simulated network's callers)."""

    def wire(inbound_calls: IInboundCalls) -> None:
        """From now on deliver inbound legs to ``inbound_calls`` (an :class:`IInboundCalls`: the registry).
        Called once by the daemon's assembly (``gateway.callservice``), after the driver and the
        registry both exist; before it, an inbound call cannot be delivered."""


class IInboundCalls(Interface):
    """The drivers' door into the core: new inbound legs."""

    def incoming(
        driver_leg: IDriverLeg, *, caller_id: str | None, did: str | None, attributes: Attributes | None = None
    ) -> ILegEvents:
        """A driver delivers a new inbound leg (an :class:`IDriverLeg`) from ``caller_id`` to ``did``,
        with the provider's ``attributes`` (a dict); returns the leg's :class:`ILegEvents`.
        The call is routed by ``did``: to an extension (its phone rings), to a media app (answered,
        the app started), or nowhere (hung up, cause ``no_route``)."""


class ICallControl(Interface):
    """The adapters' door into the core: every command, every query, and ``subscribe``.

    Commands return a Deferred firing with the call's
    :class:`~gateway.core.model.CallSnapshot` once the effect has happened (None for ``dispose``),
    or failing with a :class:`~gateway.core.errors.CallError` (``UnknownCall``,
    ``IllegalState``, ``ExtensionBusy``, ``InvalidArgument``, ``DriverError``...). Outcomes
    that come later (a dialled party answering, a transfer failing) arrive as events.
    ``by`` says who asked (``api``, ``desktop``...), as the CDR's ``hangup_by``.
    """

    extensions = Attribute("The configured extensions' ids (a list of str).")

    # -- commands

    def originate(
        extension_id: str, number: str, *, attributes: Attributes | None = None, if_busy: str = "refuse",
        by: str = "api",
    ) -> Deferred[CallSnapshot]:
        """Click-to-dial: ring the extension's phone; when it answers, dial ``number`` (a number or an
        extension id) and bridge. While the extension has a live call of its own, ``if_busy``
        decides: ``refuse`` (``ExtensionBusy``) or ``replace`` (that call is hung up, cause normal,
        ``hangup_by`` ``by``, then the dial goes out; nothing is hung up for a dial that would be
        refused anyway). Any other ``if_busy`` is ``InvalidArgument``."""

    def answer(call_id: str) -> Deferred[CallSnapshot]:
        """Answer an alerting call (or pick up a click-to-dial's own phone) at the extension's phone."""

    def reject(call_id: str, *, by: str = "api") -> Deferred[CallSnapshot]:
        """Refuse an alerting inbound call (cause ``rejected``)."""

    def cancel(call_id: str, *, by: str = "api") -> Deferred[CallSnapshot]:
        """Give up a call nobody has answered yet: an alerting inbound call is refused (as ``reject``,
        cause ``rejected``), a call still dialling out is hung up (cause ``normal``);
        ``IllegalState`` once it is talking, held or over."""

    def hangup(call_id: str, *, by: str = "api") -> Deferred[CallSnapshot]:
        """End the call: every leg is hung up (cause ``normal``)."""

    def hold(call_id: str) -> Deferred[CallSnapshot]:
        """Put the remote parties on hold (idempotent)."""

    def retrieve(call_id: str) -> Deferred[CallSnapshot]:
        """Take the remote parties off hold (idempotent)."""

    def mute(call_id: str) -> Deferred[CallSnapshot]:
        """Stop forwarding the extension's audio (idempotent)."""

    def unmute(call_id: str) -> Deferred[CallSnapshot]:
        """Forward the extension's audio again (idempotent)."""

    def transfer(call_id: str, destination: str, *, by: str = "api") -> Deferred[CallSnapshot]:
        """Blind transfer to ``destination`` (an extension id or a number); fires once dialled, a
        failure arrives as a ``TransferFailed`` event."""

    def conference(call_id: str, destination: str, *, by: str = "api") -> Deferred[CallSnapshot]:
        """Dial ``destination`` and mix it into the call when it answers; fires once dialled, a failure
        arrives as a ``ConferenceFailed`` event."""

    def consult(call_id: str, number: str, *, by: str = "api") -> Deferred[CallSnapshot]:
        """Attended transfer's first step: hold the remote parties of ``call_id`` (the *primary*, an
        extension's connected call) and dial ``number`` (an extension id or a number) for the same
        extension, as a new *consult* call linked to the primary. Fires with the consult call's
        snapshot once it is dialled (``consult_of`` names the primary; the primary's ``consult`` names
        it) and a ``ConsultStarted`` event reaches the primary. The consult call is an ordinary call of
        the extension (its own events, CDR, ``hangup``); busy, no answer, a failure or the consulted
        party hanging up end it (cause busy/no_answer/failed/remote_hangup) and the primary stays held
        (``ConsultEnded`` outcome ``released``; ``retrieve`` it). ``IllegalState`` unless the primary
        is TALKING or HELD, has the extension's phone, no consult of its own, is no consult itself and
        has no transfer or conference being dialled; ``InvalidArgument`` for a bad number or the own
        extension; ``ExtensionBusy`` for a busy extension."""

    def alternate(call_id: str, *, by: str = "api") -> Deferred[CallSnapshot]:
        """Swap which of a primary and its answered consult is held (``call_id``: either): the talking
        one's parties are held, then the held one's retrieved (LegHeld, then LegRetrieved). With both
        held, ``call_id`` is retrieved. Fires with ``call_id``'s snapshot. ``IllegalState`` for a call
        without a consult link, or while the consult is still dialling."""

    def transfer_to_consult(call_id: str, *, by: str = "api") -> Deferred[CallSnapshot]:
        """Join the primary's remote parties with the consulted party (``call_id``: the primary or
        its consult, which must have answered) in a new call (``attributes["transferred_from"]`` the
        primary, ``attributes["consult_id"]`` the consult) that belongs to the consulted extension (its
        phone becomes the device leg), or to nobody when a number was consulted,
        and drop the agent: both calls end, cause ``transferred`` on each of their legs,
        ``hangup_by`` ``by``; the primary's ``ConsultEnded`` (outcome ``transferred``) and
        ``CallEnded`` come before the consult's ``CallEnded``. Fires with the primary's snapshot."""

    def conference_in_consult(call_id: str, *, by: str = "api") -> Deferred[CallSnapshot]:
        """Join all three: the consulted party moves into the primary (``call_id``: either; the
        consult must have answered), the held parties are retrieved, the primary's media becomes a
        mix (``LegCreated``, ``LegRetrieved``, ``PartyAdded`` on the primary); the consult call ends
        with cause ``conferenced`` (``ConsultEnded`` outcome ``conferenced``). Fires with the
        primary's snapshot."""

    def remove_party(call_id: str, number: str, *, by: str = "api") -> Deferred[CallSnapshot]:
        """Hang up one remote party; the call goes on while another remains (``UnknownParty``)."""

    def send_dtmf(call_id: str, digits: str, duration_ms: int = 100, gap_ms: int = 50) -> Deferred[CallSnapshot]:
        """Play ``digits`` (1-:data:`~gateway.core.dtmf.MAX_DTMF_DIGITS` of ``0-9*#A-D``) to the remote
        parties; fires when the last tone ended."""

    def flush(call_id: str) -> Deferred[CallSnapshot]:
        """Barge-in: discard the audio queued toward the remote parties."""

    def dispose(call_id: str, *, by: str = "api") -> Deferred[None]:
        """Forget a call now (a live one is hung up first); fires with None."""

    # -- queries (synchronous)

    def calls(include_released: bool = False) -> list[CallSnapshot]:
        """Live calls (and released ones still retained, if asked), oldest first: CallSnapshots."""

    def call(call_id: str) -> CallSnapshot:
        """One call, live or retained, as a CallSnapshot; raises ``UnknownCall``."""

    def calls_for(extension_id: str) -> list[CallSnapshot]:
        """The extension's calls, live and retained."""

    def active_call_for(extension_id: str) -> CallSnapshot | None:
        """The extension's live call (a CallSnapshot), or None."""

    def status() -> dict[str, typing.Any]:
        """Counts for the status page: ``{"live_calls", "by_state", "retained_calls"}``."""

    def leg_states() -> typing.Counter[str]:
        """State -> number of legs of live calls (a Counter, for metrics)."""

    # -- events

    def subscribe(callback: Observer, extension: str | None = None) -> typing.Callable[[], None]:
        """Call ``callback(event, call)`` for every event (of ``extension``'s calls only, if given):
        the event (:mod:`gateway.core.events`) together with its call's
        :class:`~gateway.core.model.CallSnapshot`, taken once per call when the batch that raised
        the event (a command, a driver's report) was done. Events come in order (see
        :mod:`gateway.core.events`); an observer may issue commands, whose events follow. Returns a
        function that unsubscribes."""
