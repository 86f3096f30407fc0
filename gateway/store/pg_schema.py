"""The PostgreSQL schema of the gateway's store, as the ordered list of its migrations.

The table ``schema_version`` holds one row per migration applied (its number and when). At open,
:mod:`gateway.store.postgres` applies the missing ones in order, each in its own transaction
together with its row, under a transaction-level advisory lock (:data:`MIGRATION_LOCK`), so two
nodes starting at once apply each migration exactly once. To change the schema, append one SQL
script to :data:`MIGRATIONS`; never edit one that has shipped.

The tables mirror the SQLite ones (:mod:`gateway.store.schema`) so both backends answer alike:
times are the normalized UTC text of :mod:`gateway.store.records` (sorted as text, so the sort
columns use the ``"C"`` collation: byte order, whatever the database's locale), and CDR
documents are kept as the call core wrote them (text, not ``jsonb``, which would reorder keys).
"""

__all__ = ["MIGRATIONS", "MIGRATION_LOCK", "VERSION_TABLE"]

#: the key of the advisory lock held while migrating ("gateway!" as a big-endian int64)
MIGRATION_LOCK = int.from_bytes(b"gateway!", "big") - (1 << 63)

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""

_CDRS = """
CREATE TABLE cdrs (
    call_id          TEXT COLLATE "C" PRIMARY KEY,
    node             TEXT,
    direction        TEXT,
    extension        TEXT,
    started_at       TEXT COLLATE "C",
    answered_at      TEXT COLLATE "C",
    ended_at         TEXT COLLATE "C" NOT NULL,
    duration         DOUBLE PRECISION,
    billable_seconds DOUBLE PRECISION,
    cause            TEXT,
    hangup_by        TEXT,
    document         TEXT NOT NULL
);
CREATE INDEX cdrs_by_end ON cdrs (ended_at, call_id);
CREATE INDEX cdrs_by_extension ON cdrs (extension, ended_at);
CREATE TABLE provider_cdrs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id     TEXT COLLATE "C" NOT NULL,
    source      TEXT NOT NULL,
    data        TEXT NOT NULL,
    received_at TEXT COLLATE "C" NOT NULL
);
CREATE INDEX provider_cdrs_by_call ON provider_cdrs (call_id, id);
"""

# 2: durable SMS and the chat conversations (see gateway.store.sms). seq comes from an identity
# sequence (never reused); an insert holds its number's advisory lock from taking its seq until
# its commit, so within one number commit order is seq order on every node. sms_outbox is the
# outbox consumers' index: the oldest pending record of each (direction, number).
_SMS = """
CREATE TABLE sms (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
CREATE INDEX sms_outbox ON sms (direction, number, seq) WHERE status = 'pending';
CREATE INDEX sms_by_number ON sms (number, seq);
CREATE TABLE chat_conversations (
    conversation_id TEXT PRIMARY KEY,
    number          TEXT NOT NULL,
    participant     TEXT NOT NULL,
    opened_at       TEXT COLLATE "C" NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    closed_at       TEXT,
    close_reason    TEXT,
    saved           BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE UNIQUE INDEX chat_conversations_open ON chat_conversations (number) WHERE status = 'open';
"""

#: migration N (1-based) brings a database from version N-1 to N
MIGRATIONS: list[str] = [
    _CDRS,
    _SMS,
]
