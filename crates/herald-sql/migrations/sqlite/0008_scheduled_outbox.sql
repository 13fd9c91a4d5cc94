-- Scheduled outbox messages (`Transaction::schedule`, docs/adr/0021-scheduled-messages.md): a
-- table of their own beside `herald_outbox`, so the immediate path (insert, the relay's walk of
-- `herald_outbox` in sequence order, its deletes) neither updates a due-time index nor steps
-- over rows that are not due yet. The relay lists both tables' due rows in one statement.
--
-- `sequence` shares `herald_outbox`'s sequence space, so the outbox order covers both tables and
-- `outbox_remove` needs no second key: a scheduled message reserves its number by raising
-- `herald_outbox`'s AUTOINCREMENT counter (`sqlite_sequence`, an ordinary table SQLite lets one
-- update; AUTOINCREMENT never hands out a number at or below it). `due_at` is in unix
-- milliseconds of SQLite's clock.
CREATE TABLE herald_outbox_scheduled (
    sequence    INTEGER PRIMARY KEY,
    due_at      INTEGER NOT NULL,
    id          TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    metadata    TEXT    NOT NULL,
    enqueued_at INTEGER NOT NULL
);

-- The due scan (`due_at <= now`) and the next due time (`MIN(due_at)`).
CREATE INDEX herald_outbox_scheduled_due ON herald_outbox_scheduled (due_at, sequence);

-- The counter row exists only once `herald_outbox` had a row; create it so reserving is one
-- `UPDATE … RETURNING`.
INSERT INTO sqlite_sequence (name, seq)
SELECT 'herald_outbox', COALESCE((SELECT MAX(sequence) FROM herald_outbox), 0)
WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'herald_outbox');
