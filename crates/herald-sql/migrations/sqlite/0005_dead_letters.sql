-- Dead letters kept for inspection and replay (herald::dead_letters, ADR 0006). `id` is the dead
-- letter's own message id (UUIDv7 text: ordering by it is archive order, and archiving the same
-- dead letter twice stores it once); the original message's columns have the outbox's shape.
-- `status` is pending, replayed or discarded; `replay_id` is the transport id of the replay.
CREATE TABLE herald_dead_letters (
    id                TEXT    PRIMARY KEY NOT NULL,
    dead_letter_topic TEXT    NOT NULL,
    grp               TEXT    NOT NULL,
    reason            TEXT    NOT NULL,
    attempts          INTEGER NOT NULL,
    dead_lettered_at  INTEGER NOT NULL,
    message_id        TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    topic             TEXT    NOT NULL,
    key               TEXT    NOT NULL,
    payload           BLOB    NOT NULL,
    metadata          TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('pending', 'replayed', 'discarded')),
    resolved_at       INTEGER,
    replay_id         TEXT,
    archived_at       INTEGER NOT NULL
) WITHOUT ROWID;
-- "The pending ones, oldest first" and "those of this topic / group".
CREATE INDEX herald_dead_letters_by_status ON herald_dead_letters (status, id);
CREATE INDEX herald_dead_letters_by_topic ON herald_dead_letters (topic, grp, id);
