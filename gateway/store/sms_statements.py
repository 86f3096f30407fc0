"""The SMS and conversation statements the SQL backends share, written once for a placeholder style.

:mod:`gateway.store.sms_sql` (SQLite, ``?``) and :mod:`gateway.store.pg_sql` (PostgreSQL, ``%s``)
each make one :class:`SmsStatements` and export its methods; what really differs between them
(storing an SMS idempotently, replacing a conversation, claiming an SMS) stays in those modules.
Each method takes the connection, inside the transaction the store opened for it.
"""

from __future__ import annotations

import json

import attrs

from gateway.store.sms import ConversationRecord, SmsRecord

__all__ = ["CONVERSATION_COLUMNS", "NEW_SMS_COLUMNS", "SELECT_SMS", "SMS_COLUMNS", "SmsStatements"]

SMS_COLUMNS = [f.name for f in attrs.fields(SmsRecord)]
SELECT_SMS = f"SELECT {', '.join(SMS_COLUMNS)} FROM sms"
NEW_SMS_COLUMNS = [name for name in SMS_COLUMNS if name != "seq"]
CONVERSATION_COLUMNS = [f.name for f in attrs.fields(ConversationRecord)]


def sms_record(row) -> SmsRecord:
    return SmsRecord(**dict(zip(SMS_COLUMNS, row)))


def conversation_record(row) -> ConversationRecord:
    values = dict(zip(CONVERSATION_COLUMNS, row))
    values["participant"] = json.loads(values["participant"])
    return ConversationRecord(**values)


class SmsStatements:
    """The shared SMS statements for one driver.

    :param placeholder: the driver's parameter marker (``?`` for sqlite3, ``%s`` for psycopg).
    :param conversation_order: the column ordering open conversations opened at the same time
        (the insertion order: ``rowid`` in SQLite, ``saved`` in PostgreSQL).
    """

    def __init__(self, placeholder: str, *, conversation_order: str):
        p = self.placeholder = placeholder
        self._attempt_failed = f"UPDATE sms SET attempts = attempts + 1, last_error = {p} WHERE seq = {p}"
        self._finish = (
            f"UPDATE sms SET status = {p}, finished_at = {p}, conversation_id = COALESCE({p}, conversation_id),"
            f" last_error = COALESCE({p}, last_error) WHERE seq = {p} AND status = 'pending'"
        )
        self._close_replaced = (
            f"UPDATE chat_conversations SET status = 'closed', closed_at = {p}, close_reason = 'replaced'"
            f" WHERE number = {p} AND status = 'open' AND conversation_id != {p}"
        )
        self._close = (
            f"UPDATE chat_conversations SET status = 'closed', closed_at = {p}, close_reason = {p}"
            f" WHERE conversation_id = {p} AND status = 'open'"
        )
        self._open = (
            f"SELECT {', '.join(CONVERSATION_COLUMNS)} FROM chat_conversations WHERE status = 'open'"
            f" ORDER BY opened_at, {conversation_order}"
        )

    def values(self, count: int) -> str:
        """``count`` placeholders, comma separated (an INSERT's VALUES)."""
        return ", ".join(self.placeholder for _ in range(count))

    def pending_sms(self, conn) -> list[SmsRecord]:
        return [sms_record(row) for row in conn.execute(f"{SELECT_SMS} WHERE status = 'pending' ORDER BY seq")]

    def sms_attempt_failed(self, conn, seq: int, error: str) -> None:
        conn.execute(self._attempt_failed, (error, seq))

    def finish_sms(self, conn, seq: int, status: str, finished_at: str, conversation_id, error) -> bool:
        cursor = conn.execute(self._finish, (status, finished_at, conversation_id, error, seq))
        return cursor.rowcount == 1

    def select_sms(self, conn, direction, number, after: int, limit: int) -> list[SmsRecord]:
        p = self.placeholder
        where, args = [f"seq > {p}"], [after]
        for column, value in (("direction", direction), ("number", number)):
            if value is not None:
                where.append(f"{column} = {p}")
                args.append(value)
        query = f"{SELECT_SMS} WHERE {' AND '.join(where)} ORDER BY seq LIMIT {p}"
        return [sms_record(row) for row in conn.execute(query, [*args, limit])]

    def close_replaced(self, conn, record: ConversationRecord) -> None:
        """Close the number's other open conversation (``record`` replaces it)."""
        conn.execute(self._close_replaced, (record.opened_at, record.number, record.conversation_id))

    def close_conversation(self, conn, conversation_id: str, closed_at: str, reason: str) -> bool:
        cursor = conn.execute(self._close, (closed_at, reason, conversation_id))
        return cursor.rowcount == 1

    def open_conversations(self, conn) -> list[ConversationRecord]:
        return [conversation_record(row) for row in conn.execute(self._open)]
