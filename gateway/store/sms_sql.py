"""The SQLite statements behind :class:`gateway.store.interfaces.ISmsStore` (run in the pool thread).

Each function takes the connection, inside the transaction that
:class:`gateway.store.sqlite.SqliteCdrStore` opened for it.
"""

from __future__ import annotations

import json
import sqlite3

import attrs

from gateway.store.sms import ConversationRecord, SmsRecord

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

_SMS_COLUMNS = [f.name for f in attrs.fields(SmsRecord)]
_SELECT_SMS = f"SELECT {', '.join(_SMS_COLUMNS)} FROM sms"
_NEW_SMS_COLUMNS = [name for name in _SMS_COLUMNS if name != "seq"]
_INSERT_SMS = f"INSERT INTO sms ({', '.join(_NEW_SMS_COLUMNS)}) VALUES ({', '.join('?' for _ in _NEW_SMS_COLUMNS)})"
_CONVERSATION_COLUMNS = [f.name for f in attrs.fields(ConversationRecord)]


def _sms(row) -> SmsRecord:
    return SmsRecord(**dict(zip(_SMS_COLUMNS, row)))


def _conversation(row) -> ConversationRecord:
    values = dict(zip(_CONVERSATION_COLUMNS, row))
    values["participant"] = json.loads(values["participant"])
    return ConversationRecord(**values)


def insert_sms(conn, record: SmsRecord) -> tuple[SmsRecord, bool]:
    try:
        cursor = conn.execute(_INSERT_SMS, [getattr(record, name) for name in _NEW_SMS_COLUMNS])
    except sqlite3.IntegrityError:
        if record.external_id is not None:
            where, args = "direction = ? AND external_id = ?", (record.direction, record.external_id)
        else:
            where, args = "uid = ?", (record.uid,)
        return _sms(conn.execute(f"{_SELECT_SMS} WHERE {where}", args).fetchone()), False
    return attrs.evolve(record, seq=cursor.lastrowid), True


def pending_sms(conn) -> list[SmsRecord]:
    return [_sms(row) for row in conn.execute(f"{_SELECT_SMS} WHERE status = 'pending' ORDER BY seq")]


def sms_attempt_failed(conn, seq: int, error: str) -> None:
    conn.execute("UPDATE sms SET attempts = attempts + 1, last_error = ? WHERE seq = ?", (error, seq))


def finish_sms(conn, seq: int, status: str, finished_at: str, conversation_id, error) -> bool:
    cursor = conn.execute(
        "UPDATE sms SET status = ?, finished_at = ?, conversation_id = COALESCE(?, conversation_id),"
        " last_error = COALESCE(?, last_error) WHERE seq = ? AND status = 'pending'",
        (status, finished_at, conversation_id, error, seq),
    )
    return cursor.rowcount == 1


def select_sms(conn, direction, number, after: int, limit: int) -> list[SmsRecord]:
    where, args = ["seq > ?"], [after]
    for column, value in (("direction", direction), ("number", number)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    query = f"{_SELECT_SMS} WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
    return [_sms(row) for row in conn.execute(query, [*args, limit])]


def save_conversation(conn, record: ConversationRecord) -> None:
    conn.execute(
        "UPDATE chat_conversations SET status = 'closed', closed_at = ?, close_reason = 'replaced'"
        " WHERE number = ? AND status = 'open' AND conversation_id != ?",
        (record.opened_at, record.number, record.conversation_id),
    )
    values = {**attrs.asdict(record), "participant": json.dumps(record.participant)}
    conn.execute(
        f"INSERT OR REPLACE INTO chat_conversations ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})",
        list(values.values()),
    )


def close_conversation(conn, conversation_id: str, closed_at: str, reason: str) -> bool:
    cursor = conn.execute(
        "UPDATE chat_conversations SET status = 'closed', closed_at = ?, close_reason = ?"
        " WHERE conversation_id = ? AND status = 'open'",
        (closed_at, reason, conversation_id),
    )
    return cursor.rowcount == 1


def open_conversations(conn) -> list[ConversationRecord]:
    query = f"SELECT {', '.join(_CONVERSATION_COLUMNS)} FROM chat_conversations WHERE status = 'open' ORDER BY opened_at, rowid"
    return [_conversation(row) for row in conn.execute(query)]
