"""The SMS transport plug point: how the connector hands an SMS to the phone network.

A transport is built by an :class:`ISmsTransportFactory` plugin (found with
``gateway.pluginload.find_plugin(ISmsTransportFactory, name)``; the bundled ones, ``sim`` and
``http``, are in ``plugins/sms_transports.py``). It only sends: inbound SMS reach the connector
through the admin API (``POST /api/sms/inbound``), which stores them before answering. A transport
that receives by other means calls the ``receive`` function it was built with.
"""

from __future__ import annotations

import attrs
from zope.interface import Attribute, Interface

__all__ = ["ISmsTransport", "ISmsTransportFactory", "OutboundSms", "SmsRejected"]


@attrs.frozen
class OutboundSms:
    """One SMS to a customer, as a transport sees it."""

    #: the gateway's GUID for this SMS: the same on every attempt (for the provider's deduplication)
    id: str
    to: str
    text: str
    #: "reply" (an agent's message), "campaign", "auto-reply" or "operator" (sent through the admin API)
    kind: str
    conversation_id: str | None = None


class SmsRejected(Exception):
    """The provider refused this SMS for good (bad number, bad text): it is not tried again."""


class ISmsTransport(Interface):
    """Sends SMS to customers."""

    def send(sms):
        """Send an :class:`OutboundSms`; a Deferred firing once the provider has taken it.

        Fail with :class:`SmsRejected` when it will never be taken; any other failure means
        "not now": the connector tries again later, with the same ``sms.id``.
        """

    def status():
        """A JSON-able dict for ``/api/status``."""

    def stop():
        """Release what the transport holds (connections); may return a Deferred."""


class ISmsTransportFactory(Interface):
    """A ``twisted.plugin`` plugin that builds one kind of transport."""

    name = Attribute("The name [chat] transport selects it by.")

    def build(ctx, receive):
        """An :class:`ISmsTransport` for the gateway context ``ctx``.

        ``receive(number, text, external_id=None)`` stores an inbound SMS and returns a Deferred
        that fires once it is durably stored (the moment to acknowledge it to the provider). The
        transport may also add admin routes on ``ctx.api``.
        """
