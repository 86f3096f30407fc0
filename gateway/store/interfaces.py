"""What the rest of the gateway may ask of the CDR store, whatever database is behind it.

Callers hold an :class:`ICdrStore` (built by :func:`gateway.store.open_store`
from the ``[store] url``) and never see SQL: a PostgreSQL backend only needs a
new provider of this interface and a new URL scheme.
"""

from __future__ import annotations

from zope.interface import Interface

__all__ = ["DuplicateCdr", "ICdrStore", "SchemaTooNew", "StoreUnavailable"]


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

    def cdr(call_id):
        """A Deferred of one call's CDR, or None."""

    def close():
        """Finish every operation already asked for, then release the database."""
