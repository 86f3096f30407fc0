"""The PostgreSQL statements behind the store interfaces (run in a pool thread, psycopg 3).

Each function takes a psycopg connection inside the transaction that
:class:`gateway.store.postgres.PostgresStore` opened for it (it commits or rolls back after).
The answers are the same as :mod:`gateway.store.sqlite` and :mod:`gateway.store.sms_sql` give.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import attrs
import psycopg
from psycopg import errors

from gateway.store.interfaces import DuplicateCdr, SchemaTooNew
from gateway.store.pg_schema import MIGRATION_LOCK, VERSION_TABLE
from gateway.store.records import CdrRow, ProviderRow, decode_cdr
from gateway.store.sms import ConversationRecord, SmsRecord
from gateway.store.sms_statements import NEW_SMS_COLUMNS, SELECT_SMS, SmsStatements, sms_record

__all__ = [
    "claim_sms",
    "close_conversation",
    "finish_sms",
    "insert_cdr",
    "insert_provider_cdr",
    "insert_sms",
    "migrate",
    "open_conversations",
    "pending_sms",
    "save_conversation",
    "select_cdr",
    "select_cdrs",
    "select_sms",
    "sms_attempt_failed",
]

_CDR_COLUMNS = [f.name for f in attrs.fields(CdrRow)]
_INSERT_CDR = f"INSERT INTO cdrs ({', '.join(_CDR_COLUMNS)}) VALUES ({', '.join('%s' for _ in _CDR_COLUMNS)})"
_INSERT_PROVIDER = "INSERT INTO provider_cdrs (call_id, source, data, received_at) VALUES (%s, %s, %s, %s)"
SINCE = "SELECT {columns} FROM cdrs WHERE ended_at >= %s ORDER BY ended_at, call_id LIMIT %s"
NEWEST = "SELECT {columns} FROM cdrs ORDER BY ended_at DESC, call_id DESC LIMIT %s"

_STATEMENTS = SmsStatements("%s", conversation_order="saved")
_INSERT_SMS = (
    f"INSERT INTO sms ({', '.join(NEW_SMS_COLUMNS)}) VALUES ({_STATEMENTS.values(len(NEW_SMS_COLUMNS))})"
    " ON CONFLICT DO NOTHING RETURNING seq"
)

#: the oldest pending record of each (direction, number) that no other consumer holds, oldest first.
#: A record held by a consumer (its row locked) is skipped, and so is the rest of its number, since
#: only a number's oldest pending record is ever a candidate: that keeps the order per number.
_CLAIM = (
    f"{SELECT_SMS} WHERE status = 'pending' AND {{exclude}} {{direction}} seq IN ("
    " SELECT min(seq) FROM sms WHERE status = 'pending' {direction_inner} GROUP BY direction, number)"
    " ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED"
)


# -- schema ----------------------------------------------------------------------------------------


def migrate(conn: psycopg.Connection, migrations: Sequence[str]) -> tuple[int, int]:
    """Apply the missing migrations, each in its own transaction with its ``schema_version`` row,
    under the migration lock. Returns ``(version before, version after)``; raises
    :class:`SchemaTooNew` for a database written by a newer gateway. ``conn`` is in autocommit
    mode here: each step is an explicit transaction."""
    target = len(migrations)
    before = None
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(VERSION_TABLE)
            (version,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            if before is None:
                before = version
            if version > target:
                raise SchemaTooNew(
                    f"the database is at schema version {version}; this gateway knows versions up to {target}"
                )
            if version == target:
                return before, version
            conn.execute(migrations[version])
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version + 1,))


# -- CDRs ------------------------------------------------------------------------------------------


def _number(value):
    """A CDR's duration as the indexed column takes it (a finite number, or NULL); the document
    keeps the value as it was."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value):
    """An indexed text column: strings as they are, anything else as its JSON (SQLite keeps any type)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=repr)


def insert_cdr(conn, row: CdrRow) -> None:
    values = attrs.asdict(row)
    for name in ("node", "direction", "extension", "cause", "hangup_by"):
        values[name] = _text(values[name])
    for name in ("duration", "billable_seconds"):
        values[name] = _number(values[name])
    try:
        with conn.transaction():  # a savepoint: the outer transaction stays usable
            conn.execute(_INSERT_CDR, [values[name] for name in _CDR_COLUMNS])
    except errors.UniqueViolation:
        raise DuplicateCdr(f"a CDR for call {row.call_id!r} is stored already") from None


def insert_provider_cdr(conn, row: ProviderRow) -> None:
    conn.execute(_INSERT_PROVIDER, attrs.astuple(row))


def _providers(conn, where: str, args: Sequence) -> dict[str, list[ProviderRow]]:
    by_call: dict[str, list[ProviderRow]] = {}
    query = f"SELECT call_id, source, data, received_at FROM provider_cdrs WHERE {where} ORDER BY id"
    for row in conn.execute(query, args):
        by_call.setdefault(row[0], []).append(ProviderRow(*row))
    return by_call


def select_cdrs(conn, query: str, args: tuple) -> list[dict]:
    """The CDRs ``query`` (:data:`SINCE`, :data:`NEWEST`) selects, in its order, with their provider CDRs."""
    rows = conn.execute(query.format(columns="call_id, document"), args).fetchall()
    if not rows:
        return []
    providers = _providers(conn, "call_id = ANY(%s)", ([call_id for call_id, _ in rows],))
    return [decode_cdr(document, providers.get(call_id, [])) for call_id, document in rows]


def select_cdr(conn, call_id: str) -> dict | None:
    row = conn.execute("SELECT document FROM cdrs WHERE call_id = %s", (call_id,)).fetchone()
    if row is None:
        return None
    return decode_cdr(row[0], _providers(conn, "call_id = %s", (call_id,)).get(call_id, []))


# -- SMS -------------------------------------------------------------------------------------------


pending_sms = _STATEMENTS.pending_sms
sms_attempt_failed = _STATEMENTS.sms_attempt_failed
finish_sms = _STATEMENTS.finish_sms
select_sms = _STATEMENTS.select_sms
close_conversation = _STATEMENTS.close_conversation
open_conversations = _STATEMENTS.open_conversations


def insert_sms(conn, record: SmsRecord) -> tuple[SmsRecord, bool]:
    # the number's lock, held until commit: within a number, seq order is commit order on every node
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"sms:{record.number}",))
    row = conn.execute(_INSERT_SMS, [getattr(record, name) for name in NEW_SMS_COLUMNS]).fetchone()
    if row is not None:
        return attrs.evolve(record, seq=row[0]), True
    if record.external_id is not None:
        where, args = "(direction = %s AND external_id = %s) OR uid = %s", (record.direction, record.external_id, record.uid)
    else:
        where, args = "uid = %s", (record.uid,)
    existing = conn.execute(f"{SELECT_SMS} WHERE {where} ORDER BY seq LIMIT 1", args).fetchone()
    return sms_record(existing), False


def claim_sms(conn, direction, exclude=()) -> SmsRecord | None:
    """The oldest pending SMS no other consumer holds whose number has no older pending one and is
    not in ``exclude`` (the numbers the caller backs off), locked (``FOR UPDATE``) in the caller's
    open transaction; None when there is none."""
    # a backing-off number is left out whole: only its oldest pending SMS is ever a candidate anyway
    parts, args = {"exclude": "", "direction": "", "direction_inner": ""}, []
    if exclude:
        parts["exclude"] = "number <> ALL(%s) AND"
        args.append(list(exclude))
    if direction is not None:
        parts.update(direction="direction = %s AND", direction_inner="AND direction = %s")
        args += [direction, direction]
    query = _CLAIM.format(**parts)
    row = conn.execute(query, args).fetchone()
    return None if row is None else sms_record(row)


# -- conversations ---------------------------------------------------------------------------------


def save_conversation(conn, record: ConversationRecord) -> None:
    _STATEMENTS.close_replaced(conn, record)
    conn.execute("DELETE FROM chat_conversations WHERE conversation_id = %s", (record.conversation_id,))
    values = {**attrs.asdict(record), "participant": json.dumps(record.participant)}
    conn.execute(
        f"INSERT INTO chat_conversations ({', '.join(values)}) VALUES ({_STATEMENTS.values(len(values))})",
        list(values.values()),
    )
