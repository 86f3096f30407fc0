"""The SQLite statements behind :class:`gateway.store.interfaces.ISmsStore` (run in the pool thread).

Each function takes the connection, inside the transaction that
:class:`gateway.store.sqlite.SqliteCdrStore` opened for it. The statements PostgreSQL shares
(with ``?`` for its ``%s``) come from :mod:`gateway.store.sms_statements`.
"""

from __future__ import annotations

import json
import sqlite3

import attrs

from gateway.store.sms import ConversationRecord, SmsRecord
from gateway.store.sms_statements import NEW_SMS_COLUMNS, SELECT_SMS, SmsStatements, sms_record

__all__ = [
    "close_conversation",
    "finish_sms",
    "insert_sms",
    "open_conversations",
    "pending_sms",
    "save_conversation",
    "select_sms",
    "sms_attempt_failed",
]

_STATEMENTS = SmsStatements("?", conversation_order="rowid")
_INSERT_SMS = f"INSERT INTO sms ({', '.join(NEW_SMS_COLUMNS)}) VALUES ({_STATEMENTS.values(len(NEW_SMS_COLUMNS))})"

pending_sms = _STATEMENTS.pending_sms
sms_attempt_failed = _STATEMENTS.sms_attempt_failed
finish_sms = _STATEMENTS.finish_sms
select_sms = _STATEMENTS.select_sms
close_conversation = _STATEMENTS.close_conversation
open_conversations = _STATEMENTS.open_conversations


def insert_sms(conn, record: SmsRecord) -> tuple[SmsRecord, bool]:
    try:
        cursor = conn.execute(_INSERT_SMS, [getattr(record, name) for name in NEW_SMS_COLUMNS])
    except sqlite3.IntegrityError:
        if record.external_id is not None:
            where, args = "direction = ? AND external_id = ?", (record.direction, record.external_id)
        else:
            where, args = "uid = ?", (record.uid,)
        return sms_record(conn.execute(f"{SELECT_SMS} WHERE {where}", args).fetchone()), False
    return attrs.evolve(record, seq=cursor.lastrowid), True


def save_conversation(conn, record: ConversationRecord) -> None:
    _STATEMENTS.close_replaced(conn, record)
    values = {**attrs.asdict(record), "participant": json.dumps(record.participant)}
    conn.execute(
        f"INSERT OR REPLACE INTO chat_conversations ({', '.join(values)}) VALUES ({_STATEMENTS.values(len(values))})",
        list(values.values()),
    )
