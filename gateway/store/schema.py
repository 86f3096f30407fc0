"""The SQLite schema of the gateway's store, as the ordered list of its migrations.

The database's ``PRAGMA user_version`` is the number of migrations applied.
At open, :mod:`gateway.store.sqlite` applies the missing ones in order, each
in its own transaction together with the new version number. To change the
schema, append one SQL script to :data:`MIGRATIONS`; never edit one that has
shipped.

Provider CDRs reference their call by id only (no foreign key): they may
arrive before the gateway's CDR for that call.
"""

__all__ = ["MIGRATIONS"]

_CDRS = """
CREATE TABLE cdrs (
    call_id          TEXT PRIMARY KEY,
    node             TEXT,
    direction        TEXT,
    extension        TEXT,
    started_at       TEXT,
    answered_at      TEXT,
    ended_at         TEXT NOT NULL,
    duration         REAL,
    billable_seconds REAL,
    cause            TEXT,
    hangup_by        TEXT,
    document         TEXT NOT NULL
);
CREATE INDEX cdrs_by_end ON cdrs (ended_at, call_id);
CREATE INDEX cdrs_by_extension ON cdrs (extension, ended_at);
CREATE TABLE provider_cdrs (
    id          INTEGER PRIMARY KEY,
    call_id     TEXT NOT NULL,
    source      TEXT NOT NULL,
    data        TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX provider_cdrs_by_call ON provider_cdrs (call_id, id);
"""

# 2: durable SMS (gateway.store.sms): every SMS is stored before it is acknowledged and stays
# pending until delivered; seq (AUTOINCREMENT: never reused) keeps the order per number. The
# chat conversations opened for customers' numbers, at most one open per number.
_SMS = """
CREATE TABLE sms (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    uid             TEXT NOT NULL UNIQUE,
    direction       TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    number          TEXT NOT NULL,
    text            TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    kind            TEXT NOT NULL,
    external_id     TEXT,
    conversation_id TEXT,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    finished_at     TEXT
);
CREATE UNIQUE INDEX sms_by_external_id ON sms (direction, external_id);
CREATE INDEX sms_pending ON sms (seq) WHERE status = 'pending';
CREATE INDEX sms_by_number ON sms (number, seq);
CREATE TABLE chat_conversations (
    conversation_id TEXT PRIMARY KEY,
    number          TEXT NOT NULL,
    participant     TEXT NOT NULL,
    opened_at       TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    closed_at       TEXT,
    close_reason    TEXT
);
CREATE UNIQUE INDEX chat_conversations_open ON chat_conversations (number) WHERE status = 'open';
"""

#: migration N (1-based) brings a database from user_version N-1 to N
MIGRATIONS: list[str] = [
    _CDRS,
    _SMS,
]
