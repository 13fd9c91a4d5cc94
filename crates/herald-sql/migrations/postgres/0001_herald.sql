-- Herald on PostgreSQL: the event store, outbox, inbox, checkpoints, saga state and the SQL broker.
-- Same shape as migrations/sqlite (see docs/adr/0002). Tables are unqualified: they are created in
-- the schema the connection's search_path names first (PostgresConfig::schema).
-- Conventions: ids are UUID text, times are integer milliseconds since the Unix epoch, metadata
-- is herald::Metadata as JSON text.

-- The event store. `position` is the global log. A bigserial alone would NOT keep it gap-free
-- for readers (sequence values are taken at insert time, transactions commit in any order):
-- every appending transaction takes a transaction-scoped advisory lock before its first insert,
-- so positions are assigned and committed in one order (docs/adr/0003-postgres-global-log.md).
CREATE TABLE herald_events (
    position    BIGSERIAL PRIMARY KEY,
    stream      TEXT   NOT NULL,
    version     BIGINT NOT NULL CHECK (version >= 1),
    id          TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    payload     BYTEA  NOT NULL,
    metadata    TEXT   NOT NULL,
    recorded_at BIGINT NOT NULL,
    -- The version check happens under the lock; this makes a bug that skipped it fail loudly
    -- (reported as a conflict) instead of writing two events at one version.
    UNIQUE (stream, version)
);

-- The latest snapshot of a stream (replaced on save).
CREATE TABLE herald_snapshots (
    stream   TEXT   PRIMARY KEY,
    version  BIGINT NOT NULL,
    payload  BYTEA  NOT NULL,
    saved_at BIGINT NOT NULL
);

-- Messages waiting for the relay, published in `sequence` order.
CREATE TABLE herald_outbox (
    sequence    BIGSERIAL PRIMARY KEY,
    id          TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    topic       TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    payload     BYTEA  NOT NULL,
    metadata    TEXT   NOT NULL,
    enqueued_at BIGINT NOT NULL
);

-- Which handler has handled which message (idempotent consumers).
CREATE TABLE herald_inbox (
    handler    TEXT   NOT NULL,
    message_id TEXT   NOT NULL,
    handled_at BIGINT NOT NULL,
    PRIMARY KEY (handler, message_id)
);

-- Positions of projections and log readers.
CREATE TABLE herald_checkpoints (
    name       TEXT   PRIMARY KEY,
    position   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Saga instances; `version` is the optimistic-concurrency counter.
CREATE TABLE herald_sagas (
    name         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      BIGINT  NOT NULL,
    step         BIGINT  NOT NULL,
    compensating BOOLEAN NOT NULL,
    done         BOOLEAN NOT NULL,
    data         BYTEA   NOT NULL,
    updated_at   BIGINT  NOT NULL,
    PRIMARY KEY (name, id)
);

-- The SQL broker: every topic's log in one table. Positions are global (shared by all topics)
-- and, like the event log's, assigned under an advisory lock so they commit in order: a group's
-- `next_position` must never pass a position that commits later.
CREATE TABLE herald_broker_messages (
    position     BIGSERIAL PRIMARY KEY,
    topic        TEXT   NOT NULL,
    id           TEXT   NOT NULL,
    name         TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    payload      BYTEA  NOT NULL,
    metadata     TEXT   NOT NULL,
    published_at BIGINT NOT NULL,
    -- Publishing one message id twice to a topic stores it once (absorbs outbox republishes).
    UNIQUE (topic, id)
);
CREATE INDEX herald_broker_messages_by_topic ON herald_broker_messages (topic, position);

-- Consumer groups: `next_position` is the first position not yet taken into the group's
-- pending set. A claim locks its group's row (SELECT … FOR UPDATE).
CREATE TABLE herald_broker_groups (
    topic         TEXT   NOT NULL,
    grp           TEXT   NOT NULL,
    next_position BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (topic, grp)
);

-- Each group's unsettled messages: delivery count and when the message may be claimed again
-- (0 = never delivered; otherwise the end of the lease or of the nack delay).
CREATE TABLE herald_broker_pending (
    topic      TEXT   NOT NULL,
    grp        TEXT   NOT NULL,
    position   BIGINT NOT NULL,
    key        TEXT   NOT NULL,
    attempts   BIGINT NOT NULL,
    visible_at BIGINT NOT NULL,
    PRIMARY KEY (topic, grp, position)
);
-- The per-key rule: "is there an older unsettled message of this key in the group?"
CREATE INDEX herald_broker_pending_by_key ON herald_broker_pending (topic, grp, key, position);
