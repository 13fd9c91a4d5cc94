-- Sequence-aware parking (herald::parking, ADR 0025). Same shape as
-- migrations/sqlite/0009_parked.sql: per consumer group and key, the messages held back behind
-- a dead letter, in `seq` order (the first row of a (grp, key) is its head). `entry_id` is the
-- id the parked message is handled under (UUIDv7 text, as elsewhere); the message columns have
-- the outbox's shape (`message_id` its transport id, `message_key` its key) and are NULL for a
-- dead-lettered head. `grp` and `key` sort bytewise (`parked` lists keys in that order).
-- `parked_at` is in unix milliseconds.
CREATE TABLE herald_parked (
    seq         BIGSERIAL PRIMARY KEY,
    grp         TEXT   COLLATE "C" NOT NULL,
    key         TEXT   COLLATE "C" NOT NULL,
    entry_id    TEXT   NOT NULL,
    message_id  TEXT,
    name        TEXT,
    topic       TEXT,
    message_key TEXT,
    payload     BYTEA,
    metadata    TEXT,
    parked_at   BIGINT NOT NULL,
    UNIQUE (grp, key, entry_id)
);
-- A key's head (the first by `seq`) and its sequence in order.
CREATE INDEX herald_parked_by_key ON herald_parked (grp, key, seq);
