"""What the rest of the gateway may ask of the CDR store, whatever database is behind it.

Callers hold an :class:`ICdrStore` (built by :func:`gateway.store.open_store`
from the ``[store] url``) and never see SQL: a PostgreSQL backend only needs a
new provider of this interface and a new URL scheme.
"""

from __future__ import annotations

from zope.interface import Interface

__all__ = ["DuplicateCdr", "ICdrStore", "ISmsStore", "SchemaTooNew", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The store was asked to do something after :meth:`ICdrStore.close`, or it failed to open."""


class DuplicateCdr(ValueError):
    """A CDR for this call id is stored already; the first one is kept."""


class SchemaTooNew(Exception):
    """The database was written by a newer gateway than this one: refusing to touch it."""


class ICdrStore(Interface):
    """Durable call detail records, each with the providers' own CDRs attached.

    A CDR is a JSON-able dict built by the call core, with at least
    ``call_id``, ``node``, ``direction``, ``extension``, ``started_at``,
    ``answered_at`` (or None), ``ended_at`` (ISO 8601 UTC strings),
    ``duration``, ``billable_seconds``, ``cause``, ``hangup_by``,
    ``dtmf_count`` and ``legs``; every other key is kept too. CDRs come back
    as stored plus ``provider_cdrs: [{source, data, received_at}]`` in the
    order they arrived.

    Operations asked for before :meth:`open` has finished wait for it.
    """

    def open():
        """Create or migrate the schema; a Deferred firing when the store is usable."""

    def add_cdr(cdr):
        """Store a call's CDR; the Deferred fires only once the row is durably committed.

        Fails with ``ValueError`` for a malformed CDR (no ``call_id``, no
        valid ``ended_at``, not JSON-able) and with :class:`DuplicateCdr`
        when that call already has one.
        """

    def attach_provider_cdr(call_id, source, data):
        """Store a provider's own CDR (``data``, a dict kept as it came) for a call.

        It may arrive before or after the gateway's CDR for that call: either
        way it ends up in that CDR's ``provider_cdrs``.
        """

    def cdrs(since=None, limit=100):
        """A Deferred list of CDRs that ended at or after ISO 8601 ``since``, oldest first.

        ``limit`` is capped at :data:`gateway.store.MAX_LIMIT`; a bad
        ``since`` or a ``limit`` below 1 fails with ``ValueError``.
        """

    def recent_cdrs(limit=10):
        """A Deferred list of the ``limit`` CDRs that ended last, newest first, however long ago.

        Same order as :meth:`cdrs` reversed (end time, then call id); ``limit`` is capped at
        :data:`gateway.store.MAX_LIMIT`, and one below 1 fails with ``ValueError``.
        """

    def cdr(call_id):
        """A Deferred of one call's CDR, or None."""

    def close():
        """Finish every operation already asked for, then release the database."""


class ISmsStore(Interface):
    """Durable SMS records and the chat conversations they belong to (see :mod:`gateway.store.sms`).

    Records are :class:`gateway.store.sms.SmsRecord` and
    :class:`gateway.store.sms.ConversationRecord`; a malformed one fails with ``ValueError``.
    Operations asked for before ``open`` has finished wait for it.
    """

    def add_sms(record):
        """Store a new pending SMS; fires once durably committed with ``(stored, created)``.

        ``stored`` is the record with its ``seq``. When a record of the same direction and
        ``external_id`` exists already, nothing is stored: ``(existing, False)``.
        """

    def pending_sms():
        """A Deferred list of every pending SMS record, in ``seq`` order."""

    def sms_attempt_failed(seq, error):
        """Count one failed delivery attempt of a pending SMS and keep ``error`` (text)."""

    def finish_sms(seq, status, finished_at, conversation_id=None, error=None):
        """Mark a pending SMS ``delivered`` or ``failed`` (refused for good) at ISO ``finished_at``.

        ``conversation_id`` (where an inbound SMS went) and ``error`` are kept when given.
        Fires with True, or False when the record was not pending.
        """

    def list_sms(direction=None, number=None, after=0, limit=100):
        """A Deferred list of SMS records with ``seq > after``, oldest first, at most ``limit``.

        ``direction`` (inbound/outbound) and ``number`` narrow the list; ``limit`` is capped at
        :data:`gateway.store.MAX_LIMIT`.
        """

    def save_conversation(record):
        """Store an open conversation; another open one for the same number is closed ("replaced")."""

    def close_conversation(conversation_id, closed_at, reason):
        """Mark a conversation closed; fires with True, or False when it was not open."""

    def open_conversations():
        """A Deferred list of the open conversations, oldest first."""
