-- Dead letters kept for inspection and replay (herald::dead_letters, ADR 0006). Same shape as
-- migrations/sqlite/0005_dead_letters.sql: `id` is the dead letter's own message id (UUIDv7
-- text, so ordering by it is archive order); the original message's columns have the outbox's
-- shape; times are integer milliseconds since the Unix epoch.
CREATE TABLE herald_dead_letters (
    id                TEXT   COLLATE "C" PRIMARY KEY, -- byte order = UUIDv7 time order
    dead_letter_topic TEXT   NOT NULL,
    grp               TEXT   NOT NULL,
    reason            TEXT   NOT NULL,
    attempts          BIGINT NOT NULL,
    dead_lettered_at  BIGINT NOT NULL,
    message_id        TEXT   NOT NULL,
    name              TEXT   NOT NULL,
    topic             TEXT   NOT NULL,
    key               TEXT   NOT NULL,
    payload           BYTEA  NOT NULL,
    metadata          TEXT   NOT NULL,
    status            TEXT   NOT NULL CHECK (status IN ('pending', 'replayed', 'discarded')),
    resolved_at       BIGINT,
    replay_id         TEXT,
    archived_at       BIGINT NOT NULL
);
CREATE INDEX herald_dead_letters_by_status ON herald_dead_letters (status, id);
CREATE INDEX herald_dead_letters_by_topic ON herald_dead_letters (topic, grp, id);
