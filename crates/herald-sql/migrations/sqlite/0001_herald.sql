-- Herald on SQLite: the event store, outbox, inbox, checkpoints, saga state and the SQL broker.
-- Conventions (shared with migrations/postgres): tables are prefixed `herald_`, ids are UUID text,
-- times are integer milliseconds since the Unix epoch, metadata is herald::Metadata as JSON text.

-- The event store. `position` is the global log: AUTOINCREMENT never reuses a value, and every
-- writer runs under BEGIN IMMEDIATE (one writer at a time), so positions follow commit order.
CREATE TABLE herald_events (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    stream      TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    id          TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    metadata    TEXT    NOT NULL,
    recorded_at INTEGER NOT NULL,
    -- The version check happens in the transaction; this makes a bug that skipped it fail
    -- loudly instead of writing two events at one version.
    UNIQUE (stream, version)
);

-- The latest snapshot of a stream (replaced on save).
CREATE TABLE herald_snapshots (
    stream   TEXT    PRIMARY KEY NOT NULL,
    version  INTEGER NOT NULL,
    payload  BLOB    NOT NULL,
    saved_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Messages waiting for the relay, published in `sequence` order.
CREATE TABLE herald_outbox (
    sequence    INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    metadata    TEXT    NOT NULL,
    enqueued_at INTEGER NOT NULL
);

-- Which handler has handled which message (idempotent consumers).
CREATE TABLE herald_inbox (
    handler    TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    handled_at INTEGER NOT NULL,
    PRIMARY KEY (handler, message_id)
) WITHOUT ROWID;

-- Positions of projections and log readers.
CREATE TABLE herald_checkpoints (
    name       TEXT    PRIMARY KEY NOT NULL,
    position   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Saga instances; `version` is the optimistic-concurrency counter.
CREATE TABLE herald_sagas (
    name         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    step         INTEGER NOT NULL,
    compensating INTEGER NOT NULL,
    done         INTEGER NOT NULL,
    data         BLOB    NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (name, id)
) WITHOUT ROWID;

-- The SQL broker: every topic's log in one table. Positions are global (shared by all topics)
-- and increase in commit order; a topic's positions are therefore increasing but not contiguous.
CREATE TABLE herald_broker_messages (
    position     INTEGER PRIMARY KEY AUTOINCREMENT,
    topic        TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    metadata     TEXT    NOT NULL,
    published_at INTEGER NOT NULL,
    -- Publishing one message id twice to a topic stores it once (absorbs outbox republishes).
    UNIQUE (topic, id)
);
CREATE INDEX herald_broker_messages_by_topic ON herald_broker_messages (topic, position);

-- Consumer groups: `next_position` is the first position not yet taken into the group's
-- pending set.
CREATE TABLE herald_broker_groups (
    topic         TEXT    NOT NULL,
    grp           TEXT    NOT NULL,
    next_position INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (topic, grp)
) WITHOUT ROWID;

-- Each group's unsettled messages: delivery count and when the message may be claimed again
-- (0 = never delivered; otherwise the end of the lease or of the nack delay).
CREATE TABLE herald_broker_pending (
    topic      TEXT    NOT NULL,
    grp        TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    key        TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    PRIMARY KEY (topic, grp, position)
) WITHOUT ROWID;
-- The per-key rule: "is there an older unsettled message of this key in the group?"
CREATE INDEX herald_broker_pending_by_key ON herald_broker_pending (topic, grp, key, position);
