-- Sequence-aware parking (herald::parking, ADR 0025): per consumer group and key, the messages
-- held back behind a dead letter, oldest first. `seq` is the order of a key's sequence (never
-- reused: AUTOINCREMENT); the first row of a (grp, key) is its head, the message the key waits
-- for. `entry_id` is the id the parked message is handled under (parking it again changes
-- nothing); the message columns have the outbox's shape, `message_id` being its transport id
-- and `message_key` its key, and are NULL for a dead-lettered head (it comes back as a replay
-- or a discard notice, not from here). `parked_at` is in unix milliseconds.
CREATE TABLE herald_parked (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    grp         TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    entry_id    TEXT    NOT NULL,
    message_id  TEXT,
    name        TEXT,
    topic       TEXT,
    message_key TEXT,
    payload     BLOB,
    metadata    TEXT,
    parked_at   INTEGER NOT NULL,
    UNIQUE (grp, key, entry_id)
);
-- A key's head (the first by `seq`) and its sequence in order.
CREATE INDEX herald_parked_by_key ON herald_parked (grp, key, seq);
